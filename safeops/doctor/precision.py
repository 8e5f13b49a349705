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

from safeops._core import dtypes as _dtypes
from safeops._core.registry import new
from safeops.doctor import _engine
from safeops.doctor import _runner
from safeops.doctor._report import format_table

__all__ = ["LayerPrecision", "PrecisionProfile", "profile"]

_OP = "safeops.doctor.profile"
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
      flops: estimated FLOPs per sample (`safeops.doctor._bits.layer_flops`).
      bits_mean: mean accumulated bits lost by its outputs.
      bits_max: the largest of them.
      local_bits_mean: mean of its own bits lost (on float64 inputs rounded to
        the dtype it receives).
      local_bits_max: the largest of them.
      input_bits_mean: mean bits lost by the float64 layer on those rounded inputs.
      rel_error: mean accumulated relative error.
      local_rel_error: mean local relative error.
      max_abs: largest reference magnitude of its outputs.
      range_ratio: ``max_abs`` over the dtype's largest finite value.
      underflow: fraction of non-zero reference outputs below the dtype's
        smallest normal number.
      nonfinite: fraction of outputs that are inf/NaN where the reference is finite.
      grad_bits_mean: mean bits lost by the loss gradient with respect to its outputs.
      grad_bits_max: the largest of them.
      weight_grad_bits_mean: mean bits lost by the gradient with respect to its weights.
      weight_grad_bits_max: the largest of them.
      grad_range_ratio: largest loss-scaled output gradient over the dtype's maximum.
      grad_underflow: fraction of non-zero loss-scaled output gradients that underflow.
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
      threshold: bits lost (mean) that count as a hazard.
      first_over: the first layer (execution order) whose accumulated mean
        bits lost exceed `threshold`, or None.
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


def _fix(entry, layer):
    """The safeops fix for a layer that loses bits (promote, swap for the stable layer, rescale)."""
    name = entry.dtype
    if entry.range_ratio >= 1.0:
        return (f"rescale: values reach {entry.max_abs:.3g}, beyond the {name} maximum "
                f"{_dtypes.limits(name).max:.3g} (scale the input or weights down), or promote it "
                "to float32 (so.layers.Promote / a DTypePolicyMap entry)")
    if entry.nonfinite > 0 and entry.input_bits_mean < entry.local_bits_mean - 1.0:
        return (f"promote it to float32: an intermediate overflows {name} although its output "
                "fits (inf/NaN from finite inputs); or compute its formula with the stable "
                "safeops op (so.reduce_logsumexp, so.log_softmax, so.softplus, so.safe_exp...)")
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


def _measure(eng, res, threshold, top, policy):
    entries = []
    has_loss = "loss" in res
    for i, node in enumerate(eng.nodes):
        row = dict(zip(_engine.FIELDS, (float(v) for v in res["units"][i])))
        if math.isnan(row["bits_mean"]):  # no floating output
            continue
        op = node.operation
        fields = {k: (None if math.isnan(v) else v) for k, v in row.items()}
        if not has_loss:
            for k in ("grad_bits_mean", "grad_bits_max", "grad_range_ratio", "grad_underflow",
                      "weight_grad_bits_mean", "weight_grad_bits_max"):
                fields[k] = None
        quant = eng.quantization(i) if isinstance(op, keras.layers.Layer) else None
        entries.append(LayerPrecision(name=eng.labels[i], class_name=type(op).__name__,
                                      dtype=eng.unit_dtype(i), quantization=quant,
                                      emulated=eng.emulated(i), flops=float(res["flops"][i]), **fields))
    first = next((e.name for e in entries if e.bits_mean > threshold), None)
    ranked = sorted(enumerate(entries), key=lambda ie: (-ie[1].local_bits_mean, -ie[1].local_bits_max, ie[0]))
    ops = {eng.labels[i]: n.operation for i, n in enumerate(eng.nodes)}
    worst = tuple((e.name, e.local_bits_mean, _fix(e, ops[e.name])) for _, e in ranked[:top]
                  if e.local_bits_mean > 1.0 or e.nonfinite > 0)
    num, den, finite = (float(v) for v in res["out"])
    if not finite:
        out_err = math.inf
    elif num == 0.0:
        out_err = 0.0
    else:
        out_err = math.sqrt(num / den) if den > 0 else math.inf
    loss = loss_err = None
    if has_loss:
        loss = (float(res["loss"][0]), float(res["loss"][1]))
        if not math.isfinite(loss[0]):
            loss_err = math.inf
        elif loss[1] == 0.0:
            loss_err = 0.0 if loss[0] == 0.0 else math.inf
        else:
            loss_err = abs(loss[0] - loss[1]) / abs(loss[1])
    return PrecisionProfile(policy, tuple(entries), out_err, loss, loss_err, float(res["scale"]),
                            float(threshold), first, worst)


def run_profile(eng, x, y, loss_fn, threshold, top, mode, policy):
    """Run the passes (eager, or traced once per shape in a tf.function) and measure them."""
    return _measure(eng, eng.run(x, y, loss_fn, mode), threshold, top, policy)


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

    A subclassed model (no layer graph) is re-created from its config twice,
    every layer under `policy` or ``float64``, with its weights; its layers
    (found through its tracked layers, down to Keras and safeops layers)
    record their calls while it runs, and are named by their path
    (``block/dense``). The copies and traced runs are kept with the model
    and reused by the next call while its weights and layers are unchanged.

    Definitions (module doc, docs/doctor.md): bits lost =
    ``clip(log2(rel / u), 0, p)`` with ``rel = |y - r| / max(|r|, rms(r))``
    and ``u = 2^-p`` the unit roundoff of the layer's compute dtype; the
    float64 profile of a float64 model is exactly 0 bits everywhere.

    Error bound: not applicable (a measurement). The float64 reference has its
    own rounding error, ~2^-53 relative per operation, below anything reported
    for float32 and lower precisions.

    Args:
      model: a built `keras.Model`: Functional, Sequential, or subclassed
        with a config that re-creates it (`get_config`/`from_config`).
      data: the inputs (an array, a list or dict of arrays for several
        inputs), a tuple ``(x, y)``, or a `tf.data.Dataset` (its first
        batch); run as one batch.
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
      TypeError: `model` is not a Keras model, or a subclassed one that its
        config does not re-create with the same layers; `data` cannot be
        converted to tensors.
      ValueError: an unknown policy or loss; `data` does not match the
        model's inputs; a loss without targets; a layer that cannot be copied
        into the policy (its error is included); a subclassed model that is
        not built, tracks no layers, or calls its layers differently in
        another precision.

    Example:
      >>> p = so.doctor.profile(model, x, policy="mixed_float16", verbose=False)
      >>> p.first_over        # the first layer losing > 4 bits    # doctest: +SKIP
      'layer_normalization'
    """
    if mode not in ("graph", "eager"):
        raise ValueError(f"{_OP}: argument 'mode' must be 'graph' or 'eager'; got {mode!r}")
    if not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"{_OP}: argument 'threshold' must be a number of bits >= 0; got {threshold!r}")
    x, y = _runner.split_data(data, loss)
    loss_fn = _runner.resolve_loss(loss)
    eng = _engine.engine(model, x, emulate)
    eng.set_assignment(_runner.assigner(policy))
    result = run_profile(eng, x, y, loss_fn, threshold, top, mode, policy)
    if plot is not None:
        result.plot(plot)
    if verbose:
        print(result.table())
    return result
