"""so.metrics.Sum / Mean: compensated state against exact references (math.fsum / exact_sum)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import metrics, testing


def _ulps32(actual, exact):
    return int(np.max(testing.ulp_distance(np.float32(actual), np.float64(exact), "float32")))


def test_small_steps_after_a_large_total_in_tf_function():
    """1e6 then 100 000 x 0.01 (Keras's Sum gives 1000000.0), updates inside one tf.function."""
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


def _large_then_small_stream(n):
    """The stream: float32 1e6, then n values of float32 0.01; exact sum by fsum."""
    return testing.exact_sum(np.concatenate([[np.float32(1e6)], np.full(n, np.float32(0.01))]))


def test_small_steps_after_a_large_total_eager():
    """The full stream (1e6 then 100 000 x 0.01), eagerly, in the default run.

    An eager `update_state` costs ~1-3 ms here, so 100 000 single eager updates
    take minutes (that version is the @slow test below). This one sends the
    same 100 001 values as 1e6, then 500 single updates of 0.01 (where Keras's
    float32 total already sticks at 1e6), then the other 99 500 values of 0.01
    in one batch.
    """
    exact = _large_then_small_stream(100_000)  # 1001000.0000223517...
    ours, theirs = metrics.Sum(), keras.metrics.Sum()
    for m in (ours, theirs):
        m.update_state(1e6)
        for _ in range(500):
            m.update_state(0.01)
        m.update_state(np.full(99_500, 0.01, np.float32))
    # documented bound: within 1 ulp of the exact sum (here: correctly rounded)
    assert _ulps32(ours.result(), exact) <= 1
    assert float(ours.result()) == 1001000.0
    # Keras drops every single update (0.01 < half an ulp of 1e6 = 0.03125) and
    # reports 1e6 + 995, i.e. 80 ulps short: it fails the same check.
    assert float(theirs.result()) == 1000995.0
    assert _ulps32(theirs.result(), exact) > 40

    # All 100 000 values in one eager batch: ours is still within 1 ulp. (Keras is
    # right in this form too: its batch is reduced first and added once, so the
    # drift needs many updates, as above.)
    ours.reset_state()
    ours.update_state(1e6)
    ours.update_state(np.full(100_000, 0.01, np.float32))
    assert _ulps32(ours.result(), exact) <= 1


def test_small_steps_after_a_large_total_mean_eager():
    """Keras's Mean drifts the same way; ours stays within 1 ulp of total/count."""
    n_single, n_batch = 300, 99_700  # eager Mean updates cost ~2-8 ms: few single ones
    exact = _large_then_small_stream(n_single + n_batch) / (1 + n_single + n_batch)
    ours, theirs = metrics.Mean(), keras.metrics.Mean()
    for m in (ours, theirs):
        m.update_state(1e6)
        for _ in range(n_single):
            m.update_state(0.01)
        m.update_state(np.full(n_batch, 0.01, np.float32))
    # bound (Mean docstring): u + 2 n u^2 cond, rounded once -> within 1 ulp here
    assert _ulps32(ours.result(), exact) <= 1
    # Keras: the 300 single updates are lost (total 1e6 + 997), the count is exact:
    # relative error 3e-6, i.e. ~30 float32 ulps at 10.01
    assert _ulps32(theirs.result(), exact) > 10


def test_small_steps_after_a_large_total_mean_in_tf_function():
    """Mean on the 1e6 + 100 000 x 0.01 stream inside tf.function (graph) and tf.function(jit_compile=True)."""
    exact = _large_then_small_stream(100_000) / 100_001

    def run(m, n_single):
        m.update_state(1e6)
        for _ in tf.range(n_single):
            m.update_state(0.01)
        m.update_state(tf.fill([100_000 - n_single], tf.constant(0.01, tf.float32)))

    # XLA: all 100 000 single updates (~1 s); plain graph: 5 000 single updates
    # (~140 us each for ours) and the remaining 95 000 values in one batch.
    for jit, n_single in ((True, 100_000), (False, 5_000)):
        ours, theirs = metrics.Mean(), keras.metrics.Mean()
        fn = tf.function(run, jit_compile=jit)
        fn(ours, tf.constant(n_single))
        fn(theirs, tf.constant(n_single))
        assert _ulps32(ours.result(), exact) <= 1, jit  # documented bound
        assert _ulps32(theirs.result(), exact) > 10, jit  # Keras drifts


@pytest.mark.slow
def test_small_steps_after_a_large_total_eager_full():
    """100 000 single eager updates, one value per call (minutes)."""
    ours, theirs = metrics.Sum(), keras.metrics.Sum()
    ours.update_state(1e6)
    theirs.update_state(1e6)
    for _ in range(100_000):
        ours.update_state(0.01)
        theirs.update_state(0.01)
    exact = _large_then_small_stream(100_000)
    assert _ulps32(ours.result(), exact) <= 1
    assert float(theirs.result()) == 1e6


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
    values = np.array([1e6, 0.01, 0.01, 3.0, -2.5], np.float32)
    weights = np.array([1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    exact = math.fsum(values.astype(np.float64) * weights) / math.fsum(weights.astype(np.float64))
    for cls, kwargs in ((metrics.Mean, {"name": "avg", "dtype": "float64"}),
                        (metrics.Sum, {"name": "tot", "dtype": "float32"})):
        m = cls(**kwargs)
        m2 = cls.from_config(m.get_config())
        assert type(m2) is cls and m2.get_config() == m.get_config()
        assert (m2.name, m2.dtype) == (kwargs["name"], kwargs["dtype"])
        for metric in (m, m2):
            metric.update_state(values, sample_weight=weights)
        # the rebuilt metric computes bit for bit what the original does
        assert m2.result().numpy() == m.result().numpy()

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2, name="d")(inp))
    model.compile("sgd", "mse", metrics=[metrics.Mean(name="m"), metrics.Sum(name="s")])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    # the compiled metrics come back as safeops metrics with the same configuration
    saved = model._compile_config.config["metrics"]
    back = loaded._compile_config.config["metrics"]
    assert [type(x) for x in back] == [metrics.Mean, metrics.Sum]
    assert [x.get_config() for x in back] == [x.get_config() for x in saved]
    # identical weights and outputs
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    # the reloaded metric objects accumulate exactly as fresh ones do
    for fresh, reloaded in zip((metrics.Mean(name="m"), metrics.Sum(name="s")), back):
        for metric in (fresh, reloaded):
            metric.update_state(values, sample_weight=weights)
        assert reloaded.result().numpy() == fresh.result().numpy()
    # and is right: float32 state, float64 batch reduction of exact float32 products
    # (error ~5 u64, far below u32), one rounding of total/count -> within 1 ulp
    assert _ulps32(back[0].result(), exact) <= 1
    assert _ulps32(back[1].result(), math.fsum(values.astype(np.float64) * weights)) <= 1


def test_distributed_two_replicas(two_cpu_strategy):
    """The 1e6 + 100 000 x 0.01 stream split over two replicas: accurate, not only in agreement.

    Replica 0 adds 1e6 (replica 1 adds 0.0), then each replica adds 0.01 in
    500 single updates and then 49 500 more in one batch: the sum reads
    1e6 + 100 000 x 0.01.
    """
    strategy = two_cpu_strategy
    with strategy.scope():
        ours, theirs = metrics.Sum(), keras.metrics.Sum()
        mean, kmean = metrics.Mean(), keras.metrics.Mean()

    def replica_fn(v):
        for m in (ours, theirs, mean, kmean):
            m.update_state(v)

    first = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(1e6 if ctx.replica_id_in_sync_group == 0 else 0.0, tf.float32))
    n_single, n_batch = 500, 49_500  # per replica; a replicated step costs ~1-4 ms here

    @tf.function
    def run(first):
        strategy.run(replica_fn, args=(first,))
        for _ in tf.range(n_single):
            strategy.run(replica_fn, args=(tf.constant(0.01, tf.float32),))
        strategy.run(replica_fn, args=(tf.fill([n_batch], tf.constant(0.01, tf.float32)),))

    run(first)
    exact = _large_then_small_stream(2 * (n_single + n_batch))  # the 0.0 adds nothing
    count = 2 + 2 * (n_single + n_batch)  # the 0.0 is one sample of replica 1
    # bound across replicas: hi and lo summed separately, one extra rounding -> <= 1 ulp
    assert _ulps32(ours.result(), exact) <= 1
    assert float(ours.result()) == 1001000.0
    assert _ulps32(mean.result(), exact / count) <= 1
    # Keras: replica 0's total sticks at 1e6 through its 500 single updates: 5 short,
    # 80 ulps (and ~50 ulps for the mean)
    assert _ulps32(theirs.result(), exact) > 40
    assert _ulps32(kmean.result(), exact / count) > 10


def test_bad_input_raises():
    with pytest.raises(ValueError, match="safeops.metrics.Sum.*'dtype'"):
        metrics.Sum(dtype="int32")
    with pytest.raises(ValueError, match="safeops.metrics.Mean.*'dtype'"):
        metrics.Mean(dtype="string")
