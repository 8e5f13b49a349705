"""The cross-entropy losses next to Keras's: arguments, configs, reductions, weights, masks."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import losses
from safeops._core import keras_compat

PAIRS = [(losses.BinaryCrossentropy, keras.losses.BinaryCrossentropy),
         (losses.CategoricalCrossentropy, keras.losses.CategoricalCrossentropy),
         (losses.SparseCategoricalCrossentropy, keras.losses.SparseCategoricalCrossentropy)]
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None, "none"]


def _logsumexp(z, axis=-1):
    m = np.max(z, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(z - m), axis=axis))


def _elementwise_reference(kind, y, z, label_smoothing=0.0, axis=-1):
    """Per-sample float64 loss from logits, written from the formulas."""
    y, z = np.asarray(y, np.float64), np.asarray(z, np.float64)
    if kind == "binary":
        y = y * (1 - label_smoothing) + 0.5 * label_smoothing
        return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), axis=axis)
    if kind == "categorical":
        k = z.shape[axis]
        y = y * (1 - label_smoothing) + label_smoothing / k
        return np.sum(y * (_logsumexp(z, axis)[..., None] if axis == -1 else
                           np.expand_dims(_logsumexp(z, axis), axis)) - y * z, axis=axis)
    labels = y.astype(np.int64)
    picked = np.take_along_axis(z, labels[..., None], -1)[..., 0]
    return _logsumexp(z) - picked


def _reduce_reference(values, weight, reduction):
    values = np.asarray(values, np.float64)
    if weight is not None:
        weight = np.asarray(weight, np.float64)
        if weight.ndim == values.ndim + 1 and weight.shape[-1] == 1:
            weight = weight[..., 0]
        values = values * weight
    if reduction in (None, "none"):
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weight is not None:
        return total / np.broadcast_to(weight, weight.shape).sum()
    return total / values.size


def _data(kind, rng, shape=(6, 4, 5)):
    z = rng.normal(size=shape).astype(np.float32) * 3
    if kind == "binary":
        y = (rng.random(shape) < 0.5).astype(np.float32)
    elif kind == "categorical":
        y = np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])]
    else:
        y = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
    return y, z


def _kind(cls):
    return {"BinaryCrossentropy": "binary", "CategoricalCrossentropy": "categorical",
            "SparseCategoricalCrossentropy": "sparse"}[cls.__name__]


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_constructor_arguments_and_defaults_are_keras(ours, theirs):
    k = inspect.signature(theirs).parameters
    o = inspect.signature(ours).parameters
    assert list(k) == list(o)
    for name in k:
        assert o[name].default == k[name].default, name


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_config_round_trips_both_ways(ours, theirs):
    kwargs = {"from_logits": True, "reduction": "sum", "name": "xent"}
    if ours is losses.SparseCategoricalCrossentropy:
        kwargs["ignore_class"] = 3
    else:
        kwargs["label_smoothing"] = 0.2
    keras_config = theirs(**kwargs).get_config()
    our_config = ours(**kwargs).get_config()
    assert set(keras_config) <= set(our_config)
    assert {k: our_config[k] for k in keras_config} == keras_config
    assert ours.from_config(keras_config).get_config() == our_config
    assert theirs.from_config(our_config).get_config() == keras_config


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", [None, (), (6,), (6, 1), (6, 4), (6, 4, 1)])
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_reductions_and_sample_weights_match_keras(ours, theirs, weight_shape, reduction):
    rng = np.random.default_rng(7)
    kind = _kind(ours)
    y, z = _data(kind, rng)
    weight = None if weight_shape is None else rng.random(weight_shape).astype(np.float32) + 0.1
    if weight_shape == (6,):  # does not broadcast against (6, 4) losses: Keras's error
        for cls in (ours, theirs):
            with pytest.raises(tf.errors.InvalidArgumentError):
                cls(from_logits=True, reduction=reduction)(y, z, sample_weight=weight)
        return
    got = ours(from_logits=True, reduction=reduction)(y, z, sample_weight=weight).numpy()
    want = theirs(from_logits=True, reduction=reduction)(y, z, sample_weight=weight).numpy()
    ref = _reduce_reference(_elementwise_reference(kind, y, z), weight, reduction)
    assert got.shape == want.shape == np.shape(ref) and got.dtype == want.dtype == np.float32
    # Keras's float32 sum over n <= 24 terms: |error| <= (n + 4) u |sum of |terms||.
    np.testing.assert_allclose(want, ref, rtol=28 * 2.0**-24 * 4, atol=1e-6)
    # Ours: the elementwise kernel's few ulps, then one rounding of the wide sum.
    np.testing.assert_allclose(got, ref, rtol=8 * 2.0**-24, atol=1e-7)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_axis_matches_keras(ours, theirs, axis):
    rng = np.random.default_rng(3)
    kind = _kind(ours)
    z = rng.normal(size=(3, 4, 5)).astype(np.float32)
    if kind == "sparse":
        y = rng.integers(0, z.shape[axis], np.delete(z.shape, axis % 3)).astype(np.int32)
    elif kind == "binary":
        y = (rng.random(z.shape) < 0.5).astype(np.float32)
    else:
        y = np.moveaxis(np.eye(z.shape[axis], dtype=np.float32)[
            rng.integers(0, z.shape[axis], np.delete(z.shape, axis % 3))], -1, axis)
    got = ours(from_logits=True, axis=axis, reduction=None)(y, z).numpy()
    if kind == "sparse" and axis != -1:
        # Keras's TF backend refuses a class axis other than -1; ours moves it last.
        with pytest.raises(ValueError, match="axis"):
            theirs(from_logits=True, axis=axis, reduction=None)(y, z)
        z = np.moveaxis(z, axis, -1)
        axis = -1
    want = theirs(from_logits=True, axis=axis, reduction=None)(y, z).numpy()
    assert got.shape == want.shape
    # Ours against float64 within the documented bounds (u = 2**-24, n = k = size of axis):
    # binary labels in {0, 1}: relative (n + 3) u; categorical/sparse: (k + 2) u (1 + L).
    ref = _elementwise_reference(kind, y, z, axis=axis)
    n, u = z.shape[axis], 2.0**-24
    bound = (n + 3) * u * np.abs(ref) if kind == "binary" else (n + 2) * u * (1 + np.abs(ref))
    assert np.all(np.abs(np.float64(got) - ref) <= bound)
    # Keras reduces over the same axis: its losses are the same ones, within the same bound.
    assert np.all(np.abs(np.float64(want) - ref) <= bound)


@pytest.mark.parametrize("smoothing", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("ours,theirs", PAIRS[:2])
def test_label_smoothing_matches_keras_and_reference(ours, theirs, smoothing):
    rng = np.random.default_rng(5)
    kind = _kind(ours)
    y, z = _data(kind, rng, (8, 5))
    got = ours(from_logits=True, label_smoothing=smoothing, reduction=None)(y, z).numpy()
    want = theirs(from_logits=True, label_smoothing=smoothing, reduction=None)(y, z).numpy()
    ref = _elementwise_reference(kind, y, z, smoothing)
    # The documented bounds for soft labels (u = 2**-24, n = k = 5 classes): binary
    # (max(z, 0) - z y cancels) absolute (n + 3) u (mean |z| + L); categorical (k + 2) u (1 + L).
    n, u = z.shape[-1], 2.0**-24
    if kind == "binary":
        bound = (n + 3) * u * (np.mean(np.abs(np.float64(z)), axis=-1) + np.abs(ref))
    else:
        bound = (n + 2) * u * (1 + np.abs(ref))
    assert np.all(np.abs(np.float64(got) - ref) <= bound)
    assert np.all(np.abs(np.float64(want) - ref) <= bound)  # Keras: the same smoothing rule


def test_ignore_class_excludes_ignored_entries_from_the_mean():
    """The ignored entries must not count in the mean (they used to halve this loss)."""
    y = np.array([[-1, 2]])
    z = np.array([[[0.854, 0.698, 0.598], [0.088, 0.86, 0.018]]], np.float32)
    ref = float(_logsumexp(z[0, 1].astype(np.float64)) - np.float64(z[0, 1, 2]))
    assert ref == pytest.approx(1.480129, abs=1e-6)
    got = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)(y, z)
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)(y, z)
    assert float(got) == pytest.approx(ref, rel=2.0**-23)
    assert float(want) == pytest.approx(ref, rel=1e-6)
    # The gradient is that of the valid entry alone: softmax - onehot, ignored entry 0.
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)(y, zt)
    g = tape.gradient(loss, zt).numpy()
    p = np.exp(z[0, 1] - _logsumexp(z[0, 1]))
    np.testing.assert_allclose(g[0, 1], p - np.eye(3)[2], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g[0, 0], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_class_with_weights_and_reductions_matches_keras(reduction):
    rng = np.random.default_rng(11)
    y = rng.integers(0, 4, (5, 3)).astype(np.int32)
    y[rng.random((5, 3)) < 0.4] = 255
    z = rng.normal(size=(5, 3, 4)).astype(np.float32)
    z[y == 255] = np.nan  # ignored entries must not leak NaN
    w = rng.random((5, 3)).astype(np.float32)
    for weight in (None, w):
        got = losses.SparseCategoricalCrossentropy(True, 255, reduction)(y, z, weight).numpy()
        zk = np.where(np.isnan(z), 0.0, z).astype(np.float32)  # Keras zeroes them too
        want = keras.losses.SparseCategoricalCrossentropy(True, 255, reduction)(y, zk,
                                                                               weight).numpy()
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-7)


def test_keras_mask_on_predictions_is_applied_like_keras():
    rng = np.random.default_rng(2)
    y, z = _data("categorical", rng, (4, 6, 3))
    mask = rng.random((4, 6)) < 0.6
    for reduction in REDUCTIONS:
        results = []
        for cls in (losses.CategoricalCrossentropy, keras.losses.CategoricalCrossentropy):
            zt = tf.constant(z)
            keras_compat.set_keras_mask(zt, tf.constant(mask))
            results.append(cls(from_logits=True, reduction=reduction)(y, zt).numpy())
        np.testing.assert_allclose(results[0], results[1], rtol=3e-6, atol=1e-7)
    ref = _elementwise_reference("categorical", y, z)[mask].mean()
    assert results[0].shape == (4, 6)
    zt = tf.constant(z)
    keras_compat.set_keras_mask(zt, tf.constant(mask))
    got = float(losses.CategoricalCrossentropy(from_logits=True)(y, zt))
    assert got == pytest.approx(ref, rel=4 * 2.0**-24)


def test_mask_from_a_model_in_fit_matches_keras():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 9, (16, 7))
    x[:, 5:] = 0  # padding, masked by the Embedding
    y = rng.integers(0, 3, (16, 7))
    results = []
    for loss in (losses.SparseCategoricalCrossentropy(from_logits=True),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((7,), dtype="int32"),
                                  keras.layers.Embedding(9, 4, mask_zero=True),
                                  keras.layers.Dense(3)])
        model.compile("sgd", loss)
        results.append(model.evaluate(x, y, verbose=0, batch_size=16))
    assert results[0] == pytest.approx(results[1], rel=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_dtypes_under_policies_match_keras(ours, theirs, policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        rng = np.random.default_rng(1)
        y, z = _data(_kind(ours), rng, (4, 5))
        half = keras.mixed_precision.dtype_policy().compute_dtype
        zc = tf.cast(z, half)
        got = ours(from_logits=True)(y, zc)
        want = theirs(from_logits=True)(y, zc)
        assert got.dtype == want.dtype
        assert got.shape == want.shape == ()
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        got = ours(from_logits=True, dtype=half, reduction=None)(y, zc)
        want = theirs(from_logits=True, dtype=half, reduction=None)(y, zc)
        assert got.dtype == want.dtype == tf.as_dtype(half)
        tol = 2.0**-7 if half == "bfloat16" else 2.0**-10
        np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_keras_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile("sgd", losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0,
                                                              axis=-1))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loss = loaded.loss
    assert isinstance(loss, losses.SparseCategoricalCrossentropy)
    assert (loss.from_logits, loss.ignore_class, loss.axis) == (True, 0, -1)


def test_execution_modes_agree():
    rng = np.random.default_rng(9)
    y, z = _data("sparse", rng, (6, 4))
    y[0] = -1
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    eager = float(loss(y, z))
    graph = float(tf.function(loss)(y, z))
    xla = float(tf.function(loss, jit_compile=True)(y, z))
    assert eager == graph == pytest.approx(xla, rel=2.0**-23)


@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_reduction_is_rounded_once_from_the_exact_weighted_sum(reduction):
    # Every per-sample loss is fl(log 2) (z = 0), so the exact reduction is
    # fl(log 2) * sum(w) / divisor: products of two float32 are exact in float64.
    import math
    n = 20000
    w = np.random.default_rng(8).random(n).astype(np.float32)
    y, z = np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32)
    got = losses.BinaryCrossentropy(from_logits=True, reduction=reduction)(y, z, w)
    per = float(np.float32(math.log1p(1.0)))
    exact = math.fsum(per * float(x) for x in w)
    if reduction == "sum_over_batch_size":
        exact /= n
    elif reduction == "mean_with_sample_weight":
        exact /= math.fsum(float(x) for x in w)
    assert float(got) == float(np.float32(exact))
