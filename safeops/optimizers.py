"""Compensated Keras 3 optimizers (namespace ``so.optimizers``): SGD, Adam, AdamW.

The failure they fix: a bfloat16 weight of 1.0 that receives 1000 updates of
+1e-3 stays at exactly 1.0 (exact: 2.0), because each update is below half an
ulp of the weight (2**-8) and rounds away; float32 weights lose the same way to
updates below 2**-24 of their magnitude (one million updates of 1e-7 to 1.0
end at 1.119 instead of 1.1). "Revisiting BFloat16 Training" (Zamirai et al.,
2020) recovers the lost accuracy with Kahan summation or stochastic rounding.

Methods, per variable (the update delta is always computed in float32 for
float16/bfloat16 variables, in the variable's dtype otherwise):

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
  ``w + delta`` is formed in
  float32 and rounded to bfloat16 up or down with probabilities proportional
  to the distance, using 16 random bits from a stateless generator keyed on
  (`seed`, iteration, variable index): unbiased, ``E[w_n] = w_0 + sum delta_i``
  exactly, no extra slot, same draws on every replica.

Moment slots (SGD momentum, Adam m, v, v_hat) of compensated float16/bfloat16
variables are float32: a bfloat16 moving average with decay 0.999 stalls like
the weights (measured: a bf16 MLP trained with compensated weights but bf16
moments ended 30% above the float32 loss; with float32 moments, 0.05%).

For variables of 32768 elements or more the compensated step is one
XLA-fused kernel (a nested ``tf.function(jit_compile=True)``), which is why it
costs about as much as the plain Keras step; smaller variables run the same
ops unfused (an XLA call costs ~20 us). Gradients are not modified (same clipping and weight decay as
Keras; with weight decay, the decay term is added to the compensated delta).
"""

import random

import keras
import tensorflow as tf

from safeops._dtypes import scalar_in

__all__ = ["SGD", "Adam", "AdamW"]

_HALF = (tf.float16, tf.bfloat16)
_MOMENT_SLOTS = ("momentum", "velocity", "velocity_hat")


def _compute_dtype(dtype):
    return tf.float32 if dtype in _HALF else dtype


def _stochastic_round_bf16(x32, seed):
    """Round float32 `x32` to bfloat16, up or down with probability by distance."""
    bits = tf.bitcast(x32, tf.uint32)
    noise = tf.cast(tf.random.stateless_uniform(tf.shape(x32), seed, minval=0, maxval=65536,
                                                dtype=tf.int32), tf.uint32)
    rounded = tf.bitwise.bitwise_and(bits + noise, tf.constant(0xFFFF0000, tf.uint32))
    out = tf.bitcast(rounded, tf.float32)
    return tf.cast(tf.where(tf.math.is_finite(x32), out, x32), tf.bfloat16)  # exact cast


def _sgd_math(grad, slots, hyper, static):
    lr = hyper["lr"]
    if not slots:
        return (), -grad * lr
    momentum = hyper["momentum"]
    m = slots[0] * momentum - grad * lr
    delta = m * momentum - grad * lr if static["nesterov"] else m
    return (m,), delta


def _adam_math(grad, slots, hyper, static):
    b1, b2 = hyper["beta_1"], hyper["beta_2"]
    m = slots[0] + (grad - slots[0]) * (1.0 - b1)
    v = slots[1] + (tf.square(grad) - slots[1]) * (1.0 - b2)
    new = (m, v)
    if static["amsgrad"]:
        v = tf.maximum(slots[2], v)
        new = (m, new[1], v)
    step = hyper["step"]
    alpha = hyper["lr"] * tf.sqrt(1.0 - tf.pow(b2, step)) / (1.0 - tf.pow(b1, step))
    return new, -(m * alpha) / (tf.sqrt(v) + hyper["epsilon"])


_MATH = {"sgd": _sgd_math, "adam": _adam_math}


def _step(var, comp, grad, slots, hyper, seed, static):
    """One compensated update; returns (new var, new compensation, new slots)."""
    dtype = var.dtype
    cdt = _compute_dtype(dtype)
    w = tf.cast(var, cdt)
    hyper = {k: tf.cast(h, cdt) for k, h in hyper.items()}
    cslots = tuple(tf.cast(s, cdt) for s in slots)
    new_slots, delta = _MATH[static["kind"]](tf.cast(grad, cdt), cslots, hyper, static)
    if static["decay"]:
        delta = delta - w * hyper["wd"] * hyper["lr"]
    if static["mode"] == "kahan":
        y = delta - tf.cast(comp, cdt)
        t = tf.cast(w + y, dtype)
        new_comp = tf.cast((tf.cast(t, cdt) - w) - y, dtype)
    else:  # stochastic rounding, bfloat16 only
        t = _stochastic_round_bf16(w + delta, seed)
        new_comp = comp
    return t, new_comp, tuple(tf.cast(s, o.dtype) for s, o in zip(new_slots, slots))


# Large variables: one fused XLA kernel (memory-bound, ~1 pass instead of ~15).
# Small ones: the same ops unfused, avoiding the ~20 us cost of an XLA call.
_fused_step = tf.function(_step, jit_compile=True, reduce_retracing=True)
_FUSE_MIN_SIZE = 1 << 15


class _Compensated:
    """Mixin: Kahan / stochastic-rounding variable updates for a Keras optimizer."""

    _KIND = None

    def _init_precision(self, kahan_summation, stochastic_rounding, seed):
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

    def _mode(self, variable):
        """'kahan', 'stochastic' or None for a variable."""
        dtype = tf.as_dtype(variable.dtype)
        if self.stochastic_rounding and dtype == tf.bfloat16:
            return "stochastic"
        # stochastic_rounding covers bfloat16 only: float16 variables keep the automatic
        # Kahan summation (kahan_summation=None), else they would get no compensation.
        if self.kahan_summation or (self.kahan_summation is None and dtype in _HALF):
            return "kahan"
        return None

    def build(self, var_list):
        """Create Keras' slots plus one compensation slot per Kahan-summed variable.

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
        super().build(var_list)
        self._compensations = [
            self.add_variable_from_reference(v, name="kahan_compensation")
            if self._mode(v) == "kahan" and not self._overwrite_variable_with_gradient(v)
            else None
            for v in var_list]

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        """Keras' slot factory; moment slots of compensated half-precision variables are float32.

        An exponential moving average stored in bfloat16 stalls exactly like the
        weights do (Adam's ``v += (g**2 - v) * 0.001`` is below half an ulp), so
        the momentum/velocity slots of compensated float16/bfloat16 variables
        are kept in float32; compensation slots keep the variable's dtype.

        Args:
          reference_variable: the model variable.
          name: slot name.
          initializer: slot initializer.
        """
        dtype = tf.as_dtype(reference_variable.dtype)
        if name in _MOMENT_SLOTS and dtype in _HALF and self._mode(reference_variable):
            path = getattr(reference_variable, "path", None) or \
                str(reference_variable.name).replace(":", "_")
            ref = getattr(reference_variable, "value", reference_variable)
            with self._distribution_strategy.extended.colocate_vars_with(ref):
                return self.add_variable(shape=reference_variable.shape, initializer=initializer,
                                         dtype="float32", name=f"{path.replace('/', '_')}_{name}")
        return super().add_variable_from_reference(reference_variable, name=name,
                                                   initializer=initializer)

    def _clip_gradients(self, grads):
        if self.clipnorm or self.global_clipnorm:
            try:  # issue 11's NaN-free clipping, when present
                from safeops.clipping import _clip_gradients
            except ImportError:
                _clip_gradients = None
            if _clip_gradients is not None:
                return _clip_gradients(grads, clipnorm=self.clipnorm,
                                       global_clipnorm=self.global_clipnorm)
        return super()._clip_gradients(grads)

    def _apply_weight_decay(self, variables):
        # Decay of compensated variables is folded into their compensated delta.
        plain = [v for v in variables if self._mode(v) is None]
        if plain:
            super()._apply_weight_decay(plain)

    def _slots(self, variable):
        raise NotImplementedError

    def _hyper(self, variable, dtype):
        raise NotImplementedError

    def _static(self):
        raise NotImplementedError

    def update_step(self, gradient, variable, learning_rate):
        mode = self._mode(variable)
        if mode is None:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        slots = self._slots(variable)
        comp = self._compensations[index]
        comp_value = tf.convert_to_tensor(comp) if comp is not None \
            else tf.zeros([], variable.dtype)
        cdt = _compute_dtype(variable.dtype)
        hyper = {"lr": scalar_in(learning_rate, cdt)}
        hyper.update(self._hyper(variable, cdt))
        decay = self.weight_decay is not None and self._use_weight_decay(variable)
        if decay:
            hyper["wd"] = scalar_in(self.weight_decay, cdt)
        step = tf.cast(self.iterations, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64),
                         step * len(self._trainable_variables) + index])
        static = dict(self._static(), kind=self._KIND, mode=mode, decay=decay)
        size = tf.TensorShape(variable.shape).num_elements()
        step_fn = _fused_step if size is None or size >= _FUSE_MIN_SIZE else _step
        new_var, new_comp, new_slots = step_fn(
            tf.convert_to_tensor(variable), comp_value, tf.convert_to_tensor(gradient),
            tuple(tf.convert_to_tensor(s) for s in slots), hyper, seed, static)
        for slot, value in zip(slots, new_slots):
            self.assign(slot, value)
        if comp is not None:
            self.assign(comp, new_comp)
        self.assign(variable, new_var)

    def _precision_config(self, config):
        config.update({"kahan_summation": self.kahan_summation,
                       "stochastic_rounding": self.stochastic_rounding, "seed": self.seed})
        return config


_COMMON_DOC = """
    Compensation (see the module docstring): `kahan_summation` None turns Kahan
    summation on for float16/bfloat16 variables and off for float32/float64
    (True: on for every variable; False: off). Error after n steps: about one
    ulp of the weight instead of up to n/2 ulps. `stochastic_rounding=True`
    rounds bfloat16 variables stochastically instead (unbiased in
    expectation), seeded by `seed`; float16 variables then still get Kahan
    summation (unless `kahan_summation=False`). Variables without compensation
    follow the Keras update exactly. `clipnorm`/`global_clipnorm` use
    `safeops.clip_by_norm`/`clip_by_global_norm` (no NaN or zero step when the
    squared gradient norm overflows).

    Gradient: not applicable (an optimizer). dtypes: float16, bfloat16, float32
    and float64 variables; compensation slots have the variable's dtype.
    Serializable (`get_config`, registered as ``safeops>{name}``).

    Raises:
      TypeError: integer (non-floating) variables, at `build`/first `apply`.
      ValueError: `stochastic_rounding=True` with `kahan_summation=True`, or
        a bad flag/seed; Keras' own argument checks.
"""


@keras.saving.register_keras_serializable(package="safeops")
class SGD(_Compensated, keras.optimizers.SGD):
    __doc__ = """Keras SGD (with momentum/Nesterov) whose variable updates are compensated.

    Replaces `keras.optimizers.SGD`: same arguments and defaults, plus
    `kahan_summation`, `stochastic_rounding` and `seed`. Fixes low-precision
    weights that stop moving when ``lr * grad`` is below half an ulp.

    Args:
      learning_rate, momentum, nesterov: as `keras.optimizers.SGD`.
      kahan_summation: None (auto by dtype), True or False.
      stochastic_rounding: round bfloat16 variables stochastically.
      seed: int seed of the stochastic rounding (None: drawn at random).
      **kwargs: Keras' base optimizer arguments (weight_decay, clipnorm,
        global_clipnorm, clipvalue, use_ema, ..., name).

    Example:
      >>> w = keras.Variable(1.0, dtype="bfloat16")
      >>> opt = so.optimizers.SGD(learning_rate=1e-3)
      >>> for _ in range(1000):
      ...     opt.apply([tf.constant(-1.0, tf.bfloat16)], [w])
      >>> float(w) >= 1.99   # keras.optimizers.SGD leaves it at 1.0
      True
    """ + _COMMON_DOC.format(name="SGD")

    _KIND = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, kahan_summation=None,
                 stochastic_rounding=False, seed=None, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         **kwargs)
        self._init_precision(kahan_summation, stochastic_rounding, seed)

    def _slots(self, variable):
        return [self.momentums[self._get_variable_index(variable)]] if self.momentum != 0 else []

    def _hyper(self, variable, dtype):
        return {"momentum": scalar_in(self.momentum, dtype)}

    def _static(self):
        return {"nesterov": bool(self.nesterov)}

    def get_config(self):
        return self._precision_config(super().get_config())


class _AdamSlots:
    _KIND = "adam"

    def _slots(self, variable):
        i = self._get_variable_index(variable)
        slots = [self._momentums[i], self._velocities[i]]
        if self.amsgrad:
            slots.append(self._velocity_hats[i])
        return slots

    def _hyper(self, variable, dtype):
        return {"beta_1": scalar_in(self.beta_1, dtype),
                "beta_2": scalar_in(self.beta_2, dtype),
                "epsilon": scalar_in(self.epsilon, dtype),
                "step": tf.cast(self.iterations + 1, dtype)}

    def _static(self):
        return {"amsgrad": bool(self.amsgrad)}

    def get_config(self):
        return self._precision_config(super().get_config())


@keras.saving.register_keras_serializable(package="safeops")
class Adam(_AdamSlots, _Compensated, keras.optimizers.Adam):
    __doc__ = """Keras Adam whose variable updates are compensated.

    Replaces `keras.optimizers.Adam`: same arguments and defaults, plus
    `kahan_summation`, `stochastic_rounding` and `seed`.

    Args:
      learning_rate, beta_1, beta_2, epsilon, amsgrad: as `keras.optimizers.Adam`.
      kahan_summation: None (auto by dtype), True or False.
      stochastic_rounding: round bfloat16 variables stochastically.
      seed: int seed of the stochastic rounding (None: drawn at random).
      **kwargs: Keras' base optimizer arguments.

    Example:
      >>> opt = so.optimizers.Adam(1e-3, kahan_summation=True)  # also for float32
    """ + _COMMON_DOC.format(name="Adam")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, kahan_summation=None, stochastic_rounding=False, seed=None,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, **kwargs)
        self._init_precision(kahan_summation, stochastic_rounding, seed)


@keras.saving.register_keras_serializable(package="safeops")
class AdamW(_AdamSlots, _Compensated, keras.optimizers.AdamW):
    __doc__ = """Keras AdamW (decoupled weight decay) whose variable updates are compensated.

    Replaces `keras.optimizers.AdamW`: same arguments and defaults
    (``weight_decay=0.004``), plus `kahan_summation`, `stochastic_rounding`
    and `seed`. For compensated variables the decay ``-lr * wd * w`` is added
    to the compensated delta instead of being applied as a separate rounding.

    Args:
      learning_rate, weight_decay, beta_1, beta_2, epsilon, amsgrad: as
        `keras.optimizers.AdamW`.
      kahan_summation: None (auto by dtype), True or False.
      stochastic_rounding: round bfloat16 variables stochastically.
      seed: int seed of the stochastic rounding (None: drawn at random).
      **kwargs: Keras' base optimizer arguments.

    Example:
      >>> opt = so.optimizers.AdamW(1e-3, weight_decay=0.01)
    """ + _COMMON_DOC.format(name="AdamW")

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, kahan_summation=None, stochastic_rounding=False,
                 seed=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad, **kwargs)
        self._init_precision(kahan_summation, stochastic_rounding, seed)
