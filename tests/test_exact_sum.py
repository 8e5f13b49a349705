"""The exact accumulator (safeops._core.exact): correctly rounded sums, means and prefix sums.

References are independent of the code under test: Python's exact `Fraction`
sum rounded once by `safeops.testing.round_to_dtype` (mpmath), and
`math.fsum` (correctly rounded in float64). Correct rounding is asserted bit
for bit (0 ulp), so permutation, reshaping, batch splitting, execution mode
and replica count cannot change a bit either.

This module holds the pure-TF accumulator (the path of XLA, GPUs and
``SAFEOPS_NATIVE=0``) to that standard in every mode; the fused CPU kernel is
held to the same bits in tests/test_exact_native.py.
"""

import math
import os
import subprocess
import sys
import tempfile
import textwrap
from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from safeops import testing
from safeops._core import exact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ["float16", "bfloat16", "float32", "float64"]
_NP = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
       "float64": np.float64}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _round_exact(fr, dtype):
    """A Fraction rounded once to dtype (mpmath at 2400 bits holds any sum of these exactly)."""
    with mpmath.workprec(2400):
        m = mpmath.mpf(fr.numerator) / fr.denominator
        return testing.round_to_dtype(np.array([m], dtype=object), dtype)[0]


def _reference(values, dtype):
    """Correctly rounded sum of finite values (any shape); IEEE: only -0.0s give -0.0."""
    flat = np.ravel(values).astype(np.float64)
    if flat.size and np.all((flat == 0) & np.signbit(flat)):
        return np.array(-0.0, _NP[dtype])
    return _round_exact(sum((Fraction(float(v)) for v in np.ravel(values)), Fraction(0)), dtype)


def _bits(a):
    a = np.asarray(a)
    return a.view(_UINT[a.dtype.itemsize])


def _assert_same_bits(got, want):
    got, want = np.asarray(got), np.asarray(want, dtype=np.asarray(got).dtype)
    np.testing.assert_array_equal(_bits(got), _bits(want))


def _wide_data(rng, rows, n, lo, hi, dtype):
    """Rows of values with exponents spread over [lo, hi] and heavy cancellation."""
    mant = rng.standard_normal((rows, n))
    expo = rng.uniform(lo, hi, (rows, n))
    x = (mant * 10.0 ** expo).astype(_NP[dtype])
    half = n // 2
    x[:, half:2 * half] = -x[:, :half]  # exact cancellation of the big terms...
    x[:, half:2 * half] *= rng.choice([1.0, 1.0 + 2.0 ** -10], (rows, half)).astype(_NP[dtype])
    return rng.permuted(x, axis=1)


@pytest.fixture(autouse=True)
def _pure_tf_path(monkeypatch):
    monkeypatch.setenv("SAFEOPS_NATIVE", "0")


# -------------------------------------------------------------------- correct rounding

@pytest.mark.parametrize("span", [(-2, 2), (-50, 50), (-300, 300)])
def test_float64_correctly_rounded_any_condition(span):
    rng = np.random.default_rng(abs(span[0]))
    x = _wide_data(rng, 24, 200, span[0], span[1], "float64")
    got = exact.exact_reduce_sum(tf.constant(x), [1]).numpy()
    _assert_same_bits(got, [math.fsum(r) for r in x])
    _assert_same_bits(got, [_reference(r, "float64") for r in x])
    conds = [math.fsum(np.abs(r)) / abs(math.fsum(r)) for r in x if math.fsum(r) != 0]
    assert max(conds) > 1e2  # the data is ill-conditioned, not only wide
    if span[1] >= 50:  # TF's sum of the same rows is off in some row
        assert np.any(tf.reduce_sum(x, 1).numpy() != got)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_narrow_dtypes_correctly_rounded(dtype):
    rng = np.random.default_rng(7)
    lo, hi = {"float16": (-4, 3), "bfloat16": (-30, 30), "float32": (-30, 30)}[dtype]
    x = _wide_data(rng, 16, 64, lo, hi, dtype)
    got = exact.exact_reduce_sum(tf.constant(x), [1]).numpy()
    _assert_same_bits(got, [_reference(r, dtype) for r in x])


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_float32_certified_path_same_bits_as_exact_path(monkeypatch, mode):
    """float32 sums first try an accurate float64 sum with a rigorous bound; where it certifies
    the rounding, the result must be the exact accumulator's bits, and ties must not certify."""
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.standard_normal((60, 500)), rng.uniform(0, 1e30, (20, 500)),
                        np.exp(rng.uniform(-40, 40, (20, 500)))]).astype(np.float32)
    x[0, :3] = [1.0, 2.0 ** -24, 0.0]  # an exact tie between two float32 values...
    x[0, 3:] = 0.0
    x[1, :3] = [1.0, 2.0 ** -24, 2.0 ** -100]  # ...and one just above it, with a tiny lo part
    x[1, 3:] = 0.0
    fn = (lambda f: f) if mode == "eager" else (lambda f: tf.function(f, jit_compile=True))

    def certified(v):
        _, ok, exact_rows = exact._certified_float32_sum(v)
        return ok, exact_rows()

    ok, exact_ok = (t.numpy() for t in fn(certified)(tf.constant(x)))
    assert not ok[0] and exact_ok[0]  # the bound cannot tell a tie; the exact float64 sum can
    assert not ok[1] and not exact_ok[1]  # neither: the exact accumulator decides
    assert np.mean(ok) > 0.9
    ok = ok | exact_ok
    assert np.all(fn(lambda v: exact._certified_float32_sum(v)[1])(tf.constant(x[ok & (
        np.arange(len(x)) > 0)])).numpy())
    fast = fn(lambda v: exact.exact_reduce_sum(v, [1]))(tf.constant(x[ok])).numpy()
    assert float(fast[0]) == 1.0  # the tie, to even
    monkeypatch.setattr(exact, "_FAST_FLOAT32", False)
    slow = fn(lambda v: exact.exact_reduce_sum(v, [1]))(tf.constant(x)).numpy()
    _assert_same_bits(slow, [_reference(r, "float32") for r in x])
    _assert_same_bits(fast, slow[ok])


def _fsum_float32(row):
    """The correctly rounded float32 sum of finite float32 values by math.fsum: fsum rounds
    the exact sum once to float64; where that lands on a float32 midpoint, the sign of the
    exact residual (fsum again) decides the direction, so there is no double rounding."""
    vals = [float(v) for v in row]
    s = math.fsum(vals)
    with np.errstate(over="ignore"):  # a sum beyond float32's range rounds to inf
        r = np.float32(s)
        if float(r) == s or not math.isfinite(float(r)):
            return r
        other = np.nextafter(r, np.float32(np.inf if s > float(r) else -np.inf),
                             dtype=np.float32)
    mid = (float(r) + float(other)) / 2.0  # exact in float64
    if s != mid:
        return r
    residual = math.fsum(vals + [-s])
    if residual == 0.0:
        return r  # a true tie: numpy rounded it to even
    return max(r, other) if residual > 0 else min(r, other)


def _hard_float32_rows(rng, n):
    """Rows of n float32 values whose correctly rounded sums are hard to get: ties and near
    ties at many scales, subnormal sums, overflow, and condition numbers 1e2 .. 1e30."""
    rows = []
    h = 2.0 ** -24
    for k in (-100, -20, 0, 20, 100):
        s = 2.0 ** k
        for tail in ([], [h * 2.0 ** -60], [-h * 2.0 ** -60], [h * 2.0 ** -30, -h * 2.0 ** -31]):
            rows.append([s, s * h] + [s * t for t in tail])  # tie, or just above/below it
        rows.append([s * (1 + 2 * h), s * h])  # tie from an odd neighbour: up to even
    sub, tiny = 2.0 ** -149, 2.0 ** -126
    rows += [[tiny, -tiny + sub], [tiny, -0.75 * tiny], [3 * sub, -sub, sub],
             [1e-30, -1e-30, 5 * sub], [1.5 * tiny, -tiny, -0.25 * tiny, sub]]
    big = float(np.finfo(np.float32).max)
    half_ulp_max = 2.0 ** (127 - 24)
    rows += [[big, big, -big], [big, big], [-big, -big], [big, half_ulp_max],
             [big, half_ulp_max / 2], [0.7 * big] * 3, [big, -big, 1.0]]
    for i, cond in enumerate((1e2, 1e8, 1e16, 1e30)):
        rows.append(list(testing.ill_conditioned_sum(n, cond, "float32", seed=i)[0]))
    rows.append(list(rng.standard_normal(n)))  # well conditioned: certified
    out = np.zeros((len(rows), n), np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return rng.permuted(out, axis=1)


def test_float32_xla_hard_cases_same_bits_as_accumulator_and_fsum(monkeypatch):
    """Under XLA (the pure-TF path), float32 sums certified from float64 and the exact
    accumulator give the same bits as math.fsum and an exact Fraction sum, row by row and
    for a long row whose length is not a whole number of blocks."""
    rng = np.random.default_rng(31)
    x = _hard_float32_rows(rng, 300)
    xla = tf.function(lambda v: exact.exact_reduce_sum(v, [1]), jit_compile=True)
    got = xla(tf.constant(x)).numpy()
    _assert_same_bits(got, [_fsum_float32(r) for r in x])
    _assert_same_bits(got, [_reference(r, "float32") for r in x])
    ok = tf.function(lambda v: exact._certified_float32_sum(v)[1], jit_compile=True)(
        tf.constant(x)).numpy()
    assert ok.any() and not ok.all()  # both routes ran
    monkeypatch.setattr(exact, "_FAST_FLOAT32", False)
    slow = tf.function(lambda v: exact.exact_reduce_sum(v, [1]), jit_compile=True)(
        tf.constant(x)).numpy()
    _assert_same_bits(got, slow)
    monkeypatch.setattr(exact, "_FAST_FLOAT32", True)
    long = np.concatenate([testing.ill_conditioned_sum(2000, 1e20, "float32", seed=9)[0],
                           rng.standard_normal(100_003).astype(np.float32)])
    full = tf.function(lambda v: exact.exact_reduce_sum(v), jit_compile=True)
    _assert_same_bits(full(tf.constant(long)).numpy(), _fsum_float32(long))
    _assert_same_bits(full(tf.constant(long[2000:])).numpy(), _fsum_float32(long[2000:]))


def test_float32_xla_nonfinite_and_signed_zero():
    inf, nan = np.inf, np.nan
    rows = [[inf, 1.0, 2.0], [-inf, 1.0, 0.0], [inf, -inf, 1.0], [nan, 1.0, inf],
            [-0.0, -0.0, -0.0], [-0.0, 0.0, -0.0], [1.0, -1.0, -0.0]]
    x = np.array(rows, np.float32)
    got = tf.function(lambda v: exact.exact_reduce_sum(v, [1]), jit_compile=True)(
        tf.constant(x)).numpy()
    with np.errstate(invalid="ignore"):
        want = np.array([r[0] + r[1] + r[2] for r in x.astype(np.float64)], np.float32)
    _assert_same_bits(np.where(np.isnan(got), np.float32(nan), got),
                      np.where(np.isnan(want), np.float32(nan), want))


def _near_tie_rows(rng, rows, n):
    """Rows whose exact sums sit within a few float64 roundings of a float32 midpoint of a
    tiny result, behind a large cancelling pair (so sigma, and the lo parts, are large)."""
    x = np.zeros((rows, n))
    big = 2.0 ** rng.integers(30, 60, rows)
    x[:, 0], x[:, 1] = big, -big
    half = (n - 2) // 2
    e = rng.integers(-80, -20, (rows, half)) + np.log2(big)[:, None] - 40
    a = rng.uniform(1, 2, e.shape) * 2.0 ** e
    x[:, 2:2 + half] = a
    x[:, 2 + half:] = -a * (1 + rng.choice([0, 2.0 ** -23, -2.0 ** -23], e.shape))
    return rng.permuted(x.astype(np.float32), axis=1)


def test_float32_certificate_never_accepts_a_misrounded_float64_sum():
    """Data on which the float64 route rounds wrongly in many rows (its lo parts lose bits
    in float64 additions): none of those rows may be certified. The bound's
    ``gamma_n n ulp(sigma) / 2`` term is what refuses them; without it, rows certify with
    wrong bits. The op itself still returns the exact accumulator's bits."""
    rng = np.random.default_rng(5)
    x = _near_tie_rows(rng, 300, 64)
    r, ok = (t.numpy() for t in tf.function(
        lambda v: exact._certified_float32_sum(v)[:2], jit_compile=True)(tf.constant(x)))
    want = np.array([_reference(row, "float32") for row in x], np.float32)
    wrong = _bits(r) != _bits(want)
    assert wrong.sum() >= 10  # the float64 route misrounds here: the bound must refuse
    assert not np.any(ok & wrong)
    got = tf.function(lambda v: exact.exact_reduce_sum(v, [1]), jit_compile=True)(
        tf.constant(x)).numpy()
    _assert_same_bits(got, want)


def test_float32_xla_reads_the_input_without_float64_copies():
    """The compiled float32 sum holds no float64 (or integer) array of the input's size
    outside the accumulator's branch: the split and both reductions are fused, and the
    accumulator runs only in its conditional branch."""
    n = 1 << 16
    fn = tf.function(lambda v: exact.exact_reduce_sum(v), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(tf.zeros([n], tf.float32))(stage="optimized_hlo")
    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    assert "conditional(" in entry
    for line in entry.splitlines():
        shape = line.split("=", 1)[1].strip().split(" ")[0] if "=" in line else ""
        if shape.startswith(("f64[", "s64[", "s32[", "u32[")):
            dims = [int(d) for d in shape[4:shape.index("]")].split(",") if d]
            assert math.prod(dims) < n // 8, line


def test_ill_conditioned_float32_where_tf_fails():
    x, _, cond = testing.ill_conditioned_sum(2000, 1e12, "float32", seed=3)
    got = exact.exact_reduce_sum(tf.constant(x)).numpy()
    want = _reference(x, "float32")
    _assert_same_bits(got, want)
    assert cond > 1e10
    assert tf.reduce_sum(x).numpy() != want


@pytest.mark.parametrize("dtype,p", [("float64", 53), ("float32", 24), ("float16", 11),
                                     ("bfloat16", 8)])
def test_ties_round_to_even(dtype, p):
    t = _NP[dtype]
    h = 2.0 ** -p  # half an ulp of 1
    cases = [
        ([1.0, h], 1.0),  # tie: stays at even 1
        ([1.0 + 2 * h, h], 1.0 + 4 * h),  # tie: odd rounds up to even
        ([1.0, h, h * 2.0 ** -10], 1.0 + 2 * h),  # just above the tie
        ([1.0, h, -h * 2.0 ** -10], 1.0),  # just below the tie
        ([1.0, h, 2.0 ** -20, -(2.0 ** -20)], 1.0),  # tie restored by a cancelling pair
    ]
    x = np.array([c[0] + [0.0] * (4 - len(c[0])) for c in cases], t)
    got = exact.exact_reduce_sum(tf.constant(x), [1]).numpy()
    _assert_same_bits(got, np.array([c[1] for c in cases], t))
    _assert_same_bits(got, [_reference(r, dtype) for r in x])


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_results_and_overflow(dtype):
    fi = ml_dtypes.finfo(_NP[dtype])
    t = _NP[dtype]
    big, tiny, sub = float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal)
    half_ulp_max = math.ldexp(1.0, fi.maxexp - 2 - fi.nmant)  # half an ulp of the largest finite
    rows = [
        [tiny, -tiny + sub, 0.0],  # exactly the smallest subnormal
        [tiny, -0.75 * tiny, 0.0],  # a subnormal
        [3 * sub, -sub, sub],  # subnormal inputs
        [big, big, -big],  # overflows on the way, back within range
        [big, big, 0.0],  # the exact sum overflows: inf
        [0.7 * big, 0.7 * big, 0.7 * big],  # overflows into the exponent field's top
        [-big, -big, 0.0],
        [big, half_ulp_max, 0.0],  # tie at the overflow threshold rounds to even: inf
        [big, half_ulp_max / 2, 0.0],  # below it: max
    ]
    x = np.array(rows, t)
    got = exact.exact_reduce_sum(tf.constant(x), [1]).numpy()
    want = np.array([_reference(r, dtype) for r in x], t)
    _assert_same_bits(got, want)
    assert float(got[1]) != 0 and abs(float(got[1])) < tiny
    assert np.isposinf(float(got[4])) and np.isposinf(float(got[5]))
    assert np.isneginf(float(got[6])) and np.isposinf(float(got[7]))
    assert float(got[3]) == big and float(got[8]) == big


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_and_signed_zero_as_ieee(dtype):
    t = _NP[dtype]
    inf, nan = np.inf, np.nan
    rows = [[inf, 1.0, 2.0], [-inf, 1.0, 0.0], [inf, -inf, 1.0], [nan, 1.0, inf],
            [inf, inf, -0.0], [-0.0, -0.0, -0.0], [-0.0, 0.0, -0.0], [1.0, -1.0, -0.0]]
    got = exact.exact_reduce_sum(tf.constant(np.array(rows, t)), [1]).numpy().astype(np.float64)
    # IEEE addition, left to right, in float64 (signs of zero and specials do not depend on order)
    with np.errstate(invalid="ignore"):  # inf + -inf
        want = [r[0] + r[1] + r[2] for r in np.array(rows, np.float64)]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], np.array(want)[ok])
    np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(np.array(want)[ok]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_sum_is_positive_zero(dtype):
    for shape, axis in (([0], None), ([3, 0], [1]), ([0, 4], [0])):
        x = tf.zeros(shape, dtype)
        got = exact.exact_reduce_sum(x, axis).numpy()
        want = tf.reduce_sum(x, axis).numpy()
        assert got.shape == want.shape
        _assert_same_bits(got, np.zeros(want.shape, _NP[dtype]))


@pytest.mark.parametrize("dtype,width", [("float64", 64), ("float32", 32), ("float16", 16)])
def test_property_any_finite_values(dtype, width):
    """Sum, mean and every prefix of any finite values hypothesis draws (it favours 0,
    subnormals, +-max and repeats)."""
    fn = tf.function(lambda v: (exact.exact_reduce_sum(v), exact.exact_reduce_mean(v),
                                exact.exact_cumsum(v, 0)),
                     input_signature=[tf.TensorSpec([None], dtype)])

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.floats(width=width, allow_nan=False, allow_infinity=False),
                    min_size=1, max_size=16))
    def check(values):
        x = np.array(values, _NP[dtype])
        total, mean, prefix = (t.numpy() for t in fn(tf.constant(x, dtype)))
        _assert_same_bits(total, _reference(x, dtype))
        _assert_same_bits(prefix, [_reference(x[:k + 1], dtype) for k in range(len(x))])
        exact_sum = sum((Fraction(float(v)) for v in x), Fraction(0))
        want = _round_exact(exact_sum / len(x), dtype)
        if want == 0 and np.all(np.signbit(x) & (x == 0)):
            want = np.array(-0.0, _NP[dtype])
        _assert_same_bits(mean, want)

    check()


# -------------------------------------------------------------------- invariance

def test_bits_invariant_under_permutation_reshape_and_split():
    rng = np.random.default_rng(11)
    x = _wide_data(rng, 1, 4096, -200, 200, "float64").ravel()
    whole = exact.exact_reduce_sum(tf.constant(x)).numpy()
    _assert_same_bits(whole, math.fsum(x))
    for _ in range(3):
        _assert_same_bits(exact.exact_reduce_sum(tf.constant(rng.permutation(x))).numpy(), whole)
    for shape in ([64, 64], [16, 16, 16], [4096, 1]):
        _assert_same_bits(exact.exact_reduce_sum(tf.constant(x.reshape(shape))).numpy(), whole)
    # a batch split into parts of any sizes: the exact states add, the rounded sums would not
    cuts = sorted(rng.choice(np.arange(1, 4096), 5, replace=False))
    parts = np.split(x, cuts)
    states = [exact.sum_state(tf.constant(p)) for p in parts]
    _assert_same_bits(exact.state_to_sum(exact.combine_states(states), tf.float64).numpy(), whole)
    # the same as one stacked tensor of states reduced over its batch axis
    stacked = tf.stack(states)
    _assert_same_bits(exact.state_to_sum(exact.combine_states(stacked, axis=0), tf.float64).numpy(),
                      whole)
    naive = sum(float(np.sum(p)) for p in parts)
    assert naive != whole  # adding the rounded part sums is not the same


def test_axes_keepdims_and_dynamic_shapes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32) * np.float32(1e4)
    for axis in (None, [0], [1], [2], [0, 2], [1, 2], [0, 1, 2], []):
        for keepdims in (False, True):
            got = exact.exact_reduce_sum(tf.constant(x), axis, keepdims).numpy()
            want_shape = tf.reduce_sum(x, axis, keepdims).shape
            assert got.shape == tuple(want_shape), (axis, keepdims)
            np.testing.assert_allclose(got, tf.reduce_sum(tf.cast(x, tf.float64), axis,
                                                          keepdims), rtol=6e-8)
    # values: per output against the reference
    got = exact.exact_reduce_sum(tf.constant(x), [0, 2]).numpy()
    _assert_same_bits(got, [_reference(x[:, j, :], "float32") for j in range(4)])
    fn = tf.function(lambda v: exact.exact_reduce_sum(v, [1]),
                     input_signature=[tf.TensorSpec([None, None], tf.float32)])
    _assert_same_bits(fn(tf.constant(x[0])).numpy(), [_reference(r, "float32") for r in x[0]])
    fn = tf.function(lambda v: exact.exact_reduce_sum(v),
                     input_signature=[tf.TensorSpec(None, tf.float32)])
    _assert_same_bits(fn(tf.constant(x)).numpy(), _reference(x, "float32"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_execution_modes_same_bits(dtype):
    rng = np.random.default_rng(2)
    x = tf.constant(_wide_data(rng, 8, 96, -20, 20, dtype))

    def f(v):
        return exact.exact_reduce_sum(v, [1]), exact.exact_reduce_mean(v, [1]), \
            exact.exact_cumsum(v[:2, :16], 1)

    eager = [t.numpy() for t in f(x)]
    graph = [t.numpy() for t in tf.function(f)(x)]
    xla = [t.numpy() for t in tf.function(f, jit_compile=True)(x)]
    for a, b, c in zip(eager, graph, xla):
        _assert_same_bits(b, a)
        _assert_same_bits(c, a)
    _assert_same_bits(eager[0], [_reference(r, dtype) for r in x.numpy()])


# -------------------------------------------------------------------- mean, cumsum, gradients

@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_correctly_rounded(dtype):
    rng = np.random.default_rng(3)
    lo, hi = (-3, 3) if dtype == "float16" else (-20, 20)
    x = _wide_data(rng, 12, 48, lo, hi, dtype)[:, :47]  # 47 terms: division is inexact
    got = exact.exact_reduce_mean(tf.constant(x), [1]).numpy()
    want = [_round_exact(sum((Fraction(float(v)) for v in r), Fraction(0)) / 47, dtype)
            for r in x]
    _assert_same_bits(got, np.array(want, _NP[dtype]))
    if dtype in ("float32", "float64"):  # TF's mean of the same rows is off
        assert np.any(tf.reduce_mean(x, 1).numpy() != got)
    big = float(ml_dtypes.finfo(_NP[dtype]).max)
    m = exact.exact_reduce_mean(tf.constant([big, big, big], dtype)).numpy()
    assert float(m) == big  # no intermediate overflow
    assert np.isnan(exact.exact_reduce_mean(tf.zeros([0], dtype)).numpy())  # as tf.reduce_mean


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cumsum_every_prefix_correctly_rounded(dtype):
    rng = np.random.default_rng(4)
    x = _wide_data(rng, 3, 40, -30, 30, dtype)
    got = exact.exact_cumsum(tf.constant(x), 1).numpy()
    want = [[_reference(r[:k + 1], dtype) for k in range(x.shape[1])] for r in x]
    _assert_same_bits(got, np.array(want, _NP[dtype]))
    assert np.any(tf.cumsum(x, 1).numpy() != got)  # TF's scan of the same rows is off
    got0 = exact.exact_cumsum(tf.constant(x.T), 0).numpy()
    _assert_same_bits(got0, got.T)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum_flags_and_gradient_match_tf(exclusive, reverse):
    x = tf.constant(np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.0)  # exact in float32
    for axis in (0, 1, 2):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = exact.exact_cumsum(x, axis, exclusive, reverse)
            theirs = tf.cumsum(x, axis, exclusive, reverse)
            w = tf.constant((np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5) / 8)  # dyadic
            lo, lt = tf.reduce_sum(ours * w), tf.reduce_sum(theirs * w)
        _assert_same_bits(ours.numpy(), theirs.numpy())
        _assert_same_bits(tape.gradient(lo, x).numpy(), tape.gradient(lt, x).numpy())


def test_blocked_cumsum_same_bits(monkeypatch):
    """Long rows are scanned in blocks with exact offsets: the same bits as one block."""
    rng = np.random.default_rng(6)
    x = tf.constant(_wide_data(rng, 3, 20, -20, 20, "float64"))
    whole = {(e, r): exact.exact_cumsum(x, 1, e, r).numpy() for e, r in ((False, False),
                                                                         (True, True))}
    monkeypatch.setattr(exact, "_BLOCK_ELEMS", 8)  # blocks of 2 elements per row
    for (e, r), want in whole.items():
        _assert_same_bits(exact.exact_cumsum(x, 1, e, r).numpy(), want)
    fn = tf.function(lambda v: exact.exact_cumsum(v, 1),
                     input_signature=[tf.TensorSpec([None, None], tf.float64)])
    _assert_same_bits(fn(x).numpy(), whole[(False, False)])
    assert exact.exact_cumsum(tf.zeros([0, 7]), 1).shape == (0, 7)


def test_rows_longer_than_the_accumulator_capacity(monkeypatch):
    """Reductions past the capacity of one accumulation are chunked and combined exactly."""
    rng = np.random.default_rng(8)
    x = _wide_data(rng, 2, 100, -30, 30, "float64")
    want_sum = exact.exact_reduce_sum(tf.constant(x), [1]).numpy()
    want_mean = exact.exact_reduce_mean(tf.constant(x), [1]).numpy()
    monkeypatch.setattr(exact, "_MAX_TERMS", 16)  # 100 terms: 7 chunks, the last padded
    _assert_same_bits(exact.exact_reduce_sum(tf.constant(x), [1]).numpy(), want_sum)
    _assert_same_bits(exact.exact_reduce_mean(tf.constant(x), [1]).numpy(), want_mean)
    _assert_same_bits(want_sum, [math.fsum(r) for r in x])
    negzero = exact.exact_reduce_sum(tf.constant([-0.0] * 40)).numpy()
    assert negzero == 0 and np.signbit(negzero)  # the -0.0 padding is not counted


def test_sum_and_mean_gradients_match_tf():
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 5)))
    for fn, ref in ((exact.exact_reduce_sum, tf.reduce_sum), (exact.exact_reduce_mean,
                                                               tf.reduce_mean)):
        for axis, keepdims in ((None, False), ([1], False), ([0], True)):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                a = fn(x, axis, keepdims)
                b = ref(x, axis, keepdims)
                la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
            np.testing.assert_allclose(tape.gradient(la, x), tape.gradient(lb, x), rtol=1e-15)


def test_rejects_non_floating():
    with pytest.raises(TypeError, match="input_tensor"):
        exact.exact_reduce_sum(tf.constant([1, 2]))


# -------------------------------------------------------------------- replicas

def test_cross_replica_sum_two_devices(two_cpu_strategy):
    rng = np.random.default_rng(9)
    x = _wide_data(rng, 1, 512, -25, 25, "float32").ravel()
    want = _reference(x, "float32")
    shards = tf.constant(x.reshape(2, 256))

    def step(ctx_shard):
        return exact.cross_replica_sum(ctx_shard)

    values = two_cpu_strategy.experimental_distribute_values_from_function(
        lambda ctx: shards[ctx.replica_id_in_sync_group])
    out = two_cpu_strategy.run(step, args=(values,))
    for v in two_cpu_strategy.experimental_local_results(out):
        _assert_same_bits(v.numpy(), want)


def test_one_two_four_replicas_and_thread_counts_same_bits():
    """MirroredStrategy over 1, 2 and 4 logical CPUs, one intra-op thread (a fresh process: the
    device and thread configuration is set once), against this process's sum (all threads)."""
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)])
        from safeops._core import exact
        x = np.load(__import__("sys").argv[1])
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        for k in (1, 2, 4):
            strategy = tf.distribute.MirroredStrategy(
                devices[:k], cross_device_ops=tf.distribute.ReductionToOneDevice())
            shards = tf.constant(x.reshape(k, -1))
            vals = strategy.experimental_distribute_values_from_function(
                lambda ctx: shards[ctx.replica_id_in_sync_group])
            states = strategy.run(lambda v: exact.sum_state(v), args=(vals,))
            total = strategy.reduce(tf.distribute.ReduceOp.SUM, states, axis=None)
            s = exact.state_to_sum(exact.normalize_state(total), tf.float32).numpy()
            print(k, s.view(np.uint32))
        print("whole", exact.exact_reduce_sum(tf.constant(x)).numpy().view(np.uint32))
    """)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1 << 16) * 10.0 ** rng.uniform(-30, 30, 1 << 16)).astype(np.float32)
    x[1 << 15:] = -x[:1 << 15] * np.float32(1 + 2 ** -9)
    x = rng.permutation(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        np.save(path, x)
        r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    bits = dict(ln.split() for ln in r.stdout.strip().splitlines()[-4:])
    here = exact.exact_reduce_sum(tf.constant(x)).numpy()
    want = _bits(_reference(x, "float32"))
    assert bits["1"] == bits["2"] == bits["4"] == bits["whole"] == str(int(want)), bits
    assert int(_bits(here)) == int(want)
    # the same split, adding rounded per-replica sums: not the same bits for every split
    naive = {k: np.sum(np.sum(x.reshape(k, -1), axis=1, dtype=np.float32), dtype=np.float32)
             for k in (1, 2, 4)}
    assert len({float(v) for v in naive.values()} | {float(_reference(x, "float32"))}) > 1
