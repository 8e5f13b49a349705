"""Tests of safeops.smooth: smooth_step, soft_clip, soft_abs, soft_maximum, soft_minimum."""

import re

import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops as so
from safeops import testing

# Documented bounds: <= 1 ulp where computed one precision up, <= 4 ulp in float64.
BOUND = [(tf.float16, 1), (tf.bfloat16, 1), (tf.float32, 1), (tf.float64, 4)]
FLOATS = [tf.float16, tf.bfloat16, tf.float32, tf.float64]




def _grads(fn, *xs):
    xs = [tf.convert_to_tensor(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = fn(*xs)
        loss = tf.reduce_sum(out)
    return out.numpy(), [g.numpy() for g in tape.gradient(loss, xs)]


def _sp(z):
    return mpmath.log1p(mpmath.exp(z)) if z < 0 else z + mpmath.log1p(mpmath.exp(-z))


# -- smooth_step -----------------------------------------------------------------------


def _step_ref(order):
    def f(x):
        t = min(max((x - mpmath.mpf(-1)) / 3, 0), 1)
        return t * t * (3 - 2 * t) if order == 1 else t**3 * (t * (6 * t - 15) + 10)
    return f


@pytest.mark.parametrize("dtype,ulps", BOUND)
@pytest.mark.parametrize("order", [1, 2])
def test_smooth_step_matches_reference(dtype, ulps, order):
    x = testing.sample_floats(dtype, 150, -3.0, 4.0, seed=order)
    out = so.smooth_step(tf.constant(x), -1.0, 2.0, order=order)
    assert out.dtype == dtype
    ref = testing.reference(_step_ref(order), x, dtype="float64")
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() <= ulps


@pytest.mark.parametrize("order", [1, 2])
def test_smooth_step_edges_and_gradients(order):
    x = tf.constant([-5.0, -1.0, 2.0, 9.0, 0.5], tf.float64)
    out, (g,) = _grads(lambda v: so.smooth_step(v, -1.0, 2.0, order=order), x)
    np.testing.assert_array_equal(out[:4], [0.0, 0.0, 1.0, 1.0])
    assert out[4] == 0.5
    np.testing.assert_array_equal(g[:4], 0.0)  # C1 / C2: zero slope at and outside the edges
    assert g[4] == (6 * 0.25 if order == 1 else 30 * 0.0625) / 3.0
    inner = np.array([-0.9, -0.2, 0.3, 1.1, 1.8])
    fn = lambda v, a, b: so.smooth_step(v, a, b, order=order)  # noqa: E731
    assert testing.check_gradients(fn, inner, np.full(5, -1.0), np.full(5, 2.0)) <= 1e-6


def test_smooth_step_bad_input():
    with pytest.raises(ValueError, match="safeops.smooth_step: need edge0 < edge1"):
        so.smooth_step(0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="'order'"):
        so.smooth_step(0.5, 0.0, 1.0, order=3)
    with pytest.raises(TypeError, match="safeops.smooth_step: argument 'x'"):
        so.smooth_step(tf.constant([1, 2]), 0.0, 1.0)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def dynamic(e1):
        return so.smooth_step(0.5, 0.0, e1)

    assert dynamic(tf.constant(1.0)).numpy() == 0.5
    with pytest.raises(tf.errors.InvalidArgumentError, match="edge0 < edge1"):
        dynamic(tf.constant(-1.0))


# -- soft_clip -------------------------------------------------------------------------


def _clip_ref(lo, hi, s):
    lo, hi, s = mpmath.mpf(lo), mpmath.mpf(hi), mpmath.mpf(s)
    return lambda x: lo + _sp(s * (x - lo)) / s - _sp(s * (x - hi)) / s


@pytest.mark.parametrize("dtype,ulps", BOUND)
def test_soft_clip_matches_reference(dtype, ulps):
    # [lo, hi] = [1, 5]: the result stays >= 1, away from the cancellation at 0.
    x = testing.sample_floats(dtype, 150, -30.0, 40.0, seed=3)
    out = so.soft_clip(tf.constant(x), 1.0, 5.0, sharpness=2.0)
    assert out.dtype == dtype
    ref = testing.reference(_clip_ref(1, 5, 2), x, dtype="float64")
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() <= ulps


def test_soft_clip_bounded_increasing_and_stable():
    x = np.sort(testing.sample_floats(tf.float32, 400, -3e38, 3e38, seed=4))
    out, (g,) = _grads(lambda v: so.soft_clip(v, -1.0, 1.0, sharpness=4.0), x)
    assert np.all(out >= -1.0) and np.all(out <= 1.0) and np.all(np.diff(out) >= 0)
    assert np.all(np.isfinite(g)) and np.all(g >= 0)
    # strictly positive gradient wherever it is representable (|x -+ 1| * s < ~80)
    xm = np.linspace(-20.0, 20.0, 81).astype(np.float32)
    _, (g_m,) = _grads(lambda v: so.soft_clip(v, -1.0, 1.0, sharpness=4.0), xm)
    assert np.all(g_m > 0)
    # strictly increasing and strictly inside (lo, hi) while the distance to the
    # bound, ~exp(-s |x -+ 1|), is above float64 resolution
    x64 = np.linspace(-8.0, 8.0, 161)
    out64 = so.soft_clip(x64, -1.0, 1.0, sharpness=4.0).numpy()
    assert np.all(np.diff(out64) > 0) and np.all(np.abs(out64) < 1)
    assert so.soft_clip(1e30, -1.0, 1.0).numpy() == 1.0
    # the naive softplus form cancels: x - softplus(x - hi) + softplus(lo - x) = 0 at 1e30
    xx = tf.constant(1e30)
    naive = xx - tf.math.softplus(xx - 1.0) + tf.math.softplus(-1.0 - xx)
    assert naive.numpy() == 0.0


def test_soft_clip_gradients():
    # points where every partial derivative is >= 1e-2 (smaller ones are below
    # the float64 central-difference noise floor of check_gradients)
    x = np.array([-2.0, -0.8, 0.1, 0.9, 2.5, 3.0])
    fn = lambda v, lo, hi: so.soft_clip(v, lo, hi, sharpness=1.5)  # noqa: E731
    assert testing.check_gradients(fn, x, np.full(6, -1.0), np.full(6, 2.0)) <= 1e-6


def test_soft_clip_bad_input():
    with pytest.raises(ValueError, match="safeops.soft_clip: need lo <= hi"):
        so.soft_clip(0.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="'sharpness' must be > 0"):
        so.soft_clip(0.0, -1.0, 1.0, sharpness=0.0)
    with pytest.raises(TypeError, match="safeops.soft_clip: argument 'x'"):
        so.soft_clip(tf.constant([1]), -1.0, 1.0)


# -- soft_abs --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,ulps", BOUND)
def test_soft_abs_matches_reference(dtype, ulps):
    x = testing.sample_floats(dtype, 150, -1e4, 1e4, seed=5)
    # keep results above the smallest normal: TF on CPU flushes subnormals to 0
    tiny = 2.0**-14 if dtype == tf.float16 else 2.0**-126
    x = x[np.abs(x.astype(np.float64)) > 2 * np.sqrt(tiny)]
    out = so.soft_abs(tf.constant(x), eps=0.25)
    e = mpmath.mpf(0.25)
    # sqrt(v**2 + e**2) - e written without cancellation (same value), so the
    # 60-digit reference is accurate also for |v| << e
    ref = testing.reference(lambda v: v * v / (mpmath.sqrt(v * v + e * e) + e), x, dtype="float64")
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() <= ulps


def test_soft_abs_edges_and_gradients():
    x = tf.constant([0.0, -0.0, 1e300, -1e300, 3.0], tf.float64)
    out, (g,) = _grads(lambda v: so.soft_abs(v, eps=4.0), x)
    np.testing.assert_array_equal(out, [0.0, 0.0, 1e300 - 4.0, 1e300 - 4.0, 1.0])
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, -1.0, 0.6])
    naive = tf.sqrt(x * x + 16.0) - 4.0
    assert np.isinf(naive.numpy()[2])  # x**2 overflows
    xs = np.array([-2.0, -0.3, 0.2, 1.7, 30.0])
    assert testing.check_gradients(lambda v: so.soft_abs(v, eps=0.5), xs) <= 1e-6
    with pytest.raises(ValueError, match="safeops.soft_abs: argument 'eps' must be > 0"):
        so.soft_abs(1.0, eps=0.0)


# -- soft_maximum / soft_minimum -------------------------------------------------------


@pytest.mark.parametrize("dtype,ulps", BOUND)
def test_soft_max_min_match_reference(dtype, ulps):
    # Positive values for the maximum (no cancellation of max and T log 2) and
    # negative for the minimum; the documented bound applies.
    x = testing.sample_floats(dtype, 120, 1.0, 300.0, seed=6)
    y = testing.sample_floats(dtype, 120, 1.0, 300.0, seed=7)
    t = mpmath.mpf(3)
    out = so.soft_maximum(tf.constant(x), tf.constant(y), temperature=3.0)
    ref = testing.reference(lambda a, b: max(a, b) + t * _sp(-abs(a - b) / t), x, y, dtype="float64")
    assert out.dtype == dtype
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() <= ulps
    out_min = so.soft_minimum(tf.constant(-x), tf.constant(-y), temperature=3.0)
    assert testing.ulp_distance(out_min.numpy(), -ref, dtype).max() <= ulps


def test_soft_maximum_no_overflow_and_edge_gradients():
    big = np.float32(3.4e38)
    x = tf.constant([1000.0, big, -big, 2.0])
    y = tf.constant([0.0, -big, big, 2.0])
    out, (gx, gy) = _grads(so.soft_maximum, x, y)
    np.testing.assert_array_equal(out[:3], [1000.0, big, big])
    assert out[3] == np.float32(2.0 + np.log(2.0))
    np.testing.assert_array_equal(gx, [1.0, 1.0, 0.0, 0.5])
    np.testing.assert_array_equal(gy, [0.0, 0.0, 1.0, 0.5])
    naive = tf.math.log(tf.exp(x[:1]) + tf.exp(y[:1]))
    assert np.isinf(naive.numpy()[0])
    _, (tgx, _) = _grads(tf.maximum, x, y)
    assert tgx[3] == 1.0  # tf.maximum's subgradient at a tie; soft_maximum's is 0.5


def test_soft_max_min_gradients():
    x = np.array([-2.0, 0.5, 1.0, 3.0, -0.1])
    y = np.array([1.0, 0.4, -2.0, 3.5, -0.2])
    assert testing.check_gradients(lambda a, b: so.soft_maximum(a, b, 0.7), x, y) <= 1e-6
    assert testing.check_gradients(lambda a, b: so.soft_minimum(a, b, 0.7), x, y) <= 1e-6
    out, (gx, gy) = _grads(so.soft_minimum, tf.constant([2.0]), tf.constant([2.0]))
    assert gx[0] == 0.5 and gy[0] == 0.5
    with pytest.raises(ValueError, match="safeops.soft_maximum: argument 'temperature'"):
        so.soft_maximum(1.0, 2.0, temperature=0.0)
    with pytest.raises(ValueError, match="safeops.soft_minimum: argument 'temperature'"):
        so.soft_minimum(1.0, 2.0, temperature=-2.0)
    with pytest.raises(TypeError, match="safeops.soft_maximum: argument 'x'"):
        so.soft_maximum(tf.constant([1]), 2.0)


# -- all -------------------------------------------------------------------------------

_OPS = {
    "smooth_step": lambda v: so.smooth_step(v, -1.0, 1.0),
    "smooth_step2": lambda v: so.smooth_step(v, -1.0, 1.0, order=2),
    "soft_clip": lambda v: so.soft_clip(v, -1.0, 1.0, sharpness=2.0),
    "soft_abs": lambda v: so.soft_abs(v, eps=1e-3),
    "soft_maximum": lambda v: so.soft_maximum(v, tf.reverse(v, [0])),
    "soft_minimum": lambda v: so.soft_minimum(v, tf.reverse(v, [0])),
    # branches scaled by 1/4: the exact x-gradient, at most (|a| + |b|) / (4 T),
    # is then representable (the documented condition for a finite gradient)
    "smooth_where": lambda v: so.smooth_where(v, 0.5, 0.25 * v, 0.25 * tf.reverse(v, [0])),
}


@settings(max_examples=20, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(FLOATS))
def test_no_nan_gradients(data, dtype):
    # Values drawn by hypothesis over the whole finite range of the dtype,
    # always including 0, subnormals, the smallest normal and +-max.
    x = data.draw(testing.extreme_floats(dtype), label="x")
    for name, fn in _OPS.items():
        try:
            testing.assert_finite_gradients(fn, x)
        except AssertionError as err:
            raise AssertionError(f"{name} {dtype.name}: {err}") from None
    # the naive formulas the ops replace fail on the same inputs (x contains +-max)
    naive = {
        "logaddexp": lambda v: tf.math.log(tf.exp(v) + tf.exp(tf.reverse(v, [0]))),
        "sqrt(x**2 + eps**2) - eps": lambda v: tf.sqrt(v * v + 1e-6) - 1e-3,
    }
    for name, fn in naive.items():
        with pytest.raises(AssertionError):
            testing.assert_finite_gradients(fn, x)


def test_execution_modes():
    x = tf.constant(np.linspace(-4.0, 4.0, 33), tf.float32)

    def fwd_bwd(v):  # every op in one traced function: one compilation per mode
        result = {}
        for name, fn in _OPS.items():
            if name == "smooth_where":
                continue
            with tf.GradientTape() as tape:
                tape.watch(v)
                out = fn(v)
            result[name] = (out, tape.gradient(out, v))
        # smooth_where's branches are made from v too, so its gradient w.r.t. v is
        # the sum of three paths, and TF forms that sum: in graph mode its optimizer
        # orders the terms of the AddN by op name, eagerly the tape by arrival, so
        # the float32 sum rounds differently with no change in the op. The op's
        # gradient w.r.t. each of its inputs is compared instead.
        a, b = 0.25 * v, 0.25 * tf.reverse(v, [0])
        with tf.GradientTape() as tape:
            tape.watch([v, a, b])
            out = so.smooth_where(v, 0.5, a, b)
        result["smooth_where"] = (out, tape.gradient(out, [v, a, b]))
        return result

    modes = {mode: res for mode, res in testing.run_modes(fwd_bwd, x).items()}
    for name in _OPS:
        for mode in modes:
            out, g = modes[mode][name]
            eager = modes["eager"][name]
            # float64 computations rounded once to float32; XLA's own exp/log1p may
            # differ from Eigen's by a few float64 ulp, which moves the float32
            # result by at most 1 ulp (or ~1e-16 absolute where it cancels to 0)
            np.testing.assert_allclose(out, eager[0], rtol=2**-23, atol=1e-15,
                                       err_msg=f"{name} {mode}")
            for gi, ei in zip(tf.nest.flatten(g), tf.nest.flatten(eager[1])):
                np.testing.assert_allclose(gi, ei, rtol=2**-23, err_msg=f"{name} {mode}")


def test_nan_propagates():
    # No op of safeops.smooth guards NaN: NaN in, NaN out (at that position only),
    # in every execution mode.
    nan = float("nan")
    x = tf.constant([nan, -2.0, 0.3, 5.0], tf.float64)
    y = tf.constant([1.0, nan, 0.2, 5.0], tf.float64)
    # NaN at position 0 of x; the two-argument ops see it at both ends
    # (v and reverse(v)), smooth_where in x and in both branches.
    want = {name: [True, False, False, False] for name in _OPS}
    for name in ("soft_maximum", "soft_minimum", "smooth_where"):
        want[name] = [True, False, False, True]

    def all_ops(v, w):
        out = {name: fn(v) for name, fn in _OPS.items()}
        out["soft_maximum_xy"] = so.soft_maximum(v, w)
        out["soft_minimum_xy"] = so.soft_minimum(v, w)
        out["smooth_where_branch"] = so.smooth_where(-w, 0.0, v, 1.0)  # NaN branch, weight ~1e-22
        return out

    want["soft_maximum_xy"] = want["soft_minimum_xy"] = [True, True, False, False]
    want["smooth_where_branch"] = [True, True, False, False]  # 0 * NaN: documented
    for mode, outs in testing.run_modes(all_ops, x, y).items():
        for name, out in outs.items():
            np.testing.assert_array_equal(np.isnan(out), want[name], err_msg=f"{name} {mode}")


def test_soft_maximum_equal_infinities():
    inf = np.inf
    x = tf.constant([inf, -inf, inf, -inf])
    y = tf.constant([inf, -inf, -inf, inf])
    for name, fn, want in [("max", so.soft_maximum, [inf, -inf, inf, inf]),
                           ("min", so.soft_minimum, [inf, -inf, -inf, -inf])]:
        for mode, out in testing.run_modes(fn, x, y).items():
            np.testing.assert_array_equal(out, want, err_msg=f"{name} {mode}")
        np.testing.assert_array_equal(out, tf.maximum(x, y) if name == "max" else tf.minimum(x, y))
    _, (gx, gy) = _grads(so.soft_maximum, x, y)
    np.testing.assert_array_equal(gx, [0.5, 0.5, 1.0, 0.0])  # ties: 0.5 each, as at x == y
    np.testing.assert_array_equal(gy, [0.5, 0.5, 0.0, 1.0])


def test_dynamic_asserts_in_tf_function():
    # Tensor arguments of unknown value: the check is a tf.debugging assert,
    # which raises InvalidArgumentError naming the op and the argument.
    x = tf.constant([-3.0, 0.5, 2.0])
    spec = tf.TensorSpec([], tf.float32)
    cases = [
        ("safeops.soft_clip: need lo <= hi", lambda lo, hi: so.soft_clip(x, lo, hi), [spec, spec],
         [(-1.0, 1.0), (0.0, 0.0)], [(1.0, -1.0)]),
        ("safeops.soft_clip: argument 'sharpness' must be > 0",
         lambda s: so.soft_clip(x, -1.0, 1.0, sharpness=s), [spec], [(2.0,)], [(0.0,), (-1.0,)]),
        ("safeops.soft_abs: argument 'eps' must be > 0", lambda e: so.soft_abs(x, eps=e), [spec],
         [(1e-3,)], [(0.0,), (-1e-3,)]),
        ("safeops.soft_maximum: argument 'temperature' must be > 0",
         lambda t: so.soft_maximum(x, 1.0, temperature=t), [spec], [(0.5,)], [(0.0,), (-2.0,)]),
        ("safeops.soft_minimum: argument 'temperature' must be > 0",
         lambda t: so.soft_minimum(x, 1.0, temperature=t), [spec], [(0.5,)], [(0.0,), (-2.0,)]),
    ]
    for message, fn, sig, good, bad in cases:
        f = tf.function(fn, input_signature=sig)
        for args in good:
            assert np.all(np.isfinite(f(*[tf.constant(a) for a in args]).numpy())), message
        for args in bad:
            # TF's message escapes the quotes: argument \\'eps\\'
            with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("'", r"\\?'")):
                f(*[tf.constant(a) for a in args])


def test_static_checks_of_negative_values():
    with pytest.raises(ValueError, match="safeops.soft_abs: argument 'eps' must be > 0; got -0.001"):
        so.soft_abs(1.0, eps=-1e-3)
    with pytest.raises(ValueError, match="safeops.soft_abs: argument 'eps' must be > 0"):
        so.soft_abs(1.0, eps=tf.constant(-2.0))
    with pytest.raises(ValueError, match="safeops.soft_clip: argument 'sharpness' must be > 0"):
        so.soft_clip(0.0, -1.0, 1.0, sharpness=-3.0)
    with pytest.raises(ValueError, match="safeops.soft_minimum: argument 'temperature'"):
        so.soft_minimum(1.0, 2.0, temperature=0.0)


def _clip_grad_exact(x, lo, hi, s):
    """sigmoid(s (hi - x)) - sigmoid(s (lo - x)) at 60 digits (an mpf, not rounded)."""
    with mpmath.workdps(60):
        x, lo, hi, s = (mpmath.mpf(float(v)) for v in (x, lo, hi, s))
        sig = lambda z: 1 / (1 + mpmath.exp(-z))  # noqa: E731
        if x < (lo + hi) / 2:  # the equal form sig(s (x - lo)) - sig(s (x - hi)): no cancellation
            return sig(s * (x - lo)) - sig(s * (x - hi))
        return sig(s * (hi - x)) - sig(s * (lo - x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_soft_clip_gradient_zero_exactly_where_documented(dtype):
    # Documented: the gradient is > 0 wherever its exact value is >= tiny (the
    # smallest normal number of the dtype) and 0 (or subnormal) only where the
    # exact value is below tiny, i.e. beyond s * dist ~ -log(tiny). The factor 2
    # margins cover the rounding of the computed gradient (a few ulp, << 2x).
    lo, hi, s = -1.0, 1.0, 2.0
    np_t = tf.as_dtype(dtype).as_numpy_dtype
    tiny = float(ml_dtypes.finfo(np_t).tiny)
    big = float(tf.as_dtype(dtype).max)
    thr = -np.log(tiny) / s  # distance where the exact gradient crosses tiny
    dist = thr + np.linspace(-3.0, 3.0, 41)
    x = np.concatenate([testing.sample_floats(dtype, 200, -big, big, seed=8).astype(np.float64),
                        hi + dist, lo - dist, [0.0, -big, big]]).astype(np_t)
    _, (g,) = _grads(lambda v: so.soft_clip(v, lo, hi, sharpness=s), tf.constant(x))
    g = g.astype(np.float64)
    exact = [_clip_grad_exact(v, lo, hi, s) for v in x]
    above = np.array([e >= 2 * tiny for e in exact])
    below = np.array([e < tiny / 2 for e in exact])
    assert above.sum() > 40 and below.sum() > 40  # both regimes are exercised
    assert np.all(g[above] > 0)
    assert np.all(g[below] < tiny) and np.all(g >= 0) and np.all(np.isfinite(g))
    # the crossing is where the docstring says: s * dist within 1 of -log(tiny)
    zero = x[g == 0].astype(np.float64)
    if zero.size:
        d = np.maximum(zero - hi, lo - zero)
        assert np.all(d > (-np.log(tiny) - 1.0) / s)


def test_soft_abs_eps_gradient_matches_finite_differences():
    # the hand-written d/deps = -y / r against float64 central differences (documented 1e-6)
    xs = np.array([-2.0, -0.3, 0.0, 0.2, 1.7, 30.0])
    for e in (0.5, 3.0):
        err = testing.check_gradients(lambda v, ee: so.soft_abs(v, eps=ee), xs, np.float64(e))
        assert err <= 1e-6


def _xla_loops(fn, *args):
    """Result dtypes of the loops (fusions) of the XLA:CPU program of fn's value and gradients."""
    def fwd_bwd(*vs):
        with tf.GradientTape() as tape:
            tape.watch(vs)
            out = fn(*vs)
        return [out] + tape.gradient(out, list(vs))

    with tf.device("/CPU:0"):
        hlo = tf.function(fwd_bwd, jit_compile=True).experimental_get_compiler_ir(*args)(
            stage="optimized_hlo")
    entry = hlo[hlo.index("ENTRY"):]
    return re.findall(r"= (\w+)\[[\d,]*\]\{[\d,]*\} fusion\(", entry), len(args) + 1


@pytest.mark.parametrize("name", ["soft_maximum", "soft_minimum", "soft_clip", "smooth_where"])
def test_one_xla_loop_per_output(name):
    # The value and each gradient are one loop each over the float32 inputs: no
    # float64 intermediate is written to memory and read back (XLA:CPU does that
    # for an expensive operation, e.g. a quotient, that two outputs share).
    x = tf.constant(np.linspace(-3.0, 3.0, 256), tf.float32)
    fns = {
        "soft_maximum": (lambda v, w: so.soft_maximum(v, w, 0.75), (x, tf.reverse(x, [0]))),
        "soft_minimum": (lambda v, w: so.soft_minimum(v, w, 0.75), (x, tf.reverse(x, [0]))),
        "soft_clip": (lambda v: so.soft_clip(v, -1.0, 2.0, 1.5), (x,)),
        "smooth_where": (lambda v, a, b: so.smooth_where(v, 0.5, a, b, 0.75),
                         (x, 2.0 * x, tf.reverse(x, [0]))),
    }
    fn, args = fns[name]
    loops, outputs = _xla_loops(fn, *args)
    assert loops == ["f32"] * outputs, loops
