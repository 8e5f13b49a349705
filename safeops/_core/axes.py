"""One axis normaliser: every form TF accepts, and the error TF raises for the rest.

Accepted: Python and NumPy integers (and bools, as TF), lists and tuples of
them, 0-d and 1-d integer tensors, negative axes, and None with the op's TF
meaning (all axes for a reduction, the last axis for softmax). The errors
follow TF's own, which differ between eager execution and graph building:

=====================  ======================  ==========================
axis                   eager                   graph (tf.function, TF1)
=====================  ======================  ==========================
out of range           InvalidArgumentError    ValueError (reductions);
                                               InvalidArgumentError (scan,
                                               softmax)
duplicated             InvalidArgumentError    InvalidArgumentError
Python float           TypeError               TypeError
string, float tensor   InvalidArgumentError    TypeError
list for a scalar      InvalidArgumentError    InvalidArgumentError (scan);
                                               TypeError (softmax)
=====================  ======================  ==========================

An axis tensor whose value is unknown while a graph is built, and any axis
of a tensor of unknown rank, is "dynamic": the normalisers return None and
the op takes its dynamic path (`dynamic_axes`), which checks range and
duplicates when it runs (InvalidArgumentError, as TF).
"""

import numbers

import numpy as np
import tensorflow as tf

__all__ = ["class_axis", "dynamic_axes", "norm_axes", "reduction_axes", "scan_axis"]


def _eager():
    return tf.executing_eagerly()


def _iae(msg):
    return tf.errors.InvalidArgumentError(None, None, msg)


def _bad_type(op, arg, axis):
    """A string or float tensor as axis: TF's kernel rejects it eagerly, graph building
    raises TypeError."""
    msg = f"{op}: argument '{arg}' must be an integer or a list of integers; got {axis!r}"
    return _iae(msg) if _eager() else TypeError(msg)


def _static(op, arg, axis):
    """`axis` as a NumPy int64 array, or None when it is a tensor of unknown value."""
    if isinstance(axis, (bool, numbers.Integral)):  # the common case, no NumPy round trip
        return np.asarray(int(axis), np.int64)
    if isinstance(axis, float):
        raise TypeError(f"{op}: argument '{arg}' must be an integer, not a float; got {axis!r}")
    if tf.is_tensor(axis):
        if not (axis.dtype.is_integer or axis.dtype == tf.bool):
            raise _bad_type(op, arg, axis)
        value = tf.get_static_value(axis)
        return None if value is None else np.asarray(value).astype(np.int64)
    try:
        arr = np.asarray(axis)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: argument '{arg}' must be an integer or a list of integers; "
                        f"got {axis!r}") from None
    if arr.size == 0:
        return arr.astype(np.int64).reshape(arr.shape)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if arr.ndim == 0:  # a float scalar cannot become an int32 axis: TypeError, as TF
            raise TypeError(f"{op}: argument '{arg}' must be an integer, not a float; "
                            f"got {axis!r}")
        raise _bad_type(op, arg, axis)  # a float list becomes a float tensor: TF's kernel error
    if arr.dtype.kind == "O" and any(tf.is_tensor(a) for a in arr.ravel()):
        # a list of scalar tensors, TF packs it
        return _static(op, arg, tf.stack(list(axis)))
    raise _bad_type(op, arg, axis)


def _out_of_range(op, arg, a, rank, graph_error):
    msg = (f"{op}: argument '{arg}' {a} is out of range for a tensor of rank {rank} "
           f"(expected in [{-rank}, {rank}))")
    return _iae(msg) if _eager() or graph_error is tf.errors.InvalidArgumentError else \
        graph_error(msg)


def reduction_axes(op, axis, rank, arg="axis"):
    """The axes of a reduction as a sorted tuple of non-negative ints, or None (dynamic).

    None means all axes. Duplicates raise InvalidArgumentError; out-of-range
    axes raise InvalidArgumentError eagerly and ValueError in a graph (the
    errors of `tf.reduce_sum`).

    Args:
      op: the public op's name, for messages.
      axis: None, an integer, a list/tuple of integers or an integer tensor.
      rank: the input's static rank, or None when unknown.
      arg: the argument's name.

    Returns:
      A tuple of axes, or None where the axes or the rank are not known
      until the op runs (use `dynamic_axes`).
    """
    if axis is None:
        return None if rank is None else tuple(range(rank))
    arr = _static(op, arg, axis)
    if arr is None:
        return None
    if arr.ndim > 1 and not _eager():
        raise ValueError(f"{op}: argument '{arg}' must be a scalar or a vector; got shape "
                         f"{arr.shape}")
    if rank is None:
        return None
    out = []
    for a in arr.ravel().tolist():
        if not -rank <= a < rank:
            raise _out_of_range(op, arg, a, rank, ValueError)
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise _iae(f"{op}: argument '{arg}' contains duplicate dimensions: "
                   f"{arr.ravel().tolist()}")
    return tuple(sorted(out))


def scan_axis(op, axis, rank, arg="axis"):
    """The axis of a scan (`tf.cumsum`) as a non-negative int, or None (dynamic).

    TF's scan checks its axis when it runs: a non-scalar or out-of-range axis
    raises InvalidArgumentError in every mode; None raises ValueError.
    """
    if axis is None:
        raise ValueError(f"{op}: argument '{arg}' must be an integer, not None")
    return _scalar_axis(op, arg, axis, rank, _iae, None)


def _scalar_axis(op, arg, axis, rank, not_scalar, unknown_rank):
    """A scalar axis: None when its value is unknown; `unknown_rank(a)` when the rank is;
    else non-negative. Not a scalar: `not_scalar(msg)`; out of range:
    InvalidArgumentError in every mode (scans and softmax check it when they run)."""
    arr = _static(op, arg, axis)
    if arr is None:
        return None
    if arr.ndim != 0:
        raise not_scalar(f"{op}: argument '{arg}' must be a scalar; got {arr.tolist()}")
    a = int(arr)
    if rank is None:
        return unknown_rank
    if not -rank <= a < rank:
        raise _out_of_range(op, arg, a, rank, tf.errors.InvalidArgumentError)
    return a % rank


def class_axis(op, axis, rank, arg="axis"):
    """The class axis of softmax/log_softmax as an int, or None (dynamic).

    None means the last axis (`tf.nn.softmax`). Non-negative where the rank
    is known; as given (e.g. -1) where it is not. Out of range:
    InvalidArgumentError in every mode; a list: TypeError; a float:
    InvalidArgumentError eagerly, ValueError in a graph (TF's errors).
    """
    if axis is None:
        axis = -1
    if isinstance(axis, (list, tuple)):
        raise TypeError(f"{op}: argument '{arg}' must be an integer, not a list; got {axis!r}")
    if isinstance(axis, (float, np.floating)):
        msg = f"{op}: argument '{arg}' must be an integer; got {axis!r}"
        raise _iae(msg) if _eager() else ValueError(msg)
    if isinstance(axis, (str, bytes)):
        raise TypeError(f"{op}: argument '{arg}' must be an integer; got {axis!r}")
    if rank is None:  # the axis as given (e.g. -1), for ops that work on an unknown rank
        arr = _static(op, arg, axis)
        if arr is not None and arr.ndim == 0:
            return int(arr)
    return _scalar_axis(op, arg, axis, rank, TypeError, None)


def norm_axes(op, axis, rank, arg="axis"):
    """The axes of `tf.norm`: None, one axis (vector norm) or two distinct axes (matrix).

    Returns None for None, else a list of one or two non-negative ints (as
    given where the rank is unknown). An integer tensor of known value is
    accepted too. Anything else, a repeated or a third axis: ValueError (TF's
    error; two spellings of one axis, (1, -1): InvalidArgumentError, as TF's
    kernel); out of range: as a reduction (InvalidArgumentError eagerly,
    ValueError in a graph).
    """
    if axis is None:
        return None
    bad = ValueError(f"{op}: argument '{arg}' must be None, an integer, or a tuple of 2 unique "
                     f"integers; got {axis!r}")
    if isinstance(axis, (bool, float, str, bytes)):
        raise bad
    try:
        arr = _static(op, arg, axis)
    except (TypeError, tf.errors.InvalidArgumentError):
        raise bad from None
    if arr is None or arr.ndim > 1 or arr.size not in (1, 2):
        raise bad
    axes = arr.ravel().tolist()
    if len(axes) == 2 and axes[0] == axes[1]:
        raise bad
    if rank is not None:
        for a in axes:
            if not -rank <= a < rank:
                raise _out_of_range(op, arg, a, rank, ValueError)
        axes = [a % rank for a in axes]
    if len(axes) == 2 and axes[0] == axes[1]:  # e.g. (1, -1): TF's reduction kernel rejects it
        raise _iae(f"{op}: argument '{arg}' names one axis twice: {arr.ravel().tolist()}")
    return axes


def dynamic_axes(op, axis, x):
    """`axis` (None: all) as a 1-d int32 tensor of non-negative axes of x, checked when run.

    For a reduction whose axes or rank are unknown while the graph is built:
    an out-of-range or duplicated axis raises InvalidArgumentError when the
    op runs, as TF's kernels do.
    """
    rank = tf.rank(x)
    if axis is None:
        return tf.range(rank)
    ax = tf.reshape(tf.cast(axis, tf.int32), [-1])
    ok = tf.reduce_all((ax >= -rank) & (ax < rank))
    ax = tf.math.floormod(ax, tf.maximum(rank, 1))
    unique = tf.equal(tf.size(tf.unique(ax)[0]), tf.size(ax))
    check = tf.debugging.Assert(ok & unique, [f"{op}: invalid reduction axes", ax, rank])
    with tf.control_dependencies([check]):
        return tf.identity(ax)
