"""`CompensatedDense`: `keras.layers.Dense` whose matmul accumulates with `so.matmul`."""

import keras
import tensorflow as tf

from safeops.dot import matmul

__all__ = ["CompensatedDense"]


@keras.saving.register_keras_serializable(package="safeops")
class CompensatedDense(keras.layers.Dense):
    """Drop-in for `keras.layers.Dense` with a compensated matmul (`so.matmul`).

    Replaces `keras.layers.Dense` (same arguments and weights, an instance of
    it): ``activation(matmul(inputs, kernel) + bias)`` where the matmul is
    `so.matmul` (inputs of any rank >= 2 are flattened to 2-D around it).

    Method and error bound: those of `so.matmul` -- float16/bfloat16 accumulate
    in float32, float32 in float64, float64 with error-free transformations,
    each output rounded once: ``|err| <= u |x.w| + O(n u_acc) sum |x_i w_i|``
    (within 1 ulp unless the dot product's condition number exceeds about
    1/(n u_acc)). The bias add and activation are Keras's.

    Gradient: that of `so.matmul` (``g @ kernel^T`` and ``inputs^T @ g``,
    accumulated the same way), plus Keras's for bias and activation. Quantized
    modes (int8, float8...) fall back to Keras's own Dense kernels.

    dtypes: the layer's compute dtype (mixed precision: float16 inputs and
    kernel, accumulated in float32).

    Args:
      units: as `keras.layers.Dense`; so are all the other arguments
        (``activation``, ``use_bias``, initializers, regularizers, constraints,
        ``lora_rank``...).
      **kwargs: passed to `keras.layers.Dense`.

    Raises:
      ValueError: as `keras.layers.Dense` (e.g. non-positive units).

    Example:
      >>> layer = so.layers.CompensatedDense(1, use_bias=False,
      ...                                    kernel_initializer="ones")
      >>> layer(np.array([[1e8, 1.0, -1e8]], np.float32))   # Dense: 0.0
      array([[1.]], dtype=float32)
    """

    def call(self, inputs, training=None):
        if getattr(self, "quantization_mode", None):
            return super().call(inputs, training=training)
        kernel = self.kernel
        x = tf.convert_to_tensor(inputs)
        kernel = tf.cast(kernel, x.dtype)
        if x.shape.rank == 2:
            y = matmul(x, kernel)
        else:
            lead = tf.shape(x)[:-1]
            y = matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), kernel)
            y = tf.reshape(y, tf.concat([lead, [tf.shape(kernel)[-1]]], 0))
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y
