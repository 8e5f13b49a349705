"""Keras 3 layers with stable numerics (namespace ``so.layers``), one layer per module.

Each is a drop-in for the Keras layer it names (same constructor arguments, an
instance of it where that makes sense) and is registered for serialization
under the package name ``"safeops"``.
"""

from safeops.layers.compensated_dense import CompensatedDense
from safeops.layers.promote import Promote
from safeops.layers.smooth_switch import SmoothSwitch
from safeops.layers.stable_layer_normalization import StableLayerNormalization
from safeops.layers.stable_softmax import StableSoftmax, stable_softmax

__all__ = [
    "CompensatedDense",
    "Promote",
    "SmoothSwitch",
    "StableLayerNormalization",
    "StableSoftmax",
    "stable_softmax",
]
