"""Helpers of the precision profiler and advisor: data and loss handling, policy assignment,
emulated float16 convolutions (the runs themselves are in `_engine`)."""

import keras
import numpy as np
import tensorflow as tf

from safeops.doctor import _keras_graph as kg

__all__ = []

_OP = "safeops.doctor.profile"


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


