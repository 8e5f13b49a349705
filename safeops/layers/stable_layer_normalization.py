"""`StableLayerNormalization`: `keras.layers.LayerNormalization` with a shifted two-pass variance."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.layers import _normalization as _norm

__all__ = ["StableLayerNormalization"]


@drop_in("keras.layers.LayerNormalization",
         "variance by the shifted, corrected two-pass algorithm: the output error does not grow "
         "with |mean|/std (Keras at |mean|/std = 1e4 in float32: 2e-3; this layer: <= 1e-6)")
@keras.saving.register_keras_serializable(package="safeops")
class StableLayerNormalization(keras.layers.LayerNormalization):
    """Drop-in for `keras.layers.LayerNormalization` with an accurate variance.

    Replaces `keras.layers.LayerNormalization` (same arguments, same weights
    ``gamma``/``beta``, an instance of it). Keras computes the variance in one
    pass, ``E[x^2] - E[x]^2``, which cancels catastrophically when
    ``|mean| / std`` is large: in float32 the variance of a row with
    ``|mean|/std = 1e4`` is noise.

    Method: in at least float32 (float16/bfloat16 inputs are upcast, as Keras
    does), each row is shifted by one of its own entries, ``d = x - x_0``
    (exact by Sterbenz's lemma when the entries are within a factor 2 of each
    other, which is the case whenever ``|mean|/std`` is large), then the
    corrected two-pass algorithm runs on ``d`` (Chan, Golub & LeVeque 1983,
    eq. 1.7), and ``y = (x - mean) * rsqrt(var + epsilon) * gamma + beta``
    (centred before scaling). float64 inputs run in float64.

    Error bound: the relative error of ``var`` is at most ``n u + n^2 k^2 u^2``
    with ``k`` the condition number of the shifted data (about 1 after the
    shift, whatever ``|mean|/std`` was), so each output entry has absolute
    error about ``n u`` at worst (``log2(n) u`` in practice with TF's tree
    sums), independent of ``|mean|/std``: <= 1e-6 at n = 1024, ``|mean|/std =
    1e4`` in float32 (Keras: 2e-3), and under ``mixed_float16`` /
    ``mixed_bfloat16`` within 1 ulp of the output format.

    Gradient: automatic differentiation of the formula above (the shift has
    zero gradient, exactly as in the mathematical identity); finite wherever
    ``var + epsilon > 0``.

    dtypes: any floating dtype; output in the layer's compute dtype.

    Args:
      axis: int or list of ints to normalize over (default -1).
      epsilon: small float added to the variance (default 1e-3).
      **kwargs: Keras's other arguments (center, scale, rms_scaling, beta/gamma
        initializers, regularizers and constraints, with Keras's meaning and
        defaults) and the base layer arguments (``name``, ``dtype``...).

    Raises:
      TypeError: if `axis` is not an int or a list of ints (as Keras).

    Example:
      >>> x = np.float32(1e6) + np.array([[-1.0, 0.0, 1.0]], np.float32)
      >>> so.layers.StableLayerNormalization(epsilon=0.0)(x)   # Keras: [[-1.125, 0., 1.25]]
      array([[-1.2247448,  0.       ,  1.2247448]], dtype=float32)
    """

    def call(self, inputs):
        x = _norm.working(inputs)
        rank = x.shape.rank
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        axes = sorted(a % rank for a in axes)
        c, _, var = _norm.centred_moments(x, axes)
        inv = tf.math.rsqrt(var + tf.constant(self.epsilon, x.dtype))
        if self.rms_scaling:  # Keras's (deprecated) rms_scaling: x * rsqrt(var), not centred
            y = x * inv
        else:
            y = c * inv
        if self.gamma is not None:
            y = y * _norm.broadcast_param(self.gamma, x, axes)
        if self.beta is not None and not self.rms_scaling:
            y = y + _norm.broadcast_param(self.beta, x, axes)
        return tf.cast(y, self.compute_dtype)
