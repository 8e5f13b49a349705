"""exp and log1p of float64 tensors written as polynomials, for float32 ops computed in float64.

XLA:CPU's float64 `exp` and `log1p` are not vectorised like its float32 ones (they
cost several float32 passes over memory), while a polynomial of float64 multiplies
and adds is one vectorised loop. The ops that evaluate float32 inputs in float64 and
round once (smooth_where, soft_maximum, soft_clip, ...) call these inside their
XLA-compiled bodies; eagerly they call TF's float64 kernels (one launch each). The
polynomials' relative error is within 2 u (exp) and 4 u (log1p), u = 2**-53 (tested
against mpmath), as TF's own kernels: far below the half ulp of float32 that the
single final rounding adds, so float32 results agree with those of TF's kernels
except where a value lies within a few float64 roundings of a float32 rounding
boundary.

Only non-positive arguments of exp and arguments of log1p in [0, 1] are needed by
the ops (``exp(-|z|)`` and ``log1p`` of it), so no overflow handling is written.
"""

import math

import tensorflow as tf

__all__ = ["exp_neg", "exp_nonpositive", "log1p_for", "log1p_unit"]

# ln 2 split so that k * _LN2_HI is exact for |k| < 2**11 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634
# An integer k (|k| < 2**51) plus 1.5 * 2**52 is exact, and k sits in the low bits of
# the sum's significand (two's complement). (Rounding by adding and subtracting this
# constant is not used: XLA folds (a + c) - c to a.)
_ROUND = 6755399441055744.0
# exp(z) for z <= this is under 2**-1021 and returned as 0 (TF on CPU flushes
# subnormal results to 0 anyway), which keeps 2**k a normal number.
_EXP_MIN = -708.0
# 1 / n! for n = 13..0: Taylor's remainder on |r| <= ln(2) / 2 is below 5e-18.
_EXP_COEFFS = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))
# 1 / (2k + 1), k = 9..0: 2 atanh(s) = log((1 + s) / (1 - s)); on |s| <= 3 - 2 sqrt(2)
# the omitted terms sum to below 2.5e-17 relative.
_ATANH_COEFFS = tuple(1.0 / (2 * k + 1) for k in range(9, -1, -1))
_SQRT2_M1 = 0.41421356237309503


def exp_nonpositive(z):
    """``exp(z)`` for float64 ``z <= 0`` (NaN gives NaN, -inf and z <= -708 give 0).

    Graph: Cody-Waite reduction ``z = k ln 2 + r``, ``|r| <= ln(2) / 2``, Taylor
    polynomial of degree 13 in r (Horner), scaled by ``2**k`` built in the
    exponent bits. Eagerly: `tf.exp`.
    """
    if tf.executing_eagerly():
        return tf.exp(z)
    zc = tf.maximum(z, _EXP_MIN)
    k = tf.round(zc * _LOG2E)
    r = (zc - k * _LN2_HI) - k * _LN2_LO
    p = r * _EXP_COEFFS[0] + _EXP_COEFFS[1]
    for c in _EXP_COEFFS[2:]:
        p = p * r + c
    # 2**k: (k + 1023) << 52; the shift drops the sum's own sign and exponent bits.
    bits = tf.bitwise.left_shift(tf.bitcast(k + _ROUND, tf.int64) + 1023, tf.constant(52, tf.int64))
    out = p * tf.bitcast(bits, tf.float64)
    # z itself is read once (by the clamp): XLA then fuses whatever computed it
    # (a division, say) into the loop instead of materializing it.
    return tf.where(tf.equal(zc, _EXP_MIN), tf.zeros_like(zc), out)


def log1p_unit(e):
    """``log1p(e)`` for float64 e in [0, 1] (NaN gives NaN; e < 2**-1021 gives 0 in
    graphs, where s below is subnormal and TF on CPU flushes it).

    Graph: ``2 atanh(s)`` with ``s = e / (2 + e)`` for ``e <= sqrt(2) - 1`` and
    ``ln 2 + 2 atanh(s)``, ``s = (e - 1) / (e + 3)`` above, so ``|s| <= 0.172``;
    the odd series of atanh to s**19 (Horner in s**2). No cancellation: s keeps
    the relative precision of e. Eagerly: `tf.math.log1p`.
    """
    if tf.executing_eagerly():
        return tf.math.log1p(e)
    upper = e > _SQRT2_M1
    s = tf.where(upper, (e - 1.0) / (e + 3.0), e / (e + 2.0))
    s2 = s * s
    p = s2 * _ATANH_COEFFS[0] + _ATANH_COEFFS[1]
    for c in _ATANH_COEFFS[2:]:
        p = p * s2 + c
    t = 2.0 * s * p
    return tf.where(upper, _LN2_HI + (t + _LN2_LO), t)


def exp_neg(z, dtype):
    """``exp(z)`` for ``z <= 0`` in the working dtype of an op on `dtype` inputs: the
    polynomial for float32 (working in float64), TF's kernel for the others (float32
    for float16/bfloat16, whose exp XLA vectorises; float64's own)."""
    return exp_nonpositive(z) if dtype == tf.float32 else tf.exp(z)


def log1p_for(e, dtype):
    """``log1p(e)`` for e in [0, 1] in the working dtype of an op on `dtype` inputs
    (as `exp_neg`)."""
    return log1p_unit(e) if dtype == tf.float32 else tf.math.log1p(e)
