"""Smooth switches: smooth_step, soft_clip, soft_abs, soft_maximum, soft_minimum.

Differentiable stand-ins for step functions, clipping, ``|x|`` and ``max``.
Precision rule (as the rest of safeops): float16/bfloat16 are computed in
float32 and float32 in float64, rounded once (<= 1 ulp on well-conditioned
input); float64 is computed natively (<= 4 ulp, bounds per op). Output dtype =
input dtype. None of these ops guards NaN: NaN in x (or in a bound,
temperature or eps) gives NaN.
"""

import tensorflow as tf

from safeops._core import args
from safeops._core.elementwise import abs_, cast, fused, name_scope
from safeops._core.elementwise import up as _up
from safeops._core.gradient import custom_gradient
from safeops._core.registry import new
from safeops._core.transcendental import exp_neg, log1p_for

__all__ = ["smooth_step", "soft_abs", "soft_clip", "soft_maximum", "soft_minimum"]


@new("Hermite smooth step (C1 cubic or C2 quintic) instead of a hard step")
def smooth_step(x, edge0, edge1, order=1, name=None):
    """Hermite smooth step from 0 (x <= edge0) to 1 (x >= edge1).

    Replaces the hard step ``tf.cast(x > edge, x.dtype)`` (zero gradient) and
    ``tf.clip_by_value((x - e0) / (e1 - e0), 0, 1)`` (kinks). With ``t =
    clip((x - edge0) / (edge1 - edge0), 0, 1)``: order 1 is the C1 cubic ``t**2
    (3 - 2t)``, order 2 the C2 quintic ``t**3 (t (6t - 15) + 10)`` (Horner, no
    cancellation: every factor is bounded away from 0 on [0, 1]).

    Error: <= 1 ulp for float16/bfloat16/float32 (computed one precision up);
    float64 <= 4 ulp relative to the exact step of the rounded t.

    Gradient: ``6 t (1 - t) / (edge1 - edge0)`` (order 1), ``30 t**2 (1 - t)**2
    / (edge1 - edge0)`` (order 2); exactly 0 at and outside the edges (the
    function is C1 resp. C2 there).

    dtypes: float16, bfloat16, float32, float64; edges converted to x's dtype.

    Args:
      x: float tensor.
      edge0: lower edge (scalar or broadcastable tensor).
      edge1: upper edge, must be > edge0.
      order: 1 (cubic, C1) or 2 (quintic, C2).
      name: optional name scope.

    Returns:
      A tensor of x's dtype, broadcast shape, values in [0, 1].

    Raises:
      TypeError: integer or bool x.
      ValueError: ``edge0 >= edge1`` or `order` not 1 or 2.

    Example:
      >>> so.smooth_step(0.5, 0.0, 1.0)
      <tf.Tensor: shape=(), dtype=float32, numpy=0.5>
    """
    op = "safeops.smooth_step"
    with name_scope(name or "smooth_step"):
        if order not in (1, 2):
            raise ValueError(f"{op}: argument 'order' must be 1 or 2; got {order!r}")
        x, e0, e1 = args.convert_n(op, ("x", "edge0", "edge1"), (x, edge0, edge1))
        deps = args.check_ordered(op, "edge0", "edge1", e0, e1, strict=True)
        step = _smooth_step_1 if order == 1 else _smooth_step_2
        return args.with_deps(deps, step(x, e0, e1))


def _smooth_step_t(x, e0, e1):
    """(t, edge1 - edge0) in the working dtype, t = clip((x - e0) / (e1 - e0), 0, 1)."""
    xw, e0w, e1w = _up(x), _up(e0), _up(e1)
    d = e1w - e0w
    return tf.clip_by_value((xw - e0w) / d, 0.0, 1.0), d


def _smooth_step_forward(order):
    def forward(x, e0, e1):
        t, _ = _smooth_step_t(x, e0, e1)
        if order == 1:
            y = t * t * (3.0 - 2.0 * t)
        else:
            y = t * t * t * (t * (6.0 * t - 15.0) + 10.0)
        return cast(y, x.dtype)
    return forward


def _smooth_step_slope(order, t):
    """dy/dt: 6 t (1 - t) or 30 t**2 (1 - t)**2; exactly 0 at t = 0 and t = 1."""
    u = t * (1.0 - t)
    return 6.0 * u if order == 1 else 30.0 * (u * u)


def _smooth_step_gx(order):
    def gx(g, x, e0, e1):
        t, d = _smooth_step_t(x, e0, e1)
        return cast(_up(g) * (_smooth_step_slope(order, t) / d), x.dtype)
    return gx


def _smooth_step_backward(order):
    gx_fused = fused(_smooth_step_gx(order))

    def backward(g, x, e0, e1):
        # dt/de0 = (t - 1) / d, dt/de1 = -t / d (plain ops: pruned unless asked for)
        t, d = _smooth_step_t(x, e0, e1)
        gs = _up(g) * (_smooth_step_slope(order, t) / d)
        return gx_fused(g, x, e0, e1), cast(gs * (t - 1.0), x.dtype), cast(-gs * t, x.dtype)
    return backward


# Inside a graph the forward and d/dx each run as one XLA-compiled loop.
_smooth_step_1 = custom_gradient("SmoothStep", fused(_smooth_step_forward(1)),
                                 _smooth_step_backward(1))
_smooth_step_2 = custom_gradient("SmoothStep", fused(_smooth_step_forward(2)),
                                 _smooth_step_backward(2))


@new("a smooth, strictly increasing stand-in for tf.clip_by_value (softplus form, no cancellation)")
def soft_clip(x, lo, hi, sharpness=1.0, name=None):
    """Smooth, strictly increasing clip of x into (lo, hi); replaces `tf.clip_by_value`.

    ``lo + softplus(s (x - lo)) / s - softplus(s (x - hi)) / s`` with s =
    `sharpness` (TFP's SoftClip bijector uses the same form): close to x well
    inside the interval (within ``log(2) / s`` at the edges), tending to lo and
    hi in the tails, never reaching them in exact arithmetic (in floating point
    the result rounds to lo or hi once ``exp(-s * dist)`` is below the
    resolution of the dtype).

    Method: for x above the midpoint the equal form ``hi - softplus(s (hi - x))
    / s + softplus(s (lo - x)) / s`` is used, so neither form cancels (the
    naive ``x - softplus(s (x - hi)) / s`` returns 0 instead of hi at x = 1e30).
    Computed one precision up for float16/bfloat16/float32 (<= 1 ulp on
    well-conditioned input; float32's softplus and sigmoid in float64 as
    ``max(z, 0) + log1p(exp(-|z|))`` and ``w / (1 + exp(-|z|))`` from the
    polynomials of `safeops._core.transcendental`, which XLA vectorises);
    float64 natively (<= 4 ulp away from lo, hi = 0). Inside a `tf.function`
    the value and d/dx each run as one XLA-compiled loop.

    Gradient: ``sigmoid(s (hi - x)) - sigmoid(s (lo - x))``, > 0 everywhere in
    exact arithmetic and computed as that difference in the working precision
    (float32 / float64 for the low-precision dtypes / float32), then rounded
    to x's dtype. Outside [lo, hi] it decays like ``exp(-s * dist(x,
    [lo, hi]))``, so it is **0** exactly where its exact value is below the
    smallest normal number `tiny` of x's dtype (TF on CPU flushes subnormals;
    elsewhere a subnormal may remain): for ``hi - lo >> 1 / s`` that is ``s *
    dist > -log(tiny)``: ~9.7 (float16), ~87.3 (bfloat16, float32), ~708.4
    (float64). Wherever the exact gradient is >= `tiny` the computed one is >
    0. No formulation avoids this: any bounded increasing function has an
    average slope of at most ``(hi - lo) / (max - hi)`` between hi and the
    dtype's largest value, which is ~1e-38 in float32 for ``hi - lo = 1``.
    Gradients w.r.t. lo and hi: ``sigmoid(s (lo - x))`` and ``sigmoid(s (x -
    hi))``.

    dtypes: float16, bfloat16, float32, float64; lo, hi converted to x's dtype.

    Args:
      x: float tensor.
      lo: lower bound (scalar or broadcastable).
      hi: upper bound, ``lo <= hi``.
      sharpness: positive s; larger is closer to a hard clip (default 1.0).
      name: optional name scope.

    Returns:
      A tensor of x's dtype and the broadcast shape, in [lo, hi].

    Raises:
      TypeError: integer or bool x.
      ValueError: ``lo > hi`` or ``sharpness <= 0`` (statically, else asserts).

    Example:
      >>> so.soft_clip(1e30, -1.0, 1.0)       # naive softplus form gives 0
      <tf.Tensor: shape=(), dtype=float32, numpy=1.0>
    """
    op = "safeops.soft_clip"
    with name_scope(name or "soft_clip"):
        x, lo, hi = args.convert_n(op, ("x", "lo", "hi"), (x, lo, hi))
        s = args.param(op, "sharpness", sharpness, x.dtype)
        deps = args.check_ordered(op, "lo", "hi", lo, hi)
        return args.with_deps(deps, _soft_clip(x, lo, hi, s))


def _soft_clip_parts(x, lo, hi, s):
    """(a, b, base, sign, s) in the working dtype: y = base + sign (f(s a) - f(s b)) / s,
    f = softplus, with a the signed distance to the near bound (no cancellation)."""
    xw, low, hiw, sw = _up(x), _up(lo), _up(hi), _up(s)
    upper = xw > 0.5 * low + 0.5 * hiw
    a = tf.where(upper, hiw - xw, xw - low)   # distance to the near bound (signed)
    b = tf.where(upper, low - xw, xw - hiw)   # distance to the far bound (signed)
    base = tf.where(upper, hiw, low)
    sign = tf.where(upper, -tf.ones_like(xw), tf.ones_like(xw))
    return a, b, base, sign, sw


def _softplus_w(z, dtype):
    """softplus(z) in the working dtype of `dtype`: ``max(z, 0) + log1p(exp(-|z|))``
    from the polynomials for float32 (working in float64), TF's kernel otherwise."""
    if dtype != tf.float32:
        return tf.math.softplus(z)
    return tf.maximum(z, 0.0) + log1p_for(exp_neg(-abs_(z), dtype), dtype)


def _sigmoid_w(z, dtype):
    """sigmoid(z) in the working dtype of `dtype`: ``w / (1 + e)``, e = exp(-|z|),
    w = 1 (z >= 0) or e, for float32 (working in float64); TF's kernel otherwise."""
    if dtype != tf.float32:
        return tf.sigmoid(z)
    e = exp_neg(-abs_(z), dtype)
    return tf.where(z >= 0, tf.ones_like(e), e) / (1.0 + e)


def _soft_clip_forward(x, lo, hi, s):
    a, b, base, sign, sw = _soft_clip_parts(x, lo, hi, s)
    sp_a, sp_b = _softplus_w(sw * a, x.dtype), _softplus_w(sw * b, x.dtype)
    return cast(base + sign * (sp_a - sp_b) / sw, x.dtype)


def _soft_clip_gx(g, x, lo, hi, s):
    """``g * (sigmoid(s a) - sigmoid(s b))`` in the working dtype, a and b the signed
    distances of `_soft_clip_parts`: both sigmoids small on each side of the
    midpoint, so far outside [lo, hi] the difference does not cancel."""
    a, b, _, _, sw = _soft_clip_parts(x, lo, hi, s)
    return cast(_up(g) * (_sigmoid_w(sw * a, x.dtype) - _sigmoid_w(sw * b, x.dtype)), x.dtype)


_soft_clip_gx_fused = fused(_soft_clip_gx)


def _soft_clip_backward(g, x, lo, hi, s):
    # d/dlo = sigmoid(s (lo - x)), d/dhi = sigmoid(s (x - hi)), d/ds = (y - x) / s
    # (x y' is the s-scaled part); plain ops, pruned unless asked for.
    xw, low, hiw, sw = _up(x), _up(lo), _up(hi), _up(s)
    gw = _up(g)
    y = _up(_soft_clip_forward(x, lo, hi, s))
    # y(x; lo, hi, s) = lo + f(s (x - lo)) / s - f(s (x - hi)) / s with f = softplus:
    # d/ds = ((x - lo) f'(s (x - lo)) - (x - hi) f'(s (x - hi))) / s - (y - lo) / s
    g_s = ((xw - low) * tf.sigmoid(sw * (xw - low)) - (xw - hiw) * tf.sigmoid(sw * (xw - hiw))
           - (y - low)) / sw
    return (_soft_clip_gx_fused(g, x, lo, hi, s), cast(gw * tf.sigmoid(sw * (low - xw)), x.dtype),
            cast(gw * tf.sigmoid(sw * (xw - hiw)), x.dtype), cast(gw * g_s, x.dtype))


# Inside a graph the forward and d/dx each run as one XLA-compiled loop.
_soft_clip = custom_gradient("SoftClip", fused(_soft_clip_forward), _soft_clip_backward)


@new("sqrt(x**2 + eps**2) - eps without cancellation; inf at +-inf with gradient +-1")
def soft_abs(x, eps=1e-3, name=None):
    """Smooth absolute value ``sqrt(x**2 + eps**2) - eps``; replaces `tf.abs`.

    0 at x = 0, between ``|x| - eps`` and ``|x|``, infinitely differentiable.

    Method: evaluated as ``|x| * (|x| / (r + eps))`` with ``r = hypot(x, eps)``:
    no cancellation for small x. float16 and float32 work in float32 and
    float64, where ``x**2 + eps**2`` neither overflows nor underflows to 0, so
    r is ``sqrt(x*x + eps*eps)``; bfloat16 (in float32) and float64 scale it
    (``m * sqrt((|x|/m)**2 + (eps/m)**2)``, m = max(|x|, eps)) so ``x**2`` cannot
    overflow for huge x. One precision up for float16/bfloat16/float32 (<= 1
    ulp); float64 natively (<= 4 ulp: about 7 roundings of 0.5 ulp). One
    `tf.custom_gradient`; inside a `tf.function` the forward and the backward
    each run as one XLA-compiled loop.

    Gradient: ``x / sqrt(x**2 + eps**2)`` in (-1, 1) (scaled as r for
    bfloat16/float64, in the working precision, rounded once); exactly 0 at
    x = 0, tending to +-1 for large |x| (exactly +-1 once ``(eps/x)**2`` is
    below the working precision). W.r.t. eps: ``eps / r - 1 = -y / r``.
    At x = +-inf the value is inf and the gradients are the limits, +-1 and -1.

    dtypes: float16, bfloat16, float32, float64.

    Args:
      x: float tensor.
      eps: positive smoothing width (default 1e-3).
      name: optional name scope.

    Returns:
      A tensor of x's shape and dtype, >= 0.

    Raises:
      TypeError: integer or bool x.
      ValueError: ``eps <= 0``.

    Example:
      >>> so.soft_abs(0.0)
      <tf.Tensor: shape=(), dtype=float32, numpy=0.0>
    """
    op = "safeops.soft_abs"
    with name_scope(name or "soft_abs"):
        x = args.convert(op, "x", x)
        return _soft_abs(x, args.param(op, "eps", eps, x.dtype))


# float16 and float32 work in float32 and float64, whose range holds every square
# of theirs: x * x + eps * eps neither overflows nor underflows to 0 unscaled.
_SQUARES_FIT = frozenset((tf.float16, tf.float32))


def _hypot_parts(x, eps):
    """(|x|, eps, sqrt(x**2 + eps**2)) in the working dtype. float32 and float16
    (working in float64, float32) square without overflow or underflow to 0;
    float64 and bfloat16 (whose range float32 shares) scale by max(|x|, eps)."""
    xw, ew = _up(x), _up(eps)
    ax = tf.abs(xw)
    if x.dtype in _SQUARES_FIT:
        return ax, ew, tf.sqrt(ax * ax + ew * ew)
    m = tf.maximum(ax, ew)
    return ax, ew, m * tf.sqrt(tf.square(ax / m) + tf.square(ew / m))


def _soft_abs_forward(x, eps):
    ax, ew, r = _hypot_parts(x, eps)
    y = ax * (ax / (r + ew))
    return tf.cast(tf.where(tf.math.is_inf(ax), ax, y), x.dtype)  # inf / inf above


def _soft_abs_gx(g, x, eps):
    xw, ew = _up(x), _up(eps)
    if x.dtype in _SQUARES_FIT:
        slope = xw / tf.sqrt(xw * xw + ew * ew)
    else:  # scaled: exactly +-1 where (eps / x)**2 underflows
        m = tf.maximum(tf.abs(xw), ew)
        slope = (xw / m) / tf.sqrt(tf.square(xw / m) + tf.square(ew / m))
    slope = tf.where(tf.math.is_inf(xw), tf.sign(xw), slope)  # the limit +-1 (inf / inf above)
    return tf.cast(_up(g) * slope, x.dtype)


_soft_abs_gx_fused = fused(_soft_abs_gx)


def _soft_abs_backward(g, x, eps):
    gx = _soft_abs_gx_fused(g, x, eps)
    # d/deps = eps / r - 1 = -y / r, -1 in the limit |x| -> inf (plain ops:
    # pruned unless asked for).
    ax, ew, r = _hypot_parts(x, eps)
    ratio = tf.where(tf.math.is_inf(ax), tf.ones_like(ax), (ax * (ax / (r + ew))) / r)
    return gx, tf.cast(-_up(g) * ratio, x.dtype)


_soft_abs = custom_gradient("SoftAbs", fused(_soft_abs_forward), _soft_abs_backward)


def _soft_max_parts(x, y, t, negate):
    """(x, y, T, d, e) in the working dtype, x and y negated for the smooth minimum:
    ``d = x - y`` and ``e = exp(-|d| / T)``. x == y (also both +inf or both -inf,
    where x - y is NaN) counts as d = 0: the value max + T log 2 (+-inf for
    infinities), gradients 0.5."""
    xw, yw, tw = _up(x), _up(y), _up(t)
    if negate:
        xw, yw = -xw, -yw
    d = tf.where(tf.equal(xw, yw), tf.zeros_like(xw), xw - yw)
    return xw, yw, tw, d, exp_neg(-abs_(d) / tw, x.dtype)


def _soft_max_forward(negate):
    def forward(x, y, t):
        """``max(x, y) + T * log1p(exp(-|x - y| / T))`` (negated for the minimum)."""
        xw, yw, tw, d, e = _soft_max_parts(x, y, t, negate)
        out = tf.where(d >= 0, xw, yw) + tw * log1p_for(e, x.dtype)
        out = tf.where(tf.math.is_nan(d), d, out)  # NaN in x or y
        return cast(-out if negate else out, x.dtype)
    return forward


def _soft_max_backward(negate):
    def backward(g, x, y, t):
        """sigmoid(+-(x - y) / T) from e = exp(-|x - y| / T): the larger weight is
        1 / (1 + e), the smaller e / (1 + e); 0.5 each at x == y. Each gradient is
        its own quotient, so XLA makes each one loop over x and y (a quotient
        shared by both would be written to memory and read back)."""
        xw, yw, _, _, e = _soft_max_parts(x, y, t, negate)
        gw = _up(g)
        one = tf.ones_like(e)
        x_wins = xw >= yw
        gx = gw * tf.where(x_wins, one, e) / (1.0 + e)
        gy = gw * tf.where(x_wins, e, one) / (1.0 + e)
        return cast(gx, x.dtype), cast(gy, x.dtype)
    return backward


# Inside a graph the forward and each gradient run as one XLA-compiled loop over
# x and y: one exponential and one log1p per element forward, one exponential per
# gradient (recomputing it costs less than storing a float64 tensor and reading it back).
_soft_max = custom_gradient("SoftMaximum", _soft_max_forward(False), _soft_max_backward(False),
                            n_inputs=2, fuse=True)
_soft_min = custom_gradient("SoftMinimum", _soft_max_forward(True), _soft_max_backward(True),
                            n_inputs=2, fuse=True)


def _soft_max_op(op, x, y, temperature, name, negate):
    with name_scope(name or op.split(".")[-1]):
        x, y = args.convert_n(op, ("x", "y"), (x, y))
        t = args.param(op, "temperature", temperature, x.dtype)
        return (_soft_min if negate else _soft_max)(x, y, t)


@new("T * logaddexp(x / T, y / T), a smooth stand-in for tf.maximum; gradient 0.5 each at x == y")
def soft_maximum(x, y, temperature=1.0, name=None):
    """Smooth maximum ``T * logaddexp(x / T, y / T)``; replaces `tf.maximum`.

    Method: the stable form ``max(x, y) + T * softplus(-|x - y| / T)``: no
    exp of a large argument, no overflow of ``x / T``; ``x - y = +-inf`` gives
    exactly the max. Between ``max(x, y)`` and ``max(x, y) + T log 2``.
    Computed one precision up for float16/bfloat16/float32 (<= 1 ulp; float32's
    exp and log1p in float64 as the polynomials of
    `safeops._core.transcendental`, which XLA vectorises; inside a
    `tf.function` the value and each gradient run as one XLA-compiled loop);
    float64 natively: ``|err| <= 2 u |max| + 2 u T log 2`` (<= 4 ulp unless
    the max is negative and cancels against the softplus term). Equal
    infinities give that infinity (``max(inf, inf) = inf``); NaN in x or y
    gives NaN.

    Gradient: ``sigmoid((x - y) / T)`` w.r.t. x and ``sigmoid((y - x) / T)``
    w.r.t. y (sum 1; exactly 0.5 each at x == y, where `tf.maximum` gives 1/0).

    dtypes: float16, bfloat16, float32, float64; y converted to x's dtype.

    Args:
      x: float tensor.
      y: float tensor broadcastable with x.
      temperature: positive T (default 1.0); T -> 0 recovers `tf.maximum`.
      name: optional name scope.

    Returns:
      The broadcast smooth maximum, x's dtype.

    Raises:
      TypeError: integer or bool inputs.
      ValueError: ``temperature <= 0``.

    Example:
      >>> so.soft_maximum(1000.0, 0.0)        # naive log(exp(x)+exp(y)): inf
      <tf.Tensor: shape=(), dtype=float32, numpy=1000.0>
    """
    return _soft_max_op("safeops.soft_maximum", x, y, temperature, name, negate=False)


@new("-T * logaddexp(-x / T, -y / T), a smooth stand-in for tf.minimum")
def soft_minimum(x, y, temperature=1.0, name=None):
    """Smooth minimum ``-T * logaddexp(-x / T, -y / T)``; replaces `tf.minimum`.

    ``-soft_maximum(-x, -y, T)``: between ``min(x, y) - T log 2`` and
    ``min(x, y)``; same method, error bound and overflow behaviour.

    Gradient: ``sigmoid((y - x) / T)`` w.r.t. x, ``sigmoid((x - y) / T)``
    w.r.t. y; 0.5 each at x == y.

    dtypes: float16, bfloat16, float32, float64.

    Args:
      x: float tensor.
      y: float tensor broadcastable with x.
      temperature: positive T (default 1.0).
      name: optional name scope.

    Returns:
      The broadcast smooth minimum, x's dtype.

    Raises:
      TypeError: integer or bool inputs.
      ValueError: ``temperature <= 0``.

    Example:
      >>> so.soft_minimum(-1000.0, 0.0)
      <tf.Tensor: shape=(), dtype=float32, numpy=-1000.0>
    """
    return _soft_max_op("safeops.soft_minimum", x, y, temperature, name, negate=True)
