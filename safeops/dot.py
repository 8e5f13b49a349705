"""Accurate inner products and matrix products (compensated accumulation).

=============  ==========================================================
input          method
=============  ==========================================================
float16        products and accumulation in float32 (products exact)
bfloat16       products and accumulation in float32 (products exact)
float32        products and accumulation in float64 (products exact:
               24 + 24 bits <= 53), one rounding back; matmul on CPU
               through the native kernel (`safeops/native/matmul.cc`)
float64        Dot2: every product as an exact-partial double word
               (bit-mask split, FMA-proof), TwoSum tree over the sum
complex        each of the real and imaginary parts as ONE real dot of
               twice the length (no cancellation between two dots)
others         delegated to TF (TF's result and errors)
=============  ==========================================================
"""

import tensorflow as tf

from safeops._core import compensated as cs
from safeops._core import reproducible
from safeops._core.args import convert_n, dtype_error
from safeops._core.axes import dynamic_axes, reduction_axes
from safeops._core.dtypes import COMPLEX_DTYPES, FLOAT_DTYPES, accumulation_dtype
from safeops._core.eft import prod_dw
from safeops._core.native import kernels
from safeops._core.registry import drop_in, new
from safeops._core.gradient import register_gradient
from safeops.config import is_reproducible

__all__ = ["dot", "matmul"]


def _operands(op, names, values):
    """Two tensors of one dtype by TF's rule (Python numbers take the tensor's dtype)."""
    return convert_n(op, names, values, allowed=None)


def _dot2(op, x, y, axis, keepdims):
    """float64 Dot2 over `axis` (after broadcasting): exact-partial products + TwoSum tree.

    Every product is the double word (p, e) of `safeops._core.eft.prod_dw`,
    built from exact partial products only, so XLA:CPU's FMA contraction
    cannot change the result; the p are summed by the TwoSum tree and the e
    join its compensation. The value is not differentiable (bitcasts), so the
    gradient is given explicitly: ``g * y`` for x and ``g * x`` for y.
    """
    shape = tf.broadcast_static_shape(x.shape, y.shape)
    dyn = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
    x, y = tf.broadcast_to(x, dyn), tf.broadcast_to(y, dyn)
    x.set_shape(shape)
    y.set_shape(shape)
    axes = reduction_axes(op, axis, shape.rank)
    if axes is None:
        axes = dynamic_axes(op, axis, x)

    @tf.custom_gradient
    def impl(u, v):
        p, pe = prod_dw(u, v)
        s, c, _ = cs.sum_dd(p, axes, keepdims, c0=pe)
        out = cs.finish(s, c)

        def grad(g):
            if not keepdims:
                g = tf.reshape(g, cs.keep_shape(u, axes))
            return g * v, g * u

        return out, grad

    return impl(x, y)


def _real_dot(op, x, y, axis, keepdims):
    if is_reproducible():  # correctly rounded: the exact sum of the exact products
        shape = tf.broadcast_static_shape(x.shape, y.shape)
        axes = reduction_axes(op, axis, shape.rank)
        if axes is not None:
            dyn = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
            return reproducible.dot(tf.broadcast_to(x, dyn), tf.broadcast_to(y, dyn),
                                    list(axes), keepdims)
    if x.dtype == tf.float64:
        return _dot2(op, x, y, axis, keepdims)
    acc = accumulation_dtype(x.dtype)
    prod = tf.cast(x, acc) * tf.cast(y, acc)
    return tf.cast(tf.reduce_sum(prod, axis, keepdims), x.dtype)


def _complex_dot(op, x, y, axis, keepdims):
    """Complex sum(x * y): real part ``sum(xr yr) + sum(-xi yi)`` and imaginary part
    ``sum(xr yi) + sum(xi yr)`` each as ONE compensated dot over twice the terms, so
    each part is as accurate as a real dot (no cancellation between two rounded dots)."""
    shape = tf.broadcast_static_shape(x.shape, y.shape)
    if shape.rank is None:
        raise ValueError(f"{op}: complex inputs need a known rank")
    dyn = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
    x, y = tf.broadcast_to(x, dyn), tf.broadcast_to(y, dyn)
    rank = shape.rank
    axes = reduction_axes(op, axis, rank)
    if axes is None:
        raise ValueError(f"{op}: complex inputs need a static axis")
    xr, xi, yr, yi = tf.math.real(x), tf.math.imag(x), tf.math.real(y), tf.math.imag(y)
    both = list(axes) + [rank]
    re = _real_dot(op, tf.stack([xr, -xi], -1), tf.stack([yr, yi], -1), both, keepdims)
    im = _real_dot(op, tf.stack([xr, xi], -1), tf.stack([yi, yr], -1), both, keepdims)
    if keepdims:
        re, im = tf.squeeze(re, -1), tf.squeeze(im, -1)
    return tf.complex(re, im)


@new("accurate sum(x * y, axis): float32 in float64 with exact products, float64 as Dot2 "
     "(FMA-proof in every execution mode); replaces tf.reduce_sum(x * y, axis)")
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
    the naive float32 product fails). In reproducible mode
    (`safeops.config.reproducible()`, a static axis and rank) the result is
    the correctly rounded dot product: the exact products (float32 in
    float64; float64 split exactly by TwoProd) summed exactly and rounded
    once, the same bits in any order and every execution mode.

    Gradient: y * upstream for x and x * upstream for y (summed over broadcast
    dimensions), as TF's; the error terms are not differentiated.

    dtypes: float16, bfloat16, float32, float64 (one dtype for both; output
    dtype = input dtype); complex64/complex128: the real part
    ``sum(xr yr - xi yi)`` and the imaginary part ``sum(xr yi + xi yr)`` are
    each one compensated real dot over twice the terms, so each part has the
    bound above; other dtypes delegated to ``tf.reduce_sum(x * y)``.
    NaN/inf propagate.

    Args:
      x: a tensor.
      y: a tensor of the same dtype, broadcastable with x.
      axis: the axis (int or list of ints) to contract, default -1.
      keepdims: if true, retains the contracted dimensions with length 1.
      name: optional name scope.

    Returns:
      A tensor of the input dtype: the broadcast shape without `axis`.

    Raises:
      TypeError / tf.errors.InvalidArgumentError: mismatched dtypes (both at
        once, `safeops._core.args.DTypeError`).
      ValueError / tf.errors.InvalidArgumentError: shapes that do not
        broadcast, or an axis as `reduce_sum` rejects it.

    Example:
      >>> x = tf.constant([1e8, 1.0, -1e8]); y = tf.constant([1.0, 1.0, 1.0])
      >>> float(so.dot(x, y))
      1.0
    """
    op = "safeops.dot"
    with tf.name_scope(name or "dot"):
        x, y = _operands(op, ("x", "y"), (x, y))
        if x.dtype in FLOAT_DTYPES:
            return _real_dot(op, x, y, axis, keepdims)
        if x.dtype in COMPLEX_DTYPES:
            return _complex_dot(op, x, y, axis, keepdims)
        if not x.dtype.is_integer:
            raise dtype_error(op, f"argument 'x' must be numeric; got {x.dtype.name}")
        return tf.reduce_sum(x * y, axis, keepdims)


@drop_in("tf.linalg.matmul",
         "float16/bfloat16/float32 multiply and accumulate in a wider type (exact products), "
         "float64 as Dot2 per element: faithful where TF's product cancels",
         "a_is_sparse, b_is_sparse, grad_a and grad_b are accepted and ignored (TF's kernel "
         "hints; TF's a_is_sparse rejects batched operands)")
def matmul(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False,
           a_is_sparse=False, b_is_sparse=False, output_type=None, grad_a=False, grad_b=False,
           name=None):
    """Accurate matrix product; drop-in for `tf.linalg.matmul` (rank >= 2, batched).

    Method: float16/bfloat16 multiply in float32 and float32 in float64
    (exact products, accumulation in the wider type), rounded once. On a CPU
    the float32 product runs in the native kernel (`safeops.native`: each
    operand widened once, a float64 GEMM compiled for the CPU it runs on;
    tiles fixed by the shape, so the bits do not depend on the thread count);
    under XLA, on a GPU or with the kernels off, TF's float64 matmul between
    two casts, which rounds the same float64 sum once. float64: Dot2 on every output element -- the products
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
    complex64/complex128 with each part as one real product over 2k terms
    (``[Ar, -Ai] @ [Br; Bi]`` and ``[Ar, Ai] @ [Bi; Br]``), so the real and
    imaginary parts have the bound above; other dtypes, and an
    `output_type` other than the input dtype, are delegated to
    `tf.linalg.matmul` (TF's result and errors).

    Args:
      a: a tensor of rank >= 2, ``[..., m, k]``.
      b: a tensor of the same dtype, ``[..., k, n]`` (batch dims broadcast).
      transpose_a: if true, a is transposed before multiplication.
      transpose_b: if true, b is transposed before multiplication.
      adjoint_a: if true, a is conjugated and transposed.
      adjoint_b: if true, b is conjugated and transposed.
      a_is_sparse: TF's hint for its kernel choice; accepted, no effect.
      b_is_sparse: as `a_is_sparse`.
      output_type: None or the input dtype; another dtype delegates to TF.
      grad_a: TF's hint that only the gradient is wanted; accepted, no effect.
      grad_b: as `grad_a`.
      name: optional name scope.

    Returns:
      ``[..., m, n]`` tensor of the input dtype.

    Raises:
      ValueError: transpose and adjoint of the same operand, as TF.
      TypeError / tf.errors.InvalidArgumentError: mismatched dtypes (both at
        once, `safeops._core.args.DTypeError`).
      ValueError / tf.errors.InvalidArgumentError: rank below 2 or
        incompatible shapes: TF's error (its op is called to raise it).

    Example:
      >>> a = tf.constant([[1e8, 1.0, -1e8]]); b = tf.ones([3, 1])
      >>> float(so.matmul(a, b)[0, 0])   # tf.linalg.matmul gives 0.0
      1.0
    """
    del a_is_sparse, b_is_sparse, grad_a, grad_b  # kernel hints
    op = "safeops.matmul"
    with tf.name_scope(name or "matmul"):
        a, b = _operands(op, ("a", "b"), (a, b))
        for t, adj, arg in ((transpose_a, adjoint_a, "a"), (transpose_b, adjoint_b, "b")):
            if t and adj:
                raise ValueError(f"{op}: only one of `transpose_{arg}` and `adjoint_{arg}` can "
                                 f"be True")
        dtype = a.dtype
        if not (dtype.is_integer or dtype.is_floating or dtype.is_complex):
            raise dtype_error(op, f"argument 'a' must be numeric; got {dtype.name}")
        if (output_type is not None and tf.as_dtype(output_type) != dtype) or (
                dtype not in FLOAT_DTYPES and dtype not in COMPLEX_DTYPES):
            return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b,
                                    adjoint_a=adjoint_a, adjoint_b=adjoint_b,
                                    output_type=output_type)
        ra, rb = a.shape.rank, b.shape.rank
        if (ra is not None and ra < 2) or (rb is not None and rb < 2):
            return tf.linalg.matmul(a, b)  # TF's error for a rank below 2
        ta, tb = transpose_a or adjoint_a, transpose_b or adjoint_b  # real: the same
        if dtype == tf.float32:
            return _wide_matmul(a, b, ta, tb)
        if dtype in FLOAT_DTYPES and dtype != tf.float64:
            # exact products, accumulated in float32 by TF's kernel (its flags transpose)
            acc = accumulation_dtype(dtype)
            out = tf.linalg.matmul(tf.cast(a, acc), tf.cast(b, acc), transpose_a=ta,
                                   transpose_b=tb)
            return tf.cast(out, dtype)
        if transpose_a or adjoint_a:
            a = tf.linalg.adjoint(a) if adjoint_a else tf.linalg.matrix_transpose(a)
        if transpose_b or adjoint_b:
            b = tf.linalg.adjoint(b) if adjoint_b else tf.linalg.matrix_transpose(b)
        if a.shape[-1] is not None and b.shape[-2] is not None and a.shape[-1] != b.shape[-2]:
            return tf.linalg.matmul(a, b)  # TF's error for incompatible shapes
        if dtype in COMPLEX_DTYPES:
            ar, ai, br, bi = tf.math.real(a), tf.math.imag(a), tf.math.real(b), tf.math.imag(b)
            re = _real_matmul(op, tf.concat([ar, -ai], -1), tf.concat([br, bi], -2))
            im = _real_matmul(op, tf.concat([ar, ai], -1), tf.concat([bi, br], -2))
            return tf.complex(re, im)
        return _real_matmul(op, a, b)


def _real_matmul(op, a, b):
    if a.dtype == tf.float32:
        return _wide_matmul(a, b, False, False)
    if a.dtype != tf.float64:
        acc = accumulation_dtype(a.dtype)
        return tf.cast(tf.linalg.matmul(tf.cast(a, acc), tf.cast(b, acc)), a.dtype)
    bt = tf.linalg.matrix_transpose(b)  # [..., n, k]
    return _dot2(op, a[..., :, None, :], bt[..., None, :, :], -1, False)


_F32 = (tf.float32,)


def _wide_matmul(a, b, ta, tb):
    """float32 ``op(a) @ op(b)`` (op: transpose where ta/tb) accumulated in float64, rounded once.

    On CPU (graph and eager) the native kernel widens each operand once and
    multiplies with a GEMM compiled for this CPU; TF's own float64 matmul is
    built for the lowest common CPU and costs about twice as much. Under XLA,
    on a GPU, or where the kernels are unavailable: TF's float64 matmul
    between two casts. Both round the float64 sum once.
    """
    lib = kernels(a, _F32)
    ra, rb = a.shape.rank, b.shape.rank
    if lib is None or ra is None or rb is None or not hasattr(lib, "safeops_wide_matmul"):
        if ra == rb == 2 and tf.executing_eagerly():  # the same ops without their wrappers' cost
            wide = tf.raw_ops.MatMul(a=tf.raw_ops.Cast(x=a, DstT=tf.float64),
                                     b=tf.raw_ops.Cast(x=b, DstT=tf.float64),
                                     transpose_a=ta, transpose_b=tb)
            return tf.raw_ops.Cast(x=wide, DstT=a.dtype)
        return tf.cast(tf.linalg.matmul(tf.cast(a, tf.float64), tf.cast(b, tf.float64),
                                        transpose_a=ta, transpose_b=tb), a.dtype)
    if _static_mismatch(a, b, ta, tb):
        return tf.linalg.matmul(a, b, transpose_a=ta, transpose_b=tb)  # TF's error
    if ra == rb == 2:
        return lib.safeops_wide_matmul(a, b, transpose_a=ta, transpose_b=tb)
    return _wide_batched(lib, a, b, ta, tb)


def _static_mismatch(a, b, ta, tb):
    """Whether the static shapes already show TF's error (inner or batch dimensions)."""
    ka, kb = a.shape[-2 if ta else -1], b.shape[-1 if tb else -2]
    if ka is not None and kb is not None and ka != kb:
        return True
    try:
        tf.broadcast_static_shape(a.shape[:-2], b.shape[:-2])
    except ValueError:
        return True
    return False


def _wide_batched(lib, a, b, ta, tb):
    """`_wide_matmul` of operands with batch dimensions: broadcast, flattened to one."""
    batch_static = tf.broadcast_static_shape(a.shape[:-2], b.shape[:-2])
    static = (batch_static.is_fully_defined() and a.shape[-2:].is_fully_defined()
              and b.shape[-2:].is_fully_defined())
    if static:
        batch = batch_static.as_list()
        size = 1
        for d in batch:
            size *= d

        def flat(x):
            mat = x.shape[-2:].as_list()
            if x.shape[:-2] != batch_static:
                x = tf.broadcast_to(x, cs.shape_of(batch + mat))
            return tf.reshape(x, cs.shape_of([size] + mat))
    else:
        batch = tf.broadcast_dynamic_shape(tf.shape(a)[:-2], tf.shape(b)[:-2])
        size = tf.reduce_prod(batch, keepdims=True)

        def flat(x):
            mat = tf.shape(x)[-2:]
            return tf.reshape(tf.broadcast_to(x, tf.concat([batch, mat], 0)),
                              tf.concat([size, mat], 0))

    out = lib.safeops_wide_matmul(flat(a), flat(b), transpose_a=ta, transpose_b=tb)
    if static:
        return tf.reshape(out, cs.shape_of(batch + out.shape[1:].as_list()))
    res = tf.reshape(out, tf.concat([batch, tf.shape(out)[1:]], 0))
    res.set_shape(batch_static.concatenate(out.shape[1:]))
    return res


@register_gradient("SafeopsWideMatmul")
def _wide_matmul_grad(op, grad):
    """TF's MatMul gradient, each product accumulated as the forward (float64, one rounding).

    A gradient the tape does not need (``op.skip_input_indices``, as TF's MatMul gradient
    reads it: an input that is a constant, say) is not computed."""
    a, b = op.inputs
    ta, tb = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    if not ta and not tb:
        products = (lambda: _wide_matmul(grad, b, False, True),
                    lambda: _wide_matmul(a, grad, True, False))
    elif not ta:
        products = (lambda: _wide_matmul(grad, b, False, False),
                    lambda: _wide_matmul(grad, a, True, False))
    elif not tb:
        products = (lambda: _wide_matmul(b, grad, False, True),
                    lambda: _wide_matmul(a, grad, False, False))
    else:
        products = (lambda: _wide_matmul(b, grad, True, True),
                    lambda: _wide_matmul(grad, a, True, True))
    skip = getattr(op, "skip_input_indices", None) or ()
    return tuple(None if i in skip else products[i]() for i in (0, 1))
