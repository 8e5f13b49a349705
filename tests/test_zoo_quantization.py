"""so.quantization on the model zoo: quantize_model, one QAT step, int8 export, the TFLite
interpreter, and the accuracy of the int8 model against the QAT model."""

import warnings

import keras
import numpy as np
import pytest

import safeops as so
from safeops.quantization import evaluate_quantization, export_tflite, quantize_model
import zoo  # tests/zoo: pytest puts tests/ on sys.path

_DEFAULT = ["small_cnn", "mlp", "wrapped_transformer", "unet"]
_SLOW = ["mobilenet", "resnet50", "efficientnet"]
# ops TFLite leaves in float for these models (no int8 kernel): accepted explicitly
_ALLOWED = {"wrapped_transformer": {"CAST", "NEG"}}


def _run(name):
    model, x, y = getattr(zoo, name)()
    qmodel = quantize_model(model)
    report = so.quantization.quantization_report(qmodel)
    assert report.quantized
    qmodel.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                   jit_compile=False, run_eagerly=name not in ("small_cnn", "mlp"))
    hist = qmodel.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = export_tflite(qmodel, x, allow_float_ops=_ALLOWED.get(name, False))
    left = {op for _, op, _ in so.quantization.float_ops(blob)}
    assert left <= _ALLOWED.get(name, set()), left
    result = evaluate_quantization(qmodel, blob, x, y if np.ndim(y) == 1 else None,
                                   exported_from=qmodel)
    print(f"\n{name}: {len(report.quantized)} quantized layers, int8 size {len(blob)} B\n{result}")
    assert np.isfinite(result.max_abs_diff)
    # each quantized kernel's int8 tensor is found, at the SQNR of an 8-bit grid (~6 dB/bit);
    # EfficientNet's input Rescaling (1/255) is folded by the converter into the stem kernel, which
    # then no longer matches the Keras kernel (documented in evaluate_quantization)
    sqnr = {k: v for k, v in result.weight_sqnr_db.items() if k != "stem_conv"}
    assert sqnr and min(sqnr.values()) > 30
    return result


@pytest.mark.parametrize("name", _DEFAULT)
def test_qat_and_int8_export_zoo(name):
    result = _run(name)
    if name in ("small_cnn", "mlp", "unet"):  # everything int8: close to the QAT model
        assert result.max_abs_diff < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", _SLOW)
def test_qat_and_int8_export_applications(name):
    _run(name)


def test_export_of_a_model_with_swapped_sublayers():
    """A user block whose attention was swapped exports with Keras's own sublayers (the float
    TFLite model then computes what the model computes, up to rounding)."""
    model, _, _ = zoo.transformer()  # holds a DecoderBlock
    x = zoo.tokens(8, seed=1, pad_rows=())
    safe, _ = so.wrap_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = export_tflite(safe, x, int8=False)
    result = evaluate_quantization(safe, blob, x)
    assert result.max_abs_diff < 1e-5 and result.argmax_agreement == 1.0


@pytest.mark.parametrize("name", ["two_in_two_out", "nested", "lstm"])
def test_quantize_model_rewrites_the_other_graphs(name):
    """Several inputs and outputs, shared layers, nested models, masks: rewritten, finite."""
    model, x, _ = getattr(zoo, name)()
    safe, _ = so.wrap_model(model)
    qmodel = quantize_model(safe)
    report = so.quantization.quantization_report(qmodel)
    assert report.quantized
    if name == "nested":  # layers of the nested models are quantized too
        assert any("/" in layer for layer, _ in report.quantized)
    out = qmodel(x)
    for o in out if isinstance(out, (list, tuple)) else [out]:
        assert np.isfinite(np.asarray(o, np.float64)).all()
