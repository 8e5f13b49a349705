"""Error-free transformations (EFTs): sums and products with their exact rounding error.

An EFT returns the rounded result ``r = fl(a op b)`` together with the exact
error ``e`` such that ``a op b = r + e`` holds *exactly* in real arithmetic.
They are the building blocks of compensated algorithms (Kahan, Sum2, Dot2)
and are used by `safeops.summation`, `safeops.dot` and
`safeops.KahanAccumulator`.

* `two_sum` -- Knuth's TwoSum, 6 flops, no condition on the inputs.
* `fast_two_sum` -- Dekker's FastTwoSum, 3 flops, needs ``|a| >= |b|`` (or a == 0).
* `two_prod` -- Dekker's TwoProduct. TF has no fused multiply-add op, so each
  factor is split into two halves of at most ``p - ceil(p/2)`` bits by bit
  masking (round to nearest at bit ``ceil(p/2)``), and the four partial
  products of the halves are exact.

References: D. E. Knuth, TAOCP vol. 2, Thm 4.2.2B; T. J. Dekker, "A
floating-point technique for extending the available precision", Numer. Math.
18 (1971); T. Ogita, S. M. Rump, S. Oishi, "Accurate sum and dot product",
SIAM J. Sci. Comput. 26(6), 2005.

float16/bfloat16: TF's CPU kernels evaluate half-precision arithmetic in
float32 and round the result, which can round twice; the EFTs are then exact
when the float32 intermediate is exact, i.e. for operands within 12 binades
of each other (``2**-12 <= |b / a| <= 2**12``) -- tested in that range.
float32 and float64 are exact without that condition. All dtypes: TF's
CPU kernels flush subnormals to zero, so an error term below the normal
range is lost (it is then below ``2**emin``, e.g. 1.2e-38 in float32).

XLA: with fast-math off (XLA:CPU's default in TF 2.21) TwoSum is compiled as
written (tested under ``jit_compile=True``). XLA:CPU does however contract a
multiply followed by an add into an FMA, also after duplicating a product
into several fused kernels (seen in the compiled code: ``vfmadd`` for
``x * y`` summed by a TwoSum tree). A contracted *inexact* product breaks an
EFT identity; a contracted *exact* product changes nothing. Hence:

* the split uses integer bit masking, not Veltkamp's ``c = (2**s + 1) a;
  hi = c - (c - a)`` (whose multiply-add XLA may contract);
* `_prod_dw` (used by dot, matmul, mean, variance and std) represents
  ``a * b`` as ``p + e`` from the exact partial products only, with no
  rounded product in any addition, so its result does not depend on
  contraction;
* `two_prod` itself returns ``p = a * b``, which XLA could in principle
  contract into Dekker's ``p - ah * bh`` if it duplicated the product into
  that kernel; measured exact under ``jit_compile=True`` (tests/test_eft.py),
  but the library's own ops do not rely on it.
"""

import tensorflow as tf

from safeops._dtypes import convert_to_floating

__all__ = ["fast_two_sum", "two_prod", "two_sum"]

# Split point s = ceil(p/2) for a p-bit significand, and the integer type of the same width.
_SPLIT = {
    tf.float16: (tf.int16, 6),  # p = 11: hi 5 bits, lo <= 5 bits
    tf.bfloat16: (tf.int16, 4),  # p = 8: hi 4 bits, lo <= 3 bits (or a power of two)
    tf.float32: (tf.int32, 12),  # p = 24: hi 12 bits, lo <= 11 bits
    tf.float64: (tf.int64, 27),  # p = 53: hi 26 bits, lo <= 26 bits
}


def _pair(op, a, b):
    a = convert_to_floating(op, "a", a)
    b = convert_to_floating(op, "b", b, dtype=a.dtype if not isinstance(b, tf.Tensor) else None)
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: arguments 'a' and 'b' must have the same dtype; "
                        f"got {a.dtype.name} and {b.dtype.name}")
    return a, b


def _two_sum(a, b):
    """TwoSum on tensors of one dtype, no checks: (s, e) with a + b = s + e."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _fast_two_sum(a, b):
    """FastTwoSum, valid when |a| >= |b|: (s, e) with a + b = s + e."""
    s = a + b
    e = b - (s - a)
    return s, e


def _split(a):
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


def _two_prod(a, b):
    """Dekker's TwoProduct: (p, e) with a * b = p + e, p = fl(a * b)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = al * bl - (((p - ah * bh) - al * bh) - ah * bl)
    return p, e


def _prod_dw(a, b):
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
    ah, al = _split(a)
    bh, bl = _split(b)
    p, e1 = _two_sum(ah * bh, ah * bl + al * bh)
    e = e1 + al * bl
    fin = tf.math.is_finite(p)
    return tf.where(fin, p, a * b), tf.where(fin, e, tf.zeros_like(e))


def two_sum(a, b, name=None):
    """The rounded sum ``s = fl(a + b)`` and its exact error ``e = (a + b) - s``.

    New op (TF has none). Method: Knuth's TwoSum, ``s = a + b; bb = s - a;
    e = (a - (s - bb)) + (b - bb)``, elementwise with broadcasting.

    Error bound: none -- ``a + b == s + e`` exactly, for any finite a, b whose
    sum does not overflow (round-to-nearest). If ``a + b`` overflows, s is
    +-inf and e is NaN; NaN/inf inputs propagate to s as in TF and make e NaN.

    Gradient: s has the gradient of ``a + b`` (1 for each input); e is a
    rounding error and is not differentiated (zero gradient, everywhere).

    dtypes: float16, bfloat16, float32, float64; a and b must have one dtype.

    Args:
      a: a floating tensor.
      b: a tensor of the same dtype, broadcastable with a.
      name: optional name scope.

    Returns:
      A tuple ``(s, e)`` of tensors of the broadcast shape and the input dtype.

    Raises:
      TypeError: if a or b is not floating, or their dtypes differ.

    Example:
      >>> s, e = so.two_sum(tf.constant(1e8), tf.constant(1.0))
      >>> float(s), float(e)   # 1e8 + 1 is not representable in float32
      (100000000.0, 1.0)
    """
    with tf.name_scope(name or "two_sum"):
        a, b = _pair("safeops.two_sum", a, b)
        s, e = _two_sum(a, b)
        return a + b, tf.stop_gradient(e)


def fast_two_sum(a, b, name=None):
    """Dekker's FastTwoSum: ``s = fl(a + b)`` and ``e = (a + b) - s``, for ``|a| >= |b|``.

    New op. Method: ``s = a + b; e = b - (s - a)`` (3 flops instead of 6).

    Error bound: exact (``a + b == s + e``) when ``|a| >= |b|`` or ``a == 0``
    (more precisely, when exponent(a) >= exponent(b)); otherwise e may be
    wrong -- use `two_sum`. The precondition is not checked (that would cost
    more than `two_sum`).

    Gradient: s as ``a + b`` (1 for each input); e is not differentiated.

    dtypes: float16, bfloat16, float32, float64; a and b must have one dtype.

    Args:
      a: a floating tensor, the larger in magnitude.
      b: a tensor of the same dtype, broadcastable with a.
      name: optional name scope.

    Returns:
      A tuple ``(s, e)`` of tensors of the broadcast shape and the input dtype.

    Raises:
      TypeError: if a or b is not floating, or their dtypes differ.

    Example:
      >>> s, e = so.fast_two_sum(tf.constant(1.0), tf.constant(1e-8))
      >>> float(s), float(e)
      (1.0, 9.99999993922529e-09)
    """
    with tf.name_scope(name or "fast_two_sum"):
        a, b = _pair("safeops.fast_two_sum", a, b)
        s, e = _fast_two_sum(a, b)
        return a + b, tf.stop_gradient(e)


def two_prod(a, b, name=None):
    """The rounded product ``p = fl(a * b)`` and its exact error ``e = a * b - p``.

    New op (TF has no FMA). Method: Dekker's TwoProduct,
    ``e = al bl - (((p - ah bh) - al bh) - ah bl)``, with each factor split
    by bit masking: hi is the factor rounded to nearest at bit
    ``s = ceil(p/2)`` of its p-bit significand (s = 6, 4, 12, 27 for float16,
    bfloat16, float32, float64) and ``lo = a - hi``; both halves have at most
    ``p - s`` bits, so the four half-products are exact. (Veltkamp's
    multiplicative split is not used: XLA:CPU may contract its multiply-add
    into an FMA.)

    Error bound: exact (``a * b == p + e``) provided no overflow and no
    underflow occurs: the split overflows (e NaN) only for |a| or |b| within
    a relative ``2**-(p-s)`` of the largest finite value, and ``|e|`` must be
    above the subnormal range (roughly ``|a b| >= 2**(emin + p)``; below that
    e is only approximate). Tested exact eagerly, in `tf.function` and under
    ``jit_compile=True`` (see the module doc for XLA).

    Gradient: p as ``a * b`` (b and a); e is not differentiated.

    dtypes: float16, bfloat16, float32, float64; a and b must have one dtype.

    Args:
      a: a floating tensor.
      b: a tensor of the same dtype, broadcastable with a.
      name: optional name scope.

    Returns:
      A tuple ``(p, e)`` of tensors of the broadcast shape and the input dtype.

    Raises:
      TypeError: if a or b is not floating, or their dtypes differ.

    Example:
      >>> p, e = so.two_prod(tf.constant(1.0 + 2.0**-20), tf.constant(1.0 + 2.0**-20))
      >>> float(e) == 2.0**-40   # the bit float32 drops from (1 + 2**-20)**2
      True
    """
    with tf.name_scope(name or "two_prod"):
        a, b = _pair("safeops.two_prod", a, b)
        p, e = _two_prod(a, b)
        return a * b, tf.stop_gradient(e)
