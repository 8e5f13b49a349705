"""`quantize_model`: quantization-aware training (QAT) for Keras 3 models.

The returned model is a copy of the float model (rewritten by Keras's own
cloning, `safeops._core.rewrite`: op nodes, masks, shared layers and nested
models come along) in which every supported layer -- Dense, Conv1D, Conv2D,
DepthwiseConv2D, Add, Concatenate, ReLU, Activation, and any layer given a
`QuantizeConfig` --
is wrapped in a `QuantizeWrapper`: weights are fake-quantized per output
channel on every call, the layer's output (after a fused relu/relu6/linear
activation, before a softmax/sigmoid/tanh one) goes through a
`MovingAverageQuantizer`, and model inputs feeding a wrapped layer are
quantized too. A BatchNormalization that directly follows a Conv/Dense with a
linear activation is folded into it. Everything else stays float and is listed
in the model's report (`quantization_report(model)`).
"""

import dataclasses
import warnings
from typing import List, Tuple

import keras
import tensorflow as tf

from safeops._core import rewrite as _rewrite
from safeops._core.registry import new
from safeops.quantization.fake_quant import MovingAverageQuantizer, _check_bits, _quantize_weight

__all__ = ["QuantizationReport", "QuantizeConfig", "QuantizeWrapper", "calibrate",
           "quantization_report", "quantize_model"]

_OP = "safeops.quantization.quantize_model"
_KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                  keras.layers.DepthwiseConv2D)
_MERGE_LAYERS = (keras.layers.Add, keras.layers.Concatenate)
# standalone activations: their output gets its own range (else a Conv -> BatchNorm -> ReLU
# chain leaves the ReLU between a DEQUANTIZE and a QUANTIZE, in float)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation)
_FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
_EXPORTING = [False]  # set by export_tflite while the converter traces the model


@new("how a custom layer is quantized by quantize_model: which weight attributes are "
     "fake-quantized, along which channel axis, and whether its output is quantized")
@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """How `quantize_model` quantizes a layer class it does not know.

    Give it to `quantize_model` as ``quantize_configs={MyLayer: QuantizeConfig(
    weights=("w",))}``: each instance of ``MyLayer`` is wrapped in a
    `QuantizeWrapper` which, on every call, replaces the attributes named in
    `weights` with their fake-quantized values (symmetric per-channel int8 by
    default, straight-through gradient to the float variable), calls the
    layer, restores the attributes, and quantizes the output with a
    `MovingAverageQuantizer`. The layer's ``call`` must read its weights
    through those attributes (``self.w``), as layers that create them in
    ``build`` with ``self.w = self.add_weight(...)`` do.

    Args:
      weights: names of the attributes holding the weights to quantize.
      channel_axis: the output-channel axis of those weights (per-channel
        ranges), default -1.
      quantize_output: quantize the layer's output (default True).

    Raises:
      TypeError: ``weights`` is not a sequence of attribute names.
    """

    weights: Tuple[str, ...] = ()
    channel_axis: int = -1
    quantize_output: bool = True

    def __post_init__(self):
        names = (self.weights,) if isinstance(self.weights, str) else self.weights
        if not all(isinstance(n, str) for n in names):
            raise TypeError("safeops.quantization.QuantizeConfig: argument 'weights' must be a "
                            f"sequence of attribute names; got {self.weights!r}")
        object.__setattr__(self, "weights", tuple(names))

    def get_config(self):
        return {"weights": list(self.weights), "channel_axis": self.channel_axis,
                "quantize_output": self.quantize_output}


def _supported(layer):
    return type(layer) in _KERNEL_LAYERS + _MERGE_LAYERS + _ACTIVATION_LAYERS


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    return getattr(act, "__name__", str(act))


def _channel_scale(layer, bn, dtype):
    """Per-output-channel ``gamma / sqrt(var + eps)`` and shift ``beta - mean * scale`` of `bn`."""
    var = tf.cast(bn.moving_variance, dtype)
    scale = tf.math.rsqrt(var + tf.constant(bn.epsilon, dtype))
    if bn.gamma is not None:
        scale = scale * tf.cast(bn.gamma, dtype)
    shift = -tf.cast(bn.moving_mean, dtype) * scale
    if bn.beta is not None:
        shift = shift + tf.cast(bn.beta, dtype)
    return scale, shift


def folded_kernel_and_bias(wrapper):
    """The float kernel and bias a `QuantizeWrapper` computes with (BatchNormalization folded).

    Folding (Jacob et al. 2018, sec. 3.2): ``w' = w * s`` per output channel,
    ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``; the
    normalization then costs nothing at inference and the int8 kernel is the
    folded one. Returns ``(kernel, bias or None)`` as float tensors.
    """
    layer, bn = wrapper.layer, wrapper.batch_norm
    kernel = tf.convert_to_tensor(layer.kernel)
    bias = tf.convert_to_tensor(layer.bias) if layer.use_bias else None
    if bn is None:
        return kernel, bias
    scale, shift = _channel_scale(layer, bn, kernel.dtype)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel * tf.reshape(scale, kernel.shape[2:])
    else:
        kernel = kernel * scale
    bias = shift if bias is None else bias * scale + shift
    return kernel, bias


def quantized_kernel(wrapper, kernel):
    """`kernel` fake-quantized as the wrapper does (per output channel; depthwise: in * mult)."""
    if isinstance(wrapper.layer, keras.layers.DepthwiseConv2D):
        shape = tf.shape(kernel)
        flat = tf.reshape(kernel, tf.concat([shape[:2], [-1]], 0))
        return tf.reshape(_quantize_weight(flat, wrapper.weight_bits, wrapper.per_channel,
                                           wrapper.symmetric_weights, fuse=not _EXPORTING[0]),
                          shape)
    return _quantize_weight(kernel, wrapper.weight_bits, wrapper.per_channel,
                            wrapper.symmetric_weights, fuse=not _EXPORTING[0])


@new("a Keras wrapper that fake-quantizes one layer's weights (BatchNormalization folded in) "
     "and output for quantization-aware training")
@keras.saving.register_keras_serializable(package="safeops")
class QuantizeWrapper(keras.layers.Wrapper):
    """Fake quantization around one kernel, merge, activation or configured custom layer.

    Kernel layers: the kernel -- with a following BatchNormalization folded
    in (``batch_norm``; `folded_kernel_and_bias`) -- is fake-quantized on
    every call (per output channel or per tensor, symmetric on the narrow
    grid or asymmetric) with the range of its current values; the bias stays
    float (TFLite stores it as int32 at scale ``s_in * s_w``). The folded
    normalization uses its moving statistics (frozen during QAT; gamma and
    beta train through the fold), so training and the int8 export compute the
    same function. The output is quantized by a `MovingAverageQuantizer`
    after a relu/relu6/linear activation (as TFLite fuses them) or before a
    softmax/sigmoid/tanh (whose int8 kernels use fixed output ranges). Merge
    layers: each input and the output are quantized. Activation layers (ReLU,
    Activation): the output is quantized. Custom layers
    (``quantize_config``): the named weight attributes are fake-quantized
    for the call. All gradients are straight-through (see `fake_quant`).

    Args:
      layer: the float layer (its weights are used as they are).
      weight_bits: int in 2..16.
      activation_bits: int in 2..16, or None to leave activations float.
      per_channel: one weight range per output channel.
      symmetric_weights: symmetric weight ranges with zero point 0.
      ema_decay: decay of the activation-range moving average.
      batch_norm: a BatchNormalization (axis -1) applied to this layer's
        output, folded into its kernel (kernel layers with a linear
        activation only).
      quantize_config: a `QuantizeConfig` (or its dict) for a layer of
        another class.
      **kwargs: standard layer arguments (name).

    Raises:
      TypeError: the layer type is not supported and has no quantize_config;
        batch_norm given for a layer it cannot be folded into.
      ValueError: bits outside 2..16.
    """

    def __init__(self, layer, weight_bits=8, activation_bits=8, per_channel=True,
                 symmetric_weights=True, ema_decay=0.99, batch_norm=None, quantize_config=None,
                 **kwargs):
        op = "safeops.quantization.QuantizeWrapper"
        if isinstance(quantize_config, dict):
            quantize_config = QuantizeConfig(**quantize_config)
        if quantize_config is None and not _supported(layer):
            raise TypeError(f"{op}: argument 'layer' must be Dense, Conv1D, Conv2D, "
                            "DepthwiseConv2D, Add, Concatenate, ReLU or Activation, or come with a "
                            f"quantize_config; got {type(layer).__name__}")
        if isinstance(batch_norm, dict):
            batch_norm = keras.saving.deserialize_keras_object(batch_norm)
        if batch_norm is not None and (not isinstance(layer, _KERNEL_LAYERS)
                                       or _activation_name(layer) != "linear"):
            raise TypeError(f"{op}: argument 'batch_norm' can only be folded into a Dense/Conv "
                            f"layer with a linear activation; got {type(layer).__name__} with "
                            f"activation {_activation_name(layer)!r}")
        super().__init__(layer, **kwargs)
        self.weight_bits = _check_bits(op, "weight_bits", weight_bits)
        if activation_bits is not None:
            _check_bits(op, "activation_bits", activation_bits)
        self.activation_bits = activation_bits
        self.per_channel = bool(per_channel)
        self.symmetric_weights = bool(symmetric_weights)
        self.ema_decay = float(ema_decay)
        self.batch_norm = batch_norm
        self.quantize_config = quantize_config
        self._is_merge = isinstance(layer, _MERGE_LAYERS) and quantize_config is None
        self._is_activation = isinstance(layer, _ACTIVATION_LAYERS) and quantize_config is None
        self.output_quantizer = None
        if activation_bits is not None and (quantize_config is None
                                            or quantize_config.quantize_output):
            self.output_quantizer = MovingAverageQuantizer(
                activation_bits, ema_decay, name=f"{self.name}_out", dtype=layer.dtype_policy)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.quantize_config is not None:
            missing = [n for n in self.quantize_config.weights
                       if getattr(self.layer, n, None) is None]
            if missing:
                raise ValueError(f"safeops.quantization.QuantizeWrapper: layer '{self.layer.name}' "
                                 f"({type(self.layer).__name__}) has no weight attribute "
                                 f"{missing[0]!r} named in its QuantizeConfig")
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(self.layer.compute_output_shape(input_shape))
        self.input_quantizers = []
        if self._is_merge and self.activation_bits is not None:
            self.input_quantizers = [
                MovingAverageQuantizer(self.activation_bits, self.ema_decay,
                                       name=f"{self.name}_in{i}")
                for i in range(len(input_shape))]
            for q, s in zip(self.input_quantizers, input_shape):
                q.build(s)
        if self.output_quantizer is not None:
            self.output_quantizer.build(None)
        self.built = True

    def _kernel_output(self, x):
        layer = self.layer
        if isinstance(layer, keras.layers.Dense) and _EXPORTING[0] and self.per_channel:
            # TFLite's converter rejects per-channel fake quant on FullyConnected (its
            # kernel is transposed); export the already-quantized kernel as a constant.
            with tf.init_scope():
                kernel, bias = folded_kernel_and_bias(self)
                qk = quantized_kernel(self, kernel)
        else:
            kernel, bias = folded_kernel_and_bias(self)
            qk = quantized_kernel(self, kernel)
        qk = tf.cast(qk, x.dtype)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            y = keras.ops.depthwise_conv(x, qk, strides=layer.strides, padding=layer.padding,
                                         dilation_rate=layer.dilation_rate,
                                         data_format=layer.data_format)
        elif isinstance(layer, keras.layers.Dense):
            y = keras.ops.matmul(x, qk)
        else:
            y = layer.convolution_op(x, qk)
        if bias is not None:
            bias = tf.cast(bias, y.dtype)
            if getattr(layer, "data_format", "channels_last") == "channels_first":
                rank = y.shape.rank
                y = y + tf.reshape(bias, [1, -1] + [1] * (rank - 2))
            else:  # BiasAdd: its gradient is one BiasAddGrad, not a broadcast Sum + Reshape
                y = tf.nn.bias_add(y, bias)
        return y

    def _custom_output(self, inputs, training):
        config, layer = self.quantize_config, self.layer
        originals = {}
        for name in config.weights:
            w = getattr(layer, name, None)
            if w is None:
                raise ValueError(f"safeops.quantization.QuantizeWrapper: layer '{layer.name}' "
                                 f"({type(layer).__name__}) has no weight attribute {name!r} "
                                 "named in its QuantizeConfig")
            originals[name] = w
        try:
            for name, w in originals.items():
                q = _quantize_weight(tf.convert_to_tensor(w), self.weight_bits, self.per_channel,
                                     self.symmetric_weights, channel_axis=config.channel_axis,
                                     fuse=not _EXPORTING[0])
                object.__setattr__(layer, name, q)  # bypass tracking: restored below
            y = layer.call(inputs) if not _accepts_training(layer) else \
                layer.call(inputs, training=training)
        finally:
            for name, w in originals.items():
                object.__setattr__(layer, name, w)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        return y

    def call(self, inputs, training=None):
        if self.quantize_config is not None:
            return self._custom_output(inputs, training)
        if self._is_activation:
            y = self.layer(inputs)
            return y if self.output_quantizer is None else self.output_quantizer(
                y, training=training)
        if self._is_merge:
            if self.input_quantizers:
                inputs = [q(x, training=training) for q, x in zip(self.input_quantizers, inputs)]
            y = self.layer(inputs)
            if self.output_quantizer is not None:
                y = self.output_quantizer(y, training=training)
            return y
        y = self._kernel_output(inputs)
        fused = _activation_name(self.layer) in _FUSED_ACTIVATIONS
        if fused:
            y = self.layer.activation(y) if self.layer.activation is not None else y
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        if not fused:
            y = self.layer.activation(y)
        return y

    def compute_output_shape(self, input_shape):
        if self.quantize_config is not None:  # a user's layer may only define call()
            spec = self.layer.compute_output_spec(
                keras.KerasTensor(input_shape, dtype=self.layer.compute_dtype))
            return spec.shape
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                      per_channel=self.per_channel, symmetric_weights=self.symmetric_weights,
                      ema_decay=self.ema_decay,
                      batch_norm=(keras.saving.serialize_keras_object(self.batch_norm)
                                  if self.batch_norm is not None else None),
                      quantize_config=(self.quantize_config.get_config()
                                       if self.quantize_config is not None else None))
        return config


def _accepts_training(layer):
    import inspect
    return "training" in inspect.signature(layer.call).parameters


@new("what quantize_model did: quantized layers, folded normalizations, float layers with the "
     "reason, warnings")
@dataclasses.dataclass
class QuantizationReport:
    """What `quantize_model` did: quantized layers, folded normalizations, float layers and why.

    Made by `quantization_report`; ``str(report)`` is a Markdown table.

    Args:  (each is also an attribute)
      quantized: ``[(layer name, layer class)]`` of wrapped layers
        (``"Conv2D+BatchNormalization"`` where a normalization is folded in).
      float_layers: ``[(layer name, layer class, reason)]`` of layers left float.
      warnings: messages (e.g. a layer filter that matched nothing).
      settings: the bit widths and options used.
    """

    quantized: List[Tuple[str, str]]
    float_layers: List[Tuple[str, str, str]]
    warnings: List[str]
    settings: dict

    def __str__(self):
        lines = [f"quantization report ({', '.join(f'{k}={v}' for k, v in self.settings.items())})",
                 "| layer | type | status |", "|---|---|---|"]
        lines += [f"| {n} | {c} | quantized{' (BatchNormalization folded)' if '+' in c else ''} |"
                  for n, c in self.quantized]
        lines += [f"| {n} | {c} | float: {r} |" for n, c, r in self.float_layers]
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _float_reason(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return ("not folded: its input is not the only use of a quantized Dense/Conv with a "
                "linear activation; runs in float during QAT (the converter quantizes it as "
                "MUL/ADD)")
    if not layer.weights:
        return "no weights (its output keeps its input's quantization or is calibrated at export)"
    return (f"{type(layer).__name__} is not supported by quantize_model (give its class a "
            "QuantizeConfig through quantize_configs)")


def _walk(model, prefix=""):
    for layer in model.layers:
        if _rewrite.is_graph_model(layer):
            yield from _walk(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


@new("the QuantizationReport of a model from quantize_model, also after .keras reload")
def quantization_report(model):
    """The `QuantizationReport` of a model made by `quantize_model` (also after `.keras` reload).

    Args:
      model: a Keras model returned by `quantize_model` (or reloaded from `.keras`).

    Returns:
      A `QuantizationReport`; ``str(report)`` is a Markdown table.

    Raises:
      TypeError: ``model`` is not a Keras model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError("safeops.quantization.quantization_report: argument 'model' must be a "
                        f"Keras model; got {type(model).__name__}")
    quantized, float_layers, settings = [], [], {}
    for name, layer in _walk(model):
        if isinstance(layer, QuantizeWrapper):
            kind = type(layer.layer).__name__
            if layer.batch_norm is not None:
                kind += "+BatchNormalization"
            quantized.append((name, kind))
            settings = dict(weight_bits=layer.weight_bits, activation_bits=layer.activation_bits,
                            per_channel=layer.per_channel,
                            symmetric_weights=layer.symmetric_weights)
        elif isinstance(layer, (keras.layers.InputLayer, MovingAverageQuantizer)):
            continue
        else:
            float_layers.append((name, type(layer).__name__, _float_reason(layer)))
    stored = getattr(model, "_safeops_quantization_warnings", None)
    return QuantizationReport(quantized, float_layers, list(stored or []), settings)


def foldable_pairs(model):
    """``{id(kernel layer): batch norm}`` for each BatchNormalization (last axis) whose only
    input is the only use of a Dense/Conv layer with a linear activation, in every graph of
    `model` (nested models included)."""
    pairs = {}
    models = [model] + [layer for _, layer in _walk_models(model)]
    for m in models:
        for layer in m.layers:
            if not isinstance(layer, keras.layers.BatchNormalization):  # StableBatchNorm too
                continue
            if layer.axis not in (-1, len(layer.input.shape) - 1) or layer.renorm:
                continue
            if len(layer._inbound_nodes) != 1:
                continue
            history = getattr(layer.input, "_keras_history", None)
            producer = getattr(history, "operation", None)
            if not isinstance(producer, _KERNEL_LAYERS) or _activation_name(producer) != "linear":
                continue
            if len(producer._inbound_nodes) != 1 or len(producer._outbound_nodes) != 1:
                continue
            if getattr(producer, "data_format", "channels_last") != "channels_last":
                continue
            pairs[id(producer)] = layer
    return pairs


def _walk_models(model):
    for layer in model.layers:
        if _rewrite.is_graph_model(layer):
            yield layer.name, layer
            yield from _walk_models(layer)


def _normalize_configs(quantize_configs):
    if quantize_configs is None:
        return {}
    if not isinstance(quantize_configs, dict):
        raise TypeError(f"{_OP}: argument 'quantize_configs' must be a dict {{layer class: "
                        f"QuantizeConfig}}; got {type(quantize_configs).__name__}")
    out = {}
    for key, config in quantize_configs.items():
        if isinstance(config, dict):
            config = QuantizeConfig(**config)
        if not isinstance(config, QuantizeConfig):
            raise TypeError(f"{_OP}: argument 'quantize_configs' must map layer classes to "
                            f"QuantizeConfig; got {type(config).__name__} for {key!r}")
        out[key] = config
    return out


def _config_for(layer, configs):
    for cls in type(layer).__mro__:
        if cls in configs:
            return configs[cls]
        if cls.__name__ in configs:
            return configs[cls.__name__]
    return None


@new("quantization-aware-training copy of a Keras 3 model (tfmot's quantize_model accepts only"
     " tf_keras models); BatchNormalization folded; custom layers through QuantizeConfig")
def quantize_model(model, *, weight_bits=8, activation_bits=8, per_channel=True,
                   symmetric_weights=True, layer_filter=None, ema_decay=0.99,
                   fold_batch_norm=True, quantize_configs=None):
    """A quantization-aware-training copy of a Keras 3 Sequential or Functional model.

    Replaces `tfmot.quantization.keras.quantize_model`, which accepts only
    tf_keras models (a tf_keras model passed here is handed to it; see
    `safeops.quantization.legacy`).

    Method: the model is rewritten by Keras's own cloning (every node of the
    graph is replayed: op nodes such as ``x + y`` and ``keras.ops.*``, masks,
    shared layers, nested models, several inputs and outputs) with each
    Dense, Conv1D, Conv2D and DepthwiseConv2D (with its activation), Add,
    Concatenate, ReLU, Activation and each layer whose class has a
    `QuantizeConfig` wrapped in a
    `QuantizeWrapper`, and each model input feeding a wrapped layer followed
    by a `MovingAverageQuantizer`; the float weights are copied over. A
    BatchNormalization (last axis) that is the only use of a Dense/Conv with a
    linear activation is folded into it (``fold_batch_norm``): its node is
    removed from the graph and the wrapper computes with the folded kernel and
    bias, so QAT trains the kernel the int8 model will hold and the export has
    one CONV_2D where the float model had conv, MUL and ADD. Weights are
    fake-quantized per output channel (``per_channel``), symmetric on the
    narrow grid by default; activation ranges follow an exponential moving
    average of the batch range during `fit` and are frozen at inference. The
    result is a Functional model (a Sequential input gives a Functional output
    with the same layers) that trains with `fit`, saves/loads as `.keras` and
    runs in `tf.function`.

    Error bound: each fake-quantized weight is within ``scale / 2`` of its float
    value, ``scale = 2 max|w_c| / (2**weight_bits - 2)`` per channel ``c``
    (symmetric); each activation inside its range within ``(max - min) /
    (2 (2**activation_bits - 1))``.

    Gradient: straight-through: identity for the weights, identity inside the
    activation range and 0 outside (clipped), as TF's FakeQuant gradients.

    dtypes: layers with float16/bfloat16/float32 compute dtypes; fake
    quantization runs in float32 and is cast back to the layer's dtype.

    The report (`QuantizationReport`: quantized layers, folded normalizations,
    float layers with the reason, warnings) is returned by
    ``quantization_report(qmodel)`` and is also stored as the attribute
    ``qmodel.quantization_report_`` right after the call.

    Args:
      model: a built Keras 3 Sequential or Functional model (or a tf_keras one).
      weight_bits: int in 2..16.
      activation_bits: int in 2..16, or None for weight-only quantization.
      per_channel: per-output-channel weight ranges (False: one per tensor).
      symmetric_weights: symmetric weight ranges (zero point 0, as TFLite int8).
      layer_filter: None (all supported layers) or a callable ``layer -> bool``
        choosing which supported layers to quantize. If it chooses none, the
        report carries a warning (and a `UserWarning` is emitted).
      ema_decay: decay of the activation-range moving average, in [0, 1).
      fold_batch_norm: fold BatchNormalization into the preceding Dense/Conv.
      quantize_configs: ``{layer class (or class name): QuantizeConfig}``:
        how to quantize layers of classes quantize_model does not know.

    Returns:
      A new Keras model; the input model is unchanged.

    Raises:
      TypeError: unsupported model type (subclassed model), a non-callable
        ``layer_filter`` or a bad ``quantize_configs``.
      ValueError: bits outside 2..16, a model without input shape, or a layer
        that cannot be rebuilt from its config (the message names it).

    Example:
      >>> qmodel = so.quantization.quantize_model(model)
      >>> qmodel.compile("adam", "sparse_categorical_crossentropy"); qmodel.fit(x, y)
      >>> print(so.quantization.quantization_report(qmodel))
    """
    _check_bits(_OP, "weight_bits", weight_bits)
    if activation_bits is not None:
        _check_bits(_OP, "activation_bits", activation_bits)
    if layer_filter is not None and not callable(layer_filter):
        raise TypeError(f"{_OP}: argument 'layer_filter' must be None or a callable "
                        f"layer -> bool; got {type(layer_filter).__name__}")
    configs = _normalize_configs(quantize_configs)
    if not isinstance(model, keras.Model) and any(
            c.__module__.startswith("tf_keras") for c in type(model).__mro__):
        from safeops.quantization.legacy import quantize_legacy_model
        return quantize_legacy_model(model)
    _rewrite.check_model(model, _OP)
    if not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"{_OP}: argument 'ema_decay' must be in [0, 1); got {ema_decay}")

    options = dict(weight_bits=weight_bits, activation_bits=activation_bits,
                   per_channel=per_channel, symmetric_weights=symmetric_weights,
                   ema_decay=ema_decay)

    def chosen(layer):
        if not (_supported(layer) or _config_for(layer, configs) is not None):
            return False
        return layer_filter is None or bool(layer_filter(layer))

    folds = {}
    if fold_batch_norm:
        folds = foldable_pairs(model)
    folded_bn = {}  # id(original bn) -> its clone, held by the wrapper
    n_chosen = [0]
    input_quantizers = {}

    def replace(layer, path):
        if isinstance(layer, keras.layers.InputLayer) or not chosen(layer):
            if id(layer) in folded_bn:
                return folded_bn[id(layer)]
            return None
        n_chosen[0] += 1
        inner = _rewrite.rebuild(layer, _OP)
        config = None if _supported(layer) else _config_for(layer, configs)
        bn = None
        if id(layer) in folds and config is None:
            bn = _rewrite.rebuild(folds[id(layer)], _OP)
            folded_bn[id(folds[id(layer)])] = bn
        return QuantizeWrapper(inner, name=f"quant_{layer.name}", batch_norm=bn,
                               quantize_config=config, **options)

    def quantize_inputs(args):
        if activation_bits is None:
            return args

        def q(t):
            hist = getattr(t, "_keras_history", None)
            if hist is None or not isinstance(hist.operation, keras.layers.InputLayer):
                return t
            if "float" not in str(t.dtype):
                return t
            if id(t) not in input_quantizers:
                input_quantizers[id(t)] = MovingAverageQuantizer(
                    activation_bits, ema_decay, name=f"quant_input_{len(input_quantizers)}")(t)
            return input_quantizers[id(t)]

        return tf.nest.map_structure(q, args)

    def call(layer, *args, **kwargs):
        if any(layer is bn for bn in folded_bn.values()):
            return args[0]  # folded into the preceding wrapper
        if isinstance(layer, QuantizeWrapper):
            args = quantize_inputs(args)
        return layer(*args, **kwargs)

    qmodel, pairs = _rewrite.rewrite(model, replace, op=_OP, call_function=call,
                                     swap_sublayers=False)
    for old, fresh, _ in pairs:
        if isinstance(fresh, QuantizeWrapper):
            _rewrite.copy_weights(old, fresh.layer, _OP)
        else:
            _rewrite.copy_weights(old, fresh, _OP)
    report_warnings = []
    if not n_chosen[0]:
        msg = ("layer_filter matched no supported layer: nothing is quantized"
               if layer_filter is not None else "the model has no supported layer to quantize")
        report_warnings.append(msg)
        warnings.warn(f"{_OP}: {msg}", UserWarning, stacklevel=2)
    qmodel._safeops_quantization_warnings = report_warnings
    qmodel.quantization_report_ = quantization_report(qmodel)
    return qmodel


@new("sets a quantized model's activation ranges from data without training (post-training "
     "quantization)")
def calibrate(model, data, *, batch_size=64, steps=None):
    """Set a quantized model's activation ranges from data without training (post-training).

    Runs the model forward with ``training=True`` so that every
    `MovingAverageQuantizer` updates its range; the weights are not changed
    (no optimizer step; note that other training-mode layers, e.g. Dropout,
    also run in training mode and BatchNormalization updates its statistics).

    Args:
      model: a model from `quantize_model`.
      data: a NumPy array of inputs, or an iterable of input batches.
      batch_size: batch size for a NumPy array.
      steps: at most this many batches (None: all).

    Returns:
      ``model`` (its range variables updated).

    Raises:
      TypeError: ``model`` is not a Keras model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError("safeops.quantization.calibrate: argument 'model' must be a Keras "
                        f"model; got {type(model).__name__}")
    if hasattr(data, "shape"):
        batches = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        batches = iter(data)
    step = tf.function(lambda b: model(b, training=True))
    for k, batch in enumerate(batches):
        if steps is not None and k >= steps:
            break
        step(tf.convert_to_tensor(batch))
    return model
