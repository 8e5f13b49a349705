"""Eager per-call cost of the drop-ins on 16 float32 values: reductions, scans, softmax, norm,
products, the element-wise ops and the clipping ops.

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


def _positive(rng, size):
    del size
    return (rng.uniform(0.5, 2.0, _N).astype(np.float32),)


def _quotient(rng, size):
    del size
    return (rng.uniform(-2.0, 2.0, _N).astype(np.float32),
            rng.uniform(0.5, 2.0, _N).astype(np.float32))


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
    ("divide_no_nan", _quotient, so.divide_no_nan, tf.math.divide_no_nan,
     "tf.math.divide_no_nan"),
    ("sqrt", _positive, so.sqrt, tf.math.sqrt, "tf.math.sqrt"),
    ("softplus", _positive, so.softplus, tf.math.softplus, "tf.math.softplus"),
    ("log_sigmoid", _positive, so.log_sigmoid, tf.math.log_sigmoid, "tf.math.log_sigmoid"),
    ("clip_by_norm", _positive, lambda x: so.clip_by_norm(x, 1.0),
     lambda x: tf.clip_by_norm(x, 1.0), "tf.clip_by_norm"),
    ("clip_by_global_norm", _quotient, lambda x, y: so.clip_by_global_norm([x, y], 1.0),
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
