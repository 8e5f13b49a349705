"""`StableGroupNormalization`: `keras.layers.GroupNormalization` centred before scaling."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.layers import _normalization as _norm

__all__ = ["StableGroupNormalization"]


@drop_in("keras.layers.GroupNormalization",
         "(x - mean) * rsqrt(var + eps) with a shifted two-pass variance: the output error does "
         "not grow with |mean|/std (Keras's x * inv - mean * inv loses log2(|mean|/std) bits)")
@keras.saving.register_keras_serializable(package="safeops")
class StableGroupNormalization(keras.layers.GroupNormalization):
    """Drop-in for `keras.layers.GroupNormalization` with an output error independent of the mean.

    Replaces `keras.layers.GroupNormalization` (same arguments, same weights,
    an instance of it). Keras evaluates ``x * inv + (beta - mean * inv)``: two
    terms of size ``|mean| / std`` cancel, so the output loses
    ``log2(|mean|/std)`` bits (float32 at ``|mean|/std = 1e4``: ~1e-3 absolute).

    Method: per group, in at least float32 (float16/bfloat16 upcast, as
    Keras): `centred_moments` (each group shifted by one of its own entries,
    then the corrected two-pass algorithm), ``y = (x - mean) * rsqrt(var +
    epsilon) * gamma + beta``, rounded once to the compute dtype.

    Error bound: about ``log2(n) u`` of the working dtype per entry (n: the
    group size) plus one rounding to the compute dtype, whatever
    ``|mean|/std``.

    Gradient: automatic differentiation of the formula (the shift carries no
    gradient); finite wherever ``var + epsilon > 0``.

    dtypes: any floating dtype; output in the layer's compute dtype.

    The constructor takes `keras.layers.GroupNormalization`'s arguments (groups,
    axis, epsilon, center, scale, beta/gamma initializers, regularizers and
    constraints) with Keras's meaning and defaults.

    Args:
      **kwargs: Keras's arguments above and the base layer arguments (``name``,
        ``dtype``...).

    Raises:
      ValueError: groups that do not divide the channels (as Keras, at build).
    """

    def call(self, inputs):
        x = _norm.working(inputs)
        rank = x.shape.rank
        axis = self.axis % rank
        grouped = self._reshape_into_groups(x)  # (..., groups, channels/groups, ...) at axis
        reduce_axes = [a for a in range(1, rank + 1) if a != axis]
        c, _, var = _norm.centred_moments(grouped, reduce_axes)
        y = c * tf.math.rsqrt(var + tf.constant(self.epsilon, x.dtype))
        y = tf.reshape(y, tf.shape(x))
        if self.gamma is not None:
            y = y * _norm.broadcast_param(self.gamma, x, [axis])
        if self.beta is not None:
            y = y + _norm.broadcast_param(self.beta, x, [axis])
        return tf.cast(y, self.compute_dtype)
