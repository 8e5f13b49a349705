"""Error-free transformations (EFTs) on tensors of one dtype, without argument checks.

``two_sum(a, b) = (s, e)`` with ``a + b = s + e`` exactly, ``s = fl(a + b)``
(Knuth); `fast_two_sum` the same for ``|a| >= |b|`` (Dekker); `two_prod`
Dekker's TwoProduct with a bit-mask split; `prod_dw` a product as a double
word built from exact partial products only (no inexact multiply for
XLA:CPU's FMA contraction to change); `dw_add` a double word plus a word.
The public ops in `safeops.eft` check their arguments and call these; the
reductions, dot products, accumulators and metrics use them directly.
See `safeops.eft` for the bounds, the half-precision range and the XLA notes.
"""

import tensorflow as tf

__all__ = ["dw_add", "fast_two_sum", "prod_dw", "split", "two_diff", "two_prod", "two_sum"]

# Split point s = ceil(p/2) for a p-bit significand, and the integer type of the same width.
_SPLIT = {
    tf.float16: (tf.int16, 6),  # p = 11: hi 5 bits, lo <= 5 bits
    tf.bfloat16: (tf.int16, 4),  # p = 8: hi 4 bits, lo <= 3 bits (or a power of two)
    tf.float32: (tf.int32, 12),  # p = 24: hi 12 bits, lo <= 11 bits
    tf.float64: (tf.int64, 27),  # p = 53: hi 26 bits, lo <= 26 bits
}


def two_sum(a, b):
    """TwoSum on tensors of one dtype, no checks: (s, e) with a + b = s + e."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def fast_two_sum(a, b):
    """FastTwoSum, valid when |a| >= |b|: (s, e) with a + b = s + e."""
    s = a + b
    e = b - (s - a)
    return s, e


def split(a):
    """a = hi + lo exactly, hi and lo with at most p - s bits each (s = ceil(p/2)).

    hi is a rounded to nearest at bit s of the significand by integer
    arithmetic on its bit pattern (add half of the dropped part, clear the
    low s bits; a carry moves into the exponent as it should), so
    ``|lo| <= 2**(s-1)`` ulp(a) and ``lo = a - hi`` is exact. No float
    multiply is involved, so FMA contraction cannot change it (Veltkamp's
    split can be broken that way under XLA). hi overflows to inf only for
    |a| within a relative 2**-(p-s) of the largest finite value.
    """
    itype, s = _SPLIT[a.dtype]
    bits = tf.bitcast(a, itype) + tf.constant(1 << (s - 1), itype)
    hi = tf.bitcast(tf.bitwise.bitwise_and(bits, tf.constant(~((1 << s) - 1), itype)), a.dtype)
    return hi, a - hi


def two_prod(a, b):
    """Dekker's TwoProduct: (p, e) with a * b = p + e, p = fl(a * b)."""
    p = a * b
    ah, al = split(a)
    bh, bl = split(b)
    e = al * bl - (((p - ah * bh) - al * bh) - ah * bl)
    return p, e


def prod_dw(a, b):
    """a * b as a double word (p, e) built from exact partial products only.

    With the split halves, ``hh = ah bh``, ``ah bl``, ``al bh`` and
    ``ll = al bl`` are exact, so XLA contracting any of them into an FMA
    does not change a result. ``mid = fl(ah bl + al bh)``; ``(p, e1) =
    TwoSum(hh, mid)``; ``e = fl(e1 + ll)``. Then ``|p - a b| <= 3u |a b|``
    (``|e1| <= u|p|``, ``|ll| <= 2u|ab|``; p is usually fl(a b), not
    always), ``|e| <= 3u |a b|`` and ``|p + e - a b| <= 4 u**2 |a b|``
    (rounding of mid: u 2**-25 |ab|; of e: u (|e1| + |ll|) <= 3 u**2 |ab|).
    Where p is not finite (inf/NaN inputs, or hh overflowing), p is TF's
    ``a * b`` and e is 0, so non-finite values propagate as in TF.
    Nothing here is differentiable (bitcast); callers supply the gradient.
    """
    ah, al = split(a)
    bh, bl = split(b)
    p, e1 = two_sum(ah * bh, ah * bl + al * bh)
    e = e1 + al * bl
    fin = tf.math.is_finite(p)
    return tf.where(fin, p, a * b), tf.where(fin, e, tf.zeros_like(e))


def two_diff(a, b):
    """(d, e) with ``d = fl(a - b)`` and ``a - b = d + e`` exactly: `two_sum` of a and -b."""
    return two_sum(a, -b)


def dw_add(hi, lo, x, x_lo=None):
    """The double word ``hi + lo`` plus ``x`` (plus its low part ``x_lo``), renormalised.

    TwoSum of hi and x, the error plus lo (and x_lo), then FastTwoSum
    (Dekker's double-word + word addition): the new lo stays within half an
    ulp of the new hi, so a running total never stalls. Where the plain sum
    ``hi + x`` is not finite (inf, NaN) hi is that IEEE sum and lo is 0.

    Returns:
      ``(hi, lo)``, of the inputs' dtype and broadcast shape.
    """
    s, e = two_sum(hi, x)
    e = e + (lo if x_lo is None else lo + x_lo)
    h, low = fast_two_sum(s, e)
    finite = tf.math.is_finite(s)
    h = tf.where(finite, h, s)
    low = tf.where(finite & tf.math.is_finite(low), low, tf.zeros_like(low))
    return h, low
