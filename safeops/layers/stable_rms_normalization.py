"""`StableRMSNormalization`: `keras.layers.RMSNormalization` without overflow of the squares."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.layers import _normalization as _norm

__all__ = ["StableRMSNormalization"]


@drop_in("keras.layers.RMSNormalization",
         "the mean square is taken of x / max|x| and rescaled: no overflow of x^2 (Keras: float32 "
         "rows with |x| > 1.8e19 give 0, float64 beyond 1.3e154)")
@keras.saving.register_keras_serializable(package="safeops")
class StableRMSNormalization(keras.layers.RMSNormalization):
    """Drop-in for `keras.layers.RMSNormalization`: ``x * rsqrt(mean(x^2) + eps) * scale``.

    Replaces `keras.layers.RMSNormalization` (same arguments, same weight
    ``scale``, an instance of it). Keras squares x directly: in float32 a row
    with an entry beyond ``sqrt(max) = 1.8e19`` has ``mean(x^2) = inf`` and
    normalizes to 0.

    Method: in at least float32 (float16/bfloat16 upcast, as Keras), with
    ``a = max|x|`` over the axes: for rows with ``a > 1``,
    ``inv = (1/a) rsqrt(mean((x/a)^2) + eps/a^2)`` (no overflow, ``eps/a^2``
    cannot overflow); otherwise Keras's ``rsqrt(mean(x^2) + eps)`` (no overflow
    possible). ``y = x * inv * scale``, rounded once to the compute dtype.

    Error bound: a few ulp of the working dtype per entry (the mean of n
    squares: ``log2(n) u`` with TF's tree sums), plus one rounding to the
    compute dtype; identical in value to Keras where Keras does not overflow.

    Gradient: automatic differentiation of the formula (the scale factor a
    enters only through the exact identity, so the gradient is that of
    ``x / sqrt(mean(x^2) + eps)``); finite for every finite x when eps > 0.

    dtypes: any floating dtype; output in the layer's compute dtype.

    Args:
      axis: int or list of ints to normalize over (default -1).
      epsilon: small float added to the mean square (default 1e-6).
      **kwargs: base layer arguments (``name``, ``dtype``...).

    Example:
      >>> so.layers.StableRMSNormalization()(np.array([[3e19, 4e19]], np.float32))
      array([[0.8485281, 1.1313709]], dtype=float32)   # Keras: [[0., 0.]]
    """

    def call(self, x):
        x = _norm.working(x)
        rank = x.shape.rank
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        axes = sorted(a % rank for a in axes)
        eps = tf.constant(self.epsilon, x.dtype)
        a = tf.stop_gradient(tf.reduce_max(tf.abs(x), axis=axes, keepdims=True))
        big = a > 1
        a_safe = tf.where(big, a, tf.ones_like(a))  # double where: no inf/NaN in either branch
        scaled = tf.math.rsqrt(tf.reduce_mean(tf.square(x / a_safe), axis=axes, keepdims=True)
                               + eps / tf.square(a_safe)) / a_safe
        x_small = tf.where(big, tf.zeros_like(x), x)
        plain = tf.math.rsqrt(tf.reduce_mean(tf.square(x_small), axis=axes, keepdims=True) + eps)
        y = x * tf.where(big, scaled, plain)
        y = y * _norm.broadcast_param(self.scale, x, axes)
        return tf.cast(y, self.compute_dtype)
