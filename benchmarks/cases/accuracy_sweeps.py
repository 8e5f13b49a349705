"""Accuracy sweeps: relative error vs condition number for sums, dot products, cumsums.

Inputs come from `safeops.testing.ill_conditioned_sum/dot` (float32); references are exact
(`safeops.testing.exact_sum`/`exact_dot`). Each series is what a user would run instead:
naive TF, TFP's Kahan sum (extra `probability`), NumPy's float64-accumulated result rounded to
float32, `math.fsum` rounded to float32 (the accuracy ceiling), and safeops.
"""

import math

import numpy as np
import tensorflow as tf

from benchmarks.registry import Sweep, pick, register_sweep
from safeops import testing as T

_CONDS = [1e2, 1e4, 1e6, 1e8, 1e10, 1e12, 1e14, 1e16]


def _relerr(got, exact):
    got = float(got)
    if not math.isfinite(got):
        return float("inf")
    return abs(got - exact) / abs(exact)


def _tfp_kahan():
    try:
        import tensorflow_probability as tfp
    except ImportError:
        return None
    return lambda x: tfp.math.reduce_kahan_sum(x).total


def _n(size):
    return pick(size, full=200_000, quick=20_000, smoke=500)


def _conds(size):
    return _CONDS[::2] if size == "smoke" else _CONDS


def _sum_sweep(size, seed):
    import safeops as so

    n = _n(size)
    kahan = _tfp_kahan()
    series = {"tf.reduce_sum (float32)": [], "NumPy float64 sum -> float32": [],
              "math.fsum -> float32": [], "safeops.reduce_sum": []}
    if kahan is not None:
        series["tfp.math.reduce_kahan_sum"] = []
    achieved = []
    for cond in _conds(size):
        x, exact, c = T.ill_conditioned_sum(n, cond, "float32", seed=seed)
        achieved.append(c)
        t = tf.constant(x)
        series["tf.reduce_sum (float32)"].append(_relerr(tf.reduce_sum(t), exact))
        series["NumPy float64 sum -> float32"].append(
            _relerr(np.float32(np.sum(x, dtype=np.float64)), exact))
        series["math.fsum -> float32"].append(_relerr(np.float32(math.fsum(x.astype(float))), exact))
        series["safeops.reduce_sum"].append(_relerr(so.reduce_sum(t), exact))
        if kahan is not None:
            series["tfp.math.reduce_kahan_sum"].append(_relerr(kahan(t), exact))
    return {"x": achieved, "series": series}


def _dot_sweep(size, seed):
    import safeops as so

    n = _n(size)
    series = {"tf.reduce_sum(x * y) (float32)": [], "tf.tensordot (float32)": [],
              "NumPy float64 dot -> float32": [], "safeops.dot": []}
    achieved = []
    for cond in _conds(size):
        x, y, exact, c = T.ill_conditioned_dot(n, cond, "float32", seed=seed)
        achieved.append(c)
        tx, ty = tf.constant(x), tf.constant(y)
        series["tf.reduce_sum(x * y) (float32)"].append(_relerr(tf.reduce_sum(tx * ty), exact))
        series["tf.tensordot (float32)"].append(_relerr(tf.tensordot(tx, ty, 1), exact))
        series["NumPy float64 dot -> float32"].append(
            _relerr(np.float32(np.dot(x.astype(np.float64), y.astype(np.float64))), exact))
        series["safeops.dot"].append(_relerr(so.dot(tx, ty), exact))
    return {"x": achieved, "series": series}


def _cumsum_sweep(size, seed):
    import safeops as so

    n = min(_n(size), 20_000)
    series = {"tf.cumsum (float32)": [], "NumPy float64 cumsum -> float32": [],
              "safeops.cumsum": []}
    achieved = []
    for cond in _conds(size):
        x, _, c = T.ill_conditioned_sum(n, cond, "float32", seed=seed + 1)
        achieved.append(c)
        prefixes = np.array([float(v) for v in _exact_prefixes(x)])
        t = tf.constant(x)

        def worst(got):
            got = np.asarray(got, dtype=np.float64)
            nz = prefixes != 0
            return float(np.max(np.abs(got[nz] - prefixes[nz]) / np.abs(prefixes[nz])))

        series["tf.cumsum (float32)"].append(worst(tf.cumsum(t)))
        series["NumPy float64 cumsum -> float32"].append(
            worst(np.cumsum(x, dtype=np.float64).astype(np.float32)))
        series["safeops.cumsum"].append(worst(so.cumsum(t)))
    return {"x": achieved, "series": series}


def _exact_prefixes(x):
    """Exact prefix sums (Python Fractions are exact; float() rounds each once)."""
    from fractions import Fraction

    total = Fraction(0)
    for v in x.astype(np.float64):
        total += Fraction(float(v))
        yield total


for _name, _title, _run in [
    ("sum_error_vs_condition", "float32 sum: relative error vs condition number", _sum_sweep),
    ("dot_error_vs_condition", "float32 dot product: relative error vs condition number",
     _dot_sweep),
    ("cumsum_error_vs_condition",
     "float32 cumsum: worst relative error over all prefixes vs condition number", _cumsum_sweep),
]:
    register_sweep(Sweep(name=_name, family="summation", title=_title,
                         xlabel="condition number (achieved)", ylabel="relative error", run=_run))
