"""Eager per-call cost of the reductions, scans, softmax, norm and products on 16 float32 values.

An eager training loop pays an op's Python and kernel-launch overhead on every call; on
small tensors that overhead is the whole cost. Target: each safeops call at most 3x the
TF op's eager call (forward; forward+backward is reported without a target). The inputs
are 16 float32 values in every size mode (the size the target is stated for); values are
checked by the parity tests (tests/parity), so there is no accuracy column.
"""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, register

_N = 16
_BAR = {"eager/fwd": 3.0}


def _vector(rng, size):
    del size  # the overhead is stated for 16 values
    return (rng.uniform(-2.0, 2.0, _N).astype(np.float32),)


def _rows(rng, size):
    del size
    return (rng.uniform(-2.0, 2.0, (4, _N // 4)).astype(np.float32),)


def _pair(rng, size):
    del size
    return (rng.uniform(-2.0, 2.0, (4, _N // 4)).astype(np.float32),
            rng.uniform(-2.0, 2.0, (4, _N // 4)).astype(np.float32))


_CASES = (
    ("reduce_sum", _vector, so.reduce_sum, tf.reduce_sum, "tf.reduce_sum"),
    ("reduce_mean", _vector, so.reduce_mean, tf.reduce_mean, "tf.reduce_mean"),
    ("reduce_variance", _vector, so.reduce_variance, tf.math.reduce_variance,
     "tf.math.reduce_variance"),
    ("reduce_std", _vector, so.reduce_std, tf.math.reduce_std, "tf.math.reduce_std"),
    ("cumsum", _vector, so.cumsum, tf.cumsum, "tf.cumsum"),
    ("reduce_logsumexp", _rows, lambda x: so.reduce_logsumexp(x, 1),
     lambda x: tf.reduce_logsumexp(x, 1), "tf.reduce_logsumexp"),
    ("softmax", _rows, so.softmax, tf.nn.softmax, "tf.nn.softmax"),
    ("log_softmax", _rows, so.log_softmax, tf.nn.log_softmax, "tf.nn.log_softmax"),
    ("norm", _vector, so.norm, tf.norm, "tf.norm"),
    ("matmul", _pair, lambda a, b: so.matmul(a, b, transpose_b=True),
     lambda a, b: tf.linalg.matmul(a, b, transpose_b=True), "tf.linalg.matmul"),
)

for _name, _inputs, _ours, _theirs, _label in _CASES:
    register(Case(
        name=f"eager/{_name}", family="eager", make_inputs=_inputs,
        baseline=_theirs, candidate=_ours, baseline_name=_label,
        candidate_name=f"so.{_name}", grad=True, modes=("eager",),
        accuracy_na="per-call overhead on 16 values; values are checked by the parity tests",
        bar=_BAR, bar_source=f"eager call on {_N} float32 values <= 3x {_label}",
        fixed_inputs="", extra={"values": _N}))
