"""Safe division, gradient-safe and smooth where against the naive unsafe TF code.

Targets (forward+backward, 4M float32, CPU): graph mode <= 1.5x and ``jit_compile=True``
<= 1.1x the naive code. Inputs contain exact zeros (1 in 64), where the naive code's output
or gradient is inf/NaN; the accuracy entry records the ulp error against the exact reference
and those non-finite counts. Sizes: 4M in full and quick mode (the size the targets are
stated for), 4K in smoke. Every case is element-wise and declares the bytes it moves.
"""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, elementwise_traffic, pick, register
from safeops import testing

_TINY = float(np.finfo(np.float32).tiny)
_BARS = {"graph/fwd+bwd": 1.5, "xla/fwd+bwd": 1.1}
BAR_SOURCE = "stated for fwd+bwd on 4M float32, CPU: graph <= 1.5x, jit_compile <= 1.1x"


def n_elements(size):
    """4M elements (the targets' size) in full and quick mode, 4K in smoke mode."""
    return pick(size, full=1 << 22, quick=1 << 22, smoke=1 << 12)


def _with_zeros(v, rng):
    v[rng.integers(0, v.size, v.size // 64)] = 0.0
    return v


def _divide_inputs(rng, size):
    n = n_elements(size)
    x = rng.standard_normal(n).astype(np.float32)
    y = _with_zeros(rng.standard_normal(n).astype(np.float32), rng)
    return x, y


def grad_nonfinite(fn, *inputs):
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
    result["baseline_nonfinite_grad"] = grad_nonfinite(_naive_divide, x, y)
    result["safeops_nonfinite_grad"] = grad_nonfinite(so.safe_divide, x, y)
    return result


def _log_inputs(rng, size):
    return (_with_zeros(rng.standard_normal(n_elements(size)).astype(np.float32), rng),)


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
    result["baseline_nonfinite_grad"] = grad_nonfinite(_naive_where_log, x)
    result["safeops_nonfinite_grad"] = grad_nonfinite(_safe_where_log, x)
    return result


register(Case(
    name="division/safe_divide",
    family="division",
    make_inputs=_divide_inputs,
    baseline=_naive_divide,
    candidate=so.safe_divide,
    baseline_name="x / y",
    candidate_name="so.safe_divide",
    accuracy=_divide_accuracy,
    bar=dict(_BARS),
    bar_source=BAR_SOURCE,
    bytes_moved=elementwise_traffic(),
    extra={"zeros in y": "1/64"},
))

register(Case(
    name="division/safe_where_log",
    family="division",
    make_inputs=_log_inputs,
    baseline=_naive_where_log,
    candidate=_safe_where_log,
    baseline_name="tf.where(x > 0, tf.math.log(x), 0.)",
    candidate_name="so.safe_where(x > 0, tf.math.log, tf.zeros_like, x)",
    accuracy=_log_accuracy,
    bar=dict(_BARS),
    bar_source=BAR_SOURCE,
    bytes_moved=elementwise_traffic(),
    extra={"zeros in x": "1/64"},
))


# -- divide_no_nan (drop-in for tf.math.divide_no_nan) ---------------------------------------

def _dnn_inputs(rng, size):
    x, y = _divide_inputs(rng, size)
    x[::97] = np.inf  # inf / 0 must still give 0 (and a 0 gradient)
    return x, y


def _dnn_accuracy(inputs, outputs):
    x, y = inputs
    ok = (y != 0) & np.isfinite(x)
    exact = x[ok].astype(np.float64) / y[ok].astype(np.float64)
    result = {"metric": "max ulp vs exact x/y (y != 0)"}
    for label in ("baseline", "safeops"):
        result[label] = float(testing.ulp_distance(outputs[label][ok], exact, "float32").max())
    result["baseline_nonfinite_grad"] = grad_nonfinite(tf.math.divide_no_nan, x, y)
    result["safeops_nonfinite_grad"] = grad_nonfinite(so.divide_no_nan, x, y)
    return result


register(Case(
    name="division/divide_no_nan", family="division", make_inputs=_dnn_inputs,
    baseline=tf.math.divide_no_nan, candidate=so.divide_no_nan,
    baseline_name="tf.math.divide_no_nan", candidate_name="so.divide_no_nan",
    accuracy=_dnn_accuracy, bar=dict(_BARS), bar_source=BAR_SOURCE,
    bytes_moved=elementwise_traffic(), extra={"zeros in y": "1/64", "inf in x": "1/97"}))


# -- safe_reciprocal vs 1 / y ----------------------------------------------------------------

def _recip_inputs(rng, size):
    return (_with_zeros(rng.standard_normal(n_elements(size)).astype(np.float32), rng),)


def _recip_accuracy(inputs, outputs):
    (y,) = inputs
    ok = np.abs(y) >= _TINY
    exact = 1.0 / y[ok].astype(np.float64)
    result = {"metric": "max ulp vs exact 1/y (|y| >= tiny)"}
    for label in ("baseline", "safeops"):
        result[label] = float(testing.ulp_distance(outputs[label][ok], exact, "float32").max())
        result[f"{label}_nonfinite_out"] = int(np.count_nonzero(~np.isfinite(outputs[label])))
    result["baseline_nonfinite_grad"] = grad_nonfinite(lambda v: 1.0 / v, y)
    result["safeops_nonfinite_grad"] = grad_nonfinite(so.safe_reciprocal, y)
    return result


register(Case(
    name="division/safe_reciprocal", family="division", make_inputs=_recip_inputs,
    baseline=lambda y: 1.0 / y, candidate=so.safe_reciprocal,
    baseline_name="1 / y", candidate_name="so.safe_reciprocal",
    accuracy=_recip_accuracy, bar=dict(_BARS), bar_source=BAR_SOURCE,
    bytes_moved=elementwise_traffic(), extra={"zeros in y": "1/64"}))


# -- relative_error vs the hand-written |t - p| / (|t| + 1e-8) --------------------------------

_RE_EPS = 1e-3


def _relerr_inputs(rng, size):
    n = n_elements(size)
    t = (rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 3, n)).astype(np.float32)
    p = (t * (1 + 1e-3 * rng.standard_normal(n))).astype(np.float32)
    t[::64] = 0.0
    return t, p


def _naive_relerr(t, p):
    return tf.abs(t - p) / (tf.abs(t) + 1e-8)


def _relerr_accuracy(inputs, outputs):
    t, p = (v.astype(np.float64) for v in inputs)
    # the quantity both compute where |t| >= eps (the naive form's + 1e-8 is then below
    # float32 resolution relative to |t| >= 1e-3): exact in float64 to ~1e-16
    ok = np.abs(t) >= _RE_EPS
    exact = np.abs(t[ok] - p[ok]) / np.abs(t[ok])
    result = {"metric": f"max ulp vs exact |t-p|/|t| (|t| >= {_RE_EPS:g})"}
    for label in ("baseline", "safeops"):
        result[label] = float(testing.ulp_distance(outputs[label][ok], exact, "float32").max())
        # where |t| is tiny the naive term explodes to |t-p| / 1e-8
        result[f"{label}_max_where_t_tiny"] = float(np.max(outputs[label][~ok]))
    return result


register(Case(
    name="division/relative_error", family="division", make_inputs=_relerr_inputs,
    baseline=_naive_relerr, candidate=lambda t, p: so.relative_error(t, p, eps=_RE_EPS),
    baseline_name="|t - p| / (|t| + 1e-8)", candidate_name=f"so.relative_error(eps={_RE_EPS:g})",
    accuracy=_relerr_accuracy, bar=dict(_BARS), bar_source=BAR_SOURCE,
    bytes_moved=elementwise_traffic(), extra={"|t|": "1e-12 .. 1e3, zeros 1/64"}))


# -- smooth_where vs the naive sigmoid blend -----------------------------------------------------

def _sw_inputs(rng, size):
    n = n_elements(size)
    x = (rng.standard_normal(n) * 30).astype(np.float32)
    above = rng.standard_normal(n).astype(np.float32)
    below = (rng.standard_normal(n) * 1e3).astype(np.float32)
    return x, above, below


def _naive_smooth_where(x, above, below):
    w = tf.sigmoid(x)  # threshold 0, temperature 1
    return w * above + (1 - w) * below


def _sw_accuracy(inputs, outputs):
    x, a, b = (v.astype(np.float64) for v in inputs)
    w = 0.5 * (1 + np.tanh(x / 2))  # sigmoid(x), and 1 - w as sigmoid(-x): no cancellation
    exact = w * a + 0.5 * (1 - np.tanh(x / 2)) * b
    return {"metric": "max ulp vs float64 blend", **{
        label: float(testing.ulp_distance(outputs[label], exact, "float32").max())
        for label in ("baseline", "safeops")}}


register(Case(
    name="division/smooth_where", family="division", make_inputs=_sw_inputs,
    baseline=_naive_smooth_where,
    candidate=lambda x, a, b: so.smooth_where(x, 0.0, a, b, temperature=1.0),
    baseline_name="w = sigmoid(x); w * a + (1 - w) * b", candidate_name="so.smooth_where",
    accuracy=_sw_accuracy, bar=dict(_BARS), bar_source=BAR_SOURCE,
    bytes_moved=elementwise_traffic(), extra={"x": "30 N(0,1); below = 1e3 N(0,1)"}))
