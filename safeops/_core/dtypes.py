"""The dtype policy shared by every safeops op.

One place decides:

* which dtypes are compensated (`FLOAT_DTYPES`), which are half precision
  (`HALF_DTYPES`), which are complex (`COMPLEX_DTYPES`, handled as two real
  parts of `real_dtype`);
* which dtype a reduction accumulates in (`accumulation_dtype`) and which
  dtype an elementwise formula is evaluated in (`compute_dtype`), and the
  working dtype of ops that only need half precision widened
  (`working_dtype`):

  ========  ============  ============  ========  =========================
  input     accumulation  compute       working   method
  ========  ============  ============  ========  =========================
  float16   float32       float32       float32   one rounding back
  bfloat16  float32       float32       float32   one rounding back
  float32   float64       float64       float32   one rounding back
  float64   float64       float64       float64   error-free transformations
  ========  ============  ============  ========  =========================

* the limits of a dtype (`limits`: largest finite, smallest normal, epsilon);
* the `TypeError` for a dtype an op does not accept (it names the op, the
  argument, the expected and the actual dtype).

Outputs are never silently upcast: output dtype = input dtype.
"""

import collections

import ml_dtypes
import numpy as np
import tensorflow as tf

__all__ = [
    "COMPLEX_DTYPES",
    "FLOAT_DTYPES",
    "HALF_DTYPES",
    "Limits",
    "accumulation_dtype",
    "check_floating",
    "compute_dtype",
    "convert_to_floating",
    "dtype_name",
    "int_of",
    "limits",
    "real_dtype",
    "scalar_in",
    "square_threshold",
    "working_dtype",
]

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
HALF_DTYPES = (tf.float16, tf.bfloat16)
COMPLEX_DTYPES = (tf.complex64, tf.complex128)
_FLOAT_NAMES = "float16, bfloat16, float32 or float64"

_ACCUMULATION = {
    tf.float16: tf.float32,
    tf.bfloat16: tf.float32,
    tf.float32: tf.float64,
    tf.float64: tf.float64,
}
_WORKING = {
    tf.float16: tf.float32,
    tf.bfloat16: tf.float32,
    tf.float32: tf.float32,
    tf.float64: tf.float64,
}
_INT_OF = {tf.float16: tf.int16, tf.bfloat16: tf.int16, tf.float32: tf.int32, tf.float64: tf.int64}
_REAL_OF = {tf.complex64: tf.float32, tf.complex128: tf.float64}

Limits = collections.namedtuple("Limits", ["max", "tiny", "eps"])


def dtype_name(dtype):
    """The TF name of a dtype-like object (``'float32'``)."""
    return tf.as_dtype(dtype).name


def _lookup(table, dtype, what):
    dtype = tf.as_dtype(dtype)
    try:
        return table[dtype]
    except KeyError:
        raise TypeError(f"{what}: expected {_FLOAT_NAMES}, got {dtype.name}") from None


def accumulation_dtype(dtype):
    """The dtype a reduction over `dtype` values accumulates in (see module doc).

    Raises:
      TypeError: if `dtype` is not one of the four floating dtypes.
    """
    return _lookup(_ACCUMULATION, dtype, "accumulation_dtype")


def compute_dtype(dtype):
    """The dtype an elementwise formula on `dtype` values is evaluated in.

    The same table as `accumulation_dtype`: one rounding back to `dtype` at the end.
    """
    return _lookup(_ACCUMULATION, dtype, "compute_dtype")


def working_dtype(dtype):
    """float32 for float16/bfloat16; float32 and float64 unchanged."""
    return _lookup(_WORKING, dtype, "working_dtype")


def int_of(dtype):
    """The signed integer dtype of the same width (for bit tests)."""
    return _lookup(_INT_OF, dtype, "int_of")


def real_dtype(dtype):
    """float32 for complex64, float64 for complex128; a real dtype unchanged."""
    dtype = tf.as_dtype(dtype)
    return _REAL_OF.get(dtype, dtype)


def limits(dtype):
    """`Limits(max, tiny, eps)` of a floating dtype, as Python floats."""
    dtype = tf.as_dtype(dtype)
    fi = ml_dtypes.finfo(dtype.as_numpy_dtype)
    return Limits(float(fi.max), float(fi.tiny), float(fi.eps))


def scalar_in(value, dtype):
    """A scalar parameter (Python number, NumPy scalar or tensor) as a tensor of `dtype`.

    Python numbers go straight to `dtype`: ``tf.cast(0.999, tf.float64)`` converts
    through float32 first (0.99900001287...) and ``tf.cast(2.2e-308, tf.float64)``
    gives 0.
    """
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def check_floating(op, arg, dtype, allowed=FLOAT_DTYPES):
    """Raise a `TypeError` naming `op` and `arg` unless `dtype` is in `allowed`.

    Returns:
      The dtype as a `tf.DType`.
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

    Python floats and lists become float32, as in TF. Other dtypes raise
    `TypeError` unless listed in `allowed`.
    """
    try:
        tensor = tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{op}: argument '{arg}' cannot be converted to a tensor: {err}") from None
    check_floating(op, arg, tensor.dtype, allowed)
    return tensor


def _np_dtype(dtype):
    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype)


def square_threshold(dtype):
    """``tiny / eps**2`` of a floating dtype: a sum of squares at or above it lost
    nothing that matters to underflow (each square below tiny is below eps**2 of it)."""
    lim = limits(dtype)
    return lim.tiny / lim.eps ** 2
