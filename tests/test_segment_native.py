"""The fused correctly rounded segment sums (SafeopsExactSegmentSum, safeops/native/exact.cc)
against the pure-TF accumulator and an exact reference.

Every result is checked bit for bit three ways: the fused kernel (graph mode on the CPU),
the pure-TF path (``SAFEOPS_NATIVE=0``, the path XLA and GPUs run) and the exact `Fraction`
sum of each (segment, column) rounded once (`math.fsum` too for float64). The data is built
so that the kernel's certification must fail on some outputs (ties, sums a hair off a
midpoint, exact cancellation, subnormal and overflowing results, special values), which
sends them to its exact pass, while others certify.
"""

import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap

import ml_dtypes
import numpy as np
import pytest
from test_native_support import edge_sums, require_kernels, tie_cases
import tensorflow as tf

import safeops.segment as so_seg
from safeops import native
from test_exact_native import NP, _bits, _exact, _round, _same_bits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = list(NP)
OP = "SafeopsExactSegmentSum"


@pytest.fixture(autouse=True)
def _kernels(monkeypatch):
    require_kernels(monkeypatch)


def _reference(data, ids, num, dtype, mean=False):
    """[num, inner] correctly rounded sums (means) of the rows of each segment, from the
    exact Fraction sums; empty segments +0.0, sums of only -0.0 -0.0; finite data only."""
    data = np.asarray(data)
    rows = data.reshape(np.asarray(ids).size, -1)
    flat = np.asarray(ids).reshape(-1)
    out = np.zeros((num, rows.shape[1]), NP[dtype])
    for g in range(num):
        members = rows[flat == g]
        for j in range(rows.shape[1]):
            col = members[:, j]
            if not len(col):
                continue
            if np.all((col == 0) & np.signbit(col)):
                out[g, j] = NP[dtype](-0.0)
                continue
            total = _exact(col)
            out[g, j] = _round(total / len(col) if mean else total, dtype)
    return out


def _both(monkeypatch, fn, *args):
    """fn's results (NumPy) with the kernel and on the pure-TF path, in graph mode; the
    graphs are checked to contain, or not, the kernel."""
    out = []
    for setting in ("1", "0"):
        monkeypatch.setenv("SAFEOPS_NATIVE", setting)
        concrete = tf.function(fn).get_concrete_function(*args)
        has_kernel = any(op.type == OP for op in concrete.graph.get_operations())
        assert has_kernel == (setting == "1")
        out.append(tf.nest.map_structure(lambda t: t.numpy(), concrete(*args)))
    monkeypatch.delenv("SAFEOPS_NATIVE")
    return out


def _all_three(monkeypatch, data, sorted_ids, ids, num):
    """segment_sum, segment_mean (sorted ids) and unsorted_segment_sum, fused and pure."""
    def f(d, s, i):
        return (so_seg.segment_sum(d, s), so_seg.segment_mean(d, s),
                so_seg.unsorted_segment_sum(d, i, num))

    fused, pure = _both(monkeypatch, f, tf.constant(data), tf.constant(sorted_ids),
                        tf.constant(ids))
    for a, b in zip(fused, pure):
        _same_bits(a, b)
    return fused


def _wide(rng, rows, cols, lo, hi, dtype, tweak):
    """Values over exponents [lo, hi] in which every big value has a partner that cancels it
    up to a relative `tweak`, in random rows."""
    x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(lo, hi, (rows, cols))
    half = rows // 2
    x[half:2 * half] = -x[:half] * rng.choice([1.0, 1.0 + tweak], (half, cols))
    return x[rng.permutation(rows)].astype(NP[dtype])


_RANGE = {"float16": (-3, 3), "bfloat16": (-30, 30), "float32": (-30, 30),
          "float64": (-250, 250)}


# -------------------------------------------------------------------- correct rounding

@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_data_every_dtype(monkeypatch, dtype):
    """Few rows per segment over a wide exponent range (most outputs certify) and a segment
    holding cancelling pairs (its outputs cannot): sums, means and unsorted sums with
    repeated, negative and out-of-order ids, empty segments."""
    rng = np.random.default_rng(len(dtype))
    lo, hi = _RANGE[dtype]
    p = ml_dtypes.finfo(NP[dtype]).nmant + 1
    rows, cols, num = 600, 19, 40  # 19 columns: the vector loop and a scalar tail
    x = _wide(rng, rows, cols, lo, hi, dtype, 2.0 ** -(p - 3))
    sorted_ids = np.sort(rng.integers(0, num - 3, rows))
    sorted_ids[sorted_ids == 5] = 6  # segment 5 empty
    ids = rng.integers(-2, num, rows)  # negative rows dropped, the order random
    fused = _all_three(monkeypatch, x, sorted_ids, ids, num)
    _same_bits(fused[0], _reference(x, sorted_ids, sorted_ids.max() + 1, dtype))
    _same_bits(fused[1], _reference(x, sorted_ids, sorted_ids.max() + 1, dtype, mean=True))
    _same_bits(fused[2], _reference(x, np.where(ids < 0, num, ids), num, dtype))
    assert np.all(_bits(fused[0][5]) == 0) and np.all(_bits(fused[1][5]) == 0)  # empty: +0.0
    if dtype == "float64":
        want = [[math.fsum(x[ids == g, j]) for j in range(cols)] for g in range(num)]
        _same_bits(fused[2], np.array(want))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ill_conditioned_segments(monkeypatch, dtype):
    """Every segment's terms cancel up to a few ulps of the largest: the filter's bound cannot
    decide them and the exact pass must, for sorted and scattered rows alike."""
    rng = np.random.default_rng(10 + len(dtype))
    lo, hi = _RANGE[dtype]
    p = ml_dtypes.finfo(NP[dtype]).nmant + 1
    num, per, cols = 12, 30, 8
    blocks = [_wide(rng, per, cols, lo, hi, dtype, 2.0 ** -(p - 2)) for _ in range(num)]
    x = np.concatenate(blocks)
    sorted_ids = np.repeat(np.arange(num), per)
    perm = rng.permutation(len(x))
    fused, pure = _both(monkeypatch, lambda d, s, dp, sp: (
        so_seg.segment_sum(d, s), so_seg.segment_mean(d, s),
        so_seg.unsorted_segment_sum(dp, sp, num)),
        tf.constant(x), tf.constant(sorted_ids), tf.constant(x[perm]),
        tf.constant(sorted_ids[perm]))
    for a, b in zip(fused, pure):
        _same_bits(a, b)
    want = _reference(x, sorted_ids, num, dtype)
    _same_bits(fused[0], want)
    _same_bits(fused[2], want)
    _same_bits(fused[1], _reference(x, sorted_ids, num, dtype, mean=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_and_near_ties(monkeypatch, dtype):
    """Exact ties round to even and sums a hair off a midpoint round away from it, inside
    segments of cancelling noise, next to segments that certify."""
    t = NP[dtype]
    p = ml_dtypes.finfo(t).nmant + 1
    rng = np.random.default_rng(p)
    heads, want = tie_cases(p)
    rows, ids = [], []
    for g, head in enumerate(heads):
        noise = (rng.standard_normal(40) * 8.0).astype(t).astype(np.float64)
        seg = np.concatenate([head, noise, -noise])
        rows += list(seg)
        ids += [2 * g] * len(seg)
        easy = rng.standard_normal(5)  # a segment the filter decides
        rows += list(easy)
        ids += [2 * g + 1] * len(easy)
    x = np.array(rows).astype(t)[:, None] * np.ones((1, 3), t)
    x[:, 1] = -x[:, 1]
    ids = np.array(ids)
    perm = rng.permutation(len(ids))
    fused = _all_three(monkeypatch, x, ids, ids, 2 * len(heads))
    want = np.array(want, t)
    _same_bits(fused[0][0::2, 0], want)
    _same_bits(fused[0][0::2, 1], -want)
    _same_bits(fused[0], _reference(x, ids, 2 * len(heads), dtype))
    _same_bits(fused[1], _reference(x, ids, 2 * len(heads), dtype, mean=True))
    unsorted = so_seg.unsorted_segment_sum(tf.constant(x[perm]), ids[perm], 2 * len(heads))
    _same_bits(unsorted.numpy(), fused[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_overflow_and_special_values(monkeypatch, dtype):
    """Results in the subnormal range (exact, though TF's threads flush subnormals), overflow
    to inf and back into range, NaN/inf/-0.0 terms, all against the pure-TF path; the
    finite ones against the reference."""
    t = NP[dtype]
    fi = ml_dtypes.finfo(t)
    big, sub = float(fi.max), float(fi.smallest_subnormal)
    finite = edge_sums(fi) + [[sub] * 5, [-0.0, -0.0, -0.0], [0.0, -0.0]]
    inf, nan = math.inf, math.nan
    special = [[inf, 1.0], [-inf, 1.0], [inf, -inf], [nan, 1.0, inf], [inf, inf, -0.0],
               [nan], [-inf, big, big]]
    groups = finite + special
    x = np.array([v for r in groups for v in r]).astype(t)
    ids = np.repeat(np.arange(len(groups)), [len(r) for r in groups])
    x2 = np.stack([x, -x, x * 0.5], 1).astype(t)  # three columns: sign flipped, halved
    num = len(groups) + 2  # two empty segments at the end
    fused = _all_three(monkeypatch, x2, ids, ids, num)
    nf = len(finite)
    _same_bits(fused[2][:nf], _reference(x2[:ids.searchsorted(nf)], ids[:ids.searchsorted(nf)],
                                         nf, dtype))
    _same_bits(fused[1][:nf], _reference(x2[:ids.searchsorted(nf)], ids[:ids.searchsorted(nf)],
                                         nf, dtype, mean=True))
    got = fused[2][nf:, 0].astype(np.float64)
    assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2])
    assert np.isnan(got[3]) and np.isposinf(got[4]) and np.isnan(got[5]) and np.isneginf(got[6])
    assert np.all(_bits(fused[2][-2:]) == 0)  # empty segments: +0.0
    assert np.isposinf(float(fused[2][4, 0])) and float(fused[2][3, 0]) == big


def test_segment_ids_of_any_order_and_repeats(monkeypatch):
    """Unsorted ids, negatives dropped, multi-dimensional ids, a dynamic number of segments
    and unknown shapes: the same bits as the pure path and as sorted rows."""
    rng = np.random.default_rng(5)
    x = _wide(rng, 240, 6, -20, 20, "float32", 2.0 ** -10).reshape(8, 30, 2, 3)
    ids = rng.integers(-3, 9, (8, 30))
    fused, pure = _both(monkeypatch, lambda d, i: so_seg.unsorted_segment_sum(
        d, i, tf.reduce_max(i) + 2), tf.constant(x), tf.constant(ids))
    _same_bits(fused, pure)
    assert fused.shape == (10, 2, 3)
    want = _reference(x.reshape(240, 6), np.where(ids < 0, 10, ids).reshape(-1), 10, "float32")
    _same_bits(fused.reshape(10, 6), want)
    spec = [tf.TensorSpec([None, None, 2, None], tf.float32), tf.TensorSpec([None, None], tf.int64)]
    for setting in ("1", "0"):
        monkeypatch.setenv("SAFEOPS_NATIVE", setting)
        fn = tf.function(lambda d, i: so_seg.unsorted_segment_sum(d, i, 10), input_signature=spec)
        _same_bits(fn(x, ids).numpy(), fused)
        fn = tf.function(lambda d, i: so_seg.segment_sum(d, i),
                         input_signature=[tf.TensorSpec([None, 2, 3], tf.float64),
                                          tf.TensorSpec([None], tf.int32)])
        order = np.argsort(ids.reshape(-1), kind="stable")
        keep = ids.reshape(-1)[order] >= 0
        rows = x.reshape(240, 2, 3)[order][keep].astype(np.float64)
        got = fn(rows, ids.reshape(-1)[order][keep].astype(np.int32)).numpy()
        _same_bits(got.reshape(-1, 6)[:9], _reference(rows.reshape(-1, 6),
                                                       ids.reshape(-1)[order][keep], 9, "float64"))


def test_long_segments_and_shards(monkeypatch):
    """Few segments of many rows (the rows cut into shards whose partials are merged) and many
    segments of random ids: the same bits as the pure path; ties in a long segment."""
    rng = np.random.default_rng(6)
    x = _wide(rng, 1 << 15, 8, -15, 15, "float32", 2.0 ** -10)
    x[:, 7] = 0.0
    x[[5, 8000], 7] = [1.0, 2.0 ** -24]  # a tie in segment 0 of the sorted ids
    sorted_ids = np.repeat(np.arange(4), 1 << 13)
    ids = rng.integers(-1, 3000, 1 << 15)
    fused = _all_three(monkeypatch, x, sorted_ids, ids, 3000)
    assert float(fused[0][0, 7]) == 1.0
    _same_bits(fused[0][:2], _reference(x[:1 << 14], sorted_ids[:1 << 14], 2, "float32"))
    _same_bits(fused[2][:40], _reference(x, np.where(ids < 0, 3000, ids), 40, "float32"))


def test_ties_in_segments_far_apart(monkeypatch):
    """Undecided outputs in two segments 10^6 ids apart (few rows, many empty segments): the
    exact pass finds their rows; every other output is +0.0."""
    h = 2.0 ** -24  # half an ulp of 1 in float32
    x = np.array([[1.0, 3.0], [h, h], [-1.0, 1.0], [h, h], [0.0, 2.0]], np.float32)
    ids = np.array([3, 3, 999_999, 999_999, 3])
    num = 1_000_001
    fused, pure = _both(monkeypatch, lambda d, i: (
        so_seg.unsorted_segment_sum(d, i, num), so_seg.segment_sum(d, tf.sort(i))),
        tf.constant(x), tf.constant(ids))
    for a, b in zip(fused, pure):
        _same_bits(a, b)
    want = np.zeros((num, 2), np.float32)
    want[3] = [1.0, 5.0]  # 1 + h: a tie, to even; 3 + h + 2: no tie
    want[999_999] = [np.float32(-1.0 + h), np.float32(1.0)]  # -1 + h exact; 1 + h a tie
    _same_bits(fused[0], want)
    _same_bits(fused[0][[3, 999_999]], _reference(x, np.where(ids == 3, 0, 1), 2, "float32"))


# -------------------------------------------------------------------- reproducibility, modes

_THREADS = textwrap.dedent("""
    import sys
    import numpy as np, tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    import safeops.segment as so_seg
    for path in sys.argv[2:]:
        z = np.load(path)
        x, ids, num = z["x"], z["ids"], int(z["num"])
        f = tf.function(lambda d, i: (so_seg.unsorted_segment_sum(d, i, num),
                                      so_seg.segment_mean(d, tf.sort(i))))
        for out in f(x, ids):
            print(out.numpy().tobytes().hex())
""")


def test_one_two_and_four_threads_same_bits(monkeypatch):
    """1, 2 and 4 intra-op threads (fresh processes) give the same bits, for shapes whose rows
    are cut into shards and for many segments of random ids (shards merged for memory)."""
    rng = np.random.default_rng(1)
    cases = [(_wide(rng, 1 << 15, 8, -30, 30, "float32", 2.0 ** -9),
              rng.integers(0, 300, 1 << 15), 300),
             (_wide(rng, 1 << 16, 4, -30, 30, "float32", 2.0 ** -9),
              rng.integers(-1, 1 << 18, 1 << 16), 1 << 18),
             (_wide(rng, 1 << 14, 16, -200, 200, "float64", 2.0 ** -40),
              rng.integers(0, 50, 1 << 14), 50)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, (x, ids, num) in enumerate(cases):
            paths.append(os.path.join(tmp, f"c{k}.npz"))
            np.savez(paths[-1], x=x, ids=ids, num=num)
        outs = []
        for threads in (1, 2, 4):
            r = subprocess.run([sys.executable, "-c", _THREADS, str(threads), *paths],
                               capture_output=True, text=True, timeout=600, cwd=ROOT,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            assert r.returncode == 0, r.stderr[-3000:]
            outs.append(r.stdout.split())
    assert len(outs[0]) == 2 * len(cases)
    assert outs[0] == outs[1] == outs[2]
    x, ids, num = cases[0]
    got = np.frombuffer(bytes.fromhex(outs[0][0]), np.float32).reshape(num, 8)
    _same_bits(got[:3], _reference(x, np.where(ids < 3, ids, 3), 3, "float32"))


def test_execution_modes_and_gradients(monkeypatch):
    """Eager and tf.function run the kernel, jit_compile=True the pure path: same bits; the
    gradients are TensorFlow's, either way."""
    rng = np.random.default_rng(2)
    x = tf.constant(_wide(rng, 64, 5, -20, 20, "float32", 2.0 ** -10))
    ids = tf.constant(np.sort(rng.integers(0, 7, 64)))

    def f(v):
        return (so_seg.segment_sum(v, ids), so_seg.segment_mean(v, ids),
                so_seg.unsorted_segment_sum(v, ids[::-1], 9))

    def unsorted(v):  # TF's SegmentSum has no XLA kernel: unsorted ids only under XLA
        return so_seg.unsorted_segment_sum(v, ids[::-1], 9)

    graph = tf.function(f).get_concrete_function(x).graph
    assert OP in {op.type for op in graph.get_operations()}
    xla = tf.function(unsorted, jit_compile=True).get_concrete_function(x).graph
    assert OP not in {op.type for op in xla.get_operations()}
    outs = [[t.numpy() for t in g(x)] for g in (f, tf.function(f))]
    for k in range(3):
        _same_bits(outs[1][k], outs[0][k])
    _same_bits(tf.function(unsorted, jit_compile=True)(x).numpy(), outs[0][2])
    w = [tf.constant(rng.standard_normal(o.shape).astype(np.float32)) for o in outs[0]]
    grads = []
    for setting in ("1", "0"):
        monkeypatch.setenv("SAFEOPS_NATIVE", setting)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = sum(tf.reduce_sum(o * c) for o, c in zip(f(x), w))
        grads.append(tape.gradient(loss, x).numpy())
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = sum(tf.reduce_sum(o * c) for o, c in zip(
            (tf.math.segment_sum(x, ids), tf.math.segment_mean(x, ids),
             tf.math.unsorted_segment_sum(x, ids[::-1], 9)), w))
    _same_bits(grads[0], grads[1])
    np.testing.assert_allclose(grads[0], tape.gradient(loss, x).numpy(), rtol=1e-6)


# -------------------------------------------------------------------- errors, raw op

def _core(message):
    """An error's own text: without TF's node, op and traceback decorations."""
    text = message.split("\t [[")[0].split(" [Op:")[0].strip().splitlines()[-1]
    return re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_bad_ids_raise_tensorflows_error(mode):
    """Bad ids raise TensorFlow's own error (its op runs first), not the kernel's."""
    data = tf.constant(np.ones((3, 4), np.float32))
    cases = [(so_seg.segment_sum, tf.math.segment_sum, [1, 0, 0]),
             (so_seg.segment_mean, tf.math.segment_mean, [-1, 0, 0]),
             (lambda d, i: so_seg.unsorted_segment_sum(d, i, 3),
              lambda d, i: tf.math.unsorted_segment_sum(d, i, 3), [0, 5, 1])]
    for ours, theirs, ids in cases:
        messages = []
        for fn in (theirs, ours):
            f = fn if mode == "eager" else tf.function(fn)
            with pytest.raises(tf.errors.InvalidArgumentError) as info:
                f(data, tf.constant(ids))
            messages.append(info.value.message)
        assert OP not in messages[1]
        assert _core(messages[0]) == _core(messages[1]), messages


def _counts(ids, num):
    ids = np.asarray(ids).reshape(-1)
    return np.bincount(ids[ids >= 0], minlength=num)[:num].astype(np.int32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_op_shapes_and_checks(dtype):
    """The raw op on every small shape, and its checks of shapes, ids and counts (an error
    naming the op, in eager and in a graph of unknown shapes)."""
    lib = native.library()
    t = NP[dtype]
    op = lib.safeops_exact_segment_sum
    for rows, inner, num in ((0, 3, 4), (5, 0, 2), (3, 2, 0), (4, 1, 1), (7, 16, 3), (9, 35, 2)):
        x = np.full((rows, inner), 1.5, t)
        ids = np.arange(rows) % max(num, 1) if num else -np.ones(rows, np.int64)
        counts = _counts(ids, num)
        for index in (np.int32, np.int64):
            for mean in (False, True):
                out = op(x, ids.astype(index), counts, mean=mean).numpy()
                assert out.shape == (num, inner)
                want = np.where(counts[:, None] > 0, 1.5 if mean else 1.5 * counts[:, None], 0.0)
                _same_bits(out, want.astype(t) * np.ones((1, inner), t))
    x, ids = np.ones((4, 2), t), np.array([0, 1, 1, 2])
    bad = [((np.ones((4,), t), ids, _counts(ids, 3)), "'data' must be rank 2"),
           ((x, ids[:3], _counts(ids, 3)), "'segment_ids' must be a vector"),
           ((x, ids[None], _counts(ids, 3)), "'segment_ids' must be a vector"),
           ((x, ids, np.int32(3)), "'counts' must be a vector"),
           ((x, ids, _counts(ids, 3)[None]), "'counts' must be a vector"),
           ((x, np.array([0, 1, 3, 2]), _counts(ids, 3)), r"segment_ids\[2\] = 3 is out of range"),
           ((x, np.array([0, -5, 1 << 40, 2]), _counts(ids, 3)), r"segment_ids\[2\] = 1099"),
           ((x, ids, np.array([1, 2, 2], np.int32)), r"counts\[2\] = 2 is not the number"),
           ((x, ids, np.array([1, 2], np.int32)), "out of range"),
           ((np.ones((0, 1 << 40), t), np.zeros([0], np.int32), np.zeros([1 << 23], np.int32)),
            "more than")]
    for args, match in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{OP}.*{match}|{match}"):
            op(*args)
    fn = tf.function(lambda d, i, c: op(d, i, c), input_signature=[
        tf.TensorSpec(None, t), tf.TensorSpec(None, tf.int64), tf.TensorSpec(None, tf.int32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=OP):
        fn(x, ids[:3], _counts(ids, 3))
    assert fn(x, np.array([0, -1, 1, 2]), _counts([0, 1, 2], 3)).shape == (3, 2)
