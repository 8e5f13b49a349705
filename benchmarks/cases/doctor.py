"""The numerics doctor (issue 10): wall time of `so.doctor.audit` on a 6-layer MLP.

Issue 10's bar is absolute: an audit of a 6-layer MLP finishes in under 10 s on CPU. The
audit is Python-level (it traces and evaluates the model itself), so it is timed as called
("eager" mode) with no baseline; there is no accuracy column (it is a diagnostic).
"""

import keras
import numpy as np

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
    bar_source="issue 10: audit of a 6-layer MLP in under 10 s on CPU",
    extra={"model": "6 x Dense(256) MLP, batch 256 (smoke: width 16)"}))
