"""so.segment_sum / so.unsorted_segment_sum / so.segment_mean: correctly rounded, deterministic.

Every output is compared bit for bit with the exact sum (Python `Fraction`)
of its rows rounded once by `safeops.testing.round_to_dtype`; TensorFlow's op
is run next to ours for parity (shapes, dtypes, errors, gradients) and fails
the correct-rounding check where the data is ill-conditioned.
"""

from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops.segment as so_seg
from safeops import testing
from safeops._core.registry import entries

_NP = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
       "float64": np.float64}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _round(fr, dtype):
    with mpmath.workprec(2400):
        return testing.round_to_dtype(
            np.array([mpmath.mpf(fr.numerator) / fr.denominator], dtype=object), dtype)[0]


def _segment_reference(data, ids, num, dtype, mean=False):
    """[num] + data.shape[ids.ndim:] correctly rounded segment sums (means; empty: 0)."""
    ids = np.asarray(ids)
    rows = np.asarray(data, np.float64).reshape(ids.size, -1)
    flat = ids.reshape(-1)
    out = np.zeros((num, rows.shape[1]), _NP[dtype])
    for s in range(num):
        members = rows[flat == s]
        if not len(members):
            continue
        for c in range(rows.shape[1]):
            total = sum((Fraction(float(v)) for v in members[:, c]), Fraction(0))
            out[s, c] = _round(total / len(members) if mean else total, dtype)
    return out.reshape((num,) + np.asarray(data).shape[ids.ndim:])


def _bits(a):
    a = np.asarray(a)
    return a.view(_UINT[a.dtype.itemsize])


def _same_bits(got, want):
    np.testing.assert_array_equal(_bits(np.asarray(got)), _bits(np.asarray(want)))


def _ill(rng, n, cols, dtype):
    """Rows with exponents over 20 decades and exact cancellation within segments."""
    x = rng.standard_normal((n, cols)) * 10.0 ** rng.uniform(-10, 10, (n, cols))
    x[n // 2:] = -x[:n // 2] * (1 + 2.0 ** -8)
    return x.astype(_NP[dtype])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_segment_sum_and_mean_correctly_rounded(dtype):
    rng = np.random.default_rng(0)
    x = _ill(rng, 40, 3, dtype) if dtype != "float16" else \
        rng.uniform(-60, 60, (40, 3)).astype(np.float16)
    perm = rng.permutation(40)
    x = x[perm]
    ids = np.sort(rng.choice([0, 1, 1, 3, 3, 3, 6], 40))  # repeated ids, empty segments 2, 4, 5
    got = so_seg.segment_sum(tf.constant(x), ids).numpy()
    _same_bits(got, _segment_reference(x, ids, 7, dtype))
    got = so_seg.segment_mean(tf.constant(x), ids).numpy()
    _same_bits(got, _segment_reference(x, ids, 7, dtype, mean=True))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unsorted_any_order_negative_and_repeated_ids(dtype):
    rng = np.random.default_rng(1)
    x = _ill(rng, 60, 2, dtype)
    ids = rng.integers(-1, 5, 60)  # -1 rows are dropped; segment 5, 6 stay empty
    want = _segment_reference(x, np.where(ids < 0, 99, ids), 7, dtype)
    got = so_seg.unsorted_segment_sum(tf.constant(x), ids, 7).numpy()
    _same_bits(got, want)
    perm = rng.permutation(60)
    _same_bits(so_seg.unsorted_segment_sum(tf.constant(x[perm]), ids[perm], 7).numpy(), got)
    # TF's float sum of the same segments is off (the reason the op exists)
    assert np.any(tf.math.unsorted_segment_sum(x, ids, 7).numpy() != got)


def test_unsorted_multi_dimensional_ids():
    rng = np.random.default_rng(2)
    x = _ill(rng, 24, 1, "float32").reshape(4, 6, 1) * np.ones((1, 1, 3), np.float32)
    ids = rng.integers(0, 3, (4, 6))
    got = so_seg.unsorted_segment_sum(tf.constant(x), ids, 3)
    assert got.shape == tf.math.unsorted_segment_sum(x, ids, 3).shape
    _same_bits(got.numpy(), _segment_reference(x, ids, 3, "float32"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_sums_are_exact_where_tf_rounds_each_step(dtype):
    big = 2048.0 if dtype == "float16" else 256.0  # ulp 2: adding 1.0 is a tie each time
    x = tf.constant([big] + [1.0] * 8, dtype)
    ids = [0] * 9
    want = _segment_reference(x.numpy(), ids, 1, dtype)
    assert float(want[0]) == big + 8
    for ours, theirs in ((so_seg.segment_sum(x, ids), tf.math.segment_sum(x, ids)),
                         (so_seg.unsorted_segment_sum(x, ids, 1),
                          tf.math.unsorted_segment_sum(x, ids, 1))):
        _same_bits(ours.numpy(), want)
        assert float(theirs[0]) == big  # TF accumulates in the half type


@pytest.mark.parametrize("op", ["segment_sum", "segment_mean", "unsorted"])
def test_parity_with_tf_on_exact_data(op):
    rng = np.random.default_rng(3)
    x = rng.integers(-8, 8, (10, 2, 3)).astype(np.float32) / 4  # sums exact in float32
    ids = np.array([0, 0, 1, 1, 1, 3, 3, 4, 4, 4])
    call = {"segment_sum": (lambda f, v: f(v, ids)),
            "segment_mean": (lambda f, v: f(v, ids)),
            "unsorted": (lambda f, v: f(v, ids[::-1], 6))}[op]
    ours_fn = {"segment_sum": so_seg.segment_sum, "segment_mean": so_seg.segment_mean,
               "unsorted": so_seg.unsorted_segment_sum}[op]
    tf_fn = {"segment_sum": tf.math.segment_sum, "segment_mean": tf.math.segment_mean,
             "unsorted": tf.math.unsorted_segment_sum}[op]
    v = tf.constant(x)
    w = tf.constant(rng.integers(-4, 4, call(tf_fn, v).shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(v)
        ours, theirs = call(ours_fn, v), call(tf_fn, v)
        lo, lt = tf.reduce_sum(ours * w), tf.reduce_sum(theirs * w)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    if op == "segment_mean":  # means of quarters over 2 or 3 terms: compare to the exact value
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1.2e-7)
    else:
        _same_bits(ours.numpy(), theirs.numpy())
    np.testing.assert_allclose(tape.gradient(lo, v).numpy(), tape.gradient(lt, v).numpy(),
                               rtol=1.2e-7)


def test_unsorted_gradient_drops_negative_ids():
    v = tf.constant([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(v)
        out = so_seg.unsorted_segment_sum(v, [1, -1, 1], 2)
    np.testing.assert_array_equal(tape.gradient(out, v).numpy(), [1.0, 0.0, 1.0])


def test_integers_delegated_and_complex_by_parts():
    ids = [0, 0, 2]
    for dtype in (tf.int32, tf.int64):
        x = tf.constant([5, 7, -3], dtype)
        for ours, theirs in ((so_seg.segment_sum(x, ids), tf.math.segment_sum(x, ids)),
                             (so_seg.segment_mean(x, ids), tf.math.segment_mean(x, ids)),
                             (so_seg.unsorted_segment_sum(x, ids, 4),
                              tf.math.unsorted_segment_sum(x, ids, 4))):
            assert ours.dtype == theirs.dtype
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    z = tf.constant([1e8 + 1j, 1.0 - 1e8j, -1e8 + 1e8j], tf.complex64)
    got = so_seg.unsorted_segment_sum(z, [0, 0, 0], 1).numpy()
    assert got.dtype == np.complex64 and got[0] == 1 + 1j


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_bad_ids_raise_as_tf(mode):
    def run(fn, *args):
        f = fn if mode == "eager" else tf.function(fn)
        try:
            f(*args)
        except Exception as err:  # noqa: BLE001 - the type is what is compared
            return type(err)
        return None

    data = tf.constant([1.0, 2.0, 3.0])
    cases = [
        ("sorted", [1, 0, 0]),  # not sorted
        ("sorted", [-1, 0, 0]),  # negative
        ("sorted", [0, 0]),  # wrong length
        ("unsorted", [0, 5, 1]),  # out of range
        ("unsorted", [0, 1]),  # wrong length
    ]
    if mode == "graph":  # tracing is slow: the run-time checks (sorting, range) only
        cases = [cases[0], cases[3]]
    for kind, ids in cases:
        ids = tf.constant(ids)
        if kind == "sorted":
            for ours, theirs in ((so_seg.segment_sum, tf.math.segment_sum),
                                 (so_seg.segment_mean, tf.math.segment_mean)):
                want = run(theirs, data, ids)
                assert want is not None
                assert run(ours, data, ids) is want, (ours.__name__, ids)
        else:
            want = run(lambda d, i: tf.math.unsorted_segment_sum(d, i, 3), data, ids)
            assert want is not None
            assert run(lambda d, i: so_seg.unsorted_segment_sum(d, i, 3), data, ids) is want


def test_execution_modes_same_bits():
    rng = np.random.default_rng(4)
    x = tf.constant(_ill(rng, 32, 4, "float32"))
    ids = tf.constant(rng.integers(0, 5, 32))
    sorted_ids = tf.sort(ids)

    def f(v, i):
        return so_seg.unsorted_segment_sum(v, i, 5)

    eager = f(x, ids).numpy()
    _same_bits(tf.function(f)(x, ids).numpy(), eager)
    _same_bits(tf.function(f, jit_compile=True)(x, ids).numpy(), eager)
    _same_bits(eager, _segment_reference(x.numpy(), ids.numpy(), 5, "float32"))
    g = tf.function(lambda v, i: (so_seg.segment_sum(v, i), so_seg.segment_mean(v, i)),
                    input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int64)])
    s, m = g(x, sorted_ids)
    _same_bits(s.numpy(), so_seg.segment_sum(x, sorted_ids).numpy())
    _same_bits(m.numpy(), so_seg.segment_mean(x, sorted_ids).numpy())


def test_unknown_rank_raises_naming_the_op():
    fn = tf.function(lambda d, i: so_seg.unsorted_segment_sum(d, i, 3),
                     input_signature=[tf.TensorSpec(None, tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
    with pytest.raises(ValueError, match="unsorted_segment_sum.*known rank"):
        fn.get_concrete_function()


def test_empty_data_and_specials():
    got = so_seg.segment_sum(tf.zeros([0, 3]), tf.zeros([0], tf.int32))
    assert got.shape == tf.math.segment_sum(tf.zeros([0, 3]), tf.zeros([0], tf.int32)).shape
    got = so_seg.unsorted_segment_sum(tf.zeros([0, 2]), tf.zeros([0], tf.int32), 3)
    _same_bits(got.numpy(), np.zeros((3, 2), np.float32))
    x = tf.constant([np.inf, 1.0, np.inf, -np.inf, np.nan, 2.0, -0.0, -0.0])
    ids = [0, 0, 1, 1, 2, 2, 3, 3]
    got = so_seg.segment_sum(x, ids).numpy()
    assert np.isposinf(got[0]) and np.isnan(got[1]) and np.isnan(got[2])
    assert got[3] == 0 and np.signbit(got[3])  # -0 + -0 = -0
    mean = so_seg.segment_mean(tf.constant([3.4e38, 3.4e38]), [0, 0]).numpy()
    assert mean[0] == np.float32(3.4e38)  # no intermediate overflow (TF's is inf)


def test_registry_lists_the_differences():
    names = {e.name: e for e in entries()}
    for name, original in (("safeops.segment_sum", "tf.math.segment_sum"),
                           ("safeops.unsorted_segment_sum", "tf.math.unsorted_segment_sum"),
                           ("safeops.segment_mean", "tf.math.segment_mean")):
        assert names[name].original == original
        assert any("correctly rounded" in d for d in names[name].differences)
