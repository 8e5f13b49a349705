"""Compensated Keras 3 optimizers (namespace ``so.optimizers``).

SGD, Adam, AdamW, RMSprop, Adagrad, Adamax, Nadam, Lion and Adafactor: each
is the Keras optimizer of that name whose variable updates are compensated.

The failure they fix: a bfloat16 weight of 1.0 that receives 1000 updates of
+1e-3 stays at exactly 1.0 (exact: 2.0), because each update is below half an
ulp of the weight (2**-8) and rounds away; float32 weights lose the same way to
updates below 2**-24 of their magnitude (one million updates of 1e-7 to 1.0
end at 1.119 instead of 1.1). "Revisiting BFloat16 Training" (Zamirai et al.,
2020) recovers the lost accuracy with Kahan summation or stochastic rounding.

One mechanism serves every optimizer: Keras's own ``update_step`` runs
unchanged, but for a compensated variable it is handed a working view of the
variable (float32 for float16/bfloat16 variables, the variable's dtype
otherwise), so Keras computes the step -- learning rate, gradient, moments,
bias corrections -- in that dtype, and its final ``assign_add`` /
``assign_sub`` / ``assign`` of the variable is intercepted and applied as:

* ``kahan_summation`` (default: on for float16/bfloat16, off for
  float32/float64): one compensation slot c per variable, in the variable's
  dtype. ``y = delta - c; t = round(w + y); c = (t - w) - y; w = t``
  (Kahan 1965). The rounding error of every step is carried into the next, so
  after n steps ``|w_n - (w_0 + sum delta_i)| <= ulp(w_n) / 2 + |c_n|`` with
  ``|c_n| <= ulp(w_n) / 2`` (+ the rounding of c itself, 2**-8 |c| in
  bfloat16): about one ulp of the result, independent of n (plain summation:
  up to n / 2 ulps).
* ``stochastic_rounding`` (bfloat16 variables only; float16 variables keep
  the automatic Kahan summation, float32/float64 follow `kahan_summation`):
  ``w + delta`` is formed in float32 and rounded to bfloat16 up or down with
  probabilities proportional to the distance, using 16 random bits from a
  stateless generator keyed on (`seed`, iteration, variable index): unbiased,
  ``E[w_n] = w_0 + sum delta_i`` exactly, no extra slot, same draws on every
  replica.

Sparse gradients (`tf.IndexedSlices`, e.g. from an `Embedding`): where Keras's
step is sparse (SGD without momentum, Adagrad) the compensated update is too:
duplicate indices are summed, then only the touched rows of the variable and
of its compensation slot are read and written (a gather and two
``scatter_update``). Optimizers whose Keras step is dense (moments decay on
every row: Adam, RMSprop, ...) update densely, as Keras does.

Optimizer slots (moments, accumulators, Adafactor's factored statistics,
Nadam's momentum product, the EMA copy of ``use_ema=True``, rounded once when
written back) of compensated float16/bfloat16 variables are float32: a
bfloat16 moving average with decay 0.999 stalls like the weights (measured: a bf16 MLP trained with compensated weights but bf16 moments ended
30% above the float32 loss; with float32 moments, 0.05%).

Under ``mixed_bfloat16`` (or ``mixed_float16``) the model's variables are
float32 and only the computation is in half precision: the default
(``kahan_summation=None``) then compensates nothing and every step is Keras's
float32 step, bit for bit; the half-precision rounding is in the gradients,
which compensation does not touch. ``kahan_summation=True`` compensates the
float32 weights (one float32 slot per variable), which matters only when
updates fall below 2**-24 of the weights (long runs, tiny learning rates).

Under ``mixed_float16``, ``model.compile(so.optimizers.Adam())`` gets safeops's
`safeops.mixed_precision.LossScaleOptimizer` (a floor on the scale) where
Keras would wrap the optimizer in its own (whose scale can halve to 0); a
safeops optimizer wrapped explicitly in Keras's class warns.

For dense variables of 32768 elements or more the compensated add is one
XLA-fused kernel (a nested ``tf.function(jit_compile=True)``); smaller ones run
the same ops unfused (an XLA call costs ~20 us). Gradients are not modified
(same clipping and weight decay as Keras; decay of a compensated variable is
a compensated add of ``-lr * wd * w`` computed in the working dtype).
"""

import inspect
import random
import warnings

import keras
import tensorflow as tf

from safeops._core import keras_compat
from safeops.clipping import clip_by_global_norm, clip_by_norm
from safeops._core.dtypes import HALF_DTYPES, scalar_in
from safeops._core.native import kernels
from safeops._core.registry import drop_in

__all__ = ["SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Lion",
           "Nadam", "RMSprop"]

_COMPENSATION = "kahan_compensation"


def _working_dtype(dtype):
    return tf.float32 if dtype in HALF_DTYPES else dtype


def _stochastic_round_bf16(x32, seed):
    """Round float32 `x32` to bfloat16, up or down with probability by distance."""
    bits = tf.bitcast(x32, tf.uint32)
    noise = tf.cast(tf.random.stateless_uniform(tf.shape(x32), seed, minval=0, maxval=65536,
                                                dtype=tf.int32), tf.uint32)
    rounded = tf.bitwise.bitwise_and(bits + noise, tf.constant(0xFFFF0000, tf.uint32))
    out = tf.bitcast(rounded, tf.float32)
    return tf.cast(tf.where(tf.math.is_finite(x32), out, x32), tf.bfloat16)  # exact cast


def _add(w, comp, delta, seed, mode, negate=False):
    """``w + delta`` (``w - delta`` if `negate`) compensated; `w`, `delta` in the working
    dtype, `comp` in the variable's.

    Returns (new variable value, new compensation), both in the variable's dtype.
    """
    dtype = comp.dtype
    if negate:  # exact, and inside the fused kernel rather than a pass of its own
        delta = -delta
    if mode == "kahan":
        y = delta - tf.cast(comp, w.dtype)
        t = tf.cast(w + y, dtype)
        return t, tf.cast((tf.cast(t, w.dtype) - w) - y, dtype)
    return _stochastic_round_bf16(w + delta, seed), comp


# Large variables: one fused XLA kernel (memory-bound, ~1 pass instead of ~6).
# Small ones: the same ops unfused, avoiding the ~20 us cost of an XLA call.
_fused_add = tf.function(_add, jit_compile=True, reduce_retracing=True)
_FUSE_MIN_SIZE = 1 << 15


def _in_place(var, size):
    """Whether the fused in-place Kahan update may run on `var`: a large plain resource
    variable on the CPU, outside a distribution strategy (whose variables are updated
    per replica through their own update functions)."""
    return (size is not None and size >= _FUSE_MIN_SIZE and not tf.distribute.has_strategy()
            and isinstance(var, tf.Variable) and hasattr(var, "handle")
            and "GPU" not in (var.device or "").upper())


class _Working:
    """A compensated variable as Keras's ``update_step`` sees it.

    Reads give the variable's value in the working dtype (float32 for
    float16/bfloat16), ``dtype`` is that dtype, and the optimizer indexes it
    as the variable (same key). Writes reach the variable only through the
    optimizer's intercepted ``assign*`` methods.
    """

    def __init__(self, variable, dtype, key, index):
        self.variable = variable
        self.dtype = dtype
        self.shape = variable.shape
        self.name = variable.name
        keras_compat.key_as(self, key)
        self.index = index

    def __tf_tensor__(self, dtype=None, name=None):
        return tf.cast(tf.convert_to_tensor(self.variable), dtype or self.dtype, name=name)


def _tf_variable(v):
    return v.value if isinstance(v, keras.Variable) else v


class _Compensated:
    """Mixin: compensated variable updates for any Keras optimizer (see module doc)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The signature a user sees: Keras's arguments, in Keras's order, then ours.
        keras_cls = next(b for b in cls.__mro__[1:]
                         if b.__module__.startswith("keras.") and b.__name__ == cls.__name__)
        params = [p for p in inspect.signature(keras_cls.__init__).parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD]
        ours = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                for n, d in (("kahan_summation", None), ("stochastic_rounding", False),
                             ("seed", None))]
        tail = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]

        def __init__(self, *args, **kwargs):
            _Compensated.__init__(self, *args, **kwargs)

        __init__.__signature__ = inspect.Signature(params + ours + tail)
        __init__.__doc__ = f"Keras's {keras_cls.__name__} arguments, then ours (class doc)."
        cls.__init__ = __init__

    def __init__(self, *args, kahan_summation=None, stochastic_rounding=False, seed=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        op = f"safeops.optimizers.{type(self).__name__}"
        if kahan_summation not in (None, True, False):
            raise ValueError(f"{op}: argument 'kahan_summation' must be None, True or False; "
                             f"got {kahan_summation!r}")
        if stochastic_rounding not in (True, False):
            raise ValueError(f"{op}: argument 'stochastic_rounding' must be True or False; "
                             f"got {stochastic_rounding!r}")
        if stochastic_rounding and kahan_summation:
            raise ValueError(f"{op}: argument 'stochastic_rounding' cannot be combined with "
                             "kahan_summation=True (choose one method)")
        if seed is None:
            seed = random.randrange(2**31)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{op}: argument 'seed' must be None or an int; got {seed!r}")
        self.kahan_summation = kahan_summation
        self.stochastic_rounding = bool(stochastic_rounding)
        self.seed = int(seed)
        object.__setattr__(self, "_constructed", True)

    # Keras's LossScaleOptimizer turns its inner optimizer's own loss scaling off
    # (``inner.loss_scale_factor = None``, the last line of its constructor): the one moment
    # an optimizer learns it is being wrapped. When the wrapping is `model.compile`'s
    # automatic one (mixed_float16), the wrapper becomes safeops's LossScaleOptimizer
    # (`mixed_precision.adopt_compile_wrapper`); any other wrapping by Keras's class warns.
    # safeops's own class marks the inner optimizer first and is left alone.
    def __setattr__(self, name, value):
        if (name == "loss_scale_factor" and value is None
                and self.__dict__.get("_constructed")
                and not self.__dict__.pop("_scaled_by_safeops", False)):
            from safeops import mixed_precision  # pylint: disable=import-outside-toplevel
            mixed_precision.adopt_compile_wrapper(self, f"safeops.optimizers.{type(self).__name__}")
        super().__setattr__(name, value)

    # -- which variables, which slots ----------------------------------------------
    def _mode_of_dtype(self, dtype):
        dtype = tf.as_dtype(dtype)
        if self.stochastic_rounding and dtype == tf.bfloat16:
            return "stochastic"
        # stochastic_rounding covers bfloat16 only: float16 variables keep the automatic
        # Kahan summation (kahan_summation=None), else they would get no compensation.
        if self.kahan_summation or (self.kahan_summation is None and dtype in HALF_DTYPES):
            return "kahan"
        return None

    def _mode(self, variable):
        """'kahan', 'stochastic' or None for a variable."""
        if keras_compat.overwrite_with_gradient(variable):
            return None
        return self._mode_of_dtype(variable.dtype)

    def build(self, var_list):
        """Create Keras's slots plus one compensation slot per Kahan-summed variable.

        Args:
          var_list: the trainable variables (floating dtypes only).

        Raises:
          TypeError: a variable has a non-floating dtype.
        """
        if self.built:
            return
        for v in var_list:
            dtype = tf.as_dtype(v.dtype)
            if not dtype.is_floating:
                raise TypeError(f"safeops.optimizers.{type(self).__name__}: argument 'var_list' "
                                f"must hold float16, bfloat16, float32 or float64 variables; "
                                f"got {dtype.name} for {v.name!r}")
        self._widen_slots = True
        try:
            super().build(var_list)
        finally:
            self._widen_slots = False
        self._compensations = [
            self.add_variable_from_reference(v, name=_COMPENSATION)
            if self._mode(v) == "kahan" else None
            for v in var_list]

    def add_variable(self, shape, initializer="zeros", dtype=None, aggregation="none",
                     layout=None, name=None):
        """Keras's factory; half-precision slots created while building are float32."""
        if getattr(self, "_widen_slots", False) and dtype is not None and \
                tf.as_dtype(dtype) in HALF_DTYPES and self._mode_of_dtype(dtype):
            dtype = "float32"
        return super().add_variable(shape=shape, initializer=initializer, dtype=dtype,
                                    aggregation=aggregation, layout=layout, name=name)

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        """Keras's slot factory; slots of compensated half-precision variables are float32.

        An exponential moving average stored in bfloat16 stalls exactly like the
        weights do (Adam's ``v += (g**2 - v) * 0.001`` is below half an ulp), so
        every slot of a compensated float16/bfloat16 variable is float32 (the
        EMA copy too: it is rounded once when written back), except the
        compensation slot and Keras's gradient accumulator, which keep the
        variable's dtype.

        Args:
          reference_variable: the model variable.
          name: slot name.
          initializer: slot initializer.
        """
        dtype = tf.as_dtype(reference_variable.dtype)
        # Gradient accumulators keep the variable's dtype: Keras adds the gradients
        # into them with a plain tensor add, which needs equal dtypes.
        if name not in (_COMPENSATION, "gradient_accumulator") and dtype in HALF_DTYPES and \
                self._mode(reference_variable):
            path = getattr(reference_variable, "path", None) or \
                str(reference_variable.name).replace(":", "_")
            ref = getattr(reference_variable, "value", reference_variable)
            strategy = keras_compat.optimizer_distribution_strategy(self)
            with strategy.extended.colocate_vars_with(ref):
                return keras.optimizers.Optimizer.add_variable(
                    self, shape=reference_variable.shape, initializer=initializer,
                    dtype="float32", name=f"{path.replace('/', '_')}_{name}")
        widen, self._widen_slots = getattr(self, "_widen_slots", False), False
        try:  # Keras's factory calls add_variable with the reference's dtype: keep it
            return super().add_variable_from_reference(reference_variable, name=name,
                                                       initializer=initializer)
        finally:
            self._widen_slots = widen

    # -- gradients and decay ------------------------------------------------------
    def _clip_gradients(self, grads):
        """Keras's `clipnorm` / `global_clipnorm` through the overflow-free norms of
        `safeops.clip_by_norm` / `clip_by_global_norm` (IndexedSlices stay sparse)."""
        if self.clipnorm:
            return [None if g is None else clip_by_norm(g, self.clipnorm) for g in grads]
        if self.global_clipnorm:
            return clip_by_global_norm(list(grads), self.global_clipnorm)[0]
        return super()._clip_gradients(grads)

    def _apply_weight_decay(self, variables):
        plain = [v for v in variables if self._mode(v) is None]
        if plain:
            super()._apply_weight_decay(plain)
        if self.weight_decay is None:
            return
        compensated = [_tf_variable(v) for v in variables
                       if self._mode(v) is not None and self._use_weight_decay(v)]
        if not compensated:
            return

        def decay(variable):
            work = self._working(variable)
            lr = scalar_in(self.learning_rate, work.dtype)
            wd = scalar_in(self.weight_decay, work.dtype)
            self._compensated_assign(work, -(tf.convert_to_tensor(work) * wd * lr))

        def distributed(distribution, variables):  # as Keras's TF optimizer applies decay
            for variable in variables:
                distribution.extended.update(variable, decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            distributed, keras_compat.optimizer_distribution_strategy(self), compensated)

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        # The EMA copy of a compensated half-precision variable is float32: round it once.
        strategy = keras_compat.optimizer_distribution_strategy(self)
        averages = keras_compat.optimizer_ema_variables(self)
        for var, average in zip(trainable_variables, averages):
            if average is not None:
                strategy.extended.update(_tf_variable(var),
                                         lambda a, b: a.assign(tf.cast(b, a.dtype)),
                                         args=(_tf_variable(average),))

    # -- the one mechanism ----------------------------------------------------------
    def _working(self, variable):
        index = keras_compat.optimizer_variable_index(self, variable)
        key = keras_compat.optimizer_variable_key(self, variable)
        return _Working(variable, _working_dtype(tf.as_dtype(variable.dtype)), key, index)

    def update_step(self, gradient, variable, learning_rate):
        if self._mode(variable) is None:
            return super().update_step(gradient, variable, learning_rate)
        work = self._working(variable)
        # Keras's step mixes Python-float hyperparameters into tensor code in two ways:
        # ops.cast(beta, dtype), which goes through float32 (float64 0.999 becomes
        # 0.99900001287...), and Python arithmetic such as 1 - beta, done in double
        # while beta ** t is done in the variable's dtype (Adam's first float32 step
        # is then off by 6e-6). NumPy scalars of the working dtype make both exact and
        # consistent, and still compare as numbers (`if self.momentum > 0`).
        scalar = work.dtype.as_numpy_dtype
        saved = {k: v for k, v in vars(self).items()
                 if type(v) is float and not k.startswith("_")}  # noqa: E721 (not bool/int)
        try:
            vars(self).update({k: scalar(v) for k, v in saved.items()})
            return super().update_step(gradient, work, learning_rate)
        finally:
            vars(self).update(saved)

    def assign(self, variable, value):
        if isinstance(variable, _Working):
            if isinstance(value, tf.IndexedSlices):
                rows = tf.gather(tf.convert_to_tensor(variable), value.indices)
                delta = tf.IndexedSlices(tf.cast(value.values, variable.dtype) - rows,
                                         value.indices, value.dense_shape)
            else:
                delta = tf.cast(value, variable.dtype) - tf.convert_to_tensor(variable)
            return self._compensated_assign(variable, delta)
        return super().assign(variable, value)

    def assign_add(self, variable, value):
        if isinstance(variable, _Working):
            return self._compensated_assign(variable, value)
        return super().assign_add(variable, value)

    def assign_sub(self, variable, value):
        if isinstance(variable, _Working):
            if isinstance(value, tf.IndexedSlices):
                value = tf.IndexedSlices(-value.values, value.indices, value.dense_shape)
                return self._compensated_assign(variable, value)
            return self._compensated_assign(variable, value, negate=True)
        return super().assign_sub(variable, value)

    def _compensated_assign(self, work, delta, negate=False):
        """Add `delta` (dense or IndexedSlices, working dtype; dense: subtract it if `negate`)
        to the variable, compensated."""
        var = _tf_variable(work.variable)
        mode = self._mode(var)
        comp = self._compensations[work.index]
        cdt = work.dtype
        seed = None
        if mode == "stochastic":  # the random bits' key; Kahan needs none
            step = tf.cast(self.iterations, tf.int64)
            seed = tf.stack([tf.constant(self.seed, tf.int64),
                             step * len(keras_compat.optimizer_trainable_variables(self)) +
                             work.index])
        comp_var = _tf_variable(comp) if comp is not None else None
        if isinstance(delta, tf.IndexedSlices):
            indices, position = tf.unique(delta.indices)
            values = tf.math.unsorted_segment_sum(tf.cast(delta.values, cdt), position,
                                                  tf.size(indices))
            w = tf.cast(tf.gather(var, indices), cdt)
            c = tf.gather(comp_var, indices) if comp_var is not None else \
                tf.zeros([], var.dtype)
            new_w, new_c = _add(w, c, values, seed, mode)
            var.scatter_update(tf.IndexedSlices(new_w, indices))
            if comp_var is not None:
                comp_var.scatter_update(tf.IndexedSlices(new_c, indices))
            return
        size = tf.TensorShape(var.shape).num_elements()
        if mode == "kahan" and var.dtype == cdt and _in_place(var, size):
            delta = tf.cast(delta, cdt)
            lib = kernels(delta)
            if lib is not None:  # one pass in the variables' own buffers, the same bits
                lib.safeops_kahan_assign_add(var.handle, comp_var.handle, delta, negate=negate)
                return
        c = tf.convert_to_tensor(comp_var) if comp_var is not None else tf.zeros([], var.dtype)
        add = _fused_add if size is None or size >= _FUSE_MIN_SIZE else _add
        new_w, new_c = add(tf.cast(tf.convert_to_tensor(var), cdt), c,
                           tf.cast(delta, cdt), seed, mode, negate)
        var.assign(new_w)
        if comp_var is not None:
            comp_var.assign(new_c)

    def get_config(self):
        config = super().get_config()
        config.update({"kahan_summation": self.kahan_summation,
                       "stochastic_rounding": self.stochastic_rounding, "seed": self.seed})
        return config


def _doc(name, fixes=""):
    return f"""Keras {name} whose variable updates are compensated (see the module doc).

    Replaces `keras.optimizers.{name}`: Keras's arguments, in Keras's order
    and with Keras's defaults, then the keyword-only `kahan_summation`,
    `stochastic_rounding` and `seed`. Keras's own ``update_step`` computes
    the step (in float32 for float16/bfloat16 variables); the addition to the
    variable is compensated.{fixes}

    Compensation: `kahan_summation` None turns Kahan summation on for
    float16/bfloat16 variables and off for float32/float64 (True: on for every
    variable; False: off). Error after n steps: about one ulp of the weight
    instead of up to n/2 ulps. `stochastic_rounding=True` rounds bfloat16
    variables stochastically instead (unbiased in expectation), seeded by
    `seed`; float16 variables then still get Kahan summation (unless
    `kahan_summation=False`). Variables without compensation (float32 under a
    mixed policy, by default) follow Keras's update bit for bit.
    `clipnorm`/`global_clipnorm` use `safeops.clip_by_norm` /
    `clip_by_global_norm` (no NaN or zero step when the squared gradient norm
    overflows).

    Gradient: not applicable (an optimizer). dtypes: float16, bfloat16,
    float32 and float64 variables; compensation slots have the variable's
    dtype, the other slots of compensated half-precision variables are float32.
    Serializable (`get_config`, registered as ``safeops>{name}``).

    Args:
      *args, **kwargs: those of `keras.optimizers.{name}`.
      kahan_summation: None (auto by dtype), True or False.
      stochastic_rounding: round bfloat16 variables stochastically.
      seed: int seed of the stochastic rounding (None: drawn at random).

    Raises:
      TypeError: integer (non-floating) variables, at `build`/first `apply`.
      ValueError: `stochastic_rounding=True` with `kahan_summation=True`, or
        a bad flag/seed; Keras's own argument checks.

    Example:
      >>> w = keras.Variable(1.0, dtype="bfloat16")
      >>> opt = so.optimizers.{name}()
      >>> opt.apply([tf.constant(-1.0, tf.bfloat16)], [w])
    """


_DIFFERENCES = (
    "the addition of each step to a float16/bfloat16 variable is Kahan-compensated (one extra "
    "slot per variable, kahan_compensation, in the variable's dtype): about 1 ulp after n "
    "steps where Keras loses up to n/2 ulps or stalls",
    "the step of a compensated float16/bfloat16 variable is computed in float32 and its other "
    "slots are float32 (Keras: the variable's dtype)",
    "keyword-only extra arguments kahan_summation, stochastic_rounding, seed (in get_config)",
    "clipnorm/global_clipnorm do not overflow to NaN or a zero step",
)
_SPARSE = ("sparse (IndexedSlices) gradients update only the touched rows of the variable and "
           "of its compensation slot",)


@drop_in("keras.optimizers.SGD", *_DIFFERENCES, *_SPARSE)
@keras.saving.register_keras_serializable(package="safeops")
class SGD(_Compensated, keras.optimizers.SGD):
    __doc__ = _doc("SGD", " Sparse gradients without momentum update only the touched rows.")


@drop_in("keras.optimizers.Adam", *_DIFFERENCES)
@keras.saving.register_keras_serializable(package="safeops")
class Adam(_Compensated, keras.optimizers.Adam):
    __doc__ = _doc("Adam")


@drop_in("keras.optimizers.AdamW", *_DIFFERENCES,
         "the decay -lr * wd * w of a compensated variable is a compensated add")
@keras.saving.register_keras_serializable(package="safeops")
class AdamW(_Compensated, keras.optimizers.AdamW):
    __doc__ = _doc("AdamW", " The decoupled decay of a compensated variable is a compensated "
                            "add too.")


@drop_in("keras.optimizers.RMSprop", *_DIFFERENCES)
@keras.saving.register_keras_serializable(package="safeops")
class RMSprop(_Compensated, keras.optimizers.RMSprop):
    __doc__ = _doc("RMSprop")


@drop_in("keras.optimizers.Adagrad", *_DIFFERENCES, *_SPARSE)
@keras.saving.register_keras_serializable(package="safeops")
class Adagrad(_Compensated, keras.optimizers.Adagrad):
    __doc__ = _doc("Adagrad", " Sparse gradients update only the touched rows.")


@drop_in("keras.optimizers.Adadelta", *_DIFFERENCES)
@keras.saving.register_keras_serializable(package="safeops")
class Adadelta(_Compensated, keras.optimizers.Adadelta):
    __doc__ = _doc("Adadelta")


@drop_in("keras.optimizers.Adamax", *_DIFFERENCES)
@keras.saving.register_keras_serializable(package="safeops")
class Adamax(_Compensated, keras.optimizers.Adamax):
    __doc__ = _doc("Adamax")


@drop_in("keras.optimizers.Nadam", *_DIFFERENCES,
         "the momentum product (u_product) is float32 when half-precision variables are "
         "compensated (Keras: the first variable's dtype)")
@keras.saving.register_keras_serializable(package="safeops")
class Nadam(_Compensated, keras.optimizers.Nadam):
    __doc__ = _doc("Nadam", " The momentum product is kept in float32.")

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        old = self._u_product
        if var_list and tf.as_dtype(old.dtype) in HALF_DTYPES and self._mode_of_dtype(old.dtype):
            # Keras makes the product in the first variable's dtype; a bfloat16 product of
            # factors ~0.9 loses 2**-9 per step. Swap in a float32 one at the same place of
            # the tracked variables (set without the tracker, which would append it again).
            new = keras.Variable(1.0, dtype="float32", trainable=False, name=old.name)
            tracked = keras_compat.optimizer_own_variables(self)
            position = next(i for i, v in enumerate(tracked) if v is old)
            tracked[position] = new
            vars(self)["_u_product"] = new


@drop_in("keras.optimizers.Lion", *_DIFFERENCES)
@keras.saving.register_keras_serializable(package="safeops")
class Lion(_Compensated, keras.optimizers.Lion):
    __doc__ = _doc("Lion")


@drop_in("keras.optimizers.Adafactor", *_DIFFERENCES)
@keras.saving.register_keras_serializable(package="safeops")
class Adafactor(_Compensated, keras.optimizers.Adafactor):
    __doc__ = _doc("Adafactor", " Its factored second-moment statistics of compensated "
                                "half-precision variables are float32.")
