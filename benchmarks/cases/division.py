"""Issue 4: safe division and gradient-safe where against the naive unsafe TF code.

Bars (forward+backward, 4M float32, CPU): graph mode <= 1.5x and
``jit_compile=True`` <= 1.1x the naive code. Inputs contain exact zeros (1 in
64), where the naive code's output or gradient is inf/NaN; the accuracy entry
records the ulp error against the exact reference and those non-finite counts.
"""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, register
from safeops import testing

_N = 1 << 22  # 4M elements
_TINY = float(np.finfo(np.float32).tiny)
_BARS = {"graph/fwd+bwd": 1.5, "xla/fwd+bwd": 1.1}


def _with_zeros(v, rng):
    v[rng.integers(0, v.size, v.size // 64)] = 0.0
    return v


def _divide_inputs(rng, quick):
    x = rng.standard_normal(_N).astype(np.float32)
    y = _with_zeros(rng.standard_normal(_N).astype(np.float32), rng)
    return x, y


def _grad_nonfinite(fn, *inputs):
    xs = [tf.constant(v) for v in inputs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        loss = tf.reduce_sum(fn(*xs))
    grads = tape.gradient(loss, xs)
    return int(sum(np.count_nonzero(~np.isfinite(g.numpy())) for g in grads))


def _naive_divide(x, y):
    return x / y


def _divide_accuracy(inputs, outputs):
    x, y = inputs
    ok = np.abs(y) >= _TINY  # where safe_divide is specified as exactly x / y
    exact = (x[ok].astype(np.float64) / y[ok].astype(np.float64))  # float32 quotient rounded once
    result = {"metric": "max ulp vs exact x/y (|y| >= tiny)"}
    for label in ("baseline", "safeops"):
        out = outputs[label]
        result[label] = float(testing.ulp_distance(out[ok], exact, "float32").max())
        result[f"{label}_nonfinite_out"] = int(np.count_nonzero(~np.isfinite(out)))
    result["baseline_nonfinite_grad"] = _grad_nonfinite(_naive_divide, x, y)
    result["safeops_nonfinite_grad"] = _grad_nonfinite(so.safe_divide, x, y)
    return result


def _log_inputs(rng, quick):
    return (_with_zeros(rng.standard_normal(_N).astype(np.float32), rng),)


def _naive_where_log(x):
    return tf.where(x > 0, tf.math.log(x), 0.0)


def _safe_where_log(x):
    return so.safe_where(x > 0, tf.math.log, tf.zeros_like, x)


def _log_accuracy(inputs, outputs):
    (x,) = inputs
    x64 = x.astype(np.float64)
    exact = np.where(x64 > 0, np.log(np.where(x64 > 0, x64, 1.0)), 0.0)
    result = {"metric": "max ulp vs float64 log"}
    for label in ("baseline", "safeops"):
        result[label] = float(testing.ulp_distance(outputs[label], exact, "float32").max())
    result["baseline_nonfinite_grad"] = _grad_nonfinite(_naive_where_log, x)
    result["safeops_nonfinite_grad"] = _grad_nonfinite(_safe_where_log, x)
    return result


register(Case(
    name="division/safe_divide/4M",
    family="division",
    make_inputs=_divide_inputs,
    baseline=_naive_divide,
    candidate=so.safe_divide,
    baseline_name="x / y",
    candidate_name="so.safe_divide",
    accuracy=_divide_accuracy,
    bar=dict(_BARS),
    extra={"n": _N, "zeros in y": "1/64"},
))

register(Case(
    name="division/safe_where_log/4M",
    family="division",
    make_inputs=_log_inputs,
    baseline=_naive_where_log,
    candidate=_safe_where_log,
    baseline_name="tf.where(x > 0, tf.math.log(x), 0.)",
    candidate_name="so.safe_where(x > 0, tf.math.log, tf.zeros_like, x)",
    accuracy=_log_accuracy,
    bar=dict(_BARS),
    extra={"n": _N, "zeros in x": "1/64"},
))
