"""reduce_logsumexp, softmax and log_softmax that survive fully masked (all -inf) rows.

Method shared by the three ops: the row maximum m is taken out (max-shift);
where m is not finite the shift is 0 and, for a row containing +inf, the +inf
entries count as exp(0) = 1 and every finite entry as 0. For
`reduce_logsumexp` the inner sum ``sum(exp(x - m))`` is accumulated one
precision up (float16/bfloat16 in float32, float32 in float64: the
compensated sum of the accumulation rule in `safeops._dtypes`), then rounded
once; `softmax`/`log_softmax` use TF's fused kernels on the fast path (their
speed) and the max-shift only for rows TF gets wrong.
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

    Method: max-shift, then ``m + log(sum(exp(x - m)))`` with the exponentials
    in the input precision (float32 for float16/bfloat16), each within 1 ulp,
    and the inner sum accumulated in float64 for float32 input (float32 for
    float16/bfloat16: the compensated sum), one rounding at the end. Error:
    <= ~(1 + max|x_i - m| eps) ulp of max(|result|, 1), plus 1 ulp of |m| when
    the result cancels (m ~ -log(sum)). A row that is all -inf gives -inf (TF: -inf too, but
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
        c = _compute(x.dtype)
        xc = tf.cast(x, c)
        m = tf.reduce_max(xc, axis=axis, keepdims=True)
        m0 = tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))
        # exp in the input precision (each term within 1 ulp), summed one precision up:
        # all -inf rows give s = 0 -> -inf; rows with +inf give s = inf -> +inf.
        acc = accumulation_dtype(x.dtype)
        s = tf.reduce_sum(tf.cast(tf.exp(xc - m0), acc), axis=axis, keepdims=True)
        out_c = tf.math.log(s) + tf.cast(m0, acc)
        out = tf.cast(out_c, x.dtype)

        def grad(g):
            oc = tf.cast(out_c, c)
            fast = lambda: tf.exp(xc - oc)  # noqa: E731  (TF's formula)

            def slow():  # rows whose result is +-inf: the module's conventions
                z, _, _ = _shifted(xc, axis)
                e = tf.exp(z)
                t = tf.reduce_sum(e, axis=axis, keepdims=True)
                return e / tf.where(tf.equal(t, 0), tf.ones_like(t), t)

            p = tf.cond(tf.reduce_all(tf.math.is_finite(oc)), fast, slow)
            return tf.cast(tf.cast(g, c) * p, x.dtype)

        return out, grad

    return inner(x)


def softmax(logits, axis=-1, name=None):
    """Computes ``exp(x) / sum(exp(x), axis)``; drop-in for `tf.nn.softmax`.

    Method: TF's fused softmax kernel (float16/bfloat16 computed in float32),
    checked for finiteness; only if a row produced NaN (its max is +-inf, or a NaN
    came in) is the tensor recomputed with the max-shift of the module (one
    `tf.cond`). Error as TF's: <= (|x_i - max| + n/2 + 2) ulp for a row of n. **A fully masked row (all -inf) gives 0** (TF: NaN); a row with +inf
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
        c = tf.cast(x, _compute(x.dtype))
        fast = tf.nn.softmax(c, axis=axis)
        # TF's fused kernel is right unless a row max is +-inf (or a NaN came in):
        # only then (one tf.cond) recompute with the masked-row conventions.
        p = tf.cond(tf.math.is_nan(tf.reduce_sum(fast)), lambda: _softmax_slow(c, axis),
                    lambda: fast)
        out = tf.cast(p, x.dtype)

        def grad(g):
            gc = tf.cast(g, c.dtype)
            return tf.cast(p * (gc - tf.reduce_sum(gc * p, axis=axis, keepdims=True)), x.dtype)

        return out, grad

    return inner(x)


def _compute(dtype):
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _softmax_slow(c, axis):
    z, _, _ = _shifted(c, axis)
    e = tf.exp(z)
    s = tf.reduce_sum(e, axis=axis, keepdims=True)
    return e / tf.where(tf.equal(s, 0), tf.ones_like(s), s)


def _log_softmax_slow(c, axis):
    z, _, _ = _shifted(c, axis)
    s = tf.reduce_sum(tf.exp(z), axis=axis, keepdims=True)
    out = z - tf.math.log(s)
    return tf.where(tf.broadcast_to(tf.equal(s, 0), tf.shape(out)),
                    tf.constant(float("-inf"), c.dtype), out)


def log_softmax(logits, axis=-1, name=None):
    """Computes ``x - log(sum(exp(x), axis))``; drop-in for `tf.nn.log_softmax`.

    Method: TF's fused kernel (float16/bfloat16 computed in float32), checked
    for finiteness; rows that produced NaN (max +-inf, or NaN input) are
    recomputed as ``(x - m) - log(sum(exp(x - m)))`` with the module's
    conventions (one `tf.cond`). Error as TF's: a few ulp of max(|result|, 1). **A fully masked row gives -inf everywhere** (TF:
    NaN); within a row, -inf entries give -inf.

    Gradient: ``g - softmax(x) * sum(g)`` (TF's formula); finite for fully
    masked rows, where softmax is 0 and the gradient is g (TF: NaN).

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
        c = tf.cast(x, _compute(x.dtype))
        fast = tf.nn.log_softmax(c, axis=axis)
        # -inf entries are legitimate (masked logits); only NaN marks a bad row
        out = tf.cond(tf.math.is_nan(tf.reduce_sum(fast)), lambda: _log_softmax_slow(c, axis),
                      lambda: fast)

        def grad(g):
            gc = tf.cast(g, c.dtype)
            return tf.cast(gc - tf.exp(out) * tf.reduce_sum(gc, axis=axis, keepdims=True),
                           x.dtype)

        return tf.cast(out, x.dtype), grad

    return inner(x)
