"""Tests for safeops.optimizers: Kahan-compensated and stochastically rounded SGD/Adam/AdamW."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing

O = so.optimizers


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


def _repeat(opt, var, grad, n, jit=False):
    """`n` applications of the constant gradient `grad` in one graph (while loop)."""
    grad = tf.constant(grad, var.dtype)

    @tf.function(jit_compile=jit)
    def loop():
        return tf.while_loop(lambda i: i < n, lambda i: (opt.apply([grad], [var]), i + 1)[1],
                             [tf.constant(0)])

    loop()
    return np.asarray(var.numpy(), dtype=np.float64)


def _exact_sgd(w0, lr, n, dtype):
    # Each step adds float32(lr) * 1 (the delta is formed in float32 for half dtypes, exactly);
    # the exact sum of n such terms, from testing.exact_sum.
    step = float(np.float32(lr)) if dtype != tf.float64 else lr
    return float(testing.exact_sum(np.array([w0] + [step] * n)))


@pytest.mark.parametrize("jit", [False, True])
def test_bf16_thousand_small_updates_kahan(jit):
    exact = _exact_sgd(1.0, 1e-3, 1000, tf.bfloat16)  # 2.0000000475
    naive = keras.Variable(1.0, dtype="bfloat16")
    assert _repeat(keras.optimizers.SGD(1e-3), naive, -1.0, 1000, jit) == 1.0  # stuck
    w = keras.Variable(1.0, dtype="bfloat16")
    got = _repeat(O.SGD(1e-3), w, -1.0, 1000, jit)  # kahan_summation=None: on for bfloat16
    assert got >= 1.99
    # Documented bound: about one ulp of the result.
    assert testing.ulp_distance(got, exact, "bfloat16") <= 1


def test_float16_kahan_is_automatic():
    exact = _exact_sgd(1.0, 1e-4, 2000, tf.float16)
    naive = keras.Variable(1.0, dtype="float16")
    assert testing.ulp_distance(_repeat(keras.optimizers.SGD(1e-4), naive, -1.0, 2000), exact,
                                "float16") > 100
    w = keras.Variable(1.0, dtype="float16")
    assert testing.ulp_distance(_repeat(O.SGD(1e-4), w, -1.0, 2000), exact, "float16") <= 1


def test_bf16_stochastic_rounding_unbiased():
    n_el, steps = 512, 1000
    exact = _exact_sgd(1.0, 1e-3, steps, tf.bfloat16)
    w = keras.Variable(np.ones(n_el), dtype="bfloat16")
    got = _repeat(O.SGD(1e-3, stochastic_rounding=True, seed=7), w, -np.ones(n_el), steps)
    # Each element is an independent unbiased random walk; its final spread is about
    # sqrt(steps * p(1-p)) * ulp ~ 0.1 with ulp 2**-7 near 1, so the mean of 512 elements
    # has standard error ~ 0.005: 1% (0.02) is four standard errors.
    assert abs(got.mean() - exact) <= 0.01 * exact
    assert len(np.unique(got)) > 1  # genuinely stochastic
    # Seeded: same seed, same result; another seed, another result.
    w2 = keras.Variable(np.ones(n_el), dtype="bfloat16")
    np.testing.assert_array_equal(
        _repeat(O.SGD(1e-3, stochastic_rounding=True, seed=7), w2, -np.ones(n_el), steps), got)
    w3 = keras.Variable(np.ones(n_el), dtype="bfloat16")
    assert not np.array_equal(
        _repeat(O.SGD(1e-3, stochastic_rounding=True, seed=8), w3, -np.ones(n_el), steps), got)


def test_float32_million_updates_within_one_ulp():
    n = 1_000_000
    exact = _exact_sgd(1.0, 1e-7, n, tf.float32)  # 1.1 (up to float32(1e-7)'s rounding)
    naive = keras.Variable(1.0)
    assert testing.ulp_distance(_repeat(keras.optimizers.SGD(1e-7), naive, -1.0, n, jit=True),
                                exact, "float32") > 1000
    w = keras.Variable(1.0)
    got = _repeat(O.SGD(1e-7, kahan_summation=True), w, -1.0, n, jit=True)
    assert testing.ulp_distance(got, exact, "float32") <= 1


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_float32_small_updates_other_modes(mode):
    # Same claim at 2000 steps (eager: 300) without XLA; naive float32 is off by >= 40 ulps.
    n = 300 if mode == "eager" else 2000
    exact = _exact_sgd(1.0, 1e-7, n, tf.float32)
    w = keras.Variable(1.0)
    opt = O.SGD(1e-7, kahan_summation=True)
    if mode == "eager":
        for _ in range(n):
            opt.apply([tf.constant(-1.0)], [w])
        got = float(w.numpy())
    else:
        got = _repeat(opt, w, -1.0, n)
    naive = _repeat(keras.optimizers.SGD(1e-7), keras.Variable(1.0), -1.0, n)
    assert testing.ulp_distance(naive, exact, "float32") >= 40
    assert testing.ulp_distance(got, exact, "float32") <= 1


def _mlp_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8)).astype(np.float32)
    w1t, w2t = rng.standard_normal((8, 16)), rng.standard_normal((16, 1))
    y = (np.tanh(x @ w1t) @ w2t / 4).astype(np.float32)
    init = [rng.standard_normal((8, 16)) * 0.3, np.zeros(16), rng.standard_normal((16, 1)) * 0.3,
            np.zeros(1)]
    return tf.constant(x), tf.constant(y), init


def _mlp_loss(weights, x, y):
    w1, b1, w2, b2 = [tf.cast(w, tf.float32) for w in weights]
    return tf.reduce_mean(tf.square(tf.tanh(x @ w1 + b1) @ w2 + b2 - y))


def _train_mlp(opt, dtype, steps=2000):
    x, y, init = _mlp_problem()
    weights = [keras.Variable(w, dtype=dtype) for w in init]

    @tf.function(jit_compile=True)
    def train():
        def body(i):
            with tf.GradientTape() as tape:
                loss = _mlp_loss(weights, x, y)
            opt.apply(tape.gradient(loss, weights), weights)
            return i + 1
        return tf.while_loop(lambda i: i < steps, body, [tf.constant(0)])

    train()
    return float(_mlp_loss(weights, x, y))  # evaluated in float32 from the stored weights


def test_bf16_mlp_reaches_float32_loss_while_plain_bf16_stalls():
    # Adam's step ~ lr = 3e-4 is below half an ulp (2**-9 |w| ~ 6e-4) of most bf16 weights.
    initial = float(_mlp_loss(_mlp_problem()[2], *_mlp_problem()[:2]))
    loss32 = _train_mlp(keras.optimizers.Adam(3e-4), "float32")
    plain = _train_mlp(keras.optimizers.Adam(3e-4), "bfloat16")
    kahan = _train_mlp(O.Adam(3e-4), "bfloat16")
    assert loss32 < 0.7 * initial  # the float32 model learns
    assert plain - loss32 > 0.1 * (initial - loss32)  # plain bf16 keeps >10% of the excess loss
    assert abs(kahan - loss32) <= 0.01 * loss32, (kahan, loss32, plain, initial)


def _trajectory(opt, dtype, steps=20):
    rng = np.random.default_rng(5)
    w = keras.Variable(rng.standard_normal(64), dtype=dtype)
    grads = rng.standard_normal((steps, 64))
    for g in grads:
        opt.apply([tf.constant(g, dtype)], [w])
    return np.asarray(w.numpy(), np.float64)


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(learning_rate=0.01, weight_decay=0.1)),
    ("Adam", dict(learning_rate=0.01)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True)),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.05)),
], ids=["sgd-momentum", "sgd-nesterov", "sgd-decay", "adam", "amsgrad", "adamw"])
def test_parity_with_keras_float64(name, kwargs):
    # so.<opt>(kahan_summation=True) in float32 against the Keras optimizer in float64 (the
    # reference): 20 steps x ~15 float32 roundings x 2**-24 ~ 2e-5 relative at most.
    ours, theirs = getattr(O, name), getattr(keras.optimizers, name)
    ref = _trajectory(theirs(**kwargs), "float64")
    got = _trajectory(ours(kahan_summation=True, **kwargs), "float32")
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    # kahan_summation=False is Keras' own float32 update, bit for bit.
    np.testing.assert_array_equal(_trajectory(ours(kahan_summation=False, **kwargs), "float32"),
                                  _trajectory(theirs(**kwargs), "float32"))


def _numpy_reference(name, kwargs, steps=20):
    """The Keras update rules in float64 NumPy, hyperparameters exactly as given."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal(64)
    grads = rng.standard_normal((steps, 64))
    lr = float(np.float32(kwargs["learning_rate"]))  # Keras keeps the rate in a float32 variable
    m = np.zeros(64)
    v = np.zeros(64)
    for t, g in enumerate(grads, start=1):
        if name == "SGD":
            m = m * kwargs["momentum"] - g * lr
            w = w + m
        else:
            if name == "AdamW":
                w = w - w * kwargs["weight_decay"] * lr
            b1, b2, eps = 0.9, 0.999, 1e-7
            m = m + (g - m) * (1 - b1)
            v = v + (g * g - v) * (1 - b2)
            alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            w = w - (m * alpha) / (np.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("Adam", dict(learning_rate=0.01)),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.05)),
], ids=["sgd-momentum", "adam", "adamw"])
def test_float64_hyperparameters_exact(name, kwargs):
    # float64 weights with Kahan summation against the same rules in float64 NumPy with the
    # hyperparameters exactly as given: each step's delta carries a few float64 roundings
    # (|delta| <= ~lr) and the compensated weight add is exact to ~1 ulp, so 20 steps stay
    # within 20 * 2**-52 * max|w| (~1e-14 here). A hyperparameter taking a float32 detour
    # (tf.cast(0.999, tf.float64) = 0.99900001287...) is off by ~1e-5 relative in (1 - beta_2),
    # ~1e-8 absolute in the weights after 20 steps: the bound below catches it.
    got = _trajectory(getattr(O, name)(kahan_summation=True, **kwargs), "float64")
    ref = _numpy_reference(name, kwargs)
    np.testing.assert_allclose(got, ref, rtol=0, atol=20 * 2.0 ** -52 * np.abs(ref).max())


def test_large_variable_fused_path_matches_small_path():
    # >= 32768 elements use the XLA-fused kernel; compare with the unfused path elementwise.
    rng = np.random.default_rng(2)
    big = rng.standard_normal(40000)
    g = rng.standard_normal(40000)
    w_big = keras.Variable(big, dtype="bfloat16")
    opt = O.Adam(1e-3)
    for _ in range(3):
        opt.apply([tf.constant(g, tf.bfloat16)], [w_big])
    small = [keras.Variable(big[i:i + 4000], dtype="bfloat16") for i in range(0, 40000, 4000)]
    opt2 = O.Adam(1e-3)
    for _ in range(3):
        opt2.apply([tf.constant(g[i:i + 4000], tf.bfloat16) for i in range(0, 40000, 4000)],
                   small)
    got_small = np.concatenate([np.asarray(v.numpy(), np.float64) for v in small])
    got_big = np.asarray(w_big.numpy(), np.float64)
    # XLA may contract a*b+c into an FMA: allow 1 bf16 ulp.
    assert testing.ulp_distance(got_big, got_small, "bfloat16").max() <= 1


def test_execution_modes():
    def run():
        w = tf.Variable(tf.ones([3], tf.bfloat16))
        opt = O.SGD(1e-3)
        opt.build([w])
        return w, opt

    w, opt = run()
    exact = _exact_sgd(1.0, 1e-3, 200, tf.bfloat16)
    results = {}
    for name, jit in [("function", False), ("jit_compile", True)]:
        w, opt = run()
        results[name] = _repeat(opt, w, -np.ones(3), 200, jit)
    w, opt = run()
    for _ in range(200):
        opt.apply([tf.constant(-np.ones(3), tf.bfloat16)], [w])
    results["eager"] = np.asarray(w.numpy(), np.float64)
    for name, got in results.items():
        assert testing.ulp_distance(got, exact, "bfloat16").max() <= 1, name
        np.testing.assert_array_equal(got, results["eager"])


def test_distributed_replicas_identical(strategy):
    with strategy.scope():
        w = keras.Variable(np.ones(8), dtype="bfloat16")
        u = keras.Variable(np.ones(8), dtype="bfloat16")
        kahan = O.Adam(1e-3)
        sr = O.SGD(1e-3, stochastic_rounding=True, seed=3)
        kahan.build([w])
        sr.build([u])

    @tf.function
    def step():
        def fn():
            kahan.apply([tf.constant(np.full(8, -1.0), tf.bfloat16)], [w])
            sr.apply([tf.constant(np.full(8, -0.5), tf.bfloat16)], [u])
        strategy.run(fn)

    for _ in range(30):
        step()
    for var in [w, u] + kahan.variables + sr.variables:
        local = strategy.experimental_local_results(var.value)
        np.testing.assert_array_equal(np.asarray(local[0]), np.asarray(local[1]))
    assert any("kahan_compensation" in v.name for v in kahan.variables)
    # Per replica gradient -1 summed over 2 replicas: Adam's normalised step ~ lr each time.
    assert float(np.mean(np.asarray(w.numpy(), np.float64))) > 1.0


def test_serialization_round_trip():
    for opt in [O.SGD(0.05, momentum=0.5, kahan_summation=True),
                O.Adam(2e-3, stochastic_rounding=True, seed=11),
                O.AdamW(1e-3, weight_decay=0.01, kahan_summation=False)]:
        again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
        assert type(again) is type(opt)
        assert again.get_config() == opt.get_config()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=O.Adam(1e-3, kahan_summation=True), loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is O.Adam and loaded.optimizer.kahan_summation is True
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_clipnorm_still_applies():
    w = keras.Variable(np.zeros(2), dtype="float32")
    O.SGD(1.0, clipnorm=1.0, kahan_summation=True).apply([tf.constant([3.0, 4.0])], [w])
    np.testing.assert_allclose(w.numpy(), [-0.6, -0.8], rtol=1e-6)  # norm 5 clipped to 1


def test_bad_input_raises():
    with pytest.raises(TypeError, match="safeops.optimizers.SGD.*'var_list'.*int32"):
        O.SGD().build([keras.Variable(np.ones(2, np.int32), dtype="int32", trainable=False)])
    with pytest.raises(ValueError, match="'stochastic_rounding'"):
        O.Adam(kahan_summation=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="'kahan_summation'"):
        O.Adam(kahan_summation="yes")
    with pytest.raises(ValueError, match="'seed'"):
        O.SGD(seed=1.5)


def test_global_clipnorm_routes_through_overflow_free_clipping():
    # ||g|| = sqrt(2) * 1e30 overflows float32 when squared: Keras' clipping turns the step
    # into NaN; safeops.clipping computes the scaled norm. Exact: g / ||g|| = 1/sqrt(2).
    g = tf.constant([1e30, 1e30])
    naive = keras.Variable(np.zeros(2), dtype="float32")
    keras.optimizers.SGD(1.0, global_clipnorm=1.0).apply([g], [naive])
    assert not np.all(np.isfinite(naive.numpy()))
    w = keras.Variable(np.zeros(2), dtype="float32")
    O.SGD(1.0, global_clipnorm=1.0, kahan_summation=True).apply([g], [w])
    np.testing.assert_allclose(w.numpy(), [-2**-0.5, -2**-0.5], rtol=4 * 2**-24)  # few roundings


def test_float16_with_stochastic_rounding_keeps_kahan():
    # stochastic_rounding applies to bfloat16 only; float16 variables keep the automatic
    # Kahan summation (uncompensated, 1e-4 steps leave a float16 weight of 1.0 unchanged).
    exact = _exact_sgd(1.0, 1e-4, 200, tf.float16)
    w = keras.Variable(1.0, dtype="float16")
    b = keras.Variable(1.0, dtype="bfloat16")
    opt = O.SGD(1e-4, stochastic_rounding=True, seed=1)
    opt.build([w, b])
    assert opt._compensations[0] is not None and opt._compensations[0].dtype == "float16"
    assert opt._compensations[1] is None  # bfloat16: stochastic rounding, no slot
    for _ in range(200):
        opt.apply([tf.constant(-1.0, tf.float16), tf.constant(-1.0, tf.bfloat16)], [w, b])
    assert float(w.numpy()) > 1.0
    # Kahan's documented bound: about one ulp of the result.
    assert testing.ulp_distance(float(w.numpy()), exact, "float16") <= 1


@pytest.mark.parametrize("kahan, want", [
    (None, {"float16": True, "bfloat16": True, "float32": False, "float64": False}),
    (True, {"float16": True, "bfloat16": True, "float32": True, "float64": True}),
    (False, {"float16": False, "bfloat16": False, "float32": False, "float64": False})])
def test_kahan_default_and_slot_dtype(kahan, want):
    dtypes = list(want)
    vs = [keras.Variable(np.ones(3), dtype=d) for d in dtypes]
    opt = O.Adam(1e-3, kahan_summation=kahan)
    opt.build(vs)
    for d, comp in zip(dtypes, opt._compensations):
        assert (comp is not None) == want[d], d
        if comp is not None:
            assert comp.dtype == d  # compensation slot in the variable's dtype


_HUGE = [3e19, 4e19]  # ||g||**2 = 2.5e39 overflows float32


def _clip64(grads, clipnorm, global_clipnorm):
    """The clipped gradients in float64 (no overflow there), rounded once to float32."""
    g = [np.asarray(x, np.float64) for x in grads]
    if clipnorm is not None:
        return [np.float32(x * min(1.0, clipnorm / np.linalg.norm(x))) for x in g]
    n = np.sqrt(sum(np.sum(x * x) for x in g))
    return [np.float32(x * min(1.0, global_clipnorm / n)) for x in g]


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(learning_rate=0.5)),
                                          ("Adam", dict(learning_rate=0.01)),
                                          ("AdamW", dict(learning_rate=0.01, weight_decay=0.1))])
@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("kahan", [None, True])
def test_clipping_with_overflowing_norm(name, kwargs, clip, kahan):
    # Keras' own clipping: the squared norm is inf, the step is 0 (clipnorm) or NaN (global).
    grads = [tf.constant(_HUGE), tf.constant([1e19, 0.0])]
    clip_kw = {clip: 1.0}
    w0 = [np.zeros(2), np.ones(2)]

    def run(cls, gs, dtype="float32", **kw):
        ws = [keras.Variable(w, dtype=dtype) for w in w0]
        cls(**kwargs, **kw).apply([tf.cast(g, dtype) for g in gs], ws)
        return [np.asarray(w.numpy(), np.float64) for w in ws]

    naive = run(getattr(keras.optimizers, name), grads, **clip_kw)
    assert not all(np.all(np.isfinite(w)) and np.any(w != w0_) for w, w0_ in zip(naive, w0))
    got = run(getattr(O, name), grads, kahan_summation=kahan, **clip_kw)
    # Reference 1: the same float32 optimizer without clipping, fed the exactly clipped
    # gradient rounded to float32. Our clipped gradient is within 1 ulp of that
    # (safeops.clip_by_global_norm's bound at this input); SGD with lr = 0.5 (exact) and Adam's first step (m / sqrt(v),
    # insensitive to a 1-ulp change of g up to eps / |g| ~ 1e-7) keep it within 1 ulp.
    ref32 = run(getattr(O, name), [tf.constant(g) for g in _clip64(
        grads, clip_kw.get("clipnorm"), clip_kw.get("global_clipnorm"))], kahan_summation=kahan)
    for a, b in zip(got, ref32):
        assert np.max(testing.ulp_distance(a, b, "float32")) <= 1, (a, b)
    # Reference 2: the same optimizer in float64 with the same clipping (no overflow there).
    # A float32 Adam step has ~12 roundings of relative size u = 2**-24 (clip ~5, moments 3,
    # bias correction 3, division 1): |err| <= 12 u |w - w0| + u |w| (the final addition).
    ref64 = run(getattr(O, name), [tf.cast(g, tf.float64) for g in grads], dtype="float64",
                kahan_summation=kahan, **clip_kw)
    u = 2.0**-24
    for a, b, w in zip(got, ref64, w0):
        assert np.all(np.abs(a - b) <= 12 * u * np.abs(b - w) + u * np.abs(b)), (a, b)


def test_distributed_weight_decay_of_compensated_variables(strategy):
    with strategy.scope():
        w = keras.Variable(np.ones(4), dtype="bfloat16")
        opt = O.AdamW(1e-3, weight_decay=0.5)
        opt.build([w])

    @tf.function
    def step():
        strategy.run(lambda: opt.apply([tf.constant(np.zeros(4), tf.bfloat16)], [w]))

    for _ in range(20):
        step()
    local = strategy.experimental_local_results(w.value)
    np.testing.assert_array_equal(np.asarray(local[0]), np.asarray(local[1]))
    # Zero gradient: only the decay acts, w <- w (1 - lr wd) each step, compensated.
    exact = (1 - np.float64(np.float32(1e-3)) * 0.5) ** 20
    assert testing.ulp_distance(float(np.float64(local[0][0])), exact, "bfloat16") <= 1


def _numpy_kahan_sgd(w, grads, lr, dtype):
    """Kahan-compensated SGD in NumPy, each operation rounded in `dtype` (NumPy's float32
    arithmetic is IEEE round-to-nearest, no FMA): y = -lr*g - c; t = w + y; c = (t - w) - y."""
    w = np.array(w, dtype)
    c = np.zeros_like(w)
    lr = dtype(np.float32(lr))  # Keras keeps the learning rate in a float32 variable
    for g in grads:
        y = -(lr * g.astype(dtype)) - c
        t = w + y
        c = (t - w) - y
        w = t
    return w, c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("jit", [None, False])
def test_large_kahan_update_in_place_matches_numpy(dtype, jit):
    """The large-variable Kahan update (in place on the CPU, eagerly and in graphs) gives
    exactly the bits of the compensated update computed step by step in NumPy. (Under
    jit_compile XLA may contract ``-lr * g - c`` into an FMA: other bits, not compared here.)"""
    rng = np.random.default_rng(3)
    n = 1 << 16
    w0 = (rng.standard_normal(n) * 10.0 ** rng.uniform(-2, 6, n)).astype(dtype)
    grads = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 0, n)).astype(dtype)
             for _ in range(5)]
    w = keras.Variable(w0)
    opt = O.SGD(1e-3, kahan_summation=True)
    opt.build([w])
    step = (lambda g: opt.apply([g], [w])) if jit is None else tf.function(
        lambda g: opt.apply([g], [w]))
    held = tf.convert_to_tensor(w)  # a value read before the updates keeps its bits
    for g in grads:
        step(tf.constant(g))
    want_w, want_c = _numpy_kahan_sgd(w0, grads, 1e-3, dtype)
    np.testing.assert_array_equal(w.numpy(), want_w)
    np.testing.assert_array_equal(opt._compensations[0].numpy(), want_c)  # noqa: SLF001
    np.testing.assert_array_equal(held.numpy(), w0)
    # the compensation carries what float arithmetic dropped: w + c is nearer the exact sum
    exact = w0.astype(np.longdouble) - sum(np.longdouble(np.float32(1e-3)) * g.astype(np.longdouble)
                                           for g in grads)
    assert np.abs(want_w.astype(np.longdouble) - want_c - exact).max() <= \
        np.abs(want_w.astype(np.longdouble) - exact).max()


def test_large_kahan_update_runs_in_place_in_graphs():
    from safeops import native

    if native.library() is None:
        pytest.skip("fused kernels not built")
    w = keras.Variable(np.ones(1 << 16, np.float32))
    opt = O.Adam(1e-3, kahan_summation=True)
    opt.build([w])
    f = tf.function(lambda g: opt.apply([g], [w]))
    graph = f.get_concrete_function(tf.TensorSpec([1 << 16], tf.float32)).graph
    types = {op.type for op in graph.get_operations()}
    # function bodies (Keras's update runs inside nested calls)
    for fn in graph._functions.values():  # noqa: SLF001
        types |= {node.op for node in fn.definition.node_def}
    assert "SafeopsKahanAssignAdd" in types
