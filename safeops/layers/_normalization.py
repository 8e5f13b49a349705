"""The statistics shared by the stable normalization layers (private).

Every layer here centres first and scales second, ``(x - mean) * rsqrt(var +
eps)``, in at least float32: Keras's ``x * inv + (beta - mean * inv)`` form
(`tf.nn.batch_normalization`, GroupNormalization) cancels two terms of size
``|mean| / std`` and loses ``log2(|mean| / std)`` bits of the output.
"""

import tensorflow as tf

from safeops._core import exact
from safeops._core.dtypes import HALF_DTYPES
from safeops.config import is_reproducible


def working(x):
    """`x` in its working dtype: float16/bfloat16 in float32, the rest as they are."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype in HALF_DTYPES else x


def _mean(v, axes):
    """Mean over `axes` (keepdims); under ``so.config.reproducible()`` correctly rounded, so
    a row's statistics do not depend on the batch it is in or the order of its entries."""
    if is_reproducible():
        return exact.exact_reduce_mean(v, sorted(a % v.shape.rank for a in axes), keepdims=True)
    return tf.reduce_mean(v, axis=axes, keepdims=True)


def _sum(v, axes):
    if is_reproducible():
        return exact.exact_reduce_sum(v, sorted(a % v.shape.rank for a in axes), keepdims=True)
    return tf.reduce_sum(v, axis=axes, keepdims=True)


def centred_moments(x, axes):
    """``(x - mean, mean, variance)`` over `axes` (keepdims), accurate for any ``|mean|/std``.

    Each row is shifted by one of its own entries (`stop_gradient`: the result
    does not depend on the shift); when ``|mean|/std`` is large every entry is
    within a factor 2 of the shift, so ``d = x - shift`` is exact (Sterbenz).
    Then the corrected two-pass algorithm (Chan, Golub & LeVeque 1983, eq. 1.7):
    ``m = mean(d)``, ``c = d - m``, ``s = mean(c)`` (the rounding error of m),
    ``var = mean(c^2) - s^2``, centred values ``c - s``. Relative error of var:
    ``<= n u + n^2 k^2 u^2`` with k ~ 1 after the shift.
    """
    shift = x
    for a in axes:
        shift = tf.gather(shift, [0], axis=a)
    shift = tf.stop_gradient(shift)
    d = x - shift
    m = _mean(d, axes)
    c = d - m
    s = _mean(c, axes)
    var = _mean(tf.square(c), axes) - tf.square(s)
    var = tf.maximum(var, tf.zeros_like(var))
    return c - s, shift + (m + s), var


def masked_centred_moments(x, weights, axes):
    """`centred_moments` over the entries whose weight is 1 (0/1 `weights`, broadcast to x).

    An all-masked group has mean 0 and variance 0 (not 0/0)."""
    weights = tf.broadcast_to(tf.cast(weights, x.dtype), tf.shape(x))
    count = _sum(weights, axes)
    safe = tf.maximum(count, tf.ones_like(count))

    def mean(v):
        return _sum(v * weights, axes) / safe

    shift = tf.stop_gradient(mean(x))  # plain first pass; corrected below
    d = x - shift
    m = mean(d)
    c = d - m
    s = mean(c)
    var = tf.maximum(mean(tf.square(c)) - tf.square(s), 0.0)
    return c - s, shift + (m + s), var


def broadcast_param(v, x, axes):
    """A per-feature weight (gamma, beta, moving statistics) reshaped to broadcast against x.

    `axes` are the (non-negative, sorted) axes the weight spans, in x's rank."""
    v = tf.cast(v, x.dtype)
    rank = x.shape.rank
    if list(axes) == [rank - 1]:
        return tf.reshape(v, [-1])
    dims = tf.shape(x)
    target = [1] * rank
    for a in axes:
        target[a] = x.shape[a] if x.shape[a] is not None else dims[a]
    return tf.reshape(v, tf.stack(target) if any(tf.is_tensor(t) for t in target) else target)


def saturating_cast(x, dtype):
    """`tf.cast` whose gradient is clipped to the finite range of the source dtype.

    A float32 gradient beyond 65504 flowing back into a float16 tensor would
    otherwise become inf (and NaN a step later)."""
    src = x.dtype

    @tf.custom_gradient
    def cast(v):
        def grad(g):
            big = src.max
            return tf.cast(tf.clip_by_value(g, tf.cast(-big, g.dtype), tf.cast(big, g.dtype)), src)
        return tf.cast(v, dtype), grad

    if src == dtype:
        return x
    return cast(x)
