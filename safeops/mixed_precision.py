"""Loss-scaled mixed precision that cannot get stuck (namespace ``so.mixed_precision``).

Failures fixed (TF 2.21 / Keras 3.15):

* Keras 3's `LossScaleOptimizer` halves its scale on every overflowing step
  with no floor: after 300 consecutive overflows the scale is exactly 0.0,
  every later gradient is 0/0 = NaN, `iterations` stays at 0 and training never
  resumes, silently. `DynamicLossScale` has a floor (`min_scale`) and a ceiling
  (`max_scale`), and `LossScaleOptimizer(max_consecutive_skips=N)` raises an
  error naming the step and the scale instead of stalling.
* Keras 3 removed ``get_scaled_loss`` / ``get_unscaled_gradients``, breaking
  custom training loops (Keras #19479, #20894): `scale_loss`,
  `unscale_gradients` and `all_finite` restore them.

Custom training loop recipe (Keras 3, TF backend; tested in
``tests/test_mixed_precision.py::test_gradient_tape_recipe``)::

    opt = so.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam())
    opt.build(model.trainable_variables)  # before tracing: the scale is a variable

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            scaled = so.mixed_precision.scale_loss(loss, opt.loss_scale)
        grads = tape.gradient(scaled, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)  # unscales; skips if not finite
        return loss

or, with any Keras optimizer and a standalone loss scale::

    ls = so.mixed_precision.DynamicLossScale()
    ...
        grads = so.mixed_precision.unscale_gradients(tape.gradient(scaled, variables), ls)
        finite = so.mixed_precision.all_finite(grads)
        if finite:  # AutoGraph turns this into tf.cond
            inner.apply(grads, variables)
        ls.update(finite)
"""

import math
import sys
import warnings

import keras
import tensorflow as tf

from safeops._core import keras_compat
from safeops._core.dtypes import convert_to_floating
from safeops._core.registry import drop_in, new

__all__ = [
    "DynamicLossScale",
    "LossScaleOptimizer",
    "all_finite",
    "scale_loss",
    "unscale_gradients",
]

_F32_MAX = float(tf.float32.max)


def _positive_finite(op, arg, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: argument '{arg}' must be a positive finite number; "
                         f"got {value!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= _F32_MAX):
        raise ValueError(f"{op}: argument '{arg}' must be a positive finite float32 number; "
                         f"got {value!r}")
    return value


@new("a dynamic loss scale with a floor (min_scale), a ceiling (max_scale) and skip counters; "
     "Keras 3 has none (its scale reaches 0.0 after ~300 consecutive overflows)")
class DynamicLossScale:
    """A dynamic loss scale with a floor, a ceiling and skip counters.

    Replaces the internal scale of `keras.optimizers.LossScaleOptimizer` (which
    reaches exactly 0.0 after ~300 consecutive overflows) and tf_keras'
    `DynamicLossScale` (floor 1, no counters).

    Method: the scale s (float32) is multiplied by `factor` after
    `growth_interval` consecutive steps with finite gradients, and divided by
    `factor` on a step with a non-finite gradient (the step is skipped):
    ``s <- min(s * factor, max_scale)`` and ``s <- max(s / factor, min_scale)``,
    so ``min_scale <= s <= max_scale`` always: it never reaches 0 and never
    overflows when growing. Counters (int64 variables): `steps` (updates seen),
    `skipped_steps`, `consecutive_skips`, `last_overflow_step` (-1 if none).
    The state lives in variables created on first use (`build`) with
    ``ONLY_FIRST_REPLICA`` aggregation, so under `tf.distribute` every replica
    holds the same values; the update depends only on the all-reduced gradients,
    so the skip decision is the same on every replica. Works eagerly and in
    `tf.function`.

    Error bound: multiplying and dividing by a power of two (the default factor
    2) is exact, so unscaled gradients equal the unscaled-loss gradients up to
    the rounding of the backward pass itself.

    Gradient: not differentiable (state only); `scale_loss` is differentiable.

    Args:
      initial_scale: starting scale (default 2**15).
      growth_interval: finite steps before the scale grows (default 2000).
      factor: growth and back-off factor, > 1 (default 2.0).
      min_scale: floor (default 1.0).
      max_scale: ceiling (default 2**24).

    Raises:
      ValueError: a non-positive or non-finite scale or factor, ``factor <= 1``,
        ``min_scale > max_scale``, ``growth_interval < 1``, or an initial scale
        outside ``[min_scale, max_scale]``; the message names the argument.

    Example:
      >>> ls = so.mixed_precision.DynamicLossScale(initial_scale=8.0, min_scale=1.0)
      >>> for _ in range(10):
      ...     _ = ls.update(False)
      >>> float(ls.scale)   # Keras 3 would be at 8 / 2**10
      1.0
    """

    _OP = "safeops.mixed_precision.DynamicLossScale"

    def __init__(self, initial_scale=2.0**15, growth_interval=2000, factor=2.0,
                 min_scale=1.0, max_scale=2.0**24):
        op = self._OP
        self.initial_scale = _positive_finite(op, "initial_scale", initial_scale)
        self.factor = _positive_finite(op, "factor", factor)
        self.min_scale = _positive_finite(op, "min_scale", min_scale)
        self.max_scale = _positive_finite(op, "max_scale", max_scale)
        if self.factor <= 1.0:
            raise ValueError(f"{op}: argument 'factor' must be > 1; got {factor!r}")
        if self.min_scale > self.max_scale:
            raise ValueError(f"{op}: argument 'min_scale' ({min_scale!r}) must be <= "
                             f"'max_scale' ({max_scale!r})")
        if not self.min_scale <= self.initial_scale <= self.max_scale:
            raise ValueError(f"{op}: argument 'initial_scale' ({initial_scale!r}) must lie in "
                             f"[min_scale, max_scale] = [{min_scale!r}, {max_scale!r}]")
        if isinstance(growth_interval, bool) or not float(growth_interval).is_integer() \
                or growth_interval < 1:
            raise ValueError(f"{op}: argument 'growth_interval' must be an integer >= 1; "
                             f"got {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self._variables = None

    # -- state -------------------------------------------------------------
    def build(self, add_variable=None):
        """Create the state variables (idempotent).

        Args:
          add_variable: optional ``f(name, dtype, value) -> variable`` (an
            optimizer's factory); default creates `keras.Variable`s.
        """
        if self._variables is not None:
            return
        if add_variable is None:
            def add_variable(name, dtype, value):
                return keras.Variable(value, dtype=dtype, trainable=False,
                                      aggregation="only_first_replica", name=name)
        self._variables = {
            "scale": add_variable("loss_scale", "float32", self.initial_scale),
            "good_steps": add_variable("good_steps", "int64", 0),
            "steps": add_variable("loss_scale_steps", "int64", 0),
            "skipped_steps": add_variable("skipped_steps", "int64", 0),
            "consecutive_skips": add_variable("consecutive_skips", "int64", 0),
            "last_overflow_step": add_variable("last_overflow_step", "int64", -1),
        }

    @property
    def variables(self):
        """The state variables, in a fixed order (empty before `build`)."""
        return [] if self._variables is None else list(self._variables.values())

    def _var(self, name):
        self.build()
        return self._variables[name]

    @property
    def scale(self):
        """The current scale, a float32 scalar tensor."""
        return tf.convert_to_tensor(self._var("scale"))

    def __call__(self):
        return self.scale

    def __float__(self):
        """The current scale as a Python float (``float(opt.loss_scale)``)."""
        return float(self.scale)

    good_steps = property(lambda self: tf.convert_to_tensor(self._var("good_steps")))
    steps = property(lambda self: tf.convert_to_tensor(self._var("steps")))
    skipped_steps = property(lambda self: tf.convert_to_tensor(self._var("skipped_steps")))
    consecutive_skips = property(
        lambda self: tf.convert_to_tensor(self._var("consecutive_skips")))
    last_overflow_step = property(
        lambda self: tf.convert_to_tensor(self._var("last_overflow_step")))

    def update(self, finite):
        """Advance the state after one step whose gradients were `finite` (bool).

        Branch-free (`tf.where` on scalars), so it is cheap in graphs and XLA.

        Args:
          finite: a Python or tensor bool, e.g. `all_finite(grads)`.

        Returns:
          The new scale (float32 scalar tensor).
        """
        self.build()
        v = self._variables
        one = tf.constant(1, tf.int64)
        zero = tf.constant(0, tf.int64)
        scale = tf.convert_to_tensor(v["scale"])
        steps = tf.convert_to_tensor(v["steps"])
        if isinstance(finite, bool):
            # The branches of the optimizer's step know the outcome: the same values
            # with only the ops that branch needs (a step runs them every time).
            if finite:
                good = tf.convert_to_tensor(v["good_steps"]) + one
                grow = good >= self.growth_interval
                new_scale = tf.where(grow, tf.minimum(scale * self.factor, self.max_scale),
                                     scale)
                v["scale"].assign(new_scale)
                v["good_steps"].assign(tf.where(grow, zero, good))
                v["consecutive_skips"].assign(zero)
            else:
                new_scale = tf.maximum(scale / self.factor, self.min_scale)
                v["scale"].assign(new_scale)
                v["good_steps"].assign(zero)
                v["skipped_steps"].assign_add(one)
                v["consecutive_skips"].assign_add(one)
                v["last_overflow_step"].assign(steps)
            v["steps"].assign(steps + one)
            return new_scale
        finite = tf.cast(finite, tf.bool)
        good = tf.convert_to_tensor(v["good_steps"]) + one
        grow = tf.logical_and(finite, good >= self.growth_interval)
        grown = tf.minimum(scale * self.factor, self.max_scale)
        shrunk = tf.maximum(scale / self.factor, self.min_scale)
        new_scale = tf.where(finite, tf.where(grow, grown, scale), shrunk)
        v["scale"].assign(new_scale)
        v["good_steps"].assign(tf.where(finite, tf.where(grow, zero, good), zero))
        v["skipped_steps"].assign_add(tf.where(finite, zero, one))
        v["consecutive_skips"].assign(
            tf.where(finite, zero, tf.convert_to_tensor(v["consecutive_skips"]) + one))
        v["last_overflow_step"].assign(
            tf.where(finite, tf.convert_to_tensor(v["last_overflow_step"]), steps))
        v["steps"].assign(steps + one)
        return new_scale

    def get_config(self):
        """The constructor arguments (a dict)."""
        return {"initial_scale": self.initial_scale, "growth_interval": self.growth_interval,
                "factor": self.factor, "min_scale": self.min_scale, "max_scale": self.max_scale}

    @classmethod
    def from_config(cls, config):
        """Rebuild from `get_config`'s dict."""
        return cls(**config)


def _scale_value(loss_scale, op):
    if isinstance(loss_scale, DynamicLossScale):
        return loss_scale.scale
    if isinstance(loss_scale, (int, float)):
        _positive_finite(op, "loss_scale", loss_scale)
    return tf.convert_to_tensor(loss_scale)


@new("Keras 2's LossScaleOptimizer.get_scaled_loss, removed in Keras 3, as a function")
def scale_loss(loss, loss_scale):
    """``loss * scale``: Keras 2's ``get_scaled_loss``, removed in Keras 3.

    The product is computed in the loss's dtype (the float32 scale is cast to
    it); for the default power-of-two scales it is exact unless it overflows,
    which the loss-scale update then detects. Gradient: ``d/dloss = scale``.

    Args:
      loss: a floating tensor.
      loss_scale: a `DynamicLossScale`, a `LossScaleOptimizer`'s `loss_scale`,
        or a positive number/tensor.

    Returns:
      The scaled loss, same dtype as `loss`.

    Raises:
      TypeError: `loss` is not floating. ValueError: a non-positive number.

    Example:
      >>> so.mixed_precision.scale_loss(tf.constant(2.0), 1024.0).numpy()
      2048.0
    """
    loss = convert_to_floating("safeops.mixed_precision.scale_loss", "loss", loss)
    scale = _scale_value(loss_scale, "safeops.mixed_precision.scale_loss")
    return loss * tf.cast(scale, loss.dtype)


@new("Keras 2's LossScaleOptimizer.get_unscaled_gradients, removed in Keras 3, as a function")
def unscale_gradients(grads, loss_scale):
    """Divide every gradient by the scale: Keras 2's ``get_unscaled_gradients``.

    The division is done in float32 for float16/bfloat16 gradients (exact
    reciprocal-free division, one rounding back) and in the gradient's dtype
    otherwise; None entries stay None; `tf.IndexedSlices` keep their indices.
    Dividing by a power of two is exact unless the result is subnormal.

    Args:
      grads: a (nested) structure of gradients, as returned by `tape.gradient`.
      loss_scale: a `DynamicLossScale` or a positive number/tensor.

    Returns:
      The same structure of unscaled gradients (dtypes unchanged).

    Raises:
      ValueError: a non-positive number as `loss_scale`.

    Example:
      >>> so.mixed_precision.unscale_gradients([tf.constant(8.0)], 4.0)[0].numpy()
      2.0
    """
    scale = tf.cast(_scale_value(loss_scale, "safeops.mixed_precision.unscale_gradients"),
                    tf.float32)

    def one(g):
        if g is None:
            return None
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(one(g.values), g.indices, g.dense_shape)
        g = tf.convert_to_tensor(g)
        if g.dtype in (tf.float16, tf.bfloat16):
            return tf.cast(tf.cast(g, tf.float32) / scale, g.dtype)
        return g / tf.cast(scale, g.dtype)

    return tf.nest.map_structure(one, grads, expand_composites=False)


@new("whether every element of every gradient is finite (one bool)")
def all_finite(grads):
    """True iff every element of every (non-None) gradient is finite.

    Args:
      grads: a (nested) structure of tensors; None entries are ignored.

    Returns:
      A scalar bool tensor (True for an empty structure).

    Example:
      >>> bool(so.mixed_precision.all_finite([tf.constant([1.0, float("inf")])]))
      False
    """
    flags = []
    for g in tf.nest.flatten(grads):
        if g is None:
            continue
        if isinstance(g, tf.IndexedSlices):
            g = g.values
        flags.append(tf.reduce_all(tf.math.is_finite(g)))
    if not flags:
        return tf.constant(True)
    return tf.reduce_all(tf.stack(flags))



@drop_in("keras.optimizers.LossScaleOptimizer",
         "the scale has a floor (1) and a ceiling (2**24): it never reaches 0 and never overflows",
         "extra arguments loss_scale (a DynamicLossScale or a fixed number) and "
         "max_consecutive_skips (raise instead of stalling silently)",
         "extra variables: the loss-scale state (scale, good steps, steps, skipped steps, "
         "consecutive skips, last overflow step) replaces Keras's step_counter and dynamic_scale",
         "get_config adds loss_scale and max_consecutive_skips (Keras's from_config refuses them)",
         "under tf.distribute the finite flag is all-reduced, so every replica skips together")
@keras.saving.register_keras_serializable(package="safeops")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A Keras 3 loss-scale optimizer whose scale has a floor and whose stalls raise.

    Replaces `keras.optimizers.LossScaleOptimizer` (same use with `model.fit`
    and in custom loops). Fixes: Keras 3's scale halves without a floor (0.0
    after ~300 consecutive overflows, then training silently never resumes);
    tf_keras floors at 1 but also stalls silently (TF #38357, Keras #16100).

    Method: each `apply` checks that every gradient is finite (`all_finite`;
    under `tf.distribute` the flag is all-reduced, so every replica takes the
    same decision even when only one replica overflowed). Finite: gradients are
    unscaled (`unscale_gradients`) and handed to `inner_optimizer`. Not finite:
    the step is skipped (variables and inner state untouched). Then the
    `DynamicLossScale` is updated (floor `min_scale`, ceiling `max_scale`). If
    `max_consecutive_skips` is set and the number of consecutive skipped steps
    exceeds it, an `InvalidArgumentError` is raised whose message names the step
    and the scale (a `tf.debugging.Assert`, which XLA-compiled functions ignore:
    with ``jit_compile=True`` read `consecutive_skips` instead).

    Error bound: with power-of-two scales, unscaling is exact, so the update is
    the inner optimizer's update on the true gradients (up to the rounding of
    the scaled backward pass, whose underflow is what scaling prevents).

    Gradient: not applicable (an optimizer). dtypes: as the inner optimizer;
    the scale is float32; `scale_loss` casts it to the loss's dtype.

    Variables whose ``overwrite_with_gradient`` is set (the float8 scale and
    amax-history variables of Keras's ``quantize("float8")`` layers) receive
    their new value as "gradient": it is passed to the inner optimizer
    unscaled, as Keras's optimizer does.

    Args:
      inner_optimizer: the `keras.optimizers.Optimizer` to wrap.
      initial_scale: as Keras's: the starting scale (default 2**15); a
        `DynamicLossScale` given here is taken as `loss_scale`.
      dynamic_growth_steps: as Keras's: finite steps before the scale doubles
        (default 2000).
      name: optimizer name.
      loss_scale: None (a `DynamicLossScale` built from `initial_scale` and
        `dynamic_growth_steps`, floor 1, ceiling 2**24), a `DynamicLossScale`
        (or its config dict), or a positive number (a fixed scale: steps with
        non-finite gradients are still skipped). When given, `initial_scale`
        and `dynamic_growth_steps` may only repeat its values.
      max_consecutive_skips: None (never raise) or an int >= 0: the largest
        allowed number of consecutive skipped steps.
      **kwargs: as Keras's (``dynamic=False`` and non-default base optimizer
        arguments are refused with Keras's ValueError).

    Config: Keras's keys (``name``, ``inner_optimizer``, ``initial_scale``,
    ``dynamic_growth_steps``) plus ``loss_scale`` and
    ``max_consecutive_skips``; a config written by Keras's class loads.

    Raises:
      TypeError: `inner_optimizer` is not a Keras optimizer.
      ValueError: bad `loss_scale`, `initial_scale`, `dynamic_growth_steps` or
        `max_consecutive_skips`, or `initial_scale`/`dynamic_growth_steps`
        contradicting `loss_scale`.

    Example:
      >>> opt = so.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.1),
      ...                                             max_consecutive_skips=50)
      >>> model.compile(optimizer=opt, loss="mse")  # doctest: +SKIP
    """

    _OP = "safeops.mixed_precision.LossScaleOptimizer"

    def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
                 name=None, loss_scale=None, max_consecutive_skips=None, **kwargs):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"{self._OP}: argument 'inner_optimizer' must be a "
                            f"keras.optimizers.Optimizer; got {type(inner_optimizer).__name__}")
        if isinstance(initial_scale, DynamicLossScale) and loss_scale is None:
            # A DynamicLossScale in the second position (the former signature) is loss_scale.
            loss_scale, initial_scale = initial_scale, 2.0**15
        initial = _positive_finite(self._OP, "initial_scale", initial_scale)
        if isinstance(dynamic_growth_steps, bool) or \
                not float(dynamic_growth_steps).is_integer() or dynamic_growth_steps < 1:
            raise ValueError(f"{self._OP}: argument 'dynamic_growth_steps' must be an integer "
                             f">= 1; got {dynamic_growth_steps!r}")
        if loss_scale is None:
            loss_scale = DynamicLossScale(initial_scale=initial,
                                          growth_interval=int(dynamic_growth_steps),
                                          min_scale=min(1.0, initial),
                                          max_scale=max(2.0**24, initial))
        else:
            if isinstance(loss_scale, dict):
                loss_scale = DynamicLossScale.from_config(loss_scale)
            elif not isinstance(loss_scale, DynamicLossScale):
                fixed = _positive_finite(self._OP, "loss_scale", loss_scale)
                loss_scale = DynamicLossScale(fixed, min_scale=fixed, max_scale=fixed)
            for arg, value, default, own in (
                    ("initial_scale", initial_scale, 2.0**15, loss_scale.initial_scale),
                    ("dynamic_growth_steps", dynamic_growth_steps, 2000,
                     loss_scale.growth_interval)):
                if value != default and value != own:
                    raise ValueError(f"{self._OP}: argument '{arg}' ({value!r}) contradicts "
                                     f"'loss_scale' ({arg} {own!r}); pass one of them")
        if max_consecutive_skips is not None:
            if isinstance(max_consecutive_skips, bool) or \
                    not float(max_consecutive_skips).is_integer() or max_consecutive_skips < 0:
                raise ValueError(f"{self._OP}: argument 'max_consecutive_skips' must be None or "
                                 f"an integer >= 0; got {max_consecutive_skips!r}")
            max_consecutive_skips = int(max_consecutive_skips)
        # Keras's constructor turns the inner optimizer's loss_scale_factor off; a safeops
        # optimizer warns when that comes from Keras's class, not from this one.
        object.__setattr__(inner_optimizer, "_scaled_by_safeops", True)
        super().__init__(inner_optimizer, initial_scale=loss_scale.initial_scale,
                         dynamic_growth_steps=loss_scale.growth_interval, name=name, **kwargs)
        self._loss_scale = loss_scale
        self.max_consecutive_skips = max_consecutive_skips

    def build(self, var_list):
        """Create the loss-scale state and build the inner optimizer.

        Args:
          var_list: the trainable variables.
        """
        def add(name, dtype, value):
            return self.add_variable(shape=(), dtype=dtype,
                                     initializer=keras.initializers.Constant(value),
                                     aggregation="only_first_replica", name=name)

        self._loss_scale.build(add)
        self.inner_optimizer.build(var_list)
        keras.optimizers.Optimizer.build(self, var_list)

    # -- counters --------------------------------------------------------------
    @property
    def loss_scale(self):
        """The `DynamicLossScale` (pass it to `scale_loss`/`unscale_gradients`)."""
        return self._loss_scale

    @property
    def dynamic_scale(self):
        """The current scale (float32 scalar), Keras' attribute name."""
        return self._loss_scale.scale

    skipped_steps = property(lambda self: self._loss_scale.skipped_steps,
                             doc="Steps skipped for non-finite gradients (int64).")
    consecutive_skips = property(lambda self: self._loss_scale.consecutive_skips,
                                 doc="Skipped steps since the last applied one (int64).")
    last_overflow_step = property(lambda self: self._loss_scale.last_overflow_step,
                                  doc="Index of the last skipped step, -1 if none (int64).")

    def scale_loss(self, loss):
        """``loss * scale`` in the loss's dtype (used by `model.fit`).

        Args:
          loss: a floating tensor.

        Returns:
          The scaled loss.
        """
        if not self.built:
            return loss * tf.cast(self._loss_scale.initial_scale, tf.convert_to_tensor(loss).dtype)
        return scale_loss(loss, self._loss_scale)

    # -- the step ----------------------------------------------------------------
    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        variables = trainable_variables or keras_compat.optimizer_trainable_variables(self)
        unscaled = unscale_gradients(list(grads), self._loss_scale)
        # A float8 scale's "gradient" is its new value: it must not be unscaled.
        grads = [g if keras_compat.overwrite_with_gradient(v) else u
                 for g, u, v in zip(grads, unscaled, variables)]
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
        self._loss_scale.update(True)

    def _stateful_handle_non_finite_grads(self):
        self._loss_scale.update(False)
        if self.max_consecutive_skips is not None:
            ls = self._loss_scale
            tf.debugging.Assert(
                ls.consecutive_skips <= self.max_consecutive_skips,
                [f"{self._OP}: more than max_consecutive_skips={self.max_consecutive_skips} "
                 "consecutive steps with non-finite gradients; training would stall. step",
                 ls.last_overflow_step, "loss scale", ls.scale,
                 "consecutive skips", ls.consecutive_skips])

    def check_finite(self, grads):
        """Whether all `grads` are finite, agreed across replicas (bool scalar).

        Args:
          grads: list of gradients (None allowed).

        Returns:
          A scalar bool tensor.
        """
        finite = all_finite(grads)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                 tf.cast(tf.logical_not(finite), tf.float32))
            finite = tf.equal(bad, 0.0)
        return finite

    def _tf_apply(self, grads, trainable_variables=None):
        if tf.distribute.in_cross_replica_context():
            raise ValueError(f"{self._OP}: apply() must be called in a replica context.")
        grads = list(grads)
        finite = self.check_finite(grads)
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite,
                    lambda: self._stateful_handle_finite_grads(grads, trainable_variables),
                    self._stateful_handle_non_finite_grads)
            return

        def cross_replica(distribution, finite, grads, trainable_variables):
            finite = distribution.experimental_local_results(finite)[0]

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    self._stateful_handle_finite_grads, args=(grads, trainable_variables))

            tf.cond(finite, apply_fn, self._stateful_handle_non_finite_grads)

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(finite, grads, trainable_variables))

    def _common_apply(self, grads, trainable_variables=None):
        finite = self.check_finite(grads)
        tf.cond(finite, lambda: self._stateful_handle_finite_grads(grads, trainable_variables),
                self._stateful_handle_non_finite_grads)

    def get_config(self):
        """Keras's keys plus the loss-scale config and the skip limit."""
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "initial_scale": self._loss_scale.initial_scale,
            "dynamic_growth_steps": self._loss_scale.growth_interval,
            "loss_scale": self._loss_scale.get_config(),
            "max_consecutive_skips": self.max_consecutive_skips,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuild from `get_config`'s dict.

        Args:
          config: the dict.
          custom_objects: passed to the inner optimizer's deserialization.
        """
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"),
                                                      custom_objects=custom_objects)
        return cls(inner, **config)


def _frame_self(depth, code):
    """The ``self`` of the frame `depth` levels above the caller if it runs `code`, else None."""
    try:
        frame = sys._getframe(depth + 1)  # pylint: disable=protected-access
    except ValueError:
        return None
    return frame.f_locals.get("self") if frame.f_code is code else None


def adopt_compile_wrapper(inner, op):
    """Turn the Keras LossScaleOptimizer that `model.compile` is wrapping `inner` in into
    safeops's `LossScaleOptimizer` (same initial scale and growth interval; a floor of 1).

    Called from a safeops optimizer while Keras's constructor runs (see
    `safeops.optimizers`); the wrapper is recognised by its frame: Keras's
    `LossScaleOptimizer.__init__`, itself called by `Trainer.compile`. A wrapper
    the user built explicitly, or a Keras whose call chain differs, is left as
    it is, with a warning that says what to do instead.
    """
    keras_init = keras_compat.keras_loss_scale_init_code()
    wrapper = _frame_self(2, keras_init)  # adopt <- __setattr__ <- Keras's __init__
    compiling = _frame_self(3, keras_compat.keras_compile_code()) is not None
    if type(wrapper) is keras.optimizers.LossScaleOptimizer and compiling:  # pylint: disable=unidiomatic-typecheck
        initial = float(wrapper.initial_scale)
        wrapper.__class__ = LossScaleOptimizer
        wrapper._loss_scale = DynamicLossScale(  # pylint: disable=protected-access
            initial_scale=initial, growth_interval=int(wrapper.dynamic_growth_steps),
            min_scale=min(1.0, initial), max_scale=max(2.0**24, initial))
        wrapper.max_consecutive_skips = None
        return
    warnings.warn(
        f"{op} was wrapped in keras.optimizers.LossScaleOptimizer, whose loss scale has no "
        "floor and can halve to 0, after which training silently stops. Use "
        f"so.mixed_precision.LossScaleOptimizer({op}(...)) instead.", UserWarning, stacklevel=4)

