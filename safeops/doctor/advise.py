"""`advise`: the cheapest dtype per layer that keeps a model's error within a budget."""

import dataclasses
import math
from typing import Dict, Tuple

import keras

from safeops._core.registry import new
from safeops.doctor import _engine
from safeops.doctor import _keras_graph as kg
from safeops.doctor import _runner
from safeops.doctor import precision as _precision
from safeops.doctor._report import format_table

__all__ = ["Advice", "advise"]

_OP = "safeops.doctor.advise"
_HALF = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16",
         "mixed_float16": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}
_QUANT = ("int8", "float8")


@dataclasses.dataclass(frozen=True)
class Advice:
    """What `advise` returns: a per-layer dtype policy map, quantization modes, and their check.

    Args:
      policy_map: a `keras.dtype_policies.DTypePolicyMap` keyed by layer name
        (``"mixed_float16"``, ``"mixed_bfloat16"`` or ``"float32"`` per layer;
        variables stay float32).
      quantization: ``{layer name: "int8" | "float8"}``, Keras quantization of
        those layers on top of their policy.
      budget: the relative error allowed.
      metric: ``"loss"`` (relative error of the mean loss) or ``"output"``
        (norm-wise relative error of the outputs), both against float64.
      error: that error with the advice applied, measured by re-profiling.
      within_budget: ``error <= budget``. False only when no assignment meets
        the budget (all float32 included); the map is then all float32.
      low_precision_flops: the fraction of the model's FLOPs (estimated per
        layer, see `so.doctor.profile`) in 16-bit or quantized layers.
      profile: the `PrecisionProfile` of the advice (the re-profiling).
      steps: what the search did, in order (text).
    """

    policy_map: keras.dtype_policies.DTypePolicyMap
    quantization: Dict[str, str]
    budget: float
    metric: str
    error: float
    within_budget: bool
    low_precision_flops: float
    profile: object
    steps: Tuple[str, ...]

    def policies(self):
        """``{layer name: policy name}``, with quantized layers as ``"int8_from_<policy>"``."""
        out = {}
        for path in self.policy_map:
            name = self.policy_map[path].name
            mode = self.quantization.get(path)
            out[path] = f"{mode}_from_{name}" if mode else name
        return out

    def apply(self, model):
        """A new model: `model` cloned with each layer in its advised policy, same weights, quantized.

        The model passed is not changed. Layers not in the map keep their policy.
        """
        def clone(layer):
            if kg.layer_key(layer) not in self.policy_map:
                return layer.__class__.from_config(layer.get_config())
            policy = self.policy_map[kg.layer_key(layer)]
            if isinstance(layer, keras.Model):
                return keras.models.clone_model(
                    layer, clone_function=lambda inner: _with_policy(inner, policy), recursive=True)
            return _with_policy(layer, policy)

        out = keras.models.clone_model(model, clone_function=clone)
        out.set_weights(model.get_weights())
        for path, mode in self.quantization.items():
            out.get_layer(path).quantize(mode)
        return out

    def table(self):
        """The printed summary (what `advise` prints)."""
        rows = []
        prof = {e.name: e for e in self.profile.layers}
        for path, name in self.policies().items():
            e = prof.get(path)
            rows.append((path, e.class_name if e else "-", name,
                         f"{e.flops:.3g}" if e else "-", f"{e.local_bits_mean:.1f}" if e else "-"))
        table = format_table(("layer", "class", "policy", "FLOPs/sample", "local bits lost"), rows)
        verdict = "within" if self.within_budget else "NOT within"
        return (f"safeops.doctor.advise: {self.metric} error {self.error:.3g} {verdict} budget "
                f"{self.budget:g}; {self.low_precision_flops:.0%} of FLOPs in 16-bit or quantized "
                f"layers\n{table}\napply: new_model = advice.apply(model)")

    def __str__(self):
        return self.table()


def _with_policy(layer, policy):
    config = layer.get_config()
    config["dtype"] = policy
    return layer.__class__.from_config(config)


def _metric(prof, has_loss):
    return prof.loss_error if has_loss else prof.output_error


def _upstream_layers(runner, i):
    """Node indices of the layers that feed node `i` (through non-layer ops such as ``+``)."""
    out, stack, seen = [], list(runner.inputs_of[i]), set()
    while stack:
        j = stack.pop()
        if j in seen:
            continue
        seen.add(j)
        if isinstance(runner.nodes[j].operation, keras.layers.Layer):
            out.append(j)
        else:
            stack.extend(runner.inputs_of[j])
    return out


@new("per-layer dtype advice: the lowest-cost dtype of each layer (float32, bfloat16/float16, "
     "int8/float8 where Keras quantizes the layer) within an error budget, as a Keras "
     "DTypePolicyMap, verified by re-profiling")
def advise(model, data, budget=1e-2, loss=None, dtypes=("float16", "bfloat16"), quantize=("int8",),
           mode="eager", verbose=True):
    """Choose per layer the cheapest dtype that keeps the model's error within `budget`.

    New (no TF/Keras original). Cost per value: int8/float8 < 16-bit <
    float32. The search, on `data` and against a float64 run of the same
    weights (as `so.doctor.profile` measures it):

    1. every layer is profiled in each 16-bit dtype of `dtypes` and takes the
       one with the smaller local error (float32 where both overflow);
    2. while the error exceeds the budget, the layer with the largest local
       error is promoted to float32; a float32 layer whose local error is
       larger than in an all-float32 run (an ill-conditioned layer fed 16-bit
       inputs: a LayerNormalization of large-mean rows), or whose output error
       is much larger than its local error, passes that error to the 16-bit
       layers feeding it, which are promoted next;
    3. each layer that Keras can quantize (Dense, EinsumDense, Embedding), the
       largest FLOPs first, is tried in each mode of `quantize` and kept where
       the error stays within the budget;
    4. the result is re-profiled and its error reported (`Advice.error`).

    Error bound: the returned assignment keeps the error measured on `data`
    within `budget` (`within_budget`); other inputs may differ.

    Args:
      model: a built Functional or Sequential `keras.Model` (float32); a
        subclassed model is refused (`TypeError`): Keras clones only graph
        models layer by layer, which `Advice.apply` needs.
      data: inputs, or ``(x, y)`` with `loss` (as `so.doctor.profile`).
      budget: the allowed relative error: of the mean loss when `loss` is
        given, else the norm-wise relative error of the outputs.
      loss: a Keras loss (name, function or `keras.losses.Loss`), or None.
      dtypes: the 16-bit candidates, from ``"float16"`` and ``"bfloat16"``
        (as ``mixed_`` policies: float32 variables); empty: float32 only.
      quantize: Keras quantization modes to try (``"int8"``, ``"float8"``); () for none.
      mode: ``"eager"`` or ``"graph"`` (as `so.doctor.profile`).
      verbose: print the advice.

    Returns:
      An `Advice`; ``advice.apply(model)`` gives the model in the advised
      dtypes (one call), ``advice.policy_map`` the `DTypePolicyMap`.

    Raises:
      ValueError: a budget that is not a positive number; an unknown dtype or
        quantization mode; and what `so.doctor.profile` raises.
      TypeError: a subclassed model; what `so.doctor.profile` raises.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"{_OP}: argument 'budget' must be a positive relative error; got {budget!r}")
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    if isinstance(quantize, str):
        quantize = (quantize,)
    bad = [d for d in dtypes if d not in _HALF]
    if bad:
        raise ValueError(f"{_OP}: argument 'dtypes' must hold 'float16' and/or 'bfloat16'; got {bad}")
    bad = [q for q in quantize if q not in _QUANT]
    if bad:
        raise ValueError(f"{_OP}: argument 'quantize' must hold 'int8' and/or 'float8'; got {bad}")
    halves = list(dict.fromkeys(_HALF[d] for d in dtypes))
    x, y = _runner.split_data(data, loss, _OP)
    loss_fn = _runner.resolve_loss(loss)
    if isinstance(model, keras.Model) and _engine.is_subclassed(model):
        raise TypeError(
            f"{_OP}: model {model.name!r} is a subclassed Model ({type(model).__name__}): advice is "
            "applied by cloning the model layer by layer into its dtypes, which Keras does only "
            "for Functional and Sequential models (so.doctor.profile measures a subclassed model "
            "per layer in one policy)")
    runner = _engine.engine(model, x)
    has_loss = loss_fn is not None
    steps = []

    def measure(assign):
        runner.set_assignment(lambda layer: kg.split_policy(assign[kg.layer_key(layer)]))
        return _precision.run_profile(runner, x, y, loss_fn, 4.0, 0, mode, dict(assign))

    layers = list(runner.layers)
    node_of = {runner.labels[i]: i for i in range(len(runner.nodes))}
    assign = {kg.layer_key(layer): "float32" for layer in layers}

    # 1. the better 16-bit dtype per layer, by its local error.
    local = {kg.layer_key(layer): {} for layer in layers}
    for half in halves:
        prof = measure({kg.layer_key(layer): half for layer in layers})
        for e in prof.layers:
            op = runner.nodes[node_of[e.name]].operation
            if isinstance(op, keras.layers.Layer):
                err = e.local_rel_error if e.nonfinite == 0 else math.inf
                local[kg.layer_key(op)][half] = max(local[kg.layer_key(op)].get(half, 0.0), err)
    for layer in layers:
        options = [(err, halves.index(h), h) for h, err in local[kg.layer_key(layer)].items() if math.isfinite(err)]
        if options:
            assign[kg.layer_key(layer)] = min(options)[2]
    if halves:
        steps.append("16-bit start: " + ", ".join(f"{p}={a}" for p, a in assign.items()))

    # 2. promote to float32 until within budget. The all-float32 local errors tell a float32
    # layer's own arithmetic from the rounding of its 16-bit inputs.
    prof32 = measure({key: "float32" for key in assign})
    local32 = {}
    for e in prof32.layers:
        op = runner.nodes[node_of[e.name]].operation
        if isinstance(op, keras.layers.Layer):
            local32[kg.layer_key(op)] = max(local32.get(kg.layer_key(op), 0.0), _finite(e.local_rel_error))
    steps.append(f"all float32: {_metric_name(has_loss)} error {_metric(prof32, has_loss):.3g}")
    prof = measure(assign)
    while _metric(prof, has_loss) > budget:
        scores = {}
        for e in prof.layers:
            i = node_of[e.name]
            op = runner.nodes[i].operation
            if isinstance(op, keras.layers.Layer) and assign[kg.layer_key(op)] in halves:
                scores[kg.layer_key(op)] = max(scores.get(kg.layer_key(op), 0.0), _finite(e.local_rel_error))
            elif isinstance(op, keras.layers.Layer):
                own = local32.get(kg.layer_key(op), 0.0)
                # Its 16-bit inputs cost it accuracy (rounding, or earlier errors amplified):
                # the layers feeding it are the ones to promote.
                blame = 0.0
                if _finite(e.local_rel_error) > 4 * own:
                    blame = _finite(e.local_rel_error)
                if _finite(e.rel_error) > 16 * _finite(e.local_rel_error) and _finite(e.rel_error) > budget:
                    blame = max(blame, _finite(e.rel_error))
                if blame > 0:
                    for j in _upstream_layers(runner, i):
                        up = kg.layer_key(runner.nodes[j].operation)
                        if assign[up] in halves:
                            scores[up] = max(scores.get(up, 0.0), blame)
        if not scores:
            break
        worst = max(scores, key=lambda p: (scores[p], -list(assign).index(p)))
        steps.append(f"{_metric_name(has_loss)} error {_metric(prof, has_loss):.3g} > {budget:g}: "
                     f"{worst} {assign[worst]} -> float32")
        assign[worst] = "float32"
        prof = measure(assign)

    # 3. quantization, the largest layers first.
    quant = {}
    if _metric(prof, has_loss) <= budget and quantize:
        flops = {}
        for e in prof.layers:
            op = runner.nodes[node_of[e.name]].operation
            if isinstance(op, keras.layers.Layer):
                flops[kg.layer_key(op)] = flops.get(kg.layer_key(op), 0.0) + e.flops
        for layer in sorted(layers, key=lambda la: -flops.get(kg.layer_key(la), 0.0)):
            if isinstance(layer, keras.Model):
                continue
            for q in quantize:
                if not kg.quantizable(layer, q):
                    continue
                key = kg.layer_key(layer)
                sources = [assign[key]] if assign[key] == "float32" else [assign[key], "float32"]
                if q == "int8" and assign[key] == "mixed_float16":  # Keras refuses int8 on float16
                    sources = ["float32"]
                tprof = None
                for source in sources:  # on 16-bit compute first, else on float32
                    trial = dict(assign, **{key: f"{q}_from_{source}"})
                    try:
                        tprof = measure(trial)
                        break
                    except Exception as err:  # Keras cannot quantize (or differentiate) it so
                        steps.append(f"{key} {q} from {source}: not possible "
                                     f"({type(err).__name__}: {str(err).splitlines()[0][:120]})")
                if tprof is None:
                    continue
                ok = _metric(tprof, has_loss) <= budget
                steps.append(f"{key} {q}: {_metric_name(has_loss)} error "
                             f"{_metric(tprof, has_loss):.3g} -> {'kept' if ok else 'rejected'}")
                if ok:
                    assign, prof, quant[key] = trial, tprof, q
                    break

    float_assign = {p: kg.split_policy(a)[0] for p, a in assign.items()}
    policy_map = keras.dtype_policies.DTypePolicyMap(
        default_policy=None,
        policy_map={p: keras.dtype_policies.get(a) for p, a in float_assign.items()})
    # 4. verify: re-profile the final assignment on the original weights.
    runner.set_assignment(lambda layer: kg.split_policy(assign[kg.layer_key(layer)]))
    verified = _precision.run_profile(runner, x, y, loss_fn, 4.0, 3, mode, dict(assign))
    error = _metric(verified, has_loss)
    total = sum(e.flops for e in verified.layers) or 1.0
    low = sum(e.flops for e in verified.layers if e.dtype != "float32" or e.quantization)
    advice = Advice(policy_map, quant, float(budget), _metric_name(has_loss), float(error),
                    bool(error <= budget), low / total, verified, tuple(steps))
    if verbose:
        print(advice.table())
    return advice


def _finite(value):
    return 1e300 if not math.isfinite(value) else value


def _metric_name(has_loss):
    return "loss" if has_loss else "output"
