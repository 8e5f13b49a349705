"""so.wrap_model on the model zoo: rewriting succeeds, outputs equal the original's, one fit step
runs, .keras round trip without custom_objects, and all-padding batches give no NaN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
import zoo  # tests/zoo: pytest puts tests/ on sys.path

# Relative agreement of wrapped and original outputs: each swapped layer is within a few ulp
# of its original (docstring of wrap_model: ~10 u relative per swapped layer on
# well-conditioned inputs); a dozen swapped layers in float32 give <= 1e-5 relative, which is
# the bound used here (with an absolute floor of 1e-6 for outputs near 0).
_RTOL, _ATOL = 1e-5, 1e-6

_DEFAULT = ["transformer", "lstm", "small_cnn", "unet", "mlp", "two_in_two_out", "nested"]
_SLOW = ["mobilenet", "resnet50", "efficientnet"]
_TOKENS = {"transformer", "lstm", "two_in_two_out"}  # models with a padding mask
# fit steps run compiled (tf.function) for these; the others run the same step eagerly, which
# skips tracing and XLA-compiling the fused safeops kernels (most of the test time on 2 cores)
_GRAPH_FIT = {"small_cnn", "mlp", "resnet50"}


def _listify(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _loss(model):
    losses = []
    for out in _listify(model.outputs):
        losses.append("mse" if out.shape[-1] == 1 else "sparse_categorical_crossentropy")
    return losses if len(losses) > 1 else losses[0]


def _predict(model, x):
    """Inference outputs as NumPy (an eager call: the zoo's batches are small)."""
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _finite_rows(arrays):
    """Rows (samples) where every original output is finite."""
    ok = None
    for a in arrays:
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        r = np.isfinite(a).all(1)
        ok = r if ok is None else ok & r
    return ok


def _check(name, tmp_path):
    model, x, y = getattr(zoo, name)()
    new, report = so.wrap_model(model)
    assert report.replaced, f"{name}: nothing swapped"
    text = str(report)
    assert "replaced" in text and "kept" in text
    # every layer of the original (nested models included) is in the report, swapped or kept
    listed = {line.split(":")[0].split("/")[-1] for line in report.replaced + report.kept}
    missing = [layer.name for layer in _layers(model) if layer.name not in listed]
    assert not missing, f"{name}: layers missing from the report: {missing}"
    # outputs equal within the documented bound where the original is finite
    ref = _listify(_predict(model, x))
    out = _listify(_predict(new, x))
    rows = _finite_rows(ref)
    assert rows.any()
    for a, b in zip(ref, out):
        np.testing.assert_allclose(np.asarray(b)[rows], np.asarray(a)[rows], rtol=_RTOL,
                                   atol=_ATOL)
        assert np.isfinite(np.asarray(b, np.float64)).all(), f"{name}: wrapped output not finite"
    # one fit step
    new.compile(keras.optimizers.Adam(1e-3), _loss(new), jit_compile=False,
                run_eagerly=name not in _GRAPH_FIT)
    hist = new.fit(x, y, epochs=1, batch_size=len(_listify(x)[0]), verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    # .keras round trip, no custom_objects: identical predictions
    path = tmp_path / f"{name}.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(_listify(_predict(new, x)), _listify(_predict(loaded, x))):
        np.testing.assert_array_equal(a, b)
    return model, new, x, y


def _padding_batch(x):
    """The same batch with every token set to padding (0)."""
    return [np.zeros_like(v) if v.dtype.kind == "i" else v for v in _listify(x)]


def _loss_and_grads(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x if len(x) > 1 else x[0], training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=pred)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), [tf.convert_to_tensor(g) for g in grads if g is not None]


def _assert_no_nan_on_padding(model, new, x, y):
    xp = _padding_batch(x)
    ref = _listify(_predict(model, xp if len(xp) > 1 else xp[0]))
    loss, grads = _loss_and_grads(new, xp, y)
    assert np.isfinite(loss)
    assert all(np.isfinite(np.asarray(tf.cast(g, tf.float32))).all() for g in grads)
    return ref


@pytest.mark.parametrize("name", _DEFAULT)
def test_wrap_zoo(name, tmp_path):
    model, new, x, y = _check(name, tmp_path)
    if name in _TOKENS:
        ref = _assert_no_nan_on_padding(model, new, x, y)
        if name == "transformer":  # the original is NaN there: the regression
            assert np.isnan(ref[0]).any()


@pytest.mark.slow
@pytest.mark.parametrize("name", _SLOW)
def test_wrap_zoo_applications(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["transformer", "small_cnn"])
def test_wrap_zoo_mixed_precision(name, policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model, x, y = getattr(zoo, name)()
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      jit_compile=False,
                      run_eagerly=(name, policy) != ("transformer", "mixed_float16"))
        new, report = so.wrap_model(model)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            assert isinstance(new.optimizer, so.mixed_precision.LossScaleOptimizer)
            assert "safeops.mixed_precision.LossScaleOptimizer" in report.mixed_precision
        else:
            assert not isinstance(new.optimizer, keras.optimizers.LossScaleOptimizer)
            assert "no loss scaling" in report.mixed_precision
        assert new.dtype_policy.name == policy
        assert all(layer.dtype_policy.name == policy for layer in new.layers
                   if not isinstance(layer, keras.layers.InputLayer))
        hist = new.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
        assert np.isfinite(hist.history["loss"]).all()
        if name == "transformer":
            _assert_no_nan_on_padding(model, new, [x], y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
