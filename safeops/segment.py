"""Correctly rounded segment reductions: drop-ins for `tf.math.segment_sum`,
`tf.math.unsorted_segment_sum` and `tf.math.segment_mean`.

Floating data is summed exactly per (segment, column) in integers
(`safeops._core.exact`) and rounded once, so every output is the correctly
rounded sum (or mean) of its terms: the same bits on CPU, GPU and under XLA,
for any order of the rows and any thread count. On the CPU outside XLA the
fused kernel ``SafeopsExactSegmentSum`` (``safeops/native/exact.cc``) gives
the same bits in one streaming pass: a float64 sum per output whose rigorous
error bound proves the rounding of most outputs, and the exact integer
accumulator for the segments of those it cannot decide. TensorFlow's float segment
sums add in an order that depends on the device (atomic adds on GPU), and
refuse to run under `tf.config.experimental.enable_op_determinism` on GPU.
Integer data is delegated to TensorFlow (integer sums are exact already);
complex data is summed by real and imaginary parts. The segment ids are
checked by TensorFlow's own op (on an int32 count of the same shape), so bad
ids raise exactly what TensorFlow raises, on the devices where it checks.
"""

import math

import tensorflow as tf

from safeops._core import dtypes, exact
from safeops._core.native import kernels
from safeops._core.registry import drop_in

__all__ = ["segment_mean", "segment_sum", "unsorted_segment_sum"]


def _data(value):
    return tf.convert_to_tensor(value)


def _ids_rank(ids):
    return ids.shape.rank if ids.shape.rank is not None else tf.rank(ids)


def _leading(data, ids):
    """An int32 ones tensor of the shape of data's leading dims that the ids index."""
    return tf.ones(tf.shape(data)[:_ids_rank(ids)], tf.int32)


def _mismatch(data, ids):
    """ids' static shape contradicts data's leading dims: TF's own op then raises its error
    (InvalidArgumentError, also in a graph, where it checks at run time)."""
    if ids.shape.rank is None or data.shape.rank is None:
        return False
    if ids.shape.rank > data.shape.rank:
        return True
    return not ids.shape.is_compatible_with(data.shape[:ids.shape.rank])


def _gather_grad(g, ids, num, scale=None):
    """Upstream gradient of a segment reduction, gathered back to the rows (0 for dropped ids)."""
    valid = (ids >= 0) & (ids < tf.cast(num, ids.dtype))
    safe = tf.where(valid, ids, tf.zeros_like(ids))
    if scale is not None:
        g = g / tf.reshape(scale, tf.concat([tf.shape(scale), tf.ones([tf.rank(g) - 1], tf.int32)],
                                            0))
    out = tf.gather(g, safe)
    mask = tf.reshape(valid, tf.concat([tf.shape(valid), tf.ones([tf.rank(g) - 1], tf.int32)], 0))
    return tf.where(mask, out, tf.zeros_like(out))


def _fused(data, ids, num, counts, mean):
    """The fused kernel's correctly rounded segment sums (or means) of data; None where the
    kernel does not run (XLA, GPU, unavailable: `safeops._core.native.kernels`).

    data is read in place as [rows, inner], the ids flattened to [rows]. The kernel takes
    `counts` (TensorFlow's op on the same ids) as an input, so that op, and its checks of the
    ids, run first: bad ids raise TensorFlow's error.
    """
    lib = kernels(data, dtypes.FLOAT_DTYPES)
    if lib is None:
        return None
    rank = ids.shape.rank
    tail = data.shape[rank:].as_list()
    shape = tf.shape(data, out_type=tf.int64)
    inner = math.prod(tail) if None not in tail else tf.reduce_prod(shape[rank:])
    rows = math.prod(ids.shape.as_list()) if ids.shape.is_fully_defined() else \
        tf.size(ids, out_type=tf.int64)
    dynamic = isinstance(rows, tf.Tensor) or isinstance(inner, tf.Tensor)
    flat = tf.reshape(data, tf.stack([rows, inner]) if dynamic else [rows, inner])
    out = lib.safeops_exact_segment_sum(flat, tf.reshape(ids, [-1]), counts, mean=mean)
    if None not in tail and isinstance(num, int):
        return tf.reshape(out, [num] + tail)
    return tf.reshape(out, tf.concat([tf.shape(counts, out_type=tf.int64), shape[rank:]], 0))


def _exact(data, ids, num, counts, mean, op):
    """Correctly rounded segment sums (or means, empty segments 0) of floating data."""
    if data.shape.rank is None or ids.shape.rank is None:
        raise ValueError(f"{op}: arguments 'data' and 'segment_ids' need a known rank for "
                         "floating data")
    @tf.custom_gradient
    def impl(v):
        out = _fused(v, ids, num, counts, mean)
        if out is None:
            state = exact.exact_segment_state(v, ids, num, counts)
            if mean:
                out = exact.state_to_mean(state, v.dtype, empty="zero")
            else:
                out = exact.state_to_sum(state, v.dtype)

        def grad(g):
            scale = tf.cast(tf.maximum(counts, 1), g.dtype) if mean else None
            return _gather_grad(g, ids, num, scale)

        return out, grad

    return impl(data)


def _by_parts(fn, data):
    if data.dtype.is_complex:
        return tf.complex(fn(tf.math.real(data)), fn(tf.math.imag(data)))
    return fn(data)


def _compensated(data):
    return data.dtype in dtypes.FLOAT_DTYPES or data.dtype in dtypes.COMPLEX_DTYPES


def _sorted_segments(op, data, segment_ids, mean):
    """segment_sum (mean=False) or segment_mean (mean=True) of sorted ids, correctly rounded."""
    data = _data(data)
    ids = tf.convert_to_tensor(segment_ids)
    if not _compensated(data) or _mismatch(data, ids):
        return (tf.math.segment_mean if mean else tf.math.segment_sum)(data, ids)
    counts = tf.math.segment_sum(_leading(data, ids), ids)
    num = tf.shape(counts, out_type=ids.dtype)[0]
    return _by_parts(lambda v: _exact(v, ids, num, counts, mean, op), data)


@drop_in("tf.math.segment_sum",
         "floating sums are correctly rounded (the exact sum of each segment rounded once), "
         "so the result has the same bits on every device, order and thread count",
         "float16/bfloat16 are exact too (TensorFlow accumulates them in their own precision)")
def segment_sum(data, segment_ids, name=None):
    """Correctly rounded segment sums; drop-in for `tf.math.segment_sum`.

    ``output[i] = sum(data[j] for j where segment_ids[j] == i)``, with
    segment_ids sorted (and checked to be, on the CPU, as TensorFlow does).

    Method: every value is split into an integer mantissa placed by its
    exponent into 32-bit integer digits; digits are summed per (segment,
    column) in int64 and rounded once (`safeops._core.exact`). The result is
    the **correctly rounded** exact sum of each segment, whatever the
    condition number, so its bits depend only on the values in each segment:
    not on the device, the order of the rows or the thread count. On the CPU
    outside XLA a fused kernel first sums each output in float64 (float64
    data: a double-double) with a rigorous error bound; where the bound
    proves the rounding that is the result, elsewhere the integer
    accumulator decides: the same bits either way.

    Error bound: ``|res - s| <= u |s|`` (u: unit roundoff of the dtype),
    ties to even; overflow of the exact sum gives +-inf, results in the
    subnormal range are exact IEEE subnormals even on devices that flush
    them. NaN/inf as IEEE addition (inf + -inf = NaN); empty segments give 0.

    Gradient: ``gather(upstream, segment_ids)``, as TensorFlow's.

    dtypes: float16, bfloat16, float32, float64 (correctly rounded);
    complex64/128 by real and imaginary parts; integer types are delegated to
    `tf.math.segment_sum` (exact); other dtypes raise what TensorFlow raises.
    Memory while it runs: about ``2 J + 9`` int64 per output element (J = 4
    for float16, 11 for bfloat16/float32, 68 for float64); the fused kernel
    about 2 float64 (float64 data: 3) per output element and thread.

    Args:
      data: a tensor, rank >= 1.
      segment_ids: 1-D int32/int64 tensor of data's first dimension, sorted,
        non-negative.
      name: optional name scope.

    Returns:
      A tensor of data's dtype, shape ``[segment_ids[-1] + 1] + data.shape[1:]``.

    Raises:
      tf.errors.InvalidArgumentError / ValueError: as `tf.math.segment_sum`
        for ids that are unsorted, negative or of the wrong shape.

    Example:
      >>> data = tf.constant([1e8, 1.0, -1e8, 2.0])
      >>> so.segment_sum(data, [0, 0, 0, 1]).numpy()   # TF: [0., 2.]
      array([1., 2.], dtype=float32)
    """
    with tf.name_scope(name or "segment_sum"):
        return _sorted_segments("safeops.segment_sum", data, segment_ids, mean=False)


@drop_in("tf.math.unsorted_segment_sum",
         "floating sums are correctly rounded (the exact sum of each segment rounded once), "
         "so the result has the same bits on every device (TensorFlow's GPU kernel adds with "
         "atomics, in a varying order) and under XLA",
         "float16/bfloat16 are exact too (TensorFlow accumulates them in their own precision)")
def unsorted_segment_sum(data, segment_ids, num_segments, name=None):
    """Correctly rounded unsorted segment sums; drop-in for `tf.math.unsorted_segment_sum`.

    ``output[i, ...] = sum(data[j..., ...] for j... where segment_ids[j...] == i)``;
    segment_ids may come in any order, repeat, and be negative (those rows
    are dropped, as in TensorFlow); ids ``>= num_segments`` raise on the CPU
    (InvalidArgumentError, as TensorFlow's) and are dropped elsewhere.

    Method and error bound: as `segment_sum`: the **correctly rounded** exact
    sum per output element, whatever the condition number; the same bits on
    every device, for any order of the rows, eager, in `tf.function` and
    under ``jit_compile=True`` (num_segments must then be a constant, as for
    TensorFlow's op under XLA). Empty segments give 0; NaN/inf as IEEE.

    Gradient: ``gather(upstream, segment_ids)``, 0 for dropped rows, as
    TensorFlow's.

    dtypes: as `segment_sum`.

    Args:
      data: a tensor.
      segment_ids: int32/int64 tensor whose shape is a prefix of data's shape.
      num_segments: scalar int32/int64, the number of output rows.
      name: optional name scope.

    Returns:
      A tensor of data's dtype, shape ``[num_segments] + data.shape[ids.rank:]``.

    Raises:
      tf.errors.InvalidArgumentError / ValueError: as
        `tf.math.unsorted_segment_sum` (shape mismatch, ids out of range).

    Example:
      >>> data = tf.constant([1.0, 1e8, 3.0, -1e8])
      >>> so.unsorted_segment_sum(data, [0, 0, 1, 0], 2).numpy()  # TF: [0., 3.]
      array([1., 3.], dtype=float32)
    """
    with tf.name_scope(name or "unsorted_segment_sum"):
        data = _data(data)
        ids = tf.convert_to_tensor(segment_ids)
        if not _compensated(data) or _mismatch(data, ids):
            return tf.math.unsorted_segment_sum(data, ids, num_segments)
        counts = tf.math.unsorted_segment_sum(_leading(data, ids), ids, num_segments)
        static = tf.get_static_value(num_segments)
        num = int(static) if static is not None else tf.shape(counts, out_type=ids.dtype)[0]
        return _by_parts(
            lambda v: _exact(v, ids, num, counts, False, "safeops.unsorted_segment_sum"), data)


@drop_in("tf.math.segment_mean",
         "floating means are correctly rounded (exact segment sum divided by the count, "
         "rounded once), so the result has the same bits on every device, order and thread count")
def segment_mean(data, segment_ids, name=None):
    """Correctly rounded segment means; drop-in for `tf.math.segment_mean`.

    ``output[i] = sum(data[j] for segment_ids[j] == i) / count_i``, 0 for
    empty segments (as TensorFlow), segment_ids sorted.

    Method: the exact sum of each segment (as `segment_sum`) is divided by
    the count exactly (integer long division, remainder kept) and rounded
    once: the result is the **correctly rounded** mean, ``|res - m| <= u |m|``,
    whatever the condition number, with the same bits on every device. The
    mean of values near the dtype's maximum is finite (no intermediate
    overflow). NaN/inf as IEEE (inf / count = inf).

    Gradient: ``gather(upstream / count, segment_ids)``, as TensorFlow's.

    dtypes: as `segment_sum`; integer types delegated to `tf.math.segment_mean`.

    Args:
      data: a tensor, rank >= 1.
      segment_ids: 1-D int32/int64 tensor of data's first dimension, sorted.
      name: optional name scope.

    Returns:
      A tensor of data's dtype, shape ``[segment_ids[-1] + 1] + data.shape[1:]``.

    Raises:
      tf.errors.InvalidArgumentError / ValueError: as `tf.math.segment_mean`.

    Example:
      >>> data = tf.constant([1e8, 3.0, -1e8])
      >>> so.segment_mean(data, [0, 0, 0]).numpy()   # TF: [0.]
      array([1.], dtype=float32)
    """
    with tf.name_scope(name or "segment_mean"):
        return _sorted_segments("safeops.segment_mean", data, segment_ids, mean=True)
