"""safeops: numerically stable TensorFlow ops and Keras layers.

``import safeops as so`` and replace ``tf.reduce_sum`` with ``so.reduce_sum``,
``tf.norm`` with ``so.norm`` and so on: same signatures, same dtypes, fixed
numerics. Every public name is listed in ``__all__``; docs/migration.md lists
what each one replaces and how it differs.
"""

from safeops._version import __version__
from safeops import testing

# -- sums, means, variances, scans, products, segment sums (compensated or correctly
#    rounded; fused CPU kernels), and the reproducibility switch --
from safeops.eft import fast_two_sum, two_prod, two_sum
from safeops.summation import cumsum, reduce_mean, reduce_std, reduce_sum, reduce_variance
from safeops.dot import dot, matmul
from safeops.accumulator import KahanAccumulator
from safeops.segment import segment_mean, segment_sum, unsorted_segment_sum
from safeops import config, exact
from safeops import native
# -- divisions, wheres, smooth switches, straight-through estimators --
from safeops.division import divide_no_nan, relative_error, safe_divide, safe_reciprocal
from safeops.where import safe_where, smooth_where
from safeops.smooth import smooth_step, soft_abs, soft_clip, soft_maximum, soft_minimum
from safeops.ste import ceil_ste, clip_ste, floor_ste, round_ste, sign_ste
# -- special functions, log-sum-exp and softmax, norms, losses --
from safeops.special import hypot, log1m, safe_exp, safe_log, sqrt
from safeops.logexp import (log1mexp, log_cosh, log_sigmoid, logaddexp, logsubexp, softplus,
                            softplus_inverse)
from safeops.softmax import log_softmax, reduce_logsumexp, softmax
from safeops.norms import norm
from safeops import losses
# -- precision control: promotion, loss scaling, compensated optimizers --
from safeops.promote import promote
from safeops import mixed_precision, optimizers
# -- gradient clipping --
from safeops.clipping import clip_by_global_norm, clip_by_norm
# -- the numerics doctor --
from safeops import doctor
# -- quantization --
from safeops import quantization
# -- Keras layers, metrics, callbacks, model wrapping --
from safeops import layers, metrics, callbacks
from safeops.wrap import wrap_model

__all__ = [
    "__version__",
    "testing",
    # sums, means, variances, scans, products
    "two_sum", "fast_two_sum", "two_prod",
    "reduce_sum", "reduce_mean", "reduce_variance", "reduce_std", "cumsum",
    "dot", "matmul", "KahanAccumulator", "native",
    "segment_sum", "unsorted_segment_sum", "segment_mean", "config", "exact",
    # divisions, wheres, smooth switches, straight-through estimators
    "divide_no_nan", "relative_error", "safe_divide", "safe_reciprocal",
    "safe_where", "smooth_where",
    "smooth_step", "soft_abs", "soft_clip", "soft_maximum", "soft_minimum",
    "ceil_ste", "clip_ste", "floor_ste", "round_ste", "sign_ste",
    # special functions, log-sum-exp and softmax, norms, losses
    "hypot", "log1m", "safe_exp", "safe_log", "sqrt",
    "log1mexp", "log_cosh", "log_sigmoid", "logaddexp", "logsubexp", "softplus",
    "softplus_inverse", "log_softmax", "reduce_logsumexp", "softmax", "norm", "losses",
    # precision control
    "promote", "mixed_precision", "optimizers",
    # gradient clipping
    "clip_by_global_norm", "clip_by_norm",
    # the numerics doctor
    "doctor",
    # quantization
    "quantization",
    # Keras layers, metrics, callbacks, model wrapping
    "layers", "metrics", "callbacks", "wrap_model",
]
