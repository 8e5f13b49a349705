"""RaggedTensor inputs of the reductions and of softmax: the same output type as TF's.

A reduction over uniform inner axes only maps the dense op over the flat
values (the result stays ragged, as TF's). A reduction that includes the
ragged dimensions (or the outer one, for one ragged dimension) runs the dense
op on the padded tensor with a mask of the real entries; its result is dense,
as TF's. Other combinations (several ragged dimensions, only some reduced)
are left to TF's ragged op, evaluated in the accumulation dtype.
"""

import tensorflow as tf

from safeops._core.axes import class_axis, reduction_axes

__all__ = ["is_ragged", "ragged_reduce", "ragged_rows"]


def is_ragged(x):
    return isinstance(x, tf.RaggedTensor)


def ragged_reduce(op, rt, axis, keepdims, dense_fn, fallback, pad=0):
    """A reduction of a RaggedTensor.

    Args:
      op: the public op's name.
      rt: the RaggedTensor.
      axis: the user's axis.
      keepdims: as the op's.
      dense_fn: ``dense_fn(x, mask, axes, keepdims)`` on a dense tensor, mask
        True at real entries (None when every entry is real).
      fallback: ``fallback(rt, axis, keepdims)``, TF's ragged op made accurate
        by widening, for the layouts the dense path does not cover.
      pad: the value padded entries take (0 for sums, -inf for logsumexp).
    """
    rank, r = rt.shape.rank, rt.ragged_rank
    axes = reduction_axes(op, axis, rank)
    if axes is None:
        return fallback(rt, axis, keepdims)
    if axes and min(axes) > r:  # uniform inner axes only: per entry of the flat values
        return rt.with_flat_values(
            dense_fn(rt.flat_values, None, tuple(a - r for a in axes), keepdims))
    if set(range(1, r + 1)) <= set(axes) or (r == 1 and axes):
        dense = rt.to_tensor(default_value=tf.constant(pad, rt.dtype))
        mask = tf.ones_like(rt.flat_values, tf.bool)
        mask = rt.with_flat_values(mask).to_tensor(default_value=False)
        return dense_fn(dense, mask, axes, keepdims)
    return fallback(rt, axis, keepdims)


def ragged_rows(op, rt, axis, dense_fn, pad):
    """softmax-like ops of a RaggedTensor along `axis`; the result has rt's row partitions.

    Along a uniform inner axis the op maps over the flat values; along the
    last axis when it is ragged, it runs on the padded tensor (padding `pad`,
    -inf: no weight) and the rows are cut back to their lengths.
    """
    rank, r = rt.shape.rank, rt.ragged_rank
    a = class_axis(op, axis, rank)
    if a > r:
        return rt.with_flat_values(dense_fn(rt.flat_values, a - r))
    if a != rank - 1 or a == 0:
        raise tf.errors.InvalidArgumentError(
            None, None, f"{op}: a RaggedTensor is normalised along its last axis or a uniform "
                        f"inner axis; got axis {axis} of a tensor with ragged rank {r}")
    dense = rt.to_tensor(default_value=tf.constant(pad, rt.dtype))
    out = dense_fn(dense, a)
    return tf.RaggedTensor.from_tensor(out, lengths=rt.nested_row_lengths(),
                                       row_splits_dtype=rt.row_splits.dtype)
