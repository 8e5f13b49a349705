"""`evaluate_quantization` and `cast_weights`: how far a quantized model is from its float reference."""

import dataclasses
import math
import warnings
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from safeops._core.registry import new
from safeops.quantization import wrappers
from safeops.quantization.fake_quant import _quantize_weight
from safeops.quantization.wrappers import QuantizeWrapper

__all__ = ["EvaluationReport", "cast_weights", "evaluate_quantization"]

_OP = "safeops.quantization.evaluate_quantization"


@new("output and weight error of a quantized or weight-cast model against its float reference")
@dataclasses.dataclass
class EvaluationReport:
    """Output and weight error of a candidate model against its float reference.

    Made by `evaluate_quantization`; ``str(report)`` is a Markdown table.

    Args:  (each is also an attribute)
      candidate: "keras" or "tflite".
      max_abs_diff, mean_abs_diff: of the outputs (float64 differences).
      argmax_agreement: fraction of samples whose argmax over the last axis agrees.
      reference_accuracy, candidate_accuracy: argmax accuracy if labels were given.
      weight_sqnr_db: ``{layer name: 10 log10(sum w^2 / sum (w - w_q)^2)}`` per
        kernel (inf where the weights are identical).
      size_bytes: size of the TFLite flatbuffer (tflite candidates).
    """

    candidate: str
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float
    reference_accuracy: Optional[float]
    candidate_accuracy: Optional[float]
    weight_sqnr_db: Dict[str, float]
    size_bytes: Optional[int] = None

    def __str__(self):
        rows = [("candidate", self.candidate), ("max |diff|", f"{self.max_abs_diff:.4g}"),
                ("mean |diff|", f"{self.mean_abs_diff:.4g}"),
                ("argmax agreement", f"{self.argmax_agreement:.4f}")]
        if self.reference_accuracy is not None:
            rows += [("reference accuracy", f"{self.reference_accuracy:.4f}"),
                     ("candidate accuracy", f"{self.candidate_accuracy:.4f}")]
        if self.size_bytes is not None:
            rows.append(("size (bytes)", str(self.size_bytes)))
        rows += [(f"weight SQNR {k} (dB)", f"{v:.2f}") for k, v in self.weight_sqnr_db.items()]
        return "\n".join(["| metric | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def _sqnr(ref, q):
    ref = np.asarray(ref, np.float64)
    q = np.asarray(q, np.float64)
    noise = np.sum((ref - q) ** 2)
    return math.inf if noise == 0 else 10.0 * math.log10(np.sum(ref ** 2) / noise)


def _float_kernels(model):
    """``{name: (kernel layer, float kernel)}``: the float kernel each Dense/Conv of `model`
    computes with -- inside a `QuantizeWrapper` with its BatchNormalization folded in, in a
    float model with a foldable BatchNormalization folded as the TFLite converter does."""
    out = {}
    folds = wrappers.foldable_pairs(model)
    for name, layer in wrappers._walk(model):
        if isinstance(layer, QuantizeWrapper):
            if hasattr(layer.layer, "kernel"):
                out[layer.layer.name] = (layer.layer,
                                         wrappers.folded_kernel_and_bias(layer)[0].numpy())
        elif hasattr(layer, "kernel") and isinstance(layer, wrappers._KERNEL_LAYERS):
            kernel = np.asarray(layer.kernel)
            if id(layer) in folds:
                scale, _ = wrappers._channel_scale(layer, folds[id(layer)], tf.float32)
                scale = scale.numpy()
                if isinstance(layer, keras.layers.DepthwiseConv2D):
                    scale = scale.reshape(kernel.shape[2:])
                kernel = kernel * scale
            out[layer.name] = (layer, kernel)
    return out


def _keras_sqnr(reference, candidate):
    """Per kernel: the candidate's quantized weights against its OWN float weights (a QAT model's
    float weights moved in training: comparing them with the reference's would measure that)."""
    out = {}
    for name, layer in wrappers._walk(candidate):
        if isinstance(layer, QuantizeWrapper):
            if layer.quantize_config is not None:
                for attr in layer.quantize_config.weights:
                    w = tf.convert_to_tensor(getattr(layer.layer, attr))
                    q = _quantize_weight(w, layer.weight_bits, layer.per_channel,
                                         layer.symmetric_weights,
                                         channel_axis=layer.quantize_config.channel_axis)
                    out[f"{layer.layer.name}.{attr}"] = _sqnr(w.numpy(), q.numpy())
            elif hasattr(layer.layer, "kernel"):
                kernel, _ = wrappers.folded_kernel_and_bias(layer)
                out[layer.layer.name] = _sqnr(kernel.numpy(),
                                              wrappers.quantized_kernel(layer, kernel).numpy())
    if out:
        return out
    # a weight-cast candidate (cast_weights): its kernels against the reference's, by name
    ref = {name: layer for name, layer in wrappers._walk(reference) if hasattr(layer, "kernel")}
    for name, layer in wrappers._walk(candidate):
        if name in ref and hasattr(layer, "kernel"):
            out[name] = _sqnr(ref[name].kernel, np.asarray(layer.kernel))
    return out


def _tflite_layout(layer, kernel):
    """Keras kernel -> TFLite weight layout."""
    if isinstance(layer, keras.layers.Dense):
        return kernel.T
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return kernel.reshape((1,) + kernel.shape[:2] + (-1,))
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv1D)):
        k = kernel if kernel.ndim == 4 else kernel[None]
        return np.transpose(k, (3, 0, 1, 2))
    return None


def _tflite_sqnr(source, interpreter):
    """Per kernel: the best-matching int8 constant of the TFLite layout's shape (names are
    rewritten by the converter, so shape and value decide; each tensor is used once)."""
    tensors = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
    used, out = set(), {}
    for name, (layer, kernel) in _float_kernels(source).items():
        target = _tflite_layout(layer, kernel)
        if target is None:
            continue
        best = None
        for t in tensors:
            if t["index"] in used or tuple(t["shape"]) != target.shape:
                continue
            try:
                raw = interpreter.get_tensor(t["index"]).astype(np.float64)
            except ValueError:
                continue
            qp = t["quantization_parameters"]
            scales, zps, axis = qp["scales"], qp["zero_points"], qp["quantized_dimension"]
            if len(scales) == 0:
                continue
            shape = [1] * raw.ndim
            if len(scales) > 1:
                shape[axis] = -1
            deq = (raw - zps.reshape(shape)) * scales.reshape(shape)
            value = _sqnr(target, deq)
            if best is None or value > best[0]:
                best = (value, t["index"])
        if best is not None:
            used.add(best[1])
            out[name] = best[0]
    return out


def _run_tflite(blob, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=blob)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    xin = x
    scale, zp = inp["quantization"]
    if inp["dtype"] != np.float32 and scale:  # quantized integer I/O: use the input's parameters
        info = np.iinfo(inp["dtype"])
        xin = np.clip(np.round(x / scale + zp), info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], xin.astype(inp["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zp = out["quantization"]
        y = (y.astype(np.float64) - zp) * scale
    return y, interpreter


@new("compares a quantized Keras or TFLite model with its float reference: output error, "
     "argmax agreement, accuracy, weight SQNR of the same model's weights")
def evaluate_quantization(reference_model, candidate, x, y=None, *, exported_from=None):
    """Compare a quantized (or weight-cast) model with its float reference on inputs ``x``.

    Method: both models run on ``x`` (the TFLite candidate in
    `tf.lite.Interpreter`); differences are taken in float64. Per-layer weight
    SQNR measures quantization error only: the quantized weights against the
    float weights of the same model -- a `QuantizeWrapper`'s fake-quantized
    kernel against its own float kernel (BatchNormalization folded in; after
    QAT the float weights have moved from the reference's, and comparing with
    those would measure the training, not the quantization), the cast kernel of
    `cast_weights` against the reference's, the dequantized int8 tensor of a
    TFLite model against the float kernel of ``exported_from`` (folded as the
    converter folds it). The converter rewrites tensor names, so names are not
    used there: among the int8 constants of the kernel's shape in TFLite's
    layout, the one with the highest SQNR is taken, each used once; layers with
    no such constant are omitted. Where the converter folds a preceding
    scale into a kernel (EfficientNet's input Rescaling, 1/255, into
    its stem convolution), the int8 kernel is not a quantization of the Keras
    kernel and its figure is meaningless (near 0 dB).

    Error bound / gradient: not applicable (a measurement). dtypes: any float
    model outputs; compared in float64.

    Args:
      reference_model: the float Keras model.
      candidate: a Keras model (from `quantize_model` or `cast_weights`) or
        TFLite flatbuffer `bytes` (from `export_tflite`).
      x: NumPy array of inputs.
      y: optional integer labels; accuracy is the argmax over the last axis.
      exported_from: for a TFLite candidate, the Keras model it was exported
        from (a QAT model): its float weights are the ones the int8 weights
        quantize. Default: ``reference_model``.

    Returns:
      An `EvaluationReport`; ``print(report)`` shows a Markdown table.

    Raises:
      TypeError: ``reference_model`` is not a Keras model or ``candidate`` is
        neither a Keras model nor bytes.
      ValueError: ``y`` has a different length than ``x``.

    Example:
      >>> print(so.quantization.evaluate_quantization(model, qmodel, x_test, y_test))
    """
    if not isinstance(reference_model, keras.Model):
        raise TypeError(f"{_OP}: argument 'reference_model' must be a Keras model; got "
                        f"{type(reference_model).__name__}")
    x = np.asarray(x)
    if y is not None and len(y) != len(x):
        raise ValueError(f"{_OP}: argument 'y' must have len(x)={len(x)} labels; got {len(y)}")
    ref = np.asarray(reference_model.predict(x, verbose=0, batch_size=256), np.float64)
    size = None
    if isinstance(candidate, (bytes, bytearray)):
        out, interpreter = _run_tflite(
            bytes(candidate), x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x)
        sqnr = _tflite_sqnr(exported_from if exported_from is not None else reference_model,
                            interpreter)
        kind, size = "tflite", len(candidate)
    elif isinstance(candidate, keras.Model):
        out = candidate.predict(x, verbose=0, batch_size=256)
        sqnr = _keras_sqnr(reference_model, candidate)
        kind = "keras"
    else:
        raise TypeError(f"{_OP}: argument 'candidate' must be a Keras model or TFLite bytes; "
                        f"got {type(candidate).__name__}")
    out = np.asarray(out, np.float64).reshape(ref.shape)
    diff = np.abs(out - ref)
    agree = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
    ref_acc = cand_acc = None
    if y is not None:
        y = np.asarray(y).reshape(-1)
        ref_acc = float(np.mean(ref.argmax(-1).reshape(-1) == y))
        cand_acc = float(np.mean(out.argmax(-1).reshape(-1) == y))
    return EvaluationReport(kind, float(diff.max()), float(diff.mean()), agree, ref_acc,
                            cand_acc, sqnr, size)


@new("a copy of a model whose layers hold and compute in float16 or bfloat16")
def cast_weights(model, dtype="float16"):
    """A copy of ``model`` whose layers hold and compute in ``dtype`` (float16 weight cast).

    The simplest size reduction (2x): every layer is re-created with dtype
    policy ``dtype`` and its weights rounded once to ``dtype``; inputs are cast
    on entry by Keras. Weight error: each weight is rounded to nearest, so
    ``|w16 - w| <= 2**-11 |w|`` for float16 normal values (``2**-8`` bfloat16);
    measure the output effect with `evaluate_quantization`.

    Args:
      model: a Keras 3 Sequential or Functional model.
      dtype: "float16" or "bfloat16".

    Returns:
      A new Keras model (outputs in ``dtype``).

    Raises:
      TypeError: ``model`` is not a Keras model.
      ValueError: ``dtype`` is not float16 or bfloat16.
    """
    op = "safeops.quantization.cast_weights"
    if not isinstance(model, keras.Model):
        raise TypeError(f"{op}: argument 'model' must be a Keras model; got "
                        f"{type(model).__name__}")
    if str(dtype) not in ("float16", "bfloat16"):
        raise ValueError(f"{op}: argument 'dtype' must be 'float16' or 'bfloat16'; got {dtype!r}")

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = str(dtype)
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for old, fresh in zip(model.layers, new.layers):
        fresh.set_weights([np.asarray(w).astype(keras.backend.standardize_dtype(fresh_w.dtype))
                           for w, fresh_w in zip(old.get_weights(), fresh.weights)])
    return new
