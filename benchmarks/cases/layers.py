"""Keras layers and callbacks (issue 8): StableLayerNormalization and StableSoftmax against
Keras's layers, and the per-step cost of NumericsMonitor(check="loss"/"all")."""

import keras
import numpy as np
import tensorflow as tf

from benchmarks.registry import Case, register
from safeops import callbacks, layers, testing

_FAMILY = "layers"


def _rows(rng, quick, scale):
    n, d = (512, 512) if quick else (4096, 1024)
    return (scale + rng.standard_normal((n, d))).astype(np.float32)


# -- StableLayerNormalization ---------------------------------------------------------------

def _ln_pair():
    ours = layers.StableLayerNormalization(epsilon=1e-5)
    theirs = keras.layers.LayerNormalization(epsilon=1e-5)
    return ours, theirs


def _make_ln(ratio):
    ours, theirs = _ln_pair()

    def make_inputs(rng, quick):
        x = _rows(rng, quick, ratio)
        ours.build(x.shape)
        theirs.build(x.shape)
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
        quick=(_label == "mean1e4"),
        extra={"shape": "quick 512x512, full 4096x1024 float32", "|mean|/std": _ratio},
    ))


# -- StableSoftmax ----------------------------------------------------------------------------

_sm_ours, _sm_theirs = layers.StableSoftmax(), keras.layers.Softmax()


def _sm_inputs(rng, quick):
    x = 3.0 * _rows(rng, quick, 0.0)
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

    def make_inputs(rng, quick):
        n = 256
        x = rng.standard_normal((n, 256)).astype(np.float32)
        y = rng.standard_normal((n, 10)).astype(np.float32)
        for m in (plain, watched):
            m.build((None, 256))
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
        extra={"model": "6 x Dense(256) MLP, batch 256, SGD; the timed call is one full "
                        "training step (forward, backward, update)"},
    )


register(_monitor_case("loss"))
register(_monitor_case("all"))
