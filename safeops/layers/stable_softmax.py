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
    if len(axes) == 1:
        y = _softmax_one_axis(x, axes[0])
    else:
        m = tf.reduce_max(x, axis=axes, keepdims=True)
        dead = tf.equal(m, tf.constant(float("-inf"), x.dtype))
        z = x - tf.stop_gradient(tf.where(dead, tf.zeros_like(m), m))
        e = tf.exp(z)
        s = tf.reduce_sum(e, axis=axes, keepdims=True)
        y = e / tf.where(dead, tf.ones_like(s), s)
    return tf.cast(y, out_dtype)


def _softmax_one_axis(x, axis):
    """Fused `tf.nn.softmax`, fully -inf rows set to 0, with the gradient written from y."""

    @tf.custom_gradient
    def inner(x):
        m = tf.reduce_max(x, axis=axis, keepdims=True)
        live = tf.cast(tf.not_equal(m, tf.constant(float("-inf"), x.dtype)), x.dtype)  # NaN: 1
        # multiply_no_nan(s, 0) is 0 even where s is NaN (TF's softmax of a dead row)
        y = tf.math.multiply_no_nan(tf.nn.softmax(x, axis=axis), live)

        def grad(g):
            # d softmax: y * (g - sum(g * y)); y is 0 for -inf entries and dead rows,
            # so their gradient is exactly 0 (TF's own gradient is NaN for a dead row).
            return y * (g - tf.reduce_sum(g * y, axis=axis, keepdims=True))

        return y, grad

    return inner(x)


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
    maximum ``m`` marks fully masked rows (``m = -inf``); the fused
    `tf.nn.softmax` runs and fully masked rows are multiplied by 0 with
    `tf.math.multiply_no_nan` (so the NaN TF computes there never reaches the
    output). The gradient is written
    by hand from the output (`tf.custom_gradient`), so no NaN from those rows
    reaches it either. Several axes: max-shifted exp / sum with the same rule.
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
      >>> x = np.array([[1.0, 2.0], [-np.inf, -np.inf]], np.float32)
      >>> so.layers.StableSoftmax()(x)            # keras.layers.Softmax: [[.27, .73], [nan, nan]]
      array([[0.26894143, 0.73105854], [0., 0.]], dtype=float32)
    """

    def call(self, inputs, mask=None):
        if mask is not None and len(mask.shape) > len(inputs.shape):
            return super().call(inputs, mask)  # Keras's own error message
        return _softmax(inputs, self.axis, mask)
