"""The precision profiler's statistics, as in-graph reductions.

Bits lost, relative error and dynamic range of a unit's outputs and gradients against
their float64 references (definitions: `safeops.doctor._bits.rel_errors` and
`bits_lost`, docs/doctor.md). A sweep reads a reference and the tensors compared with
it once, in chunks, so its float64 temporaries stay in cache; the statistics of a whole
profile are one traced computation with one transfer of the figures to the host.
"""

import math

import tensorflow as tf

from safeops._core.native import kernels

__all__ = []

_LN2 = math.log(2.0)
CHUNK = 1 << 14  # elements per step of a sweep: its float64 temporaries stay in cache
_NATIVE_MAX_YS = 8  # most tensors one call of the fused kernel compares with a reference


def to64(t):
    return tf.cast(t, tf.float64) if tf.is_tensor(t) and t.dtype.is_floating else t


def flat(t):
    return tf.reshape(t, [-1])


@tf.function(autograph=False, reduce_retracing=True)
def _chunk_sums(rc, ycs, scale, down, top, group, tiny, divisor):
    """One chunk of `sweep`'s fast path: per y (sum of clipped log t, sum of t, max t), then
    (max |r|, non-zero count, count of |r| < tiny). Traced once per number and dtypes of the ys
    and shared by every sweep (a call in the statistics' graph, not a copy of its ops)."""
    a = tf.abs(rc)
    denom = tf.maximum(a, scale) * down
    size = tf.size(rc)
    whole = size - size % group
    one = tf.constant(1.0, tf.float64)
    # a power of two: its reciprocal is exact, and a product by it the quotient
    inv = None if divisor is None else one / divisor
    out = []
    for yc in ycs:
        yc = tf.cast(yc, tf.float64)
        if inv is not None:
            yc = yc * inv
        t = tf.abs(yc - rc) / denom
        # one clipping pass (TF's ClipByValue: min(max(t, 1), 2^p), the same values)
        c = tf.raw_ops.ClipByValue(t=t, clip_value_min=one, clip_value_max=top)
        out += [_log_sum(c, whole, group), tf.reduce_sum(t), tf.reduce_max(t)]
    # sign(|r|) is 1 for a non-zero reference, 0 for a zero (a count without a cast)
    return out + [tf.reduce_max(a), tf.reduce_sum(tf.sign(a)),
                  tf.reduce_sum(tf.cast(a < tiny, tf.float64))]


def _log_sum(c, whole, group):
    """``sum(log(c))`` of values ``1 <= c <= 2^p`` as the sum of the logs of products of
    `group` consecutive values (``group * p <= 1000``: no product overflows), and of the
    remaining ``size - whole`` values one by one: one log per `group` elements. Each product
    rounds ``group - 1`` times (relative 2^-53 each), so each of its logs is within
    ``(group - 1) * 2^-53`` of the sum of its factors' logs: on average 2^-53 per element,
    the rounding of a float64 log itself."""
    head = tf.reshape(c[:whole], [-1, group])
    return (tf.reduce_sum(tf.math.log(tf.reduce_prod(head, axis=1)))
            + tf.reduce_sum(tf.math.log(c[whole:])))


def _group(p):
    """The largest power of two g with ``g * p <= 1000`` (p: the precision in bits, >= 1):
    products of g values in [1, 2^p] stay below 2^1000."""
    g = tf.floor(tf.math.log(tf.floor(1000.0 / p)) / _LN2)
    g = tf.where(tf.pow(tf.constant(2.0, tf.float64), g + 1.0) * p <= 1000.0, g + 1.0, g)  # log rounding
    g = tf.where(tf.pow(tf.constant(2.0, tf.float64), g) * p > 1000.0, g - 1.0, g)
    return tf.cast(tf.pow(tf.constant(2.0, tf.float64), tf.maximum(g, 0.0)), tf.int32)


def sweep(r, ys, p, down, tiny, divisor=None, oks=None):
    """Compare flat `ys` with the flat float64 reference `r`, and measure `r`'s range.

    Returns ``([(sum of bits, sum of rel, max rel, count) per y], (max |r|, non-zero count,
    count of 0 < |r| < tiny, finite count, non-finite count of ys[0] where r is finite))``,
    with each y divided by `divisor` (a power of two) first; `p` the precision in bits,
    `down` = 2^-p (float64 scalars).

    The definitions of `_bits.rel_errors` and `_bits.bits_lost`. The fast path (every
    reference finite, a root mean square far from underflow, every result finite) runs
    in chunks, computing ``t = rel * 2^p`` as ``|y - r| / (max(|r|, rms) * 2^-p)``
    (scaling by a power of two is exact: the relative error of the definition, bit for
    bit) and the bits' sum ``sum(clip(log(t), 0, p log 2)) / log 2`` as
    ``sum(log(clip(t, 1, 2^p))) / log 2`` without masks, the logs taken of products of
    consecutive clipped values (`_log_sum`: within float64 rounding of the sum of the
    logs, one log per up to 256 elements instead of one each). On the CPU outside XLA the
    fused kernel ``SafeopsProfileSweep`` (`safeops.native`) computes the same sums in two
    passes over the data (t formed with the reciprocal of its denominator: within 2^-52
    relative of the quotient; the blocks' sums added in a fixed order). Anything else
    is computed again by `_slow_sweep`, the definition with every mask: with `oks`
    None, `sweep` is `_slow_sweep`; else it appends whether its fast path holds to `oks`.
    """
    if oks is None:
        return _slow_sweep(r, ys, p, tiny, divisor)
    n = tf.size(r)
    count = tf.cast(n, tf.float64)
    zero = tf.constant(0.0, tf.float64)
    lib = kernels(r, (tf.float64,))
    if lib is not None and 0 < len(ys) <= _NATIVE_MAX_YS:
        one = tf.constant(1.0, tf.float64)
        figures = lib.safeops_profile_sweep(r, down, tiny, one if divisor is None else divisor,
                                            list(ys))
        acc = tf.unstack(figures[:-1])
        sum_sq = figures[-1]
        scale = tf.sqrt(tf.math.divide_no_nan(sum_sq, count))
    else:
        sum_sq, scale, acc = _chunked(r, ys, n, count, p, down, tiny, divisor)
    ok = tf.logical_and(tf.math.is_finite(sum_sq), scale >= 2.0 ** -800)
    for k in range(len(ys)):
        ok = tf.logical_and(ok, tf.math.is_finite(acc[3 * k + 1]))
    fast = ([(acc[3 * k] / _LN2, acc[3 * k + 1] * down, acc[3 * k + 2] * down, count)
             for k in range(len(ys))],
            (acc[-3], acc[-2], acc[-1] - (count - acc[-2]), count, zero))
    oks.append(ok)
    return fast


def _chunked(r, ys, n, count, p, down, tiny, divisor):
    """`sweep`'s fast-path sums in TF ops: (sum r^2, rms, [S, T, M per y] + [max |r|, non-zero
    count, count of |r| < tiny]), the reference read in chunks of `CHUNK` elements."""
    sum_sq = tf.tensordot(r, r, 1)  # no float64 temporary of r * r
    scale = tf.sqrt(tf.math.divide_no_nan(sum_sq, count))
    top = 1.0 / down  # 2^p, exactly
    group = _group(p)

    def body(i, acc):
        start = i * CHUNK
        size = tf.minimum(CHUNK, n - start)
        part = _chunk_sums(tf.slice(r, [start], [size]), [tf.slice(y, [start], [size]) for y in ys],
                           scale, down, top, group, tiny, divisor)
        out = []
        for k in range(len(ys)):
            out += [acc[3 * k] + part[3 * k], acc[3 * k + 1] + part[3 * k + 1],
                    tf.maximum(acc[3 * k + 2], part[3 * k + 2])]
        out += [tf.maximum(acc[-3], part[-3]), acc[-2] + part[-2], acc[-1] + part[-1]]
        return i + 1, out

    zero = tf.constant(0.0, tf.float64)
    init = [zero] * (3 * len(ys) + 3)
    size = r.shape.num_elements()
    if size is not None and size <= CHUNK:  # one step: no loop to trace
        _, acc = body(tf.constant(0), init)
    else:
        steps = (n + CHUNK - 1) // CHUNK
        _, acc = tf.while_loop(lambda i, acc: i < steps, body, (tf.constant(0), init))
    return sum_sq, scale, acc


def _slow_sweep(r, ys, p, tiny, divisor):
    """`sweep` by the definition, with masks for non-finite and zero values."""
    keep = tf.math.is_finite(r)
    r0 = tf.where(keep, r, tf.zeros_like(r))
    n = tf.reduce_sum(tf.cast(keep, tf.float64))
    scale = tf.sqrt(tf.math.divide_no_nan(tf.reduce_sum(r0 * r0), n))
    denom = tf.maximum(tf.abs(r0), scale)
    inf = tf.fill(tf.shape(r0), tf.constant(math.inf, tf.float64))
    out = []
    for y in ys:
        y = tf.cast(y, tf.float64)
        if divisor is not None:
            y = y / divisor
        diff = tf.abs(y - r0)
        rel = tf.where(diff == 0, tf.zeros_like(diff), diff / denom)  # x/0 = inf
        rel = tf.where(tf.math.is_finite(y), rel, inf)
        rel = tf.where(keep, rel, tf.zeros_like(rel))
        bits = tf.clip_by_value(tf.math.log(rel) / _LN2 + p, 0.0, p)
        bits = tf.where(keep, bits, tf.zeros_like(bits))
        out.append((tf.reduce_sum(bits), tf.reduce_sum(rel),
                    tf.reduce_max(tf.concat([rel, tf.zeros([1], tf.float64)], 0)), n))
    a = tf.where(keep, tf.abs(r), tf.zeros_like(r))
    nz = a > 0
    bad = tf.constant(0.0, tf.float64)
    if ys:
        y0 = tf.cast(ys[0], tf.float64)
        bad = tf.reduce_sum(tf.cast(tf.logical_and(keep, tf.logical_not(tf.math.is_finite(y0))),
                                    tf.float64))
    return out, (tf.reduce_max(tf.concat([a, tf.zeros([1], tf.float64)], 0)),
                 tf.reduce_sum(tf.cast(nz, tf.float64)),
                 tf.reduce_sum(tf.cast(tf.logical_and(nz, a < tiny), tf.float64)),
                 tf.reduce_sum(tf.cast(keep, tf.float64)), bad)


def means(parts, p):
    """(mean bits, max bits, mean relative error) from `sweep`'s per-y sums over several tensors."""
    total = worst = rel_sum = count = tf.constant(0.0, tf.float64)
    for bits, rels, max_rel, n in parts:
        total, rel_sum, count = total + bits, rel_sum + rels, count + n
        worst = tf.maximum(worst, tf.where(n > 0, tf.clip_by_value(
            tf.math.log(max_rel) / _LN2 + p, 0.0, p), 0.0))
    safe = tf.maximum(count, 1.0)
    return (tf.where(count > 0, total / safe, 0.0), tf.where(count > 0, worst, 0.0),
            tf.where(count > 0, rel_sum / safe, 0.0))


def value_range(parts, top, scale=1.0):
    """(max |r|, max |r| / dtype max, underflow fraction, non-finite fraction) from `sweep`s."""
    max_abs = nonzero = under = finite = bad = tf.constant(0.0, tf.float64)
    for m, nz, un, fi, b in parts:
        max_abs, nonzero, under = tf.maximum(max_abs, m), nonzero + nz, under + un
        finite, bad = finite + fi, bad + b
    max_abs = max_abs * scale
    return (max_abs, max_abs / top, tf.math.divide_no_nan(under, nonzero),
            tf.math.divide_no_nan(bad, finite))
