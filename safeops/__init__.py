"""safeops: numerically stable TensorFlow ops and Keras layers.

``import safeops as so`` and replace ``tf.reduce_sum`` with ``so.reduce_sum``,
``tf.norm`` with ``so.norm`` and so on: same signatures, same dtypes, fixed
numerics. Every public name is listed in ``__all__``.
"""

from safeops._version import __version__
from safeops import testing

# -- summation (issue 3) --
# -- division, where, smooth switches, straight-through estimators (issue 4) --
# -- special functions, norms, losses (issue 5) --
# -- precision control (issue 6) --
# -- gradient clipping (issue 11) --

__all__ = [
    "__version__",
    "testing",
]
