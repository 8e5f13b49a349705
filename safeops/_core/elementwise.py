"""Pieces shared by the element-wise ops: precision casts, saturation, sign bits,
gradient un-broadcasting, XLA fusion of graph-mode bodies, and the delegation
of inputs the ops do not compensate (integers, complex, composite tensors,
rank beyond a kernel's limit).
"""

import contextlib

import tensorflow as tf

from safeops._core.dtypes import HALF_DTYPES, compute_dtype, int_of, limits

__all__ = [
    "MAX_SELECT_RANK",
    "abs_",
    "add",
    "cast",
    "div",
    "mul",
    "name_scope",
    "flatten_call",
    "fused",
    "fused_below_float64",
    "is_negative",
    "map_values",
    "native",
    "reduce_to",
    "saturate",
    "select",
    "up",
]


_HALF = frozenset(HALF_DTYPES)

# Thin names for kernels whose public Python wrappers cost several times the
# kernel in eager mode (tf.abs, tf.add and the tensor operators go through
# type-promotion and dispatch checks). Same kernels, same graphs; arguments of
# one dtype.


def abs_(x):
    """``|x|`` (the `Abs` kernel)."""
    return tf.raw_ops.Abs(x=x)


def add(x, y):
    """``x + y`` (the `AddV2` kernel)."""
    return tf.raw_ops.AddV2(x=x, y=y)


def mul(x, y):
    """``x * y`` (the `Mul` kernel)."""
    return tf.raw_ops.Mul(x=x, y=y)


def div(x, y):
    """``x / y`` for floating x, y (the `RealDiv` kernel)."""
    return tf.raw_ops.RealDiv(x=x, y=y)


_NO_SCOPE = contextlib.nullcontext()


def name_scope(name):
    """`tf.name_scope(name)` while building a graph; nothing eagerly.

    Eagerly a name scope only labels profiler traces, and entering one makes
    the next kernel launch several times slower than the kernel on small
    tensors.
    """
    if tf.executing_eagerly():
        return _NO_SCOPE
    return tf.name_scope(name)


def cast(x, dtype):
    """`x` as `dtype` (the `Cast` kernel; `x` itself when it has that dtype already).

    For real floating tensors; `tf.cast`'s wrapper costs several kernel launches eagerly.
    """
    if x.dtype == dtype:
        return x
    return tf.raw_ops.Cast(x=x, DstT=dtype)


def up(x):
    """`x` in its compute dtype (float16/bfloat16 -> float32, float32 -> float64)."""
    return cast(x, compute_dtype(x.dtype))


def native(x):
    """float16/bfloat16 -> float32; float32 and float64 unchanged (TF's kernels suffice)."""
    return tf.raw_ops.Cast(x=x, DstT=tf.float32) if x.dtype in _HALF else x


def saturate(x, dtype=None):
    """Clip `x` to +-the largest finite value of `dtype` (default x's); NaN stays NaN.

    TF's minimum and maximum propagate NaN, so ``clip_by_value`` keeps it.
    """
    big = tf.constant(limits(dtype or x.dtype).max, x.dtype)
    return tf.clip_by_value(x, -big, big)


def is_negative(y):
    """``y < 0`` decided on the bits, so negative subnormals count as negative
    even where the CPU treats denormals as zero (TF and XLA flush them); -0.0
    is not negative; NaN with the sign bit set is."""
    itype = int_of(y.dtype)
    bits = tf.bitcast(y, itype)
    return tf.logical_and(bits < 0, bits > itype.min)


def reduce_to(grad, like):
    """Sum `grad` over the axes along which `like` was broadcast; reshape to `like`'s shape.

    The gradient of a broadcasting binary op with respect to one input.
    """
    if grad is None:
        return None
    if (like.shape.is_fully_defined() and grad.shape.is_fully_defined()
            and like.shape == grad.shape):
        return grad
    shape = tf.shape(like)
    axes, _ = tf.raw_ops.BroadcastGradientArgs(s0=shape, s1=tf.shape(grad))
    return tf.reshape(tf.reduce_sum(grad, axis=axes), shape)


def fused(fn):
    """`fn` itself when executing eagerly; inside a graph, `fn` compiled with XLA.

    A graph-mode (`tf.function`) caller otherwise runs every elementwise op of
    `fn` as its own kernel, a full pass over memory each; the XLA version is one
    fused loop. Under an outer ``jit_compile=True`` the call is inlined. The
    compiled function is traced once per input signature (shape and dtype), with
    the static shapes it is called with: a trace relaxed to unknown dimensions
    (``reduce_retracing``) would be reused for every later shape, and bodies that
    choose their formulation by static shape (a dot product for a float64 row sum)
    would then compile to another, slower program. Eagerly nothing is looked up or
    compiled: `fn` runs op by op.
    """
    compiled = tf.function(fn, jit_compile=True, reduce_retracing=False, autograph=False)

    def call(*args):
        if tf.executing_eagerly():
            return fn(*args)
        return compiled(*args)

    call.__name__ = getattr(fn, "__name__", "fused")
    return call


def fused_below_float64(fn):
    """`fused(fn)` for inputs below float64 (the dtype of the first argument), `fn` itself
    for float64: for bodies whose float64 results rest on TF's float64 kernels (exp,
    log1p, sinh, ...), more accurate than XLA's, while lower precisions, computed one
    precision up and rounded once, are not affected by the difference."""
    compiled = fused(fn)

    def call(*args):
        return (fn if args[0].dtype == tf.float64 else compiled)(*args)

    call.__name__ = getattr(fn, "__name__", "fused")
    return call


# TF's CPU kernels of SelectV2 (tf.where) and of broadcasting binary ops
# stop at rank 8 (UnimplementedError beyond); XLA has no such limit.
MAX_SELECT_RANK = 8


def flatten_call(fn, *xs):
    """``fn(*xs)`` for same-shaped `xs` of any rank: ranks above 8 are run as 1-d.

    For element-wise bodies that use `tf.where` (rank-limited kernels).
    Inputs of different shapes must be broadcast by the caller first.
    """
    rank = xs[0].shape.rank
    if rank is not None and rank <= MAX_SELECT_RANK:
        return fn(*xs)
    # Unknown rank too: a reshape to 1-d and back costs no copy and serves every rank.
    shape = tf.shape(xs[0])
    outs = fn(*[tf.reshape(x, [-1]) for x in xs])
    if isinstance(outs, (list, tuple)):
        return type(outs)(tf.reshape(o, shape) for o in outs)
    return tf.reshape(outs, shape)


def select(condition, a, b):
    """`tf.where(condition, a, b)` for every rank (TF's kernel stops at 8)."""
    ranks = [t.shape.rank for t in (condition, a, b)]
    if all(r is not None and r <= MAX_SELECT_RANK for r in ranks):
        return tf.where(condition, a, b)
    shape = tf.broadcast_dynamic_shape(
        tf.broadcast_dynamic_shape(tf.shape(condition), tf.shape(a)), tf.shape(b))
    flat = [tf.reshape(tf.broadcast_to(t, shape), [-1]) for t in (condition, a, b)]
    return tf.reshape(tf.where(*flat), shape)


def map_values(fn, x):
    """Apply an element-wise `fn` (zero-preserving where `x` is sparse) to a composite `x`.

    SparseTensor and RaggedTensor keep their structure, as TF's element-wise
    ops do under dispatch; IndexedSlices keep indices and dense_shape.
    """
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, fn(x.values), x.dense_shape)
    if isinstance(x, tf.RaggedTensor):
        return tf.ragged.map_flat_values(fn, x)
    if isinstance(x, tf.IndexedSlices):
        return tf.IndexedSlices(fn(x.values), x.indices, x.dense_shape)
    return fn(x)
