"""Exact (correctly rounded, bitwise reproducible) reductions: the integer accumulator of
`safeops._core.exact` and the segment drop-ins built on it.

The sums are `so.reduce_sum` under `so.config.reproducible()`, as a user turns them on: in
graph mode on the CPU the fused kernel (`safeops/native/exact.cc`), under XLA the pure-TF
accumulator; the same bits either way.

Bars (CPU): correctly rounded `reduce_sum` of 8M float32 at most 1.3x `tf.reduce_sum` in
graph mode and 3x under XLA; float64 at most 2x; `so.segment_sum` at most 2x
`tf.math.unsorted_segment_sum`. Accuracy: ulp distance to the exact sum rounded once
(`safeops.testing.exact_sum`), where the exact accumulator must read 0.
"""

import math

import numpy as np
import tensorflow as tf

import safeops.segment as so_segment
from benchmarks.registry import Case, pick, register
from safeops import config, summation, testing
from safeops._core import exact

_SOURCE = "reproducible reductions"


def _sizes(size):
    return pick(size, full=1 << 23, quick=1 << 20, smoke=1 << 12)


def _wide(rng, n, dtype):
    """Values over 20 decades with cancellation: condition far beyond 1e8."""
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-10, 10, n)
    x[n // 2:] = -x[:n // 2] * (1 + 2.0 ** -12)
    return rng.permutation(x).astype(dtype)


def _ulps(got, want, dtype):
    return int(np.max(testing.ulp_distance(np.asarray(got, np.float64), want, dtype)))


def _sum_accuracy(dtype):
    def accuracy(inputs, outputs):
        x = np.asarray(inputs[0])
        want = testing.exact_sum(x, dtype="float64")
        return {"metric": f"ulp vs exact sum rounded once ({dtype})",
                **{k: _ulps(v, want, dtype) for k, v in outputs.items()}}
    return accuracy


def _exact_sum(x):
    with config.reproducible():  # read when the op is built: the traced graph keeps it
        return summation.reduce_sum(x)


for _dtype, _bar, _modes in (("float32", {"graph/fwd": 1.3, "xla/fwd": 3.0}, ("graph", "xla")),
                             ("float64", {"graph/fwd": 2.0}, ("graph",))):
    register(Case(
        name=f"exact/reduce_sum_{_dtype}/8M",
        family="exact",
        make_inputs=lambda rng, size, d=_dtype: (_wide(rng, _sizes(size), d),),
        baseline=tf.reduce_sum,
        candidate=_exact_sum,
        baseline_name="tf.reduce_sum",
        candidate_name="correctly rounded sum (so.reduce_sum, reproducible)",
        modes=_modes,
        accuracy=_sum_accuracy(_dtype),
        accuracy_only={"math.fsum (accuracy only)": lambda x: math.fsum(x.astype(np.float64))},
        bar=_bar,
        bar_source=f"{_SOURCE}: 8M {_dtype}, correctly rounded sum at most "
                   f"{_bar['graph/fwd']}x tf.reduce_sum (graph)"
                   + (", 3x under XLA" if "xla/fwd" in _bar else ""),
        extra={"n": "8M (quick: 1M)", "data": "20 decades of exponents, cancelling halves"},
    ))


for _dtype, _bar in (("float32", {"graph/fwd": 1.3, "xla/fwd": 3.0}),
                     ("float64", {"graph/fwd": 2.0})):
    register(Case(
        name=f"exact/reduce_sum_{_dtype}_normal/8M",
        family="exact",
        make_inputs=lambda rng, size, d=_dtype: (rng.standard_normal(_sizes(size)).astype(d),),
        baseline=tf.reduce_sum,
        candidate=_exact_sum,
        baseline_name="tf.reduce_sum",
        candidate_name="correctly rounded sum (so.reduce_sum, reproducible)",
        modes=("graph", "xla") if "xla/fwd" in _bar else ("graph",),
        accuracy=_sum_accuracy(_dtype),
        bar=_bar,
        bar_source=f"{_SOURCE}: 8M {_dtype}, correctly rounded sum at most "
                   f"{_bar['graph/fwd']}x tf.reduce_sum (graph)"
                   + (", 3x under XLA" if "xla/fwd" in _bar else ""),
        extra={"n": "8M (quick: 1M)", "data": "N(0, 1): well conditioned"},
    ))


def _exact_cumsum(x):
    return exact.exact_cumsum(x, 0)


register(Case(
    name="exact/cumsum_float32/1M",
    family="exact",
    make_inputs=lambda rng, size: (_wide(rng, pick(size, full=1 << 20, quick=1 << 18,
                                                    smoke=1 << 10), "float32"),),
    baseline=tf.cumsum,
    candidate=_exact_cumsum,
    baseline_name="tf.cumsum",
    candidate_name="exact accumulator cumsum (every prefix correctly rounded)",
    modes=("graph",),
    accuracy=lambda inputs, outputs: {
        "metric": "ulp(last prefix) vs exact (float32)",
        **{k: _ulps(np.asarray(v)[-1], testing.exact_sum(np.asarray(inputs[0])), "float32")
           for k, v in outputs.items()}},
    bar_source=f"none stated ({_SOURCE} bars reduce_sum and segment_sum)",
    extra={"n": "1M (quick: 256K)"},
))


def _segments(rng, size):
    rows = pick(size, full=1 << 20, quick=1 << 17, smoke=1 << 9)
    num = max(rows // 100, 2)
    data = np.stack([_wide(rng, rows, "float32") for _ in range(16)], 1)
    ids = np.sort(rng.integers(0, num, rows)).astype(np.int32)
    return data, ids


def _segment_accuracy(inputs, outputs):
    data, ids = np.asarray(inputs[0]), np.asarray(inputs[1])
    num = int(ids.max()) + 1
    check = min(num, 64)  # the first segments, all columns: enough to tell 0 ulp from not
    want = np.array([[math.fsum(data[ids == s, c].astype(np.float64)) for c in range(16)]
                     for s in range(check)])
    return {"metric": f"max ulp vs exact (first {check} segments, float32)",
            **{k: _ulps(np.asarray(v)[:check], want, "float32") for k, v in outputs.items()}}


for _name, _candidate in (("segment_sum", lambda d, i: so_segment.segment_sum(d, i)),
                          ("unsorted_segment_sum",
                           lambda d, i: so_segment.unsorted_segment_sum(
                               d, i, tf.reduce_max(i) + 1))):
    register(Case(
        name=f"exact/{_name}/1Mx16",
        family="exact",
        make_inputs=_segments,
        baseline=lambda d, i: tf.math.unsorted_segment_sum(d, i, tf.reduce_max(i) + 1),
        candidate=_candidate,
        baseline_name="tf.math.unsorted_segment_sum",
        candidate_name=f"so.{_name}",
        modes=("graph",),
        accuracy=_segment_accuracy,
        bar={"graph/fwd": 2.0},
        bar_source=f"{_SOURCE}: segment_sum at most 2x tf.math.unsorted_segment_sum",
        extra={"rows": "1M x 16 float32 (quick: 128K)", "segments": "rows / 100, sorted ids"},
    ))
