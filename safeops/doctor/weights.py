"""`weights_report`: per-weight statistics, scale check and low-precision fitness of a Keras model."""

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from safeops._core.registry import new
from safeops.doctor._graph import to_numpy
from safeops.doctor._report import format_table

__all__ = ["WeightStats", "format_weights_report", "weights_report"]

_HE_ACTIVATIONS = ("relu", "relu6", "elu", "selu", "leaky_relu", "gelu", "silu", "swish", "mish")


@dataclasses.dataclass(frozen=True)
class WeightStats:
    """Statistics of one weight.

    Args:
      layer: the layer's name.
      weight: the weight's path/name.
      dtype: the weight's dtype.
      shape: the weight's shape.
      min: the smallest of its finite values.
      max: the largest of its finite values.
      std: the standard deviation of its finite values.
      n_nan: count of NaN.
      n_inf: count of inf.
      init_std: the Glorot (sqrt(2/(fan_in+fan_out))) or, for ReLU-family
        activations, He (sqrt(2/fan_in)) standard deviation its shape implies;
        None for non-kernel weights.
      scale_ratio: std / init_std (None without init_std).
      fp16_overflow: fraction of values that become inf in float16 (|w| >= 65520).
      fp16_flush: fraction of the non-zero values that round to 0 in float16.
      bf16_relerr: ||bf16(w) - w|| / ||w|| of a bfloat16 copy.
      int8_sqnr_db: SQNR in dB of symmetric per-output-channel (last axis) int8 quantization.
      flags: the problems found, in words (empty when none).
      severity: "high" (NaN/inf), "medium" (scale off by > 10x, float16 overflow) or "" (none).
    """

    layer: str
    weight: str
    dtype: str
    shape: Tuple[int, ...]
    min: float
    max: float
    std: float
    n_nan: int
    n_inf: int
    init_std: Optional[float]
    scale_ratio: Optional[float]
    fp16_overflow: float
    fp16_flush: float
    bf16_relerr: float
    int8_sqnr_db: float
    flags: Tuple[str, ...]
    severity: str


def _leaf_layers(model):
    for layer in getattr(model, "layers", []):
        if getattr(layer, "layers", None):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act) if act is not None else "linear")


def _init_std(layer, w, shape):
    if len(shape) < 2 or "kernel" not in w.split("/")[-1]:
        return None
    rf = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * rf, shape[-1] * rf
    if _activation_name(layer) in _HE_ACTIVATIONS:
        return math.sqrt(2.0 / fan_in)
    return math.sqrt(2.0 / (fan_in + fan_out))


def _int8_sqnr(x):
    if x.size == 0 or not np.any(x):
        return math.inf
    flat = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(-1, 1)
    scale = np.max(np.abs(flat), axis=0) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    q = np.clip(np.rint(flat / scale), -127, 127) * scale
    noise = float(np.sum((flat - q) ** 2))
    return math.inf if noise == 0 else 10.0 * math.log10(float(np.sum(flat ** 2)) / noise)


def _stats(layer, var):
    name = str(getattr(var, "path", None) or var.name)
    raw = to_numpy(var)
    dtype = tf.as_dtype(var.dtype).name
    x = raw.astype(np.float64)
    finite = x[np.isfinite(x)]
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    lo = float(finite.min()) if finite.size else math.nan
    hi = float(finite.max()) if finite.size else math.nan
    std = float(finite.std()) if finite.size else math.nan
    shape = tuple(int(s) for s in raw.shape)
    init = _init_std(layer, name, shape)
    ratio = std / init if init else None
    with np.errstate(over="ignore"):
        x16 = finite.astype(np.float16)
    overflow = float(np.mean(np.isinf(x16))) if finite.size else 0.0
    nonzero = finite != 0
    flush = float(np.mean(x16[nonzero] == 0)) if nonzero.any() else 0.0
    b16 = tf.cast(tf.constant(finite), tf.bfloat16)
    b16 = tf.cast(b16, tf.float64).numpy()
    norm = float(np.linalg.norm(finite))
    relerr = float(np.linalg.norm(b16 - finite) / norm) if norm > 0 and np.all(np.isfinite(b16)) else (
        0.0 if norm == 0 else math.inf)
    sqnr = _int8_sqnr(np.where(np.isfinite(x), x, 0.0)) if x.size else math.inf
    flags, severity = [], ""
    if n_nan or n_inf:
        flags.append(f"{n_nan} NaN and {n_inf} inf values")
        severity = "high"
    if ratio is not None and std > 0 and (ratio < 0.1 or ratio > 10):
        flags.append(f"std {std:.3g} is {ratio:.3g}x the {'He' if _activation_name(layer) in _HE_ACTIVATIONS else 'Glorot'} "
                     f"scale {init:.3g}: signals {'vanish' if ratio < 1 else 'explode'} through depth")
        severity = severity or "medium"
    elif ratio is not None and std == 0:
        flags.append("all kernel values are equal (no symmetry breaking)")
        severity = severity or "medium"
    if overflow > 0:
        flags.append(f"{overflow:.2%} of values overflow in float16")
        severity = severity or "medium"
    if flush > 0.01:
        flags.append(f"{flush:.2%} of non-zero values flush to 0 in float16")
    if sqnr < 25.0:
        flags.append(f"int8 per-channel SQNR only {sqnr:.1f} dB (outliers)")
    return WeightStats(layer.name, name, dtype, shape, lo, hi, std, n_nan, n_inf, init, ratio,
                       overflow, flush, relerr, sqnr, tuple(flags), severity)


def format_weights_report(stats):
    """The report as a text table (what `weights_report` prints).

    Args:
      stats: a list of `WeightStats` (as `weights_report` returns).

    Returns:
      A string.
    """
    rows = [(s.weight, s.dtype, "x".join(map(str, s.shape)) or "()", s.min, s.max, s.std,
             s.n_nan + s.n_inf, s.scale_ratio, s.fp16_overflow, s.fp16_flush, s.bf16_relerr,
             s.int8_sqnr_db) for s in stats]
    table = format_table(("weight", "dtype", "shape", "min", "max", "std", "nan+inf",
                          "std/init", "f16 ovf", "f16 ftz", "bf16 relerr", "int8 SQNR dB"), rows)
    flagged = [f"  [{s.severity or 'info'}] {s.weight}: " + "; ".join(s.flags) for s in stats if s.flags]
    return "safeops.doctor.weights_report\n" + table + ("\n" + "\n".join(flagged) if flagged else "")


@new("per-weight scale, NaN/inf and float16/bfloat16/int8 fitness of a Keras model")
def weights_report(model, verbose=True):
    """Per layer and weight: dtype, range, std vs. the Glorot/He scale, NaN/inf, float16/bfloat16/int8 fitness.

    Replaces inspecting `model.get_weights()` by hand. Method: each weight of
    each (leaf) layer is read once (the model is never modified) and measured in
    float64: min/max/std of the finite values; NaN/inf counts; for kernels
    (ndim >= 2, name "kernel") the initializer scale its shape implies —
    He sqrt(2/fan_in) for ReLU-family activations, Glorot sqrt(2/(fan_in+fan_out))
    otherwise, with fan = channels x receptive field — and std/scale (flagged
    outside [0.1, 10], i.e. a layer initialised 10x+ too small or large); the
    fraction of values that overflow (|w| >= 65520) or flush to 0 (|w| <= 2**-25)
    in float16; the norm-wise relative error of a bfloat16 copy (<= 2**-8 for
    finite in-range values); the SQNR of symmetric per-output-channel int8
    quantization, 10 log10(sum w^2 / sum (w - q(w))^2) (flagged below 25 dB).

    Error bound: statistics are float64 sums (relative error ~ n * 2**-53).
    Gradient: not applicable. dtypes: any floating weight; integer weights are
    measured as floats.

    Args:
      model: a `keras.Model` (or a layer with `.layers`/`.weights`).
      verbose: print the table.

    Returns:
      A list of `WeightStats`, in layer order.

    Raises:
      TypeError: `model` has no weights to report (not a Keras model or layer).

    Example:
      >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      >>> so.doctor.weights_report(m, verbose=False)[0].scale_ratio  # ~1 at init
    """
    op = "safeops.doctor.weights_report"
    if not hasattr(model, "weights"):
        raise TypeError(f"{op}: argument 'model' must be a Keras model or layer; got {type(model).__name__}")
    layers = list(_leaf_layers(model)) if getattr(model, "layers", None) else [model]
    stats = [_stats(layer, w) for layer in layers for w in layer.weights]
    if verbose:
        print(format_weights_report(stats))
    return stats
