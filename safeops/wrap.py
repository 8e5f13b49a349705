"""`wrap_model`: swap every Keras layer, loss and metric that has a stable drop-in."""

import dataclasses
from typing import List

import keras

from safeops import layers as _layers
from safeops import losses as _losses
from safeops import metrics as _metrics

__all__ = ["WrapReport", "wrap_model"]

_OP = "safeops.wrap_model"

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
    """What `wrap_model` replaced and what it kept.

    Args:
      replaced: ``"name: Old -> New"`` lines, one per replaced layer,
        activation, loss or metric.
      kept: ``"name: Class (reason)"`` lines for layers and compiled objects
        left as they were.
    """

    replaced: List[str] = dataclasses.field(default_factory=list)
    kept: List[str] = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"replaced ({len(self.replaced)}):"] + [f"  {r}" for r in self.replaced]
        lines += [f"kept ({len(self.kept)}):"] + [f"  {k}" for k in self.kept]
        return "\n".join(lines)


def _is_softmax_activation(fn):
    return fn is keras.activations.softmax or getattr(fn, "__name__", None) == "softmax"


def _swap_layer(layer, report, dense):
    """A new layer replacing `layer`, or None if it has no stable drop-in."""
    cls = type(layer)
    config = layer.get_config()
    if cls is keras.layers.Softmax:
        report.replaced.append(f"{layer.name}: Softmax -> StableSoftmax")
        return _layers.StableSoftmax.from_config(config)
    if cls is keras.layers.Activation and _is_softmax_activation(layer.activation):
        report.replaced.append(f"{layer.name}: Activation('softmax') -> StableSoftmax")
        return _layers.StableSoftmax(axis=-1, name=layer.name, dtype=layer.dtype_policy)
    if cls is keras.layers.LayerNormalization:
        report.replaced.append(f"{layer.name}: LayerNormalization -> StableLayerNormalization")
        return _layers.StableLayerNormalization.from_config(config)
    new_cls = cls
    if dense and cls is keras.layers.Dense:
        new_cls = _layers.CompensatedDense
        report.replaced.append(f"{layer.name}: Dense -> CompensatedDense")
    if _is_softmax_activation(getattr(layer, "activation", None)):
        config["activation"] = _layers.stable_softmax
        report.replaced.append(
            f"{layer.name}: {cls.__name__}(activation='softmax') -> activation=stable_softmax")
    if new_cls is not cls or config.get("activation") is _layers.stable_softmax:
        return new_cls.from_config(config)
    return None


def _swap_loss(loss, report):
    if isinstance(loss, str) and loss in _LOSS_NAMES:
        report.replaced.append(f"loss: {loss!r} -> safeops.losses.{_LOSS_NAMES[loss].__name__}")
        return _LOSS_NAMES[loss]()
    if type(loss) in _LOSS_CLASSES:
        new_cls = _LOSS_CLASSES[type(loss)]
        config = loss.get_config()
        try:
            new = new_cls.from_config(config)
        except (TypeError, ValueError) as err:
            report.kept.append(f"loss: {type(loss).__name__} (config not supported: {err})")
            return loss
        report.replaced.append(f"loss: {type(loss).__name__} -> safeops.losses.{new_cls.__name__}")
        return new
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


def _recompile(old, new, report):
    cfg = dict(getattr(old, "_compile_config").config)
    opt = cfg.get("optimizer")
    if isinstance(opt, keras.optimizers.Optimizer):
        cfg["optimizer"] = type(opt).from_config(opt.get_config())
        report.kept.append(f"optimizer: {type(opt).__name__} (fresh copy, no slot state)")
    cfg["loss"] = _swap_loss(cfg.get("loss"), report)
    for key in ("metrics", "weighted_metrics"):
        if cfg.get(key) is not None:
            cfg[key] = _swap_metric(cfg[key], report)
    new.compile(**cfg)


def wrap_model(model, dense=False):
    """A copy of a Functional/Sequential model with every stable drop-in swapped in.

    New function (Keras has none). Replaced: `keras.layers.Softmax` ->
    `StableSoftmax`, ``Activation("softmax")`` -> `StableSoftmax`,
    ``activation="softmax"`` inside any layer (Dense, Conv...) ->
    `so.layers.stable_softmax`, `keras.layers.LayerNormalization` ->
    `StableLayerNormalization`, and with ``dense=True`` `keras.layers.Dense`
    -> `CompensatedDense`. Where the model is compiled it is recompiled with
    the same arguments, a fresh optimizer of the same config, Keras's
    cross-entropy losses replaced by `so.losses`' and `keras.metrics.Sum`/`Mean`
    by `so.metrics`'. Nested Functional/Sequential models are walked too.

    Method: `keras.models.clone_model` with a clone function that builds the
    replacement from the layer's config, then the weights of every layer are
    copied from the original (every replacement keeps its weights' names and
    shapes). The original model is not modified.

    Numerics: the outputs equal the original's to within the original's own
    rounding error on ordinary inputs (for float32 typically <= 1e-6 relative;
    the replaced layers are more accurate, not different), and stay finite
    where the originals give NaN: fully masked (all -inf) softmax rows, layer
    normalization of rows with a large ``|mean|/std``. Gradients: those of the
    replacements (see each layer).

    Args:
      model: a `keras.Sequential` or Functional `keras.Model`.
      dense: also replace `Dense` with `CompensatedDense` (default False: the
        compensated matmul costs more than the other swaps).

    Returns:
      ``(new_model, report)``: the new model (same class of model, same inputs
      and outputs, weights carried over) and a `WrapReport` listing what was
      replaced and what was kept.

    Raises:
      TypeError: if `model` is a subclassed model (no functional graph) or not
        a Keras model: only Sequential and Functional models are supported.

    Example:
      >>> new, report = so.wrap_model(model)        # doctest: +SKIP
      >>> print(report)                              # doctest: +SKIP
      replaced (2):
        softmax: Softmax -> StableSoftmax
        layer_normalization: LayerNormalization -> StableLayerNormalization
    """
    from keras.src.models.functional import Functional

    if not isinstance(model, keras.Model):
        raise TypeError(f"{_OP}: argument 'model' must be a keras.Model (Sequential or "
                        f"Functional); got {type(model).__name__}")
    if not isinstance(model, (keras.Sequential, Functional)):
        raise TypeError(
            f"{_OP}: argument 'model' is a subclassed model ({type(model).__name__}) without a "
            "functional graph; only keras.Sequential and Functional models (built with "
            "keras.Input) are supported. Swap layers by hand: so.layers.StableSoftmax, "
            "so.layers.StableLayerNormalization, ...")
    report = WrapReport()
    pairs = []

    def clone(layer):
        if isinstance(layer, (keras.Sequential, Functional)):
            new, sub = wrap_model(layer, dense=dense)
            report.replaced.extend(f"{layer.name}/{r}" for r in sub.replaced)
            report.kept.extend(f"{layer.name}/{k}" for k in sub.kept)
            return new
        new = _swap_layer(layer, report, dense)
        if new is None:
            new = layer.__class__.from_config(layer.get_config())
            if not isinstance(layer, keras.layers.InputLayer) and layer.weights:
                report.kept.append(f"{layer.name}: {type(layer).__name__} (no stable drop-in)")
        pairs.append((layer, new))
        return new

    new_model = keras.models.clone_model(model, clone_function=clone)
    for old, new in pairs:
        if old.weights:
            new.set_weights(old.get_weights())
    if getattr(model, "compiled", False) and hasattr(model, "_compile_config"):
        _recompile(model, new_model, report)
    return new_model, report
