"""Dtype validation and the accumulation-dtype rule shared by every safeops op.

One place decides two things:

* which dtypes an op accepts, and the `TypeError` it raises otherwise (the
  message names the op, the argument, the expected and the actual dtype);
* which dtype an op accumulates in (`accumulation_dtype`):

  ============  ==============  =============================================
  input         accumulates in  method
  ============  ==============  =============================================
  float16       float32         upcast, one rounding back to float16
  bfloat16      float32         upcast, one rounding back to bfloat16
  float32       float64         upcast, one rounding back to float32
  float64       float64         error-free transformations (double-double)
  ============  ==============  =============================================

Outputs are never silently upcast: output dtype = input dtype.
"""

import tensorflow as tf

__all__ = [
    "FLOAT_DTYPES",
    "accumulation_dtype",
    "check_floating",
    "convert_to_floating",
    "dtype_name",
    "scalar_in",
]

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_FLOAT_NAMES = "float16, bfloat16, float32 or float64"

_ACCUMULATION = {
    tf.float16: tf.float32,
    tf.bfloat16: tf.float32,
    tf.float32: tf.float64,
    tf.float64: tf.float64,
}


def dtype_name(dtype):
    """The TF name of a dtype-like object (``'float32'``)."""
    return tf.as_dtype(dtype).name


def scalar_in(value, dtype):
    """A scalar parameter (Python number, NumPy scalar or tensor) as a tensor of `dtype`.

    Python numbers go straight to `dtype`: ``tf.cast(0.999, tf.float64)`` converts
    through float32 first (0.99900001287...) and ``tf.cast(2.2e-308, tf.float64)``
    gives 0.
    """
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def accumulation_dtype(dtype):
    """The dtype a reduction over `dtype` values accumulates in (see module doc).

    Args:
      dtype: a floating `tf.DType` or anything `tf.as_dtype` accepts.

    Returns:
      `tf.float32` for float16/bfloat16, `tf.float64` for float32 and float64.

    Raises:
      TypeError: if `dtype` is not one of the four floating dtypes.
    """
    dtype = tf.as_dtype(dtype)
    try:
        return _ACCUMULATION[dtype]
    except KeyError:
        raise TypeError(
            f"accumulation_dtype: expected {_FLOAT_NAMES}, got {dtype.name}"
        ) from None


def check_floating(op, arg, dtype, allowed=FLOAT_DTYPES):
    """Raise a `TypeError` naming `op` and `arg` unless `dtype` is in `allowed`.

    Args:
      op: the public name of the op (``'safeops.reduce_sum'``).
      arg: the argument's name (``'input_tensor'``).
      dtype: the actual dtype.
      allowed: the accepted dtypes (default: the four floating dtypes).

    Returns:
      The dtype as a `tf.DType`.

    Raises:
      TypeError: with op, argument, expected and actual dtype in the message.
    """
    dtype = tf.as_dtype(dtype)
    if dtype not in allowed:
        expected = (
            _FLOAT_NAMES
            if tuple(allowed) == FLOAT_DTYPES
            else ", ".join(tf.as_dtype(d).name for d in allowed)
        )
        raise TypeError(
            f"{op}: argument '{arg}' must have dtype {expected}; got {dtype.name}"
        )
    return dtype


def convert_to_floating(op, arg, value, dtype=None, allowed=FLOAT_DTYPES):
    """`tf.convert_to_tensor` followed by `check_floating`.

    Python floats and lists become float32, as in TF. Integer, bool, string
    and complex tensors raise `TypeError` (unless listed in `allowed`).

    Args:
      op: the public name of the op.
      arg: the argument's name.
      value: a tensor or tensor-like.
      dtype: optional dtype to convert to (as `tf.convert_to_tensor`'s).
      allowed: the accepted dtypes.

    Returns:
      A `tf.Tensor` (or the variable/tensor itself) whose dtype is in `allowed`.

    Raises:
      TypeError: if the value cannot be converted or has the wrong dtype.
    """
    try:
        tensor = tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{op}: argument '{arg}' cannot be converted to a tensor: {err}") from None
    check_floating(op, arg, tensor.dtype, allowed)
    return tensor
