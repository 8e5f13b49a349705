"""Tests for safeops.losses: logit recovery (eager and graph), parity with Keras, bad input,
serialization, the real-bug softmax classifier on sklearn's digits, and the docstring examples."""

import doctest
import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import safeops as so

L = so.losses


def _loss_and_grad(loss_fn, z, y, act, graph):
    def f(z):
        with tf.GradientTape() as t:
            t.watch(z)
            loss = tf.reduce_sum(loss_fn(y, act(z)))
        return loss, t.gradient(loss, z)
    return (tf.function(f) if graph else f)(z)


def test_sigmoid_30_recovers_logits_graph_and_eager():
    z = tf.constant([30.0])
    # graph: recovered from the Sigmoid op; eager: from keras.activations' _keras_logits
    for act, graph in [(tf.sigmoid, True), (keras.activations.sigmoid, False)]:
        loss, g = _loss_and_grad(L.binary_crossentropy, z, tf.constant([0.0]), act, graph)
        assert loss.numpy() == pytest.approx(30.0) and g.numpy()[0] == pytest.approx(1.0)
    # Keras 3 in eager on tf.sigmoid: clipped value, gradient 0 (the failure fixed)
    loss, g = _loss_and_grad(keras.losses.binary_crossentropy, z, tf.constant([0.0]),
                             tf.sigmoid, False)
    assert loss.numpy() < 17 and g.numpy()[0] == 0.0


def test_softmax_recovers_logits():
    z = tf.constant([[50.0, -50.0, 0.0]])
    y = tf.constant([[0.0, 1.0, 0.0]])
    ref = tf.nn.softmax_cross_entropy_with_logits(y, z).numpy()
    for act, graph in [(tf.nn.softmax, True), (so.softmax, False), (keras.activations.softmax, False)]:
        loss, g = _loss_and_grad(L.categorical_crossentropy, z, y, act, graph)
        assert loss.numpy() == pytest.approx(ref[0], rel=1e-6) and np.all(np.isfinite(g))
        np.testing.assert_allclose(g.numpy(), (tf.nn.softmax(z) - y).numpy(), atol=1e-6)
        ls, gs = _loss_and_grad(L.sparse_categorical_crossentropy, z, tf.constant([1]), act, graph)
        assert ls.numpy() == pytest.approx(ref[0], rel=1e-6)


def test_parity_with_keras_on_moderate_input():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=(6, 4)).astype(np.float32)
    y = (rng.uniform(size=(6, 4)) > 0.5).astype(np.float32)
    for ls in (0.0, 0.1):
        np.testing.assert_allclose(L.binary_crossentropy(y, p, label_smoothing=ls),
                                   keras.losses.binary_crossentropy(y, p, label_smoothing=ls),
                                   rtol=1e-6)
        np.testing.assert_allclose(L.categorical_crossentropy(y, p, label_smoothing=ls),
                                   keras.losses.categorical_crossentropy(y, p, label_smoothing=ls),
                                   rtol=1e-6)
        np.testing.assert_allclose(
            L.binary_crossentropy(y, p * 8 - 4, from_logits=True, label_smoothing=ls),
            keras.losses.binary_crossentropy(y, p * 8 - 4, from_logits=True, label_smoothing=ls),
            rtol=1e-5)
    labels = rng.integers(0, 4, size=6)
    np.testing.assert_allclose(L.sparse_categorical_crossentropy(labels, p),
                               keras.losses.sparse_categorical_crossentropy(labels, p), rtol=1e-6)
    out = L.sparse_categorical_crossentropy(labels, p, ignore_class=int(labels[0]))
    assert out.numpy()[0] == 0.0


def test_loss_classes_round_trip(tmp_path):
    for cls, kw in [(L.BinaryCrossentropy, {"label_smoothing": 0.1}),
                    (L.CategoricalCrossentropy, {"from_logits": True}),
                    (L.SparseCategoricalCrossentropy, {"ignore_class": 0}),
                    (L.RelativeError, {})]:
        obj = cls(**kw)
        clone = keras.losses.deserialize(keras.losses.serialize(obj))
        assert type(clone) is cls and clone.get_config() == obj.get_config()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(loss=L.CategoricalCrossentropy(label_smoothing=0.1), optimizer="sgd")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, L.CategoricalCrossentropy)
    y, p = tf.constant([[0.0, 1.0]]), tf.constant([[0.3, 0.7]])
    assert float(L.BinaryCrossentropy()(y, p)) == pytest.approx(
        float(keras.losses.BinaryCrossentropy()(y, p)), rel=1e-6)


def test_relative_error_delegates():
    from safeops.division import relative_error
    y, p = tf.constant([1.0, 2.0]), tf.constant([1.1, 2.0])
    np.testing.assert_array_equal(L.relative_error(y, p), relative_error(y, p))
    assert float(L.RelativeError()(y, p)) == pytest.approx(float(tf.reduce_mean(relative_error(y, p))))


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        L.binary_crossentropy(tf.zeros([2, 3]), tf.zeros([2, 2]))
    with pytest.raises(ValueError, match="label_smoothing"):
        L.categorical_crossentropy(tf.zeros([2, 2]), tf.ones([2, 2]) / 2, label_smoothing=1.5)
    with pytest.raises(ValueError, match="shape"):
        L.sparse_categorical_crossentropy(tf.zeros([3], tf.int32), tf.ones([2, 4]))
    with pytest.raises(TypeError, match="y_pred"):
        L.binary_crossentropy([1, 0], tf.constant([1, 0]))


def _train(kind, steps=60, lr=1.0):
    d = load_digits()
    x = tf.constant(d.data, tf.float32)  # raw pixels 0..16: logits grow fast at lr=1
    y = tf.one_hot(d.target, 10)
    w, b = tf.Variable(tf.zeros([64, 10])), tf.Variable(tf.zeros([10]))

    @tf.function
    def step():
        with tf.GradientTape() as t:
            z = x @ w + b
            if kind == "naive":
                loss = tf.reduce_mean(-tf.reduce_sum(y * tf.math.log(tf.nn.softmax(z)), -1))
            elif kind == "safeops":
                loss = tf.reduce_mean(L.categorical_crossentropy(y, tf.nn.softmax(z)))
            else:
                loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, z))
        gw, gb = t.gradient(loss, [w, b])
        w.assign_sub(lr * gw)
        b.assign_sub(lr * gb)
        return loss

    for _ in range(steps):
        loss = step()
        if not np.isfinite(loss.numpy()):
            return None
    return float(np.mean(np.argmax((x @ w + b).numpy(), 1) == d.target))


def test_real_bug_softmax_classifier_digits():
    assert _train("naive") is None                 # the hand-written loss goes NaN
    acc = _train("safeops")
    ref = _train("tf")
    assert acc is not None and abs(acc - ref) <= 0.01 and ref > 0.9


def test_bad_input_names_shapes_and_arguments():
    with pytest.raises(ValueError, match=r"categorical_crossentropy.*\(2, 3\).*\(2, 4\)"):
        L.categorical_crossentropy(tf.zeros([2, 3]), tf.ones([2, 4]) / 4)
    with pytest.raises(ValueError, match=r"binary_crossentropy.*label_smoothing.*-0\.1"):
        L.binary_crossentropy(tf.zeros([2]), tf.ones([2]) / 2, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"categorical_crossentropy.*label_smoothing"):
        L.categorical_crossentropy(tf.zeros([2, 2]), tf.ones([2, 2]) / 2, label_smoothing=-0.5)
    with pytest.raises(TypeError, match=r"categorical_crossentropy.*y_pred"):
        L.categorical_crossentropy([[0, 1]], tf.constant([[0, 1]]))


def test_docstring_examples_run():
    """Every example in safeops.losses' docstrings runs and prints the value it shows.

    The expected outputs are rounded (`round`, `float`) so they do not depend on
    NumPy's repr; a changed loss value, gradient or Keras behaviour fails here.
    """
    globs = {"so": so, "tf": tf, "np": np, "keras": keras}
    tests = doctest.DocTestFinder(exclude_empty=True).find(L, "safeops.losses", globs=globs)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    with_examples = set()
    for test in tests:
        runner.run(test, out=out.write)
        if test.examples:
            with_examples.add(test.name)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, out.getvalue()
    # the module doc and every public name carry a runnable example
    expected = {"safeops.losses"} | {f"safeops.losses.{n}" for n in L.__all__}
    assert expected <= with_examples, sorted(expected - with_examples)
    assert attempted >= 30, attempted
