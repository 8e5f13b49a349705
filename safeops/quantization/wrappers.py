"""`quantize_model`: quantization-aware training (QAT) for Keras 3 models.

The returned model is a copy of the float model in which every supported layer
(Dense, Conv1D, Conv2D, DepthwiseConv2D, Add, Concatenate) is wrapped in a
`QuantizeWrapper`: weights are fake-quantized per output channel on every
call, the layer's output (after a fused relu/relu6/linear activation, before a
softmax/sigmoid/tanh one) goes through a `MovingAverageQuantizer`, and model
inputs feeding a wrapped layer are quantized too. Everything else stays float
and is listed in the model's report (`quantization_report(model)`).
"""

import dataclasses
import warnings
from typing import List, Tuple

import keras
import tensorflow as tf

from safeops.quantization.fake_quant import MovingAverageQuantizer, _check_bits, _quantize_weight

__all__ = ["QuantizationReport", "QuantizeWrapper", "calibrate", "quantization_report",
           "quantize_model"]

_OP = "safeops.quantization.quantize_model"
_KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                  keras.layers.DepthwiseConv2D)
_MERGE_LAYERS = (keras.layers.Add, keras.layers.Concatenate)
_FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
_EXPORTING = [False]  # set by export_tflite while the converter traces the model


def _supported(layer):
    return type(layer) in _KERNEL_LAYERS + _MERGE_LAYERS


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    return getattr(act, "__name__", str(act))


@keras.saving.register_keras_serializable(package="safeops")
class QuantizeWrapper(keras.layers.Wrapper):
    """Fake quantization around one Dense, Conv1D, Conv2D, DepthwiseConv2D, Add or Concatenate.

    Kernel layers: the kernel is fake-quantized on every call (per output
    channel or per tensor, symmetric on the narrow grid or asymmetric) with the
    range of its current values; the bias stays float (TFLite stores it as
    int32 at scale ``s_in * s_w``). The output is quantized by a
    `MovingAverageQuantizer` after a relu/relu6/linear activation (as TFLite
    fuses them) or before a softmax/sigmoid/tanh (whose int8 kernels use fixed
    output ranges). Merge layers: each input and the output are quantized.
    All gradients are straight-through (see `fake_quant`).

    Args:
      layer: the float layer (its weights are used as they are).
      weight_bits: int in 2..16.
      activation_bits: int in 2..16, or None to leave activations float.
      per_channel: one weight range per output channel.
      symmetric_weights: symmetric weight ranges with zero point 0.
      ema_decay: decay of the activation-range moving average.
      **kwargs: standard layer arguments (name).

    Raises:
      TypeError: the layer type is not supported.
      ValueError: bits outside 2..16.
    """

    def __init__(self, layer, weight_bits=8, activation_bits=8, per_channel=True,
                 symmetric_weights=True, ema_decay=0.99, **kwargs):
        if not _supported(layer):
            raise TypeError(f"safeops.quantization.QuantizeWrapper: argument 'layer' must be "
                            f"Dense, Conv1D, Conv2D, DepthwiseConv2D, Add or Concatenate; got "
                            f"{type(layer).__name__}")
        super().__init__(layer, **kwargs)
        self.weight_bits = _check_bits("safeops.quantization.QuantizeWrapper", "weight_bits",
                                       weight_bits)
        if activation_bits is not None:
            _check_bits("safeops.quantization.QuantizeWrapper", "activation_bits",
                        activation_bits)
        self.activation_bits = activation_bits
        self.per_channel = bool(per_channel)
        self.symmetric_weights = bool(symmetric_weights)
        self.ema_decay = float(ema_decay)
        self._is_merge = isinstance(layer, _MERGE_LAYERS)
        self.output_quantizer = None
        if activation_bits is not None:
            self.output_quantizer = MovingAverageQuantizer(
                activation_bits, ema_decay, name=f"{self.name}_out", dtype=layer.dtype_policy)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
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
        kernel = layer.kernel
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            shape = tf.shape(kernel)
            flat = tf.reshape(kernel, tf.concat([shape[:2], [-1]], 0))  # channel = in * mult
            qk = tf.reshape(_quantize_weight(flat, self.weight_bits, self.per_channel,
                                             self.symmetric_weights), shape)
            qk = tf.cast(qk, x.dtype)
            y = keras.ops.depthwise_conv(x, qk, strides=layer.strides, padding=layer.padding,
                                         dilation_rate=layer.dilation_rate,
                                         data_format=layer.data_format)
        else:
            if isinstance(layer, keras.layers.Dense) and _EXPORTING[0] and self.per_channel:
                # TFLite's converter rejects per-channel fake quant on FullyConnected (its
                # kernel is transposed); export the already-quantized kernel as a constant.
                with tf.init_scope():
                    qk = _quantize_weight(tf.convert_to_tensor(kernel), self.weight_bits,
                                          True, self.symmetric_weights)
            else:
                qk = _quantize_weight(kernel, self.weight_bits, self.per_channel,
                                      self.symmetric_weights)
            qk = tf.cast(qk, x.dtype)
            if isinstance(layer, keras.layers.Dense):
                y = keras.ops.matmul(x, qk)
            else:
                y = layer.convolution_op(x, qk)
        if layer.use_bias:
            bias = tf.cast(layer.bias, y.dtype)
            if getattr(layer, "data_format", "channels_last") == "channels_first":
                rank = y.shape.rank
                y = y + tf.reshape(bias, [1, -1] + [1] * (rank - 2))
            else:  # BiasAdd: its gradient is one BiasAddGrad, not a broadcast Sum + Reshape
                y = tf.nn.bias_add(y, bias)
        return y

    def call(self, inputs, training=None):
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
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                      per_channel=self.per_channel, symmetric_weights=self.symmetric_weights,
                      ema_decay=self.ema_decay)
        return config


@dataclasses.dataclass
class QuantizationReport:
    """What `quantize_model` did: quantized layers, float layers and why, warnings.

    Made by `quantization_report`; ``str(report)`` is a Markdown table.

    Args:  (each is also an attribute)
      quantized: ``[(layer name, layer class)]`` of wrapped layers.
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
        lines += [f"| {n} | {c} | quantized |" for n, c in self.quantized]
        lines += [f"| {n} | {c} | float: {r} |" for n, c, r in self.float_layers]
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _float_reason(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return ("BatchNormalization is not folded into the preceding convolution; it runs in "
                "float during QAT (the TFLite converter folds/quantizes it at export)")
    if isinstance(layer, keras.Model):
        return "nested model: not descended into"
    if not layer.weights:
        return "no weights (its output keeps its input's quantization or is calibrated at export)"
    return f"{type(layer).__name__} is not supported by quantize_model"


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
    for layer in model.layers:
        if isinstance(layer, QuantizeWrapper):
            quantized.append((layer.name, type(layer.layer).__name__))
            settings = dict(weight_bits=layer.weight_bits, activation_bits=layer.activation_bits,
                            per_channel=layer.per_channel,
                            symmetric_weights=layer.symmetric_weights)
        elif isinstance(layer, (keras.layers.InputLayer, MovingAverageQuantizer)):
            continue
        else:
            float_layers.append((layer.name, type(layer).__name__, _float_reason(layer)))
    stored = getattr(model, "_safeops_quantization_warnings", None)
    return QuantizationReport(quantized, float_layers, list(stored or []), settings)


def _check_model(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(f"{_OP}: the Sequential model has no known input shape; build it "
                             "(start it with keras.Input(shape)) before quantizing")
        return
    if isinstance(model, keras.Model) and hasattr(model, "_run_through_graph") and \
            getattr(model, "_operations", None) is not None and model.inputs:
        return
    raise TypeError(f"{_OP}: argument 'model' must be a Keras 3 Sequential or Functional model "
                    f"(or a tf_keras model, handed to tfmot); got {type(model).__module__}."
                    f"{type(model).__name__}, which has no functional graph (subclassed "
                    "models cannot be rewritten layer by layer)")


def quantize_model(model, *, weight_bits=8, activation_bits=8, per_channel=True,
                   symmetric_weights=True, layer_filter=None, ema_decay=0.99):
    """A quantization-aware-training copy of a Keras 3 Sequential or Functional model.

    Replaces `tfmot.quantization.keras.quantize_model`, which accepts only
    tf_keras models (a tf_keras model passed here is handed to it; see
    `safeops.quantization.legacy`).

    Method: the model's graph is rebuilt with each Dense, Conv1D, Conv2D and
    DepthwiseConv2D (with its activation), Add and Concatenate wrapped in a
    `QuantizeWrapper` and each model input feeding a wrapped layer followed by a
    `MovingAverageQuantizer`; the float weights are copied over. Weights are
    fake-quantized per output channel (``per_channel``), symmetric on the
    narrow grid by default; activation ranges follow an exponential moving
    average of the batch range during `fit` and are frozen at inference.
    BatchNormalization is NOT folded into the preceding convolution: it stays
    float and is listed in the report. The result is a Functional model (a
    Sequential input gives a Functional output with the same layers) that
    trains with `fit`, saves/loads as `.keras` and runs in `tf.function`.

    Error bound: each fake-quantized weight is within ``scale / 2`` of its float
    value, ``scale = 2 max|w_c| / (2**weight_bits - 2)`` per channel ``c``
    (symmetric); each activation inside its range within ``(max - min) /
    (2 (2**activation_bits - 1))``.

    Gradient: straight-through: identity for the weights, identity inside the
    activation range and 0 outside (clipped), as TF's FakeQuant gradients.

    dtypes: layers with float16/bfloat16/float32 compute dtypes; fake
    quantization runs in float32 and is cast back to the layer's dtype.

    The report (`QuantizationReport`: quantized layers, float layers with the
    reason, warnings) is returned by ``quantization_report(qmodel)`` and is
    also stored as the attribute ``qmodel.quantization_report_`` right after
    the call.

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

    Returns:
      A new Keras model; the input model is unchanged.

    Raises:
      TypeError: unsupported model type (subclassed model), or a non-callable
        ``layer_filter``.
      ValueError: bits outside 2..16, or a Sequential model without input shape.

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
    if not isinstance(model, keras.Model) and any(
            c.__module__.startswith("tf_keras") for c in type(model).__mro__):
        from safeops.quantization.legacy import quantize_legacy_model
        return quantize_legacy_model(model)
    _check_model(model)
    if not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"{_OP}: argument 'ema_decay' must be in [0, 1); got {ema_decay}")

    options = dict(weight_bits=weight_bits, activation_bits=activation_bits,
                   per_channel=per_channel, symmetric_weights=symmetric_weights,
                   ema_decay=ema_decay)
    chosen = set()
    for layer in model.layers:
        if _supported(layer) and (layer_filter is None or layer_filter(layer)):
            chosen.add(id(layer))
    report_warnings = []
    if not chosen:
        msg = ("layer_filter matched no supported layer: nothing is quantized"
               if layer_filter is not None else "the model has no supported layer to quantize")
        report_warnings.append(msg)
        warnings.warn(f"{_OP}: {msg}", UserWarning, stacklevel=2)

    pairs = []  # (original layer, new layer)
    input_quantizers = {}

    def clone(layer):
        new = layer.__class__.from_config(layer.get_config())
        if id(layer) in chosen:
            new = QuantizeWrapper(new, name=f"quant_{layer.name}", **options)
        pairs.append((layer, new))
        return new

    def quantize_inputs(args):
        if activation_bits is None:
            return args

        def q(t):
            hist = getattr(t, "_keras_history", None)
            if hist is None or not isinstance(hist.operation, keras.layers.InputLayer):
                return t
            if id(t) not in input_quantizers:
                input_quantizers[id(t)] = MovingAverageQuantizer(
                    activation_bits, ema_decay, name=f"quant_input_{len(input_quantizers)}")(t)
            return input_quantizers[id(t)]

        return tf.nest.map_structure(q, args)

    def call(layer, *args, **kwargs):
        if isinstance(layer, QuantizeWrapper):
            args = quantize_inputs(args)
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        x = inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype,
                                 name=model.inputs[0].name)
        for layer in model.layers:
            x = call(clone(layer), x)
        qmodel = keras.Model(inputs, x, name=f"{model.name}_quantized")
    else:
        qmodel = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for old, new in pairs:
        target = new.layer if isinstance(new, QuantizeWrapper) else new
        target.set_weights(old.get_weights())
    qmodel._safeops_quantization_warnings = report_warnings
    qmodel.quantization_report_ = quantization_report(qmodel)
    return qmodel


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
