"""The precision profiler's engine: a model's runs in the profiled precision and in float64,
and their statistics, as one computation kept per model.

A Functional or Sequential model runs node by node (`_keras_graph`), each node calling a
copy of its layer made in the profiled policy or in float64. A subclassed model has no
node graph: it is re-created from its config twice (every layer in the profiled policy,
or in float64) with the model's weights, and its layers record their calls (inputs and
outputs) while it runs. The layers recorded ("units") are found by descending through
the model's tracked layers, stopping at Keras and safeops layers and at layers without
sublayers.

Each profile runs: the profiled pass (forward, and the loss-scaled backward with a
loss), the float64 pass (and backward), the local pass (each unit in the profiled
precision on its float64 inputs rounded to the dtype it receives) and the rounding pass
(the float64 unit on the same rounded inputs). Float64 copies compute with `_kernels`'
formulations of the TF ops that are slow in float64 on CPU (the same values, or the same
sums in another order). A unit fed only by the model's inputs gets the same inputs in the
local and the profiled pass (and in the rounding and the float64 pass): those passes are
not run twice; nor are the local and rounding passes of a max pooling unit: a maximum
commutes with the rounding (a monotone map), so both give its float64 outputs rounded,
the values the float64 pass has already made. The statistics (bits lost, dynamic range,
underflow) are reductions in the same computation: one host transfer per profile.

The copies, the traced passes and the compiled statistics stay with the model (a weak
reference: they go when it goes) and serve the next profile while its weights and
layers are unchanged (weights are compared by a hash of their bytes).

Keras touchpoints beyond `_keras_graph`'s (checked by
``tests/test_doctor_profile.py::test_keras_touchpoints``): ``Layer._flatten_layers``
(the tracked sublayers of a layer), ``Model.from_config(model.get_config())`` re-creating
a subclassed model, and a layer's ``__class__`` replaced by a subclass whose ``__call__``
records (on the engine's own copies only).
"""

import contextvars
import hashlib
import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from safeops._core import dtypes as _dtypes
from safeops.doctor import _bits
from safeops.doctor import _kernels
from safeops.doctor import _keras_graph as kg
from safeops.doctor import _runner
from safeops.doctor._stats import flat, means, sweep, to64, value_range

__all__ = []

_OP = "safeops.doctor.profile"
_CACHE = weakref.WeakKeyDictionary()  # model -> {emulate: engine}

# Per unit, the figures of `stats` (NaN where a figure does not apply).
FIELDS = ("bits_mean", "bits_max", "rel_error", "local_bits_mean", "local_bits_max",
          "local_rel_error", "input_bits_mean", "max_abs", "range_ratio", "underflow",
          "nonfinite", "grad_bits_mean", "grad_bits_max", "grad_range_ratio", "grad_underflow",
          "weight_grad_bits_mean", "weight_grad_bits_max")


def engine(model, x, emulate=None):
    """The engine of `model` (made once, then reused while its weights and layers hold);
    `x`: the inputs (a subclassed model is built on their first sample)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{_OP}: argument 'model' must be a keras.Model; got {type(model).__name__}")
    emulate = (not tf.config.list_logical_devices("GPU")) if emulate is None else bool(emulate)
    per_model = _CACHE.get(model)
    if per_model is None:
        per_model = _CACHE[model] = {}
    eng = per_model.get(emulate)
    if eng is None or eng.structure != _structure(model):
        graph = _graph_or_none(model)
        eng = (GraphEngine(model, graph, emulate) if graph is not None
               else SubclassEngine(model, x, emulate))
        per_model[emulate] = eng
    eng.refresh(model)
    return eng


def is_subclassed(model):
    """True for a subclassed `keras.Model` (no layer graph)."""
    return _graph_or_none(model) is None


def _graph_or_none(model):
    try:
        return kg.functional_graph(model, _OP)
    except TypeError:
        return None


def _structure(model):
    """What identifies a model's layers: a change (a layer added to a Sequential) re-makes the engine."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    return (id(graph),) + tuple(id(la) for la in model._flatten_layers(include_self=False, recursive=True))


def _fingerprint(layer):
    h = hashlib.blake2b(digest_size=16)
    for w in layer.get_weights():
        w = np.ascontiguousarray(w)
        h.update(str((w.dtype, w.shape)).encode())
        h.update(w.tobytes())
    return h.digest()


class _Node:
    """One recorded call of a unit of a subclassed model (``operation``: the model's layer)."""

    def __init__(self, operation):
        self.operation = operation


class _Base:
    """What both engines share: copies per (layer, policy, mode), assignments, the passes' driver."""

    def __init__(self, emulate):
        self.emulate = emulate
        self._fingerprints = {}
        self._fns = {}
        self._stats = {}
        self.assign = {}

    # ------------------------------------------------------------------ set-up

    def set_assignment(self, assign):
        """`assign(layer) -> (float policy, quantization mode or None)` for the profiled run."""
        table = {}
        for layer in self.layers:
            policy, mode = assign(layer)
            if mode is not None and not kg.quantizable(layer, mode):
                mode = None
            table[id(layer)] = (str(policy), mode)
        self.assign = table
        self.key = tuple(table[id(la)] for la in self.layers)

    def refresh(self, model):
        """Bring the copies up to the model's weights (rebuilt where a copy cannot take them)."""
        changed = []
        for layer in self.layers:
            fp = _fingerprint(layer)
            if self._fingerprints.get(id(layer)) != fp:
                if id(layer) in self._fingerprints:
                    changed.append(layer)
                self._fingerprints[id(layer)] = fp
        if changed:
            self._weights_changed(changed)

    def unit_dtype(self, i):
        """The dtype of unit call `i`'s (first) output in the profiled run."""
        return self._out_dtypes[self.key].get(i, "float32")

    def _record_dtypes(self, low_units):
        self._out_dtypes = getattr(self, "_out_dtypes", {})
        self._out_dtypes[self.key] = {i: ts[0].dtype.name for i, ts in enumerate(low_units) if ts}

    def _check_float_layers(self):
        for layer in self.layers:
            if layer.quantization_mode is not None:
                raise ValueError(f"{_OP}: layer {layer.name!r} is already quantized "
                                 f"({layer.quantization_mode}); profile the float model and give "
                                 "the quantization as the policy (e.g. 'int8')")

    # ------------------------------------------------------------------ passes

    def functions(self, loss_fn, mode):
        """(low pass, rest) for the current assignment: traced once per shape in graph mode."""
        key = (self.key, _loss_key(loss_fn), mode)
        fns = self._fns.get(key)
        if fns is None:
            low = lambda inputs, y, scale: self.low_pass(inputs, y, loss_fn, scale)  # noqa: E731
            rest = lambda inputs, y, low_res, scale: self.rest_pass(  # noqa: E731
                inputs, y, loss_fn, low_res, scale)
            float8 = loss_fn is not None and any(m == "float8" for _, m in self.assign.values())
            if mode == "graph" or float8:
                # Keras's float8 layers differentiate only inside a tf.function.
                low = tf.function(low, autograph=False)
            if mode == "graph":
                rest = tf.function(rest, autograph=False)
            # The statistics are traced alone in both modes (the same graph: the same bits),
            # once for every assignment: the precisions are arguments.
            # A sweep whose fast path does not hold (non-finite or all-zero references, NaN
            # results) makes the whole computation run again with every mask.
            stats = []
            for exact in (False, True):
                stats_key = (_loss_key(loss_fn), mode, exact)
                if stats_key not in self._stats:
                    self._stats[stats_key] = tf.function(
                        lambda low_res, passes, scale, consts, exact=exact: self._statistics(
                            low_res, passes, loss_fn, scale, consts, exact), autograph=False)
                stats.append(self._stats[stats_key])
            fns = self._fns[key] = (low, rest, stats)
        return fns

    def run(self, x, y, loss_fn, mode):
        """The figures: ``{"units": [n, len(FIELDS)] array, "out": (num, den, finite), ...}``."""
        inputs = self.convert_inputs(x)
        if y is not None:
            y = tf.nest.map_structure(tf.convert_to_tensor, y)
        low_fn, rest_fn, stats_fn = self.functions(loss_fn, mode)
        # Dynamic loss scaling of float16 gradients as Keras's LossScaleOptimizer starts it:
        # 2^15, halved until the gradients are finite.
        float16 = loss_fn is not None and self.has_float16()
        scale = 2.0 ** 15 if float16 else 1.0
        low = low_fn(inputs, y, tf.constant(scale, tf.float64))
        while float16 and not bool(low["finite"]) and scale > 2.0 ** -10:
            scale /= 2.0
            low = low_fn(inputs, y, tf.constant(scale, tf.float64))
        scale_t = tf.constant(scale, tf.float64)
        passes = rest_fn(inputs, y, low, scale_t)
        if mode == "eager":  # float64 arguments (exact): one trace serves every assignment
            low, passes = tf.nest.map_structure(to64, (low, passes))
        consts = []
        for i in range(len(self.nodes)):
            p = float(_bits.precision_bits(self.unit_dtype(i)))
            lim = _dtypes.limits(self.unit_dtype(i))
            consts.append([p, 2.0 ** -p, lim.tiny, lim.max])
        consts = tf.constant(consts, tf.float64, shape=[len(consts), 4])
        out = stats_fn[0](low, passes, scale_t, consts)
        if not bool(out["fast"]):
            out = stats_fn[1](low, passes, scale_t, consts)
        res = {k: v.numpy() for k, v in out.items()}
        res["flops"] = self._flops[self.key]
        res["scale"] = scale
        return res

    def _loss(self, loss_fn, y, outputs, dtype):
        ys = y if isinstance(y, (list, tuple)) else [y]
        total = tf.constant(0.0, dtype)
        for yt, yp in zip(ys, outputs):
            yp = tf.cast(yp, dtype)
            yt = tf.cast(yt, dtype) if tf.as_dtype(yt.dtype).is_floating else yt
            per = loss_fn.call(yt, yp) if isinstance(loss_fn, keras.losses.Loss) else loss_fn(yt, yp)
            total += tf.reduce_mean(tf.cast(per, dtype))
        return total

    def _grads(self, tape, loss, unit_values, copies_of):
        """Gradients of `loss` w.r.t. each unit's outputs and its first call's trainable weights."""
        outputs = [t for ts in unit_values for t in ts]
        weights, owners, seen = [], [], set()
        for i, node in enumerate(self.nodes):
            copy = copies_of(i)
            if copy is None or id(node.operation) in seen:  # a shared layer: its first call
                continue
            seen.add(id(node.operation))
            for w in copy.trainable_weights:
                weights.append(w)
                owners.append((i, w.path.split("/")[-1]))
        grads = tape.gradient(loss, outputs + weights)
        g_units, k = [], 0
        for ts in unit_values:
            g_units.append(list(grads[k:k + len(ts)]))
            k += len(ts)
        g_w = [{} for _ in self.nodes]
        for (i, wname), g in zip(owners, grads[k:]):
            if g is not None:
                g_w[i][wname] = tf.convert_to_tensor(g)
        return g_units, g_w

    def _low_result(self, low_units, low_out, loss_fn, y, tape_fn):
        result = {"low": low_units, "low_out": low_out}
        finite = tf.constant(True)
        if loss_fn:
            low_loss, g_units, g_w = tape_fn()
            result.update(low_loss=low_loss, low_g=g_units, low_gw=g_w)
            for g in [g for gs in g_units for g in gs if g is not None] + [
                    g for gw in g_w for g in gw.values()]:
                if g.dtype not in (tf.float16, tf.bfloat16, tf.float32):  # as float32 values
                    g = tf.cast(g, tf.float32)
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
        result["finite"] = finite
        return result

    def _set_flops(self, ref_units):
        self._flops = getattr(self, "_flops", {})
        self._flops[self.key] = [_bits.layer_flops(n.operation, ts) if ts else 0.0
                                 for n, ts in zip(self.nodes, ref_units)]

    def _statistics(self, low, passes, loss_fn, scale, consts, exact):
        ref, local, rounding = passes
        oks = None if exact else []
        figures = {"units": self._figures(low, ref, local, rounding, loss_fn, scale, consts, oks)}
        figures["fast"] = tf.reduce_all(tf.stack(oks)) if oks else tf.constant(True)
        figures.update(self._model_figures(low, ref, loss_fn))
        return figures

    def _figures(self, low, ref, local, rounding, loss_fn, scale, consts, oks):
        """The statistics of every unit as one [n, len(FIELDS)] float64 tensor (NaN: not applicable).

        `oks`: None for the masked computation, else a list that gets each sweep's fast-path
        condition."""
        rows = []
        nan = tf.constant(math.nan, tf.float64)
        for i in range(len(self.nodes)):
            if not ref["ref"][i]:
                rows.append(tf.fill([len(FIELDS)], nan))
                continue
            p, down, tiny, top = (consts[i, k] for k in range(4))
            acc, loc, inp, rng = [], [], [], []
            for j, r in enumerate(ref["ref"][i]):
                ys = [low["low"][i][j]]
                if local[i] is not None:
                    ys.append(local[i][j])
                    if rounding[i] is not None:  # else the same values as the local outputs
                        ys.append(rounding[i][j])
                parts, ranges = sweep(flat(tf.cast(r, tf.float64)), [flat(y) for y in ys], p, down, tiny,
                                       oks=oks)
                acc.append(parts[0])
                loc.append(parts[1] if local[i] is not None else parts[0])
                if local[i] is not None:
                    inp.append(parts[-1])
                rng.append(ranges)
            acc, loc = means(acc, p), means(loc, p)
            inp = means(inp, p) if inp else (tf.constant(0.0, tf.float64),) * 3
            row = list(acc) + list(loc) + [inp[0]] + list(value_range(rng, top))
            grad = [nan] * 6
            if loss_fn:
                pairs = [(a, b) for a, b in zip(low["low_g"][i], ref["ref_g"][i])
                         if a is not None and b is not None and a.shape.num_elements() != 0
                         and b.shape.num_elements() != 0]
                if pairs:
                    # the range of the loss-scaled float64 gradients: |g s| < tiny is |g| < tiny / s
                    swept = [sweep(flat(b), [flat(a)], p, down, tiny / scale, divisor=scale, oks=oks)
                             for a, b in pairs]
                    g = means([parts[0] for parts, _ in swept], p)
                    grng = value_range([ranges for _, ranges in swept], top, scale)
                    grad[0:4] = [g[0], g[1], grng[1], grng[2]]
                rw, lw = ref["ref_gw"][i], low["low_gw"][i]
                common = [k for k in rw if k in lw]
                if common:
                    w = means([sweep(flat(rw[k]), [flat(lw[k])], p, down, tiny, divisor=scale,
                                       oks=oks)[0][0]
                                for k in common], p)
                    grad[4:6] = [w[0], w[1]]
            row += grad
            rows.append(tf.stack([tf.cast(v, tf.float64) for v in row]))
        return tf.stack(rows) if rows else tf.zeros([0, len(FIELDS)], tf.float64)

    def _model_figures(self, low, ref, loss_fn):
        num = den = tf.constant(0.0, tf.float64)
        finite = tf.constant(True)
        for yv, rv in zip(low["low_out"], ref["ref_out"]):
            y64, r64 = tf.cast(flat(yv), tf.float64), tf.cast(flat(rv), tf.float64)
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(y64)))
            num += tf.reduce_sum(tf.square(y64 - r64))
            den += tf.reduce_sum(r64 * r64)
        out = {"out": tf.stack([num, den, tf.cast(finite, tf.float64)])}
        if loss_fn:
            out["loss"] = tf.stack([tf.cast(low["low_loss"], tf.float64), ref["ref_loss"]])
        return out


def _loss_key(loss_fn):
    if loss_fn is None:
        return None
    if isinstance(loss_fn, keras.losses.Loss):
        try:
            return (type(loss_fn), repr(sorted(loss_fn.get_config().items())))
        except Exception:  # a custom Loss without a config
            return id(loss_fn)
    return loss_fn


# ---------------------------------------------------------------------- Functional

class GraphEngine(_Base):
    """A Functional or Sequential model, run node by node with a copy of each layer."""

    def __init__(self, model, graph, emulate):
        super().__init__(emulate)
        self.structure = _structure(model)
        # The graph's inputs and outputs, not the graph: the engine must not keep the model alive.
        self.graph = _GraphIO(graph)
        self.nodes = kg.nodes(graph)
        self.labels, counts = [], {}
        for node in self.nodes:
            k = counts.setdefault(id(node.operation), 0)
            self.labels.append(kg.node_label(node, k))
            counts[id(node.operation)] = k + 1
        made_by = {id(x): i for i, node in enumerate(self.nodes) for x in node.outputs}
        self.inputs_of = [[made_by[id(x)] for x in node.input_tensors if id(x) in made_by]
                          for node in self.nodes]
        self._model_input = {id(x) for x in graph.inputs}
        self.layers = []
        for node in self.nodes:
            op = node.operation
            if isinstance(op, keras.layers.Layer) and all(op is not la for la in self.layers):
                self.layers.append(op)
        self._check_float_layers()
        self._copies = {}  # (id(layer), policy, mode) -> copy
        self.ref = {id(la): self._copy(la, "float64", None) for la in self.layers}
        self.set_assignment(lambda layer: ("float32", None))

    def set_assignment(self, assign):
        super().set_assignment(assign)
        self.low = {id(la): self._copy(la, *self.assign[id(la)]) for la in self.layers}

    def _copy(self, layer, policy, mode):
        key = (id(layer), policy, mode)
        if key not in self._copies:
            try:
                copy = kg.copy_layer(layer, policy, mode)
                if mode is None:
                    _kernels.use_fast_float64(copy)
                if (self.emulate and mode is None and _runner._is_conv(layer)
                        and copy.compute_dtype == "float16"):
                    copy = _runner.EmulatedFloat16(layer)
            except Exception as err:
                raise ValueError(f"{_OP}: cannot copy layer {layer.name!r} ({type(layer).__name__}) "
                                 f"into policy {policy!r}" + (f" with {mode} quantization" if mode else "")
                                 + f": {type(err).__name__}: {err}") from err
            self._copies[key] = copy
        return self._copies[key]

    def _weights_changed(self, layers):
        ids = {id(la) for la in layers}
        for key in [k for k in self._copies if k[0] in ids]:
            layer = next(la for la in layers if id(la) == key[0])
            copy = self._copies[key]
            if key[2] is None and not isinstance(copy, _runner.EmulatedFloat16):
                copy.set_weights(layer.get_weights())
            else:  # quantized or emulated: made again (traces of the old copy are dropped)
                del self._copies[key]
                self._fns.clear()
        self.ref = {id(la): self._copy(la, "float64", None) for la in self.layers}
        self.low = {id(la): self._copy(la, *self.assign[id(la)]) for la in self.layers}

    def has_float16(self):
        return any(getattr(c, "compute_dtype", None) == "float16" for c in self.low.values())

    def quantization(self, i):
        op = self.nodes[i].operation
        return self.assign.get(id(op), (None, None))[1] if isinstance(op, keras.layers.Layer) else None

    def emulated(self, i):
        return isinstance(self.low.get(id(self.nodes[i].operation)), _runner.EmulatedFloat16)

    def convert_inputs(self, x):
        return _runner.as_list_inputs(self.graph, x)

    def _call(self, copies):
        def call(node, args, kwargs):
            op = copies.get(id(node.operation), node.operation)
            if isinstance(op, _runner.EmulatedFloat16):
                return op.call(args, kwargs)
            return kg.call_with_inference(op, args, kwargs)
        return call

    def _outputs(self, node, values):
        return [values[id(x)] for x in node.outputs
                if id(x) in values and tf.as_dtype(values[id(x)].dtype).is_floating]

    def low_pass(self, inputs, y, loss_fn, scale):
        with tf.GradientTape() as tape:
            values = kg.run(self.graph, self.nodes, inputs, self._call(self.low))
            low_units = [self._outputs(n, values) for n in self.nodes]
            low_out = [values[id(x)] for x in self.graph.outputs]
            if loss_fn:
                dt = _dtypes.working_dtype(low_out[0].dtype) if low_out[0].dtype.is_floating else tf.float32
                low_loss = self._loss(loss_fn, y, low_out, dt)
                scaled = low_loss * tf.cast(scale, low_loss.dtype)
        # Static facts of the profiled run, read by `rest_pass` and the measurements.
        self.low_dtypes = {k: v.dtype for k, v in values.items()}
        self._record_dtypes(low_units)
        return self._low_result(
            low_units, low_out, loss_fn, y,
            lambda: (low_loss,) + self._grads(tape, scaled, low_units, lambda i: self.low.get(
                id(self.nodes[i].operation))))

    def rest_pass(self, inputs, y, loss_fn, low, scale):
        ref_inputs = [tf.cast(x, tf.float64) if x.dtype.is_floating else x for x in inputs]
        with tf.GradientTape() as tape:
            values = kg.run(self.graph, self.nodes, ref_inputs, self._call(self.ref))
            ref_units = [self._outputs(n, values) for n in self.nodes]
            self._set_flops(ref_units)
            ref_out = [values[id(x)] for x in self.graph.outputs]
            ref_loss = self._loss(loss_fn, y, ref_out, tf.float64) if loss_fn else None
        ref = {"ref": ref_units, "ref_out": ref_out}
        if loss_fn:
            ref["ref_loss"] = ref_loss
            ref["ref_g"], ref["ref_gw"] = self._grads(
                tape, ref_loss, ref_units, lambda i: self.ref.get(id(self.nodes[i].operation)))
        # Local pass: each node on its float64 inputs rounded to the dtype it receives in the
        # profiled run; rounding pass: the float64 node on the same inputs. A node fed only by
        # the model's inputs gets exactly its profiled (float64) inputs: its outputs are reused.
        # A max pooling node commutes with the rounding (a monotone map): its local output is
        # its float64 output rounded, the same values, and its rounding pass the same values
        # again (None: the statistics read the local outputs in its place).
        rounded = {k: kg.cast_to(v, self.low_dtypes[k]) if k in self.low_dtypes else v
                   for k, v in values.items()}
        local, rounding = [], []
        call_low, call_ref = self._call(self.low), self._call(self.ref)
        for i, node in enumerate(self.nodes):
            if all(id(x) in self._model_input for x in node.input_tensors):
                local.append(None)
                rounding.append(None)
                continue
            if self._commutes_with_rounding(node):
                local.append([rounded[id(x)] for x in node.outputs])
                rounding.append(None)
                continue
            args, kwargs = node.arguments.fill_in(rounded)
            out_low = keras.tree.flatten(call_low(node, args, kwargs))
            out_ref = keras.tree.flatten(call_ref(node, args, kwargs))
            local.append([t for t in out_low if tf.as_dtype(t.dtype).is_floating])
            rounding.append([t for t in out_ref if tf.as_dtype(t.dtype).is_floating])
        return ref, local, rounding

    def _commutes_with_rounding(self, node):
        """True for a max pooling node whose profiled copy takes and gives one floating dtype: the
        maximum of values rounded by a monotone map (float64 to that dtype) is the rounded
        maximum, so the node on rounded inputs gives its float64 output rounded."""
        op = node.operation
        if not isinstance(op, _MAX_POOLS) or len(node.input_tensors) != 1 or len(node.outputs) != 1:
            return False
        copy = self.low.get(id(op))
        if copy is None or isinstance(copy, _runner.EmulatedFloat16) or copy.quantization_mode:
            return False
        dt_in = self.low_dtypes.get(id(node.input_tensors[0]))
        dt_out = self.low_dtypes.get(id(node.outputs[0]))
        return (dt_in is not None and dt_in == dt_out and dt_in.is_floating
                and dt_in.name == copy.compute_dtype)


_MAX_POOLS = tuple(getattr(keras.layers, n) for n in (
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D") if hasattr(keras.layers, n))


class _GraphIO:
    def __init__(self, graph):
        self.inputs = list(graph.inputs)
        self.outputs = list(graph.outputs)


# ---------------------------------------------------------------------- subclassed

_RECORDING = contextvars.ContextVar("safeops_doctor_recording", default=None)
_EMULATED = {}  # id(unit copy) -> EmulatedFloat16
_RECORDING_CLASSES = {}


def _recording_class(cls):
    """A subclass of `cls` whose calls are recorded while a `_RECORDING` list is set."""
    rec_cls = _RECORDING_CLASSES.get(cls)
    if rec_cls is None:
        def __call__(self, *args, **kwargs):
            emulated = _EMULATED.get(id(self))
            if emulated is not None:
                out = emulated.call(args, kwargs)
            else:
                out = super(rec_cls, self).__call__(*args, **kwargs)
            log = _RECORDING.get()
            if log is not None:
                log.append((self, args, kwargs, out))
            return out
        rec_cls = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
        _RECORDING_CLASSES[cls] = rec_cls
    return rec_cls


def _children(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _is_unit(layer):
    module = type(layer).__module__ or ""
    return not _children(layer) or module.startswith(("keras.", "safeops."))


def _walk(layer, units, inner, names=None, prefix=""):
    """`layer`'s units (and the layers between them and it, `inner`), depth first; `names`
    gets each unit's path below `layer` (``block/dense``)."""
    for child in _children(layer):
        if _is_unit(child):
            units.append(child)
            if names is not None:
                names.append(prefix + child.name)
        else:
            inner.append(child)
            _walk(child, units, inner, names, prefix + child.name + "/")


class SubclassEngine(_Base):
    """A subclassed model: re-created copies (float64, and one per assignment) whose units record."""

    def __init__(self, model, x, emulate):
        super().__init__(emulate)
        self.structure = _structure(model)
        self.model_ref = weakref.ref(model)
        if not model.built:
            raise ValueError(f"{_OP}: the subclassed model {model.name!r} is not built: call it "
                             "once on data before profiling")
        self.layers, self._inner, self._paths = [], [], []
        _walk(model, self.layers, self._inner, self._paths)
        if not self.layers:
            raise ValueError(f"{_OP}: the subclassed model {model.name!r} tracks no layers: there "
                             "is nothing to profile per layer")
        self._check_float_layers()
        self._compute = model.compute_dtype
        self._sample = tf.nest.map_structure(lambda t: t[:1], self.convert_inputs(x))
        self._clones = {}
        self.ref = self._clone(model, lambda layer: ("float64", None))
        self._learn_calls()
        self.set_assignment(lambda layer: ("float32", None))
        for layer in self.layers:
            self._fingerprints[id(layer)] = _fingerprint(layer)

    def _clone(self, model, assign):
        """`model` re-created from its config, each layer in `assign(layer)`, with its weights."""
        try:
            clone = type(model).from_config(model.get_config())
        except Exception as err:
            raise TypeError(
                f"{_OP}: the subclassed model {model.name!r} ({type(model).__name__}) cannot be "
                "re-created from its config (get_config/from_config), and the profiler runs a "
                "subclassed model through copies of it, one per precision; give the class a "
                "get_config that returns its constructor arguments, or build the model as a "
                f"Functional model (keras.Model(inputs, outputs)): {type(err).__name__}: {err}") from None
        units, inner = [], []
        _walk(clone, units, inner)
        if ([type(u) for u in units] != [type(u) for u in self.layers]
                or [type(u) for u in inner] != [type(u) for u in self._inner]):
            raise TypeError(f"{_OP}: the copy of the subclassed model {model.name!r} made from its "
                            "config does not track the same layers (layers created in build() or "
                            "call()?); create them in __init__, or build the model as a Functional "
                            "model (keras.Model(inputs, outputs))")
        root = _policy_of(assign, model)
        clone.dtype_policy = root
        for c, o in zip(inner, self._inner):
            c.dtype_policy = _policy_of(assign, o)
        modes = []
        for c, o in zip(units, self.layers):
            policy, mode = assign(o)
            if mode is not None and not kg.quantizable(o, mode):
                mode = None
            c.dtype_policy = policy
            modes.append(mode)
        try:
            kg.call_with_inference(clone, (self._cast(self._sample, root),), {})
            clone.set_weights(model.get_weights())
            for c, mode in zip(units, modes):
                if mode is not None:
                    c.quantize(mode)
        except Exception as err:
            raise ValueError(f"{_OP}: cannot copy the subclassed model {model.name!r} into policy "
                             f"{root!r} with its weights: {type(err).__name__}: {err}") from err
        for c, o in zip(units, self.layers):
            if c.quantization_mode is None:
                _kernels.use_fast_float64(c)
            c.__class__ = _recording_class(type(c))
            if (self.emulate and _runner._is_conv(o) and c.compute_dtype == "float16"
                    and c.quantization_mode is None):
                _EMULATED[id(c)] = _runner.EmulatedFloat16(o)
                weakref.finalize(c, _EMULATED.pop, id(c), None)
        return _Clone(clone, units)

    def _cast(self, x, policy):
        dtype = keras.dtype_policies.get(policy).compute_dtype
        return tf.nest.map_structure(lambda t: tf.cast(t, dtype) if t.dtype.is_floating else t, x)

    def _learn_calls(self):
        """The units' calls in execution order, from a float64 run on the build sample."""
        log = self._record(self.ref, self._cast(self._sample, "float64"))[0]
        self.nodes, self.labels, counts = [], [], {}
        made_by, self.inputs_of = {}, []
        for k, (unit, args, kwargs, out) in enumerate(log):
            index = self.ref.units.index(unit)
            layer = self.layers[index]
            j = counts.setdefault(id(layer), 0)
            counts[id(layer)] = j + 1
            self.nodes.append(_Node(layer))
            self.labels.append(self._paths[index] if j == 0 else f"{self._paths[index]}#{j}")
            # The calls that made its inputs (by identity; through code between layers, the
            # call before it).
            sources = [made_by[id(t)] for t in keras.tree.flatten((args, kwargs)) if id(t) in made_by]
            self.inputs_of.append(sorted(set(sources)) or ([k - 1] if k else []))
            for t in keras.tree.flatten(out):
                made_by[id(t)] = k
        self._calls = [self.ref.units.index(unit) for unit, *_ in log]

    def set_assignment(self, assign):
        super().set_assignment(assign)
        self._assigner = assign
        if self.key not in self._clones:
            self._clones[self.key] = self._clone(self.model_ref(), assign)
        self.low = self._clones[self.key]

    def _weights_changed(self, layers):
        weights = self.model_ref().get_weights()
        self.ref.model.set_weights(weights)
        for key in list(self._clones):
            if any(m is not None for _, m in key) or any(id(u) in _EMULATED for u in self._clones[key].units):
                del self._clones[key]  # made again: quantized or emulated from the new weights
            else:
                self._clones[key].model.set_weights(weights)
        self._fns.clear()
        self.set_assignment(self._assigner)

    def has_float16(self):
        return any(u.compute_dtype == "float16" or id(u) in _EMULATED for u in self.low.units)

    def quantization(self, i):
        return self.assign[id(self.nodes[i].operation)][1]

    def emulated(self, i):
        return id(self.low.units[self.layers.index(self.nodes[i].operation)]) in _EMULATED

    def convert_inputs(self, x):
        try:
            x = tf.nest.map_structure(tf.convert_to_tensor, x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{_OP}: argument 'data' cannot be converted to a tensor: {err}") from None
        return tf.nest.map_structure(
            lambda t: tf.cast(t, self._compute) if t.dtype.is_floating and t.dtype != tf.float64 else t, x)

    def _record(self, clone, inputs):
        log = []
        token = _RECORDING.set(log)
        try:
            out = kg.call_with_inference(clone.model, (inputs,), {})
        finally:
            _RECORDING.reset(token)
        return log, [t for t in keras.tree.flatten(out)]

    def _run(self, clone, inputs):
        log, out = self._record(clone, inputs)
        if [clone.units.index(u) for u, *_ in log] != self._calls:
            raise ValueError(f"{_OP}: the subclassed model {self.model_ref().name!r} calls its "
                             "layers differently in this run (another order or number of calls); "
                             "the profile compares the same calls in every precision")
        units = [[t for t in keras.tree.flatten(o) if tf.as_dtype(t.dtype).is_floating]
                 for _, _, _, o in log]
        return log, units, out

    def low_pass(self, inputs, y, loss_fn, scale):
        with tf.GradientTape() as tape:
            log, low_units, low_out = self._run(self.low, inputs)
            if loss_fn:
                dt = _dtypes.working_dtype(low_out[0].dtype) if low_out[0].dtype.is_floating else tf.float32
                low_loss = self._loss(loss_fn, y, low_out, dt)
                scaled = low_loss * tf.cast(scale, low_loss.dtype)
        # The dtypes the units received in the profiled run: static, read by `rest_pass`.
        self._low_log = [(args, kwargs) for _, args, kwargs, _ in log]
        self._record_dtypes(low_units)
        return self._low_result(
            low_units, low_out, loss_fn, y,
            lambda: (low_loss,) + self._grads(tape, scaled, low_units, self._copy_of(self.low)))

    def _copy_of(self, clone):
        def copy(i):
            unit = clone.units[self._calls[i]]
            return _EMULATED.get(id(unit), unit)
        return copy

    def rest_pass(self, inputs, y, loss_fn, low, scale):
        ref_inputs = self._cast(inputs, "float64")
        with tf.GradientTape() as tape:
            log, ref_units, ref_out = self._run(self.ref, ref_inputs)
            self._set_flops(ref_units)
            ref_loss = self._loss(loss_fn, y, ref_out, tf.float64) if loss_fn else None
        ref = {"ref": ref_units, "ref_out": ref_out}
        if loss_fn:
            ref["ref_loss"] = ref_loss
            ref["ref_g"], ref["ref_gw"] = self._grads(tape, ref_loss, ref_units, self._copy_of(self.ref))
        # Local and rounding passes: each call again on its float64 inputs rounded to the
        # dtypes it received in the profiled run.
        local, rounding = [], []
        for k, ((_, ref_args, ref_kwargs, _), (low_args, low_kwargs)) in enumerate(
                zip(log, self._low_log)):
            index = self._calls[k]
            args = _round_like(ref_args, low_args)
            kwargs = _round_like(ref_kwargs, low_kwargs)
            out_low = keras.tree.flatten(kg.call_with_inference(self.low.units[index], args, kwargs))
            out_ref = keras.tree.flatten(kg.call_with_inference(self.ref.units[index], args, kwargs))
            local.append([t for t in out_low if tf.as_dtype(t.dtype).is_floating])
            rounding.append([t for t in out_ref if tf.as_dtype(t.dtype).is_floating])
        return ref, local, rounding


def _policy_of(assign, layer):
    """The float policy `assign` gives a layer between the units (its own where it has none)."""
    try:
        return assign(layer)[0]
    except KeyError:
        return layer.dtype_policy.name


class _Clone:
    def __init__(self, model, units):
        self.model = model
        self.units = units


def _round_like(ref, low):
    """`ref`'s floating tensors rounded to the dtypes of the same places in `low`."""
    def one(r, lo):
        if tf.is_tensor(r) and tf.is_tensor(lo) and r.dtype.is_floating and lo.dtype.is_floating:
            return kg.cast_to(r, lo.dtype)
        return r
    try:
        return keras.tree.map_structure(one, ref, low)
    except (TypeError, ValueError):
        return ref
