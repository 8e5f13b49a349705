"""`StableSoftmax`: `keras.layers.Softmax` computed by `so.softmax` (fully masked rows give 0)."""

import keras
import tensorflow as tf

from safeops._core.registry import drop_in
from safeops.softmax import softmax as _so_softmax

__all__ = ["StableSoftmax", "stable_softmax"]

_OP = "safeops.layers.StableSoftmax"


def _check_mask(inputs, mask):
    """Keras's own mask check (same messages, `ValueError`): broadcastable, no extra dims."""
    if len(mask.shape) > len(inputs.shape):
        raise ValueError(f"{_OP}: the `mask` must be broadcastable to `inputs` and must not "
                         f"have more dimensions. Received: inputs.shape={inputs.shape}, "
                         f"mask.shape={mask.shape}")
    for m_dim, i_dim in zip(mask.shape[::-1], inputs.shape[::-1]):
        if m_dim is not None and i_dim is not None and m_dim != 1 and m_dim != i_dim:
            raise ValueError(f"{_OP}: the `mask` must be broadcastable to `inputs`. Each mask "
                             "dimension must be 1 or match the corresponding input dimension. "
                             f"Received: inputs.shape={inputs.shape}, mask.shape={mask.shape}")


def _softmax(x, axis, mask=None):
    """`so.softmax` over `axis` (an int or a list of ints); masked entries become -inf."""
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
        _check_mask(x, mask)
        if mask.dtype != tf.bool:
            mask = mask > tf.cast(0.5, mask.dtype)
        x = tf.where(mask, x, tf.constant(float("-inf"), x.dtype))
    rank = x.shape.rank
    axes = [axis] if isinstance(axis, int) else list(axis)
    axes = sorted({a % rank for a in axes})
    if len(axes) == 1:
        return _so_softmax(x, axis=axes[0])
    # Several axes: move them to the end, flatten them into one, and take one softmax.
    rest = [a for a in range(rank) if a not in axes]
    perm = rest + axes
    xt = tf.transpose(x, perm)
    shape = tf.shape(xt)
    flat = tf.reshape(xt, tf.concat([shape[:len(rest)], [-1]], 0))
    y = tf.reshape(_so_softmax(flat, axis=-1), shape)
    inverse = [perm.index(a) for a in range(rank)]
    return tf.transpose(y, inverse)


@drop_in("keras.activations.softmax",
         "a row that is all -inf gives 0 (Keras: NaN), gradient 0 there",
         "computed by so.softmax: <= 3 ulp per entry (Keras: up to (|x_i - max| + n/2 + 2) ulp)",
         name="safeops.layers.stable_softmax")
@keras.saving.register_keras_serializable(package="safeops")
def stable_softmax(x, axis=-1):
    """Softmax activation computed by `so.softmax` (fully masked rows -> 0, not NaN).

    Replaces `keras.activations.softmax` (`wrap_model` uses it for
    ``activation="softmax"`` inside Dense/Conv layers). The output carries its
    logits (``_keras_logits``) as Keras's does, so cross-entropy losses given
    these probabilities compute from the logits (no clipping at 1e-7). Method,
    bound and gradient: `so.softmax`.

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


@drop_in("keras.layers.Softmax",
         "a row of -inf logits (an additive -inf mask) gives 0 with gradient 0 (Keras: NaN)",
         "computed by so.softmax: <= 3 ulp per entry; the output carries its logits, so "
         "cross-entropy losses compute from them (Keras's layer output: the same)")
@keras.saving.register_keras_serializable(package="safeops")
class StableSoftmax(keras.layers.Softmax):
    """Drop-in for `keras.layers.Softmax` computed by `so.softmax`.

    Replaces `keras.layers.Softmax` (same arguments, an instance of it, the
    same mask checks and `ValueError`). Keras turns masked entries into -1e9
    and zeroes fully masked rows, but a row of -inf logits (an additive -inf
    attention mask, or scores that overflowed) is still NaN, and NaN in its
    gradient.

    Method: masked entries (``mask`` False or <= 0.5) become -inf, then
    `so.softmax` runs along the axis (several axes: moved to the end and
    flattened into one). `so.softmax` maps a row that is all -inf to 0, with
    gradient 0, computes float16/bfloat16 in float32 and rounds once, and
    attaches the logits to its output (single axis), as Keras's softmax does,
    so that `so.losses` and Keras's losses compute cross-entropy from logits.

    Error bound: that of `so.softmax`: <= 3 ulp per entry of the output dtype.

    Gradient: ``p * (g - sum(g * p))``, exactly 0 w.r.t. masked or -inf
    entries and for fully masked rows. NaN in a live row gives NaN; a row
    containing +inf gives 1/k on its k +inf entries (`so.softmax`).

    dtypes: any floating dtype; output in the layer's compute dtype.

    Args:
      axis: int or list of ints, the axis (or axes) of the softmax (default -1).
      **kwargs: base `keras.layers.Layer` arguments (``name``, ``dtype``...).

    Call arguments:
      inputs: float tensor of logits.
      mask: optional boolean (or 0/1) mask broadcastable to the inputs; True
        keeps an entry.

    Raises:
      ValueError: the mask has more dimensions than the inputs, or a dimension
        that is neither 1 nor the input's (as Keras).

    Example:
      >>> x = np.array([[1.0, 2.0], [-np.inf, -np.inf]], np.float32)
      >>> so.layers.StableSoftmax()(x)            # keras.layers.Softmax: [[.27, .73], [nan, nan]]
      array([[0.26894143, 0.73105854], [0., 0.]], dtype=float32)
    """

    def call(self, inputs, mask=None):
        return _softmax(inputs, self.axis, mask)
