"""End-to-end: one Keras training step with safeops drop-ins vs the plain model.

Two models, each built twice from the same weights:
- plain Keras: LayerNormalization, Softmax, `keras.losses.CategoricalCrossentropy` on the
  probabilities, `keras.optimizers.Adam`;
- safeops: `so.layers.StableLayerNormalization`, `so.layers.StableSoftmax`,
  `so.losses.CategoricalCrossentropy` (recovers the logits behind the softmax), and
  `so.optimizers.Adam()` -- the drop-ins as a user swaps them in (the optimizer's default
  compensates half-precision weights only, so on these float32 weights it is Keras's step).
A second case per model times the same step with `so.optimizers.Adam(kahan_summation=True)`
(compensated float32 weights, an opt-in for long runs with tiny updates): its cost is shown,
without a bar.
A timed call is a whole step (forward, loss, gradients, optimizer update), so the bar
(at most 1.15x on CPU, the drop-ins case) is stored under "graph/fwd" and "xla/fwd". The learning rate is 0 so
both models keep identical weights while they are timed; the accuracy column is the relative
error of each step's loss against the same model evaluated in float64.
"""

import keras
import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, pick, register


def _mlp(stable, dtype="float32"):
    norm = so.layers.StableLayerNormalization if stable else keras.layers.LayerNormalization
    soft = so.layers.StableSoftmax if stable else keras.layers.Softmax
    inp = keras.Input((64,), dtype=dtype)
    h = keras.layers.Dense(256, activation="relu", dtype=dtype)(inp)
    h = norm(dtype=dtype)(h)
    h = keras.layers.Dense(256, activation="relu", dtype=dtype)(h)
    h = norm(dtype=dtype)(h)
    out = soft(dtype=dtype)(keras.layers.Dense(10, dtype=dtype)(h))
    return keras.Model(inp, out)


def _cnn(stable, dtype="float32"):
    soft = so.layers.StableSoftmax if stable else keras.layers.Softmax
    inp = keras.Input((28, 28, 1), dtype=dtype)
    h = keras.layers.Conv2D(16, 3, activation="relu", dtype=dtype)(inp)
    h = keras.layers.MaxPooling2D(dtype=dtype)(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", dtype=dtype)(h)
    h = keras.layers.Flatten(dtype=dtype)(h)
    out = soft(dtype=dtype)(keras.layers.Dense(10, dtype=dtype)(h))
    return keras.Model(inp, out)


def _step(model, loss_fn, opt):
    opt.build(model.trainable_variables)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def _register(label, build, shape, batch, kahan=False):
    keras.utils.set_random_seed(0)
    plain = build(False)
    stable = build(True)
    stable.set_weights(plain.get_weights())
    ref = build(False, "float64")
    ref.set_weights([w.astype(np.float64) for w in plain.get_weights()])
    baseline = _step(plain, keras.losses.CategoricalCrossentropy(),
                     keras.optimizers.Adam(learning_rate=0.0))
    candidate = _step(stable, so.losses.CategoricalCrossentropy(),
                      so.optimizers.Adam(learning_rate=0.0, kahan_summation=True if kahan
                                         else None))

    def make_inputs(rng, size):
        b = pick(size, full=batch, quick=batch, smoke=8)
        x = rng.standard_normal((b,) + shape).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, b)]
        return x, y

    def accuracy(inputs, outputs):
        x, y = inputs
        p = np.asarray(ref(x.astype(np.float64)), dtype=np.float64)  # float64 forward
        exact = float(np.mean(-np.sum(y * np.log(p), axis=-1)))
        return {"metric": "relerr of the step's loss vs the float64 model",
                **{k: abs(float(v) - exact) / abs(exact) for k, v in outputs.items()}}

    register(Case(
        name=f"end_to_end/train_step_{label}" + ("_kahan_float32" if kahan else ""),
        family="end_to_end",
        make_inputs=make_inputs,
        baseline=baseline,
        candidate=candidate,
        baseline_name="Keras (LayerNormalization, Softmax, CCE, Adam)",
        candidate_name=("safeops drop-ins (stable layers, so.losses CCE, so.optimizers.Adam"
                        + (", kahan_summation=True)" if kahan else ")")),
        grad=False,
        accuracy=accuracy,
        bar={} if kahan else {"graph/fwd": 1.15, "xla/fwd": 1.15},
        bar_source="" if kahan else "stated for a whole training step with safeops drop-ins, CPU",
        size_label=lambda inputs: f"b{len(inputs[0])}",
        extra={"model": label, "timed": "one full training step"},
    ))


for _kahan in (False, True):
    _register("mlp_64_256_256_10", _mlp, (64,), 128, _kahan)
    _register("cnn_28x28_c16_c32", _cnn, (28, 28, 1), 64, _kahan)
