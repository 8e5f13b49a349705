"""LossScaleOptimizer next to keras.optimizers.LossScaleOptimizer on the same steps."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import mixed_precision as mp

INF = float("inf")


def _pair(**kwargs):
    return (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), **kwargs),
            mp.LossScaleOptimizer(keras.optimizers.SGD(0.5), **kwargs))


def test_signature_starts_with_keras_arguments_in_keras_order():
    keras_params = list(inspect.signature(keras.optimizers.LossScaleOptimizer).parameters.values())
    ours = list(inspect.signature(mp.LossScaleOptimizer).parameters.values())
    for k, o in zip(keras_params[:-1], ours):  # all but Keras's **kwargs
        assert (o.name, o.default, o.kind) == (k.name, k.default, k.kind)
    assert ours[-1].kind is inspect.Parameter.VAR_KEYWORD


def test_keras_arguments_by_keyword_and_by_position():
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=400.0)
    assert opt.initial_scale == 400.0 and opt.loss_scale.initial_scale == 400.0
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(), 64.0, 3, "lso")
    assert (opt.initial_scale, opt.dynamic_growth_steps, opt.name) == (64.0, 3, "lso")
    assert opt.loss_scale.growth_interval == 3
    opt.build([keras.Variable(1.0)])
    assert float(opt.dynamic_scale) == 64.0


def test_keras_argument_errors_are_keras_errors():
    for kwargs in ({"dynamic": False}, {"clipnorm": 1.0}, {"unknown": 1}):
        with pytest.raises(ValueError):
            keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), **kwargs)
        with pytest.raises(ValueError):
            mp.LossScaleOptimizer(keras.optimizers.SGD(), **kwargs)
    with pytest.raises(ValueError, match="'dynamic_growth_steps'"):
        mp.LossScaleOptimizer(keras.optimizers.SGD(), dynamic_growth_steps=0)
    with pytest.raises(ValueError, match="'initial_scale'.*contradicts"):
        mp.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=8.0,
                              loss_scale=mp.DynamicLossScale(initial_scale=16.0))


def test_finite_step_unscales_like_keras():
    k, o = _pair(initial_scale=400.0)
    vk, vo = keras.Variable([1.0, 2.0, 3.0, 4.0]), keras.Variable([1.0, 2.0, 3.0, 4.0])
    grads = tf.constant([1.0, 6.0, 7.0, 2.0]) * 400.0
    k.apply([grads], [vk])
    o.apply([grads], [vo])
    # The gradient is unscaled to [1, 6, 7, 2]; SGD(0.5) steps by half of it.
    np.testing.assert_array_equal(vo.numpy(), [0.5, -1.0, -0.5, 3.0])
    np.testing.assert_array_equal(vo.numpy(), vk.numpy())
    assert int(o.iterations) == int(k.iterations) == 1


def test_non_finite_step_skips_and_halves_like_keras():
    k, o = _pair(initial_scale=400.0)
    vk, vo = keras.Variable([1.0, 2.0]), keras.Variable([1.0, 2.0])
    grads = tf.constant([INF, 1.0])
    k.apply([grads], [vk])
    o.apply([grads], [vo])
    np.testing.assert_array_equal(vo.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(vk.numpy(), [1.0, 2.0])
    assert float(o.dynamic_scale) == float(k.dynamic_scale) == 200.0
    assert int(o.iterations) == int(k.iterations) == 0


def test_scale_grows_after_dynamic_growth_steps_like_keras():
    k, o = _pair(initial_scale=8.0, dynamic_growth_steps=3)
    vk, vo = keras.Variable(1.0), keras.Variable(1.0)
    for step in range(7):
        k.apply([tf.constant(1.0)], [vk])
        o.apply([tf.constant(1.0)], [vo])
        assert float(o.dynamic_scale) == float(k.dynamic_scale), step
    assert float(o.dynamic_scale) == 32.0
    np.testing.assert_array_equal(vo.numpy(), vk.numpy())


def test_overwrite_with_gradient_variables_pass_through_unscaled():
    """Float8 scale variables receive their new value as gradient: it must not be unscaled."""
    for opt in _pair():
        v = keras.Variable([0.0, 0.0, 0.0, 0.0])
        v.overwrite_with_gradient = True
        w = keras.Variable([1.0, 1.0, 1.0, 1.0])
        scale = 2.0**15
        opt.apply([tf.constant([1.0, 6.0, 7.0, 2.0]), tf.fill([4], scale)], [v, w])
        np.testing.assert_array_equal(v.numpy(), [1.0, 6.0, 7.0, 2.0])
        np.testing.assert_array_equal(w.numpy(), [0.5, 0.5, 0.5, 0.5])


def _float8_model(optimizer):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.quantize("float8")
    model.compile(optimizer, "mse")
    return model


def test_float8_training_under_mixed_float16_keeps_keras_scales():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8)).astype("float32")
        y = rng.normal(size=(64, 1)).astype("float32")
        results = []
        for opt in _pair():
            model = _float8_model(opt)
            model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
            results.append([(f"{i}/{v.name}", v.numpy()) for i, layer in enumerate(model.layers)
                            for v in layer.weights if "scale" in v.name])
        k, o = results
        assert [n for n, _ in k] == [n for n, _ in o] and any("inputs_scale" in n for n, _ in k)
        for (name, kv), (_, ov) in zip(k, o):
            # Same steps on the same data, the same unscaling (a power of two): the same bits.
            np.testing.assert_array_equal(ov, kv, err_msg=name)
            assert np.all(ov > 1e-4), name  # not divided by the loss scale
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_config_written_by_keras_loads():
    config = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(0.01), initial_scale=128.0, dynamic_growth_steps=7).get_config()
    opt = mp.LossScaleOptimizer.from_config(dict(config))
    assert isinstance(opt, mp.LossScaleOptimizer)
    assert (opt.initial_scale, opt.dynamic_growth_steps) == (128.0, 7)
    assert isinstance(opt.inner_optimizer, keras.optimizers.Adam)
    assert float(opt.inner_optimizer.learning_rate) == pytest.approx(0.01)


def test_config_has_keras_keys_and_round_trips():
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(0.1), 256.0, 11, max_consecutive_skips=4)
    config = opt.get_config()
    keras_keys = set(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()).get_config())
    assert keras_keys <= set(config)
    assert config["initial_scale"] == 256.0 and config["dynamic_growth_steps"] == 11
    again = mp.LossScaleOptimizer.from_config(config)
    assert again.get_config() == config
    # Our extra keys are what Keras's class refuses.
    with pytest.raises(ValueError, match="loss_scale|max_consecutive_skips"):
        keras.optimizers.LossScaleOptimizer.from_config(dict(config))
    stripped = {k: v for k, v in config.items() if k in keras_keys}
    assert keras.optimizers.LossScaleOptimizer.from_config(stripped).initial_scale == 256.0


def test_keras_file_and_checkpoint_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(mp.LossScaleOptimizer(keras.optimizers.SGD(0.1), 64.0, 2), "mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, mp.LossScaleOptimizer)
    assert loaded.optimizer.dynamic_growth_steps == 2
    np.testing.assert_array_equal(float(loaded.optimizer.dynamic_scale),
                                  float(model.optimizer.dynamic_scale))
    ckpt = tf.train.Checkpoint(optimizer=model.optimizer)
    saved = ckpt.save(str(tmp_path / "ckpt"))
    scale = float(model.optimizer.dynamic_scale)
    model.optimizer.loss_scale.update(False)
    assert float(model.optimizer.dynamic_scale) == scale / 2
    ckpt.restore(saved)
    assert float(model.optimizer.dynamic_scale) == scale


def test_state_variables_replace_keras_step_counter_and_scale():
    k, o = _pair()
    v = [keras.Variable(1.0)]
    k.build(v)
    o.build(v)
    theirs = {x.name for x in k.variables} - {x.name for x in k.inner_optimizer.variables}
    ours = {x.name for x in o.variables} - {x.name for x in o.inner_optimizer.variables}
    assert theirs >= {"step_counter", "dynamic_scale"}
    assert ours >= {"loss_scale", "good_steps", "loss_scale_steps", "skipped_steps",
                    "consecutive_skips", "last_overflow_step"}
    assert float(o.dynamic_scale) == float(k.dynamic_scale) == 2.0**15
