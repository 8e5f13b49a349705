"""`StableUnitNormalization`: `keras.layers.UnitNormalization` that survives float16."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.layers import _normalization as _norm

__all__ = ["StableUnitNormalization"]

_EPSILON = 1e-12  # Keras's lower bound on the norm (ops.normalize(..., epsilon=1e-12))


@drop_in("keras.layers.UnitNormalization",
         "float16: a zero vector gives 0 (Keras: NaN, 1/1e-12 overflows) and rows whose sum of "
         "squares overflows (|x| > 256) are normalized (Keras: 0)",
         "the norm is computed in at least float32 from x / max|x|: no overflow of the squares "
         "(Keras: float32 rows with |x| > 1.8e19 give 0)",
         "the gradient flowing back into a float16/bfloat16 input saturates at the dtype's "
         "largest finite value instead of becoming inf")
@keras.saving.register_keras_serializable(package="safeops")
class StableUnitNormalization(keras.layers.UnitNormalization):
    """Drop-in for `keras.layers.UnitNormalization`: ``x / max(||x||_2, 1e-12)`` in any dtype.

    Replaces `keras.layers.UnitNormalization` (same arguments, an instance of
    it). Keras computes ``x * min(rsqrt(sum(x^2)), 1e12)`` in the compute
    dtype: in float16 ``1e12`` is inf, so a zero vector gives ``0 * inf =
    NaN``, and ``sum(x^2)`` overflows as soon as ``|x| > 256`` (every output 0).

    Method: in at least float32 (float16/bfloat16 upcast), with ``a = max|x|``
    over the axes (0 replaced by 1: double where),
    ``||x|| = a * sqrt(sum((x/a)^2))`` (no overflow of the squares; Keras's
    float32 rows beyond 1.8e19 give 0), ``y = x / max(||x||, 1e-12)``
    rounded once to the compute dtype. A zero vector gives exactly 0.

    Error bound: ``y`` is within about ``(log2(n) + 3) u`` of the working
    dtype (relative, per entry) plus one rounding to the compute dtype.

    Gradient: that of ``x / max(||x||, 1e-12)``: ``(g - y (y . g)) / ||x||``
    away from 0; at a zero vector (norm below 1e-12) ``1e12 * g``. Flowing back
    into a float16/bfloat16 input, the gradient saturates at the dtype's
    largest finite value (65504 for float16) instead of becoming inf.

    dtypes: any floating dtype; output in the layer's compute dtype.

    Args:
      axis: int or list of ints to normalize over (default -1).
      **kwargs: base layer arguments (``name``, ``dtype``...).

    Example:
      >>> so.layers.StableUnitNormalization(dtype="float16")(np.zeros((1, 3), np.float16))
      array([[0., 0., 0.]], dtype=float16)         # Keras: [[nan, nan, nan]]
    """

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs)
        x = _norm.saturating_cast(inputs, tf.float32) if inputs.dtype in (
            tf.float16, tf.bfloat16) else inputs
        rank = x.shape.rank
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        axes = sorted(a % rank for a in axes)
        a = tf.stop_gradient(tf.reduce_max(tf.abs(x), axis=axes, keepdims=True))
        a = tf.where(a > 0, a, tf.ones_like(a))
        s = tf.reduce_sum(tf.square(x / a), axis=axes, keepdims=True)
        live = s > 0  # double where: sqrt's gradient at 0 is inf, and 0 * inf is NaN
        norm = tf.where(live, a * tf.sqrt(tf.where(live, s, tf.ones_like(s))), tf.zeros_like(s))
        y = x / tf.maximum(norm, tf.constant(_EPSILON, x.dtype))
        return tf.cast(y, self.compute_dtype)
