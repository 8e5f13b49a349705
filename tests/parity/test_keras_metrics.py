"""Sum and Mean next to keras.metrics.Sum / Mean: layout, configs, weights, values."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import metrics

PAIRS = [(metrics.Sum, keras.metrics.Sum), (metrics.Mean, keras.metrics.Mean)]


def test_variable_layout_is_keras_plus_compensation():
    assert [v.name for v in metrics.Sum().variables] == ["total", "total_compensation"]
    assert [v.name for v in keras.metrics.Sum().variables] == ["total"]
    assert [v.name for v in metrics.Mean().variables] == \
        ["total", "total_compensation", "count", "count_compensation"]
    assert [v.name for v in keras.metrics.Mean().variables] == ["total", "count"]


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_config_round_trips_both_ways(ours, theirs):
    k = theirs(name="m", dtype="float64")
    assert ours.from_config(k.get_config()).get_config() == k.get_config()
    o = ours(name="m", dtype="float16")
    assert theirs.from_config(o.get_config()).get_config() == o.get_config()


@pytest.mark.parametrize("weight_shape", [None, (), (4,), (4, 1), (4, 3)])
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_sample_weights_of_every_shape_as_keras(ours, theirs, weight_shape):
    rng = np.random.default_rng(0)
    values = rng.random((4, 3)).astype(np.float32)
    weight = None if weight_shape is None else rng.random(weight_shape).astype(np.float32)
    o, k = ours(), theirs()
    for _ in range(3):
        o.update_state(values, sample_weight=weight)
        k.update_state(values, sample_weight=weight)
    # Reference: the same weighting in float64, written out (Mean: per-sample mean first).
    v = np.float64(values)
    w = None if weight is None else np.broadcast_to(np.float64(weight).reshape(
        weight.shape + (1,) * (2 - weight.ndim)) if weight.ndim < 2 else np.float64(weight),
        (4, 3))
    if ours is metrics.Sum:
        ref = 3 * (v.sum() if w is None else (v * w).sum())
    elif w is None:
        ref = v.mean()
    else:
        sample_w = w.mean(axis=1)  # Keras reduces weights to per-sample means
        ref = (v * w).mean(axis=1).sum() / sample_w.sum()
    assert float(o.result()) == pytest.approx(ref, rel=2.0**-23)
    assert float(k.result()) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_dtypes_under_policies_as_keras(ours, theirs, policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        o, k = ours(), theirs()
        assert o.dtype == k.dtype
        x = tf.cast([1.0, 2.0, 4.0], keras.mixed_precision.dtype_policy().compute_dtype)
        o.update_state(x)
        k.update_state(x)
        assert o.result().dtype == k.result().dtype
        assert float(o.result()) == float(k.result())
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_serialization_round_trip():
    for metric in (metrics.Sum(name="s", dtype="float64"), metrics.Mean(name="m")):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(again) is type(metric) and again.get_config() == metric.get_config()


def test_checkpointed_variables_keep_the_compensation(tmp_path):
    m = metrics.Sum()
    m.update_state(2.0**24)
    m.update_state(1.0)  # a tie in float32: lost by Keras's total, kept in the compensation
    ckpt = tf.train.Checkpoint(state=[v.value for v in m.variables])
    path = ckpt.write(str(tmp_path / "metric"))
    m.reset_state()
    assert float(m.result()) == 0.0
    ckpt.read(path).assert_consumed()
    m.update_state(1.0)
    assert float(m.result()) == 2.0**24 + 2  # exact, representable in float32
    k = keras.metrics.Sum()
    for x in (2.0**24, 1.0, 1.0):
        k.update_state(x)
    assert float(k.result()) == 2.0**24  # both updates lost
