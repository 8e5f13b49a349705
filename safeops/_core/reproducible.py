"""Reductions built on the exact accumulator: moments, dot products, logsumexp.

Used by the public ops when ``so.config.reproducible()`` is on. Each is a
composition of element-wise steps (deterministic: one IEEE operation per
element, the same in any order) and exact sums (`safeops._core.exact`: the
correctly rounded sum of the multiset of terms), so its bits do not depend on
the order of the terms, the batch a row is in, the thread count or the number
of replicas. The element-wise steps run in float64 for float16/bfloat16/
float32 inputs; a transcendental (``exp``, ``log``) is the device's own, so
across devices or between XLA and TF kernels the bits of `logsumexp` are as
reproducible as that function is (sums and products are the same everywhere).

* `moments`: ``mean`` correctly rounded; ``variance = mean((x - mean)**2)``
  with the squares rounded in float64 and their mean exact. Relative error of
  the variance at most ``3 u + u**2 (mean/std)**2`` in float64 (``u =
  2**-53``) before the final rounding to the input dtype: for float32 inputs
  within one ulp of the exact variance (float32 ulps).
* `dot`: float16/bfloat16/float32 products are exact in float64 and their
  exact sum is rounded once to the input dtype: the correctly rounded dot
  product (products of subnormal inputs as the device reads them; TF's CPU
  kernels flush float32 subnormals). float64 products are split exactly by
  TwoProd (``p + e = a b``) and ``sum(p) + sum(e)`` is summed exactly: the
  correctly rounded dot product wherever no product underflows.
* `logsumexp`: ``m + log(sum(exp(x - m)))`` with the exponentials in float64
  and their sum exact; `softmax` and `log_softmax` from the same sum.
"""

import tensorflow as tf

from safeops._core import eft
from safeops._core import exact

__all__ = ["dot", "log_softmax", "logsumexp", "mean", "moments", "softmax"]

_WIDE = tf.float64


def _wide(x):
    return x if x.dtype == _WIDE else tf.cast(x, _WIDE)


def mean(x, axes, keepdims=True):
    """The correctly rounded mean over `axes` (sorted non-negative ints or None), x's dtype."""
    return exact.exact_reduce_mean(x, axes, keepdims=keepdims)


def _count(x, axes):
    shape = tf.shape(x)
    n = tf.reduce_prod(shape if axes is None else tf.gather(shape, list(axes)))
    return tf.cast(n, _WIDE)


def moments(x, axes, keepdims=False):
    """``(mean, variance)`` over `axes` (sorted non-negative ints or None), in x's dtype.

    float and complex inputs (a complex variance is that of the real part plus
    that of the imaginary part, real, as `tf.math.reduce_variance`). Empty
    reductions give NaN, as TF's. Differentiable (the exact sums' gradients).
    """
    if x.dtype.is_complex:
        mr, vr = moments(tf.math.real(x), axes, keepdims)
        mi, vi = moments(tf.math.imag(x), axes, keepdims)
        return tf.complex(mr, mi), _narrow(_wide(vr) + _wide(vi), vr.dtype)
    w = _wide(x)
    m = mean(w, axes, keepdims=True)
    c = w - m
    var = mean(c * c, axes, keepdims=keepdims)
    if not keepdims:
        m = _drop(m, axes)
    return _narrow(m, x.dtype), _narrow(var, x.dtype)


def _drop(v, axes):
    """v (reduced with keepdims) without its reduced axes."""
    if axes is None:
        return tf.reshape(v, [])
    return tf.squeeze(v, list(axes)) if axes else v


def _narrow(v, dtype):
    return v if v.dtype == dtype else tf.cast(v, dtype)


def variance(x, axes, keepdims=False, std=False):
    """Variance (or its square root, taken in float64) over `axes`, reproducible."""
    _, var = moments(x, axes, keepdims)
    if not std:
        return var
    return _narrow(tf.sqrt(_wide(var)), var.dtype) if var.dtype != _WIDE else tf.sqrt(var)


def dot(x, y, axes, keepdims=False):
    """``sum(x * y, axes)`` correctly rounded (same-shape float tensors; see module doc).

    `axes`: sorted non-negative ints, or None for all. Gradient: ``(g y, g x)``.
    """
    rank = x.shape.rank
    reduced = list(range(rank)) if axes is None else list(axes)

    @tf.custom_gradient
    def impl(a, b):
        if a.dtype == _WIDE:
            p, e = eft.two_prod(a, b)  # p + e == a b exactly (no underflow)
            state = exact.sum_state(tf.stack([p, e], axis=-1), reduced + [rank],
                                    keepdims=False)
        else:
            state = exact.sum_state(_wide(a) * _wide(b), reduced)  # products exact
        out = exact.state_to_sum(state, _WIDE, a.dtype)  # one rounding into a's dtype
        if keepdims:
            out = tf.reshape(out, _kept_shape(a, reduced))

        def grad(g):
            g = tf.reshape(g, _kept_shape(a, reduced))
            return g * b, g * a

        return out, grad

    return impl(x, y)


def _kept_shape(x, axes):
    return tf.tensor_scatter_nd_update(tf.shape(x), [[a] for a in axes],
                                       tf.ones([len(axes)], tf.int32)) if axes else tf.shape(x)


def _exp_terms(x, axes):
    """float64 ``(top, z, e, s, s_safe)`` as the default method defines them: with m the row
    max (0 where it is not finite) ``z = x - m`` and ``e = exp(z)``, except in a row holding
    +inf, where the +inf entries count as exp(0) = 1 (z = 0) and the others as 0 (z = -inf);
    ``top`` is +inf in such a row and m elsewhere; s is the exact sum of e (keepdims) and
    s_safe is s with 1 where it is 0 (a fully masked row)."""
    w = _wide(x)
    raw = tf.stop_gradient(tf.reduce_max(w, axis=axes, keepdims=True))
    m = tf.where(tf.math.is_finite(raw), raw, tf.zeros_like(raw))
    inf_row = tf.equal(raw, float("inf"))
    is_inf = tf.equal(w, float("inf"))
    z = tf.where(inf_row, tf.where(is_inf, tf.zeros_like(w), tf.fill(
        tf.shape(w), tf.constant(-float("inf"), _WIDE))), w - m)
    e = tf.exp(z)
    s = exact.exact_reduce_sum(e, axes, keepdims=True)
    top = tf.where(inf_row, raw, m)
    return top, z, e, s, tf.where(s > 0, s, tf.ones_like(s))


def _row_sum(v, axes):
    return exact.exact_reduce_sum(v, axes, keepdims=True)


def logsumexp(x, axes, keepdims=False):
    """``log(sum(exp(x), axes))`` with the sum of the exponentials exact (float input).

    A row of -inf gives -inf with gradient 0; a row holding +inf gives +inf.
    Gradient: ``g p`` with p the softmax (0 in a fully masked row)."""
    @tf.custom_gradient
    def impl(v):
        top, _, e, s, s_safe = _exp_terms(v, axes)
        out = tf.where(s > 0, top + tf.math.log(s_safe), tf.fill(tf.shape(s), tf.constant(
            -float("inf"), _WIDE)))
        if not keepdims:
            out = _drop(out, axes)

        def grad(g):
            g = tf.reshape(_wide(g), tf.shape(s))
            return _narrow(g * (e / s_safe), v.dtype)

        return _narrow(out, v.dtype), grad

    return impl(x)


def softmax(x, axis):
    """``exp(x - m) / sum(exp(x - m))`` along one non-negative `axis`, the sum exact; a row
    of -inf gives 0 (and gradient 0). Gradient ``p (g - sum(g p))``, its sum exact too."""
    @tf.custom_gradient
    def impl(v):
        _, _, e, _, s_safe = _exp_terms(v, [axis])
        p = e / s_safe

        def grad(g):
            g = _wide(g)
            return _narrow(p * (g - _row_sum(g * p, [axis])), v.dtype)

        return _narrow(p, v.dtype), grad

    return impl(x)


def log_softmax(x, axis):
    """``(x - m) - log(sum(exp(x - m)))`` along one non-negative `axis`, in float64 before
    one rounding; a row of -inf gives -inf with gradient g. Gradient ``g - p sum(g)``."""
    @tf.custom_gradient
    def impl(v):
        _, z, e, _, s_safe = _exp_terms(v, [axis])

        def grad(g):
            g = _wide(g)
            return _narrow(g - (e / s_safe) * _row_sum(g, [axis]), v.dtype)

        return _narrow(z - tf.math.log(s_safe), v.dtype), grad

    return impl(x)
