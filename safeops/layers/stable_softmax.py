"""`StableSoftmax`: `keras.layers.Softmax` that never returns NaN for fully masked rows."""

import keras
import tensorflow as tf

__all__ = ["StableSoftmax", "stable_softmax"]

_HALF = (tf.float16, tf.bfloat16)


def _softmax(x, axis, mask=None):
    """Softmax over `axis` (int or list) in at least float32; fully masked rows -> 0."""
    out_dtype = x.dtype
    if x.dtype in _HALF:
        x = tf.cast(x, tf.float32)
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
        if mask.dtype != tf.bool:
            mask = mask > tf.cast(0.5, mask.dtype)
        x = tf.where(mask, x, tf.constant(float("-inf"), x.dtype))
    axes = [axis] if isinstance(axis, int) else list(axis)
    m = tf.reduce_max(x, axis=axes, keepdims=True)
    dead = tf.math.is_inf(m) & (m < 0)  # every entry -inf (or masked): output 0
    # -inf -> the lowest finite value: exp(lowest - m) is 0 for any finite m, and the
    # gradient w.r.t. a -inf entry is 0 (maximum's select), never NaN.
    x = tf.maximum(x, tf.constant(x.dtype.min, x.dtype))
    if len(axes) == 1:
        y = tf.nn.softmax(x, axis=axes[0])
    else:
        z = x - tf.stop_gradient(tf.reduce_max(x, axis=axes, keepdims=True))
        e = tf.exp(z)
        y = e / tf.reduce_sum(e, axis=axes, keepdims=True)
    y = tf.where(dead, tf.zeros_like(y), y)
    return tf.cast(y, out_dtype)


@keras.saving.register_keras_serializable(package="safeops")
def stable_softmax(x, axis=-1):
    """Softmax activation that maps fully masked (all -inf) rows to 0 instead of NaN.

    Replaces `keras.activations.softmax` (used by `wrap_model` for
    ``activation="softmax"`` inside Dense/Conv layers). Method, bound and
    gradient: as `StableSoftmax`.

    Args:
      x: float tensor of logits.
      axis: int or list of ints, the softmax axis (default -1).

    Returns:
      A tensor of x's shape and dtype.

    Example:
      >>> so.layers.stable_softmax(tf.constant([[-np.inf, -np.inf]]))
      <tf.Tensor: shape=(1, 2), dtype=float32, numpy=array([[0., 0.]], dtype=float32)>
    """
    return _softmax(tf.convert_to_tensor(x), axis)


@keras.saving.register_keras_serializable(package="safeops")
class StableSoftmax(keras.layers.Softmax):
    """Drop-in for `keras.layers.Softmax`: mask-aware, fully masked rows give zeros.

    Replaces `keras.layers.Softmax` (same arguments, an instance of it).
    `tf.nn.softmax` of a row that is all -inf is NaN, and Keras's Softmax turns
    masked entries into -1e9, so a row of -inf logits (e.g. an additive -inf
    attention mask) still gives NaN.

    Method: masked entries (``mask`` False or <= 0.5) become -inf; the row
    maximum ``m`` marks fully masked rows (``m = -inf``); -inf entries are
    raised to the lowest finite value (so ``exp(x - m)`` underflows to exactly
    0), the fused `tf.nn.softmax` runs, and fully masked rows are set to 0.
    float16/bfloat16 inputs (mixed precision) are computed in float32 and
    rounded once to the layer's compute dtype; float32/float64 natively.

    Error bound: that of `tf.nn.softmax` in the computation dtype (a few ulp
    per entry, |err| <= (n + 2) u p_i in the worst case, u = 2**-24 for float32),
    plus one rounding to float16/bfloat16 under mixed precision.

    Gradient: ``p * (g - sum(g * p))`` (TF's), exactly 0 w.r.t. masked or -inf
    entries and for fully masked rows (TF: NaN). NaN in a live row gives NaN;
    a row containing +inf gives NaN, as in Keras.

    dtypes: any floating dtype; output in the layer's compute dtype.

    Args:
      axis: int or list of ints, the axis (or axes) of the softmax (default -1).
      **kwargs: base `keras.layers.Layer` arguments (``name``, ``dtype``...).

    Call arguments:
      inputs: float tensor of logits.
      mask: optional boolean (or 0/1) mask broadcastable to the inputs; True
        keeps an entry.

    Raises:
      ValueError: if the mask is not broadcastable to the inputs (as Keras).

    Example:
      >>> layer = so.layers.StableSoftmax()
      >>> layer(np.array([[1.0, 2.0], [1.0, 2.0]]), mask=np.array([[1, 1], [0, 0]]))
      array([[0.269, 0.731], [0., 0.]])   # Keras: second row [0.5, 0.5] * 0; tf.nn on -inf: NaN
    """

    def call(self, inputs, mask=None):
        if mask is not None and len(mask.shape) > len(inputs.shape):
            return super().call(inputs, mask)  # Keras's own error message
        return _softmax(inputs, self.axis, mask)
