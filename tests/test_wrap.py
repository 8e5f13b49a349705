"""so.wrap_model: swaps, weights carried over, equal outputs on ordinary inputs, finite where Keras is not."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import layers, metrics


def _functional():
    inp = keras.Input((8,))
    mask = keras.Input((8,), dtype="bool")
    h = keras.layers.Dense(8, name="proj")(inp)
    h = keras.layers.LayerNormalization(name="ln")(h)
    s = keras.layers.Softmax(name="attn")(h, mask=mask)
    o = keras.layers.Dense(3, activation="softmax", name="head")(s)
    return keras.Model([inp, mask], [s, o])


def _ln_ref(x, eps):
    x64 = np.asarray(x, np.float64)
    m = x64.mean(-1, keepdims=True)
    return (x64 - m) / np.sqrt(((x64 - m) ** 2).mean(-1, keepdims=True) + eps)


def test_functional_swaps_and_equal_outputs():
    model = _functional()
    new, report = so.wrap_model(model)
    kinds = {type(l).__name__ for l in new.layers}
    assert {"StableSoftmax", "StableLayerNormalization"} <= kinds
    assert "Softmax" not in kinds and "LayerNormalization" not in kinds
    assert new.get_layer("head").activation is layers.stable_softmax
    assert any("ln" in r for r in report.replaced) and any("attn" in r for r in report.replaced)
    assert any(k.startswith("proj") for k in report.kept)
    for a, b in zip(model.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    m = rng.random((16, 8)) > 0.2
    m[:, 0] = True
    for a, b in zip(model([x, m]), new([x, m])):
        # the issue's bar: equal within 1e-6 on ordinary inputs
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, rtol=0)
    assert model.get_layer("ln") is not new.get_layer("ln")  # the original is untouched


def test_fully_masked_row_nan_in_original_finite_in_wrapped():
    inp = keras.Input((6,))
    bias = keras.Input((6,))  # additive attention mask: 0 or -inf
    s = keras.layers.Softmax()(keras.layers.Add()([inp, bias]))
    model = keras.Model([inp, bias], s)
    new, _ = so.wrap_model(model)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    b = np.zeros((3, 6), np.float32)
    b[1] = -np.inf  # row 1 fully masked
    assert np.isnan(model([x, b]).numpy()[1]).all()
    out = new([x, b]).numpy()
    assert np.all(np.isfinite(out)) and np.all(out[1] == 0)
    np.testing.assert_allclose(out[[0, 2]], model([x, b]).numpy()[[0, 2]], atol=1e-6, rtol=0)


def test_large_mean_layer_norm():
    """|mean|/std = 1e5 in float32: ours within 1e-4 of float64, Keras not."""
    seq = keras.Sequential([keras.Input((64,)), keras.layers.LayerNormalization(epsilon=1e-6)])
    new, report = so.wrap_model(seq)
    assert isinstance(new, keras.Sequential) and len(report.replaced) == 1
    x = (np.float32(1e5) + np.random.default_rng(2).standard_normal((4, 64))).astype(np.float32)
    ref = _ln_ref(x, 1e-6)
    ours = new(x).numpy()
    assert np.all(np.isfinite(ours)) and np.max(np.abs(ours - ref)) < 1e-4
    assert np.max(np.abs(seq(x).numpy() - ref)) > 1e-4  # Keras fails the same check


def _float16_rows(n=4096, rows=4, seed=3):
    """float16 rows with |mean|/std = 1.2e5: 30000 everywhere, one entry 30016 (spacing 16)."""
    x = np.full((rows, n), 30000.0, np.float16)
    x[np.arange(rows), np.random.default_rng(seed).integers(0, n, rows)] = 30016.0
    return x


@pytest.mark.parametrize("config", ["dtype_float16", "mixed_float16", "mixed_float16_f32_input"])
def test_layer_norm_half_precision_issue_case(config):
    """The issue's case: LayerNormalization input with |mean|/std = 1e5 in float16.

    What Keras 3.15 does (measured): it never gives NaN/inf here. Its
    `ops.layer_normalization` upcasts float16 to float32 and takes the moments
    with `tf.nn.moments` (two-pass, in float32); a mixed_float16 layer is not
    handed float16-cast inputs either (a float32 input stays float32 inside).
    Its error comes from ``x * inv + (-mean * inv)``, which cancels two float32
    terms of size |mean|/std: measured 16 float16 ulps on every entry of the
    float16 rows below, up to ~7600 ulps on the float32 input (outputs near 0).
    So the strongest honest check is accuracy: finite, and within 1 ulp of a
    float64 reference (the stable layer computes in float32 and rounds once;
    its float32 error ~n u << 1/2 ulp of float16), where Keras is not.
    """
    if config == "dtype_float16":
        policy, x, kw = "float32", _float16_rows(), {"dtype": "float16"}
    elif config == "mixed_float16":
        policy, x, kw = "mixed_float16", _float16_rows(), {}
    else:
        rng = np.random.default_rng(4)
        policy, kw = "mixed_float16", {}
        x = (np.float32(1e5) + 0.9 * rng.standard_normal((4, 256))).astype(np.float32)
    eps = 1e-3
    keras.mixed_precision.set_global_policy(policy)
    try:
        seq = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype.name),
                                keras.layers.LayerNormalization(epsilon=eps, **kw)])
        new, _ = so.wrap_model(seq)
        assert new.layers[-1].compute_dtype == "float16"
        theirs, ours = seq(x).numpy(), new(x).numpy()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x64 = x.astype(np.float64)
    assert np.min(np.abs(x64.mean(-1)) / x64.std(-1)) > 1e5  # the issue's ratio
    ref = _ln_ref(x, eps)
    assert ours.dtype == theirs.dtype == np.float16
    assert np.all(np.isfinite(ours))
    assert np.max(so.testing.ulp_distance(ours, ref, "float16")) <= 1
    assert np.all(np.isfinite(theirs))  # Keras 3.15: finite, but ...
    assert np.max(so.testing.ulp_distance(theirs, ref, "float16")) > 8  # ... inaccurate


def test_layer_norm_float16_small_rows():
    """256 float16 features, 5% at +16 (|mean|/std ~ 9e3): within 1 ulp; Keras is not."""
    seq16 = keras.Sequential([keras.Input((256,), dtype="float16"),
                              keras.layers.LayerNormalization(dtype="float16")])
    new16, _ = so.wrap_model(seq16)
    x16 = (30000.0 + 16.0 * (np.random.default_rng(3).random((4, 256)) < 0.05)).astype(np.float16)
    ref16 = _ln_ref(x16, 1e-3)
    # float32 computation rounded once to float16: within 1 ulp; Keras fails the same check
    assert np.max(so.testing.ulp_distance(new16(x16).numpy(), ref16, "float16")) <= 1
    assert np.max(so.testing.ulp_distance(seq16(x16).numpy(), ref16, "float16")) > 1


def test_activation_softmax_dense_option_and_nested():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
                              keras.layers.Activation("softmax")], name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inner(inp)))
    new, report = so.wrap_model(model, dense=True)
    sub = new.get_layer("inner")
    assert isinstance(sub.layers[-1], layers.StableSoftmax)
    assert isinstance(sub.layers[0], layers.CompensatedDense)
    assert any(r.startswith("inner/") for r in report.replaced)
    x = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), atol=1e-6, rtol=0)


def test_conv_softmax_activation():
    inp = keras.Input((6, 3))
    model = keras.Model(inp, keras.layers.Conv1D(4, 3, activation="softmax", name="conv")(inp))
    new, report = so.wrap_model(model)
    assert new.get_layer("conv").activation is layers.stable_softmax
    assert any(r.startswith("conv: Conv1D") for r in report.replaced)
    x = np.random.default_rng(6).standard_normal((2, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), atol=1e-6, rtol=0)


def test_compiled_model_losses_and_metrics():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    new, report = so.wrap_model(model)
    assert new.compiled
    assert any("CategoricalCrossentropy" in r for r in report.replaced)
    assert any("accuracy" in k for k in report.kept)
    x = np.random.default_rng(5).standard_normal((16, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(16) % 3]
    hist = new.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    # a Keras Sum/Mean object among the compile metrics is swapped for ours
    model.compile("adam", "mse", metrics=[keras.metrics.Mean(name="m")])
    new, report = so.wrap_model(model)
    assert isinstance(new._compile_config.config["metrics"][0], metrics.Mean)
    assert any("metrics.Mean" in r for r in report.replaced)


def test_bad_input_raises():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match=r"wrap_model.*'model'.*Sequential or Functional.*Sub"):
        so.wrap_model(Sub())
    with pytest.raises(TypeError, match=r"wrap_model.*'model'"):
        so.wrap_model(keras.layers.Dense(2))


# ---------------------------------------------------------------------------
# Rewriting by Keras's own cloning
# ---------------------------------------------------------------------------

def test_residual_op_node_issue_case():
    """A residual `x + y` (an op node, not a layer) used to raise AttributeError."""
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(8)(inp) + inp))
    new, report = so.wrap_model(model)
    x = np.random.default_rng(7).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(new(x).numpy(), model(x).numpy())  # nothing swapped
    assert len(report.kept) == 2 and not report.replaced
    qmodel = so.quantization.quantize_model(model)
    assert {c for _, c in so.quantization.quantization_report(qmodel).quantized} == {"Dense"}
    # keras.ops calls and a TF op inside a Lambda
    inp = keras.Input((8,))
    h = keras.ops.tanh(keras.layers.Dense(8)(inp))
    h = keras.layers.Lambda(lambda t: tf.math.log1p(tf.abs(t)))(h)
    model = keras.Model(inp, keras.layers.LayerNormalization()(h * 2.0))
    new, report = so.wrap_model(model)
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    so.quantization.quantize_model(model)


def test_softmax_output_loss_recovers_logits_issue_case():
    """Logits [60, 0, -60], label 2: the loss is 120 with gradient [1, 0, -1] after wrapping
    (StableSoftmax was a second softmax the losses could not read logits from: 16.118, 0)."""
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Softmax()(inp))
    model.compile("sgd", "categorical_crossentropy")
    new, _ = so.wrap_model(model)
    z = tf.constant([[60.0, 0.0, -60.0]])
    y = tf.constant([[0.0, 0.0, 1.0]])
    for m in (model, new):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = m.compute_loss(x=z, y=y, y_pred=m(z))
        grad = tape.gradient(loss, z).numpy()
        # exact: 120 + log1p(e^-60 + e^-120); gradient softmax(z) - y = [1, e^-60, -1]
        assert float(loss) == pytest.approx(120.0, rel=1e-7)
        np.testing.assert_allclose(grad, [[1.0, np.exp(-60.0), -1.0]], rtol=1e-6, atol=0)
        assert m.evaluate(z.numpy(), y.numpy(), verbose=0) == pytest.approx(120.0, rel=1e-7)


def test_mixed_float16_compiled_and_uncompiled_reports():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
        new, report = so.wrap_model(model)  # not compiled: the report says what to do
        assert "so.mixed_precision.LossScaleOptimizer" in report.mixed_precision
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        assert type(model.optimizer) is keras.optimizers.LossScaleOptimizer  # Keras's own
        new, report = so.wrap_model(model)
        assert isinstance(new.optimizer, so.mixed_precision.LossScaleOptimizer)
        assert isinstance(new.optimizer.inner_optimizer, keras.optimizers.SGD)
        assert "LossScaleOptimizer" in str(report) and "mixed precision:" in str(report)
        x = np.random.default_rng(8).standard_normal((8, 4)).astype(np.float32)
        hist = new.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


class _NoConfig(keras.layers.Layer):
    """A custom layer whose constructor argument is missing from its config."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units))

    def call(self, x):
        return x @ self.w

    def get_config(self):
        return super().get_config()  # `units` forgotten


def test_unrewritable_layer_raises_naming_the_layer():
    inp = keras.Input((4,))
    model = keras.Model(inp, _NoConfig(3, name="mine")(inp))
    for fn in (so.wrap_model, so.quantization.quantize_model):
        with pytest.raises(ValueError, match=r"(?s)layer 'mine' \(_NoConfig\).*config.*units"):
            fn(model)
    seq = keras.Sequential([keras.layers.Dense(2)])  # never built: no input shape
    with pytest.raises(ValueError, match="wrap_model.*input shape"):
        so.wrap_model(seq)


def test_shared_layers_trainability_dtype_policies_and_masks_carry_over():
    tok = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(20, 4, mask_zero=True, name="emb")(tok)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(emb)  # gets the Embedding mask
    shared = keras.layers.Dense(4, name="shared", trainable=False)
    h = shared(shared(pooled))
    out = keras.layers.Dense(2, dtype="float64", name="f64")(h)
    model = keras.Model(tok, out)
    new, _ = so.wrap_model(model)
    assert isinstance(new.get_layer("pool"), layers.StableGlobalAveragePooling1D)
    assert sum(layer.name == "shared" for layer in new.layers) == 1  # shared once
    assert not new.get_layer("shared").trainable
    assert new.get_layer("f64").dtype_policy.name == "float64"
    assert len(new.trainable_weights) == len(model.trainable_weights)
    x = np.array([[3, 4, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.int32)
    e = model.get_layer("emb").get_weights()[0].astype(np.float64)
    # the masked mean of the embeddings of the real tokens: the mask reached the pooling
    masked = new.get_layer("pool")(new.get_layer("emb")(x)).numpy()
    np.testing.assert_allclose(masked[0], (e[3] + e[4]) / 2, rtol=1e-6)
    np.testing.assert_allclose(masked[1], e[5], rtol=1e-6)
    assert np.all(masked[2] == 0)  # all padding: 0 (Keras: NaN)
    assert np.isnan(model(x).numpy()[2]).all() and np.isfinite(new(x).numpy()).all()
    np.testing.assert_allclose(new(x).numpy()[:2], model(x).numpy()[:2], rtol=1e-6)


def test_subclassed_block_sublayers_swapped_and_saved(tmp_path):
    import zoo

    model, x, _ = zoo.transformer()
    new, report = so.wrap_model(model)
    block = new.get_layer("decoder")
    assert isinstance(block, layers.SwappedSublayers)
    assert isinstance(block.layer, zoo.DecoderBlock)
    assert isinstance(block.layer.attention, layers.StableMultiHeadAttention)
    assert isinstance(block.layer.norm1, layers.StableLayerNormalization)
    assert block.layer._layers.index(block.layer.attention) == 1  # weight order kept
    assert "decoder/attention: MultiHeadAttention -> StableMultiHeadAttention" in report.replaced
    new.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    inner = loaded.get_layer("decoder").layer
    assert isinstance(inner.attention, layers.StableMultiHeadAttention)
    np.testing.assert_array_equal(loaded(x).numpy(), new(x).numpy())


class _LateBlock(keras.layers.Layer):
    """Creates its LayerNormalization in build(): too late to be swapped."""

    def build(self, shape):
        self.norm = keras.layers.LayerNormalization()
        self.norm.build(shape)

    def call(self, x):
        return self.norm(x)


def test_sublayer_created_in_build_is_reported_kept():
    inp = keras.Input((4,))
    model = keras.Model(inp, _LateBlock(name="late")(inp))
    new, report = so.wrap_model(model)
    assert any(k.startswith("late/") and "created in build()" in k for k in report.kept)
    x = np.random.default_rng(9).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(new(x).numpy(), model(x).numpy())


def test_keras_internals_used_by_the_rewrite_exist():
    """The touchpoints of safeops._core.rewrite: fails loudly when Keras moves them."""
    from keras.src.models.functional import Functional

    layer = keras.layers.Dense(2)
    assert isinstance(layer._layers, list)
    tracker = layer._tracker
    assert hasattr(tracker, "untrack") and hasattr(tracker, "locked")
    assert "layers" in tracker.stored_ids
    inp = keras.Input((2,))
    assert isinstance(keras.Model(inp, layer(inp)), Functional)
    assert "call_function" in keras.models.clone_model.__code__.co_varnames


def test_wrapping_twice_keeps_the_drop_ins():
    model = _functional()
    once, _ = so.wrap_model(model)
    twice, report = so.wrap_model(once)
    assert not report.replaced
    assert any(k.startswith("ln: StableLayerNormalization (already a safeops layer")
               for k in report.kept)
    rng = np.random.default_rng(10)
    x = [rng.standard_normal((4, 8)).astype(np.float32), np.ones((4, 8), bool)]
    for a, b in zip(once(x), twice(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_swapped_sublayers_config_round_trip():
    import copy

    import zoo

    model, _, _ = zoo.transformer()
    block = so.wrap_model(model)[0].get_layer("decoder")
    config = block.get_config()
    assert {"path": [["attention", None]],
            "class_name": "safeops>StableMultiHeadAttention"} in config["swaps"]
    clone = layers.SwappedSublayers.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert isinstance(clone.layer.ffn[0], keras.layers.Dense)
    assert isinstance(clone.layer.norm2, layers.StableLayerNormalization)
    bad = copy.deepcopy(config)
    bad["swaps"].append({"path": [["nothing", None]],
                         "class_name": "safeops>StableLayerNormalization"})
    with pytest.raises(ValueError, match="SwappedSublayers.*no sublayer"):
        layers.SwappedSublayers.from_config(bad)
