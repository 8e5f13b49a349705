"""Measurements of the precision profiler: relative error, bits lost, precision, FLOPs.

Definitions in `safeops.doctor.precision` (module doc) and docs/doctor.md. `rel_errors`
and `bits_lost` state the formula in NumPy; `safeops.doctor._engine` evaluates the same
formula as in-graph reductions on the profiler's tensors (and is tested against these).
"""

import math

import keras
import numpy as np
import tensorflow as tf

__all__ = []

_PRECISION = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def precision_bits(dtype):
    return _PRECISION.get(tf.as_dtype(dtype).name, 24)


def rel_errors(y, r):
    """Element-wise relative error of `y` against `r` (module doc), over the finite reference values."""
    y = np.asarray(y, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    keep = np.isfinite(r)
    y, r = y[keep], r[keep]
    if r.size == 0:
        return np.zeros(0)
    scale = math.sqrt(float(np.mean(r * r)))
    denom = np.maximum(np.abs(r), scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(y - r) / denom
    rel = np.where(np.isfinite(y), rel, np.inf)
    rel = np.where((denom == 0) & (y == r), 0.0, rel)  # both exactly 0
    return np.where(np.isnan(rel), np.inf, rel)


def bits_lost(rel, p):
    """``clip(log2(rel * 2^p), 0, p)``; 0 where rel is 0."""
    rel = np.asarray(rel, np.float64)
    with np.errstate(divide="ignore"):
        bits = np.log2(rel) + p
    return np.clip(np.where(rel > 0, bits, 0.0), 0.0, p)


def layer_flops(layer, outputs):
    """Multiply-adds x 2 per sample of a layer call, estimated from its weights and output shape.

    A layer with matrix-like weights (Dense, Conv, EinsumDense, attention
    projections): ``2 * weight size * (output elements / output channels)``;
    any other layer (and Embedding, a gather): its output element count.
    """
    out = sum(int(np.prod(o.shape[1:])) for o in outputs if o.shape.rank)
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.layers.Embedding):
        return float(out)
    mats = sum(int(np.prod(w.shape)) for w in layer.trainable_weights if len(w.shape) >= 2)
    if not mats or not outputs or not outputs[0].shape.rank:
        return float(out)
    channels = int(outputs[0].shape[-1]) or 1
    return 2.0 * mats * max(out // channels, 1)


