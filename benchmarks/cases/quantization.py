"""Quantization-aware training: cost of a QAT training step vs the float step.

Each case times one full training step (forward in training mode, loss, gradients
w.r.t. the weights, SGD update) of a float Keras 3 model (baseline) and of its
`so.quantization.quantize_model` copy (candidate) on the same batch. The step is
the timed "forward" here (``grad=False``): the bar keys "graph/fwd" and "xla/fwd"
therefore hold the target "QAT step <= 1.3x float step". The SGD learning rate is
0 so that both models keep the same weights and the accuracy column compares like
with like (the update ops still run: the cost does not depend on the rate).

Accuracy: max |logit error| of each model's forward pass against a float64 copy of
the float model (the QAT error is the int8 quantization error, by design).

tfmot anchor: in quick and full mode, when the `tfmot` extra is installed, the same
MLP is trained with tfmot's QAT on tf_keras in a subprocess (importing tfmot switches
its process to legacy Keras, so it cannot flip Keras for the rest of the run) and its
QAT/float step ratio is recorded in the case's extra. Quick mode uses batch 32 and 7
repeats (about 15-25 s, mostly the subprocess's TF and tfmot imports); smoke mode skips
it unless SAFEOPS_BENCH_TFMOT=1.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from benchmarks.registry import Case, pick, register

_STATE = {}

_TFMOT_SCRIPT = r"""
import json, os, statistics, time
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import numpy as np, tensorflow as tf, tf_keras as K
import tensorflow_model_optimization as tfmot
rng = np.random.default_rng(0)
x = tf.constant(rng.standard_normal((BATCH, 784)).astype('float32'))
y = tf.constant(rng.integers(0, 10, BATCH).astype('int32'))
m = K.Sequential([K.Input((784,)), K.layers.Dense(256, activation='relu'),
                  K.layers.Dense(256, activation='relu'), K.layers.Dense(10)])
q = tfmot.quantization.keras.quantize_model(m)
loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)
def step_fn(model):
    opt = K.optimizers.SGD(0.0)
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            l = loss(y, out)
        opt.apply_gradients(zip(tape.gradient(l, model.trainable_variables),
                                model.trainable_variables))
        return out
    return step
fs = [step_fn(m), step_fn(q)]
for _ in range(5):
    for f in fs: f(x, y)
t = [[], []]
for _ in range(REPEATS):
    for k, f in enumerate(fs):
        t0 = time.perf_counter(); f(x, y).numpy(); t[k].append(time.perf_counter() - t0)
print(json.dumps({'float_s': statistics.median(t[0]), 'qat_s': statistics.median(t[1]),
                  'ratio': statistics.median([b / a for a, b in zip(*t)])}))
"""


def _build(kind, dtype="float32"):
    if kind == "mlp":
        return keras.Sequential([keras.Input((784,)),
                                 keras.layers.Dense(256, activation="relu", dtype=dtype),
                                 keras.layers.Dense(256, activation="relu", dtype=dtype),
                                 keras.layers.Dense(10, dtype=dtype)])
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(32, 3, activation="relu", dtype=dtype)(inp)
    h = keras.layers.Conv2D(64, 3, activation="relu", dtype=dtype)(h)
    h = keras.layers.MaxPooling2D(dtype=dtype)(h)
    h = keras.layers.Flatten(dtype=dtype)(h)
    h = keras.layers.Dense(128, activation="relu", dtype=dtype)(h)
    return keras.Model(inp, keras.layers.Dense(10, dtype=dtype)(h))


def _train_step(model):
    opt = keras.optimizers.SGD(learning_rate=0.0)
    opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return logits

    return step


def _tfmot_anchor(batch, repeats):
    try:
        import importlib.util
        if importlib.util.find_spec("tensorflow_model_optimization") is None:
            return {"tfmot": "not installed"}
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        code = _TFMOT_SCRIPT.replace("BATCH", str(batch)).replace("REPEATS", str(repeats))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, env=env)
        if out.returncode != 0:
            return {"tfmot": f"failed: {out.stderr.strip().splitlines()[-1][:200]}"}
        res = json.loads(out.stdout.strip().splitlines()[-1])
        return {"tfmot_batch": str(batch),
                "tfmot_qat_over_float_step (tf_keras, subprocess, graph)": f"{res['ratio']:.3f}",
                "tfmot_float_step_s": f"{res['float_s']:.5f}",
                "tfmot_qat_step_s": f"{res['qat_s']:.5f}"}
    except Exception as err:  # the anchor is optional
        return {"tfmot": f"failed: {type(err).__name__}: {err}"}


def _setup(kind, case):
    def make_inputs(rng, size):
        import safeops as so
        keras.utils.set_random_seed(0)
        batch = pick(size, full=128, quick=128, smoke=8)
        model = _build(kind)
        qmodel = so.quantization.quantize_model(model)
        ref = _build(kind, "float64")
        ref.set_weights([w.astype(np.float64) for w in model.get_weights()])
        _STATE[kind] = dict(float_step=_train_step(model), qat_step=_train_step(qmodel),
                            ref=ref)
        shape = (batch, 784) if kind == "mlp" else (batch, 28, 28, 1)
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int32)
        # calibrate the activation ranges once (as after some QAT epochs)
        qmodel(x, training=True)
        case.extra["batch"] = batch
        if kind == "mlp":
            if size != "smoke" or os.environ.get("SAFEOPS_BENCH_TFMOT") == "1":
                case.extra.update(_tfmot_anchor(pick(size, full=128, quick=32, smoke=8),
                                                pick(size, full=21, quick=7, smoke=3)))
            else:
                case.extra["tfmot"] = "skipped in smoke mode (SAFEOPS_BENCH_TFMOT=1 runs it)"
        return x, y

    def accuracy(inputs, outputs):
        ref = np.asarray(_STATE[kind]["ref"](np.asarray(inputs[0], np.float64)), np.float64)
        return {"metric": "max |logit - float64 logit|",
                "baseline": float(np.max(np.abs(outputs["baseline"] - ref))),
                "safeops": float(np.max(np.abs(outputs["safeops"] - ref)))}

    case.make_inputs = make_inputs
    case.baseline = lambda x, y: _STATE[kind]["float_step"](x, y)
    case.candidate = lambda x, y: _STATE[kind]["qat_step"](x, y)
    case.accuracy = accuracy
    return case


for _kind, _label in (("mlp", "mlp_784_256_256_10"), ("cnn", "cnn_28x28_c32_c64_d128")):
    register(_setup(_kind, Case(
        name=f"quantization/qat_train_step/{_label}",
        family="quantization",
        make_inputs=None,
        baseline=None,
        candidate=None,
        baseline_name="float train step",
        candidate_name="so.quantization QAT train step",
        grad=False,
        bar={"graph/fwd": 1.3, "xla/fwd": 1.3},
        bar_source="stated for one full train step, CPU",
        size_label=lambda inputs: f"b{len(inputs[0])}",
        extra={"timed": "one full train step (fwd, loss, grads w.r.t. weights, SGD apply)"},
    )))
