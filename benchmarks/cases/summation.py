"""Summation family: sums, axis reductions, mean/variance/std, cumsum, dot, matmul,
KahanAccumulator.add and the error-free transformations.

Targets (CPU graph mode): float32 `reduce_sum` of 8M at most 2.0x `tf.reduce_sum` (stretch
1.3x, and within 1.3x of the machine's read bandwidth); axis reductions of [4096, 4096] at
most 2.0x; `cumsum` of 8M at most 3x; `KahanAccumulator.add` on 1M at most 2x `assign_add`;
float32 `matmul` of 1024x1024 forward+backward at most 2.0x `tf.linalg.matmul`.
Mean/variance/std, dot and the EFTs have no speed target: they are measured and say so.
Every case but matmul is memory-bound and declares the bytes it moves.
"""

import importlib.util
import math

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import (Case, elementwise_traffic, pick, reduction_traffic,
                                 register)
from safeops import testing

_COND = 1e8
_HAS_TFP = importlib.util.find_spec("tensorflow_probability") is not None


def _ill(n, rng, head=1 << 12):
    """Ill-conditioned float32 data (cond ~1e8): a GenSum vector of length `head`, seeded from
    `rng`, tiled (each tile permuted) to length n; its exact sum is reps * exact(head)."""
    head = min(head, n)
    x, _, cond = testing.ill_conditioned_sum(head, _COND, "float32",
                                             seed=int(rng.integers(2 ** 31)))
    reps = n // x.size
    return rng.permuted(np.tile(x, (reps, 1)), axis=1).reshape(-1), cond


def _kahan_tfp(x):
    import tensorflow_probability as tfp  # lazily: not a safeops dependency

    s, c = tfp.math.reduce_kahan_sum(x)
    return s + c


def _ulps(got, exact):
    return int(np.max(testing.ulp_distance(np.asarray(got, np.float64), exact, "float32")))


def _sum_accuracy(inputs, outputs):
    x = np.asarray(inputs[0])
    exact = testing.exact_sum(x)
    return {"metric": "ulp vs exact sum (float32)",
            **{k: _ulps(v, exact) for k, v in outputs.items()}}


def _sizes(size):
    return pick(size, full=1 << 23, quick=1 << 20, smoke=1 << 12)


def _make_sum(rng, size):
    # the bandwidth target is stated for 8M: quick runs that size too (at 1M a graph call's
    # fixed cost, ~0.3 ms here, puts tf.reduce_sum itself at ~3x the read limit)
    return (_ill(pick(size, full=1 << 23, quick=1 << 23, smoke=1 << 12), rng)[0],)


_sum_anchors = {"cast to float64 + tf.reduce_sum (TF)":
                lambda x: tf.reduce_sum(tf.cast(x, tf.float64))}
_sum_extra = {"cond": _COND,
              "data": "GenSum 4096-vector (cond ~1e8), tiled with per-tile permutations"}
if _HAS_TFP:
    _sum_anchors["tfp.math.reduce_kahan_sum"] = _kahan_tfp
else:
    _sum_extra["tfp.math.reduce_kahan_sum"] = ("anchor skipped: tensorflow_probability is not "
                                               "installed (extra `probability`)")

register(Case(
    name="summation/reduce_sum",
    family="summation",
    make_inputs=_make_sum,
    baseline=tf.reduce_sum,
    candidate=so.reduce_sum,
    baseline_name="tf.reduce_sum",
    candidate_name="so.reduce_sum",
    accuracy=_sum_accuracy,
    anchors=_sum_anchors,
    host_anchors={"host NumPy np.sum(x, dtype=float64)": lambda x: np.sum(x, dtype=np.float64)},
    accuracy_only={"math.fsum (accuracy only)": lambda x: math.fsum(x.astype(np.float64))},
    bar={"graph/fwd": 2.0},
    bar_limit={"graph/fwd": 1.3},
    bar_source="stated for 8M float32, graph mode (stretch 1.3x tf.reduce_sum)",
    bytes_moved=reduction_traffic(),
    extra=_sum_extra,
))


def _make_mean(rng, size):
    return (_ill(_sizes(size), rng)[0],)


def _mean_accuracy(inputs, outputs):
    x = np.asarray(inputs[0])
    exact = testing.exact_sum(x) / x.size  # n is a power of two: the division is exact
    return {"metric": "ulp vs exact mean (float32)",
            **{k: _ulps(v, exact) for k, v in outputs.items()}}


register(Case(
    name="summation/reduce_mean",
    family="summation",
    make_inputs=_make_mean,
    baseline=tf.reduce_mean,
    candidate=so.reduce_mean,
    baseline_name="tf.reduce_mean",
    candidate_name="so.reduce_mean",
    accuracy=_mean_accuracy,
    bar_source="none stated (targets are set for reduce_sum, axis sums, cumsum and "
               "KahanAccumulator.add)",
    bytes_moved=reduction_traffic(),
    extra={"cond": _COND},
))


def _make_shifted(rng, size):
    # |mean|/std = 1e4: the case the documented 4-ulp variance bound is stated for
    return ((1e4 + rng.standard_normal(_sizes(size) // 2)).astype(np.float32),)


def _moment_accuracy(std):
    def accuracy(inputs, outputs):
        # float64 two-pass on the float32 data: relative error ~n * 1e-16, far below
        # float32's half ulp (6e-8), so it is the exact value for a float32 ulp count
        x = np.asarray(inputs[0], np.float64)
        var = np.mean((x - np.mean(x)) ** 2)
        ref = math.sqrt(var) if std else var
        return {"metric": "ulp vs float64 two-pass (|mean|/std = 1e4)",
                **{k: _ulps(v, ref) for k, v in outputs.items()}}
    return accuracy


for _op, _tf_op, _so_op in (("reduce_variance", tf.math.reduce_variance, so.reduce_variance),
                            ("reduce_std", tf.math.reduce_std, so.reduce_std)):
    register(Case(
        name=f"summation/{_op}",
        family="summation",
        make_inputs=_make_shifted,
        baseline=_tf_op,
        candidate=_so_op,
        baseline_name=f"tf.math.{_op}",
        candidate_name=f"so.{_op}",
        accuracy=_moment_accuracy(_op == "reduce_std"),
        bar_source="none stated (an accuracy bound only: within 4 ulp at |mean|/std up "
                   "to 1e6)",
        bytes_moved=reduction_traffic(),
        extra={"data": "1e4 + N(0, 1) float32"},
    ))


def _make_axis(axis):
    def make(rng, size):
        n = pick(size, full=4096, quick=1024, smoke=64)
        v, _, _ = testing.ill_conditioned_sum(n, _COND, "float32",
                                              seed=int(rng.integers(2 ** 31)))
        # every reduced line is a permutation of one ill-conditioned vector: one exact sum
        m = rng.permuted(np.tile(v, (n, 1)), axis=1)
        return (m if axis == 1 else np.ascontiguousarray(m.T),)
    return make


def _axis_accuracy(axis):
    def accuracy(inputs, outputs):
        x = np.asarray(inputs[0])
        line = x[0] if axis == 1 else x[:, 0]
        exact = testing.exact_sum(line)
        return {"metric": "max ulp over lines vs exact (cond 1e8 lines)",
                **{k: _ulps(v, exact) for k, v in outputs.items()}}
    return accuracy


for _axis in (0, 1):
    register(Case(
        name=f"summation/reduce_sum_axis{_axis}",
        family="summation",
        make_inputs=_make_axis(_axis),
        baseline=lambda x, a=_axis: tf.reduce_sum(x, axis=a),
        candidate=lambda x, a=_axis: so.reduce_sum(x, axis=a),
        baseline_name="tf.reduce_sum",
        candidate_name="so.reduce_sum",
        modes=("graph",),
        accuracy=_axis_accuracy(_axis),
        bar={"graph/fwd": 2.0},
        bar_source="stated for [4096, 4096] float32, graph mode",
        bytes_moved=reduction_traffic(axis=_axis),
        extra={"data": "each line a permutation of one cond-1e8 vector"},
    ))


def _cumsum_accuracy(inputs, outputs):
    x = np.asarray(inputs[0])
    exact = x.size * float(x[0])  # the last prefix of copies of one value (exact in float64)
    return {"metric": "ulp(last prefix) vs exact", **{
        k: _ulps(np.asarray(v, np.float64)[-1], exact) for k, v in outputs.items()}}


register(Case(
    name="summation/cumsum",
    family="summation",
    make_inputs=lambda rng, size: (np.full(_sizes(size), 0.1 + rng.uniform(0, 0.01),
                                           np.float32),),
    baseline=tf.cumsum,
    candidate=so.cumsum,
    baseline_name="tf.cumsum",
    candidate_name="so.cumsum",
    accuracy=_cumsum_accuracy,
    modes=("graph",),
    bar={"graph/fwd": 3.0},
    bar_source="stated for 8M float32, graph mode",
    bytes_moved=elementwise_traffic(),
    extra={"data": "copies of one value near 0.1 (the float32 prefix that stalls)"},
))


# -- dot and matmul -------------------------------------------------------------------------

def _make_dot(rng, size):
    rows = pick(size, full=1024, quick=256, smoke=4)
    x, y, _, _ = testing.ill_conditioned_dot(4096, _COND, "float32",
                                             seed=int(rng.integers(2 ** 31)))
    perm = np.stack([rng.permutation(4096) for _ in range(rows)])
    return x[perm], y[perm]  # each row a permutation of one cond-1e8 pair: one exact dot


def _dot_accuracy(inputs, outputs):
    x, y = (np.asarray(a) for a in inputs)
    exact = testing.exact_dot(x[0], y[0])
    return {"metric": "max ulp over rows vs exact dot (cond 1e8)",
            **{k: _ulps(v, exact) for k, v in outputs.items()}}


register(Case(
    name="summation/dot",
    family="summation",
    make_inputs=_make_dot,
    baseline=lambda x, y: tf.reduce_sum(x * y, axis=-1),
    candidate=so.dot,
    baseline_name="tf.reduce_sum(x * y, axis=-1)",
    candidate_name="so.dot",
    accuracy=_dot_accuracy,
    bar_source="none stated (an accuracy bound only: 1 ulp up to cond 1e7)",
    bytes_moved=reduction_traffic(axis=-1),
    extra={"shape": "rows of 4096 per operand"},
))


def _make_matmul(rng, size):
    n = pick(size, full=1024, quick=1024, smoke=16)  # quick: the size the target is set for
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    return a, b


def _matmul_accuracy(inputs, outputs):
    a, b = (np.asarray(v, np.float64) for v in inputs)
    ref = a @ b  # float64: error ~n * 1e-16 relative to sum|a b|, far below float32's ulp
    res = {"metric": "median / max ulp vs float64 matmul (N(0,1) entries)"}
    for k, v in outputs.items():
        u = testing.ulp_distance(np.asarray(v, np.float64), ref, "float32")
        res[k] = f"{np.median(u):.0f} / {np.max(u):.0f}"
    return res


register(Case(
    name="summation/matmul",
    family="summation",
    make_inputs=_make_matmul,
    baseline=tf.linalg.matmul,
    candidate=so.matmul,
    baseline_name="tf.linalg.matmul",
    candidate_name="so.matmul",
    accuracy=_matmul_accuracy,
    bar={"graph/fwd+bwd": 2.0},
    bar_source=("stated for 1024x1024 float32 in graph mode, accuracy kept (0 ulp median vs "
                "float64); float64's halved vector width makes 2x the floor of a float64 "
                "GEMM. No XLA target: XLA cannot run the native kernel and uses TF's "
                "float64 dot"),
    extra={"shape": "square float32 matrices; compute-bound (no bandwidth figure)"},
))


# -- error-free transformations -------------------------------------------------------------

def _make_pair(rng, size):
    n = pick(size, full=1 << 22, quick=1 << 20, smoke=1 << 10)
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return a, b


def _make_fast_pair(rng, size):
    a, b = _make_pair(rng, size)
    swap = np.abs(a) < np.abs(b)  # fast_two_sum needs |a| >= |b|
    return np.where(swap, b, a), np.where(swap, a, b)


def _eft_accuracy(exact_fn):
    def accuracy(inputs, outputs):
        a, b = (np.asarray(v, np.float64) for v in inputs)
        exact = exact_fn(a, b)  # exact in float64 for float32 operands
        res = {"metric": "elements where hi + lo != exact a op b"}
        for k, v in outputs.items():
            hi, lo = (v if isinstance(v, (tuple, list)) else (v, 0.0))
            got = np.asarray(hi, np.float64) + np.asarray(lo, np.float64)
            res[k] = int(np.count_nonzero(got != exact))
        return res
    return accuracy


for _op, _make, _base, _bname, _exact in (
        ("two_sum", _make_pair, lambda a, b: a + b, "a + b", lambda a, b: a + b),
        ("fast_two_sum", _make_fast_pair, lambda a, b: a + b, "a + b (|a| >= |b|)",
         lambda a, b: a + b),
        ("two_prod", _make_pair, lambda a, b: a * b, "a * b", lambda a, b: a * b)):
    register(Case(
        name=f"summation/{_op}",
        family="summation",
        make_inputs=_make,
        baseline=_base,
        candidate=getattr(so, _op),
        baseline_name=_bname,
        candidate_name=f"so.{_op} (value and error term)",
        grad=False,
        accuracy=_eft_accuracy(_exact),
        bar_source="none stated; the baseline returns only the rounded result",
        bytes_moved=elementwise_traffic(outputs=2),
        extra={"note": "forward only: a building block; bytes count both outputs"},
    ))


# -- KahanAccumulator.add ---------------------------------------------------------------------

_STATE = {}


def _make_acc(rng, size):
    n = pick(size, full=1 << 20, quick=1 << 20, smoke=1 << 10)
    _STATE["tf"] = tf.Variable(tf.zeros([n]))
    _STATE["so"] = so.KahanAccumulator(shape=[n])
    return (rng.standard_normal(n).astype(np.float32),)


def _kahan_accuracy(inputs, outputs):
    # 1.0 then 10 000 additions of 1e-8 (each below half an ulp of 1.0);
    # exact 1.0001. Both run in one tf.function loop.
    n = 10_000
    var = tf.Variable(tf.ones([4]))
    acc = so.KahanAccumulator(shape=[4])
    acc.add(tf.ones([4]))

    @tf.function
    def run():
        for _ in tf.range(n):
            var.assign_add(tf.fill([4], 1e-8))
            acc.add(tf.fill([4], 1e-8))

    run()
    exact = 1.0 + n * float(np.float32(1e-8))
    return {"metric": "relerr of 1 + 10 000 x 1e-8 vs exact",
            "baseline": abs(float(var.numpy()[0]) - exact) / exact,
            "safeops": abs(float(np.asarray(acc.value())[0]) - exact) / exact}


register(Case(
    name="summation/kahan_add",
    family="summation",
    make_inputs=_make_acc,
    baseline=lambda v: _STATE["tf"].assign_add(v),
    candidate=lambda v: _STATE["so"].add(v),
    baseline_name="Variable.assign_add",
    candidate_name="KahanAccumulator.add",
    grad=False,
    modes=("graph",),
    accuracy=_kahan_accuracy,
    bar={"graph/fwd": 2.0},
    bar_source="stated for 1M float32 elements, graph mode",
    # read the increment, the sum and the compensation; write the sum and the compensation
    bytes_moved=lambda inputs: {"fwd": {"read": 3 * np.asarray(inputs[0]).nbytes,
                                        "written": 2 * np.asarray(inputs[0]).nbytes}},
    extra={"bytes": "the accumulator's own traffic (sum and compensation), for both sides"},
))
