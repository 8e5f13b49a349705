"""The numerics doctor: wall time of `so.doctor.audit` on a 6-layer MLP, and of
`so.doctor.profile` on a small CNN against one float32 training pass.

The audit's bar is absolute: an audit of a 6-layer MLP finishes in under 10 s on CPU. The
audit is Python-level (it traces and evaluates the model itself), so it is timed as called
("eager" mode) with no baseline; there is no accuracy column (it is a diagnostic).
"""

import keras
import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, pick, register

_STATE = {}


def _make_inputs(rng, size):
    width, batch = pick(size, full=(256, 256), quick=(256, 256), smoke=(16, 8))
    keras.utils.set_random_seed(0)
    _STATE["model"] = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width, activation="relu")
                                   for _ in range(5)] + [keras.layers.Dense(10)])
    return (rng.standard_normal((batch, width)).astype(np.float32),)


register(Case(
    name="doctor/audit/mlp6", family="doctor", make_inputs=_make_inputs,
    baseline=None,
    candidate=lambda x: so.doctor.audit(_STATE["model"], x, verbose=False),
    baseline_name="-", candidate_name="so.doctor.audit(model, x)",
    grad=False, modes=("eager",),
    accuracy_na="diagnostic: absolute time only",
    bar_s={"eager/fwd": 10.0},
    bar_source="audit of a 6-layer MLP in under 10 s on CPU",
    extra={"model": "6 x Dense(256) MLP, batch 256 (smoke: width 16)"}))


# --------------------------------------------------------------- precision profile

def _make_cnn_batch(rng, size):
    side, batch = pick(size, full=(32, 256), quick=(32, 256), smoke=(8, 16))
    keras.utils.set_random_seed(0)
    inp = keras.Input((side, side, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10)(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_pass(x, y):  # one float32 forward+backward pass of the same batch
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        return tape.gradient(value, model.trainable_variables)

    _STATE.update(cnn=model, cnn_loss=loss, cnn_pass=train_pass)
    x = rng.standard_normal((batch, side, side, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    return (x, y)


register(Case(
    name="doctor/profile/cnn", family="doctor", make_inputs=_make_cnn_batch,
    baseline=lambda x, y: _STATE["cnn_pass"](x, y),
    candidate=lambda x, y: so.doctor.profile(_STATE["cnn"], (x, y), policy="mixed_float16",
                                             loss=_STATE["cnn_loss"], verbose=False),
    baseline_name="float32 forward+backward (tf.function)",
    candidate_name="so.doctor.profile(model, (x, y), 'mixed_float16', loss)",
    grad=False, modes=("eager",),
    accuracy_na="diagnostic: time relative to one training pass",
    bar={"eager/fwd": 10.0},
    bar_source="profile of a small CNN on 256 samples within 10x one float32 forward+backward "
               "pass of the same batch",
    extra={"model": "Conv(16)-pool-Conv(32)-GAP-Dense(10), 32x32x3, batch 256 (smoke: 8x8, 16)"}))
