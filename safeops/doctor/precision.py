"""`profile`: how many bits each layer of a Keras model loses in a given precision.

Definitions (docs/doctor.md, "Precision profile"):

* **relative error** of a value y against its float64 reference r, element by
  element: ``|y - r| / max(|r|, rms(r))`` where rms(r) is the root mean square
  of the reference tensor, so elements near 0 (a ReLU's kink, a sign change)
  are measured against the tensor's typical magnitude instead of themselves.
  A non-finite y where r is finite has relative error inf.
* **bits lost** = ``clip(log2(relative error / u), 0, p)`` with ``u = 2^-p``
  the unit roundoff of the layer's compute dtype (p = 11 float16, 8 bfloat16,
  24 float32, 53 float64): a correctly rounded result loses 0 bits, a result
  with no correct bit loses all p. A layer reports the mean and the max over
  its elements.
* **accumulated** bits: the layer's output in the profiled run against the
  float64 run of the same weights on the same inputs (errors of earlier layers
  included); **local** bits: the layer run in the profiled precision on its
  float64 reference inputs (its own error: the rounding of its inputs to its
  compute dtype and its arithmetic). Layers are ranked by local bits.
* **input** bits: the layer run in float64 on the same rounded inputs as the
  local run: what the rounding of its inputs alone costs (an ill-conditioned
  input; the fix is then to rescale it, not to change the layer).
* **dynamic range**: the largest reference magnitude over the dtype's largest
  finite value (>= 1: overflow) and the fraction of non-zero reference values
  below the dtype's smallest normal number (subnormal or flushed to zero).
"""

import dataclasses
import math
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from safeops._core import dtypes as _dtypes
from safeops._core.registry import new
from safeops.doctor import _keras_graph as kg
from safeops.doctor._report import format_table

__all__ = ["LayerPrecision", "PrecisionProfile", "profile"]

_OP = "safeops.doctor.profile"
_PRECISION = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
# Keras layers with a stable drop-in in so.layers (named only where so.layers has it).
_STABLE = {
    "LayerNormalization": "StableLayerNormalization",
    "Softmax": "StableSoftmax",
    "RMSNormalization": "StableRMSNormalization",
    "GroupNormalization": "StableGroupNormalization",
    "BatchNormalization": "StableBatchNormalization",
    "UnitNormalization": "StableUnitNormalization",
    "MultiHeadAttention": "StableMultiHeadAttention",
}


@dataclasses.dataclass(frozen=True)
class LayerPrecision:
    """The figures of one layer call in a `PrecisionProfile` (see the module doc for definitions).

    Gradient fields are None when `profile` ran without a loss, or where the
    loss does not depend on the layer; ``weight_grad_*`` also where the layer
    has no trainable weights.

    Args:
      name: the layer's name (``name#k`` for its k-th call of a shared layer).
      class_name: the layer's (or operation's) class.
      dtype: its compute dtype in the profiled run.
      quantization: the Keras quantization mode applied, or None.
      flops: estimated FLOPs per sample (`layer_flops`).
      bits_mean, bits_max: accumulated bits lost by its outputs.
      local_bits_mean, local_bits_max: its own bits lost (on float64 inputs
        rounded to the dtype it receives).
      input_bits_mean: bits lost by the float64 layer on those rounded inputs.
      rel_error, local_rel_error: mean relative errors (accumulated, local).
      max_abs: largest reference magnitude of its outputs.
      range_ratio: ``max_abs`` over the dtype's largest finite value.
      underflow: fraction of non-zero reference outputs below the dtype's
        smallest normal number.
      nonfinite: fraction of outputs that are inf/NaN where the reference is finite.
      grad_bits_mean, grad_bits_max: bits lost by the loss gradient with
        respect to its outputs.
      weight_grad_bits_mean, weight_grad_bits_max: the same for its weights.
      grad_range_ratio, grad_underflow: dynamic range of the loss-scaled
        output gradient.
      emulated: a float16 convolution computed in float32 kernels on 16-bit
        rounded inputs and weights (`profile`'s `emulate`).
    """

    name: str
    class_name: str
    dtype: str
    quantization: Optional[str]
    flops: float
    bits_mean: float
    bits_max: float
    local_bits_mean: float
    local_bits_max: float
    input_bits_mean: float
    rel_error: float
    local_rel_error: float
    max_abs: float
    range_ratio: float
    underflow: float
    nonfinite: float
    grad_bits_mean: Optional[float] = None
    grad_bits_max: Optional[float] = None
    weight_grad_bits_mean: Optional[float] = None
    weight_grad_bits_max: Optional[float] = None
    grad_range_ratio: Optional[float] = None
    grad_underflow: Optional[float] = None
    emulated: bool = False


@dataclasses.dataclass(frozen=True)
class PrecisionProfile:
    """What `profile` returns: per-layer figures, the model-level errors and the worst layers.

    Args:
      policy: the profiled policy, as given (None: each layer's own).
      layers: `LayerPrecision` per layer call, in execution order.
      output_error: norm-wise relative error of the model's outputs,
        ``||y - r||_2 / ||r||_2`` (inf if y is not finite).
      loss: (profiled, float64) mean loss, or None without a loss.
      loss_error: ``|loss - loss64| / |loss64|``, or None.
      loss_scale: the loss scale the gradients were computed with (1 unless
        float16 gradients needed scaling; halved from 2^15 until finite).
      threshold: bits; `first_over` is the first layer (execution order) whose
        accumulated mean bits lost exceed it, or None.
      worst: ((layer name, local mean bits, fix), ...), worst first.
    """

    policy: object
    layers: Tuple[LayerPrecision, ...]
    output_error: float
    loss: Optional[Tuple[float, float]]
    loss_error: Optional[float]
    loss_scale: float
    threshold: float
    first_over: Optional[str]
    worst: Tuple[Tuple[str, float, str], ...]

    def layer(self, name):
        """The `LayerPrecision` of the layer (first call) named `name`."""
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(f"{_OP}: no layer named {name!r} in the profile")

    def as_dict(self):
        """The same figures as plain Python types (JSON-serialisable except inf/NaN floats)."""
        return {
            "policy": _policy_label(self.policy),
            "output_error": self.output_error,
            "loss": None if self.loss is None else {"profiled": self.loss[0], "float64": self.loss[1]},
            "loss_error": self.loss_error,
            "loss_scale": self.loss_scale,
            "threshold": self.threshold,
            "first_over": self.first_over,
            "worst": [{"layer": n, "local_bits_mean": b, "fix": f} for n, b, f in self.worst],
            "layers": [dataclasses.asdict(e) for e in self.layers],
        }

    def table(self):
        """The printed table (what `profile` prints)."""
        rows = []
        for e in self.layers:
            dtype = e.dtype + (f"+{e.quantization}" if e.quantization else "") + ("*" if e.emulated else "")
            rows.append((e.name, e.class_name, dtype, _f(e.bits_mean), _f(e.bits_max),
                         _f(e.local_bits_mean), _f(e.local_bits_max), _f(e.input_bits_mean),
                         _f(e.grad_bits_mean),
                         _f(e.weight_grad_bits_mean), f"{e.range_ratio:.2g}", f"{e.underflow:.2g}",
                         f"{e.grad_underflow:.2g}" if e.grad_underflow is not None else "-"))
        head = (f"safeops.doctor.profile: policy {_policy_label(self.policy)}; bits lost vs float64 "
                f"(of the layer's dtype: float16 11, bfloat16 8, float32 24)")
        table = format_table(("layer", "class", "dtype", "bits mean", "bits max", "local mean",
                              "local max", "input", "grad bits", "w-grad bits", "max/dtype max",
                              "underflow", "grad underflow"), rows)
        lines = [head, table]
        if any(e.emulated for e in self.layers):
            lines.append("* float16 convolution emulated: float16 inputs and weights, float32 "
                         "accumulation, float16 output (as on a GPU)")
        lines.append(f"model output: relative error {self.output_error:.3g}")
        if self.loss is not None:
            lines.append(f"loss: {self.loss[0]:.7g} vs float64 {self.loss[1]:.7g} (relative error "
                         f"{self.loss_error:.3g}); loss scale {self.loss_scale:g}")
        lines.append(f"first layer losing more than {self.threshold:g} bits (mean): "
                     f"{self.first_over or 'none'}")
        for name, bits, fix in self.worst:
            lines.append(f"  worst: {name} ({bits:.1f} bits lost locally): {fix}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def plot(self, path):
        """Save a PNG bar chart of bits lost per layer (local and accumulated) to `path`."""
        try:
            import matplotlib
        except ImportError:
            raise ImportError(f"{_OP}: the plot needs matplotlib (pip install matplotlib)") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [e.name for e in self.layers]
        idx = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4))
        ax.bar(idx - 0.2, [e.local_bits_mean for e in self.layers], 0.4, label="local (mean)")
        ax.bar(idx + 0.2, [e.bits_mean for e in self.layers], 0.4, label="accumulated (mean)")
        ax.plot(idx, [e.local_bits_max for e in self.layers], "k.", label="local (max)")
        ax.axhline(self.threshold, color="r", lw=0.8, ls="--", label=f"threshold {self.threshold:g}")
        ax.set_xticks(idx)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("bits lost vs float64")
        ax.set_title(f"safeops.doctor.profile: {_policy_label(self.policy)}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _f(value):
    return "-" if value is None else f"{value:.1f}"


def _policy_label(policy):
    if policy is None:
        return "each layer's own"
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return f"DTypePolicyMap({len(policy)} entries, default {policy.default_policy.name})"
    if isinstance(policy, keras.dtype_policies.DTypePolicy):
        return policy.name
    if isinstance(policy, dict):
        return f"per-layer map ({len(policy)} entries)"
    return str(policy)


# ---------------------------------------------------------------- measurements

def _precision_bits(dtype):
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


def _f64(t):
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


def _bits_stats(ys, rs, p):
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


def _range(rs, ys, dtype):
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


# ---------------------------------------------------------------- running

class _Runner:
    """A model's graph with a float64 copy and a profiled copy of every layer."""

    def __init__(self, model, assign, emulate=None):
        """`assign(layer) -> (float policy, quantization mode or None)` for the profiled copies;
        `emulate`: emulate float16 convolutions (None: on a machine without a GPU)."""
        self.model = model
        self.emulate = (not tf.config.list_logical_devices("GPU")) if emulate is None else bool(emulate)
        self._cache = {}
        self.graph = kg.functional_graph(model, _OP)
        self.nodes = kg.nodes(self.graph)
        self.labels, self.first_call = [], {}
        for node in self.nodes:
            k = self.first_call.setdefault(id(node.operation), 0)
            self.labels.append(kg.node_label(node, k))
            self.first_call[id(node.operation)] = k + 1
        made_by = {id(x): i for i, node in enumerate(self.nodes) for x in node.outputs}
        self.inputs_of = [[made_by[id(x)] for x in node.input_tensors if id(x) in made_by]
                          for node in self.nodes]
        self.ref = self._copies(lambda layer: ("float64", None))
        self.set_assignment(assign)

    def set_assignment(self, assign):
        self.assign = {}
        for node in self.nodes:
            op = node.operation
            if isinstance(op, keras.layers.Layer) and id(op) not in self.assign:
                self.assign[id(op)] = assign(op)
        self.low = self._copies(lambda layer: self.assign[id(layer)])

    def _copies(self, assign):
        copies = {}
        for node in self.nodes:
            op = node.operation
            if id(op) in copies or not isinstance(op, keras.layers.Layer):
                continue
            if op.quantization_mode is not None:
                raise ValueError(f"{_OP}: layer {op.name!r} is already quantized "
                                 f"({op.quantization_mode}); profile the float model and give "
                                 "the quantization as the policy (e.g. 'int8')")
            policy, mode = assign(op)
            if mode is not None and not kg.quantizable(op, mode):
                mode = None
            key = (id(op), str(policy), mode)
            if key in self._cache:
                copies[id(op)] = self._cache[key]
                continue
            try:
                copy = kg.copy_layer(op, policy, mode)
                if self.emulate and mode is None and _is_conv(op) and copy.compute_dtype == "float16":
                    copy = _EmulatedFloat16(op)
                copies[id(op)] = self._cache[key] = copy
            except Exception as err:
                raise ValueError(f"{_OP}: cannot copy layer {op.name!r} ({type(op).__name__}) "
                                 f"into policy {policy!r}"
                                 + (f" with {mode} quantization" if mode else "")
                                 + f": {type(err).__name__}: {err}") from err
        return copies

    def _call(self, copies):
        def call(node, args, kwargs):
            op = copies.get(id(node.operation), node.operation)
            if isinstance(op, _EmulatedFloat16):
                return op.call(args, kwargs)
            return kg.call_with_inference(op, args, kwargs)
        return call

    def low_pass(self, inputs, y, loss_fn, scale):
        """The profiled run (and its loss-scaled gradients when `loss_fn`), as tensors."""
        with tf.GradientTape(persistent=False) as tape:
            low = kg.run(self.graph, self.nodes, inputs, self._call(self.low))
            low_nodes = [self._float_outputs(n, low) for n in self.nodes]
            low_out = [low[id(x)] for x in self.graph.outputs]
            if loss_fn:
                dt = _dtypes.working_dtype(low_out[0].dtype) if low_out[0].dtype.is_floating else tf.float32
                low_loss = self._loss(loss_fn, y, low_out, dt)
                scaled = low_loss * tf.cast(scale, low_loss.dtype)
        # The dtype each tensor has in the profiled run: static, read by `ref_pass`.
        self.low_dtypes = {k: v.dtype for k, v in low.items()}
        result = {"low": low_nodes, "low_out": low_out}
        if loss_fn:
            result["low_loss"] = low_loss
            result["low_g"], result["low_gw"] = self._grads(tape, scaled, low_nodes, self.low)
        return result

    def ref_pass(self, inputs, y, loss_fn):
        """The float64 run (and gradients), the local and the rounding-only runs, as tensors.

        Needs `low_pass` first (the dtypes of the profiled run).
        """
        ref_inputs = [tf.cast(x, tf.float64) if x.dtype.is_floating else x for x in inputs]
        with tf.GradientTape(persistent=False) as tape:
            ref = kg.run(self.graph, self.nodes, ref_inputs, self._call(self.ref))
            ref_nodes = [self._float_outputs(n, ref) for n in self.nodes]
            ref_out = [ref[id(x)] for x in self.graph.outputs]
            ref_loss = self._loss(loss_fn, y, ref_out, tf.float64) if loss_fn else None
        # Local pass: each layer on its float64 inputs rounded to the dtype it receives in the
        # profiled run (a float16 layer after a float16 layer gets float16 inputs).
        rounded = {k: kg.cast_to(v, self.low_dtypes[k]) if k in self.low_dtypes else v
                   for k, v in ref.items()}
        local = kg.run(self.graph, self.nodes, None, self._call(self.low), tensor_dict=rounded)
        local_nodes = [self._float_outputs(n, local) for n in self.nodes]
        # Rounding only: the float64 layer on the same rounded inputs (ill-conditioned inputs).
        rounding = kg.run(self.graph, self.nodes, None, self._call(self.ref), tensor_dict=rounded)
        rounding_nodes = [self._float_outputs(n, rounding) for n in self.nodes]
        result = {"ref": ref_nodes, "local": local_nodes, "ref_out": ref_out,
                  "rounding": rounding_nodes}
        if loss_fn:
            result["ref_loss"] = ref_loss
            result["ref_g"], result["ref_gw"] = self._grads(tape, ref_loss, ref_nodes, self.ref)
        return result

    def _float_outputs(self, node, values):
        return [values[id(x)] for x in node.outputs
                if id(x) in values and tf.as_dtype(values[id(x)].dtype).is_floating]

    def _loss(self, loss_fn, y, outputs, dtype):
        ys = y if isinstance(y, (list, tuple)) else [y]
        total = tf.constant(0.0, dtype)
        for yt, yp in zip(ys, outputs):
            yp = tf.cast(yp, dtype)
            yt = tf.cast(yt, dtype) if tf.as_dtype(yt.dtype).is_floating else yt
            per = loss_fn.call(yt, yp) if isinstance(loss_fn, keras.losses.Loss) else loss_fn(yt, yp)
            total += tf.reduce_mean(tf.cast(per, dtype))
        return total

    def _grads(self, tape, loss, node_values, copies):
        flat_nodes = [t for ts in node_values for t in ts]
        weights, owners = [], []
        for i, node in enumerate(self.nodes):
            copy = copies.get(id(node.operation))
            if copy is None or self.labels[i] != node.operation.name:
                continue
            for w in copy.trainable_weights:
                weights.append(w)
                owners.append((i, w.path.split("/")[-1]))
        grads = tape.gradient(loss, flat_nodes + weights)
        none = tf.zeros([0], loss.dtype)
        g_nodes, k = [], 0
        for ts in node_values:
            g_nodes.append([none if g is None else g for g in grads[k:k + len(ts)]])
            k += len(ts)
        g_w = [{} for _ in self.nodes]
        for (i, wname), g in zip(owners, grads[k:]):
            if g is not None:
                g_w[i][wname] = tf.convert_to_tensor(g)
        return g_nodes, g_w


_CONV_NAMES = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
               "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
               "SeparableConv2D")
_CONVS = tuple(getattr(keras.layers, n) for n in _CONV_NAMES if hasattr(keras.layers, n))


def _is_conv(layer):
    return isinstance(layer, _CONVS)


class _EmulatedFloat16:
    """A float16 convolution computed as a GPU computes it, on a CPU.

    TF's CPU float16 convolution gradients are orders of magnitude slower than
    float32 (a 3x3 convolution's backward pass on a 256x32x32x16 batch: over a
    minute against 0.2 s). This runs the layer in float32 on inputs and weights
    rounded to float16 (their products are exact in float32), accumulates in
    float32 and rounds the output to float16, as GPU float16 convolutions do;
    gradients are rounded to float16 where they leave the layer, weight
    gradients stay float32 (one rounding less than a float16 backward pass).
    """

    def __init__(self, layer):
        self.layer = kg.copy_layer(layer, "float32", None)
        self.layer.set_weights([
            w.astype(np.float16).astype(np.float32) if np.issubdtype(w.dtype, np.floating) else w
            for w in layer.get_weights()])
        self.trainable_weights = self.layer.trainable_weights
        self.compute_dtype = "float16"

    def call(self, args, kwargs):
        def down(t):
            if not tf.is_tensor(t) and not isinstance(t, np.ndarray):
                return t
            t = tf.convert_to_tensor(t)
            return tf.cast(tf.cast(t, tf.float16), tf.float32) if t.dtype.is_floating else t
        x = down(args[0])
        out = kg.call_with_inference(self.layer, (x,) + tuple(args[1:]), kwargs)
        return tf.nest.map_structure(
            lambda t: tf.cast(t, tf.float16) if t.dtype.is_floating else t, out)


def _as_list_inputs(graph, x):
    if isinstance(x, dict):
        names = [t.name for t in graph.inputs]
        try:
            x = [x[n] for n in names]
        except KeyError as err:
            raise ValueError(f"{_OP}: argument 'data' is a dict without the input {err}; the "
                             f"model's inputs are {names}") from None
    xs = list(x) if isinstance(x, list) else [x]
    if len(xs) != len(graph.inputs):
        raise ValueError(f"{_OP}: argument 'data' has {len(xs)} input array(s); the model takes "
                         f"{len(graph.inputs)}")
    out = []
    for value, spec in zip(xs, graph.inputs):
        try:
            t = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{_OP}: argument 'data' cannot be converted to a tensor: {err}") from None
        if t.dtype.is_floating and t.dtype != tf.float64 and tf.as_dtype(spec.dtype).is_floating:
            t = tf.cast(t, spec.dtype) if tf.as_dtype(spec.dtype) != tf.float64 else tf.cast(t, tf.float64)
        out.append(t)
    return out


def split_data(data, loss, op=_OP):
    """(x, y) from `data`: a tuple (x, y) (Keras's convention), a tf.data.Dataset, or x alone."""
    if isinstance(data, tf.data.Dataset):
        data = next(iter(data))
    if isinstance(data, tuple) and len(data) in (2, 3):
        return data[0], data[1]
    if loss is not None:
        raise ValueError(f"{op}: a loss needs targets: pass data=(x, y)")
    return data, None


def _resolve_loss(loss):
    if loss is None:
        return None
    try:
        return keras.losses.get(loss)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{_OP}: argument 'loss' {loss!r} is not a Keras loss: {err}") from None


def _assigner(policy, op=_OP):
    """`layer -> (float policy, quantization mode)` for `profile`'s `policy` argument."""
    if policy is None:
        return lambda layer: kg.split_policy(kg.lookup(layer.dtype_policy, layer) if isinstance(
            layer.dtype_policy, keras.dtype_policies.DTypePolicyMap) else layer.dtype_policy)
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return lambda layer: kg.split_policy(kg.lookup(policy, layer))
    if isinstance(policy, dict):
        return lambda layer: kg.split_policy(
            policy.get(layer.name, policy.get(layer.path, layer.dtype_policy)))
    float_policy, mode = kg.split_policy(policy)
    try:
        keras.dtype_policies.get(float_policy)
    except Exception as err:
        raise ValueError(f"{op}: argument 'policy' {policy!r} is not a Keras dtype policy "
                         "('mixed_float16', 'mixed_bfloat16', 'float16', 'bfloat16', 'float32', "
                         f"'float64', 'int8', 'float8', 'int8_from_mixed_bfloat16', ...): {err}") from None
    return lambda layer: (float_policy, mode)


def _fix(entry, layer):
    """The safeops fix for a layer that loses bits (promote, swap for the stable layer, rescale)."""
    name = entry.dtype
    if entry.nonfinite > 0 or entry.range_ratio >= 1.0:
        return (f"rescale: values reach {entry.max_abs:.3g}, beyond the {name} maximum "
                f"{_dtypes.limits(name).max:.3g} (scale the input or weights down), or promote it "
                "to float32 (so.layers.Promote / a DTypePolicyMap entry)")
    if entry.grad_underflow is not None and entry.grad_underflow > 0.1:
        return (f"rescale: {entry.grad_underflow:.0%} of its gradients underflow {name}: loss "
                "scaling (so.mixed_precision.LossScaleOptimizer), or promote it to float32")
    if entry.underflow > 0.1:
        return (f"rescale: {entry.underflow:.0%} of its outputs underflow {name}; or promote it "
                "to float32 (so.layers.Promote / a DTypePolicyMap entry)")
    if entry.local_bits_mean > 1.0 and entry.input_bits_mean >= entry.local_bits_mean - 1.0:
        return (f"rescale: rounding its input alone loses {entry.input_bits_mean:.1f} bits (an "
                "ill-conditioned input, e.g. a large common offset): centre or rescale the input "
                "upstream, or promote the layers feeding it (and it) to float32")
    import safeops.layers as so_layers
    stable = _STABLE.get(type(layer).__name__)
    if stable and hasattr(so_layers, stable):
        return (f"swap for so.layers.{stable} and promote it (and the layer feeding it) to "
                "float32: so.doctor.advise gives the DTypePolicyMap")
    return "promote it to float32 (so.layers.Promote / a DTypePolicyMap entry: so.doctor.advise)"


def _measure(runner, res, threshold, top, loss_scale, policy):
    entries = []
    has_loss = "ref_g" in res
    for i, node in enumerate(runner.nodes):
        ref, low, local = res["ref"][i], res["low"][i], res["local"][i]
        if not ref:
            continue
        op = node.operation
        dt = tf.as_dtype(low[0].dtype) if low else tf.float32
        quant = runner.assign.get(id(op), (None, None))[1] if isinstance(op, keras.layers.Layer) else None
        if quant is not None and not kg.quantizable(op, quant):
            quant = None
        p = _precision_bits(dt)
        r64 = [_f64(t) for t in ref]
        y64 = [_f64(t) for t in low]
        l64 = [_f64(t) for t in local]
        bm, bx, rel = _bits_stats(y64, r64, p)
        lm, lx, lrel = _bits_stats(l64, r64, p)
        im, _, _ = _bits_stats([_f64(t) for t in res["rounding"][i]], r64, p)
        max_abs, ratio, under, nonfinite = _range(r64, y64, dt)
        emulated = isinstance(runner.low.get(id(op)), _EmulatedFloat16)
        fields = dict(name=runner.labels[i], class_name=type(op).__name__, dtype=dt.name,
                      emulated=emulated,
                      quantization=quant, flops=layer_flops(op, ref), bits_mean=bm, bits_max=bx,
                      local_bits_mean=lm, local_bits_max=lx, input_bits_mean=im,
                      rel_error=rel, local_rel_error=lrel,
                      max_abs=max_abs, range_ratio=ratio, underflow=under, nonfinite=nonfinite)
        if has_loss:
            rg = [_f64(g) for g in res["ref_g"][i]]
            lg = [_f64(g) / loss_scale for g in res["low_g"][i]]
            pairs = [(a, b) for a, b in zip(lg, rg) if int(tf.size(a)) and int(tf.size(b))]
            if pairs:
                gm, gx, _ = _bits_stats([a for a, _ in pairs], [b for _, b in pairs], p)
                _, gratio, gunder, _ = _range([b * loss_scale for _, b in pairs], [], dt)
                fields.update(grad_bits_mean=gm, grad_bits_max=gx, grad_range_ratio=gratio,
                              grad_underflow=gunder)
            rw, lw = res["ref_gw"][i], res["low_gw"][i]
            common = [k for k in rw if k in lw]
            if common:
                wm, wx, _ = _bits_stats([_f64(lw[k]) / loss_scale for k in common],
                                        [_f64(rw[k]) for k in common], p)
                fields.update(weight_grad_bits_mean=wm, weight_grad_bits_max=wx)
        entries.append(LayerPrecision(**fields))
    first = next((e.name for e in entries if e.bits_mean > threshold), None)
    ranked = sorted(enumerate(entries), key=lambda ie: (-ie[1].local_bits_mean, -ie[1].local_bits_max, ie[0]))
    ops = {runner.labels[i]: n.operation for i, n in enumerate(runner.nodes)}
    worst = tuple((e.name, e.local_bits_mean, _fix(e, ops[e.name])) for _, e in ranked[:top]
                  if e.local_bits_mean > 1.0 or e.nonfinite > 0)
    out_err = norm_error([kg.to_numpy64(t) for t in res["low_out"]],
                         [kg.to_numpy64(t) for t in res["ref_out"]])
    loss = loss_err = None
    if has_loss:
        loss = (float(res["low_loss"]), float(res["ref_loss"]))
        if not math.isfinite(loss[0]):
            loss_err = math.inf
        elif loss[1] == 0.0:
            loss_err = 0.0 if loss[0] == 0.0 else math.inf
        else:
            loss_err = abs(loss[0] - loss[1]) / abs(loss[1])
    return PrecisionProfile(policy, tuple(entries), out_err, loss, loss_err, float(loss_scale),
                            float(threshold), first, worst)


def _grads_finite(res):
    for gs in res["low_g"]:
        for g in gs:
            if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(g, tf.float32)))):
                return False
    for gw in res["low_gw"]:
        for g in gw.values():
            if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(g, tf.float32)))):
                return False
    return True


def run_profile(runner, x, y, loss_fn, threshold, top, mode, policy):
    """Run the passes (eager or each traced once in a tf.function) and measure them."""
    inputs = _as_list_inputs(runner.graph, x)
    if y is not None:
        y = tf.nest.map_structure(tf.convert_to_tensor, y)
    low_fn, ref_fn = runner.low_pass, runner.ref_pass
    if mode == "graph":
        low_fn = tf.function(low_fn, reduce_retracing=True)
        ref_fn = tf.function(ref_fn, reduce_retracing=True)
    # Dynamic loss scaling of float16 gradients as Keras's LossScaleOptimizer starts it:
    # 2^15, halved until the gradients are finite.
    float16 = loss_fn is not None and any(
        getattr(c, "compute_dtype", None) == "float16" for c in runner.low.values())
    scale = 2.0 ** 15 if float16 else 1.0
    res = low_fn(inputs, y, loss_fn, tf.constant(scale, tf.float64))
    while float16 and not _grads_finite(res) and scale > 2.0 ** -10:
        scale /= 2.0
        res = low_fn(inputs, y, loss_fn, tf.constant(scale, tf.float64))
    res = dict(res, **ref_fn(inputs, y, loss_fn))
    return _measure(runner, res, threshold, top, scale, policy)


@new("a per-layer precision profile: bits lost against a float64 run of the same weights, "
     "dynamic range, the first layer over a threshold, the worst layers with their fix")
def profile(model, data, policy="mixed_float16", loss=None, threshold=4.0, top=3, plot=None,
            mode="graph", emulate=None, verbose=True):
    """Measure how many bits each layer of `model` loses in a precision, against float64.

    New (no TF/Keras original). Every layer of the Functional or Sequential
    `model` is copied twice with its weights: under `policy` and under
    ``float64``. Both copies run the model's graph on `data` in inference mode
    (dropout off, BatchNormalization on its moving statistics), and the copy in
    `policy` also runs each layer on the float64 inputs of that layer (its
    local error). With `loss`, the backward pass of the mean loss runs in both;
    float16 gradients use dynamic loss scaling as Keras's LossScaleOptimizer
    does (2^15, halved until finite). The model itself is not changed.

    Definitions (module doc, docs/doctor.md): bits lost =
    ``clip(log2(rel / u), 0, p)`` with ``rel = |y - r| / max(|r|, rms(r))``
    and ``u = 2^-p`` the unit roundoff of the layer's compute dtype; the
    float64 profile of a float64 model is exactly 0 bits everywhere.

    Error bound: not applicable (a measurement). The float64 reference has its
    own rounding error, ~2^-53 relative per operation, below anything reported
    for float32 and lower precisions.

    Args:
      model: a built Functional or Sequential `keras.Model`.
      data: the inputs (an array, a list or dict of arrays for several
        inputs), a tuple ``(x, y)``, or a `tf.data.Dataset` (its first batch).
      policy: a Keras dtype policy name or object applied to every layer
        (``"mixed_float16"``, ``"mixed_bfloat16"``, ``"float16"``,
        ``"bfloat16"``, ``"float32"``, ``"float64"``; ``"int8"``/``"float8"``
        or ``"int8_from_mixed_bfloat16"``: Keras quantization of the layers
        that support it, the others in the source policy), a
        `keras.dtype_policies.DTypePolicyMap` or a dict keyed by layer path,
        or None for each layer's current policy.
      loss: a Keras loss (name, function or `keras.losses.Loss`); needs
        ``data=(x, y)``. Gradients are reported only with a loss.
      threshold: bits; the first layer whose accumulated mean loss exceeds it
        is named (`first_over`).
      top: how many worst layers to name with their fix.
      plot: a path: save the bits-lost chart there as PNG (needs matplotlib).
      mode: ``"graph"`` (each pass traced once in a `tf.function`) or
        ``"eager"``; the figures are the same.
      emulate: float16 convolutions computed as a GPU does (float16 inputs
        and weights, float32 accumulation, float16 output) in float32 kernels:
        TF's CPU float16 convolution gradients take minutes where float32
        takes a fraction of a second. None (default): on a machine without a
        GPU. Emulated layers are marked ``emulated`` (``*`` in the table).
      verbose: print the table.

    Returns:
      A `PrecisionProfile` (``.as_dict()`` gives the figures as a plain dict).

    Raises:
      TypeError: `model` is not a Keras model, or a subclassed one (no layer
        graph); `data` cannot be converted to tensors.
      ValueError: an unknown policy or loss; `data` does not match the
        model's inputs; a loss without targets; a layer that cannot be copied
        into the policy (its error is included).

    Example:
      >>> p = so.doctor.profile(model, x, policy="mixed_float16", verbose=False)
      >>> p.worst[0][0]        # the layer that loses most bits    # doctest: +SKIP
      'layer_normalization'
    """
    if mode not in ("graph", "eager"):
        raise ValueError(f"{_OP}: argument 'mode' must be 'graph' or 'eager'; got {mode!r}")
    if not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"{_OP}: argument 'threshold' must be a number of bits >= 0; got {threshold!r}")
    x, y = split_data(data, loss)
    loss_fn = _resolve_loss(loss)
    runner = _Runner(model, _assigner(policy), emulate)
    result = run_profile(runner, x, y, loss_fn, threshold, top, mode, policy)
    if plot is not None:
        result.plot(plot)
    if verbose:
        print(result.table())
    return result
