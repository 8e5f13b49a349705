"""Argument conversion and scalar-parameter checks shared by every safeops op.

TensorFlow's rule for the inputs of one op that share a dtype: tensors
(and variables) fix the dtype; Python numbers, lists and NumPy values take
it (``tf.math.add(1.0, float64_tensor)`` is float64). With no tensor among
them the first value's own dtype is used. Tensors of different dtypes are an
error, raised as TF raises it: `InvalidArgumentError` from an eager kernel,
`TypeError` while building a graph. `DTypeError` is both, so one exception
serves both modes and both kinds of handler.

Scalar parameters (`eps`, `temperature`, `clip_norm`, ...) may be Python
numbers, NumPy scalars or tensors: a value known when the op is built (every
eager value, every constant) is checked at once and raises `ValueError`;
otherwise a `tf.debugging.Assert` runs before the op's output is produced.
"""

import numbers

import numpy as np
import tensorflow as tf

from safeops._core.dtypes import FLOAT_DTYPES

__all__ = [
    "COMPOSITES",
    "DTypeError",
    "check_ordered",
    "convert",
    "convert_n",
    "dtype_error",
    "param",
    "with_deps",
]

# Composite tensors an op may accept in place of a dense one (see `convert`).
COMPOSITES = (tf.SparseTensor, tf.RaggedTensor, tf.IndexedSlices)

_EagerTensor = type(tf.constant(0.0))


class DTypeError(tf.errors.InvalidArgumentError, TypeError):
    """A dtype TF's kernel would reject: `InvalidArgumentError` eagerly, `TypeError` in graphs.

    TF raises the first from an eager kernel and the second from graph
    construction for the same mistake; this class is both.
    """

    def __init__(self, message):
        super().__init__(None, None, message)

    def __reduce__(self):
        return (type(self), (self.message,))


def dtype_error(op, message):
    """A `DTypeError` whose message names `op`."""
    return DTypeError(f"{op}: {message}")


def _names(allowed):
    if tuple(allowed) == FLOAT_DTYPES:
        return "float16, bfloat16, float32 or float64"
    return ", ".join(tf.as_dtype(d).name for d in allowed)


_ALLOWED = {}


def _allowed_set(allowed):
    try:
        return _ALLOWED[allowed]
    except KeyError:
        return _ALLOWED.setdefault(allowed, frozenset(tf.as_dtype(d) for d in allowed))


def _check(op, arg, dtype, allowed):
    if allowed is not None and dtype not in _allowed_set(allowed):
        raise dtype_error(op, f"argument '{arg}' must have dtype {_names(allowed)}; "
                              f"got {dtype.name}")


def _to_tensor(op, arg, value, dtype):
    try:
        return tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        kind = ValueError if isinstance(err, ValueError) else TypeError  # TF's type, plainly
        raise kind(f"{op}: argument '{arg}' cannot be converted to a "
                   f"{'tensor' if dtype is None else dtype.name + ' tensor'}: {err}") from None


def convert(op, arg, value, allowed=FLOAT_DTYPES, dtype=None, composite=()):
    """`value` as a tensor, its dtype checked against `allowed` (None: any).

    Args:
      op: the public op's name, for messages (``"safeops.sqrt"``).
      arg: the argument's name.
      value: tensor, variable, NumPy value, Python number or list.
      allowed: the accepted dtypes; others raise `DTypeError`.
      dtype: convert Python/NumPy values to this dtype (a tensor of another
        dtype raises `DTypeError`).
      composite: the composite tensor types (from `COMPOSITES`) passed
        through unconverted (their dtype is checked).

    Returns:
      A `tf.Tensor` (or one of the `composite` types).

    Raises:
      DTypeError: a dtype outside `allowed`, or a tensor whose dtype is not `dtype`.
      TypeError, ValueError: what `tf.convert_to_tensor` raises, with op and argument.
    """
    if type(value) is _EagerTensor:  # the eager fast path: no conversion at all
        tensor = value
    elif composite and isinstance(value, composite):
        tensor = value
    elif tf.is_tensor(value) and not isinstance(value, COMPOSITES):
        tensor = tf.convert_to_tensor(value)  # a variable reads its value
    else:
        tensor = _to_tensor(op, arg, value, None if dtype is None else tf.as_dtype(dtype))
    if dtype is not None and tensor.dtype != dtype:
        raise dtype_error(op, f"argument '{arg}' must have dtype {tf.as_dtype(dtype).name}; "
                              f"got {tensor.dtype.name}")
    _check(op, arg, tensor.dtype, allowed)
    return tensor


def convert_n(op, names, values, allowed=FLOAT_DTYPES, composite=(), mismatch=DTypeError):
    """Several arguments that share one dtype, by TF's rule (module doc).

    Args:
      op: the public op's name.
      names: the arguments' names.
      values: their values.
      allowed: accepted dtypes (None: any).
      composite: composite tensor types passed through (see `convert`).
      mismatch: the exception class for tensors of different dtypes; the
        default `DTypeError` is what a TF kernel raises (`tf.math.add`); ops
        whose TF original raises `TypeError` itself (`tf.math.divide_no_nan`)
        pass `TypeError`.

    Returns:
      A list of tensors of one dtype.
    """
    dtype = None
    for name, v in zip(names, values):
        if tf.is_tensor(v):
            dtype = v.dtype.base_dtype
            _check(op, name, dtype, allowed)  # before Python values are converted to it
            break
    out = []
    for name, v in zip(names, values):
        if tf.is_tensor(v):
            t = convert(op, name, v, allowed=None, composite=composite)
        else:
            t = _to_tensor(op, name, v, dtype)
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            raise mismatch(f"{op}: arguments '{names[0]}' and '{name}' must have the same "
                           f"dtype; got {out[0].dtype.name} and {t.dtype.name}")
        out.append(t)
    if out:
        _check(op, names[0], dtype, allowed)
    return out


_CHECKS = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonnegative": (lambda v: v >= 0, "must be >= 0"),
}


def param(op, arg, value, dtype, check="positive", cast=False):
    """A scalar parameter as a `dtype` tensor, validated.

    Python numbers go straight to `dtype` (no float32 detour: 1e-300 stays
    1e-300 in float64); NumPy and integer tensors are cast to it; a floating
    tensor of another dtype raises `DTypeError`, as a TF kernel would.

    Args:
      op, arg: names for messages.
      value: Python number, NumPy scalar, or tensor.
      dtype: the dtype of the result.
      check: ``"positive"``, ``"nonnegative"`` or None.
      cast: cast a floating tensor of another dtype too (for parameters TF
        casts, like `clip_norm`), instead of raising `DTypeError`.

    Returns:
      The tensor. When the value is not known while the graph is built, it
      carries a `tf.debugging.Assert` (a control dependency), so anything
      computed from it runs the check first.

    Raises:
      ValueError: a known value that fails the check (NaN fails every check).
      TypeError: a value that is not a real number.
    """
    if isinstance(value, bool) or (isinstance(value, (str, bytes))):
        raise TypeError(f"{op}: argument '{arg}' must be a real number; got {value!r}")
    if isinstance(value, numbers.Real):
        static = float(value)
        tensor = tf.constant(static, dtype)
    else:
        if not tf.is_tensor(value):
            try:
                value = np.asarray(value)
            except Exception:  # noqa: BLE001 - anything unconvertible is a type error
                raise TypeError(f"{op}: argument '{arg}' must be a real number; "
                                f"got {value!r}") from None
            if value.dtype.kind not in "iuf":
                raise TypeError(f"{op}: argument '{arg}' must be a real number; "
                                f"got {value!r}")
            tensor = tf.constant(value.astype(tf.as_dtype(dtype).as_numpy_dtype))
        else:
            tensor = tf.convert_to_tensor(value)
            if tensor.dtype.is_integer or (cast and tensor.dtype.is_floating):
                tensor = tf.cast(tensor, dtype)
            elif tensor.dtype != dtype:
                raise dtype_error(op, f"argument '{arg}' must have dtype "
                                      f"{tf.as_dtype(dtype).name}; got {tensor.dtype.name}")
        static = tf.get_static_value(tensor)
    if check is None:
        return tensor
    test, message = _CHECKS[check]
    if static is not None:
        with np.errstate(invalid="ignore"):
            ok = np.all(test(np.asarray(static, dtype=np.float64)))
        if not ok:
            raise ValueError(f"{op}: argument '{arg}' {message}; got {static}")
        return tensor
    assert_op = tf.debugging.Assert(tf.reduce_all(test(tensor)),
                                    [f"{op}: argument '{arg}' {message}", tensor])
    with tf.control_dependencies([assert_op]):
        return tf.identity(tensor)


def check_ordered(op, lo_name, hi_name, lo, hi, strict=False):
    """lo <= hi (lo < hi when `strict`): statically, else as asserts (returned list).

    Raises:
      ValueError: known values out of order (NaN is out of order).
    """
    lo_s, hi_s = tf.get_static_value(lo), tf.get_static_value(hi)
    rel = "<" if strict else "<="
    message = f"{op}: need {lo_name} {rel} {hi_name}"
    if lo_s is not None and hi_s is not None:
        with np.errstate(invalid="ignore"):
            ok = np.less(lo_s, hi_s) if strict else np.less_equal(lo_s, hi_s)
        if not np.all(ok):
            raise ValueError(f"{message}; got {lo_name}={lo_s}, {hi_name}={hi_s}")
        return []
    ok = tf.less(lo, hi) if strict else tf.less_equal(lo, hi)
    return [tf.debugging.Assert(tf.reduce_all(ok), [message, lo, hi])]


def with_deps(deps, tensor):
    """`tensor`, run after the ops in `deps` (nothing added when `deps` is empty)."""
    if not deps:
        return tensor
    with tf.control_dependencies(deps):
        return tf.identity(tensor)
