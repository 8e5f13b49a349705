"""Summation family (issue 3): reduce_sum, axis reductions, cumsum, KahanAccumulator.add."""

import math

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, register
from safeops import testing

_COND = 1e8


def _ill(n):
    """Ill-conditioned float32 data (cond ~1e8): exact head from GenSum, tiled to length n."""
    x, _, cond = testing.ill_conditioned_sum(1 << 12, _COND, "float32", seed=0)
    reps = n // x.size
    return np.tile(x, reps), cond


def _kahan_tfp(x):
    try:
        import tensorflow_probability as tfp  # lazily: not a safeops dependency
    except ImportError:
        return tf.reduce_sum(x)
    s, c = tfp.math.reduce_kahan_sum(x)
    return s + c


def _sum_accuracy(inputs, outputs):
    x = np.asarray(inputs[0])
    exact = testing.exact_sum(x)
    return {"metric": "ulp", **{k: int(np.max(testing.ulp_distance(np.asarray(v, np.float64), exact,
                                                                  "float32")))
                                for k, v in outputs.items()}}


def _make_sum(rng, quick):
    n = (1 << 20) if quick else (1 << 23)
    return (_ill(n)[0],)


register(Case(
    name="summation/reduce_sum/8M",
    family="summation",
    make_inputs=_make_sum,
    baseline=tf.reduce_sum,
    candidate=so.reduce_sum,
    baseline_name="tf.reduce_sum",
    candidate_name="so.reduce_sum",
    accuracy=_sum_accuracy,
    anchors={"tfp.reduce_kahan_sum": _kahan_tfp,
             "numpy-style f64 cast+sum": lambda x: tf.reduce_sum(tf.cast(x, tf.float64))},
    accuracy_only={"math.fsum": lambda x: math.fsum(x.astype(np.float64)),
                   "numpy float64 sum": lambda x: np.sum(x, dtype=np.float64)},
    bar={"graph/fwd": 2.0},
    extra={"cond": _COND, "n": "8M (quick: 1M)", "stretch": "1.3x",
           "data": "GenSum 4096-vector (cond ~1e8) tiled"},
))

for _axis in (0, 1):
    register(Case(
        name=f"summation/reduce_sum_axis{_axis}/4096x4096",
        family="summation",
        make_inputs=lambda rng, quick: (rng.standard_normal(
            (1024, 1024) if quick else (4096, 4096)).astype(np.float32),),
        baseline=lambda x, a=_axis: tf.reduce_sum(x, axis=a),
        candidate=lambda x, a=_axis: so.reduce_sum(x, axis=a),
        baseline_name="tf.reduce_sum",
        candidate_name="so.reduce_sum",
        modes=("graph",),
        bar={"graph/fwd": 2.0},
        extra={"n": "4096x4096 (quick: 1024x1024)"},
    ))


def _cumsum_accuracy(inputs, outputs):
    x = np.asarray(inputs[0])
    exact = x.size * float(x[0])  # the last prefix of copies of 0.1 (exact in float64)
    return {"metric": "ulp(last prefix)", **{
        k: int(np.max(testing.ulp_distance(np.asarray(v, np.float64)[-1], exact, "float32")))
        for k, v in outputs.items()}}


register(Case(
    name="summation/cumsum/8M",
    family="summation",
    make_inputs=lambda rng, quick: (np.full((1 << 20) if quick else (1 << 23), 0.1, np.float32),),
    baseline=tf.cumsum,
    candidate=so.cumsum,
    baseline_name="tf.cumsum",
    candidate_name="so.cumsum",
    accuracy=_cumsum_accuracy,
    modes=("graph",),
    bar={"graph/fwd": 3.0},
    extra={"n": "8M (quick: 1M)", "data": "copies of 0.1"},
))

_N_ACC = 1 << 20
_tf_var = None
_acc = None


def _assign_add(v):
    global _tf_var
    if _tf_var is None:
        _tf_var = tf.Variable(tf.zeros([_N_ACC]))
    return _tf_var.assign_add(v)


def _kahan_add(v):
    global _acc
    if _acc is None:
        _acc = so.KahanAccumulator(shape=[_N_ACC])
    return _acc.add(v)


register(Case(
    name="summation/kahan_add/1M",
    family="summation",
    make_inputs=lambda rng, quick: (rng.standard_normal(_N_ACC).astype(np.float32),),
    baseline=_assign_add,
    candidate=_kahan_add,
    baseline_name="Variable.assign_add",
    candidate_name="KahanAccumulator.add",
    grad=False,
    modes=("graph",),
    bar={"graph/fwd": 2.0},
    extra={"n": "1M"},
))
