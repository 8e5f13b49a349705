"""`StableGlobalAveragePooling1D`: masked mean over steps that is 0, not 0/0, when all are masked."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.layers import _normalization as _norm

__all__ = ["StableGlobalAveragePooling1D"]


@drop_in("keras.layers.GlobalAveragePooling1D",
         "a sequence whose steps are all masked gives 0 with gradient 0 (Keras: 0/0 = NaN)",
         "float16/bfloat16 are summed in float32 and rounded once (Keras: the sum in the compute "
         "dtype can overflow, e.g. 1000 steps of 100 in float16)")
@keras.saving.register_keras_serializable(package="safeops")
class StableGlobalAveragePooling1D(keras.layers.GlobalAveragePooling1D):
    """Drop-in for `keras.layers.GlobalAveragePooling1D` with a safe masked mean.

    Replaces `keras.layers.GlobalAveragePooling1D` (same arguments, an
    instance of it). With a mask Keras returns ``sum(x * m) / sum(m)``: a
    sequence that is all padding (``sum(m) = 0``) gives NaN, and NaN reaches
    every gradient of the batch.

    Method: in at least float32, ``sum(where(m, x, 0)) / max(sum(m), 1)``
    over the steps axis (without a mask: the mean), rounded once to the
    compute dtype. A fully masked sequence gives exactly 0.

    Error bound: the float32 (float64) sum of n steps, ``log2(n) u`` relative
    to ``sum |x|`` with TF's tree sums, plus one rounding to the compute dtype.

    Gradient: ``g * m / max(sum(m), 1)``: 0 for masked steps and for fully
    masked sequences.

    dtypes: any floating dtype; output in the layer's compute dtype.

    Args:
      data_format: "channels_last" (steps on axis 1) or "channels_first".
      keepdims: keep the steps axis with length 1.
      **kwargs: base layer arguments (``name``, ``dtype``...).

    Example:
      >>> x = np.ones((1, 3, 2), np.float32); m = np.zeros((1, 3), bool)
      >>> so.layers.StableGlobalAveragePooling1D()(x, mask=m)   # Keras: [[nan, nan]]
      array([[0., 0.]], dtype=float32)
    """

    def call(self, inputs, mask=None):
        x = _norm.working(inputs)
        steps_axis = 1 if self.data_format == "channels_last" else 2
        if mask is None:
            y = tf.reduce_mean(x, axis=steps_axis, keepdims=self.keepdims)
        else:
            m = tf.expand_dims(tf.cast(mask, tf.bool), 2 if self.data_format == "channels_last"
                               else 1)
            total = tf.reduce_sum(tf.where(m, x, tf.zeros_like(x)), axis=steps_axis,
                                  keepdims=self.keepdims)
            count = tf.reduce_sum(tf.cast(m, x.dtype), axis=steps_axis, keepdims=self.keepdims)
            y = total / tf.maximum(count, tf.ones_like(count))
        return tf.cast(y, self.compute_dtype)
