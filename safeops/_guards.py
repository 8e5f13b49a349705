"""Private helpers of issue 4's elementwise ops (division, where, smooth, ste).

Argument checks that are static when the value is known and `tf.debugging`
asserts when it is not, gradient un-broadcasting, and dtype limits.
"""

import ml_dtypes
import numpy as np
import tensorflow as tf

from safeops._dtypes import convert_to_floating

__all__ = []


def _finfo(dtype):
    """`np.finfo`-like limits (max, tiny) of a TF floating dtype, as Python floats."""
    dtype = tf.as_dtype(dtype)
    return float(dtype.max), float(ml_dtypes.finfo(dtype.as_numpy_dtype).tiny)


def _convert_pair(op, names, a, b):
    """Convert two floating arguments to tensors of one dtype (Python numbers follow tensors)."""
    a_is = tf.is_tensor(a) or isinstance(a, np.ndarray)
    b_is = tf.is_tensor(b) or isinstance(b, np.ndarray)
    if a_is or not b_is:
        a = convert_to_floating(op, names[0], a)
        b = convert_to_floating(op, names[1], b, dtype=None if b_is else a.dtype)
    else:
        b = convert_to_floating(op, names[1], b)
        a = convert_to_floating(op, names[0], a, dtype=b.dtype)
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: arguments '{names[0]}' and '{names[1]}' must have the same dtype; "
                        f"got {a.dtype.name} and {b.dtype.name}")
    return a, b


def _scalar_param(op, arg, value, dtype, check, message):
    """Convert a parameter to `dtype`; validate `check(v)` statically, else with an assert.

    Returns `(tensor, control_deps)`: the tensor and a list of assert ops to run first.
    """
    if tf.is_tensor(value) and value.dtype.is_integer:
        value = tf.cast(value, dtype)
    try:
        tensor = tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{op}: argument '{arg}' must be a real number or "
                        f"{tf.as_dtype(dtype).name} tensor: {err}") from None
    static = tf.get_static_value(tensor)
    if static is not None:
        if not np.all(check(np.asarray(static, dtype=np.float64))):
            raise ValueError(f"{op}: argument '{arg}' {message}; got {static}")
        return tensor, []
    ok = check(tensor)
    assert_op = tf.debugging.Assert(tf.reduce_all(ok), [f"{op}: argument '{arg}' {message}", tensor])
    return tensor, [assert_op]


def _check_ordered(op, lo_name, hi_name, lo, hi, strict=False):
    """Static or dynamic check that lo <= hi (lo < hi when strict). Returns a list of asserts."""
    lo_s, hi_s = tf.get_static_value(lo), tf.get_static_value(hi)
    rel = "<" if strict else "<="
    message = f"{op}: need {lo_name} {rel} {hi_name}"
    if lo_s is not None and hi_s is not None:
        ok = np.less(lo_s, hi_s) if strict else np.less_equal(lo_s, hi_s)
        if not np.all(ok):
            raise ValueError(f"{message}; got {lo_name}={lo_s}, {hi_name}={hi_s}")
        return []
    ok = tf.less(lo, hi) if strict else tf.less_equal(lo, hi)
    return [tf.debugging.Assert(tf.reduce_all(ok), [message, lo, hi])]


def _with_deps(deps, tensor):
    if not deps:
        return tensor
    with tf.control_dependencies(deps):
        return tf.identity(tensor)


def _reduce_to(grad, like):
    """Sum `grad` over the axes along which `like` was broadcast; reshape to `like`'s shape."""
    if grad is None:
        return None
    if like.shape.is_fully_defined() and grad.shape.is_fully_defined() and like.shape == grad.shape:
        return grad
    shape = tf.shape(like)
    axes, _ = tf.raw_ops.BroadcastGradientArgs(s0=shape, s1=tf.shape(grad))
    return tf.reshape(tf.reduce_sum(grad, axis=axes), shape)


def _fused(fn):
    """`fn` itself when executing eagerly; inside a graph, `fn` compiled with XLA.

    A graph-mode (`tf.function`) caller otherwise runs every elementwise op of
    `fn` as its own kernel, a full pass over memory each; the XLA version is one
    fused loop. Under an outer ``jit_compile=True`` the call is inlined. The
    compiled function is traced once per input signature (shape and dtype).
    """
    compiled = tf.function(fn, jit_compile=True, reduce_retracing=True, autograph=False)

    def call(*args):
        if tf.executing_eagerly():
            return fn(*args)
        return compiled(*args)

    call.__name__ = getattr(fn, "__name__", "fused")
    return call


_INT_OF = {tf.float16: tf.int16, tf.bfloat16: tf.int16, tf.float32: tf.int32, tf.float64: tf.int64}


def _is_negative(y):
    """``y < 0`` decided on the bits, so negative subnormals count as negative
    even where the CPU treats denormals as zero (TF and XLA flush them); -0.0
    is not negative; NaN with the sign bit set is."""
    itype = _INT_OF[y.dtype]
    bits = tf.bitcast(y, itype)
    return tf.logical_and(bits < 0, bits > itype.min)
