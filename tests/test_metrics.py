"""so.metrics.Sum / Mean: compensated state against exact references (math.fsum / exact_sum)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import metrics, testing


def _ulps32(actual, exact):
    return int(np.max(testing.ulp_distance(np.float32(actual), np.float64(exact), "float32")))


def test_issue_example_in_tf_function():
    """1e6 then 100 000 x 0.01 (the issue's example), updates inside one tf.function."""
    exact = testing.exact_sum(np.concatenate([[np.float32(1e6)],
                                              np.full(100_000, np.float32(0.01))]))

    @tf.function
    def run(m, n):
        m.update_state(1e6)
        for _ in tf.range(n):
            m.update_state(0.01)

    ours, theirs = metrics.Sum(), keras.metrics.Sum()
    run(ours, 100_000)
    run(theirs, 100_000)
    # Documented bound: within 1 ulp of the exact sum.
    assert _ulps32(ours.result(), exact) <= 1
    assert float(ours.result()) == 1001000.0
    # Keras's own metric fails the same check (it reports exactly 1e6).
    assert float(theirs.result()) == 1e6
    assert _ulps32(theirs.result(), exact) > 1000


def _eager_example(n):
    ours, theirs = metrics.Sum(), keras.metrics.Sum()
    ours.update_state(1e6)
    theirs.update_state(1e6)
    for _ in range(n):
        ours.update_state(0.01)
        theirs.update_state(0.01)
    exact = testing.exact_sum(np.concatenate([[np.float32(1e6)], np.full(n, np.float32(0.01))]))
    assert _ulps32(ours.result(), exact) <= 1
    assert _ulps32(theirs.result(), exact) > n // 100  # Keras stays at 1e6


def test_issue_example_eager_small():
    # Same stream, shorter (eager updates cost ~1 ms each); the slow test runs all 100 000.
    _eager_example(1_500)


@pytest.mark.slow
def test_issue_example_eager_full():
    _eager_example(100_000)


def test_mean_drift_and_weights():
    rng = np.random.default_rng(0)
    batches = [np.float32(1e4) + rng.random(50).astype(np.float32) for _ in range(200)]
    weights = [rng.random(50).astype(np.float32) for _ in range(200)]
    ours, theirs = metrics.Mean(), keras.metrics.Mean()
    for b, w in zip(batches, weights):
        ours.update_state(b, sample_weight=w)
        theirs.update_state(b, sample_weight=w)
    b64 = np.concatenate(batches).astype(np.float64)
    w64 = np.concatenate(weights).astype(np.float64)
    # reference: exact weighted sums of the float32 products Keras forms, in float64 products
    exact = math.fsum(b64 * w64) / math.fsum(w64)
    # bound: one rounding of total/count in float64 then to float32 -> <= 1 ulp
    assert _ulps32(ours.result(), exact) <= 1
    assert isinstance(ours, keras.metrics.Mean)


def test_mean_count_past_2_to_24():
    """A float32 count stalls at 2**24 in Keras; ours keeps counting."""
    ours, theirs = metrics.Mean(), keras.metrics.Mean()
    big = np.ones(1 << 16, np.float32)

    @tf.function
    def run(m):
        for _ in tf.range(300):  # 300 * 65536 = 19 660 800 > 2**24 samples
            m.update_state(big)
        m.update_state(np.float32(1000.0))  # one extra sample with value 1000

    run(ours)
    run(theirs)
    n = 300 * 65536
    exact = (n + 1000.0) / (n + 1)
    assert _ulps32(ours.result(), exact) <= 1
    assert float(ours.count.numpy()) + float(ours._count.lo.numpy()) == n + 1
    assert float(theirs.count) != n + 1  # Keras's float32 count is wrong past 2**24


def test_execution_modes_and_xla():
    values = np.array([1e8, 1.0, -1e8, 1e-3, 3.0], np.float32)

    m = metrics.Sum()  # variables are created once, outside the traced function

    def fn(v):
        m.reset_state()
        m.update_state(v[:1])
        for i in range(1, 5):
            m.update_state(v[i:i + 1])
        return m.result()

    exact = testing.exact_sum(values)
    for mode, out in testing.run_modes(fn, tf.constant(values)).items():
        # the float64 batch sums and TwoSum make this exact; XLA must keep them
        assert _ulps32(out, exact) <= 1, mode


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes(dtype):
    m = metrics.Sum(dtype=dtype)
    m.update_state(np.array([1.0, 2.0, 3.0]))
    m.update_state(4.0)
    out = m.result()
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert float(out) == 10.0
    mm = metrics.Mean(dtype=dtype)
    mm.update_state([2.0, 4.0])
    assert keras.backend.standardize_dtype(mm.result().dtype) == dtype
    assert float(mm.result()) == 3.0


def test_float16_small_updates():
    """float16 total of 2048 + 4000 x 0.25: Keras loses every update (ulp at 2048 is 2)."""
    ours, theirs = metrics.Sum(dtype="float16"), keras.metrics.Sum(dtype="float16")

    @tf.function
    def run(m):
        m.update_state(2048.0)
        for _ in tf.range(4000):
            m.update_state(0.25)

    run(ours)
    run(theirs)
    assert float(ours.result()) == 3048.0
    assert float(theirs.result()) == 2048.0


def test_nonfinite_and_reset():
    m = metrics.Sum()
    m.update_state([1.0, np.inf])
    assert np.isposinf(float(m.result()))
    m.reset_state()
    m.update_state([2.0])
    assert float(m.result()) == 2.0
    mm = metrics.Mean()
    assert float(mm.result()) == 0.0  # divide_no_nan, as Keras


def test_config_round_trip_and_keras_file(tmp_path):
    m = metrics.Mean(name="avg", dtype="float64")
    m2 = metrics.Mean.from_config(m.get_config())
    assert m2.name == "avg" and m2.dtype == "float64"
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile("sgd", "mse", metrics=[metrics.Mean(name="m")])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded is not None


def test_distributed_two_replicas(two_cpu_strategy):
    strategy = two_cpu_strategy
    with strategy.scope():
        ours, theirs = metrics.Sum(), keras.metrics.Sum()
        mean = metrics.Mean()

    @tf.function
    def step(v):
        def replica_fn(v):
            ours.update_state(v)
            theirs.update_state(v)
            mean.update_state(v)
        strategy.run(replica_fn, args=(v,))

    step(tf.constant([1e6 / 2], tf.float32))  # each replica adds 5e5 -> 1e6 total
    for _ in range(400):
        step(tf.constant([0.01], tf.float32))
    n = 1 + 2 * 400  # both replicas see the same per-step value
    exact = testing.exact_sum(np.concatenate([[np.float32(5e5)] * 2,
                                              np.full(800, np.float32(0.01))]))
    # bound across replicas: hi and lo summed separately, one extra rounding -> <= 1 ulp
    assert _ulps32(ours.result(), exact) <= 1
    assert _ulps32(theirs.result(), exact) > 1  # Keras: 5e5 + 0.01 rounds the update away
    assert _ulps32(mean.result(), exact / (n + 1)) <= 1


def test_bad_input_raises():
    with pytest.raises(ValueError, match="safeops.metrics.Sum.*'dtype'"):
        metrics.Sum(dtype="int32")
    with pytest.raises(ValueError, match="safeops.metrics.Mean.*'dtype'"):
        metrics.Mean(dtype="string")
