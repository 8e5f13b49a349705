"""so.layers: serialization (config, .keras, SavedModel export), mixed-precision fit, and numerics
against float64 / mpmath references, with the Keras layer failing the same checks."""

import copy

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf

from safeops import layers, testing

# (factory, input shape) for the generic serialization / fit tests
_LAYERS = {
    "StableSoftmax": (lambda: layers.StableSoftmax(axis=-1), (5,)),
    "StableLayerNormalization": (lambda: layers.StableLayerNormalization(epsilon=1e-5), (5,)),
    "Promote": (lambda: layers.Promote(keras.layers.Dense(4), dtype="float64"), (5,)),
    "CompensatedDense": (lambda: layers.CompensatedDense(4, activation="tanh"), (5,)),
    "SmoothSwitch": (lambda: layers.SmoothSwitch(threshold=0.1, temperature=0.5), (5,)),
    "StableRMSNormalization": (lambda: layers.StableRMSNormalization(epsilon=1e-5), (5,)),
    "StableGroupNormalization": (lambda: layers.StableGroupNormalization(groups=3), (6,)),
    "StableBatchNormalization": (lambda: layers.StableBatchNormalization(momentum=0.9), (5,)),
    "StableUnitNormalization": (lambda: layers.StableUnitNormalization(), (5,)),
    "StableGlobalAveragePooling1D": (lambda: layers.StableGlobalAveragePooling1D(), (4, 5)),
}


def _model(name):
    factory, shape = _LAYERS[name]
    inp = keras.Input(shape)
    h = keras.layers.Dense(shape[-1])(inp)  # something trainable in front of every layer
    return keras.Model(inp, factory()(h))


@pytest.fixture
def mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _x(n=8, d=5, seed=0, shape=None):
    shape = (n, d) if shape is None else (n,) + tuple(shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(_LAYERS))
def test_config_round_trip(name):
    layer = _LAYERS[name][0]()
    config = layer.get_config()
    clone = type(layer).from_config(copy.deepcopy(config))  # Wrapper.from_config pops keys
    assert clone.get_config() == config
    assert isinstance(clone, type(layer))


@pytest.mark.parametrize("name", sorted(_LAYERS))
def test_keras_file_and_saved_model_round_trip(name, tmp_path):
    model = _model(name)
    x = _x(shape=_LAYERS[name][1])
    expected = model(x).numpy()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)  # identical outputs
    export_dir = str(tmp_path / "export")
    model.export(export_dir, verbose=False)
    reloaded = tf.saved_model.load(export_dir)
    np.testing.assert_array_equal(reloaded.serve(tf.constant(x)).numpy(), expected)


@pytest.mark.parametrize("name", sorted(_LAYERS))
def test_fit_under_mixed_float16(name, mixed_policy):
    model = _model(name)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = _x(32, shape=_LAYERS[name][1])
    y = np.tanh(x.reshape(32, -1)[:, :1]) * np.ones((1, model.output_shape[-1]), np.float32)
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert model(x).dtype == tf.float16
    assert all(np.isfinite(w).all() for w in model.get_weights())


# ---------------------------------------------------------------------------
# StableSoftmax
# ---------------------------------------------------------------------------

def _softmax_ref(x, dtype):
    """Row-wise softmax in mpmath (60 digits), rounded once; all -inf rows -> 0."""
    x64 = np.asarray(x, np.float64)
    out = np.zeros_like(x64)
    with mpmath.workdps(60):
        for i, row in enumerate(x64):
            live = [mpmath.mpf(float(v)) for v in row if np.isfinite(v)]
            if not live:
                continue
            s = mpmath.fsum(mpmath.exp(v) for v in live)
            out[i] = [float(mpmath.exp(mpmath.mpf(float(v))) / s) if np.isfinite(v) else 0.0
                      for v in row]
    return testing.round_to_dtype(out, dtype)


def test_softmax_matches_reference_and_masked_rows():
    x = _x(6, 7)
    x[2] = -np.inf                   # a fully -inf row (additive attention mask)
    x[3, :4] = -np.inf               # a partly masked row
    mask = np.ones_like(x, bool)
    mask[4] = False                  # a fully masked row via the Keras mask
    ours = layers.StableSoftmax()(x, mask=mask).numpy()
    xm = np.where(mask, x, -np.inf)
    ref = _softmax_ref(xm, "float32")
    # tf.nn.softmax in float32: a few ulp per entry (sum of n exps + division)
    assert np.max(testing.ulp_distance(ours, ref, "float32")) <= 4
    assert np.all(ours[2] == 0) and np.all(ours[4] == 0)
    # Keras's Softmax: the all -inf row is NaN (the failure fixed here)
    theirs = keras.layers.Softmax()(x, mask=mask).numpy()
    assert np.isnan(theirs[2]).all()


def test_softmax_gradients():
    x = _x(3, 5).astype(np.float64)
    f = lambda t: layers.StableSoftmax(dtype="float64")(t) * tf.constant(np.arange(5.0))
    assert testing.check_gradients(f, x) < 1e-7  # float64 central differences
    xm = x.copy()
    xm[1] = -np.inf
    xm[2, :2] = -np.inf
    v = tf.constant(xm)
    with tf.GradientTape() as tape:
        tape.watch(v)
        y = tf.reduce_sum(layers.StableSoftmax(dtype="float64")(v) * np.arange(5.0))
    g = tape.gradient(y, v).numpy()
    assert np.all(g[1] == 0) and np.all(g[2, :2] == 0) and np.all(np.isfinite(g))
    with tf.GradientTape() as tape:  # plain TF: NaN gradient through the all -inf row
        tape.watch(v)
        y = tf.reduce_sum(tf.nn.softmax(v) * np.arange(5.0))
    assert np.isnan(tape.gradient(y, v).numpy()[1]).all()


def test_softmax_half_precision_computed_in_float32():
    x = (_x(4, 9) * 4).astype(np.float16)
    x[0] = -np.inf
    layer = layers.StableSoftmax(dtype="mixed_float16")
    out = layer(x)
    assert out.dtype == tf.float16
    ref = _softmax_ref(x, "float16")
    # computed in float32, rounded once to float16: <= 1 ulp of float16
    assert np.max(testing.ulp_distance(out.numpy(), ref, "float16")) <= 1


def test_softmax_execution_modes():
    x = _x(4, 6)
    x[1] = -np.inf
    layer = layers.StableSoftmax()
    res = testing.run_modes(lambda t: layer(t), tf.constant(x))
    ref = _softmax_ref(x, "float32")
    for mode, out in res.items():
        # XLA has its own softmax kernel: each mode within the same 4-ulp bound
        assert np.max(testing.ulp_distance(out, ref, "float32")) <= 4, mode
        assert np.all(out[1] == 0), mode


# ---------------------------------------------------------------------------
# StableLayerNormalization
# ---------------------------------------------------------------------------

def _ln_ref(x, eps):
    x64 = np.asarray(x, np.float64)
    m = x64.mean(-1, keepdims=True)
    return (x64 - m) / np.sqrt(((x64 - m) ** 2).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("ratio", [1e2, 1e4, 1e6])
def test_layer_norm_large_mean_float32(ratio):
    z = _x(8, 64)
    x = (np.float32(ratio) + z).astype(np.float32)  # std ~1, |mean|/std = ratio
    ref = _ln_ref(x, 1e-6)  # float64 layer norm of the same float32 inputs
    ours = layers.StableLayerNormalization(epsilon=1e-6)(x).numpy()
    theirs = keras.layers.LayerNormalization(epsilon=1e-6)(x).numpy()
    # two-pass with exact shift: error ~ (n + 3) u |y| + rounding of c: << 1e-4 absolute
    assert np.max(np.abs(ours - ref)) < 1e-4
    if ratio >= 1e4:  # Keras's one-pass variance fails the same check
        assert not np.max(np.abs(theirs - ref)) < 1e-4


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_layer_norm_half_precision(policy):
    # Rows near 30000 with sparse steps of a few ulps: |mean|/std ~ 4e3, about the
    # largest ratio float16 can represent (its spacing at 30000 is 16).
    dtype = np.float16 if policy == "mixed_float16" else tf.bfloat16.as_numpy_dtype
    rng = np.random.default_rng(3)
    step = 16.0 if policy == "mixed_float16" else 128.0
    x = (30000.0 + step * (rng.random((4, 256)) < 0.05)).astype(dtype)
    ref = _ln_ref(x, 1e-3)
    ours = layers.StableLayerNormalization(dtype=policy)(x)
    assert ours.dtype == tf.as_dtype(dtype)
    fmt = "float16" if policy == "mixed_float16" else "bfloat16"
    # float32 two-pass computation then one rounding: within 1 ulp of the output format
    assert np.max(testing.ulp_distance(ours.numpy(), ref, fmt)) <= 1
    if fmt == "float16":  # (bfloat16's 8 bits hide Keras's float32 error at such ratios)
        # Keras (one-pass variance in float32) fails the same 1-ulp check
        theirs = keras.layers.LayerNormalization(dtype=policy)(x).numpy()
        assert np.max(testing.ulp_distance(theirs, ref, fmt)) > 1


def test_layer_norm_float16_overflow_is_nan_for_plain_tf():
    """In float16 a hand-written E[x^2] - E[x]^2 overflows (inf - inf = NaN) at |x| ~ 1e3."""
    x = (np.float16(1000) + np.arange(8, dtype=np.float16)).reshape(1, 8)
    xt = tf.constant(x)
    naive = tf.math.rsqrt(tf.reduce_mean(xt * xt, -1) - tf.reduce_mean(xt, -1) ** 2)
    assert not np.all(np.isfinite(naive.numpy()))
    ours = layers.StableLayerNormalization(dtype="float16")(x).numpy()
    assert np.max(testing.ulp_distance(ours, _ln_ref(x, 1e-3), "float16")) <= 1


def test_layer_norm_weights_axes_and_gradients():
    x = _x(3, 4).reshape(3, 2, 2).astype(np.float64)
    for axis in (-1, [1, 2]):
        ours = layers.StableLayerNormalization(
            axis=axis, dtype="float64",
            gamma_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=1),
            beta_initializer=keras.initializers.RandomNormal(seed=2))
        ours.build(x.shape)
        gamma, beta = ours.get_weights()
        axes = (-1,) if axis == -1 else (1, 2)
        m = x.mean(axes, keepdims=True)
        ref = (x - m) / np.sqrt(((x - m) ** 2).mean(axes, keepdims=True) + 1e-3)
        ref = ref * gamma.reshape((1,) * (3 - gamma.ndim) + gamma.shape) + beta.reshape(
            (1,) * (3 - beta.ndim) + beta.shape)
        # float64 two-pass in NumPy as the reference: agreement to a few u64
        np.testing.assert_allclose(ours(x).numpy(), ref, rtol=1e-13, atol=1e-14)
        f = lambda t: ours(t) * tf.constant(np.arange(x.size, dtype=np.float64).reshape(x.shape))
        assert testing.check_gradients(f, x) < 1e-6


def test_layer_norm_execution_modes():
    x = (np.float32(1e5) + _x(4, 16)).astype(np.float32)
    layer = layers.StableLayerNormalization()
    res = testing.run_modes(lambda t: layer(t), tf.constant(x))
    ref = _ln_ref(x, 1e-3)
    for mode, out in res.items():
        assert np.max(np.abs(out - ref)) < 1e-4, mode  # XLA keeps the shift and two passes


# ---------------------------------------------------------------------------
# Promote, CompensatedDense, SmoothSwitch
# ---------------------------------------------------------------------------

def test_promote_runs_in_float64_and_shares_weights():
    inner = keras.layers.Dense(1, use_bias=False)
    layer = layers.Promote(inner, dtype="float64")
    x = np.array([[1e8, 1.0, -1e8]], np.float32)
    layer.build(x.shape)
    inner.kernel.assign(np.ones((3, 1)))
    assert layer.weights == inner.weights and inner.kernel.dtype == "float64"
    out = layer(x)
    assert out.dtype == tf.float32 and float(out[0, 0]) == 1.0  # exact in float64
    plain = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    assert float(plain(x)[0, 0]) != 1.0  # float32 Dense loses the 1.0


def test_compensated_dense_ill_conditioned():
    x, w, _, _ = testing.ill_conditioned_dot(64, 1e6, "float32", seed=1)
    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    exact = testing.exact_dot(x, w, dtype="float32")
    ours = layers.CompensatedDense(1, use_bias=False)
    ours.build((1, 64))
    ours.kernel.assign(w.reshape(64, 1))
    theirs = keras.layers.Dense(1, use_bias=False)
    theirs.build((1, 64))
    theirs.kernel.assign(w.reshape(64, 1))
    got = ours(x.reshape(1, 64)).numpy()[0, 0]
    # so.matmul's bound: within 1 ulp for condition up to 1e7 in float32
    assert testing.ulp_distance(got, exact, "float32") <= 1
    assert testing.ulp_distance(theirs(x.reshape(1, 64)).numpy()[0, 0], exact, "float32") > 1
    # rank-3 inputs give Dense's shape
    assert ours(np.ones((2, 3, 64), np.float32)).shape == (2, 3, 1)


def test_smooth_switch_reference_and_gradient():
    x = np.array([-1000.0, -1.0, 0.0, 0.3, 2.0, 1000.0])
    layer = layers.SmoothSwitch(threshold=0.5, temperature=0.25, dtype="float64")
    ref = testing.reference(lambda v: 1 / (1 + mpmath.exp(-(v - 0.5) / 0.25)), x,
                            dtype="float64")
    out = layer(x).numpy()
    assert np.max(testing.ulp_distance(out, ref, "float64")) <= 4  # smooth_where: <= 4 ulp
    assert out[0] == 0.0 and out[-1] == 1.0
    a, b = np.full(6, 3.0), np.full(6, -1.0)
    blend = layers.SmoothSwitch(threshold=0.5, temperature=0.25, dtype="float64")([x, a, b])
    np.testing.assert_allclose(blend.numpy(), ref * 3.0 - (1 - ref), rtol=1e-14, atol=1e-15)
    xm = np.array([-0.7, 0.1, 0.45, 0.9])
    assert testing.check_gradients(lambda t: layer(t), xm) < 1e-7


def test_bad_input_raises():
    for t in (0.0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="SmoothSwitch.*'temperature'"):
            layers.SmoothSwitch(temperature=t)
    for d in ("float128", "int32", "double"):
        with pytest.raises(ValueError, match="Promote.*'dtype'"):
            layers.Promote(keras.layers.Dense(2), dtype=d)
    # None is the documented default (float64), as Keras' own dtype=None means "the default"
    assert layers.Promote(keras.layers.Dense(2), dtype=None).promote_dtype == "float64"
    with pytest.raises(TypeError, match="Promote.*'layer'"):
        layers.Promote(lambda x: x)
    built = keras.layers.Dense(2)
    built.build((1, 3))
    with pytest.raises(ValueError, match="Promote.*'layer'"):
        layers.Promote(built, dtype="float64")
    with pytest.raises(ValueError, match="SmoothSwitch.*'inputs'"):
        layers.SmoothSwitch()([np.ones(2, np.float32)] * 2)


def test_promote_config_keeps_its_own_policy_and_promote_dtype(mixed_policy):
    layer = layers.Promote(keras.layers.Dense(2), dtype="float32")
    config = layer.get_config()
    assert config["promote_dtype"] == "float32"
    assert keras.dtype_policies.get(config["dtype"]).name == "mixed_float16"
    clone = layers.Promote.from_config(copy.deepcopy(config))
    assert (clone.promote_dtype, clone.dtype_policy.name) == ("float32", "mixed_float16")
    assert clone.layer.dtype_policy.name == "float32"


def test_promote_save_load_under_mixed_float16(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((5,))
        out = layers.Promote(keras.layers.Dense(3), dtype="float32")(keras.layers.Dense(5)(inp))
        model = keras.Model(inp, out)
        x = _x()
        expected = model(x)
        assert expected.dtype == tf.float16  # computed in float32, cast to the policy's float16
        path = tmp_path / "promote.keras"
        model.save(path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = keras.models.load_model(path)  # loaded under a float32 global policy
    got = loaded(x)
    assert got.dtype == tf.float16
    assert loaded.layers[-1].promote_dtype == "float32"
    assert loaded.layers[-1].layer.kernel.dtype == "float32"
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_promote_dtype_keyword_alone_keeps_the_global_policy():
    # promote_dtype given without dtype: the wrapper keeps the global policy (it used to get
    # the float64 default of `dtype` as its own policy).
    layer = layers.Promote(keras.layers.Dense(2), promote_dtype="float32")
    assert layer.promote_dtype == "float32"
    assert layer.dtype_policy.name == keras.mixed_precision.global_policy().name


# ---------------------------------------------------------------------------
# StableSoftmax delegates to so.softmax; Keras's mask checks
# ---------------------------------------------------------------------------

def test_softmax_is_so_softmax_and_carries_logits():
    import safeops as so

    x = tf.constant(_x(6, 7) * 30)
    np.testing.assert_array_equal(layers.StableSoftmax()(x).numpy(), so.softmax(x).numpy())
    np.testing.assert_array_equal(layers.stable_softmax(x).numpy(), so.softmax(x).numpy())
    assert layers.StableSoftmax()(x)._keras_logits is not None


def test_softmax_several_axes_reference():
    x = _x(3, 12).reshape(3, 3, 4) * 10
    x[1] = -np.inf  # a fully masked block
    got = layers.StableSoftmax(axis=[1, 2])(x).numpy()
    flat = x.reshape(3, 12)
    assert np.max(testing.ulp_distance(got.reshape(3, 12), _softmax_ref(flat, "float32"),
                                       "float32")) <= 3  # so.softmax's bound
    assert np.all(got[1] == 0)


@pytest.mark.parametrize("shape", [(2, 3), (2, 1, 5), (2, 5, 1), (5,), (1, 5), (2, 5)])
def test_softmax_mask_validation_as_keras(shape):
    x = np.zeros((2, 5), np.float32)
    mask = np.ones(shape, bool)
    try:
        keras.layers.Softmax()(x, mask=mask)
        keras_error = None
    except ValueError as err:
        keras_error = err
    if keras_error is None:
        layers.StableSoftmax()(x, mask=mask)
    else:
        with pytest.raises(ValueError, match="StableSoftmax.*mask"):
            layers.StableSoftmax()(x, mask=mask)


# ---------------------------------------------------------------------------
# Normalizations: error independent of |mean|/std, half precision, overflow
# ---------------------------------------------------------------------------

def _norm_ref(x, axes, eps):
    x64 = np.asarray(x, np.float64)
    m = x64.mean(axes, keepdims=True)
    v = ((x64 - m) ** 2).mean(axes, keepdims=True)
    return (x64 - m) / np.sqrt(v + eps)


def _large_mean(shape, ratio, seed=0):
    rng = np.random.default_rng(seed)
    return (np.float32(ratio) + rng.standard_normal(shape)).astype(np.float32)


# (stable, keras, kwargs, reference axes, call kwargs)
_NORMS = {
    "layer": (layers.StableLayerNormalization, keras.layers.LayerNormalization,
              dict(epsilon=1e-6), (-1,), {}),
    "group": (layers.StableGroupNormalization, keras.layers.GroupNormalization,
              dict(groups=1, epsilon=1e-6), (1, 2), {}),
    "batch_training": (layers.StableBatchNormalization, keras.layers.BatchNormalization,
                       dict(epsilon=1e-6), (0, 1), {"training": True}),
}


@pytest.mark.parametrize("kind", sorted(_NORMS))
def test_normalization_error_independent_of_mean(kind):
    """|mean|/std = 1e4 in float32: within 4 u*log2(n)-ish of float64 (bound: 2e-6 absolute on
    outputs of size ~1); the Keras layer fails the same check (x*inv - mean*inv cancels)."""
    stable, original, kw, axes, call_kw = _NORMS[kind]
    x = _large_mean((16, 8, 8), 1e4)
    ref = _norm_ref(x, axes, kw["epsilon"])
    ours, theirs = stable(**kw), original(**kw)
    err_ours = np.max(np.abs(ours(x, **call_kw).numpy() - ref))
    err_theirs = np.max(np.abs(theirs(x, **call_kw).numpy() - ref))
    assert err_ours <= 2e-6
    assert err_theirs > 2e-6


def test_batch_normalization_inference_and_moving_statistics():
    x = _large_mean((32, 6), 1e4)
    ours, theirs = layers.StableBatchNormalization(epsilon=1e-6), \
        keras.layers.BatchNormalization(epsilon=1e-6)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.moving_mean.assign(x.astype(np.float64).mean(0).astype(np.float32))
        layer.moving_variance.assign(x.astype(np.float64).var(0).astype(np.float32))
    ref = (x.astype(np.float64) - np.asarray(ours.moving_mean, np.float64)) / np.sqrt(
        np.asarray(ours.moving_variance, np.float64) + 1e-6)
    assert np.max(np.abs(ours(x).numpy() - ref)) <= 2e-6
    assert np.max(np.abs(theirs(x).numpy() - ref)) > 2e-6
    # training updates the moving statistics as Keras does (same momentum formula)
    a, b = layers.StableBatchNormalization(), keras.layers.BatchNormalization()
    y = _x(32, 6)
    a(y, training=True), b(y, training=True)
    np.testing.assert_allclose(a.moving_mean.numpy(), b.moving_mean.numpy(), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(a.moving_variance.numpy(), b.moving_variance.numpy(), rtol=1e-6)
    # masked training batch: statistics over the unmasked steps; all-masked: finite
    seq = _x(4, 30).reshape(4, 5, 6)
    mask = np.ones((4, 5), bool)
    mask[:, 3:] = False
    bn = layers.StableBatchNormalization(momentum=0.0, epsilon=1e-6)
    bn(seq, training=True, mask=mask)
    kept = seq[mask].astype(np.float64)
    np.testing.assert_allclose(bn.moving_mean.numpy(), kept.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), kept.var(0), rtol=1e-5)
    out = layers.StableBatchNormalization()(seq, training=True, mask=np.zeros((4, 5), bool))
    assert np.all(np.isfinite(out.numpy()))
    with pytest.raises(ValueError, match="mask"):
        layers.StableBatchNormalization()(seq, training=True, mask=np.ones((4,), bool))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", ["layer", "group", "batch", "rms", "unit"])
def test_normalization_half_precision_within_one_ulp(kind, policy):
    """Computed in float32 and rounded once: within 1 ulp of the float64 reference of the
    (half-precision) input."""
    dtype = policy.split("_")[1]
    x = (3.0 + _x(8, 16).reshape(8, 2, 8)).astype(dtype)
    x64 = x.astype(np.float64)
    if kind == "layer":
        layer, ref = layers.StableLayerNormalization(dtype=policy), _norm_ref(x64, (-1,), 1e-3)
    elif kind == "group":
        layer = layers.StableGroupNormalization(groups=2, dtype=policy)
        g = x64.reshape(8, 2, 2, 4)
        ref = _norm_ref(g, (1, 3), 1e-3).reshape(x.shape)
    elif kind == "batch":
        layer, ref = layers.StableBatchNormalization(dtype=policy), _norm_ref(x64, (0, 1), 1e-3)
    elif kind == "rms":
        layer = layers.StableRMSNormalization(dtype=policy)
        ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6)
    else:
        layer = layers.StableUnitNormalization(dtype=policy)
        ref = x64 / np.sqrt((x64 ** 2).sum(-1, keepdims=True))
    out = layer(x, training=True) if kind == "batch" else layer(x)
    assert out.dtype == dtype
    assert np.max(testing.ulp_distance(np.asarray(out), ref, dtype)) <= 1


def test_rms_normalization_no_overflow():
    x = np.array([[3e19, 4e19], [3.0, 4.0], [0.0, 0.0]], np.float32)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6)
    ours = layers.StableRMSNormalization()(x).numpy()
    assert np.max(testing.ulp_distance(ours, ref, "float32")) <= 2
    assert np.all(keras.layers.RMSNormalization()(x).numpy()[0] == 0)  # Keras: x^2 overflows
    # the gradient of the rescaled formula matches finite differences in float64
    x = tf.constant([[1e3, -2e3, 0.5], [0.1, 0.2, -0.3]], tf.float64)
    layer = layers.StableRMSNormalization(dtype="float64")
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x) * tf.constant([1.0, 2.0, 3.0], tf.float64))
    g = tape.gradient(y, x).numpy()

    def f(v):
        v = np.asarray(v)
        return np.sum(v / np.sqrt((v ** 2).mean(-1, keepdims=True) + 1e-6) * [1.0, 2.0, 3.0])

    h = 1e-6
    fd = np.zeros_like(g)
    for i in np.ndindex(g.shape):
        e = np.zeros_like(g)
        e[i] = h * max(1.0, abs(x.numpy()[i]))
        fd[i] = (f(x.numpy() + e) - f(x.numpy() - e)) / (2 * e[i])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)


def test_unit_normalization_float16_zero_and_large():
    zero = np.zeros((2, 3), np.float16)
    assert np.isnan(keras.layers.UnitNormalization(dtype="float16")(zero).numpy()).all()
    np.testing.assert_array_equal(layers.StableUnitNormalization(dtype="float16")(zero).numpy(),
                                  zero)
    big = np.full((1, 3), 300.0, np.float16)  # sum of squares 2.7e5 > 65504
    assert np.all(keras.layers.UnitNormalization(dtype="float16")(big).numpy() == 0)
    ours = layers.StableUnitNormalization(dtype="float16")(big).numpy()
    assert np.max(testing.ulp_distance(ours, np.full((1, 3), 1 / np.sqrt(3)), "float16")) <= 1
    # gradient at the zero vector: 1e12 * g in float32, saturated (finite) in float16
    z = tf.zeros((1, 3), tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(z)
        y = layers.StableUnitNormalization(dtype="float16")(z)
    g = tape.gradient(y, z).numpy()
    assert np.all(np.isfinite(g)) and np.all(g == np.float16(65504))
    z32 = tf.zeros((1, 3))
    with tf.GradientTape() as tape:
        tape.watch(z32)
        y = layers.StableUnitNormalization()(z32)
    np.testing.assert_allclose(tape.gradient(y, z32).numpy(), 1e12, rtol=1e-6)


def test_global_average_pooling_all_masked_and_float16_sum():
    x = _x(3, 8).reshape(3, 4, 2)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    assert np.isnan(keras.layers.GlobalAveragePooling1D()(x, mask=mask).numpy()[1]).all()
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = layers.StableGlobalAveragePooling1D()(xt, mask=mask)
    grad = tape.gradient(out, xt).numpy()
    np.testing.assert_allclose(out.numpy()[0], x[0, :2].astype(np.float64).mean(0), rtol=1e-6)
    assert np.all(out.numpy()[1] == 0) and np.all(grad[1] == 0)
    np.testing.assert_allclose(grad[0], mask[0][:, None] / 2 * np.ones((4, 2)))
    np.testing.assert_array_equal(layers.StableGlobalAveragePooling1D()(x).numpy(),
                                  keras.layers.GlobalAveragePooling1D()(x).numpy())
    # float16: 1000 steps of 100 sum to 1e5 > 65504
    big = np.full((1, 1000, 1), 100.0, np.float16)
    keep = np.ones((1, 1000), bool)
    assert np.isinf(keras.layers.GlobalAveragePooling1D(dtype="float16")(big, mask=keep)
                    .numpy()).all()
    out = layers.StableGlobalAveragePooling1D(dtype="float16")(big, mask=keep).numpy()
    assert out.dtype == np.float16 and np.all(out == 100)


# ---------------------------------------------------------------------------
# StableMultiHeadAttention
# ---------------------------------------------------------------------------

def _mha_pair(dtype=None, **kw):
    x = _x(2, 40).reshape(2, 5, 8)
    ours = layers.StableMultiHeadAttention(num_heads=2, key_dim=4, dtype=dtype, **kw)
    theirs = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dtype=dtype, **kw)
    ours(x, x)
    theirs(x, x)
    theirs.set_weights(ours.get_weights())
    return ours, theirs, x


def test_mha_parity_with_keras_and_masks():
    ours, theirs, x = _mha_pair()
    rng = np.random.default_rng(1)
    mask = rng.random((2, 5, 5)) > 0.3
    mask[:, :, 0] = True  # every query has a key: Keras's rows are then well defined
    for kw in ({}, {"attention_mask": mask}, {"use_causal_mask": True},
               {"attention_mask": mask, "use_causal_mask": True}):
        np.testing.assert_allclose(ours(x, x, **kw).numpy(), theirs(x, x, **kw).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_mha_fully_masked_rows_zero_weights_and_gradient():
    ours, theirs, x = _mha_pair()
    mask = np.ones((2, 5, 5), bool)
    mask[0, 2] = False  # query 2 of sample 0 has no key
    _, w_theirs = theirs(x, x, attention_mask=mask, return_attention_scores=True)
    assert np.allclose(w_theirs.numpy()[0, :, 2], 0.0) or np.allclose(
        w_theirs.numpy()[0, :, 2], 1 / 5)  # Keras: zeros or uniform, never a rule
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out, w = ours(xt, xt, attention_mask=mask, return_attention_scores=True)
        loss = tf.reduce_sum(w[0, :, 2])
    assert np.all(w.numpy()[0, :, 2] == 0)
    grad = tape.gradient(loss, xt)
    assert grad is None or np.all(grad.numpy() == 0)
    # the masked query's output is the output projection's bias alone
    bias = ours._output_dense.bias.numpy()
    np.testing.assert_allclose(out.numpy()[0, 2], bias, rtol=1e-6)


def test_mha_float16_scores_do_not_overflow():
    """q.k beyond 65504 in float16: Keras's scores overflow (inf - inf = NaN in its softmax);
    ours are computed in float32 and match a float64 reference of the same weights."""
    ours, theirs, x = _mha_pair(dtype="float16")
    for layer in (ours, theirs):
        layer._query_dense.kernel.assign(np.full(layer._query_dense.kernel.shape, 8.0))
        layer._key_dense.kernel.assign(np.full(layer._key_dense.kernel.shape, 8.0))
    big = np.abs(x).astype(np.float16) * 4
    theirs_out = theirs(big, big).numpy()
    ours_out = ours(big, big).numpy()
    assert not np.all(np.isfinite(theirs_out))
    assert np.all(np.isfinite(ours_out))
    # float64 reference from the layer's own weights
    w = {v.path.split("/")[-2] + "/" + v.path.split("/")[-1]: np.asarray(v, np.float64)
         for v in ours.weights}
    b64 = big.astype(np.float64)
    q = np.einsum("btd,dnh->btnh", b64, w["query/kernel"]) + w["query/bias"]
    k = np.einsum("bsd,dnh->bsnh", b64, w["key/kernel"]) + w["key/bias"]
    v = np.einsum("bsd,dnh->bsnh", b64, w["value/kernel"]) + w["value/bias"]
    s = np.einsum("bsnh,btnh->bnts", k, q / 2.0)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", p, v)
    ref = np.einsum("btnh,nhd->btd", o, w["attention_output/kernel"]) + \
        w["attention_output/bias"]
    # weights rounded to float16 once, the rest in float16 as Keras: a few float16 ulps of |ref|
    np.testing.assert_allclose(ours_out, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def test_mha_config_keras_round_trip_and_flash_attention(tmp_path):
    ours, _, x = _mha_pair(dropout=0.0)
    clone = layers.StableMultiHeadAttention.from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()
    inp = keras.Input((5, 8))
    model = keras.Model(inp, layers.StableMultiHeadAttention(2, 4)(inp, inp,
                                                                  use_causal_mask=True))
    expected = model(x).numpy()
    model.save(tmp_path / "m.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "m.keras")(x).numpy(),
                                  expected)
    with pytest.raises(ValueError, match="StableMultiHeadAttention.*flash_attention"):
        layers.StableMultiHeadAttention(2, 4, flash_attention=True)


@pytest.mark.parametrize("name", ["StableLayerNormalization", "StableGroupNormalization",
                                  "StableUnitNormalization", "StableGlobalAveragePooling1D",
                                  "StableRMSNormalization"])
def test_new_layers_execution_modes(name):
    layer = _LAYERS[name][0]()
    x = _x(4, shape=_LAYERS[name][1])
    eager = layer(x).numpy()
    graph = tf.function(layer)(x).numpy()
    xla = tf.function(layer, jit_compile=True)(x).numpy()
    assert np.max(testing.ulp_distance(graph, eager, "float32")) <= 1
    assert np.max(testing.ulp_distance(xla, eager, "float32")) <= 2


def test_batch_norm_renorm_is_keras_and_unit_norm_float32_overflow():
    x = _x(16, 4)
    ours = layers.StableBatchNormalization(renorm=True)
    theirs = keras.layers.BatchNormalization(renorm=True)
    ours.build(x.shape), theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    for training in (True, False):
        np.testing.assert_array_equal(ours(x, training=training).numpy(),
                                      theirs(x, training=training).numpy())
    # squares of 4e19 overflow in float32: Keras's x * rsqrt(inf) is 0
    big = np.array([[3e19, 4e19]], np.float32)
    assert np.all(keras.layers.UnitNormalization()(big).numpy() == 0)
    assert np.max(testing.ulp_distance(layers.StableUnitNormalization()(big).numpy(),
                                       np.array([[0.6, 0.8]]), "float32")) <= 2
