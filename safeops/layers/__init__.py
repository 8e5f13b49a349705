"""Keras 3 layers with stable numerics (namespace ``so.layers``), one layer per module.

Each is a drop-in for the Keras layer it names (same constructor arguments,
same weights, an instance of it) and is registered for serialization under the
package name ``"safeops"``; `so.wrap_model` swaps them into an existing model.
"""

from safeops.layers.compensated_dense import CompensatedDense
from safeops.layers.promote import Promote
from safeops.layers.smooth_switch import SmoothSwitch
from safeops.layers.stable_batch_normalization import StableBatchNormalization
from safeops.layers.stable_global_average_pooling1d import StableGlobalAveragePooling1D
from safeops.layers.stable_group_normalization import StableGroupNormalization
from safeops.layers.stable_layer_normalization import StableLayerNormalization
from safeops.layers.stable_multi_head_attention import StableMultiHeadAttention
from safeops.layers.stable_rms_normalization import StableRMSNormalization
from safeops.layers.stable_softmax import StableSoftmax, stable_softmax
from safeops.layers.stable_unit_normalization import StableUnitNormalization
from safeops.layers.swapped_sublayers import SwappedSublayers

__all__ = [
    "CompensatedDense",
    "Promote",
    "SmoothSwitch",
    "StableBatchNormalization",
    "StableGlobalAveragePooling1D",
    "StableGroupNormalization",
    "StableLayerNormalization",
    "StableMultiHeadAttention",
    "StableRMSNormalization",
    "StableSoftmax",
    "StableUnitNormalization",
    "SwappedSublayers",
    "stable_softmax",
]
