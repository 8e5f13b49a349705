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


def _x(n=8, d=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


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
    x = _x()
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
    x = _x(32)
    y = np.tanh(x[:, :1]) * np.ones((1, model.output_shape[-1]), np.float32)
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
