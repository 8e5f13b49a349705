"""Tests of safeops.where: safe_where (gradient-safe selection) and smooth_where."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops as so
from safeops import testing

FLOATS = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def _np(dtype):
    return tf.as_dtype(dtype).as_numpy_dtype




def _grads(fn, *xs):
    xs = [tf.convert_to_tensor(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = fn(*xs)
        loss = tf.reduce_sum(out)
    return out.numpy(), [g.numpy() for g in tape.gradient(loss, xs)]


def _safe_log(x):
    return so.safe_where(x > 0, tf.math.log, tf.zeros_like, x)


def _naive_log(x):
    return tf.where(x > 0, tf.math.log(x), tf.zeros_like(x))


# -- safe_where ------------------------------------------------------------------------


def test_log_example_edges():
    x = tf.constant([0.0, -0.0, -2.0, 4.0, 1e-45])
    out, (g,) = _grads(_safe_log, x)
    np.testing.assert_array_equal(out[:3], 0.0)
    assert out[3] == np.log(np.float32(4.0)).astype(np.float32)
    np.testing.assert_array_equal(g[:4], [0.0, 0.0, 0.0, 0.25])
    assert np.isfinite(g[4])  # subnormal x: flushed to 0 on CPU -> selects the zero branch
    _, (tg,) = _grads(_naive_log, x)
    assert np.isnan(tg[0])  # TF issues #2540, #20091, #38349


@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_reference(dtype):
    # The selected branch is evaluated at the unmodified input: the value is
    # tf.math.log(x) bit for bit, and within its documented accuracy of mpmath.
    x = testing.sample_floats(dtype, 200, -10.0, 1e4, seed=1)
    out = _safe_log(tf.constant(x)).numpy()
    want = _naive_log(tf.constant(x)).numpy()
    np.testing.assert_array_equal(out, want)
    assert out.dtype == x.dtype


def test_unselected_branch_cannot_inject_nan():
    # The false branch is inf with an inf derivative at safe_value = 1 and NaN
    # for x < 1; the selected (true) branch is finite. Value and gradient stay finite.
    x = tf.constant([0.5, 1.0, 2.0, 4.0], tf.float64)
    bad = lambda v: 1.0 / (v - 1.0) + tf.sqrt(v - 1.0)  # noqa: E731
    out, (g,) = _grads(lambda v: so.safe_where(v >= 0, tf.square, bad, v), x)
    np.testing.assert_array_equal(out, [0.25, 1.0, 4.0, 16.0])
    np.testing.assert_array_equal(g, [1.0, 2.0, 4.0, 8.0])
    _, (tg,) = _grads(lambda v: tf.where(v >= 0, tf.square(v), bad(v)), x)
    assert np.isnan(tg).any()


def test_gradient_matches_finite_differences():
    x = np.array([-3.0, -1.5, -0.7, 0.6, 1.2, 2.5, 7.0])  # away from the switch at 0
    fn = lambda v: so.safe_where(v > 0, tf.math.log, lambda u: u**3, v)  # noqa: E731
    assert testing.check_gradients(fn, x) <= 1e-6
    y = np.array([0.5, -2.0, 3.0, -0.75, 1.5, -1.25, 2.0])
    fn2 = lambda a, b: so.safe_where(b > 0, lambda p, q: p / q, lambda p, q: p * q, a, b)  # noqa: E731
    assert testing.check_gradients(fn2, x, y) <= 1e-6


def test_two_arguments_and_broadcasting():
    x = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], tf.float64)
    y = tf.constant([0.0, 2.0, -1.0], tf.float64)
    out, (gx, gy) = _grads(
        lambda a, b: so.safe_where(b != 0, lambda p, q: p / q, lambda p, q: p * 0.0, a, b), x, y)
    np.testing.assert_array_equal(out, [[0.0, 1.0, -3.0], [0.0, 2.5, -6.0]])
    assert gx.shape == (2, 3) and gy.shape == (3,)
    np.testing.assert_array_equal(gx, [[0.0, 0.5, -1.0], [0.0, 0.5, -1.0]])
    np.testing.assert_array_equal(gy, [0.0, -(2.0 + 5.0) / 4.0, -(3.0 + 6.0)])


def test_variables_in_branches():
    w = tf.Variable(2.0, dtype=tf.float64)
    x = tf.constant([0.0, 1.0, np.e], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = so.safe_where(x > 0, lambda v: w * tf.math.log(v), lambda v: w * v, x)
        loss = tf.reduce_sum(out)
    gx, gw = tape.gradient(loss, [x, w])
    np.testing.assert_allclose(gx.numpy(), [2.0, 2.0, 2.0 / np.e], rtol=1e-15)
    # d/dw: log(1) + log(e) from the true branch, 0 from the false branch (x = 0)
    np.testing.assert_allclose(gw.numpy(), 1.0, rtol=1e-15)

    def fwd_bwd(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss = tf.reduce_sum(so.safe_where(v > 0, lambda u: w * tf.math.log(u),
                                               lambda u: w * u, v))
        return tape.gradient(loss, [v, w])

    for mode, (gx_m, gw_m) in testing.run_modes(fwd_bwd, x).items():
        np.testing.assert_allclose(gx_m, gx.numpy(), rtol=1e-15, err_msg=mode)
        np.testing.assert_allclose(gw_m, 1.0, rtol=1e-15, err_msg=mode)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(FLOATS))
def test_no_nan_gradients(data, dtype):
    x = data.draw(testing.extreme_floats(dtype), label="x")
    # Both branches are NaN or inf where the other is selected (log(x <= 0),
    # log1p(-x) at x >= 1) and finite, with finite derivatives, where selected.
    two_sided = lambda v: so.safe_where(v >= 1, tf.math.log, lambda u: tf.math.log1p(-u), v)  # noqa: E731
    testing.assert_finite_gradients(two_sided, x)
    # The log example: never NaN; the gradient 1/x is inf only where the
    # selected branch's own derivative exceeds the dtype's max (float16 subnormal
    # x, which float16 arithmetic does not flush): not the hazard guarded.
    out, (g,) = _grads(_safe_log, x)
    out, g = out.astype(np.float64), g.astype(np.float64)
    assert np.all(np.isfinite(out)) and not np.isnan(g).any()
    x64 = x.astype(np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        representable = np.abs(1.0 / x64) <= float(tf.as_dtype(dtype).max)
    assert np.all(np.isfinite(g[representable]))
    assert np.all(g[~np.isfinite(g)] > 0) and np.all(x64[~np.isfinite(g)] > 0)
    # the naive tf.where fails on the same inputs (x contains 0 and +-max)
    _, (naive_g,) = _grads(_naive_log, x)
    assert np.isnan(naive_g.astype(np.float64)).any()
    with pytest.raises(AssertionError):
        testing.assert_finite_gradients(
            lambda v: tf.where(v >= 1, tf.math.log(v), tf.math.log1p(-v)), x)


def test_nan_propagates():
    # NaN at a selected position propagates through branches that propagate
    # it, as with tf.where; only the unselected branch is guarded.
    nan = float("nan")
    x = tf.constant([nan, -2.0, 3.0, nan, 0.0])
    cond = tf.constant([True, False, True, False, True])

    def both(c, v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = so.safe_where(c, tf.square, tf.math.sin, v)
        return out, tape.gradient(out, v)

    for mode, (out, g) in testing.run_modes(both, cond, x).items():
        np.testing.assert_array_equal(np.isnan(out), [True, False, False, True, False], err_msg=mode)
        np.testing.assert_array_equal(np.isnan(g), [True, False, False, True, False], err_msg=mode)
        want = tf.where(cond, tf.square(x), tf.math.sin(x)).numpy()
        np.testing.assert_array_equal(out, want, err_msg=mode)


def test_execution_modes():
    x = tf.constant([0.0, -1.0, 0.5, 2.0, 1e30])

    def fwd_bwd(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = _safe_log(v)
        return out, tape.gradient(out, v)

    modes = testing.run_modes(fwd_bwd, x)
    for name, (out, g) in modes.items():
        np.testing.assert_array_equal(out, modes["eager"][0], err_msg=name)
        np.testing.assert_array_equal(g, [0.0, 0.0, 2.0, 0.5, np.float32(1.0) / np.float32(1e30)],
                                      err_msg=name)


def test_safe_where_bad_input_raises():
    x = tf.constant([1.0, 2.0])
    with pytest.raises(TypeError, match="safeops.safe_where: argument 'condition'"):
        so.safe_where(tf.constant([1.0, 0.0]), tf.math.log, tf.zeros_like, x)
    with pytest.raises(TypeError, match="safeops.safe_where: arguments 'true_fn'"):
        so.safe_where(x > 0, 3.0, tf.zeros_like, x)
    with pytest.raises(TypeError, match="safeops.safe_where"):
        so.safe_where(x > 0, tf.math.log, tf.zeros_like)

    # Incompatible shapes: exactly the error type tf.where raises for the same
    # shapes in the same mode (eagerly InvalidArgumentError; while tracing a
    # tf.function, static shape inference raises ValueError).
    cond = tf.constant([True, False, True])

    def error_type(fn, mode):
        run = fn if mode == "eager" else tf.function(fn, jit_compile=(mode == "jit_compile"))
        with pytest.raises(Exception) as info:
            run(cond, x)
        return info.type

    for mode in ("eager", "function", "jit_compile"):
        want = error_type(lambda c, v: tf.where(c, tf.math.log(v), tf.zeros_like(v)), mode)
        got = error_type(lambda c, v: so.safe_where(c, tf.math.log, tf.zeros_like, v), mode)
        assert got is want, mode
    assert error_type(lambda c, v: tf.where(c, v, v), "eager") is tf.errors.InvalidArgumentError
    assert error_type(lambda c, v: tf.where(c, v, v), "function") is ValueError


# -- smooth_where ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_smooth_where_at_threshold_is_the_average(dtype):
    # Normal numbers only: TF on CPU flushes subnormal inputs to zero.
    rng = np.random.default_rng(2)
    a = testing.sample_floats(dtype, 100, 1e-3, 1e3, seed=2) * rng.choice([-1, 1], 100)
    b = testing.sample_floats(dtype, 100, 1e-3, 1e3, seed=3) * rng.choice([-1, 1], 100)
    a, b = a.astype(_np(dtype)), b.astype(_np(dtype))
    thr = testing.sample_floats(dtype, 100, -10.0, 10.0, seed=4)
    out = so.smooth_where(tf.constant(thr), tf.constant(thr), tf.constant(a), tf.constant(b)).numpy()
    ref = testing.reference(lambda p, q: (p + q) / 2, a, b, dtype=dtype)
    assert testing.ulp_distance(out, ref, dtype).max() == 0  # exact: 0.5a + 0.5b, one rounding


def _smooth_where_ref(x, t, a, b, temp):
    w = 1 / (1 + mpmath.exp(-(x - t) / temp))
    return w * a + (1 - w) * b


@pytest.mark.parametrize("dtype,zmax,ulps", [
    (tf.float16, 30.0, 1), (tf.bfloat16, 30.0, 1), (tf.float32, 30.0, 1),
    # float64 is computed natively, over its whole range (threshold 0 and T = 1:
    # z = x exactly). A relative error |z| u of the small weight e^-|z| moves the
    # output by at most |z| e^-|z| u <= u / e, so the documented 4 ulp holds for
    # every z (measured here: <= 1 ulp).
    (tf.float64, float(np.finfo(np.float64).max), 4),
])
def test_smooth_where_matches_reference(dtype, zmax, ulps):
    # Same-sign branches (no cancellation): the documented bound is `ulps` ulp.
    x = testing.sample_floats(dtype, 150, -zmax, zmax, seed=5)
    if dtype == tf.float64:  # the whole range, and densely where the weights blend
        x = np.concatenate([x, testing.sample_floats(dtype, 150, -40.0, 40.0, seed=8)])
    a = testing.sample_floats(dtype, x.size, 0.5, 100.0, seed=6)
    b = testing.sample_floats(dtype, x.size, 0.5, 100.0, seed=7)
    out = so.smooth_where(tf.constant(x), 0.0, tf.constant(a), tf.constant(b), temperature=1.0)
    assert out.dtype == dtype
    ref = testing.reference(lambda p, q, r: _smooth_where_ref(p, 0, q, r, 1), x, a, b, dtype="float64")
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() <= ulps


def test_smooth_where_exact_limits_and_extremes():
    big = np.float32(3.4028235e38)
    x = tf.constant([50.0, -50.0, big, -big, 1e30])
    out, (gx, ga, gb) = _grads(lambda v, p, q: so.smooth_where(v, 0.0, p, q, temperature=0.5),
                               x, tf.fill([5], 2.0), tf.fill([5], -3.0))
    np.testing.assert_array_equal(out, [2.0, -3.0, 2.0, -3.0, 2.0])
    np.testing.assert_array_equal(gx, 0.0)
    np.testing.assert_array_equal(ga, [1.0, 0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(gb, [0.0, 1.0, 0.0, 1.0, 0.0])


def test_smooth_where_gradients():
    x = np.array([-2.0, -0.3, 0.0, 0.4, 1.7])
    t = np.array([0.1, 0.1, 0.0, -0.2, 0.5])
    a = np.array([1.0, -2.0, 3.0, 0.5, 4.0])
    b = np.array([-1.0, 2.5, 1.0, 7.0, -3.0])
    fn = lambda *v: so.smooth_where(*v, temperature=0.7)  # noqa: E731
    assert testing.check_gradients(fn, x, t, a, b) <= 1e-6
    # at the threshold: d/dx = (a - b) / (4 T), exactly representable here
    _, (gx,) = _grads(lambda v: so.smooth_where(v, 0.0, 3.0, 1.0, temperature=0.5),
                      tf.constant([0.0], tf.float64))
    assert gx[0] == 1.0
    # w.r.t. the temperature: -z times the gradient w.r.t. x
    temp_fn = lambda v, tt: so.smooth_where(v, 0.1, a, b, temperature=tt)  # noqa: E731
    assert testing.check_gradients(temp_fn, x, np.float64(0.7)) <= 1e-6
    # the hard switch it replaces has no gradient w.r.t. x at all
    xs = tf.constant([0.0, 1.0])
    with tf.GradientTape() as tape:
        tape.watch(xs)
        hard = tf.where(xs > 0, 3.0, 1.0)
    assert tape.gradient(hard, xs) is None


def test_smooth_where_modes_and_bad_input():
    x = tf.constant(np.linspace(-5, 5, 11), tf.float32)
    modes = testing.run_modes(lambda v: so.smooth_where(v, 0.5, 2.0, -1.0, temperature=2.0), x)
    for name, out in modes.items():
        np.testing.assert_array_equal(out, modes["eager"], err_msg=name)
    with pytest.raises(ValueError, match="safeops.smooth_where: argument 'temperature' must be > 0"):
        so.smooth_where(x, 0.0, 1.0, 2.0, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        so.smooth_where(x, 0.0, 1.0, 2.0, temperature=-1.0)
    with pytest.raises(TypeError, match="safeops.smooth_where: argument 'x'"):
        so.smooth_where(tf.constant([1, 2]), 0.0, 1.0, 2.0)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def dynamic(temp):
        return so.smooth_where(x, 0.0, 1.0, 2.0, temperature=temp)

    assert np.isfinite(dynamic(tf.constant(1.0)).numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        dynamic(tf.constant(-1.0))


@pytest.mark.parametrize("mode", ["eager", "function", "jit_compile"])
def test_smooth_where_float32_gradients_round_the_exact_ones(mode):
    # float32 is computed in float64 and rounded once: the value and each gradient
    # within 1 ulp of the float64 ones (themselves within a few float64 ulp of exact
    # for same-sign branches), in every mode (graph and XLA evaluate the exponential
    # as a polynomial).
    rng = np.random.default_rng(9)
    x, t = rng.normal(0, 4, 200), rng.normal(0, 1, 200)
    a, b = rng.uniform(0.1, 10, 200), rng.uniform(0.1, 10, 200)
    x32, t32, a32, b32 = (v.astype(np.float32) for v in (x, t, a, b))

    def grads(*v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = so.smooth_where(*v, temperature=0.75)  # exact in both dtypes
        return [out] + tape.gradient(out, list(v))

    wrap = {"eager": lambda f: f, "function": tf.function,
            "jit_compile": lambda f: tf.function(f, jit_compile=True)}[mode]
    got = wrap(grads)(*[tf.constant(v) for v in (x32, t32, a32, b32)])
    want = grads(*[tf.constant(v.astype(np.float64)) for v in (x32, t32, a32, b32)])
    for g32, g64 in zip(got, want):
        assert testing.ulp_distance(g32.numpy(), g64.numpy(), "float32").max() <= 1


def test_smooth_where_gradient_accurate_in_the_tails():
    # d/dx = w (1 - w) (a - b) / T is tiny but representable far from the threshold;
    # computed as e (a - b) / ((1 + e)**2 T) with e = exp(-|z|) it keeps its relative
    # precision there, where w (1 - w) with w = sigmoid(z) ~ 1 cancels (the autodiff
    # of the sigmoid blend gives errors of ~1e9 ulp).
    rng = np.random.default_rng(11)
    z = rng.uniform(8.0, 60.0, 120) * rng.choice([-1.0, 1.0], 120)
    x = (0.25 + 0.75 * z).astype(np.float32)
    a, b = rng.normal(0, 10, 120).astype(np.float32), rng.normal(0, 10, 120).astype(np.float32)
    _, (gx,) = _grads(lambda v: so.smooth_where(v, 0.25, a, b, temperature=0.75), tf.constant(x))

    def exact(v, p, q):
        w = 1 / (1 + mpmath.exp(-(v - mpmath.mpf(0.25)) / mpmath.mpf(0.75)))
        return w * (1 - w) * (p - q) / mpmath.mpf(0.75)

    ref = testing.reference(exact, x, a, b, dtype="float32")
    assert testing.ulp_distance(gx, ref, "float32").max() <= 1
