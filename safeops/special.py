"""Elementwise special functions with deliberate edge behaviour: sqrt, hypot, log1m,
safe_log, safe_exp.

Same pattern as `safeops.logexp`. float16/bfloat16 are always computed in
float32. `hypot` computes float32 in float64 (rounded once); `log1m`,
`safe_log`, `safe_exp` and `sqrt` use TF's own float32/float64 kernels, which
already meet the bound (<= 1.6 bits of error, measured), and only change the
edges and gradients. Outputs keep the input dtype.
"""

import tensorflow as tf

from safeops._core import args
from safeops._core.dtypes import COMPLEX_DTYPES, FLOAT_DTYPES, limits
from safeops._core.elementwise import cast, fused, map_values, name_scope, native, saturate, up
from safeops._core.gradient import custom_gradient
from safeops._core.registry import drop_in, new

__all__ = ["hypot", "log1m", "safe_exp", "safe_log", "sqrt"]


_SQRT_DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES


def _unary(op, x):
    return args.convert(f"safeops.{op}", "x", x)


@drop_in("tf.math.sqrt",
         "gradient 0 at x == 0 (TF: inf, which becomes NaN times a zero upstream gradient)",
         "complex inputs: TF's op and gradient unchanged")
def sqrt(x, name=None):
    """Computes ``sqrt(x)`` with a finite gradient at 0; drop-in for `tf.sqrt`.

    Method: the forward pass is `tf.sqrt` itself (IEEE square root, correctly
    rounded: error <= 0.5 ulp). Only the gradient changes.

    Gradient: ``0.5 / sqrt(x)`` for x > 0 (finite down to the smallest
    subnormal: 1.3e22 in float32), and **0 at x == 0** (TF gives inf, which turns
    into NaN as soon as it is multiplied by a zero upstream gradient). This is the
    convention of optax's safe norm: the one-sided derivative is +inf, 0 is the
    value that keeps `sqrt(sum(x**2))`-style code trainable. 0 at +inf; NaN for
    x < 0 (where the value is NaN).

    dtypes: float16, bfloat16, float32, float64 (TF's kernel in each); output in
    the input dtype. complex64/complex128: TF's op and gradient unchanged.
    SparseTensor and RaggedTensor inputs give the same type back, as TF's.

    Args:
      x: floating or complex tensor (or SparseTensor, RaggedTensor).
      name: optional name scope.

    Returns:
      A tensor of the same type, dtype and shape.

    Raises:
      InvalidArgumentError, TypeError: integer or bool x (TF's pair: one
        exception that is both, naming the op and the argument).

    Example:
      >>> with tf.GradientTape() as t:
      ...     x = tf.constant(0.); t.watch(x); y = so.sqrt(x)
      >>> t.gradient(y, x).numpy()   # tf.sqrt: inf
      0.0
    """
    with name_scope(name or "sqrt"):
        x = args.convert("safeops.sqrt", "x", x, allowed=_SQRT_DTYPES,
                         composite=(tf.SparseTensor, tf.RaggedTensor))
        if x.dtype.is_complex:
            return tf.math.sqrt(x)  # TF's kernel and gradient, composites included
        return map_values(_sqrt, x)


def _sqrt_forward(x):
    y = tf.sqrt(x)
    return y, (y,)


def _sqrt_backward(g, x, y):
    # g / (2y), 0 where y == 0: one fused kernel (2y is exact: y <= sqrt(max))
    return tf.math.divide_no_nan(g, y + y)


_sqrt = custom_gradient("Sqrt", _sqrt_forward, _sqrt_backward, saves=True)


_SCALES = {  # compute dtype: (big threshold, its scale, small threshold, its scale)
    tf.float32: (2.0**63, 2.0**-75, 2.0**-63, 2.0**90),
    tf.float64: (2.0**300, 2.0**-600, 2.0**-300, 2.0**600),
}


def _scaled_hypot(cx, cy):
    """sqrt(cx**2 + cy**2) with exact power-of-2 scaling (no overflow/underflow)."""
    big_t, big_s, small_t, small_s = _SCALES[cx.dtype]
    m = tf.maximum(tf.abs(cx), tf.abs(cy))
    scale = tf.where(m > big_t, tf.constant(big_s, cx.dtype),
                     tf.where(m < small_t, tf.constant(small_s, cx.dtype),
                              tf.constant(1.0, cx.dtype)))
    sx, sy = cx * scale, cy * scale
    h = tf.sqrt(sx * sx + sy * sy) / scale
    return _inf_wins(cx, cy, h)


def _inf_wins(cx, cy, h):
    """+inf where either input is infinite, even where the other is NaN (IEEE 754 hypot)."""
    inf = tf.math.is_inf(cx) | tf.math.is_inf(cy)
    return tf.where(inf, tf.constant(float("inf"), cx.dtype), h)


@new("as numpy.hypot: no overflow or underflow of the squares; gradient (0, 0) at the origin")
def hypot(x, y, name=None):
    """Computes ``sqrt(x**2 + y**2)`` without overflow or underflow (new op; `numpy.hypot`).

    Method: float32 inputs are squared and summed in float64 (squares exact, one
    rounding each for sum, sqrt and the final cast: <= 1 ulp); float16 and
    bfloat16 in float32 and float64 in float64 with exact power-of-2 scaling
    when max(|x|, |y|) is huge or tiny (bound ~1.5 ulp). The naive formula is inf
    for |x| > 1.8e19 and 0 for |x| < 1e-23 in float32. An infinite input gives
    +inf even when the other is NaN (IEEE 754 hypot).

    Gradient: ``(x / h, y / h)`` from the rounded result (<= 1 ulp more);
    **(0, 0) at x == y == 0** (naive: NaN), and (0, 0) where the value itself
    overflows to inf (|h| > the dtype's largest finite value).

    dtypes: float16, bfloat16 (computed in float32), float32 (computed in
    float64), float64; x and y must share the dtype (Python numbers take the
    other's); output in that dtype. Integer or mismatched dtypes: TypeError
    naming the op and arguments.

    Args:
      x: float tensor.
      y: float tensor of the same dtype, broadcastable with x.
      name: optional name scope.

    Returns:
      A tensor of the broadcast shape and input dtype.

    Raises:
      TypeError: non-float inputs or mismatched dtypes.

    Example:
      >>> so.hypot(3e30, 4e30).numpy()   # naive: inf
      5e+30
    """
    with name_scope(name or "hypot"):
        x, y = args.convert_n("safeops.hypot", ("x", "y"), (x, y))
        return _hypot(x, y)


def _hypot_forward(x, y):
    cx, cy = up(x), up(y)
    if x.dtype == tf.float32:
        h = _inf_wins(cx, cy, tf.sqrt(cx * cx + cy * cy))
    else:
        h = _scaled_hypot(cx, cy)
    out = cast(h, x.dtype)
    return out, (out,)


def _hypot_backward(g, x, y, out):
    # x / h and y / h in the input precision from the rounded h (<= 1 ulp);
    # (0, 0) where h == 0, and where h overflows the dtype (value inf)
    return g * tf.math.divide_no_nan(x, out), g * tf.math.divide_no_nan(y, out)


# Inside a graph the forward and the backward each run as one XLA-compiled loop.
_hypot = custom_gradient("Hypot", _hypot_forward, _hypot_backward, saves=True, fuse=True)


@new("log(1 - x) as log1p(-x); gradient saturates at x == 1")
def log1m(x, name=None):
    """Computes ``log(1 - x)`` accurately for small x (new op; = `log1p(-x)`).

    Method: ``log1p(-x)`` (float16/bfloat16 computed in float32): TF's log1p
    is accurate to ~1 ulp (measured: mean 0.18, max 1.6 bits of error in float32
    and float64 over 10 000 inputs). The naive
    ``log(1 - x)`` returns 0 for |x| < 6e-8 in float32 (all bits wrong).

    Gradient: ``-1 / (1 - x)``; saturates at minus the largest finite value at
    x == 1 (where the value is -inf); NaN for x > 1 (value NaN).

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype. Other dtypes: TypeError naming the op and argument.

    Args:
      x: float tensor (x <= 1 in the domain).
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape.

    Raises:
      TypeError: if x is not a float tensor.

    Example:
      >>> so.log1m(1e-10).numpy()   # tf.math.log(1 - 1e-10) == 0
      -1e-10
    """
    with name_scope(name or "log1m"):
        return _log1m(_unary("log1m", x))


def _log1m_forward(x):
    return cast(tf.math.log1p(-native(x)), x.dtype)


def _log1m_backward(g, x):
    c = native(x)
    return g * cast(saturate(-1.0 / (1.0 - c), x.dtype), x.dtype)


_log1m = custom_gradient("Log1m", _log1m_forward, _log1m_backward)


@new("log(max(x, eps)): never -inf or NaN for x <= 0; eps > 0 checked also for tensors")
def safe_log(x, eps=None, name=None):
    """Computes ``log(max(x, eps))``: a log that is never -inf or NaN for x <= 0 (new op).

    Replaces `tf.math.log` where its input can reach 0 (DEBAR's unsafe ``Log``:
    float32 inputs <= 1e-37, where the gradient 1/x also overflows).

    Method: inputs below the floor ``eps`` (default: the smallest positive
    normal number of the dtype, 1.18e-38 in float32, so log(eps) = -87.3) are
    replaced by eps, including 0 and negative numbers; the log is TF's (float16/
    bfloat16 computed in float32), <= 1 ulp (measured max 1.6 bits of error
    over 10 000 inputs from 0 and the subnormals up).

    Gradient: ``1 / x`` for x >= eps (at most 1/eps, finite), 0 below the floor
    (the floored function is constant there). NaN propagates in value and
    gradient.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype; a Python `eps` is converted directly to the compute dtype
    (a float64 floor of 1e-300 stays 1e-300), and one below the smallest normal
    number of the compute dtype is raised to it (CPU kernels flush subnormals to
    0, whose log is -inf). Other dtypes: TypeError naming the op and argument.

    Args:
      x: float tensor.
      eps: the floor, a positive Python float or scalar (default: smallest
        normal of x's dtype).
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape, >= log(eps).

    Raises:
      TypeError: if x is not a float tensor.
      ValueError: if eps is not > 0 (a number or a tensor known when the op is
        built; otherwise an assert raises InvalidArgumentError when it runs, so
        the result is never -inf).

    Example:
      >>> so.safe_log(0.).numpy()   # tf.math.log(0.) is -inf
      -87.33655
    """
    op = "safeops.safe_log"
    with name_scope(name or "safe_log"):
        x = _unary("safe_log", x)
        cdt = native(x).dtype
        tiny = limits(cdt).tiny
        if eps is None:
            eps = limits(x.dtype).tiny
        # A Python floor goes straight to the compute dtype (1e-300 stays
        # 1e-300 in float64); a tensor floor is validated as one (> 0, also
        # when only known at run time). TF's CPU kernels flush subnormals to 0
        # (log would be -inf again): a subnormal floor is raised to the
        # smallest normal number.
        eps = tf.maximum(args.param(op, "eps", eps, cdt, "positive", cast=True), tiny)
        return _safe_log(x, eps)


def _safe_log_forward(x, eps):
    c = native(x)
    return cast(tf.math.log(tf.where(c < eps, eps, c)), x.dtype)


def _safe_log_backward(g, x, eps):
    c = native(x)
    below = c < eps
    d = tf.where(below, tf.constant(0, c.dtype), 1.0 / tf.where(below, eps, c))
    # the gradient 1/x <= 1/eps overflows float16/bfloat16 for a small eps
    return g * cast(saturate(d, x.dtype), x.dtype)


# Inside a graph the backward (a comparison, two selections, a quotient, a product) is one
# XLA-compiled loop; the forward keeps TF's log kernel.
_safe_log = custom_gradient("SafeLog", _safe_log_forward, fused(_safe_log_backward), n_inputs=1)


@new("exp saturating at the largest finite value; gradient 0 where saturated")
def safe_exp(x, name=None):
    """Computes ``exp(x)``, saturating at the largest finite value instead of inf (new op).

    Replaces `tf.exp` where its input can exceed log(max) (DEBAR's unsafe
    ``Exp``: x >= 88.73 in float32, x >= 709.79 in float64).

    Method: TF's exp (float16/bfloat16 computed in float32, so their overflow
    point is detected exactly), then values above the dtype's largest finite
    value (inf) are set to it; <= 1 ulp (measured max 1 bit of error). -inf gives 0; +inf gives the largest finite value;
    NaN propagates.

    Gradient: ``exp(x)`` where the value is not saturated; 0 where it is (the
    saturated function is constant there), so no inf * 0 = NaN downstream.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype. Other dtypes: TypeError naming the op and argument.

    Args:
      x: float tensor.
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape, always finite for non-NaN input.

    Raises:
      TypeError: if x is not a float tensor.

    Example:
      >>> so.safe_exp(100.).numpy()   # tf.exp(100.) is inf
      3.4028235e+38
    """
    with name_scope(name or "safe_exp"):
        return _safe_exp(_unary("safe_exp", x))


def _safe_exp_forward(x):
    c = native(x)
    e = tf.exp(c)
    big = tf.constant(limits(x.dtype).max, c.dtype)
    out = tf.minimum(e, big)  # NaN stays NaN (TF's minimum propagates it)
    return cast(out, x.dtype), (e,)


def _safe_exp_backward(g, x, e):
    # exp(x) where not saturated, 0 where it is (e == inf, or above the
    # float16/bfloat16 maximum)
    big = tf.constant(limits(x.dtype).max, e.dtype)
    return g * cast(tf.where(e > big, tf.constant(0, e.dtype), e), x.dtype)


_safe_exp = custom_gradient("SafeExp", _safe_exp_forward, _safe_exp_backward, saves=True)
