"""`wrap_model`: swap every Keras layer, loss and metric that has a stable drop-in."""

import dataclasses
from typing import List

import keras

from safeops import layers as _layers
from safeops import losses as _losses
from safeops import metrics as _metrics
from safeops import mixed_precision as _mp
from safeops._core import rewrite as _rewrite
from safeops._core.registry import new

__all__ = ["WrapReport", "wrap_model"]

_OP = "safeops.wrap_model"

# Keras class -> safeops drop-in (exact classes: a user's subclass keeps its own call)
_SWAPS = {
    keras.layers.Softmax: _layers.StableSoftmax,
    keras.layers.LayerNormalization: _layers.StableLayerNormalization,
    keras.layers.RMSNormalization: _layers.StableRMSNormalization,
    keras.layers.GroupNormalization: _layers.StableGroupNormalization,
    keras.layers.BatchNormalization: _layers.StableBatchNormalization,
    keras.layers.UnitNormalization: _layers.StableUnitNormalization,
    keras.layers.MultiHeadAttention: _layers.StableMultiHeadAttention,
    keras.layers.GlobalAveragePooling1D: _layers.StableGlobalAveragePooling1D,
}

_LOSS_NAMES = {
    "binary_crossentropy": _losses.BinaryCrossentropy,
    "categorical_crossentropy": _losses.CategoricalCrossentropy,
    "sparse_categorical_crossentropy": _losses.SparseCategoricalCrossentropy,
}
_LOSS_CLASSES = {
    keras.losses.BinaryCrossentropy: _losses.BinaryCrossentropy,
    keras.losses.CategoricalCrossentropy: _losses.CategoricalCrossentropy,
    keras.losses.SparseCategoricalCrossentropy: _losses.SparseCategoricalCrossentropy,
}
_METRIC_CLASSES = {keras.metrics.Sum: _metrics.Sum, keras.metrics.Mean: _metrics.Mean}


@dataclasses.dataclass
class WrapReport:
    """What `wrap_model` replaced and what it kept, and why.

    Args:
      replaced: ``"path: Old -> New"`` lines, one per replaced layer,
        sublayer, activation, loss, metric or optimizer (``path`` is
        ``outer/inner`` for nested models and sublayers).
      kept: ``"path: Class (reason)"`` lines for every other layer and
        compiled object.
      mixed_precision: one line on loss scaling (empty when the model's
        policy is not mixed).
    """

    replaced: List[str] = dataclasses.field(default_factory=list)
    kept: List[str] = dataclasses.field(default_factory=list)
    mixed_precision: str = ""

    def __str__(self):
        lines = [f"replaced ({len(self.replaced)}):"] + [f"  {r}" for r in self.replaced]
        lines += [f"kept ({len(self.kept)}):"] + [f"  {k}" for k in self.kept]
        if self.mixed_precision:
            lines += ["mixed precision:", f"  {self.mixed_precision}"]
        return "\n".join(lines)


def _is_softmax_activation(fn):
    return fn is keras.activations.softmax or getattr(fn, "__name__", None) == "softmax"


def _kept_reason(layer, dense):
    cls = type(layer)
    if cls.__module__.startswith("safeops."):
        return "already a safeops layer"
    for original in _SWAPS:
        if isinstance(layer, original):
            return f"subclass of {original.__name__}: its own call is kept"
    if cls is keras.layers.Dense and not dense:
        return "dense=False (CompensatedDense on request)"
    if _rewrite.is_user_layer(layer):
        return "user layer: rebuilt from its config, sublayers offered for swapping"
    return "no stable drop-in"


def _swap_layer(layer, path, report, dense):
    """A new layer replacing `layer`, or None if it has no stable drop-in."""
    cls = type(layer)
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if cls in _SWAPS:
        new_cls = _SWAPS[cls]
        report.replaced.append(f"{path}: {cls.__name__} -> {new_cls.__name__}")
        return new_cls.from_config(layer.get_config())
    if cls is keras.layers.Activation and _is_softmax_activation(layer.activation):
        report.replaced.append(f"{path}: Activation('softmax') -> StableSoftmax")
        return _layers.StableSoftmax(axis=-1, name=layer.name, dtype=layer.dtype_policy,
                                     trainable=layer.trainable)
    config = None
    new_cls = cls
    if dense and cls is keras.layers.Dense:
        new_cls = _layers.CompensatedDense
        report.replaced.append(f"{path}: Dense -> CompensatedDense")
    if _is_softmax_activation(getattr(layer, "activation", None)) and "activation" in (
            config := layer.get_config()):
        config["activation"] = _layers.stable_softmax
        report.replaced.append(
            f"{path}: {cls.__name__}(activation='softmax') -> activation=stable_softmax")
    if new_cls is not cls or (config is not None
                              and config.get("activation") is _layers.stable_softmax):
        return new_cls.from_config(config if config is not None else layer.get_config())
    report.kept.append(f"{path}: {cls.__name__} ({_kept_reason(layer, dense)})")
    return None


def _swap_loss(loss, report):
    if isinstance(loss, str) and loss in _LOSS_NAMES:
        report.replaced.append(f"loss: {loss!r} -> safeops.losses.{_LOSS_NAMES[loss].__name__}")
        return _LOSS_NAMES[loss]()
    if type(loss) in _LOSS_CLASSES:
        new_cls = _LOSS_CLASSES[type(loss)]
        try:
            new_loss = new_cls.from_config(loss.get_config())
        except (TypeError, ValueError) as err:
            report.kept.append(f"loss: {type(loss).__name__} (config not supported: {err})")
            return loss
        report.replaced.append(f"loss: {type(loss).__name__} -> safeops.losses.{new_cls.__name__}")
        return new_loss
    if isinstance(loss, (list, tuple)):
        return type(loss)(_swap_loss(v, report) for v in loss)
    if isinstance(loss, dict):
        return {k: _swap_loss(v, report) for k, v in loss.items()}
    if loss is not None:
        report.kept.append(f"loss: {getattr(loss, 'name', loss)!r} (no stable drop-in)")
    return loss


def _swap_metric(metric, report):
    if type(metric) in _METRIC_CLASSES:
        new_cls = _METRIC_CLASSES[type(metric)]
        report.replaced.append(f"metric {metric.name}: {type(metric).__name__} -> "
                               f"safeops.metrics.{new_cls.__name__}")
        return new_cls.from_config(metric.get_config())
    if isinstance(metric, (list, tuple)):
        return [_swap_metric(m, report) for m in metric]
    if isinstance(metric, dict):
        return {k: _swap_metric(v, report) for k, v in metric.items()}
    if metric is not None:
        report.kept.append(f"metric: {getattr(metric, 'name', metric)!r} (no stable drop-in)")
    return metric


def _policy_name(model):
    return getattr(model.dtype_policy, "name", str(model.dtype_policy))


def _fresh_optimizer(opt):
    return type(opt).from_config(opt.get_config())


def _optimizer(old, cfg_opt, report):
    """The optimizer of the recompiled model: a fresh copy, with safeops's loss scaling where
    the original had Keras's (mixed_float16)."""
    compiled = old.optimizer
    policy = _policy_name(old)
    if isinstance(compiled, _mp.LossScaleOptimizer):
        inner_name = type(compiled.inner_optimizer).__name__
        report.kept.append(f"optimizer: safeops LossScaleOptimizer({inner_name}) (fresh copy, "
                           "no slot state)")
        report.mixed_precision = (f"{policy}: loss scaling by safeops.mixed_precision."
                                  "LossScaleOptimizer (kept)")
        return _mp.LossScaleOptimizer.from_config(compiled.get_config())
    if isinstance(compiled, keras.optimizers.LossScaleOptimizer):
        inner = _fresh_optimizer(compiled.inner_optimizer)
        report.replaced.append(
            f"optimizer: keras LossScaleOptimizer({type(inner).__name__}) -> "
            f"safeops.mixed_precision.LossScaleOptimizer({type(inner).__name__})")
        report.mixed_precision = (
            f"{policy}: loss scaling by safeops.mixed_precision.LossScaleOptimizer (a floor on "
            "the scale; Keras's halves to 0 after ~300 overflowing steps)")
        return _mp.LossScaleOptimizer(inner)
    if isinstance(cfg_opt, keras.optimizers.Optimizer):
        report.kept.append(f"optimizer: {type(cfg_opt).__name__} (fresh copy, no slot state)")
        return _fresh_optimizer(cfg_opt)
    return cfg_opt


def _recompile(old, new_model, report):
    cfg = dict(old._compile_config.config)
    cfg["optimizer"] = _optimizer(old, cfg.get("optimizer"), report)
    cfg["loss"] = _swap_loss(cfg.get("loss"), report)
    for key in ("metrics", "weighted_metrics"):
        if cfg.get(key) is not None:
            cfg[key] = _swap_metric(cfg[key], report)
    new_model.compile(**cfg)


def _mixed_note(model, report):
    if report.mixed_precision:
        return
    policy = _policy_name(model)
    if policy == "mixed_float16":
        report.mixed_precision = (
            f"{policy}: the model is not compiled; compile it with a so.optimizers optimizer "
            "(or so.mixed_precision.LossScaleOptimizer(<optimizer>)) for safeops's loss "
            "scaling (Keras wraps its own optimizers in its LossScaleOptimizer)")
    elif policy == "mixed_bfloat16":
        report.mixed_precision = f"{policy}: no loss scaling needed (bfloat16 has float32's range)"


def _unswapped_sublayers(layer, path, report):
    """Report swappable Keras layers a user's layer created in build() (too late to swap)."""
    for _, _, sub in _rewrite.sublayers(layer):
        sub_path = f"{path}/{sub.name}"
        if type(sub) in _SWAPS:
            report.kept.append(f"{sub_path}: {type(sub).__name__} (created in build() of "
                               f"'{layer.name}': create it in __init__ to have it swapped)")
        elif _rewrite.is_user_layer(sub):
            _unswapped_sublayers(sub, sub_path, report)


@new("rewrites a Sequential/Functional model with every stable drop-in layer, loss, metric and "
     "safeops's loss scaling; returns the copy and a report of every swap and every kept layer")
def wrap_model(model, dense=False):
    """A copy of a Functional/Sequential model with every stable drop-in swapped in.

    New function (Keras has none). Replaced (exact classes; a user's subclass
    keeps its call): `Softmax` -> `StableSoftmax`, ``Activation("softmax")``
    -> `StableSoftmax`, ``activation="softmax"`` inside any layer ->
    `so.layers.stable_softmax`, `LayerNormalization`, `RMSNormalization`,
    `GroupNormalization`, `BatchNormalization`, `UnitNormalization`,
    `MultiHeadAttention`, `GlobalAveragePooling1D` -> their ``Stable*``
    drop-ins, and with ``dense=True`` `Dense` -> `CompensatedDense`. These
    are swapped wherever they are: in the graph, in nested models, and held
    as attributes of a user's subclassed layer (created in its ``__init__``).
    Where the model is compiled it is recompiled with the same arguments, a
    fresh optimizer of the same config, Keras's cross-entropy losses replaced
    by `so.losses`' and `keras.metrics.Sum`/`Mean` by `so.metrics`'; under
    ``mixed_float16`` Keras's `LossScaleOptimizer` becomes
    `so.mixed_precision.LossScaleOptimizer` (a floor on the scale).

    Method: Keras's own cloning (`keras.models.clone_model` with a clone
    function; `safeops._core.rewrite`): every node is replayed -- op nodes
    (``x + y``, ``keras.ops.*``), mask nodes (``Embedding(mask_zero=True)``),
    shared layers (once), nested models, several inputs and outputs -- and the
    weights of every layer are copied from the original (each drop-in has its
    original's weights, in the same order). Trainability, dtype policies and
    masks carry over. The original model is not modified.

    Numerics: on ordinary inputs the outputs equal the original's within the
    original's own rounding error: each swapped layer is within a few ulp of
    its original's exact value (see each layer), so the model's outputs agree
    to ``~10 u`` relative per swapped layer on well-conditioned inputs (float32:
    ~1e-6 relative; the tests use 1e-5 for deep models). They stay finite
    where the originals give NaN: fully masked softmax rows and attention,
    all-padding sequences in average pooling, layer normalization of rows with
    a large ``|mean|/std``, unit normalization in float16. The softmax
    drop-ins carry their logits, so cross-entropy losses compute from them.

    Args:
      model: a built `keras.Sequential` or Functional `keras.Model`.
      dense: also replace `Dense` with `CompensatedDense` (default False: the
        compensated matmul costs more than the other swaps).

    Returns:
      ``(new_model, report)``: the new model (same class of model, same inputs
      and outputs, weights carried over) and a `WrapReport` listing every
      swap and every kept layer with its reason, and the loss scaling used.

    Raises:
      TypeError: `model` is a subclassed model (no functional graph) or not a
        Keras model.
      ValueError: (`safeops._core.rewrite.RewriteError`) a layer cannot be
        rebuilt from its config, or its weights cannot be carried over; the
        message names the layer and why.

    Example:
      >>> new, report = so.wrap_model(model)        # doctest: +SKIP
      >>> print(report)                              # doctest: +SKIP
      replaced (2):
        softmax: Softmax -> StableSoftmax
        layer_normalization: LayerNormalization -> StableLayerNormalization
    """
    _rewrite.check_model(model, _OP)
    report = WrapReport()

    def replace(layer, path):
        return _swap_layer(layer, path, report, dense)

    def persist(layer, swaps):
        return _layers.SwappedSublayers(layer, [
            {"path": chain, "class_name": keras.saving.get_registered_name(cls)}
            for chain, cls in swaps])

    new_model, pairs = _rewrite.rewrite(model, replace, op=_OP, on_swapped=persist)
    for old, fresh, path in pairs:
        _rewrite.copy_weights(old, fresh, _OP)
        inner = fresh.layer if isinstance(fresh, _layers.SwappedSublayers) else fresh
        if _rewrite.is_user_layer(inner):
            _unswapped_sublayers(inner, path, report)
    if getattr(model, "compiled", False) and hasattr(model, "_compile_config"):
        _recompile(model, new_model, report)
    _mixed_note(model, report)
    return new_model, report
