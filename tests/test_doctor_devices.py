"""Tests of `safeops.doctor.compare_devices` against independently computed ulp distances."""

import numpy as np
import pytest
import tensorflow as tf

from safeops.doctor import compare_devices


def test_deterministic_function_identical():
    x = tf.constant([1.5, 2.0, 3.25, -7.0])
    diffs = compare_devices(lambda t: t * t + 1.0, x, devices=["/CPU:0"], verbose=False)
    runs = {d.run for d in diffs}
    assert runs == {"/CPU:0 function", "/CPU:0 jit_compile"}
    assert {d.quantity for d in diffs} == {"output[0]", "grad[input 0]"}
    assert all(d.max_ulp == 0 and not d.flagged for d in diffs)


def test_difference_is_measured_in_ulps_and_flagged():
    # Graph modes multiply by 1 + 2**-20; eager does not. In float32 on [1, 2) the ulp is 2**-23,
    # so x * 2**-20 is 8 * x ulps: 12 for x = 1.5 (exact, no rounding in the product).
    factor = lambda: 1.0 if tf.executing_eagerly() else 1.0 + 2.0 ** -20  # noqa: E731
    x = tf.constant([1.5, 1.0])
    diffs = compare_devices(lambda t: t * factor(), x, devices=["/CPU:0"], verbose=False)
    out = {d.run: d for d in diffs if d.quantity == "output[0]"}
    expected = int(np.max(np.abs(np.array([1.5, 1.0]) * 2.0 ** -20 / 2.0 ** -23)))
    assert out["/CPU:0 function"].max_ulp == expected == 12
    assert out["/CPU:0 jit_compile"].flagged
    grad = {d.run: d for d in diffs if d.quantity == "grad[input 0]"}
    assert grad["/CPU:0 function"].max_ulp == 8  # d/dx = 1 + 2**-20 vs 1: 8 ulps at 1.0
    relaxed = compare_devices(lambda t: t * factor(), x, devices=["/CPU:0"], threshold_ulp=12,
                              verbose=False)
    assert not any(d.flagged for d in relaxed)


def test_two_devices_and_variables(two_cpu_strategy):
    v = tf.Variable([0.5, 2.0])
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
    diffs = compare_devices(lambda t: tf.reduce_sum(v * t), tf.constant([1.0, 3.0]), devices=devices,
                            modes=("eager", "function"), verbose=False)
    assert {d.quantity for d in diffs} == {"output[0]", "grad[input 0]", f"grad[{v.name}]"}
    assert len({d.run for d in diffs}) == 3 and all(d.max_ulp == 0 for d in diffs)


def test_bad_input():
    with pytest.raises(TypeError, match="compare_devices.*'fn'"):
        compare_devices(3, 1.0)
    with pytest.raises(ValueError, match="compare_devices.*'modes'"):
        compare_devices(lambda t: t, 1.0, modes=("fast",))
    with pytest.raises(ValueError, match="threshold_ulp"):
        compare_devices(lambda t: t, 1.0, threshold_ulp=-1)
