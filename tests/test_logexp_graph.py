"""so.softplus and so.log_sigmoid inside graphs on the CPU: the fused kernels
(`SafeopsLogistic` forward, `SafeopsLogisticGrad` backward) against float64 and mpmath
references over a dense float32 sweep and the edge values, against the pure-TF formula
(`so.native.disabled()`) and under XLA (which takes the pure-TF path)."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing

_TINY = np.finfo(np.float32).tiny
# the documented float32 bounds inside graphs: the fused kernel's value within the module's
# 3 ulp; the pure-TF formula (TF's float32 log1p kernel) within 5; gradients within 4 ulp
_VALUE_ULP = 3
_TF_VALUE_ULP = 5
_GRAD_ULP = 4

_OPS = {"softplus": so.softplus, "log_sigmoid": so.log_sigmoid}


def _reference64(kind, x):
    """value and gradient in float64 (~1e-16 relative: exact at float32's precision)."""
    d = x.astype(np.float64)
    sign = 1.0 if kind == "softplus" else -1.0
    t = sign * d
    with np.errstate(over="ignore"):
        value = sign * np.logaddexp(0.0, t)
        e = np.exp(-np.abs(t))
        grad = np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return value, grad


def _mp_reference(kind, x, dtype="float32"):
    sign = 1 if kind == "softplus" else -1
    value = testing.reference(lambda v: sign * mpmath.log1p(mpmath.exp(sign * v)), x,
                              dtype=dtype)
    grad = testing.reference(lambda v: 1 / (1 + mpmath.exp(-sign * v)), x, dtype=dtype)
    return value, grad


def _sweep():
    """Every 2039th float32 in [-104, 89] (~1.1M values, all binades), bit-uniform samples
    of the whole range, and the edges; subnormal inputs left out (TF's CPU kernels read
    them as 0)."""
    lo = int(np.float32(-104.0).view(np.uint32)) & 0x7FFFFFFF
    hi = int(np.float32(89.0).view(np.uint32))
    pos = np.arange(0, hi + 1, 2039, dtype=np.uint32)
    neg = np.arange(0, lo + 1, 2039, dtype=np.uint32) | np.uint32(0x80000000)
    x = np.concatenate([pos.view(np.float32), neg.view(np.float32),
                        testing.sample_floats("float32", 20000, -np.inf, np.inf, seed=5),
                        np.float32(testing.special_floats("float32", (14.0, 88.7, 104.0)))])
    return x[(np.abs(x) >= _TINY) | (x == 0) | ~np.isfinite(x)]


def _value_and_grad(fn):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x)
    return run


def _graph(kind, x):
    return [t.numpy() for t in tf.function(_value_and_grad(_OPS[kind]))(tf.constant(x))]


def _checked(x, ref):
    """Where the reference is a normal float32 (TF's CPU kernels flush subnormals)."""
    r = np.abs(ref)
    return ((r >= _TINY) | (r == 0)) & np.isfinite(x)


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    if so.native.library() is None:
        pytest.skip(f"kernels unavailable: {so.native.status()['error']}")


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_graph_uses_the_fused_kernels(kind):
    x = tf.TensorSpec([None], tf.float32)
    graph = tf.function(_value_and_grad(_OPS[kind])).get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    assert {"SafeopsLogistic", "SafeopsLogisticGrad"} <= types
    assert not types & {"Exp", "Log1p"}  # none of the pure-TF formula's kernels
    with so.native.disabled():
        graph = tf.function(_value_and_grad(_OPS[kind])).get_concrete_function(x).graph
    assert not {op.type for op in graph.get_operations()} & {"SafeopsLogistic",
                                                            "SafeopsLogisticGrad"}


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_matches_reference_dense_sweep(kind):
    x = _sweep()
    value, grad = _graph(kind, x)
    with so.native.disabled():
        tf_value, tf_grad = _graph(kind, x)
    ref_value, ref_grad = _reference64(kind, x)
    for got, ref, bound in ((value, ref_value, _VALUE_ULP), (grad, ref_grad, _GRAD_ULP),
                            (tf_value, ref_value, _TF_VALUE_ULP), (tf_grad, ref_grad, _GRAD_ULP)):
        keep = _checked(x, ref)
        assert np.max(testing.ulp_distance(got[keep], ref[keep], "float32")) <= bound
    # the kernel and the pure-TF formula agree within the wider of the two bounds
    for got, other, ref in ((value, tf_value, ref_value), (grad, tf_grad, ref_grad)):
        keep = _checked(x, ref)
        assert np.max(testing.ulp_distance(got[keep], other[keep], "float32")) <= _TF_VALUE_ULP


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_matches_mpmath(kind):
    x = testing.sample_floats("float32", 1500, -104.0, 89.0, seed=17)
    x = x[np.abs(x) >= _TINY]
    value, grad = _graph(kind, x)
    ref_value, ref_grad = _mp_reference(kind, x)
    for got, ref, bound in ((value, ref_value, _VALUE_ULP), (grad, ref_grad, _GRAD_ULP)):
        keep = _checked(x, ref.astype(np.float64))
        assert np.max(testing.ulp_distance(got[keep], ref[keep], "float32")) <= bound


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_edges(dtype):
    x = tf.constant([np.nan, np.inf, -np.inf, 0.0, -0.0, 200.0, -200.0], dtype)
    sp, dsp = _graph_dtype("softplus", x)
    ls, dls = _graph_dtype("log_sigmoid", x)
    ln2 = dtype.as_numpy_dtype(np.log(2.0))
    assert np.isnan(sp[0]) and np.isnan(dsp[0]) and np.isnan(ls[0]) and np.isnan(dls[0])
    assert list(sp[1:]) == [np.inf, 0.0, ln2, ln2, 200.0, sp[6]]
    assert list(ls[1:]) == [0.0, -np.inf, -ln2, -ln2, ls[5], -200.0]
    # exactly 1 and 0 at +-inf (and where exp(-|x|) underflows), exactly 1/2 at 0
    assert list(dsp[1:]) == [1.0, 0.0, 0.5, 0.5, 1.0, dsp[6]]
    assert list(dls[1:]) == [0.0, 1.0, 0.5, 0.5, dls[5], 1.0]
    if dtype == tf.float32:  # exp(-200) flushes to 0 in float32
        assert sp[6] == 0.0 and ls[5] == 0.0 and dsp[6] == 0.0 and dls[5] == 0.0
    else:  # e^-200, within the bound
        e = np.exp(-200.0)
        for got in (sp[6], -ls[5], dsp[6], dls[5]):
            assert testing.ulp_distance(got, e, "float64") <= _VALUE_ULP


def _graph_dtype(kind, x):
    return [t.numpy() for t in tf.function(_value_and_grad(_OPS[kind]))(x)]


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_float64_matches_reference(kind):
    x = np.concatenate([testing.sample_floats("float64", 3000, -750.0, 710.0, seed=3),
                        np.linspace(-40, 40, 2001)])
    x = x[np.abs(x) >= np.finfo(np.float64).tiny]
    value, grad = _graph_dtype(kind, tf.constant(x))
    ref_value, ref_grad = _mp_reference(kind, x, "float64")
    for got, ref in ((value, ref_value), (grad, ref_grad)):
        keep = np.abs(ref) >= np.finfo(np.float64).tiny
        assert np.max(testing.ulp_distance(got[keep], ref[keep], "float64")) <= _VALUE_ULP


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("kind", sorted(_OPS))
def test_half_dtypes_through_the_float32_kernel(kind, dtype):
    x = testing.sample_floats(dtype.name, 3000, -20.0, 20.0, seed=9)
    xt = tf.constant(x.astype(np.float32), dtype)
    value, grad = _graph_dtype(kind, xt)
    assert value.dtype == dtype.as_numpy_dtype and grad.dtype == dtype.as_numpy_dtype
    ref_value, ref_grad = _reference64(kind, np.asarray(xt.numpy(), np.float32))
    tiny = float(tf.experimental.numpy.finfo(dtype).tiny)
    for got, ref in ((value, ref_value), (grad, ref_grad)):
        keep = np.abs(ref) >= tiny
        # float32 within 4 ulp, rounded once to the half dtype: within 1 ulp there
        assert np.max(testing.ulp_distance(got[keep], ref[keep], dtype.name)) <= 1


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_execution_modes(kind):
    x = _sweep()[::7]
    modes = testing.run_modes(_value_and_grad(_OPS[kind]), tf.constant(x))
    ref_value, ref_grad = _reference64(kind, x)
    for mode, (value, grad) in modes.items():
        # the kernel in a graph (log_sigmoid: eagerly too; softplus eagerly: one precision
        # up, <= 1 ulp); under XLA the formula with XLA's log1p
        bound = _VALUE_ULP if mode != "jit_compile" else _TF_VALUE_ULP
        for got, ref, bound in ((value, ref_value, bound), (grad, ref_grad, _GRAD_ULP)):
            keep = _checked(x, ref)
            assert np.max(testing.ulp_distance(got[keep], ref[keep], "float32")) <= bound, mode


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_second_derivative(kind):
    x = tf.constant(np.linspace(-30, 30, 121), tf.float64)

    @tf.function
    def second(v):
        with tf.GradientTape() as outer:
            outer.watch(v)
            with tf.GradientTape() as inner:
                inner.watch(v)
                y = _OPS[kind](v)
            g = inner.gradient(y, v)
        return outer.gradient(g, v)

    sign = 1 if kind == "softplus" else -1
    want = testing.reference(lambda v: sign * mpmath.exp(-v) / (1 + mpmath.exp(-v)) ** 2,
                             x.numpy(), dtype="float64")
    # no bound is documented for second derivatives: a few float64 roundings here
    np.testing.assert_allclose(second(x).numpy(), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", sorted(_OPS))
def test_bits_do_not_depend_on_position_or_size(kind):
    # each element is computed in a full packet (the tail padded): the same bits for an
    # element wherever it sits, in a tensor split across threads or in a short tail
    x = testing.sample_floats("float32", 200003, -30.0, 30.0, seed=23)
    x = x[np.abs(x) >= _TINY]
    value, grad = _graph(kind, x)
    for start, stop in ((0, 1), (3, 20), (5, 38), (7, 10000), (1, len(x))):
        part_value, part_grad = _graph(kind, x[start:stop])
        np.testing.assert_array_equal(part_value, value[start:stop])
        np.testing.assert_array_equal(part_grad, grad[start:stop])
