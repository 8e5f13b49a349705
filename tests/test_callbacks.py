"""so.callbacks: NumericsMonitor localises planted NaNs; SmoothedLoss is an exact EMA of the batch loss."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import callbacks


class _Poison(keras.layers.Layer):
    """Identity until armed; then NaN in the forward output or only in the backward pass."""

    def __init__(self, where="forward", **kwargs):
        super().__init__(**kwargs)
        self.where = where
        self.armed = self.add_weight(shape=(), initializer="zeros", trainable=False, name="armed")

    def call(self, x):
        if self.where == "forward":
            return x + tf.cast(tf.stop_gradient(tf.where(self.armed > 0, np.nan, 0.0)), x.dtype)
        armed = self.armed

        @tf.custom_gradient
        def ident(x):
            def grad(dy):
                return tf.where(armed > 0, dy * tf.cast(np.nan, dy.dtype), dy)
            return tf.identity(x), grad

        return ident(x)


class _Arm(keras.callbacks.Callback):
    """Arms the poison layer at global step `at`; counts the steps that ran."""

    def __init__(self, layer, at):
        super().__init__()
        self.layer, self.at, self.steps = layer, at, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.steps == self.at:
            self.layer.armed.assign(1.0)
        self.steps += 1


def _six_layer_model(where, position, jit=False):
    poison = _Poison(where, name="poison")
    layers = [poison if i == position else
              keras.layers.Dense(8, activation="tanh", name=f"dense_{i}") for i in range(6)]
    model = keras.Sequential([keras.Input((4,))] + layers)
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=jit)
    return model, poison


def _data():
    rng = np.random.default_rng(0)
    return rng.random((64, 4)).astype("float32"), rng.random((64, 8)).astype("float32")


@pytest.mark.parametrize("check,jit", [("loss", False), ("all", False), ("loss", True)])
def test_forward_nan_in_layer_4(check, jit):
    x, y = _data()
    model, poison = _six_layer_model("forward", 3, jit)  # layer 4 of 6
    monitor, arm = callbacks.NumericsMonitor(check=check), _Arm(poison, 5)
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[monitor, arm], verbose=0)
    rep = monitor.report
    assert rep["step"] == 5 and rep["epoch"] == 0 and rep["batch"] == 5
    assert (rep["layer"], rep["layer_class"], rep["direction"]) == ("poison", "_Poison", "forward")
    assert rep["nan"] == 8 * 8 and rep["inf"] == 0  # the whole 8x8 batch output
    assert "loss" in rep["failed_checks"]
    assert arm.steps == 6  # fit stopped at the failing step
    assert "nonfinite_weights" not in rep  # the failing update was skipped
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_backward_only_nan_in_layer_2():
    x, y = _data()
    model, poison = _six_layer_model("backward", 1)  # layer 2 of 6
    monitor, arm = callbacks.NumericsMonitor(check="gradients"), _Arm(poison, 3)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor, arm], verbose=0)
    rep = monitor.report
    assert rep["step"] == 3 and rep["failed_checks"] == ["gradients"]
    assert (rep["layer"], rep["direction"], rep["where"]) == ("poison", "backward",
                                                              "gradient of inputs")
    assert rep["nan"] == 8 * 8
    assert arm.steps == 4


def test_forward_nan_under_mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = _data()
        model, poison = _six_layer_model("forward", 3)  # LossScaleOptimizer inside
        monitor, arm = callbacks.NumericsMonitor(check="gradients"), _Arm(poison, 4)
        model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor, arm], verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rep = monitor.report
    assert (rep["step"], rep["layer"], rep["direction"]) == (4, "poison", "forward")
    assert arm.steps == 5


@pytest.mark.parametrize("where,position,check", [("forward", 3, "loss"),
                                                  ("backward", 1, "gradients")])
def test_two_replicas(two_cpu_strategy, where, position, check):
    x, y = _data()
    with two_cpu_strategy.scope():
        model, poison = _six_layer_model(where, position)
    monitor, arm = callbacks.NumericsMonitor(check=check), _Arm(poison, 2)
    smooth = callbacks.SmoothedLoss(0.5)
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[monitor, arm, smooth], verbose=0)
    rep = monitor.report
    assert (rep["step"], rep["layer"], rep["direction"]) == (2, "poison", where)
    assert arm.steps == 3 and len(smooth.values) == 3
    assert all(np.isfinite(w).all() for w in model.get_weights())  # failing update zeroed


def test_steps_per_execution_counts_true_steps(caplog):
    """steps_per_execution=4: one callback call runs 4 steps; steps are not counted per call.

    The NaN is armed before the second call, so it first appears at step 4
    (batch 4). Counting one step per callback call reported "step 1, batch 7".
    """
    x, y = _data()
    model, poison = _six_layer_model("forward", 3)
    model.compile(keras.optimizers.SGD(0.01), "mse", steps_per_execution=4)
    monitor, arm = callbacks.NumericsMonitor(), _Arm(poison, 1)  # _Arm counts calls
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[monitor, arm], verbose=0)
    rep = monitor.report
    assert rep["steps"] == (4, 7) and rep["batches"] == (4, 7) and rep["epoch"] == 0
    assert rep["step"] == 4 and rep["batch"] == 4
    assert (rep["layer"], rep["direction"]) == ("poison", "forward")
    assert arm.steps == 2  # fit stopped after the failing call
    assert any("at step 4 " in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("jit", [False, True])
def test_steps_per_execution_names_the_step_inside_a_call(jit):
    """A NaN input in batch 6 (calls of 4 run steps 4-7): the step counted inside the compiled
    function names step 6, not only the call's range; a first, healthy monitored fit shows the
    counter starts again at each fit."""
    x, y = _data()
    x = x.copy()
    x[6 * 8, 0] = np.nan  # batch 6 (batch_size 8, no shuffling)
    model, _ = _six_layer_model("forward", 3)
    model.compile(keras.optimizers.SGD(0.01), "mse", steps_per_execution=4, jit_compile=jit)
    monitor = callbacks.NumericsMonitor(mode="warn")
    x_ok = np.nan_to_num(x)
    model.fit(x_ok, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[callbacks.NumericsMonitor()])  # an earlier, healthy monitored fit
    with pytest.warns(RuntimeWarning, match="at step 6 "):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[monitor], verbose=0)
    rep = monitor.report
    assert (rep["step"], rep["batch"], rep["steps"], rep["batches"]) == (6, 6, (4, 7), (4, 7))
    assert (rep["direction"], rep["nan"]) == ("input", 1)  # the culprit is the input batch


def test_steps_per_execution_across_epochs_and_short_calls():
    """8 batches per epoch in calls of 3, 3, 2: global steps keep counting across epochs."""
    x, y = _data()
    model, poison = _six_layer_model("forward", 3)
    model.compile(keras.optimizers.SGD(0.01), "mse", steps_per_execution=3)
    monitor, arm = callbacks.NumericsMonitor(), _Arm(poison, 4)  # 5th call: epoch 1, batches 3-5
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[monitor, arm], verbose=0)
    rep = monitor.report
    assert (rep["epoch"], rep["batches"], rep["steps"]) == (1, (3, 5), (11, 13))
    assert rep["layer"] == "poison"
    # a call of one step is exact: the same model with steps_per_execution=1 names step 11
    model, poison = _six_layer_model("forward", 3)
    monitor, arm = callbacks.NumericsMonitor(), _Arm(poison, 11)
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[monitor, arm], verbose=0)
    rep = monitor.report
    assert (rep["step"], rep["epoch"], rep["batch"], rep["steps"]) == (11, 1, 3, (11, 11))


def test_second_fit_reuses_instrumented_step():
    x, y = _data()
    model, poison = _six_layer_model("forward", 3)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[callbacks.NumericsMonitor()])  # healthy fit, traces the step
    plain_fn = model.train_function
    monitor, arm = callbacks.NumericsMonitor(), _Arm(poison, 1)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor, arm], verbose=0)
    assert monitor.report["step"] == 1 and monitor.report["layer"] == "poison"
    assert model.train_function is plain_fn  # Keras's own function restored after fit


def test_terminate_on_nan_does_not_localise():
    """The baseline: Keras's TerminateOnNaN stops but has no report at all."""
    x, y = _data()
    model, poison = _six_layer_model("forward", 3)
    term = keras.callbacks.TerminateOnNaN()
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[term, _Arm(poison, 2)], verbose=0)
    assert not hasattr(term, "report")
    # and it lets the NaN update through: the weights are poisoned
    assert not all(np.isfinite(w).all() for w in model.get_weights())


def test_warn_mode_continues_and_logs(caplog):
    x, y = _data()
    model, poison = _six_layer_model("forward", 3)
    monitor, arm = callbacks.NumericsMonitor(mode="warn"), _Arm(poison, 2)
    with pytest.warns(RuntimeWarning, match="poison"):
        model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor, arm], verbose=0)
    assert arm.steps == 8 and monitor.report["step"] == 2
    assert any("poison" in r.getMessage() for r in caplog.records)


def test_nonfinite_input_data():
    x, y = _data()
    x[20, 1] = np.inf  # batch 2 with batch_size 8
    # tanh keeps the loss finite at step 2 but the gradients are not: check="gradients"
    model, _ = _six_layer_model("forward", 3)
    monitor = callbacks.NumericsMonitor(check="gradients")
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor], verbose=0, shuffle=False)
    assert monitor.report["step"] == 2 and monitor.report["direction"] == "input"
    assert monitor.report["inf"] == 1
    # check="loss" sees it one step later, through the poisoned weights, and says so
    model, _ = _six_layer_model("forward", 3)
    monitor = callbacks.NumericsMonitor(check="loss")
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor], verbose=0, shuffle=False)
    assert monitor.report["step"] == 3 and monitor.report["layer"] == "dense_0"
    assert monitor.report["nonfinite_weights"]


def test_healthy_run_untouched():
    x, y = _data()
    model, _ = _six_layer_model("forward", 3)
    w0 = [w.copy() for w in model.get_weights()]
    ref, _ = _six_layer_model("forward", 3)
    ref.set_weights(w0)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[callbacks.NumericsMonitor(check="all")],
              verbose=0, shuffle=False)
    ref.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)  # identical training, bit for bit
    assert "train_step" not in model.__dict__  # the step is restored after fit


def test_smoothed_loss_is_exact_ema_of_batch_losses():
    x, y = _data()
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(8)(inp))
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: batch losses are reproducible
    smooth = callbacks.SmoothedLoss(alpha=0.3)
    hist = model.fit(x, y, batch_size=16, epochs=1, callbacks=[smooth], verbose=0, shuffle=False)
    # reference: the raw losses recomputed in float64 with NumPy, EMA in float64
    w, b = [a.astype(np.float64) for a in model.get_weights()]
    raw = [np.mean((x[i:i + 16] @ w + b - y[i:i + 16]) ** 2) for i in range(0, 64, 16)]
    ema = raw[0]
    for i, r in enumerate(raw):
        ema = r if i == 0 else 0.3 * r + 0.7 * ema
        # float32 forward vs float64 reference: relative error <= ~1e-6 for these sizes
        assert math.isclose(smooth.values[i][0], r, rel_tol=1e-5)
        assert math.isclose(smooth.values[i][1], ema, rel_tol=1e-5)
    assert math.isclose(hist.history["loss_ema"][-1], ema, rel_tol=1e-5)
    assert "_safeops_batch_loss" not in hist.history


def test_bad_input_raises():
    for alpha in (0.0, 1.0, -0.5, 2, "x"):
        with pytest.raises(ValueError, match="SmoothedLoss.*'alpha'"):
            callbacks.SmoothedLoss(alpha)
    with pytest.raises(ValueError, match="NumericsMonitor.*'mode'"):
        callbacks.NumericsMonitor(mode="halt")
    with pytest.raises(ValueError, match="NumericsMonitor.*'check'"):
        callbacks.NumericsMonitor(check="weights")


def test_raise_error_raises_like_terminate_on_nan_and_restores_the_step():
    x, y = _data()
    # Keras's own: RuntimeError at the NaN batch.
    model, poison = _six_layer_model("forward", 3)
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[keras.callbacks.TerminateOnNaN(raise_error=True), _Arm(poison, 2)])
    model, poison = _six_layer_model("forward", 3)
    monitor, arm = callbacks.NumericsMonitor(raise_error=True), _Arm(poison, 2)
    with pytest.raises(RuntimeError, match="step 2.*'poison'"):
        model.fit(x, y, batch_size=8, epochs=1, callbacks=[monitor, arm], verbose=0)
    assert arm.steps == 3  # no batch ran after the failing one
    assert monitor.report["layer"] == "poison"
    assert "train_step" not in model.__dict__  # instrumentation removed before raising
    assert all(np.isfinite(w).all() for w in model.get_weights())  # the NaN update was skipped
    config = monitor.get_config()
    assert config["raise_error"] is True
    assert callbacks.NumericsMonitor(**config).raise_error is True
    with pytest.raises(ValueError, match="raise_error"):
        callbacks.NumericsMonitor(mode="warn", raise_error=True)
    with pytest.raises(ValueError, match="raise_error"):
        callbacks.NumericsMonitor(raise_error="yes")


def test_signature_keeps_mode_and_check_first():
    import inspect
    names = list(inspect.signature(callbacks.NumericsMonitor).parameters)
    assert names == ["mode", "check", "raise_error"]
    keras_names = list(inspect.signature(keras.callbacks.TerminateOnNaN).parameters)
    assert keras_names == ["raise_error"]
    assert callbacks.NumericsMonitor(raise_error=True).raise_error is True


@pytest.mark.parametrize("raise_error", [True, False])
def test_positional_raise_error_as_terminate_on_nan(raise_error):
    # TerminateOnNaN(True) -> NumericsMonitor(True): the same meaning, not mode=True
    keras_cb = keras.callbacks.TerminateOnNaN(raise_error)
    ours = callbacks.NumericsMonitor(raise_error)
    assert ours.raise_error is keras_cb.raise_error is raise_error
    assert ours.mode == "stop"
    with pytest.raises(ValueError, match="'mode' is a bool"):
        callbacks.NumericsMonitor(True, raise_error=True)

