"""Stable log/exp compositions: log1mexp, logaddexp, logsubexp, softplus and friends.

Every op here follows one pattern (as `tfp.math` does): TF-style signature,
`tf.name_scope`, one dtype resolution (`TypeError` naming op and argument for
non-float input), then a private implementation under `tf.custom_gradient`.

Precision: float16/bfloat16 are always computed in float32. `log1mexp`,
`softplus` and `log_sigmoid` are computed in the input precision (float32 in
float32): their formulas are cancellation-free, measured <= 2 bits of error
(3 ulp), mean <= 0.15 bits (softplus and log_sigmoid: up to 5 ulp at isolated
inputs where TF's float32 log1p CPU kernel evaluates them instead of the fused
kernels, see their docstrings). `logaddexp`, `logsubexp`, `softplus_inverse` and
`log_cosh` compute float32 in float64 and round once (correctly rounded but
for rare double roundings), since in-precision formulas lose bits there (the
rounding of x - y is amplified by exp). float64 uses the cancellation-free
formulas named in each docstring, <= 2 bits measured (table:
`python -m benchmarks.bits_of_error`). Outputs always have the input dtype.

Gradients are written by hand. Where the true derivative overflows the dtype
(log1mexp and softplus_inverse at 0, logsubexp at x == y) the gradient
saturates at +-the largest finite value, so it is finite for every finite input.
"""

import math

import tensorflow as tf

from safeops._core import args
from safeops._core.eft import two_diff
from safeops._core.elementwise import (abs_, add, cast, div, fused_below_float64, map_values,
                                        name_scope, native, saturate, up)
from safeops._core.gradient import custom_gradient
from safeops._core.native import kernels
from safeops._core.registry import drop_in, new
from safeops._core.transcendental import exp_neg, exp_nonpositive, log1p_for, log1p_unit

__all__ = [
    "log1mexp",
    "log_cosh",
    "log_sigmoid",
    "logaddexp",
    "logsubexp",
    "softplus",
    "softplus_inverse",
]

_LN2 = math.log(2.0)
# the fused softplus kernel evaluates libm's double exp and log1p per element: faster than
# three kernel launches up to about this many elements (2 CPU cores), slower beyond
_NATIVE_SOFTPLUS_MAX = 1024
# fdlibm's split of log(2): _LN2_HI has 32 trailing zero bits, so x - _LN2_HI is
# exact for x near log(2) (Sterbenz), and _LN2_HI + _LN2_LO = log(2) to ~1e-26.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# float64 significand bits, and the exponent bits of 1.0
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
# 1 / (n + 1)! from n = 16 down to 0: expm1(z) / z
_EXPM1_COEFFS = tuple(1.0 / math.factorial(n + 1) for n in range(16, -1, -1))


def _unary(op, arg, x, allowed_composite=()):
    return args.convert(f"safeops.{op}", arg, x, composite=allowed_composite)


def _binary(op, x, y):
    return args.convert_n(f"safeops.{op}", ("x", "y"), (x, y))


def _sigmoid(c, e=None):
    """sigmoid without cancellation, <= 1 ulp measured in float32 (tf.sigmoid: 5 ulp).

    `e`: exp(-|c|) when the caller already has it (the forward pass's).
    """
    if e is None:
        e = tf.exp(tf.negative(abs_(c)))
    one = tf.constant(1.0, c.dtype)
    den = add(one, e)
    return tf.where(tf.greater_equal(c, 0), div(one, den), div(e, den))


def _graph_kernels(c):
    """The kernel library for softplus / log_sigmoid of c (float32 or float64) in a graph on
    the CPU outside XLA: one fused pass each way (`SafeopsLogistic`) instead of six
    element-wise kernels forward and five backward; None elsewhere (eagerly: the tuned
    eager path)."""
    return None if tf.executing_eagerly() else kernels(c, (tf.float32, tf.float64))


def _log1mexp_c(a, parts=False):
    """log(1 - exp(-a)) for a >= 0 in the compute dtype (Maechler 2012 switch at log 2).

    With parts=True also returns expm1(-a) and exp(-a), which gradients reuse.
    """
    na = tf.negative(a)
    em, ex = tf.math.expm1(na), tf.exp(na)
    out = tf.where(a <= _LN2, tf.math.log(tf.negative(em)), tf.math.log1p(tf.negative(ex)))
    return (out, em, ex) if parts else out


@new("log(1 - exp(-|x|)) by Maechler's switch; the naive form is -inf for tiny |x|")
def log1mexp(x, name=None):
    """Computes ``log(1 - exp(-|x|))`` without cancellation (new op; no TF equivalent).

    Method: Maechler's switch (2012): ``log(-expm1(-a))`` for ``a = |x| <= log 2``
    and ``log1p(-exp(-a))`` above, both well conditioned (condition <= 1.5), so
    the naive ``log(1 - exp(-x))``, which is -inf at x = 1e-8 in float32 (true
    value -18.42), is replaced by a result within the module's bound:
    float16, bfloat16 and float32 computed one precision up and rounded once
    (float32: <= 1 ulp), float64 <= 3 ulp. float32 on the CPU (eagerly and in
    graphs, not under XLA) runs one fused kernel each way (`safeops.native`,
    ``SafeopsLogExpm1``): the same switch in double, rounded once (its
    gradient too, before the product with the upstream gradient).

    Gradient: ``sign(x) / expm1(|x|)``; at x = 0 (where the value is -inf) it is
    defined as 0 (the function is symmetric); it saturates at the largest finite
    value for tiny |x| where 1/expm1 overflows; 0 at +-inf.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype. Other dtypes: TypeError naming the op and argument.

    Args:
      x: float tensor (float16, bfloat16, float32, float64).
      name: optional name scope.

    Returns:
      A tensor of x's dtype and shape. NaN propagates; x = 0 gives -inf.

    Raises:
      TypeError: if x is not a float tensor.

    Example:
      >>> so.log1mexp(tf.constant(1e-8)).numpy()   # naive formula gives -inf
      -18.420681
    """
    with name_scope(name or "log1mexp"):
        return _log_expm1("log1mexp", _log1mexp, _unary("log1mexp", "x", x))


def _log_expm1(kind, pure, x):
    """softplus_inverse / log1mexp of x: float32 on the CPU (eagerly and in graphs, not XLA)
    one fused kernel each way, evaluated in double and rounded once (`SafeopsLogExpm1`, its
    gradient `SafeopsLogExpm1Grad`); elsewhere the pure-TF op `pure`."""
    lib = kernels(x, (tf.float32,))
    if lib is None:
        return pure(x)
    return lib.safeops_log_expm1(x, kind=kind)


def _log1mexp_forward(x):
    # one precision up, rounded once: TF's float32 expm1 and log (XLA's too) reach 4 ulp
    # together near |x| = 0.47 and 1.63; float32 inside graphs (XLA-compiled) by the
    # float64 polynomials, which XLA vectorises
    a = tf.abs(up(x))
    return cast(_log1mexp_poly(a) if _polynomial_path(x) else _log1mexp_c(a), x.dtype)


def _log1mexp_backward(g, x):
    c = up(x)  # TF's float32 expm1 and the quotient reach 6 ulp under XLA: one precision up
    if _polynomial_path(x):
        # sign(x) / expm1(a) = sign(x) u / w, u = exp(-a), w = 1 - u; 0 at a = 0 (w = 0)
        u, w = _one_minus_exp(tf.abs(c))
        d = tf.where(tf.equal(w, 0.0), tf.zeros_like(w), u / w)
        d = tf.where(c < 0.0, -d, d)
    else:
        # sign(x) / expm1(|x|); 0 / 0 at x = 0 gives 0 (divide_no_nan: one kernel, no select)
        d = tf.math.divide_no_nan(tf.sign(c), tf.math.expm1(tf.abs(c)))
    return g * cast(saturate(d, x.dtype), x.dtype)


_log1mexp = custom_gradient("Log1mexp", fused_below_float64(_log1mexp_forward),
                            fused_below_float64(_log1mexp_backward))


@new("as numpy.logaddexp / tfp.math.log_add_exp; float32 correctly rounded (computed in float64)")
def logaddexp(x, y, name=None):
    """Computes ``log(exp(x) + exp(y))`` without overflow (new op; as `numpy.logaddexp`).

    Method: ``max(x, y) + log1p(exp(-|x - y|))``, with x == y (including both
    infinite) handled exactly as ``x + log 2``. Precision as the module: float32
    and lower correctly rounded (computed one precision up; float32's exp and
    log1p inside a `tf.function` as the float64 polynomials of
    `safeops._core.transcendental`, which XLA vectorises); float64 within a few
    ulp except where the result cancels to near 0 (e^x + e^y ~ 1), where the
    absolute error stays ~1e-16. The naive ``log(exp(x) + exp(y))`` overflows for
    x > 88.7 in float32 and loses ~21 bits on average.

    Gradient: ``(sigmoid(x - y), sigmoid(y - x))``, exactly 0.5 each at x == y;
    (1, 0) for x = +inf and y finite, (0, 1) the other way round.

    dtypes: float16, bfloat16 (computed in float32), float32 (computed in
    float64, rounded once), float64; x and y must share the dtype (Python
    numbers take the other's); output in that dtype. Integer or mismatched
    dtypes: TypeError naming the op and arguments.

    Args:
      x: float tensor.
      y: float tensor of the same dtype, broadcastable with x.
      name: optional name scope.

    Returns:
      A tensor of the broadcast shape and the input dtype. NaN propagates.

    Raises:
      TypeError: non-float inputs or mismatched dtypes.

    Example:
      >>> so.logaddexp(1000., 1000.).numpy()   # naive: inf
      1000.6932
    """
    with name_scope(name or "logaddexp"):
        x, y = _binary("logaddexp", x, y)
        return _logaddexp(x, y)


def _logaddexp_diff(cx, cy, eq):
    """-|x - y| in the compute dtype, 0 where x == y (equal infinities included,
    where x - y is NaN): exp of it is then exactly 1, the gradients exactly 0.5."""
    return -tf.where(eq, tf.zeros_like(cx), tf.abs(cx - cy))


def _logaddexp_forward(x, y):
    cx, cy = up(x), up(y)
    eq = tf.equal(cx, cy)
    if x.dtype == tf.float64:
        # exp(-d) amplifies the rounding error of d = x - y (several ulp of the
        # result for |x - y| ~ 10); the exact remainder e restores it. float32 is
        # differenced in float64, where that error is negligible at its precision.
        d, e = two_diff(cx, cy)
        s = tf.where(d < 0, -tf.ones_like(d), tf.ones_like(d))
        ed = tf.exp(-s * d) * (1.0 - s * e)  # exp(-|x - y|) with the exact difference
        ed = tf.where(tf.math.is_finite(e), ed, tf.exp(-tf.abs(d)))
        out = tf.where(eq, cx + _LN2, tf.maximum(cx, cy) + tf.math.log1p(ed))
        return cast(out, x.dtype), (ed, eq)
    # float32 in float64: inside a graph exp and log1p are the vectorisable
    # polynomials of `safeops._core.transcendental` (eagerly TF's kernels), and
    # nothing is saved: the backward recomputes the exponential in its own
    # compiled loop, cheaper than writing a float64 tensor and reading it back.
    ed = exp_neg(_logaddexp_diff(cx, cy, eq), x.dtype)
    out = tf.maximum(cx, cy) + log1p_for(ed, x.dtype)
    return cast(out, x.dtype), ()


def _logaddexp_backward(g, x, y, *saved):
    # sigmoid(x - y) and sigmoid(y - x) from ed = exp(-|x - y|)
    # (float64: the forward's ed, with the exact difference, else exp(-|d|) is
    # off by ~|d|/2 ulp; float32 and lower: ed recomputed, in its own compiled
    # loop inside a graph, and rounded once to the input precision, then
    # 1/(1 + e): <= 1.5 ulp, e/(1 + e): <= 2.5 ulp; the bound is 4 ulp)
    if x.dtype == tf.float64:
        ed, eq = saved
    else:
        cx, cy = up(x), up(y)
        ed = cast(exp_neg(_logaddexp_diff(cx, cy, tf.equal(cx, cy)), x.dtype), x.dtype)
    big = 1.0 / (1.0 + ed)
    small = ed * big
    pos = x >= y
    gx = tf.where(pos, big, small)
    gy = tf.where(pos, small, big)
    if x.dtype == tf.float64:
        half = tf.constant(0.5, x.dtype)
        gx, gy = tf.where(eq, half, gx), tf.where(eq, half, gy)
    return g * gx, g * gy


_logaddexp = custom_gradient("Logaddexp", _logaddexp_forward, _logaddexp_backward, saves=True,
                             fuse=True)


@new("as tfp.math.log_sub_exp; no overflow, -inf at x == y, NaN for x < y")
def logsubexp(x, y, name=None):
    """Computes ``log(exp(x) - exp(y))`` for x >= y without overflow (new op).

    Method: ``x + log1mexp(x - y)`` (Maechler's switch), so neither exponential
    is formed (float32 inside a `tf.function`: exp, expm1 and log in float64 as
    vectorisable polynomials, the same bits as TF's kernels eagerly); float64
    near the zero crossing (x ~ log 2, y ~ 0) uses
    ``log1p(2 expm1(x - log 2) - expm1(y))`` with x - log 2 formed exactly.
    x == y gives -inf, x < y gives NaN (the log of a negative number), y = -inf
    gives x. Precision as the module (float32 and lower
    correctly rounded; float64 a few ulp, absolute error ~1e-16 where the result
    cancels to near 0).

    Gradient: ``dx = 1 / (1 - exp(y - x))``, ``dy = -1 / expm1(x - y)``; at
    x == y both saturate at +-the largest finite value; (1, 0) when y = -inf.

    dtypes: float16, bfloat16 (computed in float32), float32 (computed in
    float64, rounded once), float64; x and y must share the dtype (Python
    numbers take the other's); output in that dtype. Integer or mismatched
    dtypes: TypeError naming the op and arguments.

    Args:
      x: float tensor.
      y: float tensor of the same dtype, broadcastable with x.
      name: optional name scope.

    Returns:
      A tensor of the broadcast shape and input dtype.

    Raises:
      TypeError: non-float inputs or mismatched dtypes.

    Example:
      >>> so.logsubexp(1000., 999.).numpy()    # naive: inf - inf = nan
      999.5413
    """
    with name_scope(name or "logsubexp"):
        x, y = _binary("logsubexp", x, y)
        return _logsubexp(x, y)


def _polynomial_path(x):
    """float32 inside a graph: exp and log in float64 by the vectorisable polynomials
    of `safeops._core.transcendental` (eagerly, and for the other dtypes, TF's kernels)."""
    return x.dtype == tf.float32 and not tf.executing_eagerly()


def _one_minus_exp(a):
    """``(u, w) = (exp(-a), 1 - exp(-a))`` for float64 a >= 0 by polynomials.

    For a <= log 2, w is the Taylor series of ``-expm1(-a) = a sum (-a)**n / (n+1)!``
    to n = 16 (Horner; truncation below 2**-60 relative; alternating terms
    decreasing from 1: no cancellation), which keeps w's relative precision for
    the smallest a; above, ``1 - u`` (u <= 1/2).
    """
    u = exp_nonpositive(-a)
    z = -a
    q = z * _EXPM1_COEFFS[0] + _EXPM1_COEFFS[1]
    for c in _EXPM1_COEFFS[2:]:
        q = q * z + c
    return u, tf.where(a <= _LN2, a * q, 1.0 - u)


def _log1mexp_poly(a):
    """log1mexp(a) for float64 a >= 0 by the polynomials: log(w) of the small branch
    as ``k log 2 + log1p(m - 1)`` from w = 2**k m, m in [1, 2) (w <= 1/2: k <= -1
    and the sum cancels by at most a factor 2; w = 0 at a = 0 gives -inf), the
    large branch as ``-log1p(u / (1 - u))``; one log1p for both. NaN gives NaN."""
    u, w = _one_minus_exp(a)
    bits = tf.bitcast(w, tf.int64)
    k = tf.cast(tf.bitwise.right_shift(bits, tf.constant(52, tf.int64)) - 1023, tf.float64)
    significand = tf.bitwise.bitwise_and(bits, tf.constant(_MANTISSA, tf.int64))
    m = tf.bitcast(tf.bitwise.bitwise_or(significand, tf.constant(_ONE_BITS, tf.int64)),
                   tf.float64)
    small = a <= _LN2
    lp = log1p_unit(tf.where(small, m - 1.0, u / (1.0 - u)))
    lme = tf.where(small, k * _LN2_HI + (lp + k * _LN2_LO), -lp)
    return tf.where(tf.equal(w, 0.0), tf.constant(-math.inf, tf.float64), lme)


def _logsubexp_poly(cx, cy):
    """x + log1mexp(x - y) for float64 cx >= cy by the polynomials."""
    return cx + _log1mexp_poly(tf.abs(cx - cy))


def _logsubexp_forward(x, y):
    cx, cy = up(x), up(y)
    d = cx - cy
    nan = tf.constant(float("nan"), cx.dtype)
    if _polynomial_path(x):
        # nothing saved: the backward recomputes u and w in its own compiled loop
        out = tf.where(d < 0, nan, _logsubexp_poly(cx, cy))
        out = tf.where(tf.math.is_nan(d), d, out)
        out = tf.where(tf.math.is_inf(cy) & (cy < 0), cx, out)
        return cast(out, x.dtype), ()
    lme, em, ex = _log1mexp_c(tf.abs(d), parts=True)
    e = tf.zeros_like(d)
    if x.dtype == tf.float64:  # first-order correction for the rounding of x - y
        _, e = two_diff(cx, cy)
        corr = e / tf.math.expm1(tf.abs(d))
        lme = lme + tf.where(tf.math.is_finite(corr), corr, tf.zeros_like(corr))
    out = tf.where(d < 0, nan, cx + lme)
    if x.dtype == tf.float64:
        # Near the zero crossing (e^x - e^y ~ 1) x + log1mexp(d) cancels with an
        # absolute error ~eps. When x ~ log 2 and y ~ 0 use instead log1p(u),
        # u = e^x - e^y - 1 = 2 expm1(x - log 2) - expm1(y), with x - log 2 formed
        # exactly (fdlibm split): both terms are small there, so u's absolute
        # error is eps * max(|terms|) < eps / 2.
        t = (cx - _LN2_HI) - _LN2_LO
        a1 = 2.0 * tf.math.expm1(tf.clip_by_value(t, -2.0, 2.0))
        a2 = tf.math.expm1(tf.clip_by_value(cy, -2.0, 2.0))
        u = a1 - a2
        near = (tf.abs(a1) < 0.5) & (tf.abs(a2) < 0.5) & (d > 0)
        out = tf.where(near, tf.math.log1p(u), out)
    out = tf.where(tf.math.is_inf(cy) & (cy < 0), cx, out)
    return cast(out, x.dtype), (em, ex, e)


def _logsubexp_backward(g, x, y, *saved):
    cy = up(y)
    ninf = tf.math.is_inf(cy) & (cy < 0)
    if saved:
        em, ex, e = saved
    else:  # the polynomial path: em = -w, ex = u
        u, w = _one_minus_exp(tf.abs(up(x) - cy))
        em, ex, e = -w, u, tf.zeros_like(w)
    # from the forward's em = expm1(-|d|), ex = exp(-|d|) (d >= 0 in the
    # domain): -1/expm1(-d) = -1/em and -1/expm1(d) = ex/em; no new exp
    gx = -1.0 / em
    gy = ex / em
    if x.dtype == tf.float64:
        # first-order correction for the rounding of d = x - y (d + e exact):
        # exp(+-d) amplifies it to ~|d| / 2 ulp (250 ulp at |d| ~ 500).
        # 1/expm1(d + e) = (1/expm1(d)) (1 - e (1 + 1/expm1(d))), and the same
        # for -d; NaN/inf corrections (d = 0, infinite inputs) keep gx, gy.
        cgx = gx * (1.0 - e * (gx - 1.0))
        cgy = gy * (1.0 - e * (1.0 - gy))
        gx = tf.where(tf.math.is_finite(cgx), cgx, gx)
        gy = tf.where(tf.math.is_finite(cgy), cgy, gy)
    gx = tf.where(ninf, tf.ones_like(gx), gx)
    gy = tf.where(ninf, tf.zeros_like(gy), gy)
    gx = cast(saturate(gx, x.dtype), x.dtype)
    gy = cast(saturate(gy, y.dtype), y.dtype)
    return g * gx, g * gy


_logsubexp = custom_gradient("Logsubexp", _logsubexp_forward, _logsubexp_backward, saves=True,
                             fuse=True)


@drop_in("tf.math.softplus",
         "max(x, 0) + log1p(exp(-|x|)): measured <= 2 ulp with the fused kernels, <= 5 on "
         "TF's CPU log1p where they do not run; TF's kernel switches to exp(x) below "
         "log(eps) + 2 and is off by several ulp there (float32 x near -14)",
         "gradient sigmoid(x) from the forward's exp: <= 1 ulp eagerly, measured <= 2 in graphs "
         "(TF's gradient uses tf.sigmoid, up to 5)",
         "float16/bfloat16 computed in float32 and rounded once")
def softplus(features, name=None):
    """Computes ``log(1 + exp(features))``; drop-in for `tf.math.softplus`.

    Method: ``max(x, 0) + log1p(exp(-|x|))`` in the input precision (float32
    for float16/bfloat16): the sum of two nonnegative terms, so the error is that of
    the exp and log1p used plus one rounding (measured max 2 bits, mean 0.04 bits,
    float32 and float64, eagerly and with the fused kernels). The naive
    ``log(1 + exp(x))`` loses ~8 bits on average and overflows for x > 88.7
    (float32). Inside a graph on the CPU (not XLA) the formula and its
    gradient each run as one fused, vectorised kernel (`safeops.native`,
    ``SafeopsLogistic``; float16/bfloat16 through the float32 one): Eigen's
    exp (~1 ulp) and, in float32, log1p as ``2 atanh(e / (2 + e))`` with the
    quotient's rounding error carried (~0.6 ulp): measured max 2 ulp, mean
    0.05 bits, over every 31st float32 in [-104, 89]. Where it does not run
    (XLA, GPU, no compiler, `safeops.native.disabled`) TF's exp and log1p
    kernels: on the CPU up to 5 ulp at isolated inputs there (TF's float32
    log1p), under XLA 3 (a sparser sweep).
    Eagerly, float16/bfloat16/float32 instead run TF's kernel one
    precision up, rounded once (fewer kernel launches; within the same bound);
    small float32 tensors on the CPU run the same double evaluation as one
    fused kernel (`safeops.native`).

    Gradient: ``sigmoid(features)``, computed as ``1/(1+e)`` or ``e/(1+e)`` with
    ``e = exp(-|x|)`` (<= 1 ulp eagerly, one precision up; in float32 graphs
    within 4 ulp, measured 2 for the fused kernel; `tf.sigmoid` is up to 5 ulp
    off): 0 at -inf, 1 at +inf, 0.5 at 0.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype. Other dtypes: TF's error pair (InvalidArgumentError eagerly,
    TypeError in graphs; one exception that is both) naming the op and argument.
    A RaggedTensor gives a RaggedTensor, as TF's op.

    Args:
      features: float tensor or RaggedTensor.
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape. NaN propagates.

    Raises:
      TypeError: if features is not a float tensor.

    Example:
      >>> so.softplus(100.).numpy()   # log(1 + exp(100.)) is inf in float32
      100.0
    """
    with name_scope(name or "softplus"):
        features = _unary("softplus", "features", features, (tf.RaggedTensor,))
        return map_values(_softplus, features)


def _softplus_forward(x):
    if x.dtype != tf.float64 and tf.executing_eagerly():
        # Eagerly each kernel launch costs more than the arithmetic on small
        # tensors: TF's kernel one precision up is 3 launches instead of 6 and
        # meets the bound (its exp(x) branch, taken below log(eps) + 2 of the
        # wider dtype, is within 2**-49 relative of softplus there). Small
        # float32 tensors on the CPU take the fused kernel instead: the same
        # double evaluation rounded once, in one launch.
        size = x.shape.num_elements()
        if x.dtype == tf.float32 and size is not None and size <= _NATIVE_SOFTPLUS_MAX:
            lib = kernels(x, (tf.float32,))
            if lib is not None:
                return lib.safeops_softplus(x), (None, None)
        c = up(x)
        return cast(tf.raw_ops.Softplus(features=c), x.dtype), (c, None)
    c = native(x)
    lib = _graph_kernels(c)
    if lib is not None:
        return cast(lib.safeops_logistic(c, kind="softplus"), x.dtype), (c, None, lib)
    e = tf.exp(tf.negative(abs_(c)))
    out = add(tf.maximum(c, 0.0), tf.math.log1p(e))
    return cast(out, x.dtype), (c, e)


def _softplus_backward(g, x, c, e, lib=None):
    if lib is not None:  # the graph kernel: sigmoid from exp(-|x|) recomputed, times g
        return cast(lib.safeops_logistic_grad(native(g), c, kind="softplus"), x.dtype)
    if c is None:  # the fused forward: sigmoid one precision up, as the eager forward's
        c = up(x)
    return tf.multiply(g, cast(_sigmoid(c, e), x.dtype))  # reuses the forward's exp


_softplus = custom_gradient("Softplus", _softplus_forward, _softplus_backward, saves=True)


@drop_in("tf.math.log_sigmoid",
         "min(x, 0) - log1p(exp(-|x|)): measured <= 2 ulp with the fused kernels, <= 5 on "
         "TF's CPU log1p where they do not run (TF: -softplus(-x) with the kernel's exp "
         "switch, several ulp off near x = 14 in float32)",
         "gradient sigmoid(-x) from the forward's exp: measured <= 2 ulp",
         "float16/bfloat16 computed in float32 and rounded once")
def log_sigmoid(x, name=None):
    """Computes ``log(sigmoid(x)) = -softplus(-x)``; drop-in for `tf.math.log_sigmoid`.

    Method: ``min(x, 0) - log1p(exp(-|x|))`` in the input precision (bound as
    `softplus`, measured max 1.6 bits). On the CPU (eagerly and
    in graphs, not XLA) the same fused kernels as `softplus` in graphs, with
    the same measured bounds; elsewhere TF's kernels (as `softplus`: up to 5
    ulp at isolated inputs).
    The naive ``log(sigmoid(x))`` is -inf for x < -88 (float32).

    Gradient: ``sigmoid(-x) = 1 - sigmoid(x)`` from ``e = exp(-|x|)`` as for
    `softplus` (same bounds): 1 at -inf, 0 at +inf, 0.5 at 0.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype. Other dtypes: TF's error pair (InvalidArgumentError eagerly,
    TypeError in graphs; one exception that is both) naming the op and argument.
    A RaggedTensor gives a RaggedTensor, as TF's op.

    Args:
      x: float tensor or RaggedTensor.
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape. NaN propagates.

    Raises:
      TypeError: if x is not a float tensor.

    Example:
      >>> so.log_sigmoid(-200.).numpy()   # tf.math.log(tf.sigmoid(-200.)) is -inf
      -200.0
    """
    with name_scope(name or "log_sigmoid"):
        x = _unary("log_sigmoid", "x", x, (tf.RaggedTensor,))
        return map_values(_log_sigmoid, x)


def _log_sigmoid_forward(x):
    c = native(x)
    # eagerly too: one launch each way instead of six and five, and the kernel's log1p
    lib = kernels(c, (tf.float32, tf.float64))
    if lib is not None:
        return cast(lib.safeops_logistic(c, kind="log_sigmoid"), x.dtype), (c, None, lib)
    e = tf.exp(tf.negative(abs_(c)))
    out = tf.subtract(tf.minimum(c, 0.0), tf.math.log1p(e))
    return cast(out, x.dtype), (c, e)


def _log_sigmoid_backward(g, x, c, e, lib=None):
    if lib is not None:
        return cast(lib.safeops_logistic_grad(native(g), c, kind="log_sigmoid"), x.dtype)
    return tf.multiply(g, cast(_sigmoid(tf.negative(c), e), x.dtype))  # the forward's exp


_log_sigmoid = custom_gradient("LogSigmoid", _log_sigmoid_forward, _log_sigmoid_backward,
                               saves=True)


@new("as tfp.math.softplus_inverse; exact split of log 2 near the zero at log 2")
def softplus_inverse(x, name=None):
    """Computes ``log(exp(x) - 1)``, the inverse of softplus (new op; as TFP's).

    Method: float32 and lower in float64, ``log(expm1(x))`` (x for x >= 40),
    rounded once. float64: ``log(expm1(x))`` for x < 0.3;
    ``log1p(2 expm1(t))`` with ``t = x - log 2`` formed exactly (fdlibm's split
    of log 2) for 0.3 <= x <= 2, where the result crosses 0 at x = log 2 and the
    naive formula loses all its bits; ``x + log1p(-exp(-x))`` above 2. Bound:
    float32 and lower <= 1 ulp, float64 a few ulp. x = 0 gives -inf, x < 0 NaN.
    float32 on the CPU (eagerly and in graphs, not under XLA) runs one fused
    kernel each way (`safeops.native`, ``SafeopsLogExpm1``: the float32
    method in double, its gradient rounded once before the product with the
    upstream gradient).

    Gradient: ``1 / (1 - exp(-x)) = -1/expm1(-x)``: 1 at +inf; saturates at the
    largest finite value near and at 0.

    dtypes: float16, bfloat16 and float32 (computed in float64, rounded once),
    float64; output in the input dtype. Other dtypes: TypeError naming the op
    and argument.

    Args:
      x: float tensor (positive values in the domain).
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape.

    Raises:
      TypeError: if x is not a float tensor.

    Example:
      >>> so.softplus_inverse(so.softplus(3.)).numpy()
      3.0
    """
    with name_scope(name or "softplus_inverse"):
        return _log_expm1("softplus_inverse", _softplus_inverse,
                          _unary("softplus_inverse", "x", x))


def _softplus_inverse_forward(x):
    c = up(x)
    if x.dtype == tf.float64:
        t = (c - _LN2_HI) - _LN2_LO
        small = tf.math.log(tf.math.expm1(c))
        mid = tf.math.log1p(2.0 * tf.math.expm1(tf.minimum(t, 2.0)))
        large = c + tf.math.log1p(-tf.exp(-c))
        out = tf.where(c < 0.3, small, tf.where(c <= 2.0, mid, large))
    else:
        # float32 and lower, in float64: log(expm1(x)) is within 1e-16 absolute of
        # the true value, i.e. far below a float32 ulp even next to the zero at
        # log 2 (|x - log 2| >= 2^-25 for float32 x); above 40, log1p(-exp(-x)) is
        # below 2^-57 relative, so the result is x.
        em = tf.math.expm1(tf.minimum(c, 40.0))
        out = tf.where(c < 40.0, tf.math.log(em), c)
    return cast(out, x.dtype)


def _softplus_inverse_backward(g, x):
    if x.dtype == tf.float64:
        return g * saturate(-1.0 / tf.math.expm1(-x))
    # 1 / (1 - exp(-x)) = 1 + 1/expm1(x) from expm1 in float64 (the forward's),
    # in the input precision (2 roundings after the cast: <= 2 ulp); above 40
    # it is 1 + 4e-18 = 1; saturates at the largest finite value near 0
    em = tf.math.expm1(tf.minimum(up(x), 40.0))
    return g * saturate(1.0 + 1.0 / cast(em, x.dtype))


_softplus_inverse = custom_gradient("SoftplusInverse", _softplus_inverse_forward,
                                    _softplus_inverse_backward, fuse=True)


@new("log(cosh(x)) without overflow (naive form inf for |x| > 89 in float32); gradient tanh(x)")
def log_cosh(x, name=None):
    """Computes ``log(cosh(x))`` without overflow or cancellation (new op).

    Method, in the compute precision: for |x| < 0.05 the Taylor series
    ``x^2/2 - x^4/12 + x^6/45 - ...`` (6 terms); for |x| <= 2,
    ``log1p(2 sinh(|x|/2)**2)`` (cosh x - 1 = 2 sinh^2(x/2): no cancellation);
    above, ``(|x| - log 2) + log1p(exp(-2|x|))`` (no overflow: the naive
    ``log(cosh(x))`` is inf for |x| > 89 in float32). Bound: float32 and lower
    <= 1 ulp; float64 a few ulp. Inside a `tf.function` the value and the
    gradient of float16/bfloat16/float32 each run as one XLA-compiled loop
    (float64 keeps TF's kernels).

    Gradient: ``tanh(x)``: 0 at 0, +-1 at +-inf.

    dtypes: float16, bfloat16 and float32 (computed in float64, rounded once),
    float64; output in the input dtype. Other dtypes: TypeError naming the op
    and argument.

    Args:
      x: float tensor.
      name: optional name scope.

    Returns:
      A tensor of the same dtype and shape. NaN propagates.

    Raises:
      TypeError: if x is not a float tensor.

    Example:
      >>> so.log_cosh(1000.).numpy()
      999.3068
    """
    with name_scope(name or "log_cosh"):
        return _log_cosh(_unary("log_cosh", "x", x))


def _log_cosh_forward(x):
    c = up(x)
    a = tf.abs(c)
    a2 = a * a
    # |x| < 0.05: Taylor series of log cosh (next term 2 x^12 / 467775 * ... < 1e-19 relative)
    taylor = a2 * (0.5 + a2 * (-1.0 / 12 + a2 * (1.0 / 45 + a2 * (-17.0 / 2520 + a2 * (
        31.0 / 14175 + a2 * (-691.0 / 467775))))))
    s = tf.sinh(0.5 * tf.minimum(a, 2.0))
    small = a <= 2.0
    arg = tf.where(small, 2.0 * s * s, tf.exp(-2.0 * a))
    out = tf.math.log1p(arg) + tf.where(small, tf.zeros_like(a), a - _LN2)
    out = tf.where(a < 0.05, taylor, out)
    return cast(out, x.dtype)


def _log_cosh_backward(g, x):
    return g * cast(tf.tanh(up(x)), x.dtype)


# Inside a graph the value and the gradient below float64 each run as one XLA-compiled loop.
_log_cosh = custom_gradient("LogCosh", fused_below_float64(_log_cosh_forward),
                            fused_below_float64(_log_cosh_backward))
