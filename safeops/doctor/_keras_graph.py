"""Keras touchpoints of the precision profiler, in one place.

The profiler runs a Functional or Sequential model node by node, calling a copy
of each layer made in another dtype policy. Keras has no public API for that, so
this module reads six Keras internals, each checked by
``tests/test_doctor_profile.py::test_keras_touchpoints`` (it fails loudly when Keras
moves them):

* ``Functional._nodes_by_depth`` (the graph, as `Functional._run_through_graph` reads it);
* ``Node.operation``, ``Node.is_input``, ``Node.input_tensors``, ``Node.outputs``;
* ``Node.arguments.fill_in(tensor_dict)`` (the node's call arguments with the
  symbolic tensors replaced by values, keyed by ``id``);
* ``Sequential._functional`` (the Functional graph a built Sequential model holds);
* ``keras.src.backend.common.masking.set_keras_mask`` and the ``_keras_mask``
  attribute (a mask kept on a tensor cast to another dtype);
* ``Lambda._output_shape`` (a Lambda layer is copied from its live function).
"""

import inspect
import re

import keras
import numpy as np

__all__ = []

_QUANT_MODES = ("int8", "int4", "float8")


def functional_graph(model, op):
    """The Functional graph of `model` (a built Sequential model: the one it holds)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{op}: argument 'model' must be a keras.Model; got {type(model).__name__}")
    graph = model
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(f"{op}: the Sequential model {model.name!r} is not built; give it a "
                             "keras.Input or call it once before profiling")
    if not hasattr(graph, "_nodes_by_depth") or not getattr(graph, "inputs", None):
        raise TypeError(
            f"{op}: model {model.name!r} is a subclassed Model ({type(model).__name__}); only "
            "Functional and Sequential models have a layer graph to profile (wrap the computation "
            "in a Functional model: keras.Model(inputs, outputs))")
    return graph


def nodes(graph):
    """The call nodes of `graph` in execution order (Input nodes excluded)."""
    out = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            out.append(node)
    return out


def node_label(node, index):
    """A readable, unique name of a node: the layer's name, with ``#k`` for its k-th call."""
    return node.operation.name if index == 0 else f"{node.operation.name}#{index}"


def run(graph, graph_nodes, inputs, call, tensor_dict=None):
    """Execute `graph` on `inputs`, computing each node as ``call(node, args, kwargs)``.

    Returns the tensor dictionary (``id(symbolic tensor) -> value``) with every
    node's outputs; `tensor_dict` given, it is read for the node inputs instead
    (each node then runs on those values: the local run).
    """
    values = {}
    if tensor_dict is None:
        for x, y in zip(graph.inputs, inputs):
            values[id(x)] = y
        source = values
    else:
        source = tensor_dict
    for node in graph_nodes:
        if any(id(x) not in source for x in node.input_tensors):
            continue
        args, kwargs = node.arguments.fill_in(source)
        outputs = call(node, args, kwargs)
        for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
            values[id(x)] = y
    return values


def call_with_inference(layer, args, kwargs):
    """Call `layer` in inference mode (training=False where its call takes it)."""
    if isinstance(layer, keras.layers.Layer):
        try:
            takes = "training" in inspect.signature(layer.call).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            takes = False
        if takes and kwargs.get("training") is None:
            kwargs = dict(kwargs, training=False)
    return layer(*args, **kwargs)


def layer_key(layer):
    """The key of `layer` in the doctor's policy maps: its name (unique in a model; Keras
    gives layers without weights no path, and a Sequential model's layers a path under
    the model's name)."""
    return layer.name


def lookup(policy_map, layer):
    """The policy of `layer` in a `DTypePolicyMap`: by path, then by name, then Keras's
    own lookup (regular expressions, the default policy)."""
    if layer.path and layer.path in policy_map:
        return policy_map[layer.path]
    if layer.name in policy_map:
        return policy_map[layer.name]
    return policy_map[layer.path or layer.name]


def split_policy(policy):
    """(float policy name, quantization mode or None) of a policy name or object."""
    if isinstance(policy, keras.dtype_policies.DTypePolicy):
        mode = policy.quantization_mode
        if mode is None:
            return policy.name, None
        name = policy.name
    else:
        name = str(policy)
        mode = None
    if name in _QUANT_MODES:
        return "float32", name
    m = re.fullmatch(r"(int8|int4|float8)_from_(.+)", name)
    if m:
        return m.group(2), m.group(1)
    if mode is not None:  # pragma: no cover - a quantized policy with another naming scheme
        return "float32", mode
    return name, None


def quantizable(layer, mode):
    """True when `layer` implements Keras quantization (``layer.quantize``) for `mode`."""
    if type(layer).quantize is keras.layers.Layer.quantize:
        return False
    if isinstance(layer, keras.layers.Embedding) and mode == "float8":
        return False
    return True


def copy_layer(layer, policy, mode, sample_args=None):
    """A copy of built `layer` under float `policy` with its weights, then quantized to `mode`.

    Nested models are cloned with every inner layer under `policy`. The copy is
    built from the layer's build config (as `.keras` loading does) or, where that
    creates no weights, by one call on `sample_args`.
    """
    if isinstance(layer, keras.Model):
        copy = keras.models.clone_model(
            layer, clone_function=lambda inner: _from_config(inner, policy), recursive=True)
        copy.set_weights(layer.get_weights())
        return copy
    copy = _from_config(layer, policy)
    weights = layer.get_weights()
    try:
        copy.build_from_config(layer.get_build_config())
    except Exception:  # custom build signatures: built by the call below
        pass
    if len(copy.weights) != len(weights) and sample_args is not None:
        args, kwargs = sample_args
        call_with_inference(copy, args, kwargs)
    copy.set_weights(weights)
    if mode is not None:
        copy.quantize(mode)
    return copy


def _from_config(layer, policy):
    if isinstance(layer, keras.layers.Lambda):
        # A Lambda's config holds its function as bytecode, which Keras refuses to load in
        # safe mode: the copy takes the live function instead.
        return keras.layers.Lambda(layer.function, output_shape=getattr(layer, "_output_shape", None),
                                   mask=layer.mask, arguments=dict(layer.arguments),
                                   name=layer.name, dtype=policy)
    config = layer.get_config()
    config["dtype"] = policy
    return layer.__class__.from_config(config)


def cast_to(value, dtype):
    """`value` cast to `dtype` (floating values only), keeping its Keras mask.

    float64 to float16 or bfloat16 goes through float32: the same values (TF's own cast
    converts through float32), in vectorised conversions."""
    if dtype is None or not keras.backend.is_float_dtype(value.dtype) or value.dtype == dtype:
        return value
    if (keras.backend.standardize_dtype(value.dtype) == "float64"
            and keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16")):
        out = keras.ops.cast(keras.ops.cast(value, "float32"), dtype)
    else:
        out = keras.ops.cast(value, dtype)
    mask = getattr(value, "_keras_mask", None)
    if mask is not None:
        from keras.src.backend.common.masking import set_keras_mask
        set_keras_mask(out, mask)
    return out


def to_numpy64(value):
    """A floating tensor's value as a float64 NumPy array (bfloat16 included)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value).astype(np.float64)
