"""Tests for safeops.mixed_precision: loss scale with a floor, skip limits, custom-loop helpers."""

import contextlib
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops as so

mp = so.mixed_precision
INF = float("inf")


@pytest.fixture
def strategy(two_cpu_strategy):
    """The conftest's two-CPU devices, reduced with `ReductionToOneDevice`.

    Every `MirroredStrategy` instance restarts TF's collective instance keys at the same
    values, so a second instance in one process whose first all-reduce has another shape or
    dtype aborts ("Shape mismatch in the collective instance 100"). Avoiding collective ops
    keeps this module independent of the distributed tests that run before it.
    """
    return tf.distribute.MirroredStrategy(two_cpu_strategy.extended.worker_devices,
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def _overflow_loop(opt, var, n, finite_value=None):
    """Apply `n` steps of a non-finite gradient (or `finite_value`) in one graph."""
    value = INF if finite_value is None else finite_value
    grad = tf.constant(value, var.dtype)

    @tf.function
    def loop():
        return tf.while_loop(lambda i: i < n,
                             lambda i: (opt.apply([grad], [var]), i + 1)[1],
                             [tf.constant(0)])

    loop()


def _reference_rule(events, initial, interval, factor, lo, hi):
    """Independent pure-Python model of the documented update rule."""
    s, good, skipped, consec, last = initial, 0, 0, 0, -1
    for step, finite in enumerate(events):
        if finite:
            good += 1
            consec = 0
            if good >= interval:
                s, good = min(s * factor, hi), 0
        else:
            s, good, skipped, consec, last = max(s / factor, lo), 0, skipped + 1, consec + 1, step
    return s, skipped, consec, last


def test_ten_thousand_overflows_leave_min_scale_and_training_resumes():
    var = keras.Variable(1.0)
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(0.5),
                                mp.DynamicLossScale(initial_scale=2.0**15, growth_interval=10,
                                                    min_scale=1.0))
    _overflow_loop(opt, var, 10_000)
    assert float(opt.dynamic_scale) == 1.0
    assert int(opt.skipped_steps) == 10_000 and int(opt.consecutive_skips) == 10_000
    assert int(opt.last_overflow_step) == 9_999
    assert int(opt.iterations) == 0 and float(var) == 1.0
    # Overflows stop: 25 finite steps. Scale doubles every 10 (1 -> 2 -> 4), every step applies.
    _overflow_loop(opt, var, 25, finite_value=1.0)  # scaled grad 1.0 -> unscaled 1/scale
    assert float(opt.dynamic_scale) == 4.0
    assert int(opt.iterations) == 25 and int(opt.consecutive_skips) == 0
    # Exact SGD trajectory: 10 steps of 0.5 * 1/1, 10 of 0.5 * 1/2, 5 of 0.5 * 1/4.
    assert float(var) == 1.0 - 5.0 - 2.5 - 0.625


def test_keras_loss_scale_optimizer_reaches_zero():
    # The failure fixed above: Keras 3's scale has no floor.
    var = keras.Variable(1.0)
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5))
    _overflow_loop(opt, var, 300)
    assert float(opt.dynamic_scale) == 0.0


def test_max_consecutive_skips_raises_naming_step_and_scale():
    var = keras.Variable(1.0)
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(0.1),
                                mp.DynamicLossScale(initial_scale=2.0**10),
                                max_consecutive_skips=50)
    step = tf.function(lambda g: opt.apply([g], [var]))
    for _ in range(50):
        step(tf.constant(INF))
    assert int(opt.consecutive_skips) == 50
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)step.*\b50\b.*loss scale"):
        step(tf.constant(INF))
    # A finite step resets the count (the error reports, it does not corrupt state).
    opt2 = mp.LossScaleOptimizer(keras.optimizers.SGD(0.1), max_consecutive_skips=2)
    var2 = keras.Variable(1.0)
    for g in [INF, INF, 1.0, INF, INF]:
        opt2.apply([tf.constant(g)], [var2])
    assert int(opt2.consecutive_skips) == 2


def test_dynamic_loss_scale_matches_reference_rule():
    rng = np.random.default_rng(0)
    events = list(rng.random(300) < 0.8)
    args = dict(initial_scale=64.0, growth_interval=7, factor=3.0, min_scale=0.5,
                max_scale=2.0**12)
    ls = mp.DynamicLossScale(**args)
    update = tf.function(ls.update)
    for e in events:
        update(tf.constant(bool(e)))
    s, skipped, consec, last = _reference_rule(events, 64.0, 7, 3.0, 0.5, 2.0**12)
    assert float(ls.scale) == pytest.approx(s, rel=2**-23)  # s: products of 3 in float32
    assert (int(ls.skipped_steps), int(ls.consecutive_skips), int(ls.last_overflow_step)) == \
        (skipped, consec, last)
    assert int(ls.steps) == len(events)


def test_growth_never_overflows():
    fmax = float(np.finfo(np.float32).max)
    ls = mp.DynamicLossScale(initial_scale=2.0**127, growth_interval=1, max_scale=fmax)
    for _ in range(5):
        ls.update(True)
    assert float(ls.scale) == fmax  # 2**128 would be inf in float32
    assert math.isfinite(float(ls.scale))


def test_custom_loop_helpers_fix_float16_gradient_underflow():
    # float32 weight, float16 compute: h = w * 2**-14, loss = h**2 / 2 * 2**-14 ...
    # dL/dw = h * x = 2**-28 underflows float16 (smallest subnormal 2**-24) without scaling.
    x16 = tf.constant(2.0**-14, tf.float16)
    w = tf.Variable(1.0)

    def grads_with(scale):
        with tf.GradientTape() as tape:
            h = tf.cast(w, tf.float16) * x16
            loss = 0.5 * h * h
            scaled = mp.scale_loss(loss, scale)
        g = tape.gradient(scaled, [w])
        return mp.unscale_gradients(g, scale)

    exact = 2.0**-28  # (w * x) * x with w = 1, x = 2**-14: exact in float32
    assert float(grads_with(1.0)[0]) == 0.0  # the underflow
    ls = mp.DynamicLossScale()  # 2**15
    g = grads_with(ls)
    assert float(g[0]) == exact
    assert bool(mp.all_finite(g))


def test_helpers_values_structures_and_nonfinite():
    grads = {"a": tf.constant([8.0, -4.0]), "b": None,
             "c": tf.IndexedSlices(tf.constant([2.0], tf.bfloat16), tf.constant([1]),
                                   tf.constant([3]))}
    out = mp.unscale_gradients(grads, 4.0)
    np.testing.assert_array_equal(out["a"].numpy(), [2.0, -1.0])
    assert out["b"] is None
    assert out["c"].values.dtype == tf.bfloat16 and float(out["c"].values[0]) == 0.5
    assert bool(mp.all_finite(grads))
    assert not bool(mp.all_finite([tf.constant([1.0, math.nan])]))
    assert not bool(mp.all_finite([None, tf.constant([-INF], tf.float16)]))
    assert bool(mp.all_finite([]))
    loss = tf.constant(3.0, tf.float16)
    scaled = mp.scale_loss(loss, 2.0**10)
    assert scaled.dtype == tf.float16 and float(scaled) == 3072.0


def test_execution_modes_and_xla_update():
    ls = mp.DynamicLossScale(initial_scale=4.0, growth_interval=2)

    def run(flags):
        for f in flags:
            ls.update(f)
        return ls.scale

    for fn in (run, tf.function(run), tf.function(run, jit_compile=True)):
        ls = mp.DynamicLossScale(initial_scale=4.0, growth_interval=2)
        out = fn([tf.constant(True), tf.constant(True), tf.constant(False), tf.constant(False)])
        assert float(out) == 2.0  # 4 -> 8 (2 good steps) -> 4 -> 2


def test_mixed_float16_fit_matches_float32_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    y = (x @ rng.standard_normal((16, 1)) + 0.1 * rng.standard_normal((512, 1))).astype(np.float32)

    def train(policy, optimizer):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((16,)),
                                  keras.layers.Dense(32, activation="tanh", dtype=policy),
                                  keras.layers.Dense(1, dtype=policy)])
        model.compile(optimizer=optimizer, loss="mse", steps_per_execution=8)
        model.fit(x, y, batch_size=64, epochs=20, verbose=0, shuffle=False)
        return float(model.evaluate(x, y, verbose=0))

    loss32 = train("float32", keras.optimizers.Adam(1e-2))
    opt = mp.LossScaleOptimizer(keras.optimizers.Adam(1e-2), max_consecutive_skips=20)
    loss16 = train("mixed_float16", opt)
    assert abs(loss16 - loss32) <= 0.02 * loss32, (loss16, loss32)
    assert int(opt.iterations) > 0


def test_distributed_state_identical_and_matches_single_device(strategy):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 8)).astype(np.float32)
    y = (x @ rng.standard_normal((8, 1))).astype(np.float32)

    def train(strategy):
        keras.utils.set_random_seed(2)
        with strategy.scope():
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                                      keras.layers.Dense(1)])
            opt = mp.LossScaleOptimizer(keras.optimizers.Adam(1e-2),
                                        mp.DynamicLossScale(initial_scale=2.0**6,
                                                            growth_interval=5))
            model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        return model, opt

    model, opt = train(strategy)
    for var in opt.loss_scale.variables + opt.inner_optimizer.variables:
        local = strategy.experimental_local_results(var.value)
        assert len(local) == 2
        np.testing.assert_array_equal(local[0].numpy(), local[1].numpy())
    assert float(opt.dynamic_scale) == 2.0**7  # 8 finite steps, growth every 5
    ref_model, _ = train(tf.distribute.get_strategy())
    for a, b in zip(model.get_weights(), ref_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # all-reduce order only


def test_distributed_overflow_on_one_replica_skips_everywhere(strategy):
    with strategy.scope():
        var = keras.Variable(1.0)
        opt = mp.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        opt.build([var])

    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            g = tf.where(rid == 1, INF, 1.0)
            opt.apply([g], [var])
        strategy.run(replica_fn)

    step()
    assert int(opt.skipped_steps) == 1
    assert int(tf.convert_to_tensor(opt.iterations)) == 0
    for t in strategy.experimental_local_results(var.value):
        assert float(t) == 1.0


def test_serialization_round_trip():
    opt = mp.LossScaleOptimizer(keras.optimizers.Adam(3e-4),
                                mp.DynamicLossScale(initial_scale=128.0, growth_interval=3,
                                                    factor=4.0, min_scale=2.0, max_scale=1024.0),
                                max_consecutive_skips=7)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is mp.LossScaleOptimizer
    assert again.get_config() == opt.get_config()
    assert again.loss_scale.get_config()["factor"] == 4.0
    assert float(again.inner_optimizer.learning_rate) == pytest.approx(3e-4)


@pytest.mark.parametrize("kwargs, arg", [
    ({"initial_scale": 0.0}, "initial_scale"), ({"initial_scale": -1.0}, "initial_scale"),
    ({"initial_scale": math.inf}, "initial_scale"), ({"min_scale": math.nan}, "min_scale"),
    ({"factor": 1.0}, "factor"), ({"factor": 0.5}, "factor"),
    ({"min_scale": 8.0, "max_scale": 4.0, "initial_scale": 4.0}, "min_scale"),
    ({"growth_interval": 0}, "growth_interval"), ({"growth_interval": 1.5}, "growth_interval"),
    ({"max_scale": 1e39}, "max_scale"),
])
def test_bad_input_raises(kwargs, arg):
    with pytest.raises(ValueError, match=f"DynamicLossScale.*'{arg}'"):
        mp.DynamicLossScale(**kwargs)


def test_bad_optimizer_input_raises():
    with pytest.raises(TypeError, match="'inner_optimizer'"):
        mp.LossScaleOptimizer("adam")
    with pytest.raises(ValueError, match="'loss_scale'"):
        mp.LossScaleOptimizer(keras.optimizers.SGD(), loss_scale=-2.0)
    with pytest.raises(ValueError, match="'max_consecutive_skips'"):
        mp.LossScaleOptimizer(keras.optimizers.SGD(), max_consecutive_skips=-1)
    with pytest.raises(TypeError, match="scale_loss.*'loss'"):
        mp.scale_loss(tf.constant(1), 2.0)
    with pytest.raises(ValueError, match="'loss_scale'"):
        mp.unscale_gradients([tf.constant(1.0)], 0.0)


def test_gradient_tape_recipe():
    # The module docstring's two recipes, on float16 compute whose unscaled gradient underflows.
    x = tf.constant(np.full((4, 1), 2.0**-12), tf.float16)
    y = tf.zeros((4, 1), tf.float16)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False,
                                                                    dtype="mixed_float16")])
    model.layers[0].kernel.assign([[1.0]])
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(2.0**20))
    opt.build(model.trainable_variables)

    def loss_fn(y_true, y_pred):
        return tf.reduce_mean(tf.square(y_pred - y_true)) * 0.5

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            scaled = mp.scale_loss(loss, opt.loss_scale)
        grads = tape.gradient(scaled, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    train_step(x, y)
    # dL/dw = w * x**2 = 2**-24 (float16 subnormal boundary); exact step 2**20 * 2**-24 = 1/16.
    assert float(model.layers[0].kernel[0, 0]) == 1.0 - 2.0**-4
    assert int(opt.iterations) == 1

    w = keras.Variable(1.0)
    inner = keras.optimizers.SGD(2.0**20)
    ls = mp.DynamicLossScale()

    @tf.function
    def step2(g_true):
        with tf.GradientTape() as tape:
            loss = tf.cast(w, tf.float16) * tf.cast(g_true, tf.float16)
            scaled = mp.scale_loss(loss, ls)
        grads = mp.unscale_gradients(tape.gradient(scaled, [w]), ls)
        finite = mp.all_finite(grads)
        if finite:
            inner.apply(grads, [w])
        ls.update(finite)

    step2(tf.constant(2.0**-20))  # scaled 2**-5 in float16; unscaled 2**-20 in float32
    assert float(w) == 0.0
    step2(tf.constant(60000.0))  # 60000 * 2**15 overflows float16: skipped
    assert float(w) == 0.0 and int(ls.skipped_steps) == 1 and float(ls.scale) == 2.0**14


def test_loss_scale_reads_as_a_number():
    opt = mp.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=512.0)
    assert float(opt.loss_scale) == 512.0
    opt.loss_scale.update(False)
    assert float(opt.loss_scale) == 256.0 == float(opt.dynamic_scale)


@contextlib.contextmanager
def _policy(name):
    """The global Keras dtype policy set to `name` inside the block (float32 after)."""
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _mixed_float16_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inp)))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Lion"])
def test_compile_under_mixed_float16_gives_safeops_loss_scaling(name, recwarn):
    """model.compile(so.optimizers.X()) ends with safeops's loss-scale optimizer, and trains
    exactly as compiling with the explicit safeops wrapper does."""
    data = np.random.default_rng(1).standard_normal((16, 4)).astype("float32")
    target = np.random.default_rng(2).standard_normal((16, 2)).astype("float32")
    with _policy("mixed_float16"):
        auto = _mixed_float16_model()
        auto.compile(getattr(so.optimizers, name)(1e-2), "mse")
        explicit = _mixed_float16_model()
        explicit.compile(mp.LossScaleOptimizer(getattr(so.optimizers, name)(1e-2)), "mse")
        assert type(auto.optimizer) is mp.LossScaleOptimizer
        assert isinstance(auto.optimizer.inner_optimizer, getattr(so.optimizers, name))
        assert auto.optimizer.loss_scale.min_scale == 1.0
        assert float(auto.optimizer.dynamic_scale) == 2.0**15
        for model in (auto, explicit):
            model.fit(data, target, batch_size=8, epochs=2, shuffle=False, verbose=0)
        for a, b in zip(auto.get_weights(), explicit.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert not [w for w in recwarn if "LossScaleOptimizer" in str(w.message)]


def test_compiled_safeops_loss_scaling_keeps_its_floor():
    with _policy("mixed_float16"):
        model = _mixed_float16_model()
        model.compile(so.optimizers.SGD(0.5), "mse")
        _overflow_loop(model.optimizer, keras.Variable(1.0), 400)
        assert float(model.optimizer.dynamic_scale) == 1.0  # Keras's: 0.0 (test above)


def test_compiled_model_saves_and_loads_with_safeops_loss_scaling(tmp_path):
    with _policy("mixed_float16"):
        model = _mixed_float16_model()
        model.compile(so.optimizers.Adam(1e-3), "mse")
        path = str(tmp_path / "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded.optimizer) is mp.LossScaleOptimizer
        assert isinstance(loaded.optimizer.inner_optimizer, so.optimizers.Adam)


def test_keras_optimizers_and_explicit_keras_wrapping_are_left_to_keras():
    with _policy("mixed_float16"):
        model = _mixed_float16_model()
        model.compile(keras.optimizers.Adam(1e-3), "mse")  # Keras's own: Keras's wrapper
        assert type(model.optimizer) is keras.optimizers.LossScaleOptimizer
        with pytest.warns(UserWarning, match=r"safeops.optimizers.SGD was wrapped in "
                                             r"keras.optimizers.LossScaleOptimizer"):
            wrapped = keras.optimizers.LossScaleOptimizer(so.optimizers.SGD())
        assert type(wrapped) is keras.optimizers.LossScaleOptimizer


def test_mixed_bfloat16_compile_adds_no_loss_scaling():
    with _policy("mixed_bfloat16"):
        model = _mixed_float16_model()
        model.compile(so.optimizers.Adam(1e-3), "mse")
        assert type(model.optimizer) is so.optimizers.Adam
