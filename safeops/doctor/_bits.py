"""Measurements of the precision profiler: relative error, bits lost, dynamic range, FLOPs.

Definitions in `safeops.doctor.precision` (module doc) and docs/doctor.md. `rel_errors`
and `bits_lost` state the formula in NumPy; `bits_stats` and `range_stats` evaluate the
same formula as traced TF ops on the profiler's tensors.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from safeops._core import dtypes as _dtypes

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


def f64(t):
    """A flat float64 tensor (the measurements run as TF ops: multithreaded, no host copies)."""
    return tf.cast(tf.reshape(tf.convert_to_tensor(t), [-1]), tf.float64)


@tf.function(reduce_retracing=True)
def _pair_stats(y, r, p):
    """(sum of bits, max bits, sum of relative errors, count) of one flat float64 pair."""
    keep = tf.math.is_finite(r)
    r0 = tf.where(keep, r, tf.zeros_like(r))
    count = tf.reduce_sum(tf.cast(keep, tf.float64))
    scale = tf.sqrt(tf.math.divide_no_nan(tf.reduce_sum(r0 * r0), count))
    denom = tf.maximum(tf.abs(r0), scale)
    diff = tf.abs(y - r0)
    inf = tf.constant(math.inf, tf.float64)
    rel = tf.where(denom > 0, diff / tf.where(denom > 0, denom, tf.ones_like(denom)),
                   tf.where(diff == 0, tf.zeros_like(diff), inf))
    rel = tf.where(tf.math.is_finite(y), rel, inf)
    bits = tf.clip_by_value(tf.math.log(rel) / math.log(2.0) + p, 0.0, p)
    bits = tf.where(keep, bits, tf.zeros_like(bits))
    rel = tf.where(keep, rel, tf.zeros_like(rel))
    return tf.reduce_sum(bits), tf.reduce_max(bits), tf.reduce_sum(rel), count


def bits_stats(ys, rs, p):
    """(mean bits, max bits, mean relative error) over pairs of flat float64 tensors.

    The formula of `rel_errors` and `bits_lost`, as TF ops (one traced function for
    all sizes) over the finite reference elements.
    """
    total = count = worst = rel_sum = 0.0
    p = tf.constant(float(p), tf.float64)
    for y, r in zip(ys, rs):
        if int(tf.size(r)) == 0:
            continue
        b, m, e, n = (float(v) for v in _pair_stats(y, r, p))
        if n == 0:
            continue
        total, worst, rel_sum, count = total + b, max(worst, m), rel_sum + e, count + n
    if count == 0:
        return 0.0, 0.0, 0.0
    return total / count, worst, rel_sum / count


@tf.function(reduce_retracing=True)
def _range_stats(r, y, tiny):
    fin = tf.math.is_finite(r)
    a = tf.where(fin, tf.abs(r), tf.zeros_like(r))
    nz = tf.cast(a > 0, tf.float64)
    under = tf.reduce_sum(nz * tf.cast(a < tiny, tf.float64))
    bad = tf.reduce_sum(tf.cast(tf.logical_and(fin, tf.logical_not(tf.math.is_finite(y))), tf.float64))
    return tf.reduce_max(a), tf.reduce_sum(nz), under, tf.reduce_sum(tf.cast(fin, tf.float64)), bad


def range_stats(rs, ys, dtype):
    """(max |r|, max |r| / dtype max, underflow fraction, non-finite fraction of y)."""
    lim = _dtypes.limits(dtype)
    if not rs:
        return 0.0, 0.0, 0.0, 0.0
    r = tf.concat(rs, 0)
    y = tf.concat(ys, 0) if ys else r
    if int(tf.size(r)) == 0:
        return 0.0, 0.0, 0.0, 0.0
    if int(tf.size(y)) != int(tf.size(r)):
        y = r
    max_abs, nonzero, under, finite, bad = (float(v) for v in _range_stats(
        r, y, tf.constant(lim.tiny, tf.float64)))
    return (max_abs, max_abs / lim.max, under / nonzero if nonzero else 0.0,
            bad / finite if finite else 0.0)


def norm_error(ys, rs):
    """``||y - r||_2 / ||r||_2`` over all arrays (inf where y is not finite; 0 when both are 0)."""
    num = den = 0.0
    for y, r in zip(ys, rs):
        y = np.asarray(y, np.float64)
        r = np.asarray(r, np.float64)
        if not np.all(np.isfinite(y)):
            return math.inf
        num += float(np.sum((y - r) ** 2))
        den += float(np.sum(r * r))
    if num == 0.0:
        return 0.0
    return math.sqrt(num / den) if den > 0 else math.inf


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


