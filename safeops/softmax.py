"""reduce_logsumexp, softmax and log_softmax that survive fully masked (all -inf) rows.

Method shared by the three ops: the row maximum m is taken out (max-shift);
where m is not finite the shift is 0 and, for a row containing +inf, the +inf
entries count as exp(0) = 1 and every finite entry as 0. The inner sum
``sum(exp(x - m))`` is accumulated one precision up (float16/bfloat16 in
float32, float32 in float64: the compensated sum of the accumulation rule in
`safeops._dtypes`), then rounded once.
"""

import tensorflow as tf

from safeops._dtypes import accumulation_dtype, convert_to_floating

__all__ = ["log_softmax", "reduce_logsumexp", "softmax"]


def _shifted(x, axis):
    """(x - m) with the conventions above, the keepdims max m (0 where not finite)."""
    m = tf.reduce_max(x, axis=axis, keepdims=True)
    finite = tf.math.is_finite(m)
    m0 = tf.where(finite, m, tf.zeros_like(m))
    pos_inf_row = tf.math.is_inf(m) & (m > 0)
    ninf = tf.constant(float("-inf"), x.dtype)
    z = tf.where(pos_inf_row, tf.where(tf.math.is_inf(x) & (x > 0), tf.zeros_like(x), ninf),
                 x - m0)
    return z, m, m0


def _check_axis(op, x, axis):
    rank = x.shape.rank
    if rank is None or axis is None:
        return axis
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    for a in axes:
        if not isinstance(a, int) or not -rank <= a < max(rank, 1):
            raise ValueError(f"{op}: argument 'axis' {axis} is out of range for a tensor of "
                             f"shape {x.shape}")
    return axis


def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None):
    """Computes ``log(sum(exp(input_tensor), axis))``; drop-in for `tf.reduce_logsumexp`.

    Method: max-shift (in the accumulation dtype), then ``m + log(sum(exp(x - m)))`` with the inner sum
    accumulated in float64 for float32 input (float32 for float16/bfloat16) and
    rounded once: error <= ~1 ulp of the result plus 1 ulp of |m| when the result
    cancels (m ~ -log(sum)). A row that is all -inf gives -inf (TF: -inf too, but
    NaN gradient); a row with +inf gives +inf; NaN propagates.

    Gradient: ``softmax(x)`` along the axis; **0 for all -inf rows** (TF: NaN);
    for a row with +inf, 1/k on its k +inf entries and 0 elsewhere.

    Args:
      input_tensor: float tensor.
      axis: None (all axes), an int or a list of ints.
      keepdims: keep the reduced axes with length 1.
      name: optional name scope.

    Returns:
      The reduced tensor, input dtype.

    Raises:
      TypeError: non-float input.
      ValueError: axis out of range.

    Example:
      >>> so.reduce_logsumexp([-float('inf'), -float('inf')]).numpy()
      -inf
    """
    with tf.name_scope(name or "reduce_logsumexp"):
        x = convert_to_floating("safeops.reduce_logsumexp", "input_tensor", input_tensor)
        axis = _check_axis("safeops.reduce_logsumexp", x, axis)
        out = _logsumexp_keep(x, axis)
        if not keepdims:
            out = tf.squeeze(out, axis=axis) if axis is not None else tf.reshape(out, [])
        return out


def _logsumexp_keep(x, axis):
    @tf.custom_gradient
    def inner(x):
        acc = accumulation_dtype(x.dtype)
        z, m, m0 = _shifted(tf.cast(x, acc), axis)
        s = tf.reduce_sum(tf.exp(z), axis=axis, keepdims=True)
        out = tf.cast(tf.math.log(s) + m0, x.dtype)
        m = tf.cast(m, x.dtype)
        out = tf.where(tf.math.is_inf(m) & (m > 0), m, out)

        def grad(g):
            p = tf.cast(tf.exp(z) / tf.where(tf.equal(s, 0), tf.ones_like(s), s), x.dtype)
            return g * p

        return out, grad

    return inner(x)


def softmax(logits, axis=-1, name=None):
    """Computes ``exp(x) / sum(exp(x), axis)``; drop-in for `tf.nn.softmax`.

    Method: max-shift as the module; float16/bfloat16 computed in float32 and
    float32 sums accumulated in float64; one rounding back. Error <= ~1 ulp per
    entry. **A fully masked row (all -inf) gives 0** (TF: NaN); a row with +inf
    gives 1/k on its k +inf entries. The logits are attached to the output
    (``_keras_logits``), so `safeops.losses` (and Keras' losses) recover them in
    eager mode and compute the loss from logits.

    Gradient: the usual softmax Jacobian-vector product ``p * (g - sum(g p))``;
    0 for fully masked rows.

    Args:
      logits: float tensor.
      axis: the class axis (int), default -1.
      name: optional name scope.

    Returns:
      A tensor of logits' shape and dtype.

    Raises:
      TypeError: non-float input.
      ValueError: axis out of range.

    Example:
      >>> so.softmax([-float('inf'), -float('inf')]).numpy()
      array([0., 0.], dtype=float32)
    """
    with tf.name_scope(name or "softmax"):
        x = convert_to_floating("safeops.softmax", "logits", logits)
        axis = _check_axis("safeops.softmax", x, axis)
        out = _softmax(x, axis)
        try:
            out._keras_logits = x
        except AttributeError:
            pass
        return out


def _softmax(x, axis):
    @tf.custom_gradient
    def inner(x):
        acc = accumulation_dtype(x.dtype)
        z, _, _ = _shifted(tf.cast(x, acc), axis)
        e = tf.exp(z)
        s = tf.reduce_sum(e, axis=axis, keepdims=True)
        p = e / tf.where(tf.equal(s, 0), tf.ones_like(s), s)
        out = tf.cast(p, x.dtype)

        def grad(g):
            gc = tf.cast(g, acc)
            return tf.cast(p * (gc - tf.reduce_sum(gc * p, axis=axis, keepdims=True)), x.dtype)

        return out, grad

    return inner(x)


def log_softmax(logits, axis=-1, name=None):
    """Computes ``x - log(sum(exp(x), axis))``; drop-in for `tf.nn.log_softmax`.

    Method: max-shift; ``(x - m) - log(sum(exp(x - m)))`` with the sum
    accumulated one precision up (float32 -> float64, float16/bfloat16 ->
    float32), rounded once. **A fully masked row gives -inf everywhere** (TF:
    NaN); within a row, -inf entries give -inf.

    Gradient: ``g - softmax(x) * sum(g)``; entries that are -inf get gradient 0,
    a fully masked row gets 0 (TF: NaN).

    Args:
      logits: float tensor.
      axis: the class axis (int), default -1.
      name: optional name scope.

    Returns:
      A tensor of logits' shape and dtype.

    Raises:
      TypeError: non-float input.
      ValueError: axis out of range.

    Example:
      >>> so.log_softmax([-float('inf'), -float('inf')]).numpy()
      array([-inf, -inf], dtype=float32)
    """
    with tf.name_scope(name or "log_softmax"):
        x = convert_to_floating("safeops.log_softmax", "logits", logits)
        axis = _check_axis("safeops.log_softmax", x, axis)
        return _log_softmax(x, axis)


def _log_softmax(x, axis):
    @tf.custom_gradient
    def inner(x):
        acc = accumulation_dtype(x.dtype)
        zc, _, _ = _shifted(tf.cast(x, acc), axis)
        e = tf.exp(zc)
        s = tf.reduce_sum(e, axis=axis, keepdims=True)
        out = tf.cast(zc - tf.math.log(s), x.dtype)  # s == 0 (masked row): -inf - (-inf)
        out = tf.where(tf.broadcast_to(tf.equal(s, 0), tf.shape(out)),
                       tf.constant(float("-inf"), x.dtype), out)

        def grad(g):
            p = e / tf.where(tf.equal(s, 0), tf.ones_like(s), s)
            gc = tf.cast(g, acc)
            gc = tf.where(tf.math.is_inf(zc), tf.zeros_like(gc), gc)
            return tf.cast(gc - p * tf.reduce_sum(gc, axis=axis, keepdims=True), x.dtype)

        return out, grad

    return inner(x)
