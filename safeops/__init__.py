"""safeops: numerically stable TensorFlow ops and Keras layers.

``import safeops as so`` and replace ``tf.reduce_sum`` with ``so.reduce_sum``,
``tf.norm`` with ``so.norm`` and so on: same signatures, same dtypes, fixed
numerics. Every public name is listed in ``__all__``.
"""

from safeops._version import __version__
from safeops import testing

# -- summation (issue 3) --
from safeops.eft import fast_two_sum, two_prod, two_sum
from safeops.summation import cumsum, reduce_mean, reduce_std, reduce_sum, reduce_variance
from safeops.dot import dot, matmul
from safeops.accumulator import KahanAccumulator
from safeops import native
# -- division, where, smooth switches, straight-through estimators (issue 4) --
from safeops.division import divide_no_nan, relative_error, safe_divide, safe_reciprocal
from safeops.where import safe_where, smooth_where
from safeops.smooth import smooth_step, soft_abs, soft_clip, soft_maximum, soft_minimum
from safeops.ste import ceil_ste, clip_ste, floor_ste, round_ste, sign_ste
# -- special functions, norms, losses (issue 5) --
from safeops.special import hypot, log1m, safe_exp, safe_log, sqrt
from safeops.logexp import (log1mexp, log_cosh, log_sigmoid, logaddexp, logsubexp, softplus,
                            softplus_inverse)
from safeops.softmax import log_softmax, reduce_logsumexp, softmax
from safeops.norms import norm
from safeops import losses
# -- precision control (issue 6) --
from safeops.promote import promote
from safeops import mixed_precision, optimizers
# -- gradient clipping (issue 11) --
from safeops.clipping import clip_by_global_norm, clip_by_norm
# -- numerics doctor (issue 10) --
from safeops import doctor
# -- quantization (issue 7) --
from safeops import quantization

# -- Keras layers, metrics, callbacks, wrapping (issue 8) --
from safeops import layers, metrics, callbacks
from safeops.wrap import wrap_model

__all__ = [
    "__version__",
    "testing",
    # summation (issue 3)
    "two_sum", "fast_two_sum", "two_prod",
    "reduce_sum", "reduce_mean", "reduce_variance", "reduce_std", "cumsum",
    "dot", "matmul", "KahanAccumulator", "native",
    # division, where, smooth switches, straight-through estimators (issue 4)
    "divide_no_nan", "relative_error", "safe_divide", "safe_reciprocal",
    "safe_where", "smooth_where",
    "smooth_step", "soft_abs", "soft_clip", "soft_maximum", "soft_minimum",
    "ceil_ste", "clip_ste", "floor_ste", "round_ste", "sign_ste",
    # special functions, norms, losses (issue 5)
    "hypot", "log1m", "safe_exp", "safe_log", "sqrt",
    "log1mexp", "log_cosh", "log_sigmoid", "logaddexp", "logsubexp", "softplus",
    "softplus_inverse", "log_softmax", "reduce_logsumexp", "softmax", "norm", "losses",
    # precision control (issue 6)
    "promote", "mixed_precision", "optimizers",
    # quantization (issue 7)
    "quantization",
    # Keras layers, metrics, callbacks, model wrapping (issue 8)
    "layers", "metrics", "callbacks", "wrap_model",
    # numerics doctor (issue 10)
    "doctor",
    # gradient clipping (issue 11)
    "clip_by_global_norm", "clip_by_norm",
]
