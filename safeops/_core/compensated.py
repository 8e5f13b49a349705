"""The compensated-sum engine: reduction layout and the cascaded TwoSum tree.

`tree_sum` sums the last axis of a tensor as a pairwise tree in which every
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

Axes are either a tuple of non-negative ints (static, `safeops._core.axes`)
or a 1-d int32 tensor (dynamic: unknown rank or a placeholder axis); every
layout function here takes both.
"""

import tensorflow as tf

from safeops._core.eft import prod_dw, two_sum

__all__ = ["as_3d", "collapse", "shape_of", "dd_div", "finish", "keep_shape", "move_axes_last",
           "needs_collapse", "reduced_shape", "static_result_shape", "sum_dd", "tree_sum"]


_SHAPES = {}


def shape_of(dims):
    """`dims` (a list of Python ints and scalar tensors) as a shape argument for tf.reshape.

    Eagerly, an all-int shape is a cached int32 constant: TF's eager fast path takes a
    tensor shape, while a Python list (an empty one in particular) goes through the slow
    conversion on every call.
    """
    if tf.executing_eagerly() and all(isinstance(d, int) for d in dims):
        key = tuple(dims)
        t = _SHAPES.get(key)
        if t is None:
            if len(_SHAPES) > 4096:
                _SHAPES.clear()
            t = _SHAPES[key] = tf.constant(key, tf.int32, shape=[len(key)])
        return t
    return dims


def _is_static(axes):
    return isinstance(axes, tuple)


def keep_shape(x, axes):
    """The shape of a keepdims reduction of x over `axes`, as a tf.reshape argument."""
    shape = tf.shape(x)
    if _is_static(axes):
        if not axes:
            return shape
        static = x.shape.as_list()
        if None not in static:
            return shape_of([1 if i in axes else d for i, d in enumerate(static)])
        return tf.tensor_scatter_nd_update(shape, [[a] for a in axes],
                                           tf.ones([len(axes)], tf.int32))
    mask = tf.reduce_any(tf.equal(tf.range(tf.size(shape))[:, None], axes[None, :]), 1)
    return tf.where(mask, tf.ones_like(shape), shape)


def reduced_shape(x, axes, keepdims):
    """TF's output shape of a reduction of x over `axes`, as a tf.reshape argument."""
    if keepdims:
        return keep_shape(x, axes)
    shape = tf.shape(x)
    if _is_static(axes):
        kept = [i for i in range(x.shape.rank) if i not in axes]
        static = [x.shape[i] for i in kept]
        if None not in static:
            return shape_of(static)
        return tf.gather(shape, kept) if kept else tf.constant([], tf.int32)
    mask = tf.reduce_any(tf.equal(tf.range(tf.size(shape))[:, None], axes[None, :]), 1)
    return tf.boolean_mask(shape, tf.logical_not(mask))


def static_result_shape(x, axes, keepdims):
    """The static shape of a reduction of x over `axes` (as TF's shape function infers it)."""
    if not _is_static(axes) or x.shape.rank is None:
        if keepdims and x.shape.rank is not None:
            return tf.TensorShape([None] * x.shape.rank)
        return tf.TensorShape(None)
    if keepdims:
        return tf.TensorShape([1 if i in axes else d for i, d in enumerate(x.shape)])
    return tf.TensorShape([d for i, d in enumerate(x.shape) if i not in axes])


def move_axes_last(x, axes):
    """x as a 2-d tensor [kept, reduced]: `axes` moved last and flattened, the others first."""
    if _is_static(axes):
        rank = x.shape.rank
        kept = [i for i in range(rank) if i not in axes]
        perm = kept + list(axes)
        y = tf.transpose(x, perm) if perm != list(range(rank)) else x
        static = x.shape.as_list()
        if None not in static:
            k = 1
            for i in kept:
                k *= static[i]
            n = 1
            for a in axes:
                n *= static[a]
            return tf.reshape(y, [k, n])
        shape = tf.shape(x, out_type=tf.int64)
        k = tf.reduce_prod(tf.gather(shape, kept)) if kept else tf.constant(1, tf.int64)
        n = tf.reduce_prod(tf.gather(shape, list(axes))) if axes else tf.constant(1, tf.int64)
        return tf.reshape(y, tf.stack([k, n]))
    rank = tf.rank(x)
    everything = tf.range(rank)
    mask = tf.reduce_any(tf.equal(everything[:, None], axes[None, :]), 1)
    kept = tf.boolean_mask(everything, tf.logical_not(mask))
    y = tf.transpose(x, tf.concat([kept, axes], 0))
    shape = tf.shape(x, out_type=tf.int64)
    k = tf.reduce_prod(tf.gather(shape, kept))
    n = tf.reduce_prod(tf.gather(shape, axes))
    return tf.reshape(y, tf.stack([k, n]))


def as_3d(x, axes):
    """x viewed as [outer, n, inner] with `axes` (static, sorted, non-empty) as the middle
    dimension, and x's shape as a list (Python ints where static, scalar tensors where not).

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
    if list(axes) != list(range(axes[0], axes[-1] + 1)):
        y = move_axes_last(x, axes)
        return tf.reshape(y, shape_of([prod(kept), prod([shape[a] for a in axes]), 1])), shape
    a0, a1 = axes[0], axes[-1] + 1
    dims = [prod(shape[:a0]), prod(shape[a0:a1]), prod(shape[a1:])]
    return tf.reshape(x, shape_of(dims)), shape


def tree_sum(x, c0=None):
    """Cascaded TwoSum tree along the last axis: (s, c) with s + c ~ sum (see module doc).

    s is the plain pairwise sum (differentiable, propagates NaN/inf as IEEE
    addition); c is the accumulated rounding error plus the optional initial
    compensation c0 (x's shape), summed pairwise (not differentiated).
    """
    n = x.shape[-1] if x.shape.rank is not None else None
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
        s, e = two_sum(x[..., :h], x[..., h:])
        e = tf.stop_gradient(e)
        c = e if c is None else c[..., :h] + c[..., h:] + e
        x, n = s, h
    s = x[..., 0]
    c = tf.zeros_like(s) if c is None else c[..., 0]
    return s, tf.stop_gradient(c)


def _tree_sum_dynamic(x, c0=None):
    """`tree_sum` for a last axis of unknown static length (graph mode only, not XLA)."""
    # one zero appended: at least one element, also where the axis is empty when run
    zero = tf.zeros(tf.concat([tf.shape(x)[:-1], [1]], 0), x.dtype)
    c = None if c0 is None else tf.concat([tf.stop_gradient(c0), zero], -1)
    x = tf.concat([x, zero], -1)
    c = tf.zeros_like(x) if c is None else c

    def body(v, c):
        n = tf.shape(v)[-1]
        odd = n % 2
        pad = tf.concat([tf.zeros([tf.rank(v) - 1, 2], tf.int32), [[0, odd]]], 0)
        v, c = tf.pad(v, pad), tf.pad(c, pad)
        h = (n + odd) // 2
        s, e = two_sum(v[..., :h], v[..., h:])
        return s, c[..., :h] + c[..., h:] + tf.stop_gradient(e)

    s, c = tf.while_loop(lambda v, c: tf.shape(v)[-1] > 1, body, [x, c],
                         shape_invariants=[tf.TensorShape(None), tf.TensorShape(None)])
    return s[..., 0], tf.stop_gradient(c[..., 0])


def finish(s, c):
    """s + c, ignoring a non-finite compensation (an EFT overflowed while s did not)."""
    return s + tf.where(tf.math.is_finite(c), c, tf.zeros_like(c))


def sum_dd(x, axes, keepdims, c0=None):
    """The sum of x over `axes` as a double word (s, c) of TF's output shape, and n.

    n is the number of reduced elements, in x's dtype (for a mean).
    """
    y = move_axes_last(x, axes)
    s, c = tree_sum(y, None if c0 is None else move_axes_last(c0, axes))
    n = tf.cast(tf.shape(y)[-1], x.dtype)
    shape = reduced_shape(x, axes, keepdims)
    s, c = tf.reshape(s, shape), tf.reshape(c, shape)
    static = static_result_shape(x, axes, keepdims)
    s.set_shape(static)
    c.set_shape(static)
    return s, c, n


def dd_div(s, c, n):
    """(s + c) / n as a double word (q, r), q = fl(s / n), r its correction.

    q * n is formed from exact partial products (`prod_dw`), so XLA's FMA
    contraction cannot change r."""
    q = s / n
    p, pe = prod_dw(q, n)
    r = ((s - p) - pe + c) / n
    return q, tf.stop_gradient(tf.where(tf.math.is_finite(r), r, tf.zeros_like(r)))


_MAX_RANK = 8  # TF's broadcasting kernels (SelectV2, ...) stop at rank 8


def collapse(x, axes):
    """x with runs of adjacent reduced (or kept) axes merged: (y, new_axes), y of rank <= the
    number of runs. A reduction of y over new_axes equals that of x over `axes` (reshape
    it to `reduced_shape(x, axes, keepdims)`); used where x's rank passes TF's kernel limit.
    """
    rank = x.shape.rank
    static = x.shape.as_list()
    shape = static if None not in static else tf.unstack(tf.shape(x), num=rank)
    groups = []  # (reduced?, [dims])
    for i in range(rank):
        red = i in axes
        if groups and groups[-1][0] == red:
            groups[-1][1].append(shape[i])
        else:
            groups.append((red, [shape[i]]))
    dims, new_axes = [], []
    for j, (red, ds) in enumerate(groups):
        size = 1
        for d in ds:
            size = size * d
        dims.append(size)
        if red:
            new_axes.append(j)
    return tf.reshape(x, dims), tuple(new_axes)


def needs_collapse(x):
    return x.shape.rank is not None and x.shape.rank > _MAX_RANK
