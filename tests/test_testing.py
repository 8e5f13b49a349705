"""Tests of safeops.testing: each tool is checked against an independent computation
(Python's exact `fractions.Fraction`, NumPy's correctly rounded casts, mpmath at
thousands of bits) and shown able to fail."""

import math
from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf

from safeops import testing as T

DTYPES = ["float16", "bfloat16", "float32", "float64"]
NP = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
      "float64": np.float64}
PRECISION = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def _frac_sum(x):
    return sum((Fraction(float(v)) for v in np.asarray(x, dtype=np.float64).ravel()), Fraction(0))


# --- ulp_distance / bits_of_error ------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_ulp_distance_adjacent_values_is_one(dtype):
    one = np.array(1.0, dtype=NP[dtype])
    up = np.array(1.0 + 2.0 ** (1 - PRECISION[dtype]), dtype=np.float64)  # nextafter(1, 2)
    down = np.array(1.0 - 2.0 ** -PRECISION[dtype], dtype=np.float64)  # nextafter(1, 0)
    assert T.ulp_distance(one, up, dtype) == 1
    assert T.ulp_distance(down, one, dtype) == 1
    assert T.ulp_distance(down, up, dtype) == 2
    assert T.bits_of_error(one, up, dtype) == pytest.approx(1.0)
    assert T.ulp_distance(one, one, dtype) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_ulp_distance_counts_across_zero_and_binades(dtype):
    p = PRECISION[dtype]
    # [1, 2) holds 2**(p-1) values of the format
    assert T.ulp_distance(1.0, 2.0, dtype) == 2 ** (p - 1)
    assert T.ulp_distance(-0.0, 0.0, dtype) == 0
    tiny = T.round_to_dtype(np.array([2.0 ** -1074]), dtype)  # smallest subnormal (or 0)
    smallest = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149,
                "float64": 2.0**-1074}[dtype]
    assert T.ulp_distance(-smallest, smallest, dtype) == 2
    assert tiny.astype(np.float64)[0] in (0.0, smallest)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ulp_distance_nonfinite(dtype):
    worst = 2 ** {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}[dtype] - 1
    assert T.ulp_distance(np.nan, 1.0, dtype) == worst
    assert T.ulp_distance(np.inf, 1.0, dtype) == worst
    assert T.ulp_distance(np.inf, -np.inf, dtype) == worst
    assert T.ulp_distance(np.nan, np.nan, dtype) == 0
    assert T.ulp_distance(-np.inf, -np.inf, dtype) == 0
    assert T.bits_of_error(np.nan, 0.5, dtype) == pytest.approx(math.log2(worst + 1.0))


def test_ulp_distance_accepts_tensors_and_broadcasts():
    a = tf.constant([1.0, 2.0, 3.0])
    d = T.ulp_distance(a, np.float64(2.0), "float32")
    assert d.tolist() == [2**23, 0, 2**22]


# --- round_to_dtype ---------------------------------------------------------


def test_ulp_distance_of_two_scalars_is_a_0d_value():
    # two scalars give a 0-d distance (float() accepts it under NumPy 2.x); one apart here
    one_up = np.nextafter(np.float32(1.0), np.float32(2.0))
    d = T.ulp_distance(1.0, float(one_up), "float32")
    assert np.shape(d) == () and float(d) == 1.0
    assert np.shape(T.bits_of_error(tf.constant(1.0), 1.0, "float32")) == ()
    assert T.ulp_distance([1.0], 1.0, "float32").shape == (1,)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_to_dtype_matches_numpy_correct_rounding(dtype):
    # NumPy's float64 -> float16/float32 casts round once, to nearest even.
    x = T.sample_floats("float64", 20000, -1e6, 1e6, seed=3)
    expected = x.astype(NP[dtype])
    got = T.round_to_dtype(x, dtype)
    np.testing.assert_array_equal(got.view(np.uint16 if dtype == "float16" else np.uint32),
                                  expected.view(np.uint16 if dtype == "float16" else np.uint32))


def test_round_to_dtype_bfloat16_rounds_once():
    # 1 + 2**-8 + 2**-30 lies just above the midpoint of 1 and 1 + 2**-7: it rounds up.
    # Rounding through float32 first lands exactly on the midpoint and goes to even (1.0).
    x = np.array([1 + 2.0**-8 + 2.0**-30])
    assert float(T.round_to_dtype(x, "bfloat16")[0]) == 1 + 2.0**-7
    # Independent check on random inputs: the result is a nearest neighbour, ties to even.
    xs = T.sample_floats("float64", 3000, -1e30, 1e30, seed=5)
    r = T.round_to_dtype(xs, "bfloat16").astype(np.float64)
    bits = T.round_to_dtype(xs, "bfloat16").view(np.uint16).astype(np.int64)
    up = (bits + 1).astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    down = (bits - 1).astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    for v, ri, u, d in zip(xs, r, up, down):
        for nb in (u, d):
            if np.isfinite(nb):
                assert abs(Fraction(v) - Fraction(ri)) <= abs(Fraction(v) - Fraction(nb))


def test_round_to_dtype_overflow_and_subnormal():
    assert np.isinf(T.round_to_dtype(np.array([65520.0]), "float16")[0])  # midpoint to 2**16
    assert float(T.round_to_dtype(np.array([65519.0]), "float16")[0]) == 65504.0
    assert float(T.round_to_dtype(np.array([3 * 2.0**-26]), "float16")[0]) == 2.0**-24
    obj = np.array([mpmath.mpf(1) / 3], dtype=object)
    assert float(T.round_to_dtype(obj, "float32")[0]) == float(np.float32(1.0 / 3.0))


# --- reference --------------------------------------------------------------


def test_reference_correctly_rounded():
    x = np.array([1e-10, 1.0, 0.5, 100.0], dtype=np.float32)
    got = T.reference(mpmath.log1p, x, dtype="float32")
    # Independent: Fraction-free check through float64 log1p, correct to < 1 float64 ulp,
    # then rounded to float32 (no float32 midpoint is that close for these inputs).
    np.testing.assert_array_equal(got, np.log1p(x.astype(np.float64)).astype(np.float32))
    assert T.reference(mpmath.sqrt, np.array([4.0]), dtype="float64")[0] == 2.0
    assert np.isnan(T.reference(mpmath.log, np.array([-1.0]), dtype="float64")[0])
    two = T.reference(lambda a, b: a + b, np.array([1.0]), np.array([2.0**-60]), dtype="float64")
    assert two[0] == 1.0


def test_reference_can_detect_an_inaccurate_formula():
    # The naive log(1 + x) loses everything at x = 1e-10 in float32.
    x = np.array([1e-10], dtype=np.float32)
    naive = np.log(np.float32(1) + x)
    ref = T.reference(mpmath.log1p, x, dtype="float32")
    assert T.ulp_distance(naive, ref, "float32")[0] > 1000


# --- exact_sum / exact_dot --------------------------------------------------


def test_exact_sum_equals_fraction_sum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(500) * np.exp2(rng.integers(-60, 60, 500))
    assert T.exact_sum(x) == float(_frac_sum(x))  # float(Fraction) rounds correctly
    assert T.exact_sum(np.array([1e8, 1.0, -1e8], dtype=np.float32), dtype="float32") == 1.0
    # Exactness below float64's resolution: 2**60 + 1 - 2**60 = 1.
    assert T.exact_sum(np.array([2.0**60, 1.0, -(2.0**60)])) == 1.0


def test_exact_sum_axis_and_nonfinite():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(T.exact_sum(x, axis=0), x.sum(axis=0))
    np.testing.assert_array_equal(T.exact_sum(x, axis=1), x.sum(axis=1))
    assert np.isnan(T.exact_sum(np.array([np.inf, -np.inf])))
    assert T.exact_sum(np.array([np.inf, 1.0])) == np.inf


def test_exact_dot_equals_fraction_dot():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(300) * np.exp2(rng.integers(-40, 40, 300))
    y = rng.standard_normal(300) * np.exp2(rng.integers(-40, 40, 300))
    exact = sum((Fraction(a) * Fraction(b) for a, b in zip(x, y)), Fraction(0))
    assert T.exact_dot(x, y) == float(exact)
    batched = T.exact_dot(np.stack([x, -x]), np.stack([y, y]))
    assert batched.tolist() == [float(exact), -float(exact)]


# --- ill-conditioned generators ---------------------------------------------


def _mp_condition_sum(x):
    with mpmath.workprec(4000):  # exact for these exponent ranges
        vals = [mpmath.mpf(float(v)) for v in np.asarray(x, dtype=np.float64)]
        s = mpmath.fsum(vals)
        a = mpmath.fsum([abs(v) for v in vals])
        return s, float(a / abs(s))


def _mp_condition_dot(x, y):
    with mpmath.workprec(4000):
        prods = [mpmath.mpf(float(a)) * mpmath.mpf(float(b)) for a, b in zip(
            np.asarray(x, np.float64), np.asarray(y, np.float64))]
        d = mpmath.fsum(prods)
        a = mpmath.fsum([abs(p) for p in prods])
        return d, float(2 * a / abs(d))


@pytest.mark.parametrize("dtype,conds", [
    ("float64", [1e2, 1e8, 1e16, 1e30]),
    ("float32", [1e2, 1e8, 1e16]),
])
def test_ill_conditioned_sum_achieves_condition(dtype, conds):
    for cond in conds:
        x, exact, achieved = T.ill_conditioned_sum(400, cond, dtype, seed=7)
        assert x.dtype == NP[dtype] and x.shape == (400,)
        s, c = _mp_condition_sum(x)
        assert exact == float(s)  # exact sum, independently, rounded once to float64
        assert c == pytest.approx(achieved, rel=1e-12)
        assert cond / 100 <= c <= cond * 100, (cond, c)


@pytest.mark.parametrize("dtype,conds", [
    ("float64", [1e2, 1e8, 1e16, 1e30]),
    ("float32", [1e2, 1e8, 1e16]),
])
def test_ill_conditioned_dot_achieves_condition(dtype, conds):
    for cond in conds:
        x, y, exact, achieved = T.ill_conditioned_dot(400, cond, dtype, seed=11)
        d, c = _mp_condition_dot(x, y)
        assert exact == float(d)
        assert c == pytest.approx(achieved, rel=1e-12)
        assert cond / 100 <= c <= cond * 100, (cond, c)


def test_generators_are_deterministic_and_low_precision_formats_work():
    a = T.ill_conditioned_sum(100, 1e6, "float32", seed=3)
    b = T.ill_conditioned_sum(100, 1e6, "float32", seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    for dtype in ("float16", "bfloat16"):
        x, exact, achieved = T.ill_conditioned_sum(200, 1e3, dtype, seed=1)
        assert x.dtype == NP[dtype]
        assert 10 <= achieved <= 1e5
        assert exact == float(_frac_sum(x))


def test_generator_discriminates_naive_float32_sum():
    # The point of the generator: float32 tf.reduce_sum fails on condition 1e8.
    x, exact, achieved = T.ill_conditioned_sum(100_000, 1e8, "float32", seed=0)
    assert 1e6 <= achieved <= 1e10
    naive = float(tf.reduce_sum(tf.constant(x)))
    assert abs(naive - exact) / abs(exact) > 1e-3
    # ... while an exact method passes the same check.
    assert T.ulp_distance(T.exact_sum(x, dtype="float32"), exact, "float32") == 0


# --- sample_floats ----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_floats_spreads_over_bit_patterns(dtype):
    x = T.sample_floats(dtype, 4000, -np.inf, np.inf, seed=2)
    x64 = x.astype(np.float64)
    assert x.dtype == NP[dtype]
    assert not np.isnan(x64).any()
    finite = x64[np.isfinite(x64) & (x64 != 0)]
    # Uniform over bit patterns: the binary exponents are spread over the whole range,
    # so both tiny (< 1e-3 of the way) and huge magnitudes appear, on both signs.
    exps = np.frexp(np.abs(finite))[1]
    span = exps.max() - exps.min()
    # full spans of frexp exponents: float16 -23..16, bfloat16 -132..128, float32 -148..128,
    # float64 -1073..1024
    assert span > 0.9 * {"float16": 39, "bfloat16": 260, "float32": 276, "float64": 2097}[dtype]
    assert (finite < 0).mean() == pytest.approx(0.5, abs=0.05)
    smallest_normal = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126,
                       "float64": 2.0**-1022}[dtype]
    if dtype == "float16":  # 1/32 of float16's patterns are subnormal: expect ~125 of 4000
        assert (np.abs(finite) < smallest_normal).sum() > 50


# exponent and stored-significand bits of each format
_BITS = {"float16": (5, 10), "bfloat16": (8, 7), "float32": (8, 23), "float64": (11, 52)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_floats_draws_subnormals_at_their_share(dtype):
    """Subnormals appear in every dtype, as often as their share of the bit patterns."""
    e, m = _BITS[dtype]
    n = 200_000
    x = T.sample_floats(dtype, n, -np.inf, np.inf, seed=11).astype(np.float64)  # exact casts
    smallest_normal = 2.0 ** (2 - 2 ** (e - 1))
    sub = x[(x != 0) & (np.abs(x) < smallest_normal)]
    # Keys from -inf to +inf: 2 (2^e - 1) 2^m + 1 (+0 and -0 share one); nonzero
    # subnormal patterns: 2 (2^m - 1). Uniform over keys -> binomial count.
    p = 2 * (2**m - 1) / (2 * (2**e - 1) * 2**m + 1)
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    # 5 standard deviations: float64 expects ~98 of 200 000, float32/bfloat16 ~784
    assert abs(len(sub) - mean) < 5 * sd, (len(sub), mean)
    assert (sub < 0).any() and (sub > 0).any()
    # they are genuine subnormals of the format: multiples of its smallest one
    step = 2.0 ** (2 - 2 ** (e - 1) - m)
    assert np.all(np.abs(sub) >= step) and np.all(np.mod(sub, step) == 0)


def test_sample_floats_bounds_and_seed():
    x = T.sample_floats("float32", 1000, 1.0, 2.0, seed=4)
    assert x.min() >= 1.0 and x.max() <= 2.0
    np.testing.assert_array_equal(x, T.sample_floats("float32", 1000, 1.0, 2.0, seed=4))
    with pytest.raises(ValueError):
        T.sample_floats("float32", 10, 2.0, 1.0)


# --- gradients and modes ----------------------------------------------------


def test_check_gradients_accepts_a_correct_gradient():
    err = T.check_gradients(lambda x, y: tf.sin(x) * y + x**3, np.linspace(-2, 2, 7),
                            np.linspace(0.5, 3, 7))
    assert err < 1e-7


def test_check_gradients_flags_a_wrong_custom_gradient():
    @tf.custom_gradient
    def wrong_square(x):
        def grad(dy):
            return dy * 3.0 * x  # true derivative is 2x
        return x * x, grad

    assert T.check_gradients(wrong_square, np.linspace(0.5, 2, 5)) > 0.4

    @tf.custom_gradient
    def slightly_wrong(x):
        def grad(dy):
            return dy * tf.cos(x) * (1 + 1e-4)
        return tf.sin(x), grad

    assert T.check_gradients(slightly_wrong, np.linspace(0.1, 1, 5)) > 5e-5


def test_check_gradients_delta_sets_the_truncation_error():
    """A large `delta` on a curved function gives the central difference's truncation error.

    For exp, (e^(x+h) - e^(x-h)) / 2h = e^x sinh(h)/h exactly, so the relative error
    check_gradients reports is max_i (1 - h_i / sinh(h_i)) ~ h^2/6, with the steps
    h_i = fl(x_i + delta x_i) - x_i it takes. Rounding adds ~eps/h ~ 1e-14 here.
    """
    x = np.linspace(1.0, 2.0, 5)
    for delta in (1e-2, 1e-3):
        h = (x + delta * x) - x
        predicted = float(np.max(1.0 - h / np.sinh(h)))  # 6.7e-5 and 6.7e-7
        err = T.check_gradients(tf.exp, x, delta=delta)
        # rounding (~1e-14 absolute) is below 1e-6 of the prediction at both steps
        assert abs(err - predicted) <= 1e-6 * predicted, (delta, err, predicted)
    default = T.check_gradients(tf.exp, x)  # eps^(1/3): truncation ~ rounding ~ 1e-11
    assert default < 1e-9
    assert T.check_gradients(tf.exp, x, delta=1e-2) > 1e4 * default
    # too small a step: rounding error eps |L| / h dominates (~3e-4 at delta = 1e-12)
    assert T.check_gradients(tf.exp, x, delta=1e-12) > 100 * default


def test_assert_finite_gradients():
    T.assert_finite_gradients(tf.sin, np.array([0.0, 1.0], np.float32))
    with pytest.raises(AssertionError, match="gradient"):
        T.assert_finite_gradients(tf.sqrt, np.array([0.0, 1.0], np.float32))  # d sqrt at 0 = inf
    with pytest.raises(AssertionError, match="output"):
        T.assert_finite_gradients(tf.math.log, np.array([0.0], np.float32))


def test_run_modes_runs_three_ways():
    out = T.run_modes(lambda x: tf.reduce_sum(x * 2.0), tf.constant([1.0, 2.0]))
    assert set(out) == {"eager", "function", "jit_compile"}
    assert all(v == 6.0 for v in out.values())


def test_run_modes_really_compiles_the_third_mode():
    """A host-side op runs eagerly and in a graph but XLA cannot compile it.

    If run_modes ignored jit_compile (or ran the function eagerly three times),
    the same function would succeed in all three modes.
    """
    def host_op(x):
        return tf.numpy_function(lambda a: a * 2.0, [x], tf.float32)

    x = tf.constant([1.0, 2.0])
    np.testing.assert_array_equal(host_op(x).numpy(), [2.0, 4.0])  # eager works
    np.testing.assert_array_equal(tf.function(host_op)(x).numpy(), [2.0, 4.0])  # graph works
    with pytest.raises(tf.errors.InvalidArgumentError, match="XLA|compile"):
        T.run_modes(host_op, x)

    # and the first two modes are what they say: eager, then a traced graph
    def which(x):
        return x * 0.0 + (0.0 if tf.executing_eagerly() else 1.0)

    out = T.run_modes(which, x)
    assert out["eager"][0] == 0.0 and out["function"][0] == 1.0 and out["jit_compile"][0] == 1.0
