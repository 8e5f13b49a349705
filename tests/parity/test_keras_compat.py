"""Every Keras internal safeops reaches is still where safeops expects it."""

import keras
import numpy as np
import tensorflow as tf

from safeops._core import keras_compat


def test_every_touchpoint_exists_in_the_installed_keras():
    missing = keras_compat.check_touchpoints()
    assert not missing, "Keras moved internals safeops uses:\n" + "\n".join(missing)


def test_mask_attribute_round_trips_through_keras():
    x = tf.constant([[1.0, 2.0]])
    mask = tf.constant([[True, False]])
    keras_compat.set_keras_mask(x, mask)
    np.testing.assert_array_equal(keras_compat.get_keras_mask(x), mask)
    # Keras's own loss reads the mask set this way (mean over the valid entry only).
    loss = keras.losses.MeanSquaredError(reduction="sum_over_batch_size")
    y = tf.constant([[[0.0], [0.0]]])
    p = tf.constant([[[2.0], [5.0]]])
    keras_compat.set_keras_mask(p, tf.constant([[True, False]]))
    assert float(loss(y, p)) == 4.0


def test_keras_attaches_the_logits_safeops_reads():
    z = tf.constant([1.0, -2.0])
    p = keras.activations.sigmoid(z)
    np.testing.assert_array_equal(keras_compat.get_keras_logits(p), z)


def test_optimizer_index_and_key_of_a_variable():
    a, b = keras.Variable(1.0), keras.Variable(2.0)
    opt = keras.optimizers.SGD()
    opt.build([a, b])
    assert keras_compat.optimizer_variable_index(opt, b) == 1
    assert keras_compat.optimizer_variable_key(opt, b) == keras_compat.optimizer_variable_key(
        opt, b.value)
    assert list(keras_compat.optimizer_trainable_variables(opt)) == [a, b]

    class Stand_in:
        pass

    proxy = Stand_in()
    keras_compat.key_as(proxy, keras_compat.optimizer_variable_key(opt, b))
    assert keras_compat.optimizer_variable_index(opt, proxy) == 1
    b.overwrite_with_gradient = True
    assert keras_compat.overwrite_with_gradient(b) and not keras_compat.overwrite_with_gradient(a)


def test_samplewise_reduction_is_keras_metrics_one():
    values, weight = keras_compat.reduce_to_samplewise_values(
        tf.ones((2, 3)), tf.constant([1.0, 2.0]), keras.ops.mean, "float32")
    assert tuple(values.shape) == (2,) and tuple(weight.shape) == (2,)
