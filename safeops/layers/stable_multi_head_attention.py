"""`StableMultiHeadAttention`: `keras.layers.MultiHeadAttention` whose softmax cannot make NaN."""

import keras
import tensorflow as tf
from keras import ops

from safeops._core.dtypes import HALF_DTYPES
from safeops._core.registry import drop_in
from safeops.layers.stable_softmax import StableSoftmax

__all__ = ["StableMultiHeadAttention"]


@drop_in("keras.layers.MultiHeadAttention",
         "a query row whose keys are all masked attends to nothing: weights 0, gradient 0 (Keras: "
         "uniform weights over the masked keys); a row of -inf scores gives 0 (Keras: NaN)",
         "float16/bfloat16: scores and softmax in float32, weights rounded once (Keras: q.k in "
         "the compute dtype, which overflows float16 beyond 65504)",
         "always the explicit score path (never the fused dot_product_attention kernel, which "
         "has no fully-masked-row rule); flash_attention=True raises ValueError")
@keras.saving.register_keras_serializable(package="safeops")
class StableMultiHeadAttention(keras.layers.MultiHeadAttention):
    """Drop-in for `keras.layers.MultiHeadAttention` whose attention weights are never NaN.

    Replaces `keras.layers.MultiHeadAttention` (same arguments, the same
    sublayers and weights in the same order, an instance of it). In Keras a
    query whose keys are all masked (a padding query under a padding mask, a
    fully masked row of a combined causal and padding mask) gets uniform
    weights over masked keys from the fused kernel, and scores that are -inf
    (an additive mask folded into the inputs, an overflow in float16) give
    NaN weights and NaN gradients for the whole batch.

    Method: the explicit path of Keras's `_compute_attention` (scaled q.k
    scores by the same einsum equations, the same mask: Keras masks of query,
    key and value, ``attention_mask``, ``use_causal_mask``), with the softmax
    replaced by `StableSoftmax` (`so.softmax`): masked and -inf scores weigh 0
    and a row with no live key gives 0 weights (its output is the output
    projection's bias). For float16/bfloat16 the scores and the softmax run in
    float32 and the weights are rounded once to the compute dtype; dropout
    and the weighted sum of values run in the compute dtype, as in Keras.

    Error bound: the attention weights are within 3 ulp of the exact softmax
    of the computed scores (`so.softmax`), plus one rounding to the compute
    dtype; the projections are Keras's own EinsumDense layers.

    Gradient: that of the explicit formula; 0 through a fully masked row's
    weights and through every masked or -inf score.

    dtypes: as Keras (any floating compute dtype).

    The constructor takes `keras.layers.MultiHeadAttention`'s arguments with
    Keras's meaning and defaults; ``flash_attention=True`` is rejected (the
    fused kernel has no rule for fully masked rows).

    Args:
      **kwargs: `keras.layers.MultiHeadAttention`'s arguments (num_heads,
        key_dim, value_dim, dropout, use_bias, ...) and the base layer
        arguments (``name``, ``dtype``...).

    Raises:
      ValueError: ``flash_attention=True``; otherwise as Keras.

    Example:
      >>> mha = so.layers.StableMultiHeadAttention(num_heads=2, key_dim=4)
      >>> x = np.ones((1, 3, 8), np.float32); no_keys = np.zeros((1, 3, 3), bool)
      >>> _, w = mha(x, x, attention_mask=no_keys, return_attention_scores=True)
      >>> float(np.abs(w).max())        # Keras: 1/3 on every masked key
      0.0
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("flash_attention"):
            raise ValueError("safeops.layers.StableMultiHeadAttention: argument "
                             "'flash_attention' must be None or False (the fused kernel has no "
                             "rule for fully masked rows)")
        super().__init__(*args, **kwargs)
        self._flash_attention = False  # also when enabled globally (keras.config)

    def _build_attention(self, rank):
        super()._build_attention(rank)
        norm_axes = self._softmax.axis
        half = keras.backend.standardize_dtype(self.compute_dtype) in ("float16", "bfloat16")
        self._softmax = StableSoftmax(axis=norm_axes,
                                      dtype="float32" if half else self.dtype_policy)

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, use_causal_mask=False):
        if use_causal_mask:
            causal = self._compute_causal_mask(query, value)
            attention_mask = causal if attention_mask is None else ops.logical_and(
                ops.cast(attention_mask, "bool"), causal)
        dtype = query.dtype
        if tf.as_dtype(dtype) in HALF_DTYPES:
            query, key = tf.cast(query, tf.float32), tf.cast(key, tf.float32)
        query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
        scores = ops.einsum(self._dot_product_equation, key, query)
        weights = ops.cast(self._masked_softmax(scores, attention_mask), dtype)
        dropped = weights
        if self._dropout > 0.0:
            dropped = self._dropout_layer(weights, training=training)
        output = ops.einsum(self._combine_equation, dropped, value)
        return output, weights
