"""Exact sums split across batches, devices and replicas (namespace ``so.exact``).

A rounded partial sum cannot be combined with another without a second
rounding, so a total computed in parts depends on how it was cut. An exact
*state* can: it holds the exact sum of its terms (integer digits per
exponent, plus counts of NaN, +inf, -inf, -0.0 and terms), states add by
integer addition, and the total is rounded once at the end. The result is the
correctly rounded sum (or mean) of all the terms, the same bits however the
terms were split: over the batches of an epoch, over the shards of a global
batch, over 1, 2 or 4 replicas.

* `sum_state(x, axis)`: the state of ``reduce_sum(x, axis)``;
* `combine_states(states)`: the state of the union of the parts;
* `state_to_sum(state, dtype)`, `state_to_mean(state, dtype)`: round once;
* `cross_replica_sum(x, axis)`: in a `tf.distribute` replica context, the
  correctly rounded sum over all replicas (an int64 all-reduce of the states).

A state is an int64 tensor ``out_shape + [J + 5]`` whose length J depends on
the dtype of the terms (`num_digits`); states of different dtypes do not mix.
"""

import tensorflow as tf

from safeops._core import dtypes
from safeops._core import exact as _exact
from safeops._core.axes import reduction_axes
from safeops._core.registry import new

__all__ = ["combine_states", "cross_replica_sum", "num_digits", "state_to_mean",
           "state_to_sum", "sum_state"]

_COUNTERS = 5


def _terms(op, x):
    x = tf.convert_to_tensor(x)
    dtypes.check_floating(op, "x", x.dtype)
    return x


def _static_axes(op, x, axis):
    axes = reduction_axes(op, axis, x.shape.rank)
    if axes is None:
        raise ValueError(f"{op}: argument 'axis' must be known when the op is built (Python or "
                         "NumPy integers, or a constant tensor) and x's rank static; got "
                         f"{axis!r} with rank {x.shape.rank}")
    return None if axis is None else list(axes)


def _state(op, state, dtype, arg="state"):
    dtype = tf.as_dtype(dtype)
    dtypes.check_floating(op, "dtype", dtype)
    state = tf.convert_to_tensor(state)
    if state.dtype != tf.int64:
        raise TypeError(f"{op}: argument '{arg}' must be an int64 state (from "
                        f"safeops.exact.sum_state); got dtype {state.dtype.name}")
    want = _exact.num_digits(dtype) + _COUNTERS
    if state.shape.rank == 0 or state.shape[-1] not in (None, want):
        raise ValueError(f"{op}: argument '{arg}' must have a last dimension of {want} (a state "
                         f"of {dtype.name} terms); got shape {state.shape}")
    return state, dtype


def _rounded(fn_name, fn, state, dtype, name):
    """`fn` (a rounding of the engine) on a checked state, in a name scope."""
    with tf.name_scope(name or fn_name):
        state, dtype = _state(f"safeops.exact.{fn_name}", state, dtype)
        return fn(state, dtype)


@new("The exact state of a sum: add states of parts, round once.",
     name="safeops.exact.num_digits")
def num_digits(dtype):
    """J, the number of 32-bit digits of a state of `dtype` terms (a state has J + 5 entries).

    Args:
      dtype: float16, bfloat16, float32 or float64.

    Returns:
      A Python int.
    """
    dtype = tf.as_dtype(dtype)
    dtypes.check_floating("safeops.exact.num_digits", "dtype", dtype)
    return _exact.num_digits(dtype)


@new("The exact state of a sum: add states of parts, round once.",
     name="safeops.exact.sum_state")
def sum_state(x, axis=None, keepdims=False, name=None):
    """The exact state of ``tf.reduce_sum(x, axis, keepdims)``.

    Args:
      x: a float16/bfloat16/float32/float64 tensor (up to 2**31 terms per output).
      axis: None (all axes), an int or a list of ints (negative counts from the
        end), known when the op is built.
      keepdims: keep reduced axes with length 1.
      name: optional name scope.

    Returns:
      int64 tensor ``out_shape + [num_digits(x.dtype) + 5]``; not differentiable.

    Raises:
      TypeError: x is not floating.
      ValueError / InvalidArgumentError: bad `axis` (as `tf.reduce_sum`).

    Example:
      >>> x = tf.constant([1e8, 1.0, -1e8, 0.5], tf.float64)
      >>> parts = [so.exact.sum_state(x[:2]), so.exact.sum_state(x[2:])]
      >>> float(so.exact.state_to_sum(so.exact.combine_states(parts), tf.float64))
      1.5
    """
    op = "safeops.exact.sum_state"
    with tf.name_scope(name or "sum_state"):
        x = _terms(op, x)
        return _exact.sum_state(x, _static_axes(op, x, axis), keepdims)


@new("The exact state of a sum: add states of parts, round once.",
     name="safeops.exact.combine_states")
def combine_states(states, name=None):
    """The state of the union of the parts: exact integer addition of same-shape states.

    Args:
      states: a non-empty list of int64 states of the same dtype of terms and shape.
      name: optional name scope.

    Returns:
      The combined state (up to 2**31 states at once).
    """
    op = "safeops.exact.combine_states"
    if not isinstance(states, (list, tuple)) or not states:
        raise ValueError(f"{op}: argument 'states' must be a non-empty list of states; got "
                         f"{type(states).__name__}")
    with tf.name_scope(name or "combine_states"):
        parts = [tf.convert_to_tensor(s) for s in states]
        for s in parts:
            if s.dtype != tf.int64:
                raise TypeError(f"{op}: argument 'states' must hold int64 states; got "
                                f"{s.dtype.name}")
        last = {s.shape[-1] for s in parts if s.shape.rank}
        if len(last) > 1:
            raise ValueError(f"{op}: argument 'states' mixes states of different dtypes "
                             f"(last dimensions {sorted(last)})")
        return _exact.combine_states(parts)


@new("The exact state of a sum: add states of parts, round once.",
     name="safeops.exact.state_to_sum")
def state_to_sum(state, dtype, name=None):
    """The correctly rounded sum held by a state, in `dtype` (the dtype of its terms).

    IEEE non-finite rules (NaN if any NaN or both infinities; else +-inf),
    -0.0 for a sum of only negative zeros, +0.0 for no terms.

    Args:
      state: an int64 state from `sum_state` / `combine_states`.
      dtype: the dtype of the terms.
      name: optional name scope.
    """
    return _rounded("state_to_sum", _exact.state_to_sum, state, dtype, name)


@new("The exact state of a sum: add states of parts, round once.",
     name="safeops.exact.state_to_mean")
def state_to_mean(state, dtype, name=None):
    """The correctly rounded mean (exact sum / number of terms, rounded once); NaN for none.

    Args:
      state: an int64 state from `sum_state` / `combine_states`.
      dtype: the dtype of the terms.
      name: optional name scope.
    """
    return _rounded("state_to_mean", _exact.state_to_mean, state, dtype, name)


@new("The correctly rounded sum over all replicas: the same bits for any replica count.",
     name="safeops.exact.cross_replica_sum")
def cross_replica_sum(x, axis=None, keepdims=False, name=None):
    """In a `tf.distribute` replica context: the correctly rounded sum of x over `axis` and
    over all replicas together.

    Each replica's exact state is all-reduced (int64 SUM, exact and
    associative) and rounded once, so the result is the same bits for 1, 2 or
    4 replicas and for any split of the global batch. Every replica gets the
    total. Outside a strategy (the default replica context) it is the
    correctly rounded ``reduce_sum``.

    Args:
      x: this replica's float tensor.
      axis, keepdims: as `sum_state`.
      name: optional name scope.

    Raises:
      TypeError: x is not floating.
      ValueError: called in a cross-replica context (use ``strategy.run``).
    """
    op = "safeops.exact.cross_replica_sum"
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise ValueError(f"{op}: must be called in a replica context (inside strategy.run); "
                         "it was called in a cross-replica context")
    with tf.name_scope(name or "cross_replica_sum"):
        x = _terms(op, x)
        return _exact.cross_replica_sum(x, _static_axes(op, x, axis), keepdims, ctx)
