"""Private helpers shared by safeops' special functions (logexp, special, softmax, norms).

`compute_dtype` is the precision an elementwise op works in: float16 and
bfloat16 in float32, float32 in float64 (one rounding back at the end, so the
float32 result is correctly rounded except in rare double-rounding cases),
float64 in float64 with formulas chosen to avoid cancellation.
"""

import numpy as np
import tensorflow as tf

from safeops._dtypes import convert_to_floating

__all__ = []

_COMPUTE = {tf.float16: tf.float32, tf.bfloat16: tf.float32,
            tf.float32: tf.float64, tf.float64: tf.float64}


def compute_dtype(dtype):
    return _COMPUTE[tf.as_dtype(dtype)]


def max_finite(dtype):
    """Largest finite value of `dtype` as a Python float."""
    return float(tf.as_dtype(dtype).max)


def tiny(dtype):
    """Smallest positive normal value of `dtype` as a Python float."""
    dtype = tf.as_dtype(dtype)
    if dtype == tf.bfloat16:
        return float(np.finfo(np.float32).tiny)
    return float(np.finfo(dtype.as_numpy_dtype).tiny)


def saturate(x, dtype):
    """Clip `x` (any float dtype) to +-largest finite value of `dtype`; NaN stays NaN."""
    big = tf.constant(max_finite(dtype), x.dtype)
    return tf.clip_by_value(x, -big, big)


def convert(op, arg, value):
    return convert_to_floating(op, arg, value)


def binary_inputs(op, x, y, xname="x", yname="y"):
    """Convert both, check dtypes agree (TypeError naming the op otherwise)."""
    x = convert_to_floating(op, xname, x)
    y = convert_to_floating(op, yname, y, dtype=x.dtype if not tf.is_tensor(y) else None)
    if y.dtype != x.dtype:
        raise TypeError(f"{op}: arguments '{xname}' and '{yname}' must have the same dtype; "
                        f"got {x.dtype.name} and {y.dtype.name}")
    return x, y
