"""Tests of safeops.division: safe_divide, safe_reciprocal, divide_no_nan, relative_error."""

import re

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops as so
from safeops import testing

FLOATS = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}


def _np(dtype):
    return tf.as_dtype(dtype).as_numpy_dtype




def _grads(fn, *xs):
    xs = [tf.convert_to_tensor(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = fn(*xs)
        loss = tf.reduce_sum(out)
    return out.numpy(), [g.numpy() for g in tape.gradient(loss, xs)]


def _normal_pair(dtype, n, seed):
    """x, y with |x|, |y| in [1/r, r]: quotients far from overflow and underflow."""
    r = 1e2 if tf.as_dtype(dtype) == tf.float16 else 1e3
    x = testing.sample_floats(dtype, n, 1 / r, r, seed=seed)
    y = testing.sample_floats(dtype, n, 1 / r, r, seed=seed + 1)
    sign = np.where(np.random.default_rng(seed).random((2, n)) < 0.5, -1, 1)
    return (x * sign[0]).astype(x.dtype), (y * sign[1]).astype(y.dtype)


def _grad_pair(n, seed):
    """float64 x, y with |x|, |y| in [0.5, 100]: check_gradients' step (6e-6 for
    |v| < 1) is then small relative to every value, so the central difference
    itself is accurate to ~1e-9."""
    x = testing.sample_floats(tf.float64, n, 0.5, 100.0, seed=seed)
    y = testing.sample_floats(tf.float64, n, 0.5, 100.0, seed=seed + 1)
    sign = np.where(np.random.default_rng(seed).random((2, n)) < 0.5, -1, 1)
    return x * sign[0], y * sign[1]


# -- safe_divide -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_reference(dtype):
    # |y| >= eps: IEEE division is correctly rounded, so the distance to the
    # mpmath quotient rounded once to the dtype is exactly 0 ulp.
    x, y = _normal_pair(dtype, 200, seed=1)
    out = so.safe_divide(tf.constant(x), tf.constant(y))
    assert out.dtype == dtype
    ref = testing.reference(lambda a, b: a / b, x, y, dtype=dtype)
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_floored_denominator_matches_reference(dtype):
    # |y| < eps (0, -0, subnormals): x / (sign(y) * eps) with sign(+-0) = +, 0 ulp.
    tiny = TINY[tf.as_dtype(dtype).name]
    y = np.array([0.0, -0.0, tiny / 4, -tiny / 4, tiny / 1024, -tiny / 2], dtype=np.float64)
    x = np.array([1.0, 1.0, 0.5, 0.5, -0.25, 1.5])
    y, x = y.astype(_np(dtype)), x.astype(_np(dtype))
    out = so.safe_divide(tf.constant(x), tf.constant(y)).numpy()
    sign = np.where(np.signbit(y) & (y != 0), -1.0, 1.0)
    ref = testing.reference(lambda a, s: a / (s * mpmath.mpf(tiny)), x, sign, dtype=dtype)
    assert testing.ulp_distance(out, ref, dtype).max() == 0
    assert np.all(np.isfinite(out.astype(np.float64)))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_overflow_saturates_at_largest_finite(dtype):
    big = tf.as_dtype(dtype).max
    x = tf.constant([10.0, -10.0, big, 0.0], dtype)
    y = tf.constant([0.0, 0.0, 0.5, 0.0], dtype)
    out = so.safe_divide(x, y).numpy()
    np.testing.assert_array_equal(out, [big, -big, big, 0.0])
    assert not np.all(np.isfinite((x / y).numpy()))  # what it replaces


def test_custom_eps():
    out = so.safe_divide(tf.constant([1.0, 1.0, 1.0]), tf.constant([1e-9, -1e-9, 0.5]), eps=1e-3)
    e = float(np.float32(1e-3))  # eps is converted to the dtype first
    ref = testing.reference(lambda a, b: a / b, [1.0, 1.0, 1.0], [e, -e, 0.5], dtype="float32")
    assert testing.ulp_distance(out.numpy(), ref, "float32").max() == 0


def test_gradient_edges():
    # At y = +-0 and subnormal y the floored denominator is constant: d/dy = 0,
    # d/dx = 1/eps (finite); tf's x / y gives inf / nan there.
    x = tf.constant([2.0, 2.0, 2.0, 0.0])
    y = tf.constant([0.0, -0.0, -1e-45, 0.0])
    _, (gx, gy) = _grads(so.safe_divide, x, y)
    np.testing.assert_array_equal(gy, [0.0, 0.0, 0.0, 0.0])
    inv = np.float32(1.0) / np.float32(2.0**-126)
    np.testing.assert_array_equal(gx, [inv, inv, -inv, inv])
    _, (tgx, tgy) = _grads(lambda a, b: a / b, x, y)
    assert not np.all(np.isfinite(tgx)) and not np.all(np.isfinite(tgy))


def test_gradient_matches_finite_differences():
    x, y = _grad_pair(12, seed=3)
    assert testing.check_gradients(so.safe_divide, x, y) <= 1e-6
    assert testing.check_gradients(so.safe_reciprocal, y) <= 1e-6
    # inside the floored region the function of y is constant (fd = 0)
    assert testing.check_gradients(lambda a, b: so.safe_divide(a, b, eps=1.0),
                                   x, np.full(12, 0.25)) <= 1e-6


def test_broadcast_gradients_have_input_shapes():
    x = tf.constant(np.arange(1.0, 7.0).reshape(2, 3))
    y = tf.constant([2.0, 0.0, 4.0], tf.float64)
    out, (gx, gy) = _grads(so.safe_divide, x, y)
    assert out.shape == (2, 3) and gx.shape == (2, 3) and gy.shape == (3,)
    np.testing.assert_allclose(gy, [-(1 + 4) / 4.0, 0.0, -(3 + 6) / 16.0], rtol=1e-15)


def test_graph_mode_dynamic_shapes_and_broadcasting():
    # inside tf.function the op runs as an XLA-fused kernel; unknown static shapes
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float64),
                                  tf.TensorSpec([None], tf.float64)])
    def f(x, y):
        with tf.GradientTape() as tape:
            tape.watch([x, y])
            loss = tf.reduce_sum(so.safe_divide(x, y))
        return tape.gradient(loss, [x, y])

    gx, gy = f(tf.ones([4, 3], tf.float64), tf.constant([2.0, 0.0, -4.0], tf.float64))
    np.testing.assert_array_equal(gx.numpy(), np.tile([0.5, 2.0**1022, -0.25], (4, 1)))
    np.testing.assert_array_equal(gy.numpy(), [-4 / 4.0, 0.0, -4 / 16.0])


@settings(max_examples=15, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(FLOATS), size=st.integers(0, 24))
def test_no_nan_gradients(data, dtype, size):
    # Every finite x, y drawn by hypothesis: 0, subnormals, huge values and
    # their negatives, in every pairing (y = x[::-1] and y = x rolled, too).
    x = data.draw(testing.extreme_floats(dtype, size, size), label="x")
    y = data.draw(testing.extreme_floats(dtype, size, size), label="y")
    for a, b in ((x, y), (x, x[::-1].copy()), (x, np.roll(x, 3))):
        testing.assert_finite_gradients(so.safe_divide, a, b)
        testing.assert_finite_gradients(so.relative_error, a, b)
        # divide_no_nan keeps IEEE overflow (its documented forward), but its
        # gradient is never NaN: 0 at y == 0, the true derivative elsewhere.
        _, grads = _grads(lambda p, q: so.divide_no_nan(p, q) * tf.cast(q != 0, q.dtype), a, b)
        assert not any(np.isnan(g.astype(np.float64)).any() for g in grads)
    testing.assert_finite_gradients(so.safe_reciprocal, y)
    with pytest.raises(AssertionError):  # the naive op fails the same check (y holds 0)
        testing.assert_finite_gradients(lambda a, b: a / b, x, y)


def test_nan_propagates():
    # NaN in x or y gives NaN in every op and mode; the one documented guard is
    # divide_no_nan's 0 at y == 0 (also for x = NaN there), as in TF.
    nan = float("nan")
    x = tf.constant([nan, 1.0, nan, 2.0, 3.0])
    y = tf.constant([1.0, nan, 0.0, 0.0, 1e-30])
    ops = {"safe_divide": (so.safe_divide, [1, 1, 1, 0, 0]),
           "relative_error": (so.relative_error, [1, 1, 1, 0, 0]),
           "divide_no_nan": (so.divide_no_nan, [1, 1, 0, 0, 0]),
           "safe_reciprocal": (lambda a, b: so.safe_reciprocal(a), [1, 0, 1, 0, 0])}

    def all_ops(a, b):
        return {name: fn(a, b) for name, (fn, _) in ops.items()}

    for mode, outs in testing.run_modes(all_ops, x, y).items():
        for name, out in outs.items():
            np.testing.assert_array_equal(np.isnan(out), np.array(ops[name][1], bool),
                                          err_msg=f"{name} {mode}")
    np.testing.assert_array_equal(so.divide_no_nan(x, y).numpy(),
                                  tf.math.divide_no_nan(x, y).numpy())


def test_execution_modes():
    x, y = _normal_pair(tf.float32, 64, seed=5)
    y[:5] = [0.0, -0.0, 1e-40, -1e-41, 1e-45]
    fn = lambda a, b: _grads(so.safe_divide, a, b)  # noqa: E731
    modes = testing.run_modes(lambda a, b: so.safe_divide(a, b), tf.constant(x), tf.constant(y))
    ref = testing.reference(lambda a, b: a / b, x, np.where(np.abs(y) < 2.0**-126, np.where(y < 0, -(2.0**-126), 2.0**-126), y),
                            dtype="float64")
    ref = np.clip(ref, -np.finfo(np.float32).max, np.finfo(np.float32).max)  # saturation
    for name, out in modes.items():
        assert testing.ulp_distance(out, ref, "float32").max() == 0, name
    eager_g = fn(tf.constant(x), tf.constant(y))[1]
    for jit in (False, True):
        @tf.function(jit_compile=jit)
        def g(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = tf.reduce_sum(so.safe_divide(a, b))
            return tape.gradient(loss, [a, b])
        got = g(tf.constant(x), tf.constant(y))
        for e, v in zip(eager_g, got):
            np.testing.assert_array_equal(e, v.numpy())


@pytest.mark.parametrize("fn,args", [
    (so.safe_divide, ("x", "y")), (so.relative_error, ("y_true", "y_pred")),
])
def test_bad_input_raises(fn, args):
    op = f"safeops.{fn.__name__}"
    # A dtype the op does not take: TF's pair of errors (InvalidArgumentError
    # eagerly, TypeError in graphs), one exception that is both.
    for bad in (tf.constant([1, 2]), tf.constant([True, False])):
        with pytest.raises(TypeError, match=rf"{op}: argument '{args[0]}'"):
            fn(bad, bad)
        with pytest.raises(tf.errors.InvalidArgumentError, match=op):
            fn(bad, bad)
    with pytest.raises(TypeError, match=rf"{op}: argument '{args[0]}'"):
        fn(tf.constant([1, 2]), tf.constant([1.0, 2.0]))
    with pytest.raises(TypeError, match=rf"{op}: arguments '{args[0]}' and '{args[1]}'"):
        fn(tf.constant([1.0]), tf.constant([1.0], tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(tf.constant([1.0, 2.0]), tf.constant([1.0, 2.0, 3.0]))


def test_divide_no_nan_bad_input_raises_as_tf():
    # TF raises TypeError itself for mixed and for bool dtypes (in both modes)
    with pytest.raises(TypeError, match="safeops.divide_no_nan: arguments 'x' and 'y'"):
        so.divide_no_nan(tf.constant([1.0]), tf.constant([1.0], tf.float64))
    with pytest.raises(TypeError):
        tf.math.divide_no_nan(tf.constant([True]), tf.constant([False]))
    with pytest.raises(TypeError):
        so.divide_no_nan(tf.constant([True]), tf.constant([False]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        so.divide_no_nan(tf.constant([1.0, 2.0]), tf.constant([1.0, 2.0, 3.0]))


def test_bad_eps_raises():
    for fn in (lambda e: so.safe_divide(1.0, 2.0, eps=e), lambda e: so.safe_reciprocal(2.0, eps=e),
               lambda e: so.relative_error(1.0, 2.0, eps=e)):
        with pytest.raises(ValueError, match="argument 'eps' must be > 0"):
            fn(0.0)
        with pytest.raises(ValueError, match="eps"):
            fn(-1.0)
    with pytest.raises(TypeError, match="safeops.safe_reciprocal: argument 'y'"):
        so.safe_reciprocal(tf.constant(3))

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def dynamic(eps):
        return so.safe_divide(1.0, 2.0, eps=eps)

    assert dynamic(tf.constant(1e-3)).numpy() == 0.5
    with pytest.raises(tf.errors.InvalidArgumentError, match="eps"):
        dynamic(tf.constant(-1.0))


# -- divide_no_nan ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_divide_no_nan_forward_equals_tf(dtype):
    x, y = _normal_pair(dtype, 50, seed=9)
    x[:4] = [np.inf, -np.inf, np.nan, 1.0]
    y[:4] = 0.0
    got = so.divide_no_nan(tf.constant(x), tf.constant(y)).numpy()
    want = tf.math.divide_no_nan(tf.constant(x), tf.constant(y)).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.all(got[:4] == 0)
    ref = testing.reference(lambda a, b: a / b, x[4:], y[4:], dtype=dtype)
    assert testing.ulp_distance(got[4:], ref, dtype).max() == 0


def test_divide_no_nan_gradient():
    x = tf.constant([np.inf, -np.inf, 3.0, 3.0, 1e30])
    y = tf.constant([0.0, 0.0, 0.0, 2.0, 1e-30])
    w = tf.constant([1.0, 1.0, 1.0, 1.0, 0.0])  # zero upstream gradient at the overflow
    _, (gx, gy) = _grads(lambda a, b: so.divide_no_nan(a, b) * w, x, y)
    np.testing.assert_array_equal(gx[:3], 0.0)
    np.testing.assert_array_equal(gy[:3], 0.0)
    assert gx[3] == 0.5 and gy[3] == -0.75  # true derivative, exact in binary
    assert gx[4] == 0.0 and gy[4] == 0.0
    # x = 0 over the smallest float16 subnormal: 1 / y overflows, -x / y**2 = 0
    # (found by test_no_nan_gradients: -(gx * q) was inf * 0 = NaN)
    x16, y16 = tf.constant([0.0, 0.0], tf.float16), tf.constant([6e-8, -6e-8], tf.float16)
    _, (gx16, gy16) = _grads(so.divide_no_nan, x16, y16)
    np.testing.assert_array_equal(gy16, [0.0, 0.0])
    np.testing.assert_array_equal(gx16, [np.inf, -np.inf])  # 1 / y: not representable
    _, (_, tgy) = _grads(lambda a, b: tf.math.divide_no_nan(a, b) * w, x, y)
    assert np.isnan(tgy[4])  # TF: 0 * inf
    xs, ys = _grad_pair(10, seed=11)
    assert testing.check_gradients(so.divide_no_nan, xs, ys) <= 1e-6


# -- relative_error --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_relative_error_matches_reference(dtype):
    t, p = _normal_pair(dtype, 150, seed=13)
    p[:50] = (t[:50].astype(np.float64) * (1 + 1e-3)).astype(t.dtype)  # near-cancelling
    t[50:55] = 0.0
    eps = TINY[tf.as_dtype(dtype).name]
    out = so.relative_error(tf.constant(t), tf.constant(p))
    assert out.dtype == dtype
    ref = testing.reference(lambda a, b: abs(a - b) / max(abs(a), mpmath.mpf(eps)), t, p,
                            dtype="float64")
    big = float(tf.as_dtype(dtype).max)
    ref = np.clip(ref, -big, big)  # the documented saturation
    # documented bound: <= 1 ulp
    assert testing.ulp_distance(out.numpy(), ref, dtype).max() <= 1


def test_relative_error_stable_where_the_naive_loss_fails():
    t = tf.constant([0.0, 1e-3, 2.0], tf.float16)
    p = tf.constant([0.0, 0.0, 1.0], tf.float16)
    out = so.relative_error(t, p, eps=1e-8).numpy()
    assert out[0] == 0.0 and out[1] == 1.0 and out[2] == 0.5
    naive = (tf.abs(t - p) / (tf.abs(t) + 1e-8)).numpy()  # 1e-8 underflows in float16
    assert np.isnan(naive[0])


def test_relative_error_gradient():
    t, p = _grad_pair(10, seed=17)
    assert testing.check_gradients(so.relative_error, t, p) <= 1e-6
    assert testing.check_gradients(lambda a, b: so.relative_error(a, b, eps=10.0), t, p) <= 1e-6
    _, (gt, gp) = _grads(lambda a, b: so.relative_error(a, b, eps=0.5),
                         tf.constant([0.0, 2.0]), tf.constant([1.0, 2.0]))
    # y_true = 0 < eps: d/dt = sign(t - p) / eps; y_pred == y_true: 0
    np.testing.assert_array_equal(gt, [-2.0, 0.0])
    np.testing.assert_array_equal(gp, [2.0, 0.0])


def test_relative_error_gradient_where_difference_overflows_float64():
    # float64 t = -max, p = 9.98e291: t - p overflows and g / |t| is subnormal (flushed to 0
    # by the CPU kernels); the t-gradient was inf * 0 = NaN (found by the property test).
    t = tf.constant([-np.finfo(np.float64).max, 1.0], tf.float64)
    p = tf.constant([9.97920155e291, 2.0], tf.float64)
    for fn in (so.relative_error, tf.function(so.relative_error)):
        testing.assert_finite_gradients(fn, t, p)


def test_relative_error_one_xla_loop_per_output():
    # The value and each gradient are one loop each over the float32 inputs: no
    # float64 quotient shared by two outputs is written to memory and read back.
    t = tf.constant(np.linspace(-3.0, 3.0, 256), tf.float32)
    p = tf.reverse(t, [0])

    def fwd_bwd(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            out = so.relative_error(a, b, eps=1e-3)
        return [out] + tape.gradient(out, [a, b])

    with tf.device("/CPU:0"):
        hlo = tf.function(fwd_bwd, jit_compile=True).experimental_get_compiler_ir(t, p)(
            stage="optimized_hlo")
    loops = re.findall(r"= (\w+)\[[\d,]*\]\{[\d,]*\} fusion\(", hlo[hlo.index("ENTRY"):])
    assert loops == ["f32"] * 3, loops


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_divide_no_nan_graph_gradient_gives_eager_bits(dtype):
    # inside a graph the backward is one XLA-compiled loop: IEEE quotients and products,
    # the same bits as the eager kernels, zeros, overflow and broadcasting included
    rng = np.random.default_rng(3)
    n = 2048
    x = rng.standard_normal((4, n)) * 10.0 ** rng.uniform(-6, 6, (4, n))
    y = rng.standard_normal((1, n)) * 10.0 ** rng.uniform(-6, 6, (1, n))
    x[0, :8] = [0.0, -0.0, np.inf, np.nan, 1.0, 3e38, 1.0, -5.0]
    y[0, :8] = [0.0, 2.0, 0.0, 1.0, 0.0, 1e-30, -0.0, 7.0]
    xt, yt = tf.constant(x, dtype), tf.constant(y, dtype)
    g = tf.constant(rng.standard_normal((4, n)), dtype)

    def value_and_grads(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            q = so.divide_no_nan(a, b)
        return [q] + tape.gradient(q, [a, b], output_gradients=g)

    eager = value_and_grads(xt, yt)
    graph = tf.function(value_and_grads)(xt, yt)
    bits = {2: tf.int16, 4: tf.int32, 8: tf.int64}[dtype.size]  # NaN compared by its bits
    for e, r in zip(eager, graph):
        assert r.dtype == dtype and r.shape == e.shape
        np.testing.assert_array_equal(tf.bitcast(r, bits).numpy(), tf.bitcast(e, bits).numpy())


@pytest.mark.parametrize("upstream", ["ones", "tensor"])
def test_divide_no_nan_xla_loops_read_only_the_inputs(upstream):
    # fwd+bwd under jit_compile: one loop per output, each reading only x, y (and the
    # upstream gradient), as for tf.math.divide_no_nan: no quotient written to memory and
    # read back by another loop (a memory-bound op would pay an array more)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.standard_normal(4096), tf.float32)
    y = tf.constant(rng.standard_normal(4096), tf.float32)
    g = tf.constant(rng.standard_normal(4096), tf.float32)

    def fwd_bwd(a, b, w):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            q = so.divide_no_nan(a, b)
        return [q] + tape.gradient(q, [a, b], output_gradients=None if upstream == "ones" else w)

    with tf.device("/CPU:0"):
        hlo = tf.function(fwd_bwd, jit_compile=True).experimental_get_compiler_ir(x, y, g)(
            stage="optimized_hlo")
    entry = hlo[hlo.index("ENTRY"):]
    fusions = re.findall(r"= f32\[\d+\]\{0\} fusion\(([^)]*)\)", entry)
    assert len(fusions) == 3, entry
    for operands in fusions:
        assert all(o.strip().startswith("%arg") for o in operands.split(",")), entry
