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
* `safeops._core.eft.prod_dw` (used by dot, matmul, mean, variance and std) represents
  ``a * b`` as ``p + e`` from the exact partial products only, with no
  rounded product in any addition, so its result does not depend on
  contraction;
* `two_prod` itself returns ``p = a * b``, which XLA could in principle
  contract into Dekker's ``p - ah * bh`` if it duplicated the product into
  that kernel; measured exact under ``jit_compile=True`` (tests/test_eft.py),
  but the library's own ops do not rely on it.
"""

import tensorflow as tf

from safeops._core import eft as _eft
from safeops._core.args import convert_n
from safeops._core.registry import new

__all__ = ["fast_two_sum", "two_prod", "two_sum"]

def _pair(op, a, b):
    """a and b as tensors of one floating dtype, by TF's rule (Python numbers take the
    tensor's dtype; tensors of two dtypes raise)."""
    return convert_n(op, ("a", "b"), (a, b))


@new("the rounded sum and its exact rounding error (Knuth's TwoSum)")
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
        s, e = _eft.two_sum(a, b)
        return a + b, tf.stop_gradient(e)


@new("the rounded sum and its exact error for |a| >= |b| (Dekker's FastTwoSum)")
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
        s, e = _eft.fast_two_sum(a, b)
        return a + b, tf.stop_gradient(e)


@new("the rounded product and its exact error (Dekker's TwoProduct, FMA-free)")
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
        p, e = _eft.two_prod(a, b)
        return a * b, tf.stop_gradient(e)
