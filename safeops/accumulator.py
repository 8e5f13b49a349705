"""A running total that does not stall: `KahanAccumulator` (compensated tf.Variables)."""

import tensorflow as tf

from safeops._core.dtypes import HALF_DTYPES, check_floating
from safeops._core.eft import dw_add
from safeops._core.native import kernels
from safeops._core.registry import new

__all__ = ["KahanAccumulator"]

_WIDEN = HALF_DTYPES + (tf.float32,)  # dtypes the fused in-place add takes
# Every total is stored in float64: its 29+ extra bits are the compensation of a
# narrower total; a float64 total adds a second variable.
_STORAGE = tf.float64


@new("a running total in tf.Variables (sum + compensation) that does not stall; replaces "
     "v.assign_add(x) where increments are small against the total")
class KahanAccumulator(tf.Module):
    """A running total that does not stall, backed by tf.Variables (sum + compensation).

    Replaces ``v = tf.Variable(0.0); v.assign_add(x)`` where the increments are
    small compared with the total: a float32 variable receiving
    ``assign_add(1e-7)`` a million times ends at 0.09906 instead of 0.1, and a
    float32 or bfloat16 total stops moving once increments fall below half an
    ulp.

    Method per dtype (chosen by measurement, see BUILD_NOTES.md):
      float16, bfloat16, float32: the total is kept in one float64 variable
      (float64's 29+ extra bits are the compensation); each increment is
      exact in float64 and ``add`` is ``assign_add(cast(values, float64))``;
      on the CPU outside XLA and distribution strategies the fused kernel
      (`safeops.native`) widens and adds in place, without the float64 copy
      of the increment (same arithmetic, same result).
      float64: a double-word (sum, compensation) in two float64 variables;
      ``add`` is TwoSum(sum, x), the error plus the compensation, then
      FastTwoSum to renormalise (Dekker's double-word + word addition), so the
      compensation never grows beyond half an ulp of the sum.
    `value` rounds the total once to the requested dtype.

    Error bound after N adds of x_1..x_N (u64 = 2**-53):
    ``|total - sum x| <= N u64 max_k |partial_k|`` for float16/bfloat16/float32
    storage, and ``<= N 2 u64**2 max_k |partial_k|`` for float64; the value is
    then rounded once (``+ u|sum x|``). One million float32 adds of 1e-7 give
    the float32-rounded exact total (0.1 within 1 ulp).

    Gradient: none -- variables are state, as for ``Variable.assign_add``.

    Distribution: under a `tf.distribute` strategy the variables are mirrored
    with ``ONLY_FIRST_REPLICA`` aggregation; in a replica context `add` first
    sums the replicas' increments (``all_reduce`` in the storage dtype) and
    then updates every copy identically, so each replica's values count once.
    Works eagerly, in `tf.function` and under ``jit_compile=True``. NaN/inf
    increments make the value NaN/inf as ``assign_add`` would.

    Args:
      shape: the total's shape (default scalar); `add` broadcasts to it.
      dtype: float16, bfloat16, float32 (default) or float64.
      name: optional name of the module and its variables.

    Raises:
      TypeError: if dtype is not floating (checked at construction and in `add`).

    Example:
      >>> acc = so.KahanAccumulator()
      >>> for _ in range(1000): _ = acc.add(1e-4)
      >>> float(acc.value())   # tf.Variable.assign_add gives 0.09999...42
      0.10000000149011612
    """

    def __init__(self, shape=(), dtype=tf.float32, name=None):
        """Creates the variables (zero).

        Args:
          shape: the total's shape.
          dtype: float16, bfloat16, float32 or float64.
          name: optional name.
        """
        super().__init__(name=name or "kahan_accumulator")
        self._dtype = check_floating("safeops.KahanAccumulator", "dtype", dtype)
        self._storage = _STORAGE
        self._shape = tf.TensorShape(shape)
        with self.name_scope:
            kwargs = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                          synchronization=tf.VariableSynchronization.ON_WRITE)
            self._sum = tf.Variable(tf.zeros(self._shape, self._storage), name="sum", **kwargs)
            self._comp = None
            if self._dtype == tf.float64:
                self._comp = tf.Variable(tf.zeros(self._shape, self._storage),
                                         name="compensation", **kwargs)

    @property
    def dtype(self):
        """The dtype of `value()`."""
        return self._dtype

    @property
    def shape(self):
        """The total's shape."""
        return self._shape

    def add(self, values):
        """Adds values (broadcast to the accumulator's shape) to the total.

        Args:
          values: a tensor-like of the accumulator's dtype (Python numbers are
            converted), broadcastable to its shape.

        Returns:
          The update op's result (the new sum variable value), for graph
          dependencies.

        Raises:
          TypeError: if values has another dtype (or is bool/string/integer).
          ValueError: if values does not broadcast to the shape.
        """
        op = "safeops.KahanAccumulator.add"
        try:
            v = tf.convert_to_tensor(values, dtype_hint=self._dtype)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{op}: argument 'values' cannot be converted: {err}") from None
        if v.dtype != self._dtype:
            raise TypeError(f"{op}: argument 'values' must have dtype {self._dtype.name}; "
                            f"got {v.dtype.name}")
        try:
            target = tf.broadcast_static_shape(v.shape, self._shape)
        except ValueError:
            target = None
        if target is None or target != self._shape:
            raise ValueError(f"{op}: argument 'values' of shape {v.shape} does not broadcast "
                             f"to the accumulator's shape {self._shape}")
        if (self._comp is None and not tf.distribute.has_strategy()
                and "GPU" not in self._sum.device.upper()):  # the kernel runs where the variable is
            lib = kernels(v, _WIDEN)
            if lib is not None:  # fused: widen and add in place, no float64 copy of v
                op = lib.safeops_widen_assign_add(self._sum.handle,
                                                  tf.broadcast_to(v, self._shape))
                return self._sum._lazy_read(op)  # noqa: SLF001  (as assign_add returns)
        v = tf.broadcast_to(tf.cast(v, self._storage), self._shape)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            v = ctx.all_reduce(tf.distribute.ReduceOp.SUM, v)
        if self._comp is None:  # float64 storage of a narrower dtype: exact increments
            return self._sum.assign_add(v)
        hi, lo = dw_add(self._sum.read_value(), self._comp.read_value(), v)
        with tf.control_dependencies([self._comp.assign(lo)]):
            return self._sum.assign(hi)

    def value(self):
        """The total ``sum + compensation``, rounded once to the accumulator's dtype.

        Returns:
          A tensor of the accumulator's shape and dtype.
        """
        s = self._sum.read_value()
        if self._comp is not None:
            s = s + self._comp.read_value()
        return tf.cast(s, self._dtype)

    def reset(self):
        """Sets the total (and its compensation) back to zero.

        Returns:
          The assign op's result.
        """
        if self._comp is None:
            return self._sum.assign(tf.zeros_like(self._sum))
        with tf.control_dependencies([self._comp.assign(tf.zeros_like(self._comp))]):
            return self._sum.assign(tf.zeros_like(self._sum))
