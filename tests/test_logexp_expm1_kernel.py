"""so.softplus_inverse and so.log1mexp of float32 on the CPU (eagerly and in graphs): the
fused kernels (`SafeopsLogExpm1` forward, `SafeopsLogExpm1Grad` backward) against float64
and mpmath references over a dense float32 sweep and the edge values, against the pure-TF
formulas (`so.native.disabled()`) and under XLA (which takes the pure-TF path)."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing
from test_logexp_graph import _value_and_grad  # (value, gradient) of a unary op

_TINY = np.finfo(np.float32).tiny
_BIG = np.finfo(np.float32).max
# the kernels evaluate in double (relative error ~1e-15, far below float32's half ulp of
# 6e-8) and round once: values and slopes within 1 ulp, the documented float32 value bound,
# which the pure-TF formulas (float32 evaluated in float64 too) meet as well
_VALUE_ULP = 1
_GRAD_ULP = 4  # the documented gradient bound of the special functions
_OPS = {"softplus_inverse": so.softplus_inverse, "log1mexp": so.log1mexp}


def _reference64(kind, x):
    """value and slope in float64 (numpy's expm1, log, log1p: ~1e-16 relative). Near
    softplus_inverse's zero at log 2 the value is ~1e-16 absolute off, and a float32 x is at
    least 2**-25 from log 2, so the value there is >= 5e-8 and still ~2e-9 relative: far
    below a float32 ulp."""
    d = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if kind == "softplus_inverse":
            value = np.where(d < 40, np.log(np.expm1(np.minimum(d, 40.0))), d)
            slope = 1.0 + 1.0 / np.expm1(np.minimum(d, 40.0))
        else:
            a = np.abs(d)
            value = np.where(a <= np.log(2.0), np.log(-np.expm1(-a)), np.log1p(-np.exp(-a)))
            slope = np.where(a == 0, 0.0, np.sign(d) / np.expm1(a))
    return value, np.clip(slope, -_BIG, _BIG)


def _mp_reference(kind, x):
    if kind == "softplus_inverse":
        value = testing.reference(lambda v: mpmath.log(mpmath.expm1(v)), x, dtype="float32")
        slope = testing.reference(lambda v: -1 / mpmath.expm1(-v), x, dtype="float32")
    else:
        value = testing.reference(lambda v: mpmath.log(-mpmath.expm1(-abs(v))), x,
                                  dtype="float32")
        slope = testing.reference(lambda v: mpmath.sign(v) / mpmath.expm1(abs(v)), x,
                                  dtype="float32")
    return value, slope


def _sweep(kind):
    """Every 1021st float32 of the domain (softplus_inverse (0, 104], log1mexp [-104, 104]:
    ~1M values, every binade), bit-uniform samples of it, and the branch points; subnormal
    inputs left out (TF's CPU kernels read them as 0)."""
    hi = int(np.float32(104.0).view(np.uint32))
    pos = np.arange(1, hi + 1, 1021, dtype=np.uint32).view(np.float32)
    edges = np.float32([np.log(2.0), np.nextafter(np.float32(np.log(2.0)), np.float32(0)),
                        np.nextafter(np.float32(np.log(2.0)), np.float32(1)), 40.0,
                        np.nextafter(np.float32(40.0), np.float32(0)), 88.7, 103.9])
    x = np.concatenate([pos, testing.sample_floats("float32", 20000, 0.0, 104.0, seed=7),
                        edges])
    if kind == "log1mexp":
        x = np.concatenate([x, -x[::3]])
    return x[np.abs(x) >= _TINY]


def _graph(kind, x):
    return [t.numpy() for t in tf.function(_value_and_grad(_OPS[kind]))(tf.constant(x))]


def _eager(kind, x):
    return [t.numpy() for t in _value_and_grad(_OPS[kind])(tf.constant(x))]


def _normal(ref):
    """Where the reference is 0 or a normal float32 (TF's CPU kernels flush subnormals)."""
    r = np.abs(ref.astype(np.float64))
    return (r >= _TINY) | (r == 0)


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    if so.native.library() is None:
        pytest.skip(f"kernels unavailable: {so.native.status()['error']}")


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_graph_uses_the_fused_kernels(kind):
    spec = tf.TensorSpec([None], tf.float32)
    graph = tf.function(_value_and_grad(_OPS[kind])).get_concrete_function(spec).graph
    types = {op.type for op in graph.get_operations()}
    assert {"SafeopsLogExpm1", "SafeopsLogExpm1Grad"} <= types
    assert not types & {"Expm1", "Log", "Log1p", "Exp"}  # none of the pure-TF formula's
    with so.native.disabled():
        graph = tf.function(_value_and_grad(_OPS[kind])).get_concrete_function(spec).graph
    assert not {op.type for op in graph.get_operations()} & {"SafeopsLogExpm1",
                                                            "SafeopsLogExpm1Grad"}
    spec64 = tf.TensorSpec([None], tf.float64)  # float64 keeps its own formulas
    graph = tf.function(_value_and_grad(_OPS[kind])).get_concrete_function(spec64).graph
    assert not {op.type for op in graph.get_operations()} & {"SafeopsLogExpm1",
                                                            "SafeopsLogExpm1Grad"}


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_matches_reference_dense_sweep(kind):
    x = _sweep(kind)
    ref_value, ref_slope = _reference64(kind, x)
    value, grad = _graph(kind, x)
    eager_value, eager_grad = _eager(kind, x)
    # one kernel eagerly and in graphs: the same bits
    np.testing.assert_array_equal(eager_value, value)
    np.testing.assert_array_equal(eager_grad, grad)
    with so.native.disabled():  # the pure-TF paths: XLA-compiled polynomials, TF's kernels
        tf_value, tf_grad = _graph(kind, x)
        tf_eager_value, tf_eager_grad = _eager(kind, x)
    for got, ref, bound in ((value, ref_value, _VALUE_ULP), (grad, ref_slope, _VALUE_ULP),
                            (tf_value, ref_value, _VALUE_ULP), (tf_grad, ref_slope, _GRAD_ULP),
                            (tf_eager_value, ref_value, _VALUE_ULP),
                            (tf_eager_grad, ref_slope, _GRAD_ULP)):
        keep = _normal(ref) & np.isfinite(ref)
        assert np.max(testing.ulp_distance(got[keep], ref[keep], "float32")) <= bound
    # infinite references (log 0 at x = 0 is not in the sweep; none expected) would be
    # compared exactly
    assert np.all(np.isfinite(ref_value)) and np.all(np.isfinite(value))


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_matches_mpmath(kind):
    x = testing.sample_floats("float32", 1500, 1e-30, 104.0, seed=19)
    if kind == "log1mexp":
        x = np.concatenate([x, -x[:300]])
    x = x[np.abs(x) >= _TINY]
    value, grad = _graph(kind, x)
    ref_value, ref_slope = _mp_reference(kind, x)
    for got, ref in ((value, ref_value), (grad, ref_slope)):
        keep = _normal(ref) & np.isfinite(ref.astype(np.float64))
        assert np.max(testing.ulp_distance(got[keep], ref[keep], "float32")) <= _VALUE_ULP


def test_edges():
    inf, nan = np.inf, np.nan
    x = np.float32([nan, inf, -inf, 0.0, -0.0, 40.0, 200.0, -1.0])
    y, g = _graph("softplus_inverse", x)
    assert np.isnan(y[0]) and np.isnan(g[0])
    # +inf at +inf, NaN below 0, -inf at +-0; x itself from 40 on
    assert list(y[[1, 3, 4, 5, 6]]) == [inf, -inf, -inf, 40.0, 200.0]
    assert np.isnan(y[2]) and np.isnan(y[7])
    # slope 1 + 1/expm1(x): 1 at +inf and from 40 on, 0 at -inf, saturated at +-0
    assert list(g[1:7]) == [1.0, 0.0, _BIG, -_BIG, 1.0, 1.0]
    y, g = _graph("log1mexp", x)
    assert np.isnan(y[0]) and np.isnan(g[0])
    # log(1 - exp(-|x|)): -0 at +-inf, -inf at +-0; slope sign(x) / expm1(|x|), 0 at 0
    assert list(y[1:5]) == [0.0, 0.0, -inf, -inf] and np.signbit(y[1]) and np.signbit(y[2])
    assert list(g[1:5]) == [0.0, 0.0, 0.0, 0.0]
    assert y[7] == np.float32(np.log(-np.expm1(-1.0)))
    # at the smallest normal float32 the slope 1/expm1(x) = 2**126 is finite, and exact
    _, g = _graph("log1mexp", np.float32([_TINY, -_TINY]))
    assert list(g) == [2.0 ** 126, -(2.0 ** 126)]


def test_upstream_gradient_is_multiplied_in_float32():
    x = tf.constant(np.float32([0.3, 1.5, 7.0, -2.0]))
    up = tf.constant(np.float32([3.0, -0.5, 1e30, 2.0]))
    for kind, fn in _OPS.items():
        if kind == "softplus_inverse":
            xs = tf.abs(x)
        else:
            xs = x

        @tf.function
        def grad(v, w, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = fn(v)
            return tape.gradient(y, v, output_gradients=w)

        _, slope = _reference64(kind, xs.numpy())
        # the slope rounded to float32 once, then one float32 product with the upstream
        want = up.numpy() * slope.astype(np.float32)
        np.testing.assert_array_equal(grad(xs, up).numpy(), want)


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_bits_do_not_depend_on_position_or_size(kind):
    # each element is computed inside a full packet (the tail padded): the same bits for an
    # element wherever it sits, in a tensor split across threads or in a short tail
    x = testing.sample_floats("float32", 200003, 1e-6, 60.0, seed=29)
    x = x[np.abs(x) >= _TINY]
    value, grad = _graph(kind, x)
    for start, stop in ((0, 1), (3, 20), (5, 38), (7, 10000), (1, len(x))):
        part_value, part_grad = _graph(kind, x[start:stop])
        np.testing.assert_array_equal(part_value, value[start:stop])
        np.testing.assert_array_equal(part_grad, grad[start:stop])


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_execution_modes(kind):
    x = _sweep(kind)[::13]
    ref_value, ref_slope = _reference64(kind, x)
    modes = testing.run_modes(_value_and_grad(_OPS[kind]), tf.constant(x))
    for mode, (value, grad) in modes.items():
        # the kernel eagerly and in graphs; under XLA the pure-TF formula and its bounds
        for got, ref, b in ((value, ref_value, _VALUE_ULP), (grad, ref_slope, _GRAD_ULP)):
            keep = _normal(ref) & np.isfinite(ref)
            assert np.max(testing.ulp_distance(got[keep], ref[keep], "float32")) <= b, mode


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("kind", sorted(_OPS))
def test_half_dtypes_keep_their_formula(kind, dtype):
    # float16/bfloat16 do not go through the float32 kernel (their own wider evaluation)
    x = tf.constant(np.float32([0.1, 0.7, 2.0, 9.0]), dtype)
    graph = tf.function(_value_and_grad(_OPS[kind])).get_concrete_function(x).graph
    assert not {op.type for op in graph.get_operations()} & {"SafeopsLogExpm1",
                                                            "SafeopsLogExpm1Grad"}
    value, _ = [t.numpy() for t in tf.function(_value_and_grad(_OPS[kind]))(x)]
    ref, _ = _reference64(kind, np.asarray(x.numpy(), np.float32))
    assert np.max(testing.ulp_distance(value, ref, dtype.name)) <= _VALUE_ULP


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_second_derivative(kind):
    x = np.float32(np.concatenate([np.linspace(0.05, 30, 120), -np.linspace(0.05, 30, 30)]))
    if kind == "softplus_inverse":
        x = np.abs(x)
    xt = tf.constant(x)

    @tf.function
    def second(v):
        with tf.GradientTape() as outer:
            outer.watch(v)
            with tf.GradientTape() as inner:
                inner.watch(v)
                y = _OPS[kind](v)
            g = inner.gradient(y, v)
        return outer.gradient(g, v)

    # -e^a / expm1(a)^2 with a = x (softplus_inverse) or |x| (log1mexp)
    want = testing.reference(lambda v: -mpmath.exp(abs(v)) / mpmath.expm1(abs(v)) ** 2, x,
                             dtype="float64")
    # no bound is documented for second derivatives: a few float32 roundings (TF's expm1
    # twice, a product, a quotient; each within ~2 ulp of 6e-8) stay below 1e-6 relative
    np.testing.assert_allclose(second(xt).numpy(), want, rtol=1e-6, atol=0)
    # and the derivative of the gradient in the upstream g is the slope itself
    g2 = tf.constant(np.float32(np.ones_like(x) * 2.0))
    with tf.GradientTape() as tape:
        tape.watch([xt, g2])
        with tf.GradientTape() as inner:
            inner.watch(xt)
            y = _OPS[kind](xt)
        dx = inner.gradient(y, xt, output_gradients=g2)
    dg = tape.gradient(dx, g2)
    _, slope = _reference64(kind, x)
    np.testing.assert_array_equal(dg.numpy(), slope.astype(np.float32))
