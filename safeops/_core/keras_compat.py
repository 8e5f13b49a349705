"""Every touchpoint of safeops with Keras internals, in one place.

The Keras drop-ins (losses, metrics, optimizers, the loss-scale optimizer,
`CompensatedDense`) need a few things Keras does not export: the mask and
logits attributes Keras attaches to tensors, the per-sample reduction of its
metrics, the optimizer's variable index, and the layer internals that
`Dense.quantize` uses. They are reached only through the functions below, so
that a Keras release that moves one of them breaks one module, and
``tests/parity/test_keras_compat.py`` names which touchpoint moved.

`TOUCHPOINTS` lists them (what is reached, for which drop-in); the test checks
each against the installed Keras.
"""

import importlib
import inspect

import keras

__all__ = [
    "TOUCHPOINTS",
    "check_touchpoints",
    "get_keras_logits",
    "get_keras_mask",
    "keras_compile_code",
    "keras_loss_scale_init_code",
    "key_as",
    "optimizer_distribution_strategy",
    "optimizer_ema_variables",
    "optimizer_own_variables",
    "optimizer_trainable_variables",
    "optimizer_variable_index",
    "optimizer_variable_key",
    "overwrite_with_gradient",
    "reduce_to_samplewise_values",
    "set_keras_mask",
]

# (kind, target, used by). kind "module_attr": `target` is "module:attribute";
# "class_attr": "keras.path.Class.attribute" (a method safeops calls or overrides);
# "instance_attr": an attribute of a built instance of that class (an optimizer);
# "layer_attr": an attribute of a new instance of that layer class.
TOUCHPOINTS = (
    ("module_attr", "keras.src.backend:get_keras_mask", "losses (masks)"),
    ("module_attr", "keras.src.backend:set_keras_mask", "losses (ignore_class)"),
    ("module_attr", "keras.src.metrics.reduction_metrics:reduce_to_samplewise_values",
     "metrics (sample weights)"),
    ("class_attr", "keras.optimizers.Optimizer._get_variable_index", "optimizers"),
    ("class_attr", "keras.optimizers.Optimizer._var_key", "optimizers"),
    ("class_attr", "keras.optimizers.Optimizer._overwrite_variable_with_gradient",
     "optimizers, mixed_precision"),
    ("class_attr", "keras.optimizers.Optimizer._clip_gradients", "optimizers (overridden)"),
    ("class_attr", "keras.optimizers.Optimizer._apply_weight_decay", "optimizers (overridden)"),
    ("class_attr", "keras.optimizers.Optimizer._use_weight_decay", "optimizers"),
    ("class_attr", "keras.optimizers.LossScaleOptimizer._stateful_handle_finite_grads",
     "mixed_precision (overridden)"),
    ("class_attr", "keras.optimizers.LossScaleOptimizer._stateful_handle_non_finite_grads",
     "mixed_precision (overridden)"),
    ("class_attr", "keras.optimizers.LossScaleOptimizer._tf_apply", "mixed_precision (overridden)"),
    ("class_attr", "keras.optimizers.LossScaleOptimizer._common_apply",
     "mixed_precision (overridden)"),
    ("class_attr", "keras.optimizers.LossScaleOptimizer.__init__",
     "optimizers (the wrapper model.compile builds under mixed_float16 is recognised)"),
    ("class_attr", "keras.src.trainers.trainer.Trainer.compile",
     "optimizers (the wrapper model.compile builds under mixed_float16 is recognised)"),
    ("class_attr", "keras.layers.Layer._flatten_layers",
     "doctor.profile (the tracked sublayers of a subclassed model)"),
    ("instance_attr", "keras.optimizers.Nadam._u_product", "optimizers.Nadam"),
    ("instance_attr", "keras.optimizers.Nadam._variables", "optimizers.Nadam"),
    ("instance_attr", "keras.optimizers.SGD._distribution_strategy", "optimizers (slots)"),
    ("class_attr", "keras.optimizers.Optimizer._overwrite_model_variables_with_average_value",
     "optimizers (overridden: EMA)"),
    ("class_attr", "keras.layers.Dense._int8_build", "layers.CompensatedDense (quantize)"),
    ("class_attr", "keras.layers.Dense._float8_build", "layers.CompensatedDense (quantize)"),
    ("class_attr", "keras.layers.Dense._int4_build", "layers.CompensatedDense (quantize)"),
    ("module_attr", "keras.src.models.functional:Functional", "wrap_model, quantize_model"),
    ("layer_attr", "keras.layers.Dense._layers", "wrap_model (sublayers of a user's layer)"),
    ("layer_attr", "keras.layers.Dense._tracker", "wrap_model (sublayers of a user's layer)"),
    ("layer_attr", "keras.layers.Lambda._output_shape", "wrap_model (Lambda layers)"),
)


def _module_attr(target):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def get_keras_mask(x):
    """The Keras mask attached to `x` (``x._keras_mask``), or None."""
    return _module_attr("keras.src.backend:get_keras_mask")(x)


def set_keras_mask(x, mask):
    """Attach `mask` to `x` as Keras does (losses and layers read it back)."""
    _module_attr("keras.src.backend:set_keras_mask")(x, mask)


def get_keras_logits(x):
    """The logits Keras attaches to sigmoid/softmax outputs (``_keras_logits``), or None."""
    return getattr(x, "_keras_logits", None)


def reduce_to_samplewise_values(values, sample_weight, reduce_fn, dtype):
    """Keras's broadcasting of sample weights to per-sample values (metrics)."""
    fn = _module_attr("keras.src.metrics.reduction_metrics:reduce_to_samplewise_values")
    return fn(values, sample_weight, reduce_fn, dtype)


def optimizer_variable_index(optimizer, variable):
    """Index of `variable` in the optimizer's slot lists (Keras's private index)."""
    return optimizer._get_variable_index(variable)


def optimizer_variable_key(optimizer, variable):
    """The key under which the optimizer indexes `variable`."""
    return optimizer._var_key(variable)


def optimizer_trainable_variables(optimizer):
    """The variables the optimizer was built with."""
    return optimizer._trainable_variables


def key_as(obj, key):
    """Make the optimizer index `obj` under `key` (Keras's TF optimizer reads ``_unique_id``)."""
    obj._unique_id = key


def optimizer_distribution_strategy(optimizer):
    """The tf.distribute strategy Keras's TF optimizer captured at construction."""
    return optimizer._distribution_strategy


def optimizer_ema_variables(optimizer):
    """The optimizer's EMA copies of the model variables (``use_ema=True``), in build order."""
    return optimizer._model_variables_moving_average


def optimizer_own_variables(optimizer):
    """The optimizer's tracked variable list (a mutable list; order is the save order)."""
    return optimizer._variables


def overwrite_with_gradient(variable):
    """Whether Keras overwrites `variable` with its "gradient" (float8 scales)."""
    return bool(getattr(variable, "overwrite_with_gradient", False))


def check_touchpoints():
    """The touchpoints missing from the installed Keras: a list of messages (empty: all there)."""
    missing = []
    for kind, target, used_by in TOUCHPOINTS:
        try:
            if kind == "module_attr":
                _module_attr(target)
            elif kind == "layer_attr":
                path, attr = target.rsplit(".", 1)
                module, cls = path.rsplit(".", 1)
                klass = getattr(importlib.import_module(module), cls)
                layer = klass(lambda x: x) if cls == "Lambda" else klass(1)
                getattr(layer, attr)
            elif kind == "instance_attr":
                path, attr = target.rsplit(".", 1)
                module, cls = path.rsplit(".", 1)
                instance = getattr(importlib.import_module(module), cls)()
                instance.build([keras.Variable(1.0)])
                getattr(instance, attr)
            else:
                path, attr = target.rsplit(".", 1)
                module, cls = path.rsplit(".", 1)
                getattr(getattr(importlib.import_module(module), cls), attr)
        except (ImportError, AttributeError) as err:
            missing.append(f"{target} (used by safeops {used_by}) is gone from Keras "
                           f"{keras.__version__}: {err}")
    return missing


def keras_loss_scale_init_code():
    """The code object of Keras's `LossScaleOptimizer.__init__` (its frame is recognised)."""
    return inspect.unwrap(keras.optimizers.LossScaleOptimizer.__init__).__code__


def keras_compile_code():
    """The code object of Keras's `Trainer.compile` body (under its decorators)."""
    trainer = importlib.import_module("keras.src.trainers.trainer")
    return inspect.unwrap(trainer.Trainer.compile).__code__

