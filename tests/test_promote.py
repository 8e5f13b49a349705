"""Tests for safeops.promote: run a function in a wider dtype, return in the caller's."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing


def _seed_loss(x):
    return ((x * 1e10 + 1.0) - 1e10) ** 2


def _value_and_grad(fn, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y, tape.gradient(y, x)


def test_seed_loss_is_exact_and_naive_float32_fails():
    # Exact: ((1e10 + 1) - 1e10)**2 = 1, d/dx = 2 * 1 * 1e10 = 2e10 (float32(2e10) after rounding).
    x = tf.constant(1.0, tf.float32)
    naive_v, naive_g = _value_and_grad(_seed_loss, x)
    assert float(naive_v) == 0.0 and float(naive_g) == 0.0  # the failure being fixed
    value, grad = _value_and_grad(so.promote(_seed_loss), x)
    assert value.dtype == tf.float32 and grad.dtype == tf.float32
    assert float(value) == 1.0
    assert grad.numpy() == np.float32(2e10)


def test_execution_modes():
    def fn(x):
        return so.promote(_seed_loss)(x)

    def value_and_grad(x):
        return _value_and_grad(fn, x)

    results = testing.run_modes(value_and_grad, tf.constant(1.0))
    for mode, (v, g) in results.items():
        assert v == 1.0, mode
        assert g == np.float32(2e10), mode


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_matches_reference(dtype):
    # log(sum(exp(x))) evaluated in float64 then rounded once: the float64 error (~n * 2**-53
    # relative) is far below half an ulp of `dtype`, so the result is within 1 ulp of the
    # correctly rounded mpmath value (0.5 ulp from the final rounding + the float64 error).
    x_np = np.random.default_rng(3).uniform(-8, 8, 64)
    x = tf.cast(tf.constant(x_np), dtype)
    fn = so.promote(lambda t: tf.reduce_logsumexp(t))
    out = fn(x)
    assert out.dtype == dtype
    xs = tf.cast(x, tf.float64).numpy()
    with mpmath.workdps(60):
        exact = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in xs))
    ref = testing.round_to_dtype(np.array([exact], dtype=object), dtype)[0]
    assert testing.ulp_distance(out.numpy(), ref, dtype) <= 1


def test_gradient_matches_finite_differences():
    fn = so.promote(lambda x, y: tf.sin(x) * tf.exp(y), dtype=tf.float64)
    assert testing.check_gradients(fn, [0.3, -1.2], [0.5, 2.0]) < 1e-7


def test_decorator_forms_nested_structures_and_kwargs():
    @so.promote(dtype=tf.float32)
    def f(d, scale=1.0):
        assert d["a"].dtype == tf.float32 and d["b"][0].dtype == tf.float32
        assert d["i"].dtype == tf.int32  # non-floating tensors pass unchanged
        return {"sum": (d["a"] + d["b"][0]) * scale, "count": d["i"]}

    out = f({"a": tf.constant([1.0], tf.bfloat16), "b": [tf.constant([2.0], tf.bfloat16)],
             "i": tf.constant(3)}, scale=2.0)
    assert out["sum"].dtype == tf.bfloat16 and float(out["sum"][0]) == 6.0
    assert out["count"].dtype == tf.int32


def test_mixed_input_dtypes_return_the_widest():
    f = so.promote(lambda a, b: a + tf.cast(b, a.dtype))
    out = f(tf.constant(1.0, tf.float16), tf.constant(2.0, tf.float32))
    assert out.dtype == tf.float32


def test_float64_inputs_unchanged_and_no_float_inputs():
    x = tf.constant([1.0, 2.0], tf.float64)
    np.testing.assert_array_equal(so.promote(tf.exp)(x).numpy(), np.exp([1.0, 2.0]))
    assert so.promote(lambda n: n + 1)(tf.constant(1)).dtype == tf.int32


def test_keeps_mixed_precision_critical_path_in_float32():
    # float16 softmax of large logits overflows exp; promoted to float32 it is exact enough.
    logits = tf.constant([11.0, 12.0, 13.0], tf.float16)
    naive = tf.exp(logits) / tf.reduce_sum(tf.exp(logits))
    assert not np.all(np.isfinite(naive.numpy().astype(np.float64)))
    safe = so.promote(lambda z: tf.exp(z) / tf.reduce_sum(tf.exp(z)), dtype=tf.float32)(logits)
    assert safe.dtype == tf.float16
    ref = testing.reference(lambda a, b, c: mpmath.exp(c) / (mpmath.exp(a) + mpmath.exp(b)
                                                            + mpmath.exp(c)),
                            11.0, 12.0, 13.0, dtype="float16")
    assert testing.ulp_distance(safe.numpy()[2], ref, "float16") <= 1


def test_bad_input_raises():
    with pytest.raises(TypeError, match="safeops.promote.*'dtype'"):
        so.promote(lambda x: x, dtype=tf.int32)
    with pytest.raises(TypeError, match="safeops.promote.*'dtype'"):
        so.promote(dtype="not-a-dtype")
    with pytest.raises(TypeError, match="safeops.promote.*'fn'"):
        so.promote(3)
