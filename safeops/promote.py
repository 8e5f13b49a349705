"""`promote`: run a critical function in a wider floating dtype, return in the caller's.

The failure it fixes: in float32 the loss ``((x * 1e10 + 1) - 1e10) ** 2`` at
``x = 1`` has value 0 and gradient 0 (true: 1 and 2e10), because ``1e10 + 1``
is not representable in float32. Under ``so.promote`` the function body runs in
float64, where every intermediate is exact, and the result is rounded once back
to float32: value 1.0, gradient 2e10.

The same wrapper with ``dtype=tf.float32`` keeps a critical path (softmax,
normalization, loss, reductions) of a mixed-precision model out of
float16/bfloat16.
"""

import functools

import numpy as np
import tensorflow as tf

from safeops._core.dtypes import FLOAT_DTYPES, check_floating
from safeops._core.registry import new

__all__ = ["promote"]

_OP = "safeops.promote"


def _is_floating_tensor(x):
    if isinstance(x, (tf.Tensor, tf.Variable)) or hasattr(x, "dtype") and hasattr(x, "shape"):
        try:
            return tf.as_dtype(x.dtype) in FLOAT_DTYPES
        except TypeError:
            return False
    return False


def _widest(dtypes):
    """The input dtype with the most significand bits (float16 < bfloat16 ranks by range)."""
    order = {tf.bfloat16: 0, tf.float16: 1, tf.float32: 2, tf.float64: 3}
    return max(dtypes, key=lambda d: order[d])


@new("runs a function in a wider floating dtype (float64 by default) and rounds its "
     "results once back to the inputs' dtype")
def promote(fn=None, *, dtype=tf.float64):
    """Run `fn` with its floating tensor arguments cast to `dtype`; cast results back.

    A decorator (``@so.promote`` or ``@so.promote(dtype=tf.float32)``) and a
    plain wrapper (``so.promote(fn)(x)``). It replaces hand-written
    ``tf.cast(..., tf.float64)`` / ``tf.cast(..., tf.float32)`` pairs around a
    numerically critical piece of code.

    Method: every floating tensor, variable or NumPy array among the positional
    and keyword arguments (nested lists, tuples and dicts included) is cast to
    `dtype`; Python scalars and non-floating tensors pass unchanged. `fn` runs;
    every floating tensor in its (possibly nested) output is cast to the input
    dtype: the dtype shared by the floating inputs, or the widest of them when
    they differ (float64 > float32 > float16 > bfloat16). With no floating
    input, outputs are returned as `fn` produced them.

    Error bound: the body is evaluated in `dtype` (for float64, unit roundoff
    u64 = 2**-53), and each output is rounded once to the input dtype, so an
    output whose float64 evaluation has relative error e is returned with
    relative error at most ``u_out + e * (1 + u_out)``, where u_out is the unit
    roundoff of the output dtype (2**-24 for float32). When the float64 body is
    exact (as in the seed loss above), the result is correctly rounded.

    Gradient: flows through both casts (the gradient of a cast is the cast of
    the incoming gradient), so the backward pass also runs in `dtype` and each
    input's gradient is rounded once to the input's dtype. Edge points are those
    of `fn` evaluated in `dtype`; values that overflow when cast back become inf
    as in any cast.

    dtypes: `dtype` must be float16, bfloat16, float32 or float64. Works
    eagerly, in `tf.function` and with `jit_compile=True` (casts are plain ops).

    Args:
      fn: the function to wrap; omit to use as ``@promote(dtype=...)``.
      dtype: the dtype the body runs in (default `tf.float64`).

    Returns:
      The wrapped function (or, when `fn` is omitted, a decorator).

    Raises:
      TypeError: if `dtype` is not a floating dtype or `fn` is not callable.

    Example:
      >>> @so.promote
      ... def loss(x):
      ...     return ((x * 1e10 + 1.0) - 1e10) ** 2
      >>> float(loss(tf.constant(1.0)))  # plain float32 gives 0.0
      1.0
    """
    try:
        target = tf.as_dtype(dtype)
    except TypeError:
        raise TypeError(f"{_OP}: argument 'dtype' must be a floating dtype; got {dtype!r}") from None
    check_floating(_OP, "dtype", target)
    if fn is None:
        return lambda f: promote(f, dtype=target)
    if not callable(fn):
        raise TypeError(f"{_OP}: argument 'fn' must be callable; got {type(fn).__name__}")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        seen = []

        def cast_in(x):
            if _is_floating_tensor(x):
                seen.append(tf.as_dtype(x.dtype))
                if isinstance(x, np.ndarray):
                    x = tf.convert_to_tensor(x)
                return tf.cast(x, target)
            return x

        args, kwargs = tf.nest.map_structure(cast_in, (args, kwargs))
        out = fn(*args, **kwargs)
        if not seen:
            return out
        back = _widest(set(seen))

        def cast_out(y):
            if isinstance(y, (tf.Tensor, tf.Variable)) and y.dtype in FLOAT_DTYPES:
                return tf.cast(y, back)
            return y

        return tf.nest.map_structure(cast_out, out)

    return wrapper
