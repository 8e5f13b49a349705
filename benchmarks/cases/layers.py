"""Keras layers and callbacks: StableLayerNormalization, StableSoftmax,
CompensatedDense, Promote and SmoothSwitch against what a user has in Keras, and the per-step
cost of NumericsMonitor(check="loss"/"all") and SmoothedLoss.

Targets (fwd+bwd, CPU, graph): StableLayerNormalization <= 1.3x Keras's, StableSoftmax
<= 1.2x Keras's Softmax, NumericsMonitor(check="loss") <= 1.05x a training step; SmoothSwitch
keeps smooth_where's (graph <= 1.5x, jit_compile <= 1.1x the naive blend); CompensatedDense
forward (graph) <= 2.0x keras Dense. No target for Promote or SmoothedLoss."""

import keras
import numpy as np
import tensorflow as tf

from benchmarks.registry import Case, elementwise_traffic, pick, register
from safeops import callbacks, layers, testing

_FAMILY = "layers"
_NO_BAR = ("none stated (targets are set for StableLayerNormalization, StableSoftmax, "
           "NumericsMonitor)")


def _rows(rng, size, scale):
    n, d = pick(size, full=(4096, 1024), quick=(512, 512), smoke=(16, 64))
    return (scale + rng.standard_normal((n, d))).astype(np.float32)


# -- StableLayerNormalization ---------------------------------------------------------------

def _ln_pair():
    ours = layers.StableLayerNormalization(epsilon=1e-5)
    theirs = keras.layers.LayerNormalization(epsilon=1e-5)
    return ours, theirs


def _make_ln(ratio):
    ours, theirs = _ln_pair()

    def make_inputs(rng, size):
        x = _rows(rng, size, ratio)
        for layer in (ours, theirs):  # make_inputs runs once per device: build once
            if not layer.built:
                layer.build(x.shape)
        return (x,)

    def accuracy(inputs, outputs):
        x = np.asarray(inputs[0], np.float64)
        m = x.mean(-1, keepdims=True)
        ref = (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)
        out = {"metric": "max abs error vs float64 layer norm (|y| ~ 1)"}
        for k, v in outputs.items():
            out[k] = float(np.max(np.abs(np.asarray(v, np.float64) - ref)))
        return out

    return make_inputs, (lambda x: theirs(x)), (lambda x: ours(x)), accuracy


for _ratio, _label in ((0.0, "mean0"), (1e4, "mean1e4")):
    _mk, _base, _cand, _acc = _make_ln(_ratio)
    register(Case(
        name=f"layers/StableLayerNormalization/{_label}",
        family=_FAMILY,
        make_inputs=_mk,
        baseline=_base,
        candidate=_cand,
        baseline_name="keras.layers.LayerNormalization",
        candidate_name="so.layers.StableLayerNormalization",
        accuracy=_acc,
        bar={"graph/fwd+bwd": 1.3},
        bar_source="stated for fwd+bwd, graph mode",
        quick=(_label == "mean1e4"),
        extra={"shape": "quick 512x512, full 4096x1024 float32", "|mean|/std": _ratio},
    ))


# -- StableSoftmax ----------------------------------------------------------------------------

_sm_ours, _sm_theirs = layers.StableSoftmax(), keras.layers.Softmax()


def _sm_inputs(rng, size):
    x = 3.0 * _rows(rng, size, 0.0)
    x[::64] = -np.inf  # one row in 64 fully masked (additive -inf attention mask)
    return (x,)


def _sm_accuracy(inputs, outputs):
    x = np.asarray(inputs[0], np.float64)
    live = np.isfinite(x).any(-1)
    z = np.where(np.isfinite(x), x, -np.inf)
    m = np.where(live[:, None], z.max(-1, keepdims=True), 0.0)
    e = np.exp(z - m)
    ref = np.where(live[:, None], e / np.maximum(e.sum(-1, keepdims=True), 1e-300), 0.0)
    out = {"metric": "max ulp vs float64 softmax (NaN counts as max)"}
    for k, v in outputs.items():
        out[k] = int(np.max(testing.ulp_distance(np.asarray(v, np.float32), ref, "float32")))
        out[f"{k}_nan_rows"] = int(np.isnan(np.asarray(v)).any(-1).sum())
    return out


register(Case(
    name="layers/StableSoftmax/masked_rows",
    family=_FAMILY,
    make_inputs=_sm_inputs,
    baseline=lambda x: _sm_theirs(x),
    candidate=lambda x: _sm_ours(x),
    baseline_name="keras.layers.Softmax",
    candidate_name="so.layers.StableSoftmax",
    accuracy=_sm_accuracy,
    bar={"graph/fwd+bwd": 1.2},
    bar_source="stated for fwd+bwd, graph mode",
    extra={"shape": "quick 512x512, full 4096x1024 float32; 1 row in 64 all -inf"},
))


# -- NumericsMonitor: one training step with and without the instrumented step -----------------

def _mlp(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((256,))] + [
        keras.layers.Dense(256, activation="relu") for _ in range(5)] + [keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    return model


def _monitor_case(check):
    plain, watched = _mlp(0), _mlp(0)
    monitor = callbacks.NumericsMonitor(check=check)

    def make_inputs(rng, size):
        n = pick(size, full=256, quick=256, smoke=16)
        x = rng.standard_normal((n, 256)).astype(np.float32)
        y = rng.standard_normal((n, 10)).astype(np.float32)
        for m in (plain, watched):  # make_inputs runs once per device: build once
            if not m.built:
                m.build((None, 256))
            if not m.optimizer.built:
                m.optimizer.build(m.trainable_variables)
        monitor.set_model(watched)
        if "train_step" not in watched.__dict__:
            monitor.on_train_begin()  # installs the instrumented step (kept for the benchmark)
        return x, y

    return Case(
        name=f"layers/NumericsMonitor/{check}",
        family=_FAMILY,
        make_inputs=make_inputs,
        baseline=lambda x, y: plain.train_step((x, y))["loss"],
        candidate=lambda x, y: watched.train_step((x, y))["loss"],
        baseline_name="model.train_step",
        candidate_name=f"train_step + NumericsMonitor(check={check!r})",
        grad=False,
        modes=("graph",),
        bar={"graph/fwd": 1.05} if check == "loss" else {},
        bar_source=("NumericsMonitor(check='loss') adds at most 5% to a training step"
                    if check == "loss" else "none: check='all' states its cost here"),
        accuracy_na="overhead only (the monitor does not change the step's numbers)",
        extra={"model": "6 x Dense(256) MLP, batch 256, SGD; the timed call is one full "
                        "training step (forward, backward, update)"},
    )


register(_monitor_case("loss"))
register(_monitor_case("all"))


# -- CompensatedDense vs keras Dense ------------------------------------------------------------

def _dense_pair(units, seed=0):
    keras.utils.set_random_seed(seed)
    theirs = keras.layers.Dense(units)
    ours = layers.CompensatedDense(units)
    return theirs, ours


_DENSE = {}


def _dense_inputs(rng, size):
    n, d = pick(size, full=(1024, 1024), quick=(256, 1024), smoke=(8, 32))
    theirs, ours = _dense_pair(d)
    x = (1e3 + rng.standard_normal((n, d))).astype(np.float32)  # large common offset: cancels
    theirs.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(theirs.get_weights())
    _DENSE["pair"] = (theirs, ours)
    return (x,)


def _dense_accuracy(inputs, outputs):
    x = np.asarray(inputs[0], np.float64)
    w, b = (np.asarray(v, np.float64) for v in _DENSE["pair"][0].get_weights())
    ref = x @ w + b  # float64: ~d * 1e-16 relative to sum |x w|, far below float32's ulp
    res = {"metric": "median / max ulp vs float64 x @ w + b (x = 1e3 + N(0,1))"}
    for k, v in outputs.items():
        u = testing.ulp_distance(np.asarray(v), ref, "float32")
        res[k] = f"{np.median(u):.0f} / {np.max(u):.0f}"
    return res


register(Case(
    name="layers/CompensatedDense", family=_FAMILY, make_inputs=_dense_inputs,
    baseline=lambda x: _DENSE["pair"][0](x), candidate=lambda x: _DENSE["pair"][1](x),
    baseline_name="keras.layers.Dense", candidate_name="so.layers.CompensatedDense",
    accuracy=_dense_accuracy, bar={"graph/fwd": 2.0},
    bar_source=("forward in graph mode, accuracy kept (0 ulp median vs float64); the float64 "
                "GEMM's floor is 2x (halved vector width). No XLA target: XLA cannot run "
                "the native kernel and uses TF's float64 dot"),
    extra={"shape": "rows x 1024 @ 1024x1024 (compute-bound: no bandwidth figure)"}))


# -- Promote(LayerNormalization) vs the float32 layer ------------------------------------------

_PROMOTE = {}


def _promote_inputs(rng, size):
    x = _rows(rng, size, 1e4)  # |mean|/std = 1e4
    plain = keras.layers.LayerNormalization(epsilon=1e-5)
    promoted = layers.Promote(keras.layers.LayerNormalization(epsilon=1e-5), dtype="float64")
    plain.build(x.shape)
    promoted.build(x.shape)
    _PROMOTE["pair"] = (plain, promoted)
    return (x,)


def _ln_accuracy(inputs, outputs):
    x = np.asarray(inputs[0], np.float64)
    m = x.mean(-1, keepdims=True)
    ref = (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)
    return {"metric": "max abs error vs float64 layer norm (|y| ~ 1; |mean|/std = 1e4)",
            **{k: float(np.max(np.abs(np.asarray(v, np.float64) - ref)))
               for k, v in outputs.items()}}


register(Case(
    name="layers/Promote/LayerNormalization", family=_FAMILY, make_inputs=_promote_inputs,
    baseline=lambda x: _PROMOTE["pair"][0](x), candidate=lambda x: _PROMOTE["pair"][1](x),
    baseline_name="keras LayerNormalization (float32)",
    candidate_name="so.layers.Promote(LayerNormalization, 'float64')",
    accuracy=_ln_accuracy,
    bar_source=_NO_BAR + "; so.promote's target compares with native float64 instead",
    extra={"shape": "quick 512x512, full 4096x1024 float32"}))


# -- SmoothSwitch vs the naive sigmoid blend ------------------------------------------------------

_switch = layers.SmoothSwitch(threshold=0.0, temperature=0.5)


def _switch_inputs(rng, size):
    n = pick(size, full=1 << 22, quick=1 << 20, smoke=1 << 10)
    return ((rng.standard_normal(n) * 30).astype(np.float32),
            rng.standard_normal(n).astype(np.float32),
            (rng.standard_normal(n) * 1e3).astype(np.float32))


def _naive_switch(x, a, b):
    w = tf.sigmoid(x / 0.5)
    return w * a + (1 - w) * b


def _switch_accuracy(inputs, outputs):
    x, a, b = (np.asarray(v, np.float64) for v in inputs)
    t = np.tanh(x / 0.5 / 2)
    ref = 0.5 * (1 + t) * a + 0.5 * (1 - t) * b  # sigmoid(z) = (1 + tanh(z/2)) / 2
    return {"metric": "max ulp vs float64 blend", **{
        k: float(testing.ulp_distance(np.asarray(v), ref, "float32").max())
        for k, v in outputs.items()}}


register(Case(
    name="layers/SmoothSwitch", family=_FAMILY, make_inputs=_switch_inputs,
    baseline=_naive_switch, candidate=lambda x, a, b: _switch([x, a, b]),
    baseline_name="w = sigmoid(x / T); w * a + (1 - w) * b",
    candidate_name="so.layers.SmoothSwitch(0, 0.5)([x, a, b])",
    accuracy=_switch_accuracy,
    bar_source="smooth_where's targets (fwd+bwd), applied to its layer form",
    bar={"graph/fwd+bwd": 1.5, "xla/fwd+bwd": 1.1},
    bytes_moved=elementwise_traffic()))


# -- SmoothedLoss: model.fit with and without the callback (Python-level: eager mode) -----------

def _fit_case():
    plain, smoothed = _mlp(0), _mlp(0)
    state = {}

    def make_inputs(rng, size):
        steps, batch = pick(size, full=(64, 256), quick=(32, 256), smoke=(2, 8))
        x = rng.standard_normal((steps * batch, 256)).astype(np.float32)
        y = rng.standard_normal((steps * batch, 10)).astype(np.float32)
        state["batch"] = batch
        return x, y

    def fit(model, cbs):
        def run(x, y):
            model.fit(x, y, batch_size=state["batch"], epochs=1, verbose=0, shuffle=False,
                      callbacks=cbs)
            return tf.constant(0.0)
        return run

    return Case(
        name="layers/SmoothedLoss/fit", family=_FAMILY, make_inputs=make_inputs,
        baseline=lambda x, y: fit(plain, [])(x, y),
        candidate=lambda x, y: fit(smoothed, [callbacks.SmoothedLoss(0.1)])(x, y),
        baseline_name="model.fit (one epoch)",
        candidate_name="model.fit + SmoothedLoss(0.1)",
        grad=False, modes=("eager",),
        accuracy_na="overhead only (the callback logs the loss; it does not change it)",
        bar_source="none stated",
        extra={"model": "6 x Dense MLP, one epoch of 32 batches of 256 (quick); the timed "
                        "call is a whole model.fit"})


register(_fit_case())
