"""The precision profiler's runs: a model's graph with a float64 and a profiled copy of each layer."""

import keras
import numpy as np
import tensorflow as tf

from safeops._core import dtypes as _dtypes
from safeops.doctor import _keras_graph as kg

__all__ = []

_OP = "safeops.doctor.profile"


class Runner:
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
                    copy = EmulatedFloat16(op)
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
            if isinstance(op, EmulatedFloat16):
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


class EmulatedFloat16:
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


def as_list_inputs(graph, x):
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


def resolve_loss(loss):
    if loss is None:
        return None
    try:
        return keras.losses.get(loss)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{_OP}: argument 'loss' {loss!r} is not a Keras loss: {err}") from None


def assigner(policy, op=_OP):
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


