"""Tests for safeops.special and safeops.logexp: bits of error vs mpmath, gradients,
edges, modes, dtypes, bad input, DEBAR danger zones."""

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops as so
from safeops import testing
from benchmarks import bits_of_error as boe

OPS = list(boe.SPECS)
# The naive formula of every op fails the issue's bound except sqrt's: the naive
# sqrt is tf.sqrt, IEEE-correctly rounded (0 bits), and so.sqrt keeps that
# forward pass (it changes only the gradient at 0). safe_log and safe_exp are
# scored against their floored / saturated definitions over domains that reach
# 0 and subnormals / the overflow point, where tf.math.log and tf.exp give
# -inf / inf (32 or 64 bits).
NAIVE_ACCURATE = {"sqrt"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPS)
def test_matches_reference(name, dtype):
    # Issue bound: mean <= 0.5 bits and max <= 2 bits (Herbie's metric) against
    # mpmath at 60 digits on 10 000 sample_floats inputs (all 24 cases take
    # ~35 s on one core).
    r = boe.measure(name, dtype, n=10000, seed=1)
    mean, mx = r["safeops"]
    assert mean <= 0.5 and mx <= 2.0, (name, dtype, r)
    if name not in NAIVE_ACCURATE:  # the naive formula fails the same check
        nmean, nmax = r["naive"]
        assert nmean > 0.5 or nmax > 2.0, (name, dtype, r)
    # Left out of the bits (boe.measure): subnormal inputs (not for safe_log,
    # whose floor is meant for them) because TF's CPU kernels read them as 0,
    # and inputs whose exact result is subnormal because TF flushes those
    # results to 0. Those are few: < 2% of the draws, except float32 log_cosh,
    # whose x**2 / 2 is subnormal for 5e-23 < |x| < 1.5e-19 (4.6% of bit-uniform
    # draws); and the flushed results are within one smallest normal number of
    # the exact value.
    assert r["subnormal_inputs"] <= 200 and r["subnormal_results"] <= 500, r
    assert r["flush_error"] <= 1.0, r
    if name == "safe_log":
        assert r["subnormal_inputs"] == 0


F32MAX = float(np.finfo(np.float32).max)
TINY32 = float(np.finfo(np.float32).tiny)  # 2**-126, exactly

# mpmath partial derivatives, with the domain (per dtype) they are sampled on;
# the derivative there must be finite in the dtype.
DERIV = {
    "softplus": ([lambda x: 1 / (1 + mpmath.exp(-x))], [(-80.0, 80.0)], [(-700.0, 700.0)]),
    "log_sigmoid": ([lambda x: 1 / (1 + mpmath.exp(x))], [(-80.0, 80.0)], [(-700.0, 700.0)]),
    "log1mexp": ([lambda x: mpmath.sign(x) / mpmath.expm1(abs(x))], [(1e-3, 80.0)],
                 [(1e-3, 700.0)]),
    "softplus_inverse": ([lambda x: -1 / mpmath.expm1(-x)], [(1e-3, 80.0)], [(1e-3, 700.0)]),
    "log_cosh": ([mpmath.tanh], [(-80.0, 80.0)], [(-700.0, 700.0)]),
    "log1m": ([lambda x: -1 / (1 - x)], [(-1e6, 0.999)], [(-1e100, 0.999)]),
    "safe_log": ([lambda x: 1 / x], [(1e-30, 1e30)], [(1e-300, 1e300)]),
    "safe_exp": ([mpmath.exp], [(-80.0, 80.0)], [(-700.0, 700.0)]),
    "sqrt": ([lambda x: 1 / (2 * mpmath.sqrt(x))], [(1e-30, 1e30)], [(1e-300, 1e300)]),
    "hypot": ([lambda x, y: x / mpmath.sqrt(x * x + y * y),
               lambda x, y: y / mpmath.sqrt(x * x + y * y)],
              [(-1e30, 1e30)] * 2, [(-1e300, 1e300)] * 2),
    "logaddexp": ([lambda x, y: 1 / (1 + mpmath.exp(y - x)),
                   lambda x, y: 1 / (1 + mpmath.exp(x - y))],
                  [(-100.0, 100.0)] * 2, [(-800.0, 800.0)] * 2),
    "logsubexp": ([lambda x, y: -1 / mpmath.expm1(y - x), lambda x, y: -1 / mpmath.expm1(x - y)],
                  [(-100.0, 100.0)] * 2, [(-800.0, 800.0)] * 2),
}


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(DERIV))
def test_gradient_matches_mpmath(name, dtype, mode):
    derivs, dom32, dom64 = DERIV[name]
    dom = dom32 if dtype == "float32" else dom64
    # 300 draws uniform over bit patterns (mostly small magnitudes) and 300
    # uniform over values (e.g. |x - y| ~ 100, where float64 x - y rounds and
    # exp(x - y) amplifies that rounding to ~50 ulp unless corrected)
    rng = np.random.default_rng(5)
    xs = [np.concatenate([testing.sample_floats(dtype, 300, lo, hi, seed=3 + k),
                          rng.uniform(max(lo, -1e4), min(hi, 1e4), 300).astype(dtype)])
          for k, (lo, hi) in enumerate(dom)]
    if name == "logsubexp":  # x > y (x == y is the pole, tested in test_gradient_edges)
        xs = [np.maximum(*xs), np.minimum(*xs)]
    tiny = np.finfo(dtype).tiny
    keep = np.logical_and.reduce([np.abs(a) >= tiny for a in xs])  # CPU flushes subnormals
    if name == "logsubexp":
        keep &= xs[0] > xs[1]
    xs = [a[keep] for a in xs]
    ts = [tf.constant(a) for a in xs]

    def value_grads(*ts):
        with tf.GradientTape() as t:
            for v in ts:
                t.watch(v)
            y = getattr(so, name)(*ts)
        return t.gradient(y, ts)
    # inside a tf.function several ops run XLA-compiled bodies: the same bound
    grads = (value_grads if mode == "eager" else tf.function(value_grads))(*ts)
    for g, d in zip(grads, derivs):
        ref = testing.reference(d, *xs, dtype=dtype)
        r64 = np.abs(ref.astype(np.float64))
        # where the derivative is finite; a subnormal derivative is flushed to 0
        # by TF's CPU kernels and is compared in absolute terms instead
        ok = np.isfinite(r64) & ((r64 == 0) | (r64 >= tiny))
        # issue: within 4 ulp of the mpmath derivative
        dist = testing.ulp_distance(g.numpy()[ok], ref[ok], dtype)
        assert np.max(dist) <= 4, (name, dtype, xs[0][ok][np.argmax(dist)], np.max(dist))
        assert np.all(np.abs(g.numpy()[~ok] - ref[~ok]) <= tiny)


def test_gradient_matches_finite_differences_float64():
    x = np.array([-3.0, -0.5, 0.3, 0.7, 1.5, 4.0])
    for name in ["softplus", "log_sigmoid", "log_cosh", "log1mexp", "safe_exp"]:
        assert testing.check_gradients(getattr(so, name), x) < 1e-6, name
    xp = np.array([0.3, 0.7, 1.5, 4.0])
    for name in ["softplus_inverse", "sqrt", "safe_log"]:
        assert testing.check_gradients(getattr(so, name), xp) < 1e-6, name
    assert testing.check_gradients(so.log1m, np.array([-2.0, 0.1, 0.5])) < 1e-6
    y = np.array([1.0, -2.0, 0.2, 0.1, 0.4, 3.0])
    for fn in [so.logaddexp, so.hypot]:
        assert testing.check_gradients(fn, x, y) < 1e-6
    assert testing.check_gradients(so.logsubexp, x + 1.0, x - 0.5) < 1e-6


def _grad(fn, *xs):
    xs = [tf.constant(v) for v in xs]
    with tf.GradientTape() as t:
        for v in xs:
            t.watch(v)
        y = fn(*xs)
    return [g.numpy() for g in t.gradient(y, xs)]


def test_gradient_edges():
    assert _grad(so.sqrt, 0.0)[0] == 0.0  # TF: inf
    assert np.isinf(_grad(tf.sqrt, 0.0)[0])
    gx, gy = _grad(so.logaddexp, np.float32([-5.0, 0.0, 7.0, 1e30]),
                   np.float32([-5.0, 0.0, 7.0, 1e30]))
    assert np.all(gx == 0.5) and np.all(gy == 0.5)
    assert _grad(so.hypot, 0.0, 0.0) == [0.0, 0.0]
    assert _grad(so.log1mexp, 0.0)[0] == 0.0
    big = np.finfo(np.float32).max
    assert _grad(so.softplus_inverse, 0.0)[0] == big
    assert _grad(so.log1m, 1.0)[0] == -big
    gx, gy = _grad(so.logsubexp, 2.0, 2.0)
    assert gx == big and gy == -big
    assert _grad(so.safe_exp, 100.0)[0] == 0.0  # saturated
    assert _grad(so.safe_log, 0.0)[0] == 0.0  # below the floor
    assert _grad(so.softplus, -np.inf)[0] == 0.0 and _grad(so.softplus, np.inf)[0] == 1.0
    assert _grad(so.log_cosh, 0.0)[0] == 0.0


def _pole(name, args, dtype):
    """Where the op's exact value is infinite (its documented edges), inputs flushed."""
    tiny = np.finfo(dtype).tiny
    a = [np.where(np.abs(v) < tiny, 0.0, v.astype(np.float64)) for v in args]
    if name in ("log1mexp", "softplus_inverse"):
        return a[0] == 0
    if name == "log1m":
        return a[0] == 1
    if name == "logsubexp":
        return a[0] == a[1]
    if name == "hypot":  # true value above the largest finite number
        big = float(np.finfo(dtype).max)
        return np.hypot(a[0] / 2, a[1] / 2) > big / 2
    return np.zeros(a[0].shape, bool)


def _edges(lo, hi, dtype):
    f = np.finfo(dtype)
    e = np.array([0.0, -0.0, f.tiny, -f.tiny, f.max, -f.max, 1.0, -1.0, f.eps, -f.eps,
                  88.72, 709.78, -88.72, -709.78], dtype)
    return e[(e >= lo) & (e <= hi)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPS)
@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_no_nan_gradients(name, dtype, seed):
    # Property: for every finite input in the op's domain (safe_log: the whole
    # line), drawn by sample_floats (uniform over bit patterns, so tiny, huge and
    # subnormal values all appear) plus the extreme floats, the forward value is
    # finite except at the documented poles (value -inf, or hypot above the
    # largest float) and the gradient is finite everywhere, poles included.
    arity, domains = boe.SPECS[name][0], boe.SPECS[name][1][dtype]
    if name == "safe_log":
        domains = [(-float(np.finfo(dtype).max), float(np.finfo(dtype).max))]
    args = [np.concatenate([testing.sample_floats(dtype, 200, lo, hi, seed=seed + k),
                            np.resize(_edges(lo, hi, dtype), 14)])
            for k, (lo, hi) in enumerate(domains)][:arity]
    if name == "logsubexp":
        args = [np.maximum(*args), np.minimum(*args)]
    ts = [tf.constant(a) for a in args]
    with tf.GradientTape() as t:
        for v in ts:
            t.watch(v)
        y = getattr(so, name)(*ts)
    grads = t.gradient(y, ts)
    pole = _pole(name, args, dtype)
    assert np.all(np.isfinite(y.numpy()[~pole])), (name, [a[~pole][~np.isfinite(
        y.numpy()[~pole])] for a in args])
    for g, a in zip(grads, args):
        bad = ~np.isfinite(g.numpy())
        assert not bad.any(), (name, [v[bad] for v in args])


def test_execution_modes():
    # XLA has its own exp/log1p kernels, so modes are compared with the reference:
    # every mode must meet the issue's bound (<= 2 bits of error) on its own.
    x = testing.sample_floats("float32", 64, -100, 100, seed=2)
    y = testing.sample_floats("float32", 64, -100, 100, seed=4)
    for name in OPS:
        spec = boe.SPECS[name]
        fn = getattr(so, name)
        args = [np.maximum(x, y), np.minimum(x, y)] if name == "logsubexp" else [x, y]
        args = args[:spec[0]]
        if name in ("sqrt", "safe_log", "softplus_inverse"):
            args = [np.abs(a) + np.float32(1e-3) for a in args]
        if name == "log1m":
            args = [np.minimum(a, np.float32(1.0)) for a in args]
        if name == "safe_exp":
            args = [np.minimum(a, np.float32(88.0)) for a in args]
        ref = testing.reference(spec[2], *args, dtype="float32")
        keep = boe._normal(ref, "float32")  # TF's CPU kernels flush subnormals (FTZ/DAZ)
        keep &= np.logical_and.reduce([boe._normal(a, "float32") for a in args])
        r = testing.run_modes(fn, *[tf.constant(a) for a in args])
        for mode, out in r.items():
            assert np.max(testing.bits_of_error(out[keep], ref[keep], "float32")) <= 2, (name, mode)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_dtypes(dtype):
    x = tf.constant([0.5, 1.0, 2.0], dtype)
    for name in OPS:
        fn = getattr(so, name)
        out = fn(x, x - 0.25) if boe.SPECS[name][0] == 2 else fn(x)
        assert out.dtype == dtype and out.shape == x.shape, name


def test_bad_input_raises():
    for name in OPS:
        fn = getattr(so, name)
        with pytest.raises(TypeError, match=name):
            fn(tf.constant([1, 2]), tf.constant([1, 2])) if boe.SPECS[name][0] == 2 else \
                fn(tf.constant([1, 2]))
    with pytest.raises(TypeError, match="logaddexp"):
        so.logaddexp(tf.constant(1.0), tf.constant(1.0, tf.float64))
    with pytest.raises(ValueError, match="eps"):
        so.safe_log(1.0, eps=0.0)
    assert np.isnan(so.softplus(float("nan")).numpy())
    assert np.isnan(so.logaddexp(float("nan"), 1.0).numpy())


def test_issue_examples():
    assert so.log1mexp(1e-8).numpy() == pytest.approx(-18.420680743952367, rel=1e-7)
    assert np.isneginf(tf.math.log(1 - tf.exp(-tf.constant(1e-8))).numpy())
    assert np.isnan(tf.math.log(tf.exp(1000.0) - tf.exp(999.0)).numpy())
    assert so.logsubexp(1000.0, 999.0).numpy() == pytest.approx(1000 + math.log1p(-math.exp(-1)))


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_safe_log_float64_floor(mode):
    # float64 floor: the smallest normal 2.2e-308 (and a user eps of 1e-300)
    # must reach the kernel as float64 (a float32 round trip made it 0: -inf
    # value, inf gradient).
    tiny64 = float(np.finfo(np.float64).tiny)
    x = tf.constant([0.0, -1.0, 1e-310, tiny64, 1e-300, 2.0], tf.float64)

    def f(x):
        with tf.GradientTape(persistent=True) as t:
            t.watch(x)
            y = so.safe_log(x), so.safe_log(x, eps=1e-300)
        return y, t.gradient(y[0], x), t.gradient(y[1], x)
    if mode != "eager":
        f = tf.function(f, jit_compile=mode == "jit")
    (y, y300), g, g300 = [[v.numpy() for v in r] if isinstance(r, tuple) else r.numpy()
                          for r in f(x)]
    ref = np.log(np.maximum(x.numpy(), tiny64))  # exact x; numpy's log <= 1 ulp
    assert np.max(testing.ulp_distance(y, ref, "float64")) <= 1
    assert y[0] == y[1] == y[2] == np.float64(math.log(tiny64))  # -708.3964...
    ref300 = np.log(np.maximum(x.numpy(), 1e-300))
    assert np.max(testing.ulp_distance(y300, ref300, "float64")) <= 1
    # gradient: 0 below the floor, 1/x at and above it (1/tiny64 = 4.5e307 is finite)
    np.testing.assert_array_equal(g[:3], 0.0)
    np.testing.assert_array_equal(g[3:], 1.0 / x.numpy()[3:])
    np.testing.assert_array_equal(g300[:4], 0.0)
    np.testing.assert_array_equal(g300[4:], 1.0 / x.numpy()[4:])


def test_safe_log_subnormal_eps_raised():
    # a subnormal floor would be flushed to 0 by the CPU kernels: raised to tiny
    for dt, e in [(tf.float32, 1e-40), (tf.float64, 1e-310)]:
        tiny = float(np.finfo(dt.as_numpy_dtype).tiny)
        out = so.safe_log(tf.constant([0.0], dt), eps=e).numpy()
        assert out[0] == np.log(np.array(tiny, dt.as_numpy_dtype))


# DEBAR's unsafe ops at their float32 danger zone (table in docs/unsafe_ops.md):
# each row's TF op fails there, and the safeops alternative is finite and
# correct there (against float64 / mpmath, within the alternative's bound).
def _ulp32(actual, ref):
    return np.max(testing.ulp_distance(np.asarray(actual), ref, "float32"))


def _mp32(fn, x):
    return testing.reference(fn, np.asarray(x, np.float32), dtype="float32")


def test_debar_log():
    x = np.float32([1e-37, 1e-38, 1e-40, 1e-45, 0.0, -1.0])
    tfl = tf.math.log(x).numpy()
    assert not np.any(np.isfinite(tfl[4:]))                       # -inf / NaN
    assert abs(tfl[2] - math.log(1e-40)) > 10                     # subnormal: -104, not -92
    assert np.all(np.isinf(_grad(tf.math.log, x)[0][2:5]))        # 1/x overflows
    # safe_log = log(max(x, tiny)), <= 1 ulp (docstring bound)
    assert _ulp32(so.safe_log(x), _mp32(lambda v: mpmath.log(max(v, TINY32)), x)) <= 1
    g = _grad(so.safe_log, x)[0]
    assert np.all(np.isfinite(g)) and g[0] == np.float32(1 / np.float32(1e-37))


def test_debar_exp():
    big = np.finfo(np.float32).max
    x = np.float32([88.72, 88.73, 88.8, 100.0, 1e30])
    assert np.all(np.isinf(tf.exp(x[1:]).numpy()))
    assert np.all(np.isinf(_grad(tf.exp, x[1:])[0]))
    y = so.safe_exp(x).numpy()
    # exp(88.72) = 3.38e38 is finite: 1 ulp; beyond the overflow point exactly max
    assert _ulp32(y[:1], _mp32(mpmath.exp, x[:1])) <= 1 and np.all(y[1:] == big)
    g = _grad(so.safe_exp, x)[0]
    assert _ulp32(g[:1], _mp32(mpmath.exp, x[:1])) <= 1 and np.all(g[1:] == 0.0)


def test_debar_realdiv_and_reciprocal():
    big = np.finfo(np.float32).max
    y = np.float32([0.0, 1e-39, -1e-39, 1e-38, 2.9e-39])
    one = np.ones_like(y)
    assert not np.any(np.isfinite(tf.math.divide(one, y).numpy()))        # RealDiv
    assert not np.any(np.isfinite(tf.math.reciprocal(y).numpy()))         # Reciprocal
    assert not np.isfinite(tf.math.divide(np.float32(1e30), np.float32(1e-30)).numpy())
    for out in [so.safe_divide(one, y).numpy(), so.safe_reciprocal(y).numpy()]:
        assert np.all(np.isfinite(out))
        # |y| < tiny is floored to sign(y) * tiny: 1 / tiny = 8.5e37, correctly rounded
        ref = _mp32(lambda v: 1 / (mpmath.sign(v) or 1) / max(abs(v), TINY32), y)
        assert _ulp32(out, ref) <= 0.5
    assert so.safe_divide(np.float32(1e30), np.float32(1e-30)).numpy() == big  # saturates
    assert np.all(np.isfinite(_grad(so.safe_divide, one, y)[1]))


def test_debar_sqrt_and_rsqrt():
    x = np.float32([0.0, 1e-30, 4.0])
    assert np.isinf(_grad(tf.sqrt, x)[0][0])                              # Sqrt
    g = _grad(so.sqrt, x)[0]
    assert g[0] == 0.0 and _ulp32(g[1:], _mp32(lambda v: 1 / (2 * mpmath.sqrt(v)), x[1:])) <= 1
    assert so.sqrt(x).numpy()[0] == 0.0
    assert np.isinf(tf.math.rsqrt(x).numpy()[0])                          # Rsqrt
    assert np.isinf(_grad(tf.math.rsqrt, x)[0][0])

    def rsqrt(v):
        return so.safe_reciprocal(so.sqrt(v))
    out = rsqrt(x).numpy()
    assert np.all(np.isfinite(out)) and out[0] == np.float32(1 / np.finfo(np.float32).tiny)
    # sqrt (0.5 ulp) then reciprocal (0.5 ulp): <= 2 ulp of 1/sqrt(x)
    assert _ulp32(out[1:], _mp32(lambda v: 1 / mpmath.sqrt(v), x[1:])) <= 2
    # gradient -x**-1.5 / 2: 0 at the floor, finite where the true value is
    # (at 1e-30 it is -5e44, beyond float32)
    x = np.float32([0.0, 1e-20, 4.0])
    g = _grad(rsqrt, x)[0]
    assert g[0] == 0.0 and _ulp32(g[1:], _mp32(lambda v: -0.5 * v ** -1.5, x[1:])) <= 4


def test_debar_expm1():
    big = np.finfo(np.float32).max
    x = np.float32([88.73, 89.0, 100.0])
    assert np.all(np.isinf(tf.math.expm1(x).numpy()))                    # Expm1
    assert np.all(so.safe_exp(x).numpy() - 1.0 == big)
    # in log space: log(expm1(x)) = softplus_inverse(x), <= 1 ulp, finite
    ref = _mp32(lambda v: mpmath.log(mpmath.expm1(v)), x)
    assert _ulp32(so.softplus_inverse(x), ref) <= 1
    assert np.all(np.isfinite(_grad(so.softplus_inverse, x)[0]))


def test_debar_log1p():
    big = np.finfo(np.float32).max
    x = np.float32([-1.0, -1.0 + 2.0**-24, -0.5])
    assert np.isneginf(tf.math.log1p(x).numpy()[0])                       # Log1p
    assert np.isnan(tf.math.log1p(np.float32(-2.0)).numpy())
    assert np.isinf(_grad(tf.math.log1p, x)[0][0])
    # so.log1m(-x) = log1p(x): the value at -1 is the true -inf, but the gradient
    # is finite (saturated at +max) and the values near -1 are <= 1 ulp (~1 ulp
    # bound of TF's log1p, measured 1.6 bits)
    y = so.log1m(-x).numpy()
    assert np.isneginf(y[0])
    assert _ulp32(y[1:], _mp32(mpmath.log1p, x[1:])) <= 2
    g = _grad(lambda v: so.log1m(-v), x)[0]
    assert g[0] == big and np.all(np.isfinite(g))
    # a finite value at and below -1: the floored log of 1 + x
    assert np.all(np.isfinite(so.safe_log(1.0 + np.float32([-1.0, -2.0])).numpy()))


def test_issue_examples_log1m():
    assert so.log1m(1e-10).numpy() == pytest.approx(-1e-10)
    assert tf.math.log(1.0 - 1e-10).numpy() == 0.0


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_hypot_infinity_beats_nan(mode, dtype):
    # IEEE 754 hypot: an infinite argument gives +inf even when the other is NaN
    inf, nan = float("inf"), float("nan")
    x = tf.constant([inf, -inf, nan, nan, 3.0, nan], dtype)
    y = tf.constant([nan, nan, inf, -inf, 4.0, 1.0], dtype)
    f = so.hypot if mode == "eager" else tf.function(so.hypot, jit_compile=mode == "jit")
    out = f(x, y).numpy().astype(np.float64)
    np.testing.assert_array_equal(out[:5], [inf, inf, inf, inf, 5.0])
    assert np.isnan(out[5])


def _value_and_grads(fn, xs):
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = fn(*xs)
    return [y] + tape.gradient(y, xs)


@pytest.mark.parametrize("name", ["hypot", "safe_log"])
def test_graph_paths_give_eager_bits(name):
    # inside a graph the backward (and hypot's forward) run XLA-compiled: the same
    # quotients, products and float64 square root as eagerly, so the same bits
    rng = np.random.default_rng(5)
    n = 4096
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    x[:4] = [0.0, -0.0, 1e-39, -2.0]
    if name == "hypot":
        y = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
        y[:2] = 0.0
        fn, xs = so.hypot, [tf.constant(x), tf.constant(y)]
    else:
        signs = np.where(rng.uniform(size=n) < 0.1, -1.0, 1.0).astype(np.float32)
        fn, xs = so.safe_log, [tf.constant(np.abs(x) * signs)]
    eager = [v.numpy() for v in _value_and_grads(fn, xs)]
    for jit in (False, True):
        graph = tf.function(lambda *a: _value_and_grads(fn, list(a)), jit_compile=jit)(*xs)
        # under jit_compile safe_log's forward is XLA's log (its own <= 1 ulp tests)
        first = 1 if jit and name == "safe_log" else 0
        for e, g in list(zip(eager, graph))[first:]:
            assert g.dtype == tf.float32
            np.testing.assert_array_equal(g.numpy(), e)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["log_cosh", "hypot", "safe_log"])
def test_graph_path_matches_reference(name, dtype, monkeypatch):
    # inside a tf.function these ops run XLA-compiled bodies (below float64, or
    # always): the eager path's bound against mpmath (mean <= 0.5, max <= 2 bits);
    # their gradients: test_gradient_matches_mpmath in "function" mode
    spec = list(boe.SPECS[name])
    spec[5] = tf.function(spec[5])
    monkeypatch.setitem(boe.SPECS, name, tuple(spec))
    r = boe.measure(name, dtype, n=4000, seed=2)
    mean, mx = r["safeops"]
    assert mean <= 0.5 and mx <= 2.0, (name, dtype, r)
    assert r["flush_error"] <= 1.0, r
