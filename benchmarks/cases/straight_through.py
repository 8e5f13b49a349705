"""Straight-through estimators: round/floor/ceil/sign/clip_ste against the usual trick
``x + tf.stop_gradient(op(x) - x)``, forward+backward on 4M float32 elements (element-wise:
each case declares the bytes it moves).

clip_ste is timed against `tf.clip_by_value` itself: that op already has clip_ste's forward
and gradient (the upstream gradient where lo <= x <= hi, 0 outside), while the trick's
gradient is the identity everywhere, a different function that needs no read of x in the
backward.

Targets: graph <= 1.5x, jit_compile <= 1.1x the naive code. Accuracy: the forward
value must be exactly op(x); the stop-gradient trick rounds twice (``op(x) - x`` then ``x +
...``) and is wrong where |x| is large relative to op(x) (sign(3e7) comes out 0). Reported:
the number of elements that differ from the exact NumPy op.
"""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.cases.division import BAR_SOURCE, n_elements
from benchmarks.registry import Case, elementwise_traffic, register

_BARS = {"graph/fwd+bwd": 1.5, "xla/fwd+bwd": 1.1}


def _trick(op):
    return lambda x: x + tf.stop_gradient(op(x) - x)


_CLIP = lambda x: tf.clip_by_value(x, -1.0, 1.0)  # noqa: E731

_OPS = {
    # name: (tf op, exact NumPy op, safeops)
    "round_ste": (tf.round, np.round, so.round_ste),  # both round half to even
    "floor_ste": (tf.floor, np.floor, so.floor_ste),
    "ceil_ste": (tf.math.ceil, np.ceil, so.ceil_ste),
    "sign_ste": (tf.sign, np.sign, so.sign_ste),
    "clip_ste": (_CLIP, lambda x: np.clip(x, -1.0, 1.0),
                 lambda x: so.clip_ste(x, -1.0, 1.0)),
}


def _inputs(rng, size):
    n = n_elements(size)
    return ((rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 9, n)).astype(np.float32),)


def _accuracy(exact_op):
    def accuracy(inputs, outputs):
        exact = exact_op(np.asarray(inputs[0]))
        return {"metric": f"elements != exact op(x) (of {exact.size})",
                **{k: int(np.count_nonzero(np.asarray(outputs[k]) != exact))
                   for k in ("baseline", "safeops")}}
    return accuracy


# the baselines: the usual trick, and for clip_ste the TF op with the same gradient
_BASELINES = {"clip_ste": (_CLIP, "tf.clip_by_value(x, -1, 1) (the same gradient)")}

for _name, (_tf_op, _np_op, _ours) in _OPS.items():
    _base, _base_name = _BASELINES.get(_name, (_trick(_tf_op), "x + tf.stop_gradient(op(x) - x)"))
    register(Case(
        name=f"straight_through/{_name}", family="straight_through", make_inputs=_inputs,
        baseline=_base, candidate=_ours,
        baseline_name=_base_name, candidate_name=f"so.{_name}",
        accuracy=_accuracy(_np_op), bar=dict(_BARS), bar_source=BAR_SOURCE,
        bytes_moved=elementwise_traffic(), extra={"x": "N(0,1) * 10**U(-3, 9)"}))
