"""The digit format of the exact accumulator and the rounding of its integers to floats.

A value of a binary format is ``m * 2**(pos + emin_sub)``; the accumulator's
digit k weighs ``2**(32 k + emin_sub)`` (`binary_format` gives the format's
parameters and J, the number of digits). `normalize` carry-propagates digit
sums to two's complement; `round_bits` rounds a magnitude (32-bit digits, a
sticky bit below) to nearest-even at the format's precision, with gradual
underflow and overflow to inf, as a bit pattern; `assemble` adds the sign and
the IEEE special cases and bit-casts. Everything is integer arithmetic, so a
device that flushes subnormals or contracts multiply-adds cannot change it.
"""

import collections
import math

import tensorflow as tf

from safeops._core import dtypes

__all__ = ["COUNT", "Format", "MASK32", "NAN", "NCOUNT", "NEGZERO", "NINF", "PINF", "assemble",
           "binary_format", "divide", "normalize", "num_digits", "round_bits", "sign_magnitude"]

MASK32 = (1 << 32) - 1
NCOUNT = 5  # NaN, +inf, -inf, -0.0, terms
NAN, PINF, NINF, NEGZERO, COUNT = range(5)

Format = collections.namedtuple(
    "Format", ["dtype", "bits_dtype", "width", "p", "ebits", "emin_sub", "limbs", "digits"])


def binary_format(dtype):
    """The binary format of a floating dtype, derived from the dtype policy's limits."""
    dtype = tf.as_dtype(dtype)
    lim = dtypes.limits(dtype)
    p = 1 - int(round(math.log2(lim.eps)))  # significand bits, implicit bit included
    emin_norm = int(round(math.log2(lim.tiny)))
    emax = math.frexp(lim.max)[1] - 1
    ebits = (emax + 1).bit_length()  # emax + 1 = 2**(ebits - 1)
    emin_sub = emin_norm - (p - 1)
    pos_max = (1 << ebits) - 3  # largest finite: biased exponent 2**ebits - 2, pos = biased - 1
    limbs = 2 if p <= 32 else 3
    # headroom: 2**62 times the largest term, plus a sign digit
    digits = (pos_max + p + 64) // 32 + 1
    bits_dtype = dtypes.int_of(dtype)
    return Format(dtype, bits_dtype, bits_dtype.size * 8, p, ebits, emin_sub, limbs, digits)


def num_digits(dtype):
    """J, the number of 32-bit digits of a state of `dtype` values (the state has J + 5)."""
    return binary_format(dtype).digits


# ----------------------------------------------------------------------------- normalization

def normalize(d):
    """Carry-propagate [..., K] int64 digits (|d| <= 2**63 - 2**31) to two's complement:
    digits in [0, 2**32) with the top digit signed (and holding the carry).

    A scan over the digits (a while loop, also under XLA: the compiled
    program does not grow with K); a function, so eager calls run it as one
    graph."""
    fn = _normalize_fn if tf.executing_eagerly() else _normalize_2d
    return tf.reshape(fn(tf.reshape(d, [-1, d.shape[-1]]), d.shape[-1]), tf.shape(d))


def _normalize_2d(flat, k):
    """`normalize` of [B, k] digits."""
    flat = tf.reshape(flat, [-1, k])
    cols = tf.transpose(flat)  # [K, B]
    mask = tf.constant(MASK32, tf.int64)
    s32 = tf.constant(32, tf.int64)

    def step(acc, c):
        v = c + acc[0]
        return tf.bitwise.right_shift(v, s32), tf.bitwise.bitwise_and(v, mask)

    zero = tf.zeros_like(cols[0])
    carries, low = tf.scan(step, cols[:-1], initializer=(zero, zero))
    top = cols[-1] + carries[-1]
    return tf.transpose(tf.concat([low, top[None]], 0))


# eager calls run the digit scans as one graph each (inside a graph they are inlined)
_normalize_fn = tf.function(_normalize_2d, reduce_retracing=True, autograph=False)


def sign_magnitude(digits):
    """Normalized two's complement digits -> (negative, magnitude digits in [0, 2**32))."""
    neg = digits[..., -1] < 0
    mag = tf.where(neg[..., None], normalize(-digits), digits)
    return neg, mag


# ----------------------------------------------------------------------------- rounding

def _bit_length(v):
    """Bit length of int64 values in [1, 2**53): exact from the float64 exponent field."""
    f = tf.bitcast(tf.cast(v, tf.float64), tf.int64)
    return tf.bitwise.right_shift(f, tf.constant(52, tf.int64)) - 1022


def _shift(v, s):
    """v * 2**s for int64 v >= 0 and int64 shifts s of either sign (|s| < 63), truncating."""
    zero = tf.zeros_like(s)
    return tf.where(s >= 0, tf.bitwise.left_shift(v, tf.maximum(s, zero)),
                    tf.bitwise.right_shift(v, tf.maximum(-s, zero)))


def round_bits(mag, base, sticky_in, fmt):
    """Nearest-even rounding of sum_k mag_k 2**(32k + base) (+ a sticky bit below) to fmt.

    Args:
      mag: [..., K] int64 digits in [0, 2**32).
      base: Python int, the exponent of digit 0's last bit.
      sticky_in: [...] bool, a nonzero remainder below digit 0.

    Returns:
      [...] int64: the magnitude's bit pattern in fmt (inf where it overflows).
    """
    K = mag.shape[-1]
    nz = tf.not_equal(mag, 0)
    k = tf.range(K, dtype=tf.int64)
    top = tf.reduce_max(tf.where(nz, k, -tf.ones_like(k)), -1)
    low = tf.reduce_min(tf.where(nz, k, tf.fill(tf.shape(k), tf.constant(K, tf.int64))), -1)
    zero = top < 0
    t = tf.maximum(top, 0)
    padded = tf.concat([tf.zeros_like(mag[..., :2]), mag], -1)  # digits -2, -1 are zero
    d0 = tf.gather(padded, t + 2, batch_dims=mag.shape.rank - 1)
    d1 = tf.gather(padded, t + 1, batch_dims=mag.shape.rank - 1)
    d2 = tf.gather(padded, t, batch_dims=mag.shape.rank - 1)
    bl = _bit_length(tf.maximum(d0, 1))
    ksh = 62 - bl  # window: 62 bits, top bit at bit 61
    s1 = ksh - 32
    s2 = 64 - ksh
    one = tf.constant(1, tf.int64)
    w = (tf.bitwise.left_shift(d0, ksh) + _shift(d1, s1) + tf.bitwise.right_shift(d2, s2))
    lost1 = tf.bitwise.bitwise_and(d1, tf.bitwise.left_shift(one, tf.maximum(-s1, 0)) - 1)
    lost2 = tf.bitwise.bitwise_and(d2, tf.bitwise.left_shift(one, s2) - 1)
    sticky = sticky_in | (low < t - 2) | (lost1 != 0) | (lost2 != 0)
    e_top = 32 * t + base + bl - 1  # exponent of the top bit
    p = fmt.p
    lsb = tf.maximum(e_top - (p - 1), fmt.emin_sub)
    drop = tf.minimum(lsb - (e_top - 61), 63)  # >= 62 - p >= 9
    q = tf.bitwise.right_shift(w, drop)
    rem = w - tf.bitwise.left_shift(q, drop)
    half = tf.bitwise.left_shift(one, drop - 1)
    odd = tf.bitwise.bitwise_and(q, one) != 0
    up = (rem > half) | ((rem == half) & (sticky | odd))
    q = q + tf.cast(up, tf.int64)
    inf_bits = tf.constant(((1 << fmt.ebits) - 1) << (p - 1), tf.int64)
    # exponent field - 1 of the result; from 2**ebits - 2 on, the value is >= 2**(emax + 1)
    exp_part = lsb - fmt.emin_sub
    overflow = exp_part >= (1 << fmt.ebits) - 2
    exp_part = tf.minimum(exp_part, (1 << fmt.ebits) - 3)  # keeps the sum below inf_bits
    bits = tf.bitwise.left_shift(exp_part, tf.constant(p - 1, tf.int64)) + q
    bits = tf.where(overflow, tf.fill(tf.shape(bits), inf_bits), tf.minimum(bits, inf_bits))
    return tf.where(zero, tf.zeros_like(bits), bits)


def assemble(neg, mag_bits, counters, fmt, empty_bits=0):
    """Bit patterns with sign and IEEE special cases -> tensor of fmt.dtype."""
    p = fmt.p
    inf_bits = ((1 << fmt.ebits) - 1) << (p - 1)
    nan_bits = inf_bits | (1 << (p - 2))
    n_nan, n_pinf, n_ninf, n_negzero, n = (counters[..., i] for i in range(NCOUNT))
    sign = neg
    bits = mag_bits
    all_negzero = (n > 0) & tf.equal(n_negzero, n)
    sign = sign | all_negzero
    is_nan = (n_nan > 0) | ((n_pinf > 0) & (n_ninf > 0))
    bits = tf.where(n_ninf > 0, tf.fill(tf.shape(bits), tf.constant(inf_bits, tf.int64)), bits)
    sign = tf.where(n_ninf > 0, tf.ones_like(sign), sign)
    bits = tf.where(n_pinf > 0, tf.fill(tf.shape(bits), tf.constant(inf_bits, tf.int64)), bits)
    sign = tf.where(n_pinf > 0, tf.zeros_like(sign), sign)
    bits = tf.where(is_nan, tf.fill(tf.shape(bits), tf.constant(nan_bits, tf.int64)), bits)
    sign = tf.where(is_nan, tf.zeros_like(sign), sign)
    if empty_bits:
        bits = tf.where(tf.equal(n, 0), tf.fill(tf.shape(bits), tf.constant(empty_bits, tf.int64)),
                        bits)
        sign = tf.where(tf.equal(n, 0), tf.zeros_like(sign), sign)
    # the sign bit in the two's complement of the signed integer type of the width
    signed = tf.where(sign, bits + tf.constant(-(1 << (fmt.width - 1)), tf.int64), bits)
    return tf.bitcast(tf.cast(signed, fmt.bits_dtype), fmt.dtype)


def divide(mag, n):
    """Long division of [B, K] 32-bit digits by n ([B], 1 <= n < 2**47), in 16-bit steps,
    with two extra digits below: (quotient [B, K + 2], remainder != 0)."""
    fn = _divide_fn if tf.executing_eagerly() else _divide_2d
    q, sticky = fn(mag, n, mag.shape[-1])
    return tf.reshape(q, [-1, mag.shape[-1] + 2]), sticky


def _divide_2d(mag, n, k):
    mag = tf.reshape(mag, [-1, k])
    mask16 = tf.constant(0xFFFF, tf.int64)
    s16 = tf.constant(16, tf.int64)
    cols = tf.transpose(mag)[::-1]  # most significant first
    zero = tf.zeros_like(cols[0])
    cols = tf.concat([cols, tf.zeros_like(cols[:2])], 0)

    def step(acc, c):
        r = acc[0]
        cur = tf.bitwise.left_shift(r, s16) + tf.bitwise.right_shift(c, s16)
        qh = tf.math.floordiv(cur, n)
        r = cur - qh * n
        cur = tf.bitwise.left_shift(r, s16) + tf.bitwise.bitwise_and(c, mask16)
        ql = tf.math.floordiv(cur, n)
        r = cur - ql * n
        return r, tf.bitwise.left_shift(qh, s16) + ql

    rems, q = tf.scan(step, cols, initializer=(zero, zero))
    return tf.transpose(q[::-1]), tf.not_equal(rems[-1], 0)


_divide_fn = tf.function(_divide_2d, reduce_retracing=True, autograph=False)
