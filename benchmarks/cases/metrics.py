"""Keras metrics: so.metrics.Sum and so.metrics.Mean against keras.metrics.Sum/Mean.

Timed: one `update_state` on a batch of values (graph mode). Accuracy: one
update with 1e6 then many updates with 0.01 (each below half an ulp of 1e6 in float32, so
Keras's float32 total never moves): the relative error of the result against the exact
value. The metrics have no speed target.
"""

import keras
import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, pick, register

_STATE = {}


def _make(kind):
    def make_inputs(rng, size):
        n = pick(size, full=1 << 22, quick=1 << 20, smoke=1 << 10)
        _STATE[kind] = (getattr(keras.metrics, kind)(), getattr(so.metrics, kind)())
        _STATE[f"{kind}_updates"] = pick(size, full=100_000, quick=100_000, smoke=1_000)
        return (rng.standard_normal(n).astype(np.float32),)
    return make_inputs


def _update(kind, which):
    def update(x):
        m = _STATE[kind][which]
        m.update_state(x)
        return m.result()
    return update


def _accuracy(kind):
    def accuracy(inputs, outputs):
        n = _STATE[f"{kind}_updates"]
        res = {"metric": f"relerr of 1e6 then {n} x 0.01 vs exact"}
        step = float(np.float32(0.01))
        exact_total = 1e6 + n * step
        exact = exact_total if kind == "Sum" else exact_total / (n + 1)
        for label, m in (("baseline", getattr(keras.metrics, kind)()),
                         ("safeops", getattr(so.metrics, kind)())):
            m.update_state(1e6)

            @tf.function
            def run(m=m):
                for _ in tf.range(n):
                    m.update_state(0.01)

            run()
            res[label] = abs(float(m.result()) - exact) / exact
        return res
    return accuracy


for _kind in ("Sum", "Mean"):
    register(Case(
        name=f"metrics/{_kind}/update_state", family="metrics", make_inputs=_make(_kind),
        baseline=_update(_kind, 0), candidate=_update(_kind, 1),
        baseline_name=f"keras.metrics.{_kind}.update_state",
        candidate_name=f"so.metrics.{_kind}.update_state",
        grad=False, modes=("graph",), accuracy=_accuracy(_kind),
        bar_source="none stated",
        extra={"size": "values per update_state"}))
