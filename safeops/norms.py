"""`norm`: tf.norm without overflow, underflow or a NaN gradient at the zero vector.

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

from safeops._core.args import dtype_error
from safeops._core.axes import norm_axes
from safeops._core.compensated import shape_of
from safeops._core.dtypes import COMPLEX_DTYPES, FLOAT_DTYPES, square_threshold, working_dtype
from safeops._core.registry import drop_in

__all__ = ["norm"]

_OP = "safeops.norm"


def _sumsq_norm(c, axes, keepdims):
    """Euclidean norm of compute-dtype `c` along `axes` (list or None), scaled on demand."""
    ss = tf.reduce_sum(c * c, axis=axes, keepdims=keepdims)
    if tf.executing_eagerly():  # the reduced sums are few: decide on the host, no extra ops
        v = ss.numpy()
        ok = bool(np.all(np.isfinite(v) & (v >= square_threshold(c.dtype))))
    else:
        ok = tf.reduce_all(tf.math.is_finite(ss) & (ss >= square_threshold(c.dtype)))

    def scaled():
        m = tf.reduce_max(tf.abs(c), axis=axes, keepdims=True)
        good = tf.math.is_finite(m) & (m > 0)
        m1 = tf.where(good, m, tf.ones_like(m))
        r = c / m1
        n = m1 * tf.sqrt(tf.reduce_sum(r * r, axis=axes, keepdims=True))
        # m = +inf: inf; m = 0 or -inf (no entries): 0; NaN propagates through n
        inf = tf.constant(float("inf"), m.dtype)
        n = tf.where(tf.equal(m, inf), m,
                     tf.where(tf.equal(m, 0) | tf.equal(m, -inf), tf.zeros_like(m), n))
        return n if keepdims else tf.reshape(n, tf.shape(ss))

    if isinstance(ok, bool):
        return tf.sqrt(ss) if ok else scaled()
    return tf.cond(ok, lambda: tf.sqrt(ss), scaled)


def _scaled_norm(x, axes=None, keepdims=False):
    """Euclidean norm of `x` along `axes`; gradient x/norm, exactly 0 where norm == 0."""

    @tf.custom_gradient
    def inner(x):
        c = tf.cast(x, working_dtype(x.dtype))
        n = _sumsq_norm(c, axes, True)

        def grad(g):
            g = tf.cast(g, c.dtype)
            if not keepdims:
                g = tf.reshape(g, tf.shape(n))
            zero = tf.equal(n, 0)
            q = tf.where(zero, tf.zeros_like(n), g / tf.where(zero, tf.ones_like(n), n))
            return tf.cast(c * q, x.dtype)

        out = n if keepdims else (
            tf.reshape(n, shape_of([])) if axes is None else tf.squeeze(n, axes))
        return tf.cast(out, x.dtype), grad

    return inner(x)


@drop_in("tf.norm / tf.linalg.norm",
         "the euclidean and Frobenius norms never overflow or underflow in the squares "
         "(norm([1e30, 1e30]) is 1.414e30 in float32, TF: inf)",
         "the gradient at the zero vector is 0 (TF: NaN)",
         "the norm of an empty tensor is 0 for every ord (TF: -inf for ord=inf)",
         "axis may also be a NumPy integer or an integer tensor of known value (TF: ValueError)")
def norm(tensor, ord="euclidean", axis=None, keepdims=None, name=None):  # noqa: A002
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
    NaN, tensorflow/tensorflow#12071); finite wherever the norm is finite. ord 1: sign(x)
    (0 at 0); ord inf: TF's reduce_max gradient.

    dtypes: float16/bfloat16 computed in float32, float32 and float64 in
    themselves (scaling instead of upcasting); output has the input dtype.
    complex64/complex128: the magnitudes (the euclidean norm scales the real
    and imaginary parts together); TF's result dtype (complex for
    'euclidean'/'fro'/2, real for the other ords). An empty tensor has norm 0.

    Args:
      tensor: float tensor.
      ord: 'euclidean', 'fro' (matrices only), 1, 2, np.inf or a real p > 0.
      axis: None (flattened vector norm), an int (vector norm) or a pair of
        ints (matrix norm).
      keepdims: keep the reduced axes with length 1 (None: False, as TF).
      name: optional name scope.

    Returns:
      The norm, input dtype, reduced shape.

    Raises:
      TypeError / InvalidArgumentError: a dtype TF's norm rejects (both at once);
        integers with ord 1 or inf are delegated to `tf.norm`.
      ValueError: unsupported `ord`, or an axis that is not None, one integer
        or two distinct integers (TF's error); an out-of-range axis as
        `tf.norm` (InvalidArgumentError eagerly, ValueError in a graph).

    Example:
      >>> so.norm([1e30, 1e30]).numpy()   # tf.norm: inf
      1.4142135e+30
    """
    keepdims = bool(keepdims)
    with tf.name_scope(name or "norm"):
        x = tf.convert_to_tensor(tensor)
        axes = norm_axes(_OP, axis, x.shape.rank)
        if axes is None and x.shape.rank is not None and x.shape.rank > 8:
            x = tf.reshape(x, [-1])  # a flattened vector norm; TF's kernels stop at rank 8
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
        if x.dtype not in FLOAT_DTYPES and x.dtype not in COMPLEX_DTYPES:
            if x.dtype.is_integer and ord in (1, np.inf):  # exact in TF: delegated
                tf_axis = None if axes is None else axes[0] if len(axes) == 1 else tuple(axes)
                return tf.norm(x, ord=ord, axis=tf_axis, keepdims=keepdims)
            raise dtype_error(_OP, f"argument 'tensor' must be floating or complex for ord "
                                   f"{ord!r}; got {x.dtype.name}")
        if matrix and ord == 2:
            return tf.norm(x, ord=2, axis=axes, keepdims=keepdims)
        if ord in ("euclidean", "fro") or (ord == 2 and not matrix):
            if x.dtype in COMPLEX_DTYPES:
                return tf.cast(_complex_euclidean(x, axes, keepdims), x.dtype)
            return _scaled_norm(x, axes, keepdims)
        ax = x if x.dtype not in COMPLEX_DTYPES else tf.abs(x)
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
            m = tf.reduce_max(tf.abs(ax), axis=axes, keepdims=keepdims)
            return tf.where(tf.equal(m, -float("inf")), tf.zeros_like(m), m)  # empty: 0
        c = tf.cast(ax, working_dtype(ax.dtype))
        m = tf.reduce_max(tf.abs(c), axis=axes, keepdims=True)
        m1 = tf.where(m > 0, m, tf.ones_like(m))
        n = m1 * tf.pow(tf.reduce_sum(tf.pow(tf.abs(c) / m1, ord), axis=axes, keepdims=True),
                        1.0 / ord)
        n = tf.where(tf.equal(m, 0), tf.zeros_like(n), n)
        return tf.cast(_keep(n, axes, keepdims), ax.dtype)


def _keep(n, axes, keepdims):
    if keepdims:
        return n
    return tf.reshape(n, shape_of([])) if axes is None else tf.squeeze(n, axes)


def _complex_euclidean(x, axes, keepdims):
    """The euclidean norm of a complex tensor: that of its real and imaginary parts as one
    real tensor (a trailing axis of 2), so the parts are squared without overflow."""
    rank = x.shape.rank
    if rank is None:
        raise ValueError(f"{_OP}: complex inputs need a known rank")
    parts = tf.stack([tf.math.real(x), tf.math.imag(x)], -1)
    red = list(range(rank + 1)) if axes is None else list(axes) + [rank]
    n = _scaled_norm(parts, red, keepdims)
    return tf.squeeze(n, -1) if keepdims else n
