"""`export_tflite`: a Keras model (float or quantization-aware) to a full-integer int8 TFLite model."""

import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from safeops import native
from safeops._core import rewrite as _rewrite
from safeops._core.registry import new
from safeops.quantization import wrappers

__all__ = ["export_tflite", "float_ops"]

_OP = "safeops.quantization.export_tflite"
_MAX_SAMPLES = 500


def _signature(model):
    spec = model.inputs[0]
    return tuple(spec.shape[1:]), np.dtype(spec.dtype)


def _samples(model, data):
    """Validated single-sample arrays (batch dim 1) from an array, a Dataset or a generator."""
    shape, dtype = _signature(model)
    kind = "float" if np.issubdtype(dtype, np.floating) else "integer"
    expected = f"{kind} arrays of shape (batch,) + {shape} (or single samples of shape {shape})"
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        source = [np.asarray(data)]
    elif isinstance(data, tf.data.Dataset):
        source = data.as_numpy_iterator()
    elif callable(data):
        source = data()
    elif hasattr(data, "__iter__"):
        source = data
    else:
        raise ValueError(f"{_OP}: argument 'representative_data' must be a NumPy array, a "
                         f"tf.data.Dataset or a generator of {expected}; got "
                         f"{type(data).__name__}")
    out = []
    for element in source:
        if isinstance(element, (tuple, list)) and not isinstance(element, np.ndarray):
            element = element[0]  # (x, y) pairs or [x] lists: the input is first
        arr = np.asarray(element)
        kind = np.floating if np.issubdtype(dtype, np.floating) else np.integer
        if not np.issubdtype(arr.dtype, kind):
            raise ValueError(f"{_OP}: argument 'representative_data' must hold {expected}; "
                             f"got dtype {arr.dtype}")
        if arr.ndim == len(shape):
            arr = arr[None]
        if arr.ndim != len(shape) + 1 or any(
                s is not None and s != a for s, a in zip(shape, arr.shape[1:])):
            raise ValueError(f"{_OP}: argument 'representative_data' must hold {expected}; "
                             f"got shape {arr.shape}")
        for row in arr:
            out.append(row[None].astype(dtype))
            if len(out) >= _MAX_SAMPLES:
                return out
    if not out:
        raise ValueError(f"{_OP}: argument 'representative_data' is empty; expected {expected}")
    return out


_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")


@new("the ops of a TFLite model that compute in float (what an int8 export must not keep)")
def float_ops(blob):
    """``[(op index, op name, dtype)]``: the ops of a TFLite model that compute in float.

    QUANTIZE and DEQUANTIZE are conversions (the float input and output of an
    int8 model go through them) and are not listed; any other op with a float
    input or output tensor is.

    Args:
      blob: the TFLite flatbuffer (`bytes`), e.g. from `export_tflite`.

    Returns:
      A list of ``(op index, op name, dtype names joined by "/")``, in graph
      order; empty for a model that computes in integers only.

    Example:
      >>> so.quantization.float_ops(blob)          # doctest: +SKIP
      [(4, 'NEG', 'float32')]
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=bytes(blob))
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    out = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in _CONVERSION_OPS:
            continue
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        floats = sorted({dtypes[i].name for i in tensors if np.issubdtype(dtypes[i], np.floating)})
        if floats:
            out.append((int(op["index"]), op["op_name"], "/".join(floats)))
    return out


def _check_float_ops(blob, allow):
    found = float_ops(blob)
    if allow is True or not found:
        return
    allowed = set() if not allow else {str(a).upper() for a in allow}
    bad = [f for f in found if f[1] not in allowed]
    if bad:
        listing = ", ".join(f"{name} ({dtype}, op {index})" for index, name, dtype in bad)
        names = sorted({name for _, name, _ in bad})
        raise ValueError(
            f"{_OP}: the int8 model keeps {len(bad)} float op(s): {listing}. TFLite has no int8 "
            "kernel for them (or the model computes them in float); pass "
            f"allow_float_ops=True (or allow_float_ops={names!r}) to accept them, or change the "
            "layers that produce them")


def _lowered(model):
    """A copy of `model` with safeops's drop-in layers as their Keras originals, or `model`.

    The drop-ins compute in wider dtypes (so.softmax sums float32 in float64), which the TFLite
    converter cannot express; Keras's layers have TFLite kernels, and an int8 model holds no
    inf or NaN for the drop-ins to guard."""
    from safeops import layers as so_layers

    def originals(layer):
        cls = type(layer)
        if cls.__module__.startswith("safeops.layers.") and cls.__name__.startswith("Stable"):
            return cls.__mro__[1]
        return None

    def softmax_activation(layer):
        return getattr(layer, "activation", None) is so_layers.stable_softmax

    changed = []

    def replace(layer, path):
        if isinstance(layer, so_layers.SwappedSublayers):
            changed.append(path)  # the user's layer as its config builds it: Keras sublayers
            return _rewrite.rebuild(layer.layer, _OP)
        target = layer.layer if isinstance(layer, wrappers.QuantizeWrapper) else layer
        base = originals(target)
        if base is None and not softmax_activation(target):
            return None
        changed.append(path)
        config = target.get_config()
        if softmax_activation(target):
            config["activation"] = "softmax"
        fresh = (base or type(target)).from_config(config)
        if target is layer:
            return fresh
        wrapper_config = layer.get_config()
        wrapper_config["layer"] = fresh
        return wrappers.QuantizeWrapper(**wrapper_config)

    if not (_rewrite.is_graph_model(model) and model.inputs):
        return model
    lowered, pairs = _rewrite.rewrite(model, replace, op=_OP, swap_sublayers=False)
    if not changed:
        return model
    for old, fresh, _ in pairs:
        _rewrite.copy_weights(old, fresh, _OP)
    return lowered


@new("converts a Keras 3 model (float or from quantize_model) to a full-integer int8 TFLite "
     "model with the converter settings chosen; fails naming each op left in float unless "
     "allowed")
def export_tflite(model, representative_data, *, int8=True, path=None, allow_float_ops=False):
    """Convert a Keras 3 model to TFLite; full-integer int8 where every op allows.

    Wraps `tf.lite.TFLiteConverter` (`from_keras_model`) with the settings a
    user otherwise has to find: ``optimizations=[DEFAULT]``, a representative
    dataset built from ``representative_data``, and
    ``supported_ops=[TFLITE_BUILTINS_INT8]``. The converter still leaves an
    op in float where it has no int8 kernel for it (e.g. the NEG of a
    LayerNormalization: ``DEQUANTIZE -> NEG (float32) -> QUANTIZE``), so the
    converted model is inspected and the export fails with a `ValueError`
    naming each float op unless ``allow_float_ops`` accepts it. Input and
    output stay float32: the model starts with a QUANTIZE and ends with a
    DEQUANTIZE op.

    safeops's drop-in layers (`StableSoftmax`, ``activation=stable_softmax``,
    the ``Stable*`` normalizations, attention and pooling) are exported as
    their Keras originals: TFLite has kernels for those, not for the wider
    dtypes the drop-ins compute in, and an int8 model holds no inf or NaN for
    them to guard (a float export gets Keras's numerics for those layers).

    Method: for a model from `quantize_model`, the converter takes activation
    ranges and weight grids from the fake-quant ops (the trained ranges); the
    Dense kernels, quantized per channel, are exported as their quantized
    values (TFLite rejects per-channel fake quant on FullyConnected), and the
    representative data calibrates any tensor without a range. A float model
    gets post-training full-integer quantization calibrated on the data.

    Error bound: per layer, the int8 kernel rounds each value by at most half a
    quantization step of its range; the end-to-end error is measured, not
    bounded: use `evaluate_quantization`.

    Gradient: not applicable (export only). dtypes: float32 models.
    Importing TFLite's converter happens on the first call, not at import.

    Args:
      model: a single-input Keras 3 model (float or from `quantize_model`).
      representative_data: inputs as a NumPy array ``(n,) + input_shape``, a
        `tf.data.Dataset` (of batches or samples, ``x`` or ``(x, y)``), or a
        generator (or a callable returning one) of such arrays. At most 500
        samples are used.
      int8: True: full-integer int8; False: plain float32 TFLite (the size
        and accuracy baseline; ``representative_data`` is then unused).
      path: if given, the bytes are also written to this file.
      allow_float_ops: int8 exports only: False (default) fails on any op
        left in float (other than the QUANTIZE/DEQUANTIZE of the input and
        output); True accepts them all; a collection of TFLite op names
        (``{"NEG"}``) accepts those.

    Returns:
      The TFLite flatbuffer as `bytes`.

    Raises:
      TypeError: ``model`` is not a Keras model.
      ValueError: the representative data has the wrong shape or dtype (the
        message states the expected signature), is empty, or the model has more
        than one input; the int8 model keeps float ops that
        ``allow_float_ops`` does not accept (the message names each).

    Example:
      >>> blob = so.quantization.export_tflite(qmodel, x_train[:200], path="m.tflite")
      >>> print(so.quantization.evaluate_quantization(model, blob, x_test, y_test))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"{_OP}: argument 'model' must be a Keras 3 model; got "
                        f"{type(model).__name__}")
    if len(model.inputs) != 1:
        raise ValueError(f"{_OP}: argument 'model' must have one input; got "
                         f"{len(model.inputs)}")
    converter = tf.lite.TFLiteConverter.from_keras_model(_lowered(model))
    if int8:
        samples = _samples(model, representative_data)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    wrappers._EXPORTING[0] = True
    try:
        with native.disabled():  # TFLite has no kernel for safeops' custom ops
            blob = converter.convert()
    finally:
        wrappers._EXPORTING[0] = False
    if int8:
        _check_float_ops(blob, allow_float_ops)
    if path is not None:
        directory = os.path.dirname(os.path.abspath(path))
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
            f.write(blob)
        os.replace(f.name, path)
    return blob
