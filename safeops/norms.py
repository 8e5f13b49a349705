"""`norm`: tf.norm without overflow, underflow or a NaN gradient at the zero vector.

The private `_compute` and `_threshold` (fast-path limit) are shared with
`safeops.clipping`, which builds its overflow-free clipping norm on them.

Method of the euclidean norm: a fast path computes ``sum(x*x)`` as TF does (in
float32 for float16/bfloat16); if every result is finite and above
``tiny / eps**2`` (so no square overflowed and none that underflowed can
matter), it is used. Otherwise (one `tf.cond` on the whole tensor) the norm is
recomputed scaled: ``m * sqrt(sum((x/m)**2))`` with ``m = max|x|`` along the
axes, so it is finite whenever the true norm is representable and exact for
tiny components (``norm([1e-30, 1e-30]) = 1.414e-30`` in float32, TF: 0).
Relative error of either path: <= (n_terms_in_reduction_tree + 2) eps / 2,
the same order as `tf.norm`'s (pairwise/blocked summation).
"""

import math

import numpy as np
import tensorflow as tf

from safeops._dtypes import convert_to_floating

__all__ = ["norm"]

_OP = "safeops.norm"


def _compute(dtype):
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _threshold(dtype):
    fi = np.finfo(dtype.as_numpy_dtype)
    return float(fi.tiny) / float(fi.eps) ** 2


def _sumsq_norm(c, axes, keepdims):
    """Euclidean norm of compute-dtype `c` along `axes` (list or None), scaled on demand."""
    ss = tf.reduce_sum(c * c, axis=axes, keepdims=keepdims)
    ok = tf.reduce_all(tf.math.is_finite(ss) & (ss >= _threshold(c.dtype)))

    def scaled():
        m = tf.reduce_max(tf.abs(c), axis=axes, keepdims=True)
        good = tf.math.is_finite(m) & (m > 0)
        m1 = tf.where(good, m, tf.ones_like(m))
        r = c / m1
        n = m1 * tf.sqrt(tf.reduce_sum(r * r, axis=axes, keepdims=True))
        n = tf.where(tf.math.is_inf(m), m, tf.where(tf.equal(m, 0), tf.zeros_like(m), n))
        return n if keepdims else tf.reshape(n, tf.shape(ss))

    return tf.cond(ok, lambda: tf.sqrt(ss), scaled)


def _scaled_norm(x, axes=None, keepdims=False):
    """Euclidean norm of `x` along `axes`; gradient x/norm, exactly 0 where norm == 0."""

    @tf.custom_gradient
    def inner(x):
        c = tf.cast(x, _compute(x.dtype))
        n = _sumsq_norm(c, axes, True)

        def grad(g):
            g = tf.cast(g, c.dtype)
            if not keepdims:
                g = tf.reshape(g, tf.shape(n))
            zero = tf.equal(n, 0)
            q = tf.where(zero, tf.zeros_like(n), g / tf.where(zero, tf.ones_like(n), n))
            return tf.cast(c * q, x.dtype)

        out = n if keepdims else (tf.reshape(n, []) if axes is None else tf.squeeze(n, axes))
        return tf.cast(out, x.dtype), grad

    return inner(x)


def _axes(x, axis):
    rank = x.shape.rank
    if axis is None:
        return None
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not axes or len(axes) > 2 or not all(isinstance(a, int) for a in axes):
        raise ValueError(f"{_OP}: argument 'axis' must be None, an int or a pair of ints; "
                         f"got {axis!r}")
    if rank is not None:
        if not all(-rank <= a < rank for a in axes):
            raise ValueError(f"{_OP}: argument 'axis' {axis!r} is out of range for a tensor "
                             f"of shape {x.shape}")
        axes = [a % rank for a in axes]
        if len(axes) == 2 and axes[0] == axes[1]:
            raise ValueError(f"{_OP}: argument 'axis' has a repeated axis: {axis!r}")
    return axes


def norm(tensor, ord="euclidean", axis=None, keepdims=False, name=None):  # noqa: A002
    """Vector and matrix norms; drop-in for `tf.norm` (same arguments and shapes).

    Method: ord 'euclidean'/2 (vectors) and 'euclidean'/'fro' (matrices) use the
    scaled euclidean norm of the module doc (no overflow: ``norm([1e30, 1e30])``
    is 1.414e30 in float32, TF: inf; no underflow: ``norm([1e-30, 1e-30])`` is
    1.414e-30, TF: 0). ord 1 and inf are sums/maxima of |x| (exact up to the sum's
    rounding); another positive p uses ``m * (sum (|x|/m)**p)**(1/p)``; the matrix
    2-norm delegates to `tf.norm` (SVD).

    Bound (euclidean): relative error <= (k + 2) eps / 2, k the depth of TF's
    reduction, i.e. the same as `tf.norm` where `tf.norm` is finite and nonzero.

    Gradient (euclidean): ``x / norm(x)``; **exactly 0 at the zero vector** (TF:
    NaN, TF issue #12071); finite wherever the norm is finite. ord 1: sign(x)
    (0 at 0); ord inf: TF's reduce_max gradient.

    dtypes: float16/bfloat16 computed in float32, float32 and float64 in
    themselves (scaling instead of upcasting); output has the input dtype.

    Args:
      tensor: float tensor.
      ord: 'euclidean', 'fro' (matrices only), 1, 2, np.inf or a real p > 0.
      axis: None (flattened vector norm), an int (vector norm) or a pair of
        ints (matrix norm).
      keepdims: keep the reduced axes with length 1.
      name: optional name scope.

    Returns:
      The norm, input dtype, reduced shape.

    Raises:
      TypeError: non-float tensor.
      ValueError: unsupported `ord` or invalid `axis` (message has the shape).

    Example:
      >>> so.norm([1e30, 1e30]).numpy()   # tf.norm: inf
      1.4142135e+30
    """
    with tf.name_scope(name or "norm"):
        x = convert_to_floating(_OP, "tensor", tensor)
        axes = _axes(x, axis)
        matrix = axes is not None and len(axes) == 2
        vector_ords = ("euclidean", 1, 2, np.inf, float("inf"))
        is_p = (isinstance(ord, (int, float)) and not isinstance(ord, bool)
                and math.isfinite(ord) and ord > 0)
        if matrix:
            if ord not in ("euclidean", "fro", 1, 2, np.inf):
                raise ValueError(f"{_OP}: argument 'ord' must be 'euclidean', 'fro', 1, 2 or "
                                 f"inf for a matrix norm; got {ord!r}")
        elif not (ord in vector_ords or is_p):
            raise ValueError(f"{_OP}: argument 'ord' must be 'euclidean', 1, 2, inf or a real "
                             f"p > 0 for a vector norm; got {ord!r}")
        if matrix and ord == 2:
            return tf.norm(x, ord=2, axis=axis, keepdims=keepdims)
        if ord in ("euclidean", "fro") or (ord == 2 and not matrix):
            return _scaled_norm(x, axes, keepdims)
        ax = x
        if matrix:
            a0, a1 = axes
            if ord == 1:  # max column sum
                s = tf.reduce_sum(tf.abs(ax), axis=a0, keepdims=True)
                return _keep(tf.reduce_max(s, axis=a1, keepdims=True), axes, keepdims)
            s = tf.reduce_sum(tf.abs(ax), axis=a1, keepdims=True)
            return _keep(tf.reduce_max(s, axis=a0, keepdims=True), axes, keepdims)
        if ord == 1:
            return tf.reduce_sum(tf.abs(ax), axis=axes, keepdims=keepdims)
        if ord in (np.inf, float("inf")):
            return tf.reduce_max(tf.abs(ax), axis=axes, keepdims=keepdims)
        c = tf.cast(ax, _compute(x.dtype))
        m = tf.reduce_max(tf.abs(c), axis=axes, keepdims=True)
        m1 = tf.where(m > 0, m, tf.ones_like(m))
        n = m1 * tf.pow(tf.reduce_sum(tf.pow(tf.abs(c) / m1, ord), axis=axes, keepdims=True),
                        1.0 / ord)
        n = tf.where(tf.equal(m, 0), tf.zeros_like(n), n)
        return tf.cast(_keep(n, axes, keepdims), x.dtype)


def _keep(n, axes, keepdims):
    if keepdims:
        return n
    return tf.reshape(n, []) if axes is None else tf.squeeze(n, axes)
