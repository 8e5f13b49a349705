"""Smooth switches: smooth_step, soft_abs, soft_clip, soft_maximum, soft_minimum against the
naive formula a user writes, forward+backward on 4M float32 elements (element-wise: each
case declares the bytes it moves).

Targets: graph <= 1.5x, jit_compile <= 1.1x the naive code. Accuracy: max ulp
against the same function evaluated in float64 with a cancellation- and overflow-free formula
(float64 error ~1e-16 relative, far below float32's half ulp 6e-8), and the count of
non-finite outputs (the naive formulas overflow where the inputs are large).
"""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.cases.division import BAR_SOURCE, n_elements
from benchmarks.registry import Case, elementwise_traffic, register
from safeops import testing

_BARS = {"graph/fwd+bwd": 1.5, "xla/fwd+bwd": 1.1}


def _wide(rng, n, lo, hi):
    """float32 N(0,1) scaled by 10**U(lo, hi): small and huge magnitudes, both signs."""
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(lo, hi, n)).astype(np.float32)


def _softplus64(z):
    return np.logaddexp(0.0, z)


def _ref_soft_clip(x, lo=-1.0, hi=1.0):
    low = lo + _softplus64(x - lo) - _softplus64(x - hi)
    high = hi - _softplus64(hi - x) + _softplus64(lo - x)
    return np.where(x > 0.5 * (lo + hi), high, low)  # each form free of cancellation on its side


def _ref_soft_abs(x, eps=1e-3):
    return np.abs(x) * (np.abs(x) / (np.hypot(x, eps) + eps))


def _ref_smooth_step(x):
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3 - 2 * t)


_CASES = {
    # name: (inputs(rng, n), naive, safeops, float64 reference, baseline label)
    "smooth_step": (lambda rng, n: (rng.uniform(-0.5, 1.5, n).astype(np.float32),),
                    lambda x: (lambda t: t * t * (3 - 2 * t))(tf.clip_by_value(x, 0.0, 1.0)),
                    lambda x: so.smooth_step(x, 0.0, 1.0),
                    _ref_smooth_step, "t = clip(x, 0, 1); t * t * (3 - 2 t)"),
    "soft_abs": (lambda rng, n: (_wide(rng, n, -8, 25),),
                 lambda x: tf.sqrt(x * x + 1e-6) - 1e-3,
                 lambda x: so.soft_abs(x, 1e-3),
                 _ref_soft_abs, "sqrt(x*x + eps*eps) - eps"),
    "soft_clip": (lambda rng, n: (_wide(rng, n, -2, 10),),
                  lambda x: -1.0 + tf.math.softplus(x + 1.0) - tf.math.softplus(x - 1.0),
                  lambda x: so.soft_clip(x, -1.0, 1.0, 1.0),
                  _ref_soft_clip, "lo + softplus(x - lo) - softplus(x - hi)"),
    "soft_maximum": (lambda rng, n: (_wide(rng, n, 0, 3), _wide(rng, n, 0, 3)),
                     lambda x, y: tf.math.log(tf.exp(x) + tf.exp(y)),
                     lambda x, y: so.soft_maximum(x, y, 1.0),
                     np.logaddexp, "log(exp(x) + exp(y))"),
    "soft_minimum": (lambda rng, n: (_wide(rng, n, 0, 3), _wide(rng, n, 0, 3)),
                     lambda x, y: -tf.math.log(tf.exp(-x) + tf.exp(-y)),
                     lambda x, y: so.soft_minimum(x, y, 1.0),
                     lambda x, y: -np.logaddexp(-x, -y), "-log(exp(-x) + exp(-y))"),
}


def _accuracy(ref):
    def accuracy(inputs, outputs):
        exact = ref(*[np.asarray(v, np.float64) for v in inputs])
        res = {"metric": "max ulp vs float64 reference (non-finite outputs counted apart)"}
        for label in ("baseline", "safeops"):
            out = np.asarray(outputs[label])
            fin = np.isfinite(out)
            res[label] = float(testing.ulp_distance(out[fin], exact[fin], "float32").max())
            res[f"{label}_nonfinite_out"] = int(np.count_nonzero(~fin))
        return res
    return accuracy


for _name, (_make, _naive, _ours, _ref, _label) in _CASES.items():
    register(Case(
        name=f"smooth/{_name}", family="smooth",
        make_inputs=lambda rng, size, m=_make: m(rng, n_elements(size)),
        baseline=_naive, candidate=_ours, baseline_name=_label, candidate_name=f"so.{_name}",
        accuracy=_accuracy(_ref), bar=dict(_BARS), bar_source=BAR_SOURCE,
        bytes_moved=elementwise_traffic()))
