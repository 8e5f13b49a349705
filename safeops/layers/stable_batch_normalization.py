"""`StableBatchNormalization`: `keras.layers.BatchNormalization` centred before scaling."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.layers import _normalization as _norm

__all__ = ["StableBatchNormalization"]


@drop_in("keras.layers.BatchNormalization",
         "(x - mean) * rsqrt(var + eps) with batch statistics from a shifted two-pass variance: "
         "the output error does not grow with |mean|/std (Keras's x * inv + (beta - mean * inv) "
         "loses log2(|mean|/std) bits)",
         "renorm=True or synchronized=True: Keras's own computation (no difference)")
@keras.saving.register_keras_serializable(package="safeops")
class StableBatchNormalization(keras.layers.BatchNormalization):
    """Drop-in for `keras.layers.BatchNormalization` with an output error independent of the mean.

    Replaces `keras.layers.BatchNormalization` (same arguments, the same four
    weights in the same order, an instance of it). Keras normalizes with
    `tf.nn.batch_normalization`, ``x * inv + (beta - mean * inv)``: two terms
    of size ``|mean| / std`` cancel, so the output loses ``log2(|mean|/std)``
    bits (float32 at ``|mean|/std = 1e4``: ~1e-3 absolute).

    Method: in at least float32 (float16/bfloat16 upcast, as Keras). Training:
    batch statistics by `centred_moments` (shifted corrected two-pass; with a
    mask, over the unmasked steps, an all-masked batch giving mean 0 and
    variance 0), moving statistics updated as Keras does; inference: the
    moving statistics. Then ``y = (x - mean) * rsqrt(var + epsilon) * gamma +
    beta``, rounded once to the compute dtype. With ``renorm=True`` or
    ``synchronized=True`` Keras's own call runs unchanged.

    Error bound: about ``log2(n) u`` of the working dtype per entry plus one
    rounding to the compute dtype, whatever ``|mean|/std`` (n: entries per
    channel in the batch).

    Gradient: automatic differentiation of the formula (batch statistics
    included in training, as Keras); finite wherever ``var + epsilon > 0``.

    dtypes: any floating dtype; output in the layer's compute dtype.

    The constructor takes `keras.layers.BatchNormalization`'s arguments (axis,
    momentum, epsilon, center, scale, the initializers, regularizers and
    constraints, synchronized, renorm, renorm_clipping, renorm_momentum) with
    Keras's meaning and defaults.

    Args:
      **kwargs: Keras's arguments above and the base layer arguments (``name``,
        ``dtype``...).

    Raises:
      ValueError: a mask whose rank is not the input rank minus one (as Keras).
    """

    def call(self, inputs, training=None, mask=None):
        if self.renorm or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError("safeops.layers.StableBatchNormalization: the mask provided should "
                             "be one dimension less than the inputs. Received: "
                             f"mask.shape={mask.shape}, inputs.shape={inputs.shape}")
        x = _norm.working(inputs)
        rank = x.shape.rank
        axis = self.axis % rank
        axes = [a for a in range(rank) if a != axis]
        if training and self.trainable:
            if mask is None:
                c, mean, var = _norm.centred_moments(x, axes)
            else:
                weights = tf.expand_dims(tf.cast(mask, x.dtype), -1)
                c, mean, var = _norm.masked_centred_moments(x, weights, axes)
            momentum = tf.constant(self.momentum, x.dtype)
            for variable, value in ((self.moving_mean, mean), (self.moving_variance, var)):
                old = tf.cast(variable, x.dtype)
                new = old * momentum + tf.reshape(value, [-1]) * (1.0 - momentum)
                variable.assign(tf.cast(new, variable.dtype))
        else:
            var = _norm.broadcast_param(self.moving_variance, x, [axis])
            c = x - _norm.broadcast_param(self.moving_mean, x, [axis])
        y = c * tf.math.rsqrt(var + tf.constant(self.epsilon, x.dtype))
        if self.gamma is not None:
            y = y * _norm.broadcast_param(self.gamma, x, [axis])
        if self.beta is not None:
            y = y + _norm.broadcast_param(self.beta, x, [axis])
        return tf.cast(y, self.compute_dtype)
