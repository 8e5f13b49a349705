"""The profiler's float64 kernel formulations (`safeops.doctor._kernels`) against the TF ops
they replace: forward values and gradients equal, or within the float64 rounding bound of
sums taken in another order."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops.doctor import _kernels


def _conv_grads(conv, x, k, g):
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        out = conv(x, k)
    return (out,) + tuple(tape.gradient(out, [x, k], output_gradients=g))


@pytest.mark.parametrize("kshape, padding", [
    ((3, 3, 4, 5), "SAME"), ((3, 3, 4, 5), "VALID"), ((2, 4, 3, 2), "SAME"),
    ((2, 4, 3, 2), "VALID"), ((1, 1, 3, 6), "SAME"), ((5, 3, 2, 3), "SAME"),
])
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_conv2d_equals_tf_conv2d_forward_and_gradients(kshape, padding, mode):
    """Forward and kernel gradient: TF's ops (equal); input gradient: TF's
    Conv2DBackpropInput within the bound of two float64 sums of K products in different
    orders, 2 gamma_K sum(|g| |w|) (the same convolution of |g| and |w|)."""
    rng = np.random.default_rng(sum(kshape))
    x = tf.constant(rng.standard_normal((3, 7, 6, kshape[2])))
    k = tf.constant(rng.standard_normal(kshape))
    out_shape = tf.nn.conv2d(x, k, 1, padding).shape
    g = tf.constant(rng.standard_normal(out_shape))
    ours = lambda a, b: _kernels.conv2d(a, b, padding)  # noqa: E731
    run = tf.function(_conv_grads, autograph=False) if mode == "graph" else _conv_grads
    out, dx, dk = run(ours, x, k, g)
    ref_out, ref_dx, ref_dk = _conv_grads(lambda a, b: tf.nn.conv2d(a, b, 1, padding), x, k, g)
    np.testing.assert_array_equal(out.numpy(), ref_out.numpy())
    np.testing.assert_array_equal(dk.numpy(), ref_dk.numpy())
    _, bound_dx, _ = _conv_grads(lambda a, b: tf.nn.conv2d(a, tf.abs(b), 1, padding), x, k, tf.abs(g))
    terms = kshape[0] * kshape[1] * kshape[3]
    u = 2.0 ** -53
    gamma = terms * u / (1 - terms * u)
    err = np.abs(dx.numpy() - ref_dx.numpy())
    assert np.all(err <= 2 * gamma * bound_dx.numpy())
    assert dx.dtype == tf.float64


def test_float64_conv2d_copy_uses_the_formulation_and_equals_keras():
    rng = np.random.default_rng(1)
    layer = keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
    reference = keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
    x = tf.constant(rng.standard_normal((2, 6, 6, 3)))
    layer.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    assert _kernels.use_fast_float64(layer) is layer and "convolution_op" in vars(layer)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = layer(x), reference(x)
        la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    ga = tape.gradient(la, [x] + layer.trainable_weights)
    gb = tape.gradient(lb, [x] + reference.trainable_weights)
    np.testing.assert_allclose(ga[0].numpy(), gb[0].numpy(), rtol=1e-13, atol=1e-13)
    for u, v in zip(ga[1:], gb[1:]):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
    for other in (keras.layers.Conv2D(4, 3, dtype="float32"),
                  keras.layers.Conv2D(4, 3, strides=2, dtype="float64"),
                  keras.layers.Conv2D(4, 3, dilation_rate=2, dtype="float64")):
        assert "convolution_op" not in vars(_kernels.use_fast_float64(other))
