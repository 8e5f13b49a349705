"""Divisions that stay finite: safe_divide, safe_reciprocal, divide_no_nan, relative_error.

`x / y` is exact IEEE division wherever the denominator is not tiny; the only
hazard guarded is a denominator of (almost) zero, and overflow of the quotient.
Each op writes its backward pass with `tf.custom_gradient` so the forward is
computed once and the gradient never sees ``0 * inf``.

Default `eps` (``safe_divide``, ``safe_reciprocal``, ``relative_error``): the
smallest positive *normal* number of the dtype, so only zero and subnormal
denominators are floored (a user `eps` below it, e.g. 1e-8 in float16 where it
would round to 0, is raised to it):

  =========  ===============
  float16    6.10e-05 (2**-14)
  bfloat16   1.18e-38 (2**-126)
  float32    1.18e-38 (2**-126)
  float64    2.23e-308 (2**-1022)
  =========  ===============
"""

import tensorflow as tf

from safeops._core import args
from safeops._core.dtypes import accumulation_dtype, limits
from safeops._core.eft import prod_dw, two_sum
from safeops._core.elementwise import fused, is_negative, name_scope, saturate
from safeops._core.gradient import custom_gradient
from safeops._core.registry import drop_in, new

__all__ = ["divide_no_nan", "relative_error", "safe_divide", "safe_reciprocal"]


def _eps_param(op, eps, dtype):
    """The floor as a `dtype` tensor, never below the smallest normal number
    (a 1e-8 given for float16 would otherwise round to 0). A tensor `eps` is
    checked like a number: > 0 (statically, else by an assert)."""
    tiny = limits(dtype).tiny
    if eps is None:
        return tf.constant(tiny, dtype)
    return tf.maximum(args.param(op, "eps", eps, dtype, "positive"), tiny)


def _floored(y, eps):
    """``sign(y) * max(|y|, eps)`` with sign(+-0) = +; NaN stays NaN."""
    return tf.where(is_negative(y), tf.minimum(y, -eps), tf.maximum(y, eps))


def _sd_forward(x, y, eps):
    return saturate(x / _floored(y, eps))


def _sd_backward(g, x, y, eps):
    # Recomputes d and q from x, y (cheap inside a fused loop) instead of
    # reading the stored q.
    d = _floored(y, eps)
    gx = saturate(g / d)
    # gy = -(gx * q), computed from ngx = -gx and nq = -q (bit for bit: negation
    # is exact and the clamp symmetric). Spelled with (-g) / d and (-x) / d so
    # that XLA cannot common up these divisions with g / d above and x / d of
    # the forward: shared, each is written to memory and re-read by several
    # fusions; unshared, the forward, gx and gy are three independent loops
    # over x and y under jit_compile. Where |y| < eps the denominator is
    # the constant +-eps: d/dy = 0. ngx and nq are finite, so their product
    # is never 0 * inf.
    ngx = saturate((-g) / d)
    nq = saturate((-x) / d)
    gy = tf.where(tf.equal(d, y), -(ngx * nq), tf.zeros_like(gx))
    return gx, saturate(gy)


_safe_divide = custom_gradient("SafeDivide", _sd_forward, _sd_backward, n_inputs=2, fuse=True)


@new("x / y with |y| floored at eps (default: smallest normal); finite for finite inputs")
def safe_divide(x, y, eps=None, name=None):
    """Computes ``x / y`` with the denominator's magnitude floored at `eps`.

    Replaces ``x / y`` and hand-written ``x / (y + 1e-8)``. Where ``|y| >= eps``
    the result is exactly IEEE ``x / y`` (correctly rounded, error <= 0.5 ulp);
    where ``|y| < eps`` it is ``x / (sign(y) * eps)`` with sign(+-0) = +1 (the
    same 0.5 ulp). A quotient whose magnitude would overflow saturates at the
    dtype's largest finite value instead of inf, so the output is finite for
    every finite x and y (0 and subnormal y included). NaN inputs give NaN.

    Method: one `tf.custom_gradient`: ``d = where(y < 0, min(y, -eps), max(y,
    eps))``, ``q = clip(x / d)``; the backward recomputes d and q from x, y
    instead of reading q back. The sign of y is read from its bits, so a
    negative subnormal y gives -eps although TF on CPU flushes subnormals to
    zero. Inside a `tf.function` the forward and the backward each run
    XLA-compiled (fused loops instead of ~7 kernels; compiled once per input
    shape); under ``jit_compile=True`` the forward, d/dx and d/dy are three
    independent fused loops over x and y (no intermediate written to memory);
    eagerly they are plain TF ops. All three give bit-identical results.

    Gradient: ``d/dx = 1 / d``; ``d/dy = -x / y**2 = -q / d`` where ``|y| >=
    eps`` and **0** where ``|y| < eps`` (the floored denominator is constant
    there, so at y = 0 the gradient w.r.t. y is exactly 0). Both are saturated
    at +-largest finite, so they are finite for finite inputs and upstream
    gradient.

    dtypes: float16, bfloat16, float32, float64 (x and y the same dtype; Python
    numbers take the other argument's dtype); output has that dtype. Default
    `eps`: the smallest normal number of the dtype (module docstring).

    Args:
      x: numerator, float tensor.
      y: denominator, float tensor broadcastable with `x`.
      eps: optional positive floor for ``|y|`` (Python number or scalar tensor).
      name: optional name scope.

    Returns:
      The broadcast quotient, same dtype as `x`.

    Raises:
      TypeError: integer, bool or mismatched dtypes (naming the op and argument).
      ValueError: ``eps <= 0`` (statically; a `tf.debugging` assert when dynamic).
      InvalidArgumentError: incompatible shapes (TF's broadcasting error).

    Example:
      >>> so.safe_divide(10.0, 0.0)     # tf: inf
      <tf.Tensor: shape=(), dtype=float32, numpy=3.4028235e+38>
      >>> so.safe_divide(6.0, 3.0)      # exactly x / y
      <tf.Tensor: shape=(), dtype=float32, numpy=2.0>
    """
    op = "safeops.safe_divide"
    with name_scope(name or "safe_divide"):
        x, y = args.convert_n(op, ("x", "y"), (x, y))
        return _safe_divide(x, y, _eps_param(op, eps, x.dtype))


@new("1 / y with |y| floored at eps; 0 gradient where the floor is active")
def safe_reciprocal(y, eps=None, name=None):
    """Computes ``1 / y`` with ``|y|`` floored at `eps`; replaces `tf.math.reciprocal`.

    Exactly `safe_divide(1, y, eps)`: IEEE ``1 / y`` (<= 0.5 ulp) where ``|y| >=
    eps``, ``1 / (sign(y) * eps)`` (sign(0) = +) below, saturated at the largest
    finite value (reachable only in float16 with a tiny custom `eps`).

    Gradient: ``-1 / y**2`` where ``|y| >= eps`` (saturated at -largest finite);
    0 where ``|y| < eps``, so 0 at y = 0.

    dtypes: float16, bfloat16, float32, float64; output has the input dtype.
    Default `eps`: the smallest normal number of the dtype.

    Args:
      y: float tensor.
      eps: optional positive floor for ``|y|``.
      name: optional name scope.

    Returns:
      A tensor of `y`'s shape and dtype.

    Raises:
      TypeError: integer or bool `y`.
      ValueError: ``eps <= 0``.

    Example:
      >>> so.safe_reciprocal(0.0)       # tf.math.reciprocal: inf
      <tf.Tensor: shape=(), dtype=float32, numpy=8.507059e+37>
    """
    op = "safeops.safe_reciprocal"
    with name_scope(name or "safe_reciprocal"):
        y = args.convert(op, "y", y)
        return _safe_divide(tf.ones_like(y), y, _eps_param(op, eps, y.dtype))


@drop_in("tf.math.divide_no_nan",
         "gradient exactly 0 where y == 0 and never NaN for non-NaN inputs (TF: 0 * inf = NaN "
         "where x / y**2 overflows)",
         "complex inputs: real and imaginary parts each within ~1 ulp (no cancellation, "
         "overflow or underflow in the intermediate products)")
def divide_no_nan(x, y, name=None):
    """Computes ``x / y``, 0 where ``y == 0``; drop-in for `tf.math.divide_no_nan`.

    Forward: identical to `tf.math.divide_no_nan` (IEEE ``x / y`` where y != 0,
    error <= 0.5 ulp; exactly 0 where y == 0, even for x = inf or NaN).

    Gradient: the true derivative ``1 / y`` and ``-x / y**2 = -(1/y) * (x/y)``
    wherever y != 0 (overflowing to +-inf only where that value is not
    representable, as the true derivative); exactly **0** for both x and y
    where y == 0, never NaN there, also when x is inf or NaN at y == 0; and 0
    w.r.t. y where the upstream gradient is 0 or the quotient is 0 (TF's
    gradient gives ``0 * inf = NaN`` when ``x / y**2`` overflows; computed as
    ``-(g / y) * q`` it would also be NaN for x = 0 over a float16 subnormal
    y). Never NaN for non-NaN inputs.

    dtypes: float16, bfloat16, float32, float64 as above (same dtype for x
    and y, Python numbers take the tensor's); output has that dtype. Complex
    inputs: the quotient with each of its real and imaginary parts within ~1
    ulp (complex64 formed in float64; complex128 from exact products in
    double-double, scaled by powers of two so nothing overflows or
    underflows; TF's kernel can lose the digits of a part that cancels), 0
    where y == 0; gradient as TF's. Integer inputs: TF's op itself (its
    float64 or float32 result). RaggedTensor inputs keep their structure.

    Args:
      x: numerator, tensor.
      y: denominator, tensor broadcastable with `x`.
      name: optional name scope.

    Returns:
      The broadcast quotient (float32 or float64 for integer inputs, as TF).

    Raises:
      TypeError: bool or mismatched dtypes (as TF).
      InvalidArgumentError: incompatible shapes.

    Example:
      >>> so.divide_no_nan(float("inf"), 0.0)
      <tf.Tensor: shape=(), dtype=float32, numpy=0.0>
    """
    op = "safeops.divide_no_nan"
    with name_scope(name or "divide_no_nan"):
        composite = (tf.RaggedTensor,)
        x, y = args.convert_n(op, ("x", "y"), (x, y), allowed=None, composite=composite,
                              mismatch=TypeError)
        if not (x.dtype.is_floating or x.dtype.is_complex):
            return tf.math.divide_no_nan(x, y)  # integers: TF's float result; bool: TF's error
        fn = _divide_no_nan if x.dtype.is_floating else _complex_divide_no_nan
        if isinstance(x, tf.RaggedTensor) or isinstance(y, tf.RaggedTensor):
            # TF's ragged broadcasting (multiplying by ones is exact), then the flat values
            x, y = x * tf.ones_like(y), y * tf.ones_like(x)
            return tf.ragged.map_flat_values(fn, x, y)
        return fn(x, y)


def _dnn_forward(x, y):
    return tf.raw_ops.DivNoNan(x=x, y=y)  # tf.math.divide_no_nan's kernel, without its wrapper


def _dnn_backward(g, x, y):
    zero = tf.equal(y, 0)
    gx = tf.where(zero, tf.zeros_like(g), g / y)
    # gy = -(g / y) (x / y) from its own quotients, formed with negated numerators: the
    # bits of -(gx q) (IEEE rounding is symmetric), but XLA neither merges them with the
    # forward's x / y or with gx into arrays the loops read back (a memory-bound loop
    # reading x and y instead of gx and the saved output); each quotient's one user is a
    # selection, so the loop keeps it.
    ng = tf.where(zero, tf.zeros_like(g), tf.negative(g) / y)
    nq = tf.where(zero, tf.zeros_like(g), tf.negative(x) / y)
    # g == 0 gives exactly 0, also where x / y overflows (TF: 0 * inf = NaN);
    # q == 0 (x = 0, or |x / y| below the dtype's range) too, also where
    # g / y overflows (float16 subnormal y): the exact -q / y is (almost) 0.
    skip = tf.logical_or(tf.logical_or(zero, tf.equal(g, 0)), tf.equal(nq, 0))
    gy = tf.where(skip, tf.zeros_like(g), tf.negative(ng * nq))
    return gx, gy


# Inside a graph the backward (a quotient, a product, comparisons, selections: about ten
# kernels) is one XLA-compiled loop, with the same bits; the forward is TF's kernel.
_divide_no_nan = custom_gradient("DivNoNan", _dnn_forward, fused(_dnn_backward))


def _pow2_exponent(m):
    """The unbiased exponent of positive normal float64 `m` (int64), from its bits."""
    return tf.bitwise.right_shift(tf.bitcast(m, tf.int64), 52) - 1023


def _pow2(k):
    """2**k as float64 for integer k in [-1022, 1023] (exact, from the bits)."""
    return tf.bitcast(tf.bitwise.left_shift(k + 1023, 52), tf.float64)


def _div_dd(nh, nl, dh, dl):
    """(nh + nl) / (dh + dl) to about 2**-104 relative: one Newton step in double-double."""
    q = nh / dh
    p, pe = prod_dw(q, dh)
    r = (((nh - p) - pe) + nl - q * dl) / dh
    return q + r


def _complex128_parts(a, b, c, d):
    """Real and imaginary parts of (a + ib) / (c + id), each to ~1 ulp (float64).

    Both operands are scaled by powers of two (exact) so that the products
    cannot overflow or underflow; ``a c + b d``, ``b c - a d`` and ``c**2 +
    d**2`` are formed as double-doubles from exact products (no cancellation
    error), divided in double-double and scaled back in three exact steps.
    """
    big = tf.constant(2.0**-600, tf.float64)
    ms = tf.maximum(tf.maximum(tf.abs(c), tf.abs(d)), big)
    mt = tf.maximum(tf.maximum(tf.abs(a), tf.abs(b)), big)
    ks, kt = _pow2_exponent(ms), _pow2_exponent(mt)
    c, d = c * _pow2(-ks), d * _pow2(-ks)
    a, b = a * _pow2(-kt), b * _pow2(-kt)
    c2, c2e = prod_dw(c, c)
    d2, d2e = prod_dw(d, d)
    dh, dl = two_sum(c2, d2)
    dl = dl + (c2e + d2e)

    def num(p1, p2):
        h1, e1 = prod_dw(*p1)
        h2, e2 = prod_dw(*p2)
        h, l = two_sum(h1, h2)
        return h, l + (e1 + e2)

    re = _div_dd(*num((a, c), (b, d)), dh, dl)
    im = _div_dd(*num((b, c), (-a, d)), dh, dl)
    k = kt - ks  # |k| <= 2 * 1623: applied in three exact steps
    k1 = k // 3
    k2 = (k - k1) // 2
    k3 = k - k1 - k2
    scale = [_pow2(tf.clip_by_value(j, -1022, 1023)) for j in (k1, k2, k3)]
    return [((v * scale[0]) * scale[1]) * scale[2] for v in (re, im)]


def _complex_forward(x, y):
    zero = tf.equal(y, 0)
    if x.dtype == tf.complex64:
        # float32 parts in float64: the products are exact, each sum rounds once
        a, b = tf.cast(tf.math.real(x), tf.float64), tf.cast(tf.math.imag(x), tf.float64)
        c, d = tf.cast(tf.math.real(y), tf.float64), tf.cast(tf.math.imag(y), tf.float64)
        den = c * c + d * d
        re, im = (a * c + b * d) / den, (b * c - a * d) / den
        q = tf.complex(tf.cast(re, tf.float32), tf.cast(im, tf.float32))
        finite = tf.math.is_finite(den)
    else:
        a, b, c, d = tf.math.real(x), tf.math.imag(x), tf.math.real(y), tf.math.imag(y)
        finite = tf.reduce_all(tf.math.is_finite(tf.stack([a, b, c, d])), axis=0)
        ok = tf.logical_and(finite, tf.logical_not(zero))
        one = tf.ones_like(a)
        re, im = _complex128_parts(*[tf.where(ok, v, one) for v in (a, b, c, d)])
        q = tf.complex(re, im)
    # non-finite parts: TF's quotient (inf and NaN as TF gives them); 0 where y == 0
    q = tf.where(finite, q, x / tf.where(zero, tf.ones_like(y), y))
    return tf.where(zero, tf.zeros_like(q), q)


def _complex_backward(g, x, y):
    # TF's gradient of DivNoNan for complex inputs (conjugated quotient rule)
    xc, yc = tf.math.conj(x), tf.math.conj(y)
    gx = tf.math.divide_no_nan(g, yc)
    gy = g * tf.math.divide_no_nan(tf.math.divide_no_nan(-xc, yc), yc)
    return gx, gy


_complex_divide_no_nan = custom_gradient("ComplexDivNoNan", _complex_forward, _complex_backward)


def _relative_error(t, p, eps, native):
    """Value (in the working dtype) of ``|t - p| / max(|t|, eps)``; `native`:
    the inputs are float64 (no wider working dtype)."""
    den = tf.maximum(tf.abs(t), eps)
    if not native:
        # float32 (and float16/bfloat16) arrive here in float64 (float32): the
        # difference of two values of half the precision rounds once (<= 2**-53
        # relative), the quotient once more: no TwoSum needed for the 1 ulp bound.
        return tf.abs(t - p) / den
    s, e = two_sum(t, -p)
    num = tf.abs(s)
    e = tf.where(s < 0, -e, e)  # |s + e| = |s| + sign(s) e (|e| <= ulp(s)/2)
    q = num / den
    # One Newton correction in double-double: q + (num + e - q*den) / den, with q*den
    # from exact partial products (XLA's FMA contraction cannot change them).
    ph, pl = prod_dw(q, den)
    corr = (((num - ph) - pl) + e) / den
    q = tf.where(tf.math.is_finite(corr), q + corr, q)
    return q


def _re_forward(t, p, eps):
    work = accumulation_dtype(t.dtype)
    q = _relative_error(tf.cast(t, work), tf.cast(p, work), tf.cast(eps, work),
                        native=t.dtype == tf.float64)
    big = tf.constant(limits(t.dtype).max, work)
    return tf.cast(tf.minimum(q, big), t.dtype)  # q >= 0; NaN stays NaN


def _re_backward(g, t, p, eps):
    work = accumulation_dtype(t.dtype)
    tw, pw, ew = tf.cast(t, work), tf.cast(p, work), tf.cast(eps, work)
    bw = tf.constant(limits(t.dtype).max, work)
    den = tf.maximum(tf.abs(tw), ew)
    d = tw - pw
    if t.dtype != tf.float64:
        # One precision up nothing overflows (|d| / den and g / den stay below
        # 2**256), and each gradient is its own quotient: a quotient shared by
        # both, or with the value's |d| / den, would be written to memory by XLA
        # and read back instead of fused into each gradient's loop.
        gw = tf.cast(g, work)
        pull = tf.where(tf.abs(tw) >= ew, gw * tf.sign(tw) * tf.abs(d) / den, tf.zeros_like(d))
        gt = tf.clip_by_value((gw * tf.sign(d) - pull) / den, -bw, bw)
        gp = tf.clip_by_value(-(tf.sign(d) * gw) / den, -bw, bw)
        return tf.cast(gt, t.dtype), tf.cast(gp, t.dtype)
    gd = tf.cast(g, work) / den
    # d/dt = (sign(d) - [|t| >= eps] sign(t) q) / den; the bracket as a select so
    # that q = inf (|d| / eps overflowing) never meets a 0.
    factor = tf.where(tf.abs(tw) >= ew, tf.sign(d) - tf.sign(tw) * (tf.abs(d) / den), tf.sign(d))
    # multiply_no_nan: where g / den flushes to 0 (den ~ max) while |d| / den overflowed
    # (float64 |t - p| > max), the product is 0, not inf * 0 = NaN
    gt = tf.clip_by_value(tf.math.multiply_no_nan(factor, gd), -bw, bw)
    gp = tf.clip_by_value(-(tf.sign(d) * gd), -bw, bw)
    return tf.cast(gt, t.dtype), tf.cast(gp, t.dtype)


_relative_error_op = custom_gradient("RelativeError", _re_forward, _re_backward, n_inputs=2,
                                     fuse=True)


@new("|y_true - y_pred| / max(|y_true|, eps) within 1 ulp; finite for finite inputs")
def relative_error(y_true, y_pred, eps=None, name=None):
    """Computes ``|y_true - y_pred| / max(|y_true|, eps)`` elementwise, stably.

    Replaces hand-written loss terms ``|y - p| / (|y| + 1e-8)``, which overflow
    or lose the relative scale when y is tiny.

    Method: float16/bfloat16 in float32, float32 in float64 (difference and
    quotient both within 2**-52 relative), rounded once: error <= 1 ulp.
    float64: the difference as an exact double-double (TwoSum) and one Newton
    correction of the quotient with Dekker's TwoProduct: error <= 1 ulp. The
    result saturates at the dtype's largest finite value (|diff| / eps
    overflowing), so it is finite for finite inputs. Inside a `tf.function`
    the value and each gradient run as one XLA-compiled loop (same results as
    eager up to XLA's rounding of the same float64 operations).

    Gradient: w.r.t. y_pred ``-sign(y_true - y_pred) / den`` (0 where y_pred ==
    y_true); w.r.t. y_true ``sign(diff) / den - [|y_true| >= eps] * sign(y_true)
    * |diff| / den**2`` (the second term vanishes where the floor `eps` is
    active, so at y_true = 0). Computed in the working dtype and saturated at
    +-largest finite.

    dtypes: float16, bfloat16, float32, float64 (same for both arguments); the
    output has that dtype. Default `eps`: smallest normal number of the dtype.

    Args:
      y_true: reference values, float tensor.
      y_pred: predictions, float tensor broadcastable with `y_true`.
      eps: optional positive floor for ``|y_true|``, e.g. 1e-8.
      name: optional name scope.

    Returns:
      The broadcast elementwise relative error, dtype of the inputs.

    Raises:
      TypeError: integer, bool or mismatched dtypes.
      ValueError: ``eps <= 0``.

    Example:
      >>> so.relative_error(0.0, 1e-30)       # |y - p| / (|y| + 1e-8) = 1e-22
      <tf.Tensor: shape=(), dtype=float32, numpy=8.507059e+07>
    """
    op = "safeops.relative_error"
    with name_scope(name or "relative_error"):
        y_true, y_pred = args.convert_n(op, ("y_true", "y_pred"), (y_true, y_pred))
        return _relative_error_op(y_true, y_pred, _eps_param(op, eps, y_true.dtype))
