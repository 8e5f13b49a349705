"""safeops.KahanAccumulator: a million tiny adds, all execution modes, two replicas."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing

N = 10**6
INC = np.float32(1e-7)
EXACT = float(INC) * N  # exact in float64 (1e6 * a float32 value)


@functools.lru_cache(maxsize=1)
def _naive_total():
    v = tf.Variable(0.0)

    @tf.function
    def run():
        for _ in tf.range(N):
            v.assign_add(INC)
    run()
    return v.numpy()


@pytest.mark.parametrize("mode", ["function", "jit_compile"])
def test_million_adds(mode):
    acc = so.KahanAccumulator()

    def run():
        for _ in tf.range(N):
            acc.add(INC)
    tf.function(run, jit_compile=(mode == "jit_compile"))()
    assert int(np.max(testing.ulp_distance(acc.value().numpy(), EXACT, "float32"))) <= 1
    assert int(np.max(testing.ulp_distance(_naive_total(), EXACT, "float32"))) > 1  # assign_add fails


def test_eager_adds_and_reset():
    # Same eager loop for both: a total of 1 receiving 3000 increments of 1e-7 (below half
    # an ulp of 1 in float32). The naive assign_add stalls at 1.0 (~1e3 ulp off).
    acc = so.KahanAccumulator(shape=[2])
    naive = tf.Variable(tf.zeros([2]))
    acc.add([1.0, 0.0])
    naive.assign_add([1.0, 0.0])
    for _ in range(3000):
        acc.add([INC, 1.0])
        naive.assign_add([INC, 1.0])
    ref = np.array([1.0 + 3000 * float(INC), 3000.0])  # exact in float64
    assert int(np.max(testing.ulp_distance(acc.value().numpy(), ref, "float32"))) <= 1
    assert int(np.max(testing.ulp_distance(naive.numpy(), ref, "float32"))) > 1
    acc.reset()
    assert acc.value().numpy().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_dtypes(dtype):
    acc = so.KahanAccumulator(dtype=dtype)
    big, small = (1e16, 1.0) if dtype == "float64" else (256.0, 0.125)
    acc.add(tf.constant(big, dtype))
    for _ in range(512):
        acc.add(tf.constant(small, dtype))
    exact = big + 512 * small
    assert acc.value().dtype == dtype
    assert int(np.max(testing.ulp_distance(acc.value().numpy(), exact, dtype))) <= 1
    v = tf.Variable(tf.constant(big, dtype))
    for _ in range(512):
        v.assign_add(tf.constant(small, dtype))
    assert int(np.max(testing.ulp_distance(v.numpy(), exact, dtype))) > 1  # the stalled total


def test_float64_double_word_jit():
    acc = so.KahanAccumulator(dtype=tf.float64)

    @tf.function(jit_compile=True)
    def run():
        acc.add(tf.constant(1e16, tf.float64))
        for _ in tf.range(1000):
            acc.add(tf.constant(0.75, tf.float64))
    run()
    assert float(acc.value()) == 1e16 + 750.0


def test_two_replicas(two_cpu_strategy):
    with two_cpu_strategy.scope():
        acc = so.KahanAccumulator()

    @tf.function
    def step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            inc = tf.where(ctx.replica_id_in_sync_group == 0, INC, 2 * INC)
            acc.add(inc)
        two_cpu_strategy.run(replica_fn)

    for _ in range(2000):
        step()
    exact = 2000 * (float(INC) + float(2 * INC))
    assert int(np.max(testing.ulp_distance(acc.value().numpy(), exact, "float32"))) <= 1


def test_nonfinite_and_bad_input():
    acc = so.KahanAccumulator()
    acc.add(np.inf)
    assert acc.value().numpy() == np.inf
    acc.add(np.nan)
    assert np.isnan(acc.value().numpy())
    with pytest.raises(TypeError, match="KahanAccumulator.*'dtype'"):
        so.KahanAccumulator(dtype=tf.int32)
    with pytest.raises(TypeError, match="'values'"):
        so.KahanAccumulator().add(tf.constant(1.0, tf.float64))
    with pytest.raises(ValueError, match="'values'"):
        so.KahanAccumulator(shape=[2]).add(tf.ones([3]))
