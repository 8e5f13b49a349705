"""fake_quant's range rules: widened to contain 0, equal bounds, min > max raises."""

import numpy as np
import pytest
import tensorflow as tf

from safeops.quantization import fake_quant


def test_range_above_zero_is_widened_to_contain_zero():
    x = np.array([1.0, 1.5, 1.9, 2.0], np.float32)
    out = fake_quant(x, 1.0, 2.0).numpy()
    # Reference: TF's kernel on the widened range [0, 2]; every value is inside
    # it, so the error is at most half a step (2 / 255 / 2).
    ref = tf.quantization.fake_quant_with_min_max_vars(x, 0.0, 2.0).numpy()
    np.testing.assert_array_equal(out, ref)
    assert np.max(np.abs(out - x)) <= (2.0 / 255) / 2 * (1 + 1e-6)
    # TF's kernel alone shifts the range to [0, 1] and clamps everything to 1.
    assert np.all(tf.quantization.fake_quant_with_min_max_vars(x, 1.0, 2.0).numpy() <= 1.0)


def test_range_below_zero_is_widened_to_contain_zero():
    x = np.array([-3.0, -2.5, -2.0], np.float32)
    out = fake_quant(x, -3.0, -2.0).numpy()
    ref = tf.quantization.fake_quant_with_min_max_vars(x, -3.0, 0.0).numpy()
    np.testing.assert_array_equal(out, ref)
    assert np.max(np.abs(out - x)) <= (3.0 / 255) / 2 * (1 + 1e-6)


def test_equal_nonzero_bounds_are_finite():
    x = np.array([0.5, 2.0, 3.0], np.float32)
    out = fake_quant(x, 2.0, 2.0).numpy()
    ref = tf.quantization.fake_quant_with_min_max_vars(x, 0.0, 2.0).numpy()
    np.testing.assert_array_equal(out, ref)
    assert out[2] == 2.0  # clamped to the range


def test_zero_range_gives_zero_and_keeps_nan():
    x = np.array([1.0, -2.0, np.nan, np.inf], np.float32)
    out = fake_quant(x, 0.0, 0.0).numpy()
    np.testing.assert_array_equal(out[[0, 1, 3]], [0.0, 0.0, 0.0])
    assert np.isnan(out[2])


def test_per_channel_ranges_follow_the_same_rules():
    x = np.tile(np.array([[1.5, 0.5, -1.0]], np.float32), (2, 1))
    out = fake_quant(x, [1.0, 0.0, -2.0], [2.0, 0.0, -1.0], axis=-1).numpy()
    # Reference: TF's per-channel kernel on the widened ranges (the [0, 0]
    # channel given a unit range there; it must come out as 0).
    ref = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, [0.0, 0.0, -2.0], [2.0, 1.0, 0.0]).numpy()
    np.testing.assert_array_equal(out[:, [0, 2]], ref[:, [0, 2]])
    np.testing.assert_array_equal(out[:, 1], [0.0, 0.0])


def test_min_above_max_raises_naming_the_arguments():
    with pytest.raises(ValueError, match="fake_quant.*'min_value'.*'max_value'"):
        fake_quant([1.0], 2.0, 1.0)
    with pytest.raises(ValueError, match="min_value"):
        fake_quant(tf.ones((2, 2)), [0.0, 3.0], [1.0, 2.0], axis=-1)


def test_min_above_max_raises_in_graph_when_known_only_at_run_time():
    f = tf.function(lambda x, lo, hi: fake_quant(x, lo, hi))
    with pytest.raises(tf.errors.InvalidArgumentError, match="min_value"):
        f(tf.constant([1.0]), tf.constant(2.0), tf.constant(1.0))
    np.testing.assert_array_equal(f(tf.constant([1.0]), tf.constant(0.0), tf.constant(1.0)),
                                  [1.0])


def test_gradient_is_straight_through_inside_the_widened_range():
    x = tf.constant([0.2, 1.5, 2.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fake_quant(x, 1.0, 2.0)
    # 0.2 is outside [1, 2] but inside the widened [0, 2].
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 1.0, 0.0])
