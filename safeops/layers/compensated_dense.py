"""`CompensatedDense`: `keras.layers.Dense` whose matmul accumulates with `so.matmul`."""

import keras
import tensorflow as tf

from safeops._core.dtypes import accumulation_dtype
from safeops._core.registry import drop_in
from safeops.dot import matmul

__all__ = ["CompensatedDense"]


@drop_in("keras.layers.Dense",
         "the matmul accumulates wide (float32 in float64, float16/bfloat16 in float32) and "
         "rounds once, dense and SparseTensor inputs alike: within 1 ulp where Dense's float32 "
         "matmul can lose every digit",
         "quantize() is allowed (Keras's Dense.quantize refuses subclasses) and then runs "
         "Keras's quantized Dense kernels, uncompensated",
         "the constructor's lora_alpha survives build (Dense.build resets it to lora_rank)",
         name="safeops.layers.CompensatedDense")
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
    accumulated the same way), plus Keras's for bias and activation.

    Inputs as Dense takes them: integer inputs are cast to the result dtype of
    Keras's matmul (the compute dtype: an int32 input gives a float32 output
    under the float32 policy); a `tf.SparseTensor` input is multiplied with
    `tf.sparse.sparse_dense_matmul` in the accumulation dtype (float32 ->
    float64, float16/bfloat16 -> float32) and rounded once, the same error as
    the dense path. LoRA (``lora_rank``, ``lora_alpha``, `enable_lora`) is
    Dense's (the kernel property holds the merged low-rank update), except
    that the constructor's ``lora_alpha`` survives `build` (Keras 3.15's
    Dense.build resets it to ``lora_rank``, scaling the update by 1).

    Quantization: `quantize` accepts every mode Dense's does (``"int8"``,
    ``"int4"``, ``"float8"``; ``"gptq"``/``"awq"`` with their configs), and
    ``model.quantize`` quantizes the layer. Keras's `Dense.quantize` refuses
    subclasses because a subclass's `call` would be bypassed by the quantized
    kernels; here that is the documented behaviour: a quantized layer runs
    Keras's quantized Dense kernels (int8/int4 products accumulate exactly in
    int32; float8 as Keras), not `so.matmul`.

    dtypes: the layer's compute dtype (mixed precision: float16 inputs and
    kernel, accumulated in float32).

    Args:
      units: as `keras.layers.Dense`; so are all the other arguments
        (``activation``, ``use_bias``, initializers, regularizers, constraints,
        ``lora_rank``, ``lora_alpha``).
      **kwargs: passed to `keras.layers.Dense`.

    Raises:
      ValueError: as `keras.layers.Dense` (e.g. non-positive units, an unknown
        quantization mode).

    Example:
      >>> layer = so.layers.CompensatedDense(1, use_bias=False,
      ...                                    kernel_initializer="ones")
      >>> layer(np.array([[1e8, 1.0, -1e8]], np.float32))   # Dense: 0.0
      array([[1.]], dtype=float32)
    """

    def build(self, input_shape):
        # Dense.build enables LoRA with enable_lora(lora_rank), which resets lora_alpha
        # to lora_rank: the constructor's lora_alpha would be lost (scale alpha / rank = 1).
        alpha = self.lora_alpha
        super().build(input_shape)
        if self.lora_enabled and alpha is not None:
            self.lora_alpha = alpha

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantize the kernel as `keras.layers.Dense.quantize` does (every mode it has).

        Args:
          mode: ``"int8"``, ``"int4"``, ``"float8"``, ``"gptq"`` or ``"awq"``.
          type_check: accepted for Keras's signature; the layer is always quantized.
          config: a `keras.quantizers.QuantizationConfig`, as Dense's.
        """
        del type_check  # Dense refuses subclasses; this one runs Dense's quantized kernels.
        return super().quantize(mode, type_check=False, config=config)

    def call(self, inputs, training=None):
        if getattr(self, "quantization_mode", None):
            return super().call(inputs, training=training)
        kernel = self.kernel
        if isinstance(inputs, tf.SparseTensor):
            y = self._sparse_matmul(inputs, kernel)
        else:
            x = tf.convert_to_tensor(inputs)
            if not x.dtype.is_floating:
                x = tf.cast(x, keras.backend.result_type(x.dtype, kernel.dtype))
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

    @staticmethod
    def _sparse_matmul(sp, kernel):
        kernel = tf.convert_to_tensor(kernel)
        dtype = tf.as_dtype(keras.backend.result_type(sp.dtype, kernel.dtype))
        wide = accumulation_dtype(dtype)
        values = tf.cast(sp.values, wide)
        if sp.shape.rank == 2:
            y = tf.sparse.sparse_dense_matmul(tf.SparseTensor(sp.indices, values, sp.dense_shape),
                                              tf.cast(kernel, wide))
            return tf.cast(y, dtype)
        lead = sp.dense_shape[:-1]
        flat = tf.sparse.reshape(tf.SparseTensor(sp.indices, values, sp.dense_shape),
                                 tf.stack([tf.reduce_prod(lead), sp.dense_shape[-1]]))
        y = tf.sparse.sparse_dense_matmul(flat, tf.cast(kernel, wide))
        return tf.cast(tf.reshape(y, tf.concat([tf.cast(lead, tf.int32),
                                                [tf.shape(kernel)[-1]]], 0)), dtype)
