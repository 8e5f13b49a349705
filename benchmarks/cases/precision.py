"""Precision control: compensated Adam step, `promote`, loss-scale optimizer step.

Targets (CPU graph mode): Adam step with ``kahan_summation=True`` on 4M
float32 parameters <= 1.3x Keras Adam; `so.promote` around a small function
<= 1.2x the same function run natively in float64; loss-scale optimizer step
<= 1.1x `keras.optimizers.LossScaleOptimizer`.

Optimizer cases keep their variables in module-level state built eagerly in
`make_inputs` (Keras optimizers cannot create variables inside the harness's
`tf.function`); each timed call is one optimizer step.
"""

import keras
import mpmath
import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, pick, register
from safeops import testing

_STATE = {}


def _step_fn(key, which):
    def step(*grads):
        opt, variables = _STATE[key][which]
        opt.apply(list(grads), variables)
        return tf.convert_to_tensor(variables[0][:4])
    return step


def _loop(opt, var, grad, n):
    grad = tf.constant(grad, var.dtype)

    @tf.function(jit_compile=True)
    def run():
        return tf.while_loop(lambda i: i < n, lambda i: (opt.apply([grad], [var]), i + 1)[1],
                             [tf.constant(0)])

    run()
    return np.asarray(var.numpy(), np.float64)


# -- Adam step with kahan_summation=True, 4M float32 parameters -----------------

def _opt_inputs(key, make_pair):
    """make_inputs for an optimizer-step case: 4M float32 parameters in full and quick mode
    (the bar is stated at 4M; one step takes ~10 ms), 4K in smoke mode."""
    def make(rng, size):
        n = pick(size, full=4 << 20, quick=4 << 20, smoke=1 << 12)
        init = rng.standard_normal(n).astype(np.float32)
        grad = rng.standard_normal(n).astype(np.float32)
        state = {}
        for which, opt in zip(("baseline", "safeops"), make_pair()):
            var = keras.Variable(init)
            opt.build([var])
            state[which] = (opt, [var])
        _STATE[key] = state
        return (grad,)
    return make


_adam_inputs = _opt_inputs("adam", lambda: (keras.optimizers.Adam(1e-3),
                                            so.optimizers.Adam(1e-3, kahan_summation=True)))


def _adam_accuracy(inputs, outputs):
    # 1000 Adam steps of lr=1e-7 on a float32 weight of 1.0 with a constant gradient: each step
    # moves the weight by ~1e-7, below one ulp (1.19e-7). Reference: Keras Adam in float64.
    n, grad = 1000, -np.ones(16)
    ref = _loop(keras.optimizers.Adam(1e-7), keras.Variable(np.ones(16), dtype="float64"),
                grad, n)
    base = _loop(keras.optimizers.Adam(1e-7), keras.Variable(np.ones(16), dtype="float32"),
                 grad, n)
    ours = _loop(so.optimizers.Adam(1e-7, kahan_summation=True),
                 keras.Variable(np.ones(16), dtype="float32"), grad, n)
    moved = ref - 1.0
    return {"metric": "relerr of the 1000-step displacement (float32 w=1, lr=1e-7)",
            "baseline": float(np.max(np.abs((base - 1.0) - moved) / np.abs(moved))),
            "safeops": float(np.max(np.abs((ours - 1.0) - moved) / np.abs(moved)))}


register(Case(
    name="precision/adam_kahan_step",
    family="precision",
    make_inputs=_adam_inputs,
    baseline=_step_fn("adam", "baseline"),
    candidate=_step_fn("adam", "safeops"),
    baseline_name="keras.optimizers.Adam",
    candidate_name="so.optimizers.Adam(kahan_summation=True)",
    grad=False,
    modes=("graph",),
    accuracy=_adam_accuracy,
    bar={"graph/fwd": 1.3},
    bar_source="stated for 4M float32 parameters, graph mode",
    extra={"params": "float32, as many as the gradient",
           "note": "one optimizer step per call"},
))


# -- SGD (momentum) and AdamW with kahan_summation=True ------------------------------------------

def _displacement_accuracy(make_opt, lr, n=1000):
    """relerr of the n-step displacement of float32 weights w=1 under a constant gradient -1,
    each step below half an ulp of 1.0; reference: the Keras optimizer in float64."""
    def accuracy(inputs, outputs):
        grad = -np.ones(16)
        ref = _loop(make_opt("keras", lr), keras.Variable(np.ones(16), dtype="float64"), grad, n)
        base = _loop(make_opt("keras", lr), keras.Variable(np.ones(16), dtype="float32"), grad, n)
        ours = _loop(make_opt("so", lr), keras.Variable(np.ones(16), dtype="float32"), grad, n)
        moved = ref - 1.0
        return {"metric": f"relerr of the {n}-step displacement (float32 w=1, lr={lr:g})",
                "baseline": float(np.max(np.abs((base - 1.0) - moved) / np.abs(moved))),
                "safeops": float(np.max(np.abs((ours - 1.0) - moved) / np.abs(moved)))}
    return accuracy


def _sgd(kind, lr=1e-2):
    if kind == "keras":
        return keras.optimizers.SGD(lr, momentum=0.9)
    return so.optimizers.SGD(lr, momentum=0.9, kahan_summation=True)


def _adamw(kind, lr=1e-3):
    if kind == "keras":
        return keras.optimizers.AdamW(lr)
    return so.optimizers.AdamW(lr, kahan_summation=True)


for _key, _make_opt, _label, _lr in (("sgd", _sgd, "SGD(momentum=0.9)", 1e-9),
                                     ("adamw", _adamw, "AdamW", 1e-7)):
    register(Case(
        name=f"precision/{_key}_kahan_step",
        family="precision",
        make_inputs=_opt_inputs(_key, lambda m=_make_opt: (m("keras"), m("so"))),
        baseline=_step_fn(_key, "baseline"),
        candidate=_step_fn(_key, "safeops"),
        baseline_name=f"keras.optimizers.{_label}",
        candidate_name=f"so.optimizers.{_label}, kahan_summation=True",
        grad=False,
        modes=("graph",),
        accuracy=_displacement_accuracy(_make_opt, _lr),
        bar_source="none stated (the target is set for the Adam step)",
        extra={"params": "float32, as many as the gradient",
               "note": "one optimizer step per call"},
    ))


# -- promote around a small function vs the function run natively in float64 --------

def _lse(x):
    return tf.reduce_logsumexp(x, axis=-1)


_promoted_lse = so.promote(_lse)


def _promote_inputs(rng, size):
    rows = pick(size, full=512, quick=128, smoke=8)
    x32 = (rng.standard_normal((rows, 1024)) * 30).astype(np.float32)
    return x32, x32.astype(np.float64)


def _promote_accuracy(inputs, outputs):
    x32 = inputs[0][:8]
    with mpmath.workdps(50):
        exact = [mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
                 for row in x32]
    ref = testing.round_to_dtype(np.array(exact, dtype=object), "float32")
    err = {k: float(testing.ulp_distance(np.asarray(v)[:8], ref, "float32").max())
           for k, v in outputs.items()}
    return {"metric": "max ulp (float32) vs mpmath, first 8 rows", **err}


register(Case(
    name="precision/promote_logsumexp",
    family="precision",
    make_inputs=_promote_inputs,
    baseline=lambda x32, x64: _lse(x64),
    candidate=lambda x32, x64: _promoted_lse(x32),
    baseline_name="reduce_logsumexp in float64 (native)",
    candidate_name="so.promote(reduce_logsumexp) on float32",
    accuracy=_promote_accuracy,
    accuracy_only={"tf_float32": lambda x32, x64: tf.reduce_logsumexp(x32, -1).numpy()},
    bar={"graph/fwd": 1.2, "graph/fwd+bwd": 1.2, "xla/fwd": 1.2, "xla/fwd+bwd": 1.2},
    bar_source="so.promote around a small function vs the function run natively in float64",
    extra={"note": "fwd+bwd: each side also returns a zero gradient for its unused input"},
))


# -- loss-scale optimizer step ----------------------------------------------------------

def _lso_inputs(rng, size):
    k = pick(size, full=512, quick=512, smoke=16)
    shapes = [(k, k), (k,), (k, 2 * k), (2 * k,)]
    inits = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = tuple((rng.standard_normal(s) * 1024).astype(np.float32) for s in shapes)
    state = {}
    for which, opt in [
            ("baseline", keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3))),
            ("safeops", so.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-3)))]:
        variables = [keras.Variable(v) for v in inits]
        opt.build(variables)
        state[which] = (opt, variables)
    _STATE["lso"] = state
    return grads


def _lso_accuracy(inputs, outputs):
    # Not an error metric: the loss scale left after 400 consecutive overflowing steps.
    out = {}
    for label, opt in [("baseline", keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())),
                       ("safeops", so.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD()))]:
        var = keras.Variable(1.0)
        _loop_graph(opt, var, float("inf"), 400)
        out[label] = float(opt.dynamic_scale)
    return {"metric": "loss scale after 400 overflows (0 = training stalled forever)", **out}


def _loop_graph(opt, var, grad, n):
    grad = tf.constant(grad, var.dtype)

    @tf.function
    def run():
        return tf.while_loop(lambda i: i < n, lambda i: (opt.apply([grad], [var]), i + 1)[1],
                             [tf.constant(0)])

    run()


register(Case(
    name="precision/loss_scale_optimizer_step",
    family="precision",
    make_inputs=_lso_inputs,
    baseline=_step_fn("lso", "baseline"),
    candidate=_step_fn("lso", "safeops"),
    baseline_name="keras.optimizers.LossScaleOptimizer(Adam)",
    candidate_name="so.mixed_precision.LossScaleOptimizer(Adam)",
    grad=False,
    modes=("graph",),
    accuracy=_lso_accuracy,
    bar={"graph/fwd": 1.1},
    bar_source="stated for one optimizer step, graph mode",
    size_label=lambda inputs: f"{sum(np.size(g) for g in inputs)}_params",
    extra={"params": "float32 in 4 variables (the size: their total)",
           "note": "finite gradients: full step"},
))
