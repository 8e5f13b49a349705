"""Private engine of the compensated reductions: axis handling and the cascaded TwoSum tree.

`_tree_sum` sums the last axis of a tensor as a pairwise tree in which every
addition is a TwoSum; the rounding errors are added up (pairwise, naively) in
a second tensor. This is Ogita-Rump-Oishi's Sum2 with pairwise instead of
recursive order, so its bound is the Sum2 bound with gamma_{ceil(log2 n)} in
place of gamma_{n-1}:

    |fl(s + c) - sum x| <= eps |sum x| + gamma_{ceil(log2 n)}^2 sum |x|.

An optional initial compensation c0 (same shape as x, e.g. the error terms of
products, `safeops.dot`) is summed pairwise along with the TwoSum errors; it
adds at most ``gamma_{ceil(log2 n)} sum |c0|`` to the bound.

Under XLA the tree is compiled as written (no reassociation with fast-math
off), but XLA:CPU contracts a multiply feeding an add into an FMA: if x is an
*inexact* product computed in the same compiled cluster (``x = a * b``), the
first level's TwoSum sees fl(a b) in one place and the exact a b in another,
and the compensation is lost. Sum exact terms (as `safeops.dot` does) or
products via `safeops.dot`.
"""

import numpy as np
import tensorflow as tf

from safeops.eft import _two_sum

__all__ = []


def _axis_error(op, axis, rank, graph_error=ValueError):
    """The error TF raises for an out-of-range axis: InvalidArgumentError eagerly; in a graph,
    `graph_error` (ValueError for reductions, whose shape function checks the axis;
    tf.cumsum checks it only at run time, InvalidArgumentError)."""
    msg = f"{op}: axis {axis} is out of range for a tensor of rank {rank}"
    if tf.executing_eagerly() or graph_error is tf.errors.InvalidArgumentError:
        return tf.errors.InvalidArgumentError(None, None, msg)
    return graph_error(msg)


def _normalize_axes(op, axis, rank, graph_error=ValueError):
    """Sorted non-negative axes; TF's error types for out-of-range (see `_axis_error`)."""
    if axis is None:
        return list(range(rank))
    static = tf.get_static_value(axis)
    if static is None:
        raise ValueError(f"{op}: argument 'axis' must be static for this dtype; got {axis}")
    axes = np.atleast_1d(np.asarray(static)).astype(np.int64).tolist()
    out = []
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise _axis_error(op, a, rank, graph_error)
        out.append(a % max(rank, 1))
    return sorted(set(out))


def _move_axes_last(x, axes):
    """x transposed so that `axes` are last and flattened into one: (y [..., n], kept shape)."""
    rank = x.shape.rank
    kept = [i for i in range(rank) if i not in axes]
    y = tf.transpose(x, kept + axes) if kept + axes != list(range(rank)) else x
    shape = tf.shape(x)
    kept_shape = tf.gather(shape, kept) if kept else tf.constant([], tf.int32)
    n = 1
    for a in axes:
        n *= x.shape[a] if x.shape[a] is not None else -1
    if n < 0:
        n = -1
    y = tf.reshape(y, tf.concat([kept_shape, [n if n >= 0 else -1]], 0))
    return y, kept_shape


def _restore(r, x, axes, kept_shape, keepdims):
    """Reshape a reduction over `axes` of x back to TF's output shape."""
    if not keepdims:
        return tf.reshape(r, kept_shape)
    shape = tf.tensor_scatter_nd_update(
        tf.shape(x), [[a] for a in axes], tf.ones([len(axes)], tf.int32)) if axes else tf.shape(x)
    return tf.reshape(r, shape)


def _as_3d(x, axes):
    """x viewed as [outer, n, inner] with `axes` (sorted, non-empty) as the middle dimension,
    and x's shape as a list (Python ints where static, scalar tensors where not).

    Consecutive axes need only a reshape (no copy); others are transposed last first.
    """
    rank = x.shape.rank
    static = x.shape.as_list()
    shape = static if None not in static else tf.unstack(tf.shape(x), num=rank)

    def prod(dims):
        out = 1
        for d in dims:
            out = out * d
        return out

    kept = [shape[i] for i in range(rank) if i not in axes]
    if axes != list(range(axes[0], axes[-1] + 1)):
        y, _ = _move_axes_last(x, axes)
        return tf.reshape(y, [prod(kept), prod([shape[a] for a in axes]), 1]), shape
    a0, a1 = axes[0], axes[-1] + 1
    return tf.reshape(x, [prod(shape[:a0]), prod(shape[a0:a1]), prod(shape[a1:])]), shape


def _tree_sum(x, c0=None):
    """Cascaded TwoSum tree along the last axis: (s, c) with s + c ~ sum (see module doc).

    s is the plain pairwise sum (differentiable, propagates NaN/inf as IEEE
    addition); c is the accumulated rounding error plus the optional initial
    compensation c0 (x's shape), summed pairwise (not differentiated).
    """
    n = x.shape[-1]
    if n is None:
        return _tree_sum_dynamic(x, c0)
    if n == 0:
        z = tf.reduce_sum(x, -1)
        return z, tf.zeros_like(z)
    c = None if c0 is None else tf.stop_gradient(c0)
    while n > 1:
        if n % 2:
            pad = [[0, 0]] * (x.shape.rank - 1) + [[0, 1]]
            x = tf.pad(x, pad)
            c = tf.pad(c, pad) if c is not None else None
            n += 1
        h = n // 2
        s, e = _two_sum(x[..., :h], x[..., h:])
        e = tf.stop_gradient(e)
        c = e if c is None else c[..., :h] + c[..., h:] + e
        x, n = s, h
    s = x[..., 0]
    c = tf.zeros_like(s) if c is None else c[..., 0]
    return s, tf.stop_gradient(c)


def _tree_sum_dynamic(x, c0=None):
    """`_tree_sum` for a last axis of unknown static length (graph mode only, not XLA)."""
    x = tf.concat([x, tf.zeros_like(x[..., :1])], -1)  # at least one element
    c = tf.zeros_like(x) if c0 is None else tf.concat(
        [tf.stop_gradient(c0), tf.zeros_like(x[..., :1])], -1)

    def body(v, c):
        n = tf.shape(v)[-1]
        odd = n % 2
        pad = tf.concat([tf.zeros([tf.rank(v) - 1, 2], tf.int32), [[0, odd]]], 0)
        v, c = tf.pad(v, pad), tf.pad(c, pad)
        h = (n + odd) // 2
        s, e = _two_sum(v[..., :h], v[..., h:])
        return s, c[..., :h] + c[..., h:] + tf.stop_gradient(e)

    s, c = tf.while_loop(lambda v, c: tf.shape(v)[-1] > 1, body, [x, c],
                         shape_invariants=[tf.TensorShape(None), tf.TensorShape(None)])
    return s[..., 0], tf.stop_gradient(c[..., 0])


def _finish(s, c):
    """s + c, ignoring a non-finite compensation (an EFT overflowed while s did not)."""
    return s + tf.where(tf.math.is_finite(c), c, tf.zeros_like(c))
