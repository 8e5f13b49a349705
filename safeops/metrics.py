"""Keras metrics with compensated state: `Sum` and `Mean` (namespace ``so.metrics``).

`keras.metrics.Sum` keeps one float32 variable and adds each batch into it, so
once the total is large every small update is rounded away: updated once with
1e6 and then 100 000 times with 0.01 it reports exactly 1 000 000 (exact:
1 001 000). `keras.metrics.Mean` drifts the same way, and its float32 `count`
stops growing at 2**24 samples.

Method. The state is a double-word number ``hi + lo`` (two variables of the
metric's dtype). Each batch is first reduced in the accumulation dtype
(`safeops._core.dtypes.accumulation_dtype`: float32 for float16/bfloat16, float64
for float32; float64 sums plainly), split into ``xh + xl`` in the metric dtype,
and added with Knuth's TwoSum and a renormalising FastTwoSum (the
"double-word + double-word" addition of Joldes, Muller & Popescu 2017,
Algorithm 4 simplified). `result()` adds ``hi + lo`` in the accumulation
dtype and rounds once.

Error bound. After n updates the state carries ``|err| <= n * 2 u**2 * S``
where ``S`` is the sum of the absolute values and ``u`` the unit roundoff of
the metric dtype, plus the batch reductions' own error (``m u_acc`` for a
batch of m values in the accumulation dtype); `result()` then adds one
rounding (1/2 ulp). So the result is within 1 ulp of the exact sum whenever
``n * S / |sum| << 1 / u`` (for float32, n * condition << 1.6e7), e.g. the
example above is correctly rounded. Under `tf.distribute` each replica keeps
its own ``hi, lo`` (``synchronization="on_read"``, ``aggregation="sum"``);
reading sums the ``hi`` and the ``lo`` parts across replicas separately,
which adds at most one more rounding: within 1 ulp.

Variables. Each double word is two variables of the metric's dtype, created
in this order: `Sum` has ``total`` (hi, also the attribute Keras's code
reads) and ``total_compensation`` (lo); `Mean` has ``total``,
``total_compensation``, ``count`` and ``count_compensation``. Keras's metrics
have ``[total]`` and ``[total, count]``: the ``*_compensation`` variables
are the extra ones, so weights saved from a Keras metric do not load into
these (and the other way round), while configs do.

XLA (`jit_compile=True`) keeps the TwoSum terms (XLA CPU/GPU do not
reassociate floating-point additions unless fast-math is enabled).
"""

import keras
import tensorflow as tf

from safeops._core import keras_compat
from safeops._core.dtypes import accumulation_dtype
from safeops._core.eft import dw_add
from safeops._core.registry import drop_in

__all__ = ["Mean", "Sum"]

_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _split(x_acc, dtype):
    """x_acc (accumulation dtype) as xh + xl in `dtype`, xh = fl(x_acc)."""
    xh = tf.cast(x_acc, dtype)
    xl = tf.cast(x_acc - tf.cast(xh, x_acc.dtype), dtype)
    return xh, xl


def _check_dtype(op, dtype):
    name = keras.backend.standardize_dtype(dtype or keras.backend.floatx())
    if name not in _FLOATS:
        raise ValueError(
            f"{op}: argument 'dtype' must be one of {', '.join(_FLOATS)}; got {dtype!r}")
    return name


class _CompensatedAccumulator:
    """A double-word ``hi + lo`` held in two metric variables."""

    def __init__(self, metric, name):
        self.hi = metric.add_variable(shape=(), initializer="zeros", dtype=metric.dtype,
                                      name=name)
        self.lo = metric.add_variable(shape=(), initializer="zeros", dtype=metric.dtype,
                                      name=name + "_compensation")

    def add(self, x_acc):
        """Add a scalar given in the accumulation dtype."""
        xh, xl = _split(x_acc, self.hi.dtype)
        # dw_add keeps IEEE's answer in hi and 0 in lo where the plain sum is not finite.
        hi, lo = dw_add(tf.convert_to_tensor(self.hi), tf.convert_to_tensor(self.lo), xh, xl)
        self.hi.assign(hi)
        self.lo.assign(lo)

    def value(self, acc_dtype):
        """hi + lo in the accumulation dtype (one rounding when cast back)."""
        return tf.cast(tf.convert_to_tensor(self.hi), acc_dtype) + tf.cast(
            tf.convert_to_tensor(self.lo), acc_dtype)

    def reset(self):
        self.hi.assign(tf.zeros_like(self.hi))
        self.lo.assign(tf.zeros_like(self.lo))


def _samplewise(metric, values, sample_weight, reduce_fn):
    """Keras's own reduction of values/weights to per-sample values, in the accumulation dtype."""
    acc = accumulation_dtype(metric.dtype)
    values, sample_weight = keras_compat.reduce_to_samplewise_values(
        values, sample_weight, reduce_fn, acc.name)
    return values, sample_weight, acc


@drop_in("keras.metrics.Sum",
         "the total is a double word (hi + lo): within 1 ulp of the exact sum of every update, "
         "where Keras's float32 total stops absorbing small updates",
         "an extra variable, total_compensation (variables: total, total_compensation)")
@keras.saving.register_keras_serializable(package="safeops")
class Sum(keras.metrics.Sum):
    """Drop-in for `keras.metrics.Sum` with a compensated (double-word) total.

    Replaces `keras.metrics.Sum` (same arguments, same `update_state` /
    `result` / `reset_state`, an instance of it). Method, error bound and
    distributed behaviour: see the module docstring. In short: each batch is
    reduced in the accumulation dtype and added to ``hi + lo`` with TwoSum, so
    the result is within 1 ulp of the exact sum of everything seen (the
    Keras metric updated with 1e6 then 100 000 x 0.01 reports 1 000 000; this
    one 1 001 000). Metrics have no gradient. The result has the metric's
    dtype (default `keras.backend.floatx()`); float16, bfloat16, float32 and
    float64 are accepted.

    Variables (in order): ``total``, ``total_compensation`` (the double word
    ``hi + lo``; Keras's Sum has ``total`` only).

    Args:
      name: string name of the metric instance (default ``"sum"``).
      dtype: dtype of the state and of the result.

    Raises:
      ValueError: if `dtype` is not a floating dtype.

    Example:
      >>> m = so.metrics.Sum()
      >>> m.update_state(1e6)
      >>> for _ in range(1000): m.update_state(0.01)
      >>> float(m.result())   # keras.metrics.Sum: 1000000.0
      1000010.0
    """

    def __init__(self, name="sum", dtype=None):
        _check_dtype("safeops.metrics.Sum", dtype)
        keras.metrics.Metric.__init__(self, name=name, dtype=dtype)
        self._acc = _CompensatedAccumulator(self, "total")
        self.total = self._acc.hi

    def update_state(self, values, sample_weight=None):
        """Add the (weighted) sum of `values`.

        Args:
          values: a tensor-like of any shape.
          sample_weight: optional weights broadcastable to `values`.
        """
        values, _, acc = _samplewise(self, values, sample_weight, keras.ops.sum)
        self._acc.add(tf.reduce_sum(values))

    def reset_state(self):
        self._acc.reset()

    def result(self):
        return tf.cast(self._acc.value(accumulation_dtype(self.dtype)), self.dtype)


@drop_in("keras.metrics.Mean",
         "total and count are double words: the count does not stall at 2**24 and the mean is "
         "within 1 ulp for well-conditioned streams",
         "extra variables total_compensation and count_compensation (variables: total, "
         "total_compensation, count, count_compensation)")
@keras.saving.register_keras_serializable(package="safeops")
class Mean(keras.metrics.Mean):
    """Drop-in for `keras.metrics.Mean` with a compensated total and count.

    Replaces `keras.metrics.Mean` (same arguments and methods, an instance of
    it). Both the weighted total and the count are double-word numbers
    updated with TwoSum (see the module docstring), so neither stops growing
    (a float32 count of samples stalls at 2**24 in Keras). The result is
    ``(total_hi + total_lo) / (count_hi + count_lo)`` computed in the
    accumulation dtype and rounded once: relative error at most
    ``u + 2 n u**2 cond`` (within 1 ulp for well-conditioned streams); 0 when
    nothing was counted (as Keras's `divide_no_nan`). Metrics have no
    gradient. Result dtype: the metric's dtype.

    Variables (in order): ``total``, ``total_compensation``, ``count``,
    ``count_compensation`` (two double words; Keras's Mean has ``total`` and
    ``count``).

    Args:
      name: string name of the metric instance (default ``"mean"``).
      dtype: dtype of the state and of the result.

    Raises:
      ValueError: if `dtype` is not a floating dtype.

    Example:
      >>> m = so.metrics.Mean()
      >>> m.update_state([1.0, 3.0, 5.0, 7.0])
      >>> float(m.result())
      4.0
    """

    def __init__(self, name="mean", dtype=None):
        _check_dtype("safeops.metrics.Mean", dtype)
        keras.metrics.Metric.__init__(self, name=name, dtype=dtype)
        self._total = _CompensatedAccumulator(self, "total")
        self._count = _CompensatedAccumulator(self, "count")
        self.total = self._total.hi
        self.count = self._count.hi

    def update_state(self, values, sample_weight=None):
        """Add the (weighted) values and their count (or weight).

        Args:
          values: a tensor-like of any shape.
          sample_weight: optional weights broadcastable to `values`.
        """
        values, sample_weight, acc = _samplewise(self, values, sample_weight, keras.ops.mean)
        self._total.add(tf.reduce_sum(values))
        if sample_weight is not None:
            num = tf.reduce_sum(sample_weight)
        elif len(values.shape) >= 1:
            num = tf.cast(tf.shape(values)[0], acc)
        else:
            num = tf.constant(1, acc)
        self._count.add(tf.cast(num, acc))

    def reset_state(self):
        self._total.reset()
        self._count.reset()

    def result(self):
        acc = accumulation_dtype(self.dtype)
        return tf.cast(tf.math.divide_no_nan(self._total.value(acc), self._count.value(acc)),
                       self.dtype)
