"""Eager per-call cost of the element-wise drop-ins and the clipping ops on 16 float32 values.

An eager training loop pays an op's Python and kernel-launch overhead on every call; on
small tensors that overhead is the whole cost. Target: each safeops call at most 3x the
TF op's eager call (forward; forward+backward is reported without a target). The inputs
are 16 float32 values in every size mode (the size the target is stated for); the value
is checked elsewhere (tests/parity), so there is no accuracy column.
"""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, register

_N = 16
_BAR = {"eager/fwd": 3.0}


def _one(rng, size):
    del size  # the overhead is stated for 16 values
    return (rng.uniform(0.5, 2.0, _N).astype(np.float32),)


def _two(rng, size):
    del size
    return (rng.uniform(-2.0, 2.0, _N).astype(np.float32),
            rng.uniform(0.5, 2.0, _N).astype(np.float32))


_CASES = (
    ("divide_no_nan", _two, so.divide_no_nan, tf.math.divide_no_nan, "tf.math.divide_no_nan"),
    ("sqrt", _one, so.sqrt, tf.math.sqrt, "tf.math.sqrt"),
    ("softplus", _one, so.softplus, tf.math.softplus, "tf.math.softplus"),
    ("log_sigmoid", _one, so.log_sigmoid, tf.math.log_sigmoid, "tf.math.log_sigmoid"),
    ("clip_by_norm", _one, lambda x: so.clip_by_norm(x, 1.0),
     lambda x: tf.clip_by_norm(x, 1.0), "tf.clip_by_norm"),
    ("clip_by_global_norm", _two, lambda x, y: so.clip_by_global_norm([x, y], 1.0),
     lambda x, y: tf.clip_by_global_norm([x, y], 1.0), "tf.clip_by_global_norm"),
)

for _name, _inputs, _ours, _theirs, _label in _CASES:
    register(Case(
        name=f"eager/{_name}", family="eager", make_inputs=_inputs,
        baseline=_theirs, candidate=_ours, baseline_name=_label,
        candidate_name=f"so.{_name}", grad=True, modes=("eager",),
        accuracy_na="per-call overhead on 16 values; values are checked by the parity tests",
        bar=_BAR, bar_source=f"eager call on {_N} float32 values <= 3x {_label}",
        fixed_inputs="", extra={"values": _N}))
