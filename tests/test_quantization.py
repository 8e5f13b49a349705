"""Tests for safeops.quantization: fake quant, QAT wrappers, TFLite export, evaluation, legacy path.

Accuracy claims use scikit-learn's bundled digits data (8x8 images, no download)
with fixed seeds; models are small so the module stays well under two minutes.
Thresholds are the issue's: QAT int8 Keras accuracy >= float - 0.5 point,
int8 TFLite >= float - 1 point, int8 TFLite size <= 30% of float TFLite, and at
4-bit (per-tensor) weights QAT > post-training quantization of the same float model.
"""

import copy
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import safeops as so
from safeops import testing
from safeops.quantization import (MovingAverageQuantizer, QuantizeWrapper, calibrate,
                                  cast_weights, evaluate_quantization, export_tflite, fake_quant,
                                  quantization_report, quantize_model)

Q = so.quantization


# --------------------------------------------------------------------------- data and models


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    y = d.target.astype("int32")
    idx = np.random.default_rng(0).permutation(len(x))
    return x[idx[:1257]], y[idx[:1257]], x[idx[1257:]], y[idx[1257:]]


def _build(kind, width=512):
    # The MLP is 64-512-512-10: its kernels (300k weights) dominate the TFLite file, as in a
    # realistic MLP; at width 256 the fixed per-tensor overhead put int8/float at 0.299.
    if kind == "mlp":
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(width, activation="relu"),
                                 keras.layers.Dense(width, activation="relu"),
                                 keras.layers.Dense(10)])
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 1, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def _compile(model, lr):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _reshape(kind, x):
    return x if kind == "mlp" else x.reshape(-1, 8, 8, 1)


def _acc(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


# Training schedule of the int8 models: 8 float epochs at 5e-3, then 2 more epochs at 1e-3
# for both the float model and its QAT copy (so QAT gets no extra epochs). Measured over
# seeds 0, 1, 2 (docs/quantization.md): every bar of issue 7 holds on each seed for both models.
_EPOCHS, _LR, _FINE_EPOCHS, _FINE_LR = 8, 5e-3, 2, 1e-3


def _float_and_qat(model, xtr, ytr, epochs, lr, seed, **options):
    """(float model, QAT model) with the same total training: from `model`'s weights,
    `epochs` more float epochs and `epochs` QAT epochs at `lr` (same seed, same batches)."""
    fine = keras.models.clone_model(model)
    fine.set_weights(model.get_weights())
    _compile(fine, lr)
    keras.utils.set_random_seed(seed + 1)
    fine.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    qmodel = _compile(quantize_model(model, **options), lr)
    keras.utils.set_random_seed(seed + 1)
    qmodel.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    return fine, qmodel


def _train(kind, digits, seed=0):
    """Float model, its QAT fine-tune, and both TFLite exports."""
    xtr, ytr, xte, yte = digits
    xtr, xte = _reshape(kind, xtr), _reshape(kind, xte)
    keras.utils.set_random_seed(seed)
    start = _compile(_build(kind), _LR)
    start.fit(xtr, ytr, epochs=_EPOCHS, batch_size=64, verbose=0)
    model, qmodel = _float_and_qat(start, xtr, ytr, _FINE_EPOCHS, _FINE_LR, seed)
    return dict(model=model, qmodel=qmodel, xtr=xtr, xte=xte, ytr=ytr, yte=yte,
                float_tflite=export_tflite(model, None, int8=False),
                int8_tflite=export_tflite(qmodel, xtr[:300]))


# Trained once per module and shared by every test that needs a trained model.
@pytest.fixture(scope="module")
def mlp(digits):
    return _train("mlp", digits)


@pytest.fixture(scope="module")
def cnn(digits):
    return _train("cnn", digits)


def _four_bit(digits, seed=0):
    """(float, PTQ, QAT) test accuracies at 4-bit per-tensor weights on a 64-24-24-10 MLP.

    Fair: PTQ (`calibrate`) quantizes the float model after the same 15 + 3 epochs that
    QAT gets (15 float + 3 QAT, same learning rates and batches)."""
    xtr, ytr, xte, yte = digits
    keras.utils.set_random_seed(seed)
    start = _compile(_build("mlp", width=24), 3e-3)
    start.fit(xtr, ytr, epochs=15, batch_size=64, verbose=0)
    options = dict(weight_bits=4, per_channel=False)
    model, qat = _float_and_qat(start, xtr, ytr, 3, 5e-4, seed, **options)
    ptq = calibrate(quantize_model(model, **options), xtr)
    return tuple(_acc(m, xte, yte) for m in (model, ptq, qat))


# --------------------------------------------------------------------------- fake_quant op


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_fake_quant_matches_reference(bits, dtype):
    # Range [0, 1] needs no nudging: the grid is k / (2**bits - 1); float64 reference.
    x = np.linspace(-0.25, 1.25, 1001)
    levels = 2.0**bits - 1
    expected = np.round(np.clip(x, 0.0, 1.0) * levels) / levels  # ties: values are not at ties
    xin = tf.constant(x, dtype)
    out = fake_quant(xin, 0.0, 1.0, num_bits=bits)
    assert out.dtype == xin.dtype
    # float32 computation then one rounding to `dtype`: within 1 ulp of the rounded reference
    # (the grid value k/levels is itself rounded to float32 inside TF's kernel). Inputs
    # within float32 noise of a rounding tie may go either way: those are left to the bound.
    # float64 is computed in float32 (documented): compare in float32 ulps there.
    mdtype = "float32" if dtype == "float64" else dtype
    xq = np.asarray(testing.round_to_dtype(np.asarray(xin, np.float64), mdtype), np.float64)
    scaled = np.clip(xq, 0, 1) * levels
    not_tie = np.abs(scaled - np.floor(scaled) - 0.5) > 1e-6 * levels
    exp_q = testing.round_to_dtype(np.round(scaled) / levels, mdtype)
    got = testing.round_to_dtype(np.asarray(out, np.float64), mdtype)
    assert np.max(testing.ulp_distance(got, exp_q, mdtype)[not_tie]) <= 1
    # documented bound |q(x) - x| <= scale / 2 inside the range (+1 ulp of float32)
    inside = (x >= 0) & (x <= 1)
    err = np.abs(np.asarray(out, np.float64) - xq)[inside]
    ulp = {"float16": 2**-11, "bfloat16": 2**-8}.get(mdtype, 2**-23)
    assert err.max() <= 0.5 / levels + 2 * ulp
    assert np.array_equal(np.asarray(out, np.float64)[x < -0.01], np.zeros(np.sum(x < -0.01)))
    del expected


def test_fake_quant_per_channel_any_axis():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    lo = -np.abs(x).max(axis=(0, 2))
    hi = np.abs(x).max(axis=(0, 2))
    out = fake_quant(x, lo, hi, num_bits=8, narrow_range=True, axis=1).numpy()
    for c in range(3):  # symmetric narrow range: 0 exact, scale = 2 m / 254
        scale = 2 * hi[c] / 254.0
        ref = np.round(x[:, c, :].astype(np.float64) / scale) * scale
        np.testing.assert_allclose(out[:, c, :], ref, rtol=0, atol=scale * 1e-5 + 1e-7)


def test_fake_quant_execution_modes():
    x = tf.constant(np.linspace(-2, 2, 97), tf.float32)
    res = testing.run_modes(lambda t: fake_quant(t, -1.5, 1.0, num_bits=6), x)
    np.testing.assert_array_equal(res["eager"], res["function"])
    # XLA evaluates min + scale * k in another float32 operation order: the results differ by
    # one rounding of a value of magnitude <= max(|min|, |max|) (the zero level included)
    atol = 2.0**-23 * 1.5079366 * 2
    np.testing.assert_allclose(res["jit_compile"], res["eager"], rtol=0, atol=atol)


def test_fake_quant_gradient_straight_through_with_edges():
    # ranges chosen so TF's zero-point nudging leaves them unchanged (scale 1, exact edges)
    x = tf.constant([-130.0, -128.0, -0.3, 0.0, 70.0, 127.0, 127.5])
    for fn in (tf.function, lambda f: f, lambda f: tf.function(f, jit_compile=True)):
        @fn
        def grad(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = fake_quant(t, -128.0, 127.0, num_bits=8)
            return tape.gradient(y, t)
        # 1 inside [min, max] including both edges, 0 outside (clipped straight-through)
        np.testing.assert_array_equal(grad(x).numpy(), [0, 1, 1, 1, 1, 1, 0])


def test_fake_quant_gradient_matches_finite_differences_of_identity_inside():
    # The STE replaces the staircase's zero derivative by the identity's: compare with
    # float64 finite differences of the identity (what STE claims) via check_gradients.
    x = np.linspace(-0.9, 0.9, 7)
    with tf.GradientTape() as tape:
        t = tf.constant(x, tf.float32)
        tape.watch(t)
        y = tf.reduce_sum(fake_quant(t, -1.0, 1.0) * np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(tape.gradient(y, t).numpy(), np.arange(7))


# --------------------------------------------------------------------------- activation ranges


def test_moving_average_quantizer_ema_and_frozen_inference():
    q = MovingAverageQuantizer(num_bits=8, ema_decay=0.9)
    b1 = np.array([[-1.0, 2.0]], np.float32)
    b2 = np.array([[0.5, 4.0]], np.float32)
    q(b1, training=True)
    assert (q.range_min.numpy(), q.range_max.numpy()) == (-1.0, 2.0)  # first batch sets it
    q(b2, training=True)
    np.testing.assert_allclose(q.range_min.numpy(), 0.9 * -1.0 + 0.1 * 0.0, rtol=1e-6)
    np.testing.assert_allclose(q.range_max.numpy(), 0.9 * 2.0 + 0.1 * 4.0, rtol=1e-6)
    before = (q.range_min.numpy(), q.range_max.numpy())
    out = q(np.array([[100.0, -100.0]], np.float32), training=False)
    assert (q.range_min.numpy(), q.range_max.numpy()) == before  # frozen at inference
    np.testing.assert_allclose(out.numpy(), [[before[1], before[0]]], atol=0.02)  # clamped


# --------------------------------------------------------------------------- bad input


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d = keras.layers.Dense(3)

    def call(self, x):
        return self.d(x)


def test_bad_input_raises():
    for bits in (1, 17, 8.0, True):
        with pytest.raises(ValueError, match="fake_quant.*num_bits"):
            fake_quant([0.5], 0.0, 1.0, num_bits=bits)
    with pytest.raises(TypeError, match="fake_quant.*inputs"):
        fake_quant(tf.constant([1, 2]), 0.0, 1.0)
    with pytest.raises(ValueError, match="min_value"):
        fake_quant(tf.ones((2, 3)), [0.0, 0.0], [1.0, 1.0], axis=-1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="quantize_model.*weight_bits"):
        quantize_model(model, weight_bits=1)
    with pytest.raises(ValueError, match="quantize_model.*activation_bits"):
        quantize_model(model, activation_bits=17)
    sub = _Subclassed()
    sub(np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="Sequential or Functional.*_Subclassed"):
        quantize_model(sub)
    with pytest.raises(ValueError, match="input shape"):
        quantize_model(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.warns(UserWarning, match="matched no supported layer"):
        q = quantize_model(model, layer_filter=lambda layer: layer.name == "nope")
    assert "layer_filter matched no supported layer" in str(quantization_report(q))
    with pytest.raises(ValueError, match=r"expected.*\(4,\)|\(batch,\) \+ \(4,\)"):
        export_tflite(model, np.zeros((5, 7), np.float32))
    with pytest.raises(ValueError, match=r"dtype int64"):
        export_tflite(model, np.zeros((5, 4), np.int64))
    with pytest.raises(ValueError, match=r"\(batch,\) \+ \(4,\)"):
        export_tflite(model, tf.data.Dataset.from_tensor_slices(np.zeros((5, 2), np.float32)))
    with pytest.raises(TypeError, match="candidate"):
        evaluate_quantization(model, "model.tflite", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="cast_weights.*dtype"):
        cast_weights(model, "int8")


# --------------------------------------------------------------------------- QAT accuracy claims


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_qat_int8_accuracy_and_tflite(kind, request):
    t = request.getfixturevalue(kind)
    float_acc = _acc(t["model"], t["xte"], t["yte"])
    qat_acc = _acc(t["qmodel"], t["xte"], t["yte"])
    tfl = evaluate_quantization(t["model"], t["int8_tflite"], t["xte"], t["yte"])
    ftfl = evaluate_quantization(t["model"], t["float_tflite"], t["xte"], t["yte"])
    ratio = len(t["int8_tflite"]) / len(t["float_tflite"])
    print(f"\n{kind}: float {float_acc:.4f} qat-int8 {qat_acc:.4f} tflite-int8 "
          f"{tfl.candidate_accuracy:.4f} size {len(t['int8_tflite'])}/{len(t['float_tflite'])}"
          f" = {ratio:.3f}")
    assert float_acc > 0.9  # the float model is a real classifier
    assert ftfl.candidate_accuracy == pytest.approx(float_acc)  # float TFLite = Keras float
    assert qat_acc >= float_acc - 0.005  # issue: within 0.5 point of float
    assert tfl.candidate_accuracy >= float_acc - 0.01  # issue: within 1 point of float
    assert ratio <= 0.30  # issue: int8 TFLite at most 30% of the float TFLite size
    # every weight tensor in the TFLite model is int8: one SQNR per kernel layer
    kernels = [layer.name for layer in t["model"].layers if hasattr(layer, "kernel")]
    assert sorted(tfl.weight_sqnr_db) == sorted(kernels)
    # 8-bit weights: SQNR of a uniform grid is ~6 dB/bit; trained weights moved, so only > 20
    assert min(tfl.weight_sqnr_db.values()) > 20


def test_four_bit_qat_beats_post_training_quantization(digits):
    # Per-tensor 4-bit weights on a narrow MLP (64-24-24-10), where post-training
    # quantization loses accuracy that QAT recovers. Over seeds 0..5 (docs/quantization.md):
    # QAT > PTQ on every seed. Not per-channel: there the winner depended on the seed (QAT
    # won on 2 of seeds 0, 1, 2), and on the 64-512-512-10 MLP 4-bit PTQ stays within a
    # sample or two of float.
    float_acc, ptq_acc, qat_acc = _four_bit(digits, seed=0)
    print(f"\n4-bit per-tensor weights (64-24-24-10, 15+3 epochs each): float {float_acc:.4f}  "
          f"PTQ {ptq_acc:.4f}  QAT {qat_acc:.4f}")
    assert float_acc > 0.9
    assert qat_acc > ptq_acc  # issue: at 4-bit weights QAT beats PTQ of the same float model


def test_evaluate_quantization_against_independent_numbers(mlp):
    t = mlp
    x, y = t["xte"], t["yte"]
    rep = evaluate_quantization(t["model"], t["qmodel"], x, y)
    ref = t["model"](x).numpy().astype(np.float64)
    out = t["qmodel"](x).numpy().astype(np.float64)
    np.testing.assert_allclose(rep.max_abs_diff, np.abs(out - ref).max(), rtol=1e-6)
    np.testing.assert_allclose(rep.mean_abs_diff, np.abs(out - ref).mean(), rtol=1e-6)
    assert rep.argmax_agreement == np.mean(out.argmax(1) == ref.argmax(1))
    assert rep.candidate_accuracy == np.mean(out.argmax(1) == y)
    assert "| argmax agreement |" in str(rep)
    # float16 weight cast: SQNR from a NumPy cast of the same kernels (independent of x).
    # CPU float16 matmuls are emulated (~10 s for the whole split): 128 test samples suffice
    # for the agreement check, which is not one of the accuracy bars.
    half = cast_weights(t["model"])
    rep16 = evaluate_quantization(t["model"], half, x[:128], y[:128])
    for layer in t["model"].layers:
        w = np.asarray(layer.kernel, np.float64)
        noise = np.sum((w - w.astype(np.float16).astype(np.float64)) ** 2)
        expected = 10 * np.log10(np.sum(w**2) / noise)
        assert rep16.weight_sqnr_db[layer.name] == pytest.approx(expected, rel=1e-9)
    assert rep16.argmax_agreement >= 0.99
    assert half.layers[0].kernel.dtype == "float16"


# --------------------------------------------------------------------------- structure, serialization


def test_functional_add_concatenate_batchnorm_report_and_fit():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(4, 3, padding="same")(inp)
    b = keras.layers.BatchNormalization()(a)
    c = keras.layers.Conv1D(4, 3, padding="same")(keras.layers.Reshape((64, 2))(inp))
    s = keras.layers.Add()([b, keras.layers.Reshape((8, 8, 4))(c)])
    m = keras.layers.Concatenate()([s, a])
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(m))
    model = keras.Model(inp, out)
    q = quantize_model(model)
    rep = quantization_report(q)
    assert {c for _, c in rep.quantized} == {"Conv2D", "Conv1D", "Add", "Concatenate", "Dense"}
    bn = [r for n, c, r in rep.float_layers if c == "BatchNormalization"]
    assert bn and "not folded" in bn[0]
    assert str(q.quantization_report_) == str(rep)
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 2)).astype(np.float32)
    q.compile("sgd", "mse")
    q.fit(x, np.zeros((16, 3), np.float32), epochs=1, verbose=0)
    # weights were carried over: with 16-bit everything, outputs match the float model
    q16 = quantize_model(model, weight_bits=16, activation_bits=None)
    np.testing.assert_allclose(q16(x, training=False), model(x, training=False), atol=2e-3)


def test_save_load_saved_model_and_modes(cnn, tmp_path):
    t = cnn
    q, x = t["qmodel"], t["xte"][:64]
    path = str(tmp_path / "qat.keras")
    q.save(path)
    r = keras.models.load_model(path)
    np.testing.assert_array_equal(r.predict(x, verbose=0), q.predict(x, verbose=0))
    assert isinstance(r.get_layer(q.layers[2].name), (QuantizeWrapper, MovingAverageQuantizer))
    assert quantization_report(r).quantized == quantization_report(q).quantized
    export_dir = str(tmp_path / "saved")
    q.export(export_dir)
    loaded = tf.saved_model.load(export_dir)
    np.testing.assert_allclose(loaded.serve(x).numpy(), q(x).numpy(), atol=1e-5)
    res = testing.run_modes(lambda v: q(v, training=False), tf.constant(x))
    np.testing.assert_allclose(res["function"], res["eager"], atol=1e-5)
    np.testing.assert_allclose(res["jit_compile"], res["eager"], atol=1e-4)


def test_representative_data_forms_and_path(mlp, tmp_path):
    t = mlp
    x = t["xtr"][:64]
    gen = lambda: (x[i:i + 8] for i in range(0, 64, 8))  # noqa: E731
    path = tmp_path / "m.tflite"
    for data in (x, tf.data.Dataset.from_tensor_slices((x, t["ytr"][:64])).batch(16), gen):
        blob = export_tflite(t["qmodel"], data, path=str(path))
        assert path.read_bytes() == blob  # `path` gets exactly the returned bytes
        rep = evaluate_quantization(t["qmodel"], blob, t["xte"], t["yte"])
        assert rep.argmax_agreement >= 0.97


def test_representative_generator_with_bad_shape_or_dtype_raises():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    bad_shape = lambda: (np.zeros((8, 5), np.float32) for _ in range(3))  # noqa: E731
    with pytest.raises(ValueError, match=r"export_tflite.*representative_data.*\(batch,\) \+ "
                                         r"\(4,\).*got shape \(8, 5\)"):
        export_tflite(model, bad_shape)
    bad_dtype = lambda: (np.zeros((8, 4), np.int32) for _ in range(3))  # noqa: E731
    with pytest.raises(ValueError, match=r"representative_data.*\(4,\).*dtype int32"):
        export_tflite(model, bad_dtype)
    with pytest.raises(ValueError, match=r"representative_data.*empty"):
        export_tflite(model, lambda: iter(()))


def test_fake_quant_layers_config_round_trip():
    q = MovingAverageQuantizer(num_bits=6, ema_decay=0.95, name="maq")
    config = q.get_config()
    clone = MovingAverageQuantizer.from_config(config)
    assert (clone.num_bits, clone.ema_decay, clone.name) == (6, 0.95, "maq")
    assert clone.get_config() == config
    w = QuantizeWrapper(keras.layers.Dense(3, activation="relu"), weight_bits=4, activation_bits=6,
                        per_channel=False, symmetric_weights=False, ema_decay=0.9, name="qw")
    config = w.get_config()
    clone = QuantizeWrapper.from_config(copy.deepcopy(config))  # Wrapper.from_config pops keys
    assert clone.get_config() == config
    assert (clone.weight_bits, clone.activation_bits, clone.per_channel, clone.symmetric_weights,
            clone.ema_decay) == (4, 6, False, False, 0.9)
    assert isinstance(clone.layer, keras.layers.Dense) and clone.layer.units == 3
    # the clone computes the same function once given the same weights
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    w(x)
    clone(x)
    clone.set_weights(w.get_weights())
    np.testing.assert_array_equal(clone(x, training=False), w(x, training=False))


def test_qat_fit_under_mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3),
                                  keras.layers.Activation("linear", dtype="float32")])
        q = quantize_model(model)
        q.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
        hist = q.fit(x, y, batch_size=16, epochs=2, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"]))
        quantizers = [l for l in q.layers if isinstance(l, MovingAverageQuantizer)] + [
            l.output_quantizer for l in q.layers if isinstance(l, QuantizeWrapper)]
        assert quantizers
        for mq in quantizers:  # ranges stay float32 and were updated from the float16 batches
            assert mq.range_min.dtype == "float32" and mq.range_max.dtype == "float32"
            assert float(mq.batches_seen.numpy()) == 8.0  # 2 epochs x 4 batches
            assert mq.range_max.numpy() > 0.0 and np.isfinite(mq.range_min.numpy())
        hidden = next(layer for layer in q.layers if isinstance(layer, QuantizeWrapper))
        assert hidden.compute_dtype == "float16"
        assert q(x[:2]).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- legacy path (subprocess)


_ENV = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}

_LEGACY_CODE = (
    "import os, numpy as np\n"
    "import tf_keras\n"
    "import safeops as so\n"
    "m = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(4, activation='relu'),"
    " tf_keras.layers.Dense(2)])\n"
    "q = so.quantization.quantize_model(m)\n"
    "names = [type(l).__name__ for l in q.layers]\n"
    "assert 'QuantizeLayer' in names and 'QuantizeWrapperV2' in names, names\n"
    "q.compile('sgd', 'mse'); q.fit(np.ones((8, 8)), np.ones((8, 2)), verbose=0)\n"
    "print('legacy', os.environ.get('TF_USE_LEGACY_KERAS'))\n"
)

_KERAS3_CODE = (
    "import os, sys, numpy as np, keras\n"
    "import safeops as so\n"
    "m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])\n"
    "q = so.quantization.quantize_model(m); q.compile('sgd', 'mse')\n"
    "q.fit(np.ones((8, 8), 'float32'), np.ones((8, 2), 'float32'), verbose=0)\n"
    "so.quantization.export_tflite(q, np.ones((4, 8), 'float32'))\n"
    "bad = [k for k in sys.modules if k.startswith(('tensorflow_model_optimization', 'tf_keras'))]\n"
    "print('flag', os.environ.get('TF_USE_LEGACY_KERAS'), bad)\n"
)


@pytest.fixture(scope="module")
def subprocesses():
    """Both fresh-process checks, started together: each spends most of its time importing
    TensorFlow, so running them side by side saves one import's wall time."""
    procs = {name: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=_ENV)
             for name, code in (("legacy", _LEGACY_CODE), ("keras3", _KERAS3_CODE))}
    yield procs
    for proc in procs.values():  # a test that failed early leaves its process running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _stdout(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_legacy_tfmot_path_in_subprocess(subprocesses):
    # the documented side effect of importing tfmot
    assert "legacy 1" in _stdout(subprocesses["legacy"])


def test_keras3_process_never_sets_legacy_flag(subprocesses):
    assert "flag None []" in _stdout(subprocesses["keras3"])


# ---------------------------------------------------------------------------
# BatchNormalization folding, float ops in int8 exports, weight SQNR, custom layers
# ---------------------------------------------------------------------------

def _conv_bn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    out = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2.0, 6), rng.uniform(-1, 1, 6), rng.uniform(-1, 1, 6),
                    rng.uniform(0.2, 3.0, 6)])
    x = rng.uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)
    return model, x


def test_batch_norm_folded_in_qat_and_export():
    model, x = _conv_bn()
    q = quantize_model(model)
    rep = quantization_report(q)
    assert ("quant_conv", "Conv2D+BatchNormalization") in rep.quantized
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in q.layers)
    wrapper = q.get_layer("quant_conv")
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in model.get_layer("bn").weights)
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("conv").weights)
    s = gamma / np.sqrt(var + 1e-3)
    from safeops.quantization.wrappers import folded_kernel_and_bias
    k, b = folded_kernel_and_bias(wrapper)
    np.testing.assert_allclose(k.numpy(), kernel * s, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), (bias - mean) * s + beta, rtol=1e-5, atol=1e-6)
    calibrate(q, x)
    # the folded, fake-quantized model computes the float model's function to 8-bit accuracy
    ref = model(x).numpy()
    assert np.max(np.abs(q(x).numpy() - ref)) < 0.02 * np.max(np.abs(ref))
    # one CONV_2D: the normalization's MUL and ADD are gone from the int8 model
    blob = export_tflite(q, x)
    ops = [o["op_name"] for o in tf.lite.Interpreter(model_content=blob)._get_ops_details()]
    assert ops.count("CONV_2D") == 1 and "MUL" not in ops and "ADD" not in ops
    result = evaluate_quantization(model, blob, x, exported_from=q)
    assert result.max_abs_diff < 0.02 * np.max(np.abs(ref))
    # a float model exported as it is: the converter folds too, and the SQNR is measured
    # against the folded kernel (an unfolded one would not match any int8 tensor)
    float_blob = export_tflite(model, x)
    assert evaluate_quantization(model, float_blob, x).weight_sqnr_db["conv"] > 40
    # not folded when the convolution's output has another use
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same")(inp)
    two = keras.Model(inp, keras.layers.Add()([keras.layers.BatchNormalization()(a), a]))
    assert any(c == "BatchNormalization" for _, c, _ in
               quantization_report(quantize_model(two)).float_layers)
    assert not any("+" in c for _, c in quantization_report(
        quantize_model(model, fold_batch_norm=False)).quantized)
    # after so.wrap_model the normalization is a StableBatchNormalization: folded as well
    wrapped = quantize_model(so.wrap_model(model)[0])
    assert ("quant_conv", "Conv2D+BatchNormalization") in quantization_report(wrapped).quantized


def test_int8_export_fails_naming_float_ops():
    keras.utils.set_random_seed(1)
    inp = keras.Input((8,))
    h = keras.layers.LayerNormalization()(keras.layers.Dense(8)(inp))
    model = keras.Model(inp, keras.layers.Dense(3)(h))
    x = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"export_tflite.*float op.*NEG \(float32"):
        export_tflite(model, x)
    with pytest.raises(ValueError, match="NEG"):
        export_tflite(model, x, allow_float_ops={"ADD"})
    blob = export_tflite(model, x, allow_float_ops={"NEG"})
    assert [op for _, op, _ in so.quantization.float_ops(blob)] == ["NEG"]
    assert export_tflite(model, x, allow_float_ops=True) == blob
    # a float export is not checked; a fully int8 model passes
    export_tflite(model, x, int8=False)
    cnn, xc = _conv_bn()
    assert so.quantization.float_ops(export_tflite(quantize_model(cnn), xc)) == []


def _symmetric_per_channel(w, bits=8):
    """Independent NumPy reference: round to the symmetric narrow grid of each output channel."""
    w = np.asarray(w, np.float64)
    n = 2 ** (bits - 1) - 1
    m = np.maximum(np.abs(w).reshape(-1, w.shape[-1]).max(0), 1e-8)
    return np.round(w / (m / n)) * (m / n)


def test_weight_sqnr_measures_quantization_not_training():
    """After QAT that moved the weights, SQNR compares the quantized weights with the SAME
    model's float weights (the quantization error, ~48 dB at 8 bits), not with the reference."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(4, name="d")(
        keras.layers.Dense(32, activation="relu", name="h")(inp)))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    y = rng.integers(0, 4, 256)
    q = quantize_model(model)
    q.compile(keras.optimizers.SGD(1.0), keras.losses.SparseCategoricalCrossentropy(True))
    q.fit(x, y, epochs=3, batch_size=32, verbose=0)
    report = evaluate_quantization(model, q, x, y)
    for name in ("h", "d"):
        w = q.get_layer(f"quant_{name}").layer.kernel.numpy().astype(np.float64)
        qw = _symmetric_per_channel(w)
        expected = 10 * np.log10(np.sum(w ** 2) / np.sum((w - qw) ** 2))
        assert report.weight_sqnr_db[name] == pytest.approx(expected, abs=0.05)
        assert report.weight_sqnr_db[name] > 40
        drift = model.get_layer(name).kernel.numpy().astype(np.float64)
        moved = 10 * np.log10(np.sum(drift ** 2) / np.sum((drift - qw) ** 2))
        assert moved < report.weight_sqnr_db[name] - 10  # what the old figure measured
    blob = export_tflite(q, x[:100])
    tfl = evaluate_quantization(model, blob, x, y, exported_from=q)
    for name in ("h", "d"):
        assert tfl.weight_sqnr_db[name] == pytest.approx(report.weight_sqnr_db[name], abs=1.0)


@keras.saving.register_keras_serializable(package="safeops_tests")
class _Scale(keras.layers.Layer):
    """A user's layer: y = x @ w (its weight in the attribute `w`)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units), name="w")

    def call(self, x):
        return keras.ops.matmul(x, self.w)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_quantize_config_for_a_custom_layer(tmp_path):
    from safeops.quantization import QuantizeConfig

    keras.utils.set_random_seed(3)
    inp = keras.Input((6,))
    model = keras.Model(inp, _Scale(5, name="scale")(inp))
    q = quantize_model(model, activation_bits=None,
                       quantize_configs={_Scale: QuantizeConfig(weights=("w",))})
    assert ("quant_scale", "_Scale") in quantization_report(q).quantized
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    w = model.get_layer("scale").w.numpy()
    np.testing.assert_allclose(q(x).numpy(), x.astype(np.float64) @ _symmetric_per_channel(w),
                               rtol=1e-5, atol=1e-6)
    assert isinstance(q.get_layer("quant_scale").layer.w, keras.Variable)  # restored
    q.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), q(x).numpy())
    # by class name too; a straight-through gradient reaches the float weight
    q2 = quantize_model(model, quantize_configs={"_Scale": {"weights": ["w"]}})
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(q2(x, training=True))
    assert tape.gradient(out, q2.get_layer("quant_scale").layer.w) is not None
    assert evaluate_quantization(model, q2, x).weight_sqnr_db["scale.w"] > 40
    with pytest.raises(TypeError, match="quantize_configs"):
        quantize_model(model, quantize_configs={_Scale: ("w",)})
    with pytest.raises(TypeError, match="QuantizeConfig.*weights"):
        QuantizeConfig(weights=(1,))
    with pytest.raises(ValueError, match=r"(?s)'scale'.*'kernel'"):
        quantize_model(model, quantize_configs={_Scale: QuantizeConfig(weights=("kernel",))})
