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
# Polynomials fitted with mpmath.chebyfit at 50 digits (coefficients from the highest
# power down, rounded to float64): exp(r) of degree 11 on |r| <= ln(2) / 2 (fit error
# 3.2e-18), and atanh(s) / s of degree 7 in s**2 on |s| <= 3 - 2 sqrt(2) (fit error
# 1.2e-18, so 2 atanh(s) = log((1 + s) / (1 - s)) within a few units of 2**-53).
_EXP_COEFFS = (
    2.5110037605963777e-08, 2.763263963904103e-07, 2.755724091857897e-06,
    2.4801485482328494e-05, 0.00019841269890047113, 0.0013888888952314775,
    0.008333333333319601, 0.0416666666664881, 0.1666666666666668, 0.5000000000000019,
    1.0, 1.0)
_ATANH_COEFFS = (
    0.07404855180327638, 0.07656264074182095, 0.09091815840114664, 0.11111098528363024,
    0.1428571438032084, 0.1999999999965117, 0.33333333333333826, 1.0)
_SQRT2_M1 = 0.41421356237309503


def exp_nonpositive(z):
    """``exp(z)`` for float64 ``z <= 0`` (NaN gives NaN, -inf and z <= -708 give 0).

    Graph: Cody-Waite reduction ``z = k ln 2 + r``, ``|r| <= ln(2) / 2``, a
    polynomial of degree 11 in r (Horner), scaled by ``2**k`` built in the
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
    bits = tf.bitwise.left_shift(tf.bitcast(k + _ROUND, tf.int64) + 1023,
                                 tf.constant(52, tf.int64))
    out = p * tf.bitcast(bits, tf.float64)
    # z itself is read once (by the clamp): XLA then fuses whatever computed it
    # (a division, say) into the loop instead of materializing it.
    return tf.where(tf.equal(zc, _EXP_MIN), tf.zeros_like(zc), out)


def log1p_unit(e):
    """``log1p(e)`` for float64 e in [0, 1] (NaN gives NaN; e < 2**-1021 gives 0 in
    graphs, where s below is subnormal and TF on CPU flushes it).

    Graph: ``2 atanh(s)`` with ``s = e / (2 + e)`` for ``e <= sqrt(2) - 1`` and
    ``ln 2 + 2 atanh(s)``, ``s = (e - 1) / (e + 3)`` above, so ``|s| <= 0.172``;
    a polynomial of degree 7 in s**2 for atanh(s) / s (Horner). No cancellation:
    s keeps the relative precision of e. Eagerly: `tf.math.log1p`.
    """
    if tf.executing_eagerly():
        return tf.math.log1p(e)
    upper = e > _SQRT2_M1
    # one division of selected operands: the bits of selecting between the two
    # quotients, one float64 division instead of two in a vectorised loop. The
    # quotient's one user is a selection (NaN e gives e, NaN): XLA fuses a
    # division with several users into none of them and writes it to memory.
    q = tf.where(upper, e - 1.0, e) / tf.where(upper, e + 3.0, e + 2.0)
    s = tf.where(tf.math.is_nan(e), e, q)
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
