"""The compensated optimizers next to Keras's: signatures, configs, steps, sparse gradients."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import optimizers as O
from safeops import testing

NAMES = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Lion",
         "Adafactor"]
# Learning rates giving steps well below half a bfloat16 ulp of 1 (2**-8) for every rule.
LR = {"SGD": 1e-3, "Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 2e-4, "Adagrad": 1e-3,
      "Adadelta": 1.0, "Adamax": 1e-3, "Nadam": 1e-3, "Lion": 1e-3, "Adafactor": 1e-3}


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_keras_then_keyword_only_extras(name):
    theirs = [p for p in inspect.signature(getattr(keras.optimizers, name)).parameters.values()
              if p.kind is not inspect.Parameter.VAR_KEYWORD]
    ours = list(inspect.signature(getattr(O, name)).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[:len(theirs)]] == \
        [(p.name, p.default, p.kind) for p in theirs]
    assert [p.name for p in ours[len(theirs):]] == ["kahan_summation", "stochastic_rounding",
                                                   "seed", "kwargs"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):-1])


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_both_ways(name):
    theirs = getattr(keras.optimizers, name)(learning_rate=0.02, clipvalue=3.0)
    ours_from_keras = getattr(O, name).from_config(theirs.get_config())
    config = ours_from_keras.get_config()
    assert {k: config[k] for k in theirs.get_config()} == theirs.get_config()
    ours = getattr(O, name)(learning_rate=0.02, clipvalue=3.0, kahan_summation=True, seed=4)
    assert getattr(O, name).from_config(ours.get_config()).get_config() == ours.get_config()
    extra = {"kahan_summation", "stochastic_rounding", "seed"}
    stripped = {k: v for k, v in ours.get_config().items() if k not in extra}
    assert getattr(keras.optimizers, name).from_config(stripped).get_config() == \
        {k: v for k, v in stripped.items()}


def _trajectory(opt, dtype, w0, grads):
    w = keras.Variable(w0, dtype=dtype)
    for g in grads:
        opt.apply([tf.constant(g, dtype)], [w])
    return np.asarray(w.numpy(), np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_steps_track_the_float64_keras_trajectory(name):
    rng = np.random.default_rng(0)
    w0 = (1.0 + rng.random((4, 4))).astype(np.float32)
    w0 = np.asarray(tf.cast(tf.cast(w0, tf.bfloat16), tf.float32))  # representable start
    grads = -(0.5 + rng.random((60, 4, 4)))
    kwargs = {"learning_rate": LR[name]}
    ref = _trajectory(getattr(keras.optimizers, name)(**kwargs), "float64", w0, grads)
    plain = _trajectory(getattr(keras.optimizers, name)(**kwargs), "bfloat16", w0, grads)
    ours = _trajectory(getattr(O, name)(**kwargs), "bfloat16", w0, grads)
    moved = np.abs(ref - w0)
    assert moved.min() > 2.0**-7  # the updates add up to more than one bf16 ulp of w
    # Kahan's bound: about one ulp of the result (plus the float32 step's own rounding).
    assert testing.ulp_distance(ours, ref, "bfloat16").max() <= 1
    assert testing.ulp_distance(plain, ref, "bfloat16").max() >= 2  # what Keras loses


@pytest.mark.parametrize("name", NAMES)
def test_without_compensation_the_step_is_keras_bit_for_bit(name):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = rng.standard_normal((5, 3, 4))
    kwargs = {"learning_rate": 0.01}
    np.testing.assert_array_equal(
        _trajectory(getattr(O, name)(kahan_summation=False, **kwargs), "float32", w0, grads),
        _trajectory(getattr(keras.optimizers, name)(**kwargs), "float32", w0, grads))
    # Default (None) compensates no float32 variable: no extra slot either.
    opt = getattr(O, name)(**kwargs)
    opt.build([keras.Variable(w0)])
    assert not any("kahan" in v.name for v in opt.variables)


@pytest.mark.parametrize("name", NAMES)
def test_float32_compensation_matches_the_float64_keras_trajectory(name):
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = rng.standard_normal((20, 3, 4))
    kwargs = {"learning_rate": 0.01}
    ref = _trajectory(getattr(keras.optimizers, name)(**kwargs), "float64", w0, grads)
    got = _trajectory(getattr(O, name)(kahan_summation=True, **kwargs), "float32", w0, grads)
    # 20 float32 steps of at most ~15 roundings each, relative to the step: well inside
    # 2e-5 of |w| + the distance moved (Keras's float64 casts its betas through float32,
    # ~1e-8 relative, far below this).
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)


def _sparse_grad(values, indices, rows, cols, dtype):
    return tf.IndexedSlices(tf.constant(values, dtype), tf.constant(indices, tf.int64),
                            tf.constant([rows, cols], tf.int64))


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_sparse_gradients_touch_only_their_rows(name):
    rows, cols = 50, 3
    table = keras.Variable(np.ones((rows, cols)), dtype="bfloat16")
    opt = getattr(O, name)(learning_rate=1e-3)
    opt.build([table])
    comp = opt._compensations[0]
    sentinel = np.full((rows, cols), 2.0**-12, np.float32)
    comp.assign(tf.constant(sentinel, tf.bfloat16))
    indices = [3, 17, 3]  # a duplicate: summed, as Keras's scatter_add does
    grad = _sparse_grad(-np.ones((3, cols)), indices, rows, cols, tf.bfloat16)
    before = table.numpy().copy()
    opt.apply([grad], [table])
    touched = np.zeros(rows, bool)
    touched[[3, 17]] = True
    np.testing.assert_array_equal(table.numpy()[~touched], before[~touched])
    np.testing.assert_array_equal(np.float32(comp.numpy())[~touched], sentinel[~touched])
    assert np.all(np.float32(comp.numpy())[touched] != sentinel[touched])
    # The touched rows equal a dense application of the same (summed) gradient.
    dense = keras.Variable(np.ones((rows, cols)), dtype="bfloat16")
    opt2 = getattr(O, name)(learning_rate=1e-3)
    opt2.build([dense])
    opt2._compensations[0].assign(tf.constant(sentinel, tf.bfloat16))
    opt2.apply([tf.convert_to_tensor(grad)], [dense])
    np.testing.assert_array_equal(np.float32(table.numpy())[touched],
                                  np.float32(dense.numpy())[touched])


def test_sparse_embedding_training_is_compensated_in_a_compiled_step():
    rows = 20
    ids = tf.constant([1, 2, 2, 3])
    results = []
    for opt in (O.SGD(1e-3), keras.optimizers.SGD(1e-3)):
        table = keras.Variable(np.ones((rows, 2)), dtype="bfloat16")
        opt.build([table])

        @tf.function
        def steps():
            for _ in tf.range(60):
                with tf.GradientTape() as tape:
                    loss = -tf.reduce_sum(tf.gather(table, ids))
                grad = tape.gradient(loss, table.value)
                assert isinstance(grad, tf.IndexedSlices)
                opt.apply([grad], [table])

        steps()
        results.append(np.float64(table.numpy()))
    ours, plain = results
    # Each step adds lr times the number of times the row was gathered.
    exact = np.broadcast_to(1.0 + 60 * np.float64(np.float32(1e-3)) *
                            np.array([0, 1, 2, 1] + [0] * 16)[:, None], ours.shape)
    assert testing.ulp_distance(ours, exact, "bfloat16").max() <= 1
    assert np.all(ours[4:] == 1.0) and np.all(ours[0] == 1.0)  # untouched rows
    assert testing.ulp_distance(plain, exact, "bfloat16").max() > 1


def test_mixed_bfloat16_default_is_keras_step_bit_for_bit():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        rng = np.random.default_rng(3)
        x = rng.normal(size=(32, 4)).astype("float32")
        y = rng.normal(size=(32, 1)).astype("float32")
        weights = []
        for opt in (O.Adam(1e-2), keras.optimizers.Adam(1e-2)):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                      keras.layers.Dense(1)])
            model.compile(opt, "mse")
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
            assert all(v.dtype == "float32" for v in model.trainable_variables)
            weights.append(model.get_weights())
            assert not any("kahan" in v.name for v in opt.variables)
        for a, b in zip(*weights):
            np.testing.assert_array_equal(a, b)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize("name", ["RMSprop", "Nadam", "Adafactor"])
def test_half_precision_slots_are_float32(name):
    w = keras.Variable(np.ones((3, 4)), dtype="bfloat16")
    opt = getattr(O, name)()
    opt.build([w])
    slots = [v for v in opt.variables if v.dtype in ("bfloat16", "float16")]
    assert [v.name for v in slots] == [opt._compensations[0].name]
    if name == "Nadam":
        assert opt._u_product.dtype == "float32"


@pytest.mark.parametrize("jit", [False, True])
def test_execution_modes_agree(jit):
    def run(compiled):
        w = keras.Variable(np.ones(5), dtype="bfloat16")
        opt = O.RMSprop(1e-4, momentum=0.5)
        opt.build([w])
        g = tf.constant(-np.ones(5), tf.bfloat16)
        step = tf.function(lambda: opt.apply([g], [w]), jit_compile=jit) if compiled else \
            (lambda: opt.apply([g], [w]))
        for _ in range(30):
            step()
        return np.float64(w.numpy())

    eager, compiled = run(False), run(True)
    # XLA may contract the step's multiply-adds into FMAs: one bf16 ulp at most.
    assert testing.ulp_distance(compiled, eager, "bfloat16").max() <= (1 if jit else 0)


def test_checkpoint_and_keras_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="bfloat16")])
    model.compile(O.Lion(1e-3), "mse")
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), verbose=0, epochs=2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is O.Lion
    assert any("kahan_compensation" in v.name for v in model.optimizer.variables)
    assert len(model.optimizer.variables) == len(loaded.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt = tf.train.Checkpoint(optimizer=model.optimizer)
    saved = ckpt.save(str(tmp_path / "ckpt"))
    comp = model.optimizer._compensations[0]
    before = np.asarray(comp.numpy())
    comp.assign(tf.zeros_like(comp))
    ckpt.restore(saved)
    np.testing.assert_array_equal(np.asarray(comp.numpy()), before)


def test_ema_overwrite_works_with_half_precision_variables():
    results = []
    for cls in (O.SGD, keras.optimizers.SGD):
        w = keras.Variable(np.ones(3), dtype="bfloat16")
        opt = cls(0.1, use_ema=True, ema_overwrite_frequency=2)
        for _ in range(4):
            opt.apply([tf.constant([1.0, 1.0, 1.0], tf.bfloat16)], [w])
        results.append(np.float64(w.numpy()))
    # Keras's EMA rule in float64: step, average (momentum 0.99, 0 at the first
    # step), and the variable overwritten by the average after every second step.
    w, avg, lr = 1.0, 0.0, float(np.float32(0.1))
    for it in range(4):
        w -= lr
        momentum = 0.99 if it else 0.0
        avg = momentum * avg + (1 - momentum) * w
        if (it + 1) % 2 == 0:
            w = avg
    ours, theirs = results
    # Ours: a float32 average rounded once when written back.
    assert testing.ulp_distance(ours, np.full(3, w), "bfloat16").max() <= 1
    assert testing.ulp_distance(theirs, np.full(3, w), "bfloat16").max() <= 4


def test_gradient_accumulation_with_half_precision_variables():
    results = []
    for cls in (O.Adam, keras.optimizers.Adam):
        w = keras.Variable(np.ones(3), dtype="bfloat16")
        opt = cls(0.01, gradient_accumulation_steps=2)
        for _ in range(4):
            opt.apply([tf.constant([1.0, 2.0, 3.0], tf.bfloat16)], [w])
        results.append(np.float64(w.numpy()))
        assert int(opt.iterations) == 2  # Keras counts applied (accumulated) steps
    # Two applied Adam steps of about lr each (constant gradient: m / sqrt(v) = 1).
    exact = 1.0 - 2 * 0.01
    assert testing.ulp_distance(results[0], np.full(3, exact), "bfloat16").max() <= 1
    assert testing.ulp_distance(results[1], np.full(3, exact), "bfloat16").max() > 1  # stalls
