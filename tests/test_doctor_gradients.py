"""Tests of `safeops.doctor.explain_gradients`: each None/zero/non-finite case is explained.

Each case first asserts what the tape itself returns (None, 0, NaN), so the
explanation is checked against a real failure, not an assumed one.
"""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops.doctor import explain_gradients


def _tape(fn, var, *inputs):
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(fn(*inputs))
    return tape.gradient(out, var)


def _line_containing(fn, text):
    lines, start = inspect.getsourcelines(fn)
    return [start + i for i, line in enumerate(lines) if text in line][0]


def test_variable_used_only_outside_the_tape():
    w = tf.Variable(2.0, name="w_outside")
    y = w * 3.0  # USED-OUTSIDE

    def fn(x):
        return x * y

    x = tf.constant(1.5)
    assert _tape(fn, w, x) is None
    (issue,) = explain_gradients(fn, [w], x, verbose=False)
    assert (issue.status, issue.reason) == ("none", "not used")
    assert issue.line == _line_containing(test_variable_used_only_outside_the_tape, "# USED-OUTSIDE")
    assert issue.file == __file__ and "y = w * 3.0" in issue.code


def test_cast_to_integer():
    v = tf.Variable(2.0)

    def fn(x):
        return tf.cast(tf.cast(v * x, tf.int32), tf.float32)  # CAST

    x = tf.constant(1.5)
    assert _tape(fn, v, x) is None
    (issue,) = explain_gradients(fn, v, x, verbose=False)
    assert (issue.reason, issue.op_type) == ("non-differentiable op", "Cast")
    assert "cast to int32" in issue.message
    assert issue.line == _line_containing(fn, "# CAST")


@pytest.mark.parametrize("kind", ["round", "argmax", "comparison", "stop_gradient"])
def test_non_differentiable_ops_are_named(kind):
    v = tf.Variable([2.0, 1.0])
    fns = {
        "round": lambda x: tf.round(v * x),
        "argmax": lambda x: tf.cast(tf.argmax(v * x), tf.float32),
        "comparison": lambda x: tf.cast(v * x > 1.0, tf.float32),
        "stop_gradient": lambda x: tf.stop_gradient(v * x),
    }
    expected = {"round": "Round", "argmax": "ArgMax", "comparison": "Greater",
                "stop_gradient": "StopGradient"}
    x = tf.constant([1.5, 0.5])
    assert _tape(fns[kind], v, x) is None
    (issue,) = explain_gradients(fns[kind], [v], x, verbose=False)
    assert (issue.status, issue.reason, issue.op_type) == ("none", "non-differentiable op",
                                                           expected[kind])
    assert issue.file == __file__


def test_integer_variable():
    iv = tf.Variable(3)
    fn = lambda x: x * tf.cast(iv, tf.float32)  # noqa: E731
    (issue,) = explain_gradients(fn, [iv], tf.constant(1.5), verbose=False)
    assert (issue.status, issue.reason) == ("none", "not floating") and "int32" in issue.message


def test_nan_gradient_points_at_the_backward_op():
    v = tf.Variable(1.0)

    def fn(x):
        return tf.sqrt(v * x)  # SQRT

    x = tf.constant([0.0, 4.0])
    g = _tape(fn, v, x).numpy()
    assert not np.isfinite(g)  # 0 * inf in the backward pass of sqrt at 0
    (issue,) = explain_gradients(fn, [v], x, verbose=False)
    assert (issue.status, issue.reason, issue.op_type) == ("non-finite", "backward non-finite", "Sqrt")
    assert issue.line == _line_containing(fn, "# SQRT")


def test_nan_gradient_from_hidden_forward_value():
    v = tf.Variable(1.0)

    def fn(x):
        return tf.where(x > 0, tf.math.log(v * x), 0.0)  # LOG

    x = tf.constant([0.0, 2.0])
    assert np.isnan(_tape(fn, v, x).numpy())
    (issue,) = explain_gradients(fn, [v], x, verbose=False)
    assert (issue.reason, issue.op_type) == ("forward non-finite", "Log")
    assert "where" in issue.message and issue.line == _line_containing(fn, "# LOG")


def test_zero_gradient_dead_relu():
    v = tf.Variable(1.0)
    fn = lambda x: tf.nn.relu(v * x)  # noqa: E731
    x = tf.constant([-1.0, -2.0])
    assert float(_tape(fn, v, x)) == 0.0
    (issue,) = explain_gradients(fn, [v], x, verbose=False)
    assert (issue.status, issue.op_type) == ("zero", "Relu") and "dead ReLU" in issue.message


def test_healthy_gradients_give_empty_list():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh")])
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert explain_gradients(model, model.trainable_variables, x, verbose=False) == []


def test_tensor_inputs_can_be_explained():
    x = tf.constant([1.0, 2.0])
    (issue,) = explain_gradients(lambda t: tf.floor(t), [x], x, verbose=False)
    assert issue.op_type == "Floor"


def test_bad_input():
    with pytest.raises(TypeError, match="explain_gradients.*'variables'"):
        explain_gradients(lambda x: x, ["w"], 1.0)
    with pytest.raises(TypeError, match="explain_gradients.*'target'"):
        explain_gradients(3, [tf.Variable(1.0)], 1.0)


# ---------------------------------------------------------------- bfloat16 (0-d values and gradients)

def test_bfloat16_three_none_cases():
    w = tf.Variable(tf.constant(2.0, tf.bfloat16), name="w_bf16_outside")
    y = w * 3.0  # USED-OUTSIDE-BF16
    x = tf.constant(1.5, tf.bfloat16)
    (issue,) = explain_gradients(lambda t: t * y, [w], x, verbose=False)
    assert (issue.status, issue.reason) == ("none", "not used")
    assert issue.line == _line_containing(test_bfloat16_three_none_cases, "# USED-OUTSIDE-BF16")

    v = tf.Variable(tf.constant([2.0, 1.0], tf.bfloat16))
    xs = tf.constant([1.5, 0.5], tf.bfloat16)
    for fn, op_type in ((lambda t: tf.round(v * t), "Round"),
                        (lambda t: tf.cast(tf.argmax(v * t), tf.bfloat16), "ArgMax"),
                        (lambda t: tf.cast(tf.cast(v * t, tf.int32), tf.bfloat16), "Cast")):
        assert _tape(fn, v, xs) is None
        (issue,) = explain_gradients(fn, [v], xs, verbose=False)
        assert (issue.status, issue.reason, issue.op_type) == ("none", "non-differentiable op", op_type)


def test_bfloat16_scalar_nonfinite_and_zero_gradients():
    v = tf.Variable(tf.constant(0.0, tf.bfloat16))

    def fn(x):
        return tf.sqrt(v * x)  # SQRT-BF16

    x = tf.constant(2.0, tf.bfloat16)
    g = _tape(fn, v, x)
    assert g.dtype == tf.bfloat16 and g.shape == () and not np.isfinite(float(g.numpy()))
    (issue,) = explain_gradients(fn, [v], x, verbose=False)
    assert (issue.status, issue.op_type) == ("non-finite", "Sqrt")
    assert issue.line == _line_containing(fn, "# SQRT-BF16")

    u = tf.Variable(tf.constant(-2.0, tf.bfloat16))
    (issue,) = explain_gradients(lambda t: tf.nn.relu(u * t), [u], x, verbose=False)
    assert (issue.status, issue.op_type) == ("zero", "Relu")
