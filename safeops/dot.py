"""Accurate inner products and matrix products (compensated accumulation).

=============  ==========================================================
input          method
=============  ==========================================================
float16        products and accumulation in float32 (products exact)
bfloat16       products and accumulation in float32 (products exact)
float32        products and accumulation in float64 (products exact:
               24 + 24 bits <= 53), TF's kernels, one rounding back
float64        Dot2: every product as an exact-partial double word
               (bit-mask split, FMA-proof), TwoSum tree over the sum
int*           delegated to TF
complex, bool  TypeError naming the op and the argument
=============  ==========================================================
"""

import tensorflow as tf

from safeops._compensated import _finish, _move_axes_last, _normalize_axes, _restore, _tree_sum
from safeops._dtypes import accumulation_dtype, check_floating
from safeops.eft import _prod_dw

__all__ = ["dot", "matmul"]


def _operands(op, names, values):
    out = []
    for arg, v in zip(names, values):
        try:
            t = tf.convert_to_tensor(v) if not out else tf.convert_to_tensor(
                v, dtype_hint=out[0].dtype)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{op}: argument '{arg}' cannot be converted to a tensor: {err}") \
                from None
        if not t.dtype.is_integer:
            check_floating(op, arg, t.dtype)
        out.append(t)
    if out[0].dtype != out[1].dtype:
        raise TypeError(f"{op}: arguments '{names[0]}' and '{names[1]}' must have the same "
                        f"dtype; got {out[0].dtype.name} and {out[1].dtype.name}")
    return out


def _dot2(op, x, y, axis, keepdims):
    """float64 Dot2 over `axis` (after broadcasting): exact-partial products + TwoSum tree.

    Every product is the double word (p, e) of `safeops.eft._prod_dw`, built
    from exact partial products only, so XLA:CPU's FMA contraction cannot
    change the result; the p are summed by the TwoSum tree and the e join its
    compensation. The value is not differentiable (bitcasts), so the gradient
    is given explicitly: ``g * y`` for x and ``g * x`` for y.
    """
    shape = tf.broadcast_static_shape(x.shape, y.shape)
    if shape.rank is None:
        raise ValueError(f"{op}: float64 inputs need a known rank")
    dyn = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
    x, y = tf.broadcast_to(x, dyn), tf.broadcast_to(y, dyn)
    x.set_shape(shape)
    y.set_shape(shape)
    axes = _normalize_axes(op, axis, shape.rank)

    @tf.custom_gradient
    def impl(u, v):
        p, pe = _prod_dw(u, v)
        pl, kept = _move_axes_last(p, axes)
        el, _ = _move_axes_last(pe, axes)
        s, c = _tree_sum(pl, el)
        out = _restore(_finish(s, c), p, axes, kept, keepdims)

        def grad(g):
            if not keepdims:
                g = tf.reshape(g, tf.tensor_scatter_nd_update(
                    tf.shape(u), [[a] for a in axes], tf.ones([len(axes)], tf.int32))
                    if axes else tf.shape(u))
            return g * v, g * u

        return out, grad

    return impl(x, y)


def dot(x, y, axis=-1, keepdims=False, name=None):
    """Accurate batched inner product ``sum(x * y, axis)``; replaces ``tf.reduce_sum(x * y, axis)``.

    Method: float16/bfloat16 in float32 and float32 in float64, where every
    product is exact and the accumulation (TF's reduction) is in the wider
    type, rounded once; float64 uses Dot2 (Ogita-Rump-Oishi 2005): each
    product as a double word from the exact products of its bit-mask split
    halves (Dekker) and the cascaded TwoSum tree.

    Error bound: float64: ``|res - x.y| <= u|x.y| + gamma_{k+2}^2 |x|.|y|``
    with ``k = ceil(log2 n)`` (Dot2 with a pairwise tree; the +2 covers the
    product error terms, which are represented to ``4u^2 |x_i y_i|`` and
    summed pairwise in the compensation). The same in every execution mode,
    including ``jit_compile=True``: every multiply in the float64 path is
    exact (bit-mask split), so XLA:CPU's FMA contraction cannot change the
    result (tested on condition 1e12: eager, tf.function and XLA give the
    same correctly rounded value; `tf.reduce_sum(x * y)` is ~1e11 ulp off).
    float32: ``<= u|x.y| + gamma64_n |x|.|y|`` (worst case; guarantees 1 ulp
    only for condition ``<~ 2**29 / n``); *measured* within 1 ulp for
    condition numbers ``2|x|.|y| / |x.y|`` up to 1e7 at n = 2000 (tested;
    the naive float32 product fails).

    Gradient: y * upstream for x and x * upstream for y (summed over broadcast
    dimensions), as TF's; the error terms are not differentiated.

    dtypes: float16, bfloat16, float32, float64 (one dtype for both; output
    dtype = input dtype); integers delegated to TF; complex/bool/string raise
    TypeError (complex products are not compensated). NaN/inf propagate.

    Args:
      x: a tensor.
      y: a tensor of the same dtype, broadcastable with x.
      axis: the axis (int or list of ints) to contract, default -1.
      keepdims: if true, retains the contracted dimensions with length 1.
      name: optional name scope.

    Returns:
      A tensor of the input dtype: the broadcast shape without `axis`.

    Raises:
      TypeError: non-floating or mismatched dtypes.
      ValueError / tf.errors.InvalidArgumentError: shapes that do not
        broadcast, or axis out of range (as TF).

    Example:
      >>> x = tf.constant([1e8, 1.0, -1e8]); y = tf.constant([1.0, 1.0, 1.0])
      >>> float(so.dot(x, y))
      1.0
    """
    op = "safeops.dot"
    with tf.name_scope(name or "dot"):
        x, y = _operands(op, ("x", "y"), (x, y))
        if x.dtype.is_integer:
            return tf.reduce_sum(x * y, axis, keepdims)
        if x.dtype == tf.float64:
            return _dot2(op, x, y, axis, keepdims)
        acc = accumulation_dtype(x.dtype)
        prod = tf.cast(x, acc) * tf.cast(y, acc)
        return tf.cast(tf.reduce_sum(prod, axis, keepdims), x.dtype)


def matmul(a, b, transpose_a=False, transpose_b=False, name=None):
    """Accurate matrix product; drop-in for `tf.linalg.matmul` (rank >= 2, batched).

    Method: float16/bfloat16 multiply in float32 and float32 in float64
    (exact products, accumulation in the wider type by TF's matmul kernel),
    rounded once. float64: Dot2 on every output element -- the products
    ``a[..., i, k] * b[..., k, j]`` are formed as exact-partial double words
    and summed with the TwoSum tree. That materialises an ``[..., m, n, k]`` tensor: float64
    memory and time are O(m n k); use it for moderate sizes.

    Error bound: each element as `dot`: float32 measured within 1 ulp for
    condition up to 1e7; float64 ``u|c_ij| + gamma_{ceil(log2 k)+2}^2
    sum_k |a_ik b_kj|``, in every execution mode including
    ``jit_compile=True`` (no inexact multiply for XLA to contract; see `dot`).

    Gradient: ``g @ b^T`` and ``a^T @ g`` (transposes as TF's), computed in the
    accumulation precision.

    dtypes: float16, bfloat16, float32, float64 (output dtype = input dtype);
    integers delegated to `tf.linalg.matmul`; complex/bool/string: TypeError.

    Args:
      a: a tensor of rank >= 2, ``[..., m, k]``.
      b: a tensor of the same dtype, ``[..., k, n]`` (batch dims broadcast).
      transpose_a: if true, a is transposed before multiplication.
      transpose_b: if true, b is transposed before multiplication.
      name: optional name scope.

    Returns:
      ``[..., m, n]`` tensor of the input dtype.

    Raises:
      TypeError: non-floating or mismatched dtypes.
      ValueError / tf.errors.InvalidArgumentError: incompatible shapes, as TF.

    Example:
      >>> a = tf.constant([[1e8, 1.0, -1e8]]); b = tf.ones([3, 1])
      >>> float(so.matmul(a, b)[0, 0])   # tf.linalg.matmul gives 0.0
      1.0
    """
    op = "safeops.matmul"
    with tf.name_scope(name or "matmul"):
        a, b = _operands(op, ("a", "b"), (a, b))
        if a.dtype.is_integer:
            return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
        if a.dtype != tf.float64:
            acc = accumulation_dtype(a.dtype)
            out = tf.linalg.matmul(tf.cast(a, acc), tf.cast(b, acc),
                                   transpose_a=transpose_a, transpose_b=transpose_b)
            return tf.cast(out, a.dtype)
        if a.shape.rank is not None and a.shape.rank < 2 or b.shape.rank is not None and \
                b.shape.rank < 2:
            raise ValueError(f"{op}: arguments 'a' and 'b' must have rank >= 2; got "
                             f"{a.shape.rank} and {b.shape.rank}")
        a = tf.linalg.matrix_transpose(a) if transpose_a else a
        bt = b if transpose_b else tf.linalg.matrix_transpose(b)  # [..., n, k]
        if a.shape[-1] is not None and bt.shape[-1] is not None and a.shape[-1] != bt.shape[-1]:
            raise ValueError(f"{op}: inner dimensions differ: a has {a.shape[-1]} columns, "
                             f"b has {bt.shape[-1]} rows")
        return _dot2(op, a[..., :, None, :], bt[..., None, :, :], -1, False)
