"""Exact accumulation of floating-point values in integers, rounded once.

Every finite float16/bfloat16/float32/float64 value is an integer mantissa
``m`` times a power of two: ``x = m * 2**(pos + emin_sub)`` with ``emin_sub``
the exponent of the dtype's smallest subnormal and ``0 <= pos``. The value is
placed into a fixed-point integer whose digits are 32 bits wide (digit ``k``
weighs ``2**(32 k + emin_sub)``): ``m << (pos % 32)`` is cut into 2 (float64:
3) limbs of at most 32 bits that land in digits ``pos // 32``, ``+1``, ``+2``.
Limbs are summed per digit in int64 (a weighted integer bincount): integer
addition is associative, so the digit sums -- and everything computed from
them -- are the same bits in any order, on any device, with any number of
threads, under XLA or not, and for any split of the input into parts whose
states are added (`combine_states`). With limbs below 2**32 in magnitude, up
to 2**31 terms per output cannot overflow an int64 digit; longer reductions
are cut into chunks whose states are combined.

A *state* is an int64 tensor ``[..., J + 5]``: ``J`` digits of the exact sum
in two's complement (normalized: digits in ``[0, 2**32)``, the top one
signed), then five counters: NaNs, +infs, -infs, negative zeros, and terms.
States of disjoint parts add digit-wise (`combine_states`), which is how a
sum split across replicas or batches is combined exactly.

Rounding (`state_to_sum`, `state_to_mean`, with `safeops._core.exact_digits`):
the digits are normalized
(carry propagation), the magnitude's top 62 bits are taken together with a
sticky bit for everything below, and rounded to nearest-even at the output
dtype's precision, with gradual underflow and overflow to inf as IEEE
round-to-nearest gives; the float is assembled from its bit pattern, so a
device that flushes subnormals (TensorFlow's CPU kernels do) cannot change
it. The result is the *correctly rounded* exact sum. The mean divides the
exact integer by the count (long division in 16-bit steps, remainder kept as
sticky bit) before the one rounding: the mean is correctly rounded too.

Non-finite terms follow IEEE addition in any order: NaN if any term is NaN or
both infinities occur, else +-inf if one occurs; a sum of only negative
zeros is -0.0; the empty sum is +0.0.

float32 sums first try a float64 route whose error bound proves the
rounding (`_certified_float32_sum`); where it cannot, the accumulator runs.

On the CPU outside XLA, `exact_reduce_sum` and `exact_reduce_mean` run the
fused kernel (``safeops/native/exact.cc``): a double-double pass whose
rigorous error bound proves the rounding of most rows, and this integer
accumulator in C++ for the rows it cannot decide. Both are correctly
rounded, so the bits are those of the pure-TF path, which runs under XLA, on
a GPU and where the kernels are unavailable (``SAFEOPS_NATIVE=0``).

Entry points take axes already normalized to sorted, non-negative Python
ints (or None for all axes); argument checking is the public op's job.
References: Kulisch's long accumulator; R. M. Neal, "Fast exact summation
using small and large superaccumulators" (2015); S. Collange, D. Defour,
S. Graillat, R. Iakymchuk, "Numerical reproducibility for the parallel
reduction on multi- and many-core architectures" (2015).
"""

import math

import tensorflow as tf

from safeops._core import dtypes
from safeops._core import exact_digits as ed
from safeops._core.native import kernels

__all__ = [
    "combine_states",
    "cross_replica_sum",
    "exact_cumsum",
    "exact_reduce_mean",
    "exact_reduce_sum",
    "exact_segment_state",
    "normalize_state",
    "num_digits",
    "state_to_mean",
    "state_to_sum",
    "sum_state",
]

num_digits = ed.num_digits  # J, the number of digits of a state of `dtype` values

# Terms per accumulation: limbs below 2**32 in magnitude cannot overflow an int64 digit.
# Longer (static) reductions are cut into chunks whose states are combined.
_MAX_TERMS = 1 << 31
# Elements whose prefix states a blocked cumsum holds at once (each J + 5 int64).
_BLOCK_ELEMS = 1 << 16


# ----------------------------------------------------------------------------- decomposition

def _decompose(x, fmt):
    """Limbs [..., limbs] (int64) and slot [...] (int32) of x.

    Slot: the digit index of limb 0 for finite values other than -0.0; J + c
    for the counters (c = NaN, +inf, -inf, -0.0), whose limb 0 is 1 and whose
    other limbs are ignored (`_accumulate`).
    """
    wide = fmt.width == 64
    itype = tf.int64 if wide else tf.int32
    bits = tf.bitcast(x, fmt.bits_dtype)
    if fmt.width == 16:
        bits = tf.bitwise.bitwise_and(tf.cast(bits, tf.int32), 0xFFFF)
    mag = tf.bitwise.bitwise_and(bits, tf.constant((1 << (fmt.width - 1)) - 1, itype))
    neg = tf.not_equal(bits, mag)
    fbits = fmt.p - 1
    biased = tf.bitwise.right_shift(mag, tf.constant(fbits, itype))
    frac = tf.bitwise.bitwise_and(mag, tf.constant((1 << fbits) - 1, itype))
    normal = tf.minimum(biased, tf.constant(1, itype))  # 1 for normal numbers (and inf/NaN)
    m = tf.bitwise.bitwise_or(frac, tf.bitwise.left_shift(normal, tf.constant(fbits, itype)))
    pos = biased - normal  # x = m * 2**(pos + emin_sub)
    j = tf.bitwise.right_shift(pos, tf.constant(5, itype))
    off = tf.cast(tf.bitwise.bitwise_and(pos, tf.constant(31, itype)), tf.int64)
    m = tf.cast(m, tf.int64)
    mask = tf.constant(ed.MASK32, tf.int64)
    s32 = tf.constant(32, tf.int64)
    if fmt.limbs == 2:
        v = tf.bitwise.left_shift(m, off)
        v = tf.where(neg, -v, v)
        limbs = [tf.bitwise.bitwise_and(v, mask), tf.bitwise.right_shift(v, s32)]
    else:
        a = tf.bitwise.left_shift(tf.bitwise.bitwise_and(m, mask), off)
        b = tf.bitwise.left_shift(tf.bitwise.right_shift(m, s32), off)
        a = tf.where(neg, -a, a)
        b = tf.where(neg, -b, b)
        mid = b + tf.bitwise.right_shift(a, s32)
        limbs = [tf.bitwise.bitwise_and(a, mask), tf.bitwise.bitwise_and(mid, mask),
                 tf.bitwise.right_shift(mid, s32)]
    # counters: NaN, +inf, -inf, -0.0 go to slots J..J+3 with limb 0 = 1
    finite = biased < (1 << fmt.ebits) - 1
    special = ~finite | (neg & tf.equal(mag, tf.zeros_like(mag)))
    code = tf.where(finite, ed.NEGZERO, tf.where(tf.equal(frac, tf.zeros_like(frac)),
                                                 ed.PINF + tf.cast(neg, tf.int32), ed.NAN))
    slot = tf.where(special, fmt.digits + code, tf.cast(j, tf.int32))
    limbs[0] = tf.where(special, tf.ones_like(limbs[0]), limbs[0])
    return tf.stack(limbs, -1), slot


# ----------------------------------------------------------------------------- states

def _to_2d(x, axes):
    """x as [outer, n] with the reduced axes last; and the output shapes (plain, keepdims)."""
    if axes is None:
        shape = tf.shape(x)
        keep = tf.ones_like(shape)
        return tf.reshape(x, [1, -1]), tf.zeros([0], tf.int32), keep
    rank = x.shape.rank
    kept = [i for i in range(rank) if i not in axes]
    perm = kept + list(axes)
    y = x if perm == list(range(rank)) else tf.transpose(x, perm)
    static = x.shape.as_list()
    shape = tf.shape(x)
    dims = [static[i] if static[i] is not None else shape[i] for i in range(rank)]

    def prod(ds):
        out = 1
        for d in ds:
            out = out * d
        return out

    outer = prod([dims[i] for i in kept])
    n = prod([dims[a] for a in axes])
    y = tf.reshape(y, tf.stack([outer, n]) if any(isinstance(d, tf.Tensor) for d in (outer, n))
                   else [outer, n])
    plain = tf.stack([dims[i] for i in kept]) if kept else tf.zeros([0], tf.int32)
    keep = tf.stack([1 if i in axes else dims[i] for i in range(rank)]) if rank else \
        tf.zeros([0], tf.int32)
    return y, tf.cast(plain, tf.int32), tf.cast(keep, tf.int32)


def _accumulate(limbs, slot, group, num_groups, fmt, may_drop=False):
    """Scatter-add limbs into [num_groups, J + 4] digit/counter sums (rows with group < 0 dropped).

    Limb l of a finite value goes to digit slot + l (one scatter of all limbs:
    the accumulator needs J + 4 int64 per output, not (J + 4) * limbs).
    """
    width = fmt.digits + 4
    size = num_groups * width
    ids = slot if group is None else group * width + tf.cast(slot, group.dtype)
    # past the end, where a bincount ignores them: dropped rows, and the limbs
    # above limb 0 of the counters
    end = tf.cast(size, ids.dtype)
    finite = slot < fmt.digits
    ids = tf.stack([ids] + [tf.where(finite, ids + l, end) for l in range(1, fmt.limbs)], -1)
    if may_drop:
        ids = tf.where((group < 0)[..., None], end, ids)
    # an integer bincount with weights: exact, and several times faster than
    # unsorted_segment_sum on int64 on the CPU (it compiles to a scatter under XLA)
    acc = tf.raw_ops.DenseBincount(input=tf.reshape(ids, [-1]), size=tf.cast(size, ids.dtype),
                                   weights=tf.reshape(limbs, [-1]), binary_output=False)
    return tf.reshape(acc, tf.stack([num_groups, width]) if isinstance(num_groups, tf.Tensor)
                      else [num_groups, width])


def _with_count(acc, count, fmt):
    """[..., J + 4] sums and the term count -> a normalized state [..., J + 5]."""
    count = tf.cast(count, tf.int64)
    count = tf.broadcast_to(count, tf.shape(acc[..., 0]))
    digits = ed.normalize(acc[..., :fmt.digits])
    return tf.concat([digits, acc[..., fmt.digits:], count[..., None]], -1)


def _state_rows(y, fmt):
    """Normalized [outer, J + 5] states of the rows of y [outer, n] (n <= _MAX_TERMS)."""
    limbs, slot = _decompose(y, fmt)
    static_outer = y.shape[0]
    # segment ids row * (J + 4) + digit: int64 once they could pass int32's range
    big = static_outer is None or static_outer * (fmt.digits + 4) >= 2 ** 31
    itype = tf.int64 if big else tf.int32
    outer = static_outer if static_outer is not None else tf.shape(y, out_type=itype)[0]
    if static_outer == 1:
        group = None
    else:
        group = tf.range(outer, dtype=itype)[:, None]  # broadcast against the slots
    acc = _accumulate(limbs, slot, group, outer, fmt)
    return _with_count(acc, tf.shape(y)[1], fmt)


def _chunked_state(y, fmt):
    """`_state_rows` for rows longer than _MAX_TERMS: chunks whose states are combined.

    The rows are padded with -0.0 (which changes no sum), and the padding is
    taken out of the counts afterwards."""
    n = y.shape[1]
    k = -(-n // _MAX_TERMS)
    pad = k * _MAX_TERMS - n
    # -0.0 made by negation: TF's eager cache of scalar constants keys on the value, and
    # -0.0 == 0.0, so tf.constant(-0.0) can return a cached +0.0 tensor
    neg_zeros = -tf.zeros(tf.stack([tf.shape(y)[0], pad]), y.dtype)
    y = tf.concat([y, neg_zeros], 1)
    states = tf.reshape(_state_rows(tf.reshape(y, [-1, _MAX_TERMS]), fmt),
                        [-1, k, fmt.digits + ed.NCOUNT])
    total = combine_states(states, axis=1)
    fix = [0] * (fmt.digits + ed.NCOUNT)
    fix[fmt.digits + ed.NEGZERO] = -pad
    fix[fmt.digits + ed.COUNT] = -pad
    return total + tf.constant(fix, tf.int64)


def _rows_state(y, fmt):
    """[outer, J + 5] states of the rows of y [outer, n]."""
    if y.shape[1] is not None and y.shape[1] > _MAX_TERMS:
        return _chunked_state(y, fmt)
    return _state_rows(y, fmt)


def _sum_state_2d(x, axis):
    """[outer, J + 5] states of x reduced over `axis`, and the plain and keepdims output shapes."""
    y, plain, keep = _to_2d(x, None if axis is None else sorted(axis))
    return _rows_state(y, ed.binary_format(x.dtype)), plain, keep


# Whether float32 sums first try the certified float64 sum (see `_certified_float32_sum`).
_FAST_FLOAT32 = True
_TINY32 = 2.0 ** -125  # below twice float32's smallest normal, the fast path is not used
# Terms per block of the certified sum's first level. Under XLA on the CPU a reduction of at
# most 32 terms per output is fused with the element-wise split that feeds it (one pass over
# the float32 input); longer ones become trees of materialized float64 partial sums. The
# error bound does not depend on the blocking (it holds for any order of the additions).
_CERT_BLOCK = 32


def _pow2(e):
    """2.0**e in float64 for int64 e in [-1022, 1023], from its bit pattern."""
    return tf.bitcast(tf.bitwise.left_shift(e + 1023, tf.constant(52, tf.int64)), tf.float64)


def _blocks(t, length):
    """t [outer, n, ...] as [outer, _CERT_BLOCK, n / _CERT_BLOCK, ...], zero-padded to whole
    blocks; block c holds the terms ``r * (n / _CERT_BLOCK) + c`` (columns: a reduction over
    axis 1 runs along contiguous memory in every block at once). Rows of at most
    `_CERT_BLOCK` terms are one block, [outer, n, 1, ...]."""
    n = t.shape[1]
    rest = t.shape[2:].as_list()
    if n is not None and n <= _CERT_BLOCK:  # one block per row, no padding
        return tf.expand_dims(t, 2)
    if n is None or n % _CERT_BLOCK:
        pad = (-length) % _CERT_BLOCK
        t = tf.pad(t, tf.concat([[[0, 0]], tf.reshape(tf.stack([0, pad]), [1, 2]),
                                 tf.zeros([len(rest), 2], tf.int32)], 0))
    outer = t.shape[0] if t.shape[0] is not None else tf.shape(t)[0]
    shape = [outer, _CERT_BLOCK, -1] + rest
    return tf.reshape(t, tf.stack(shape) if isinstance(outer, tf.Tensor) else shape)


def _split_scale(y, n_bits):
    """sigma per row of float32 y [outer, n]: the power of two ``2**(e_M + n_bits + 1)`` with
    ``M = max|x| < 2**e_M`` (M clamped to [2**-126, float32 max]), as float64 [outer].

    Each block's maximum is turned into its own power of two (monotone in the maximum), and
    the row's sigma is the largest of them: one reduction of |y| in blocks (which reads y
    once and stores no |y|), then one of the blocks' float64 powers of two, so the split
    receives sigma as a finished value instead of recomputing it per element."""
    big = float(dtypes.limits(tf.float32).max)
    block_max = tf.reduce_max(_blocks(tf.abs(y), tf.shape(y)[1]), 1)  # [outer, n / block]
    # NaN/inf rows: any sigma; they are not certified
    m = tf.minimum(tf.maximum(block_max, 2.0 ** -126), big)
    m_exp = tf.cast(tf.bitwise.right_shift(tf.bitcast(m, tf.int32), 23), tf.int64) - 126
    return tf.reduce_max(_pow2(m_exp + n_bits[:, None] + 1), 1)


def _split_sums(y, sigma):
    """(sum hi, sum lo) over axis 1 of the float64 split ``hi = (x + sigma) - sigma``,
    ``lo = x - hi`` of float32 y [outer, n]: first in blocks of `_CERT_BLOCK` terms, then over
    the blocks. hi and lo share one reduction of a [..., 2] tensor (one pass over y; the
    slices keep XLA from folding the two levels into one)."""
    y64 = tf.cast(y, tf.float64)
    hi = (y64 + sigma) - sigma
    pair = tf.stack([hi, y64 - hi], -1)  # [outer, n, 2]
    blocks = tf.reduce_sum(_blocks(pair, tf.shape(y)[1]), 1)  # [outer, n / block, 2]
    return tf.reduce_sum(blocks[..., 0], 1), tf.reduce_sum(blocks[..., 1], 1)


def _certified_float32_sum(y):
    """float32 row sums rounded from an accurate float64 sum, and whether each is provably
    the correctly rounded sum.

    Method. With ``M = max|x|`` (read in float32, exactly) and ``n`` the row length, each
    value is split against the power of two ``sigma = 2**(e_M + e_n + 1) > 2 n M``
    (``M < 2**e_M``, ``n < 2**e_n``) by Fast2Sum in float64: ``hi = (x + sigma) - sigma`` and
    ``lo = x - hi`` are exact, ``x = hi + lo``, the hi parts are multiples of
    ``q / 2`` (``q = ulp(sigma) = sigma 2**-52``) and ``|lo| <= q / 2``. Every partial sum of
    hi parts is a multiple of ``q / 2`` below ``n (M + q / 2) < sigma = 2**52 q`` in
    magnitude, so the float64 sum ``H`` of the hi parts is exact in any order and grouping.

    Bound. The float64 sum ``L`` of the lo parts, in any order and grouping, satisfies
    ``|L - sum lo| <= gamma_n sum|lo| <= gamma_n n q / 2`` with
    ``gamma_n = n u / (1 - n u)``, ``u = 2**-53`` (N. J. Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., SIAM 2002, eq. (4.4) and Lemma 3.1: each term takes part
    in at most n - 1 roundings; zeros added for blocking are added exactly).
    ``s = fl(H + L)`` adds ``u |s| / (1 - u)``; a device that reads float32 subnormals as 0
    (and float64 subnormal partial sums, below ``2**-1022`` each) moves the sum by less than
    ``n 2**-126``. Hence, for the exact sum S of the row,

        |s - S| <= B = (2 u |s| + gamma_n n q / 2 + n 2**-126) (1 + 2**-40),

    where the second ``u |s|`` and the factor ``1 + 2**-40`` cover the roundings of ``s +- B``
    and of B itself. The blocking (sums of `_CERT_BLOCK` terms, then of the blocks) is only
    for speed: the bound assumes nothing about the order of the additions. When
    ``[s - B, s + B]`` lies strictly between the two midpoints around ``r = fl32(s)``, S
    rounds to r: r is the correctly rounded sum (the exact accumulator's bits). Results that
    are tiny, the largest float32 or not finite are never certified. Rows whose float64 sum
    is exact (`exact_rows`, computed only when needed) are certified too, exact ties
    included.

    Returns:
      (r, ok, exact_rows): the rounded sums, the rows the bound certifies,
      and a function giving the rows whose float64 sum is exact.
    """
    n_int = tf.cast(tf.shape(y)[1], tf.int64)
    n = tf.cast(n_int, tf.float64)
    big = float(dtypes.limits(tf.float32).max)
    n_bits = tf.bitwise.right_shift(tf.bitcast(n + 1.0, tf.int64),
                                    tf.constant(52, tf.int64)) - 1022  # n < 2**n_bits
    n_bits = tf.broadcast_to(n_bits, tf.shape(y, out_type=tf.int64)[:1])
    sigma = _split_scale(y, n_bits)  # [outer]: M < 2**e_M, n < 2**n_bits: n M < sigma / 2
    hi_sum, lo_sum = _split_sums(y, sigma[:, None])
    s = hi_sum + lo_sum
    u = 2.0 ** -53
    n_pad = n + float(_CERT_BLOCK - 1)  # terms per reduction, blocking zeros included
    gamma = n_pad * u / (1.0 - n_pad * u)
    q = sigma * 2.0 ** -52  # ulp(sigma), exact
    bound = (2.0 * u * tf.abs(s) + gamma * n * q / 2.0 + n * 2.0 ** -126) * (1.0 + 2.0 ** -40)
    r = tf.cast(s, tf.float32)
    rb = tf.bitcast(r, tf.int32)
    one = tf.ones_like(rb)
    n1 = tf.cast(tf.bitcast(rb + one, tf.float32), tf.float64)  # the two neighbours of r
    n2 = tf.cast(tf.bitcast(rb - one, tf.float32), tf.float64)
    r64 = tf.cast(r, tf.float64)
    m1, m2 = (r64 + n1) / 2.0, (r64 + n2) / 2.0  # exact in float64
    lo_mid, hi_mid = tf.minimum(m1, m2), tf.maximum(m1, m2)
    in_range = (tf.abs(r64) >= _TINY32) & (tf.abs(r64) < big)
    ok = in_range & (s - bound > lo_mid) & (s + bound < hi_mid)

    def exact_rows():
        """Rows whose float64 sum is exact (every lo is 0, no float32 subnormal that a device
        may have read as 0): r = fl32(s) is then the correctly rounded sum, ties included.
        The split is recomputed here, so nothing of it is kept for this rare case."""
        x64 = tf.cast(y, tf.float64)
        lo = x64 - ((x64 + sigma[:, None]) - sigma[:, None])
        bits = tf.bitwise.bitwise_and(tf.bitcast(y, tf.int32), 0x7FFFFFFF)
        subnormal = tf.reduce_any((bits > 0) & (bits < 0x00800000), 1)
        return in_range & tf.reduce_all(tf.equal(lo, 0.0), 1) & ~subnormal

    return r, ok, exact_rows


def sum_state(x, axis=None, keepdims=False):
    """The exact state of ``reduce_sum(x, axis, keepdims)``: int64 ``out_shape + [J + 5]``.

    Args:
      x: a float16/bfloat16/float32/float64 tensor (up to 2**31 terms per output).
      axis: None (all axes) or sorted, non-negative Python ints.
      keepdims: keep reduced axes with length 1.

    Returns:
      The state; add states of parts with `combine_states`, round with
      `state_to_sum` or `state_to_mean`.
    """
    state, plain, keep = _sum_state_2d(x, axis)
    shape = keep if keepdims else plain
    return tf.reshape(state, tf.concat([shape, [ed.num_digits(x.dtype) + ed.NCOUNT]], 0))


def combine_states(states, axis=None):
    """Exact sum of states: a list of same-shape states, or one state tensor reduced over `axis`.

    The digits of normalized states lie in ``[0, 2**32)``, so up to 2**31
    states add without overflow; the sum is normalized again.

    Args:
      states: a list of states, or one int64 state tensor.
      axis: with one tensor, the axes (not the last) to add over.

    Returns:
      The state of the union of the parts.
    """
    if isinstance(states, (list, tuple)):
        total = tf.add_n(list(states)) if len(states) > 1 else states[0]
    else:
        total = tf.reduce_sum(states, axis=axis)
    return normalize_state(total)


def normalize_state(state):
    """A state whose digits were added up, with its digits normalized again."""
    j = state.shape[-1] - ed.NCOUNT
    return tf.concat([ed.normalize(state[..., :j]), state[..., j:]], -1)


def exact_segment_state(data, segment_ids, num_segments, counts):
    """The state of each (segment, column) sum: ``[num_segments] + data.shape[ids.rank:] + [J+5]``.

    Args:
      data: float tensor whose leading dims match `segment_ids`.
      segment_ids: int32/int64 ids; ids outside ``[0, num_segments)`` are dropped.
      num_segments: int or scalar int tensor.
      counts: the number of terms per segment, ``[num_segments]``.
    """
    fmt = ed.binary_format(data.dtype)
    ids_rank = segment_ids.shape.rank
    static_inner = data.shape[ids_rank:].as_list()
    inner = math.prod(static_inner) if None not in static_inner else tf.reduce_prod(
        tf.shape(data)[ids_rank:])
    y = tf.reshape(data, tf.stack([-1, inner]) if isinstance(inner, tf.Tensor) else [-1, inner])
    ids = tf.reshape(segment_ids, [-1])
    limbs, slot = _decompose(y, fmt)
    big = not isinstance(inner, int) or not isinstance(num_segments, int) or \
        num_segments * max(inner, 1) * (fmt.digits + 4) >= 2 ** 31
    itype = tf.int64 if big else tf.int32
    ids = tf.cast(ids, itype)
    num = tf.cast(num_segments, itype) if isinstance(num_segments, tf.Tensor) else num_segments
    valid = (ids >= 0) & (ids < num)
    group = ids[:, None] * tf.cast(inner, itype) + tf.range(tf.cast(inner, itype), dtype=itype)
    group = tf.where(valid[:, None], group, -tf.ones_like(group))
    acc = _accumulate(limbs, slot, group, num * inner, fmt, may_drop=True)
    acc = tf.reshape(acc, tf.stack([tf.cast(num, tf.int64), tf.cast(inner, tf.int64),
                                    tf.constant(fmt.digits + 4, tf.int64)]))
    state = _with_count(acc, tf.cast(counts, tf.int64)[:, None], fmt)
    out_shape = tf.concat([tf.reshape(tf.cast(num, tf.int32), [1]),
                           tf.shape(data)[ids_rank:], [fmt.digits + ed.NCOUNT]], 0)
    return tf.reshape(state, out_shape)


def state_to_sum(state, dtype, out_dtype=None):
    """The correctly rounded sum of a `dtype` state (IEEE specials, -0.0 as IEEE addition).

    Args:
      state: int64 ``[..., J + 5]`` from `sum_state`/`combine_states`.
      dtype: the dtype the state was made from.
      out_dtype: the dtype of the result, rounded once into it (default: `dtype`).
    """
    fmt = ed.binary_format(dtype)
    out = ed.binary_format(out_dtype or dtype)
    flat = tf.reshape(state, [-1, fmt.digits + ed.NCOUNT])
    digits, counters = flat[:, :fmt.digits], flat[:, fmt.digits:]
    neg, mag = ed.sign_magnitude(digits)
    bits = ed.round_bits(mag, fmt.emin_sub, tf.zeros_like(neg), out)
    return tf.reshape(ed.assemble(neg, bits, counters, out), tf.shape(state)[:-1])


def state_to_mean(state, dtype, empty="nan"):
    """The correctly rounded mean (exact sum / count, rounded once) of a `dtype` state.

    Args:
      state: int64 ``[..., J + 5]``.
      dtype: the dtype the state was made from.
      empty: value for a state of no terms: "nan" (as `tf.reduce_mean`) or "zero"
        (as `tf.math.segment_mean`).
    """
    fmt = ed.binary_format(dtype)
    flat = tf.reshape(state, [-1, fmt.digits + ed.NCOUNT])
    digits, counters = flat[:, :fmt.digits], flat[:, fmt.digits:]
    neg, mag = ed.sign_magnitude(digits)
    n = tf.maximum(counters[..., ed.COUNT], 1)
    quot, sticky = ed.divide(mag, n)
    bits = ed.round_bits(quot, fmt.emin_sub - 64, sticky, fmt)
    inf_bits = ((1 << fmt.ebits) - 1) << (fmt.p - 1)
    empty_bits = (inf_bits | (1 << (fmt.p - 2))) if empty == "nan" else 0
    return tf.reshape(ed.assemble(neg, bits, counters, fmt, empty_bits), tf.shape(state)[:-1])


# ----------------------------------------------------------------------------- entry points

def _check(x, op):
    dtypes.check_floating(op, "input_tensor", x.dtype)


def _broadcast_back(g, x, axis, keepdims):
    """Upstream gradient of a reduction broadcast to x's shape."""
    if not keepdims:
        if axis is None:
            g = tf.reshape(g, tf.ones_like(tf.shape(x)))
        else:
            shape = tf.tensor_scatter_nd_update(
                tf.shape(x), [[a] for a in axis], tf.ones([len(axis)], tf.int32)) \
                if axis else tf.shape(x)
            g = tf.reshape(g, shape)
    return tf.broadcast_to(g, tf.shape(x))


def _fused(x, axis, keepdims, mean):
    """The fused kernel's correctly rounded sum (or mean) of x over `axis`; None where the
    kernel does not run (XLA, GPU, unavailable).

    Axes that are consecutive, with a static shape and dimensions after them, are read in
    place as [outer, n, inner]; others are moved last first (`_to_2d`).
    """
    lib = kernels(x, dtypes.FLOAT_DTYPES)
    if lib is None:
        return None
    axes = None if axis is None else sorted(axis)
    static = x.shape.as_list() if x.shape.rank is not None else [None]
    if axes and None not in static and axes == list(range(axes[0], axes[-1] + 1)) \
            and math.prod(static[axes[-1] + 1:]) > 1:
        outer, n = math.prod(static[:axes[0]]), math.prod(static[axes[0]:axes[-1] + 1])
        y = tf.reshape(x, [outer, n, math.prod(static[axes[-1] + 1:])])
        shape = [1 if i in axes else d for i, d in enumerate(static)] if keepdims else \
            [d for i, d in enumerate(static) if i not in axes]
        return tf.reshape(lib.safeops_exact_sum(y, mean=mean), shape)
    y, plain, keep = _to_2d(x, axes)
    return tf.reshape(lib.safeops_exact_sum(y, mean=mean), keep if keepdims else plain)


def _pure_sum(v, axis, keepdims):
    """`exact_reduce_sum` in TF ops (float32: the certified float64 route first)."""
    y, plain, keep = _to_2d(v, None if axis is None else sorted(axis))
    fmt = ed.binary_format(v.dtype)

    def exact_path():
        return state_to_sum(_rows_state(y, fmt), v.dtype)

    if v.dtype == tf.float32 and _FAST_FLOAT32:
        fast, ok, exact_rows = _certified_float32_sum(y)
        sums = tf.cond(tf.reduce_all(ok), lambda: fast, lambda: tf.cond(
            tf.reduce_all(ok | exact_rows()), lambda: fast, exact_path))
    else:
        sums = exact_path()
    return tf.reshape(sums, keep if keepdims else plain)


def exact_reduce_sum(x, axis=None, keepdims=False):
    """Correctly rounded sum of a float tensor over `axis` (sorted non-negative ints or None).

    The exact sum of the inputs rounded once to x's dtype, so the bits
    depend only on the multiset of values per output: not on order, shape,
    device, thread count or compilation. float32 first tries an accurate
    float64 sum with a rigorous error bound (`_certified_float32_sum`): where the bound
    proves the rounding, that is the correctly rounded sum; otherwise the
    exact accumulator runs; on the CPU outside XLA the fused kernel does the
    same in one pass (`_fused`). Either way the bits are the same.
    Gradient: the upstream gradient broadcast to x (as `tf.reduce_sum`).
    Empty reductions give +0.0.
    """
    _check(x, "exact_reduce_sum")

    @tf.custom_gradient
    def impl(v):
        out = _fused(v, axis, keepdims, mean=False)
        if out is None:
            out = _pure_sum(v, axis, keepdims)

        def grad(g):
            return _broadcast_back(g, v, axis, keepdims)

        return out, grad

    return impl(x)


def exact_reduce_mean(x, axis=None, keepdims=False):
    """Correctly rounded mean of a float tensor over `axis`: exact sum / count, rounded once.

    Gradient: upstream / count broadcast to x, as `tf.reduce_mean`. Empty
    reductions give NaN (as `tf.reduce_mean`).
    """
    _check(x, "exact_reduce_mean")

    @tf.custom_gradient
    def impl(v):
        out = _fused(v, axis, keepdims, mean=True)
        if out is None:
            y, plain, keep = _to_2d(v, None if axis is None else sorted(axis))
            means = state_to_mean(_rows_state(y, ed.binary_format(v.dtype)), v.dtype)
            out = tf.reshape(means, keep if keepdims else plain)

        def grad(g):
            shape = tf.shape(v)
            n = tf.reduce_prod(shape if axis is None else tf.gather(shape, list(axis)))
            n = tf.cast(n, g.dtype)
            return _broadcast_back(g / n, v, axis, keepdims)

        return out, grad

    return impl(x)


def _prefix_states(y, fmt, exclusive):
    """[outer, n] values -> [outer, n, J + 5] un-normalized states of every prefix (int64 scans)."""
    limbs, slot = _decompose(y, fmt)
    width = fmt.digits + 4
    dense = None
    for l in range(fmt.limbs):  # limb l lands l digits up; counters keep limb 0 only
        index = slot if l == 0 else tf.where(slot < fmt.digits, slot + l, width)
        part = tf.one_hot(index, width, dtype=tf.int64) * limbs[..., l:l + 1]
        dense = part if dense is None else dense + part
    dense = tf.cumsum(dense, axis=1, exclusive=exclusive)
    count = tf.cumsum(tf.ones_like(slot, tf.int64), axis=1, exclusive=exclusive)
    return tf.concat([dense, count[..., None]], -1)


def _cumsum_rows(y, fmt, exclusive):
    """Correctly rounded prefix sums of the rows of y [outer, n].

    Long rows are cut into blocks: the blocks' exact states (one scatter)
    give each block its offset by an exclusive int64 scan, and the blocks'
    prefix states are formed and rounded one block at a time, so memory
    stays at about _BLOCK_ELEMS * (J + 5) int64."""
    outer, n = y.shape[0], y.shape[1]
    block = max(1, _BLOCK_ELEMS // outer) if outer else 1024

    def single():
        return state_to_sum(normalize_state(_prefix_states(y, fmt, exclusive)), fmt.dtype)

    if n is not None and n <= block:
        return single()
    if n is None:
        return tf.cond(tf.shape(y)[1] <= block, single, lambda: _blocked(y, fmt, exclusive, block))
    return _blocked(y, fmt, exclusive, block)


def _blocked(y, fmt, exclusive, block):
    """`_cumsum_rows` of rows longer than one block."""
    length = tf.shape(y)[1]
    nb = (length + block - 1) // block
    y = tf.pad(y, [[0, 0], [0, nb * block - length]])
    blocks = tf.reshape(y, tf.stack([-1, nb, block]))
    totals = tf.reshape(_state_rows(tf.reshape(blocks, [-1, block]), fmt),
                        tf.stack([-1, nb, fmt.digits + ed.NCOUNT]))
    offsets = tf.cumsum(totals, axis=1, exclusive=True)

    def one(args):
        blk, off = args
        return state_to_sum(normalize_state(_prefix_states(blk, fmt, exclusive) + off[:, None]),
                            fmt.dtype)

    out = tf.map_fn(one, (tf.transpose(blocks, [1, 0, 2]), tf.transpose(offsets, [1, 0, 2])),
                    fn_output_signature=tf.TensorSpec(None, fmt.dtype))
    out = tf.reshape(tf.transpose(out, [1, 0, 2]), tf.stack([-1, nb * block]))
    return out[:, :length]


def exact_cumsum(x, axis, exclusive=False, reverse=False):
    """Cumulative sum along `axis` (a non-negative int) with every prefix correctly rounded.

    Each prefix's exact sum is an exact int64 scan of the per-element digits;
    each is rounded once. Gradient: `exact_cumsum` of the upstream gradient
    in the opposite direction (as `tf.cumsum`'s). Memory: J + 5 int64 per
    element of a block of about 2**16 elements at a time (J = `num_digits`:
    4 for float16, 11 for bfloat16 and float32, 68 for float64).
    """
    _check(x, "exact_cumsum")
    fmt = ed.binary_format(x.dtype)

    @tf.custom_gradient
    def impl(v):
        rank = v.shape.rank
        perm = [i for i in range(rank) if i != axis] + [axis]
        moved = v if perm == list(range(rank)) else tf.transpose(v, perm)
        shape = tf.shape(moved)
        y = tf.reshape(moved, tf.stack([-1, shape[-1]]))
        y.set_shape([None if None in moved.shape[:-1] else
                     math.prod(moved.shape[:-1]), moved.shape[-1]])
        if reverse:
            y = tf.reverse(y, [1])
        out = _cumsum_rows(y, fmt, exclusive)
        if reverse:
            out = tf.reverse(out, [1])
        out = tf.reshape(out, shape)
        inv = [perm.index(i) for i in range(rank)]
        out = out if perm == list(range(rank)) else tf.transpose(out, inv)

        def grad(g):
            return exact_cumsum(g, axis, exclusive=exclusive, reverse=not reverse)

        return out, grad

    return impl(x)


def cross_replica_sum(x, axis=None, keepdims=False, replica_context=None):
    """In a replica context: the correctly rounded sum over `axis` of x on all replicas together.

    Each replica's exact state is all-reduced (int64 addition is exact and
    associative), so the result is the same bits for any number of replicas
    and any split of the global batch. `axis` as in `sum_state` (None: all).
    """
    ctx = replica_context or tf.distribute.get_replica_context()
    state = sum_state(x, axis, keepdims)
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, state)
    return state_to_sum(normalize_state(total), x.dtype)
