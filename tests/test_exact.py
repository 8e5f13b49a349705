"""so.exact: exact states of sums split across batches and replicas, against math.fsum and
exact rationals."""

import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

import safeops as so

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ill_conditioned(rng, n, dtype=np.float64):
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-20, 20, n)
    x = np.concatenate([x, -x[: n // 2], [1e-3, 2.0 ** -40]]).astype(dtype)
    return rng.permutation(x)


def test_batches_combined_equal_the_whole_and_fsum():
    rng = np.random.default_rng(0)
    x = _ill_conditioned(rng, 3000)
    whole = so.exact.state_to_sum(so.exact.sum_state(x), tf.float64).numpy()
    assert whole == math.fsum(x)  # fsum is correctly rounded
    for cuts in ([1000, 2002], [1, 2, 3, 4000], [17]):
        parts = np.split(x, [c for c in cuts if c < x.size])
        states = [so.exact.sum_state(p) for p in parts]
        total = so.exact.combine_states(states)
        assert so.exact.state_to_sum(total, tf.float64).numpy() == whole
        mean = so.exact.state_to_mean(total, tf.float64).numpy()
        assert mean == float(Fraction(math.fsum(x)) / x.size) or \
            mean == float(sum(map(Fraction, x.tolist())) / x.size)


def test_axis_keepdims_and_float32_rounding():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 50)) * 1e4).astype(np.float32)
    x[:, 25:] = -x[:, :25]
    x[:, 0] += np.float32(0.25)
    state = so.exact.sum_state(x, axis=-1, keepdims=True)
    assert state.shape == (4, 1, so.exact.num_digits(tf.float32) + 5)
    got = so.exact.state_to_sum(state, tf.float32).numpy()
    exact = [sum(map(Fraction, row.astype(np.float64).tolist())) for row in x]
    # every row's exact sum is a small dyadic number, exactly representable in float32
    np.testing.assert_array_equal(got[:, 0], np.float32([float(e) for e in exact]))


def test_cross_replica_sum_two_replicas_equals_one(two_cpu_strategy):
    rng = np.random.default_rng(2)
    x = _ill_conditioned(rng, 999).astype(np.float32)  # 1500 values
    shards = tf.constant(x.reshape(2, -1))
    values = two_cpu_strategy.experimental_distribute_values_from_function(
        lambda ctx: shards[ctx.replica_id_in_sync_group])
    out = two_cpu_strategy.run(lambda v: so.exact.cross_replica_sum(v), args=(values,))
    single = so.exact.cross_replica_sum(tf.constant(x))  # default replica context
    for r in two_cpu_strategy.experimental_local_results(out):
        assert r.numpy().view(np.uint32) == single.numpy().view(np.uint32)
    exact = sum(map(Fraction, x.astype(np.float64).tolist()))
    assert abs(Fraction(float(single.numpy())) - exact) <= Fraction(
        float(np.spacing(np.float32(abs(float(exact)))))) / 2


def test_one_two_four_replicas_same_bits():
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)])
        import safeops as so
        rng = np.random.default_rng(3)
        x = (rng.standard_normal(4096) * 10.0 ** rng.uniform(-15, 15, 4096)).astype(np.float32)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        for k in (1, 2, 4):
            strategy = tf.distribute.MirroredStrategy(
                devices[:k], cross_device_ops=tf.distribute.ReductionToOneDevice())
            shards = tf.constant(x.reshape(k, -1))
            vals = strategy.experimental_distribute_values_from_function(
                lambda ctx: shards[ctx.replica_id_in_sync_group])
            out = strategy.run(lambda v: so.exact.cross_replica_sum(v), args=(vals,))
            bits = {int(r.numpy().view(np.uint32)) for r in strategy.experimental_local_results(out)}
            print(k, sorted(bits))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln.split(" ", 1) for ln in r.stdout.strip().splitlines()]
    assert [k for k, _ in lines] == ["1", "2", "4"]
    assert len({bits for _, bits in lines}) == 1 and "," not in lines[0][1]


def test_non_finite_and_signed_zero_as_ieee():
    parts = [so.exact.sum_state(tf.constant(v, tf.float32)) for v in
             ([-0.0, -0.0], [-0.0], [np.inf, 1.0])]
    assert str(so.exact.state_to_sum(so.exact.combine_states(parts[:2]), tf.float32).numpy()) \
        == "-0.0"
    assert so.exact.state_to_sum(so.exact.combine_states(parts), tf.float32).numpy() == np.inf
    both = parts + [so.exact.sum_state(tf.constant([-np.inf], tf.float32))]
    assert np.isnan(so.exact.state_to_sum(so.exact.combine_states(both), tf.float32).numpy())
    empty = so.exact.sum_state(tf.zeros([0], tf.float64))
    assert so.exact.state_to_sum(empty, tf.float64).numpy() == 0.0
    assert np.isnan(so.exact.state_to_mean(empty, tf.float64).numpy())


def test_bad_arguments_name_the_op_and_argument():
    with pytest.raises(TypeError, match=r"safeops.exact.sum_state.*'x'"):
        so.exact.sum_state(tf.constant([1, 2]))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match=r"safeops.exact.sum_state.*'axis'"):
        so.exact.sum_state(tf.zeros([2, 3]), axis=[1, 1])
    with pytest.raises(ValueError, match=r"safeops.exact.state_to_sum.*'state'.*float64"):
        so.exact.state_to_sum(so.exact.sum_state(tf.zeros([3])), tf.float64)
    with pytest.raises(TypeError, match=r"safeops.exact.state_to_mean.*'state'.*int64"):
        so.exact.state_to_mean(tf.zeros([16]), tf.float32)
    with pytest.raises(ValueError, match=r"safeops.exact.combine_states.*different dtypes"):
        so.exact.combine_states([so.exact.sum_state(tf.zeros([3])),
                                 so.exact.sum_state(tf.zeros([3], tf.float64))])
    with pytest.raises(ValueError, match=r"safeops.exact.combine_states.*non-empty"):
        so.exact.combine_states([])
    with pytest.raises(TypeError, match=r"safeops.exact.num_digits.*'dtype'"):
        so.exact.num_digits(tf.int32)


def test_graph_and_xla_give_the_eager_bits():
    rng = np.random.default_rng(4)
    x = _ill_conditioned(rng, 500).astype(np.float32)

    def total(v):
        halves = [so.exact.sum_state(v[:250]), so.exact.sum_state(v[250:])]
        return so.exact.state_to_sum(so.exact.combine_states(halves), tf.float32)

    eager = total(tf.constant(x)).numpy()
    for jit in (False, True):
        assert tf.function(total, jit_compile=jit)(tf.constant(x)).numpy() == eager
