"""`Promote`: run any wrapped Keras layer in a wider dtype and cast back (`so.promote`)."""

import keras
import tensorflow as tf

from safeops._core.registry import new
from safeops.promote import promote

__all__ = ["Promote"]

_DTYPES = ("float16", "bfloat16", "float32", "float64")


@new("a wrapper that runs one layer with its weights and computation in a wider dtype and casts the outputs back")
@keras.saving.register_keras_serializable(package="safeops")
class Promote(keras.layers.Wrapper):
    """Run `layer` with its weights and computation in `dtype`; cast outputs back.

    New wrapper (Keras has none). Typical use: keep a numerically critical
    layer (a softmax, a normalization, a loss head) in float32 inside a
    ``mixed_float16`` model, or in float64 for a reference run.

    Method: the wrapped layer's dtype policy is set to `dtype` (so its weights
    are created and kept in `dtype`); a call goes through `so.promote`, which
    casts the floating inputs to `dtype`, runs the layer, and casts floating
    outputs back to the input dtype; the wrapper then casts to its own compute
    dtype. The wrapped layer's weights are the wrapper's weights (it tracks
    them), so they are trained, saved and loaded with it.

    Error bound: the layer's own error evaluated in `dtype`, plus one rounding
    to the output dtype (``u_out + e (1 + u_out)``, see `so.promote`).

    Gradient: flows through both casts; the backward pass of the layer runs in
    `dtype` and each gradient is rounded once to its input's dtype.

    dtypes: `dtype` is one of float16, bfloat16, float32, float64. The layer
    must not be built yet (its weights would already have another dtype). The
    wrapper's own dtype policy (the global one, e.g. ``mixed_float16``) decides
    its output dtype; `get_config` stores it under ``"dtype"`` and the promote
    dtype under ``"promote_dtype"``, so a saved model reloads with both, whatever
    the global policy is at load time.

    Args:
      layer: an unbuilt `keras.layers.Layer`.
      dtype: the dtype to run it in (string; None or omitted: ``"float64"``).
      promote_dtype: the same as `dtype`, under the name `get_config` saves it (there
        `dtype` is this wrapper's own Keras dtype policy); given, it wins over `dtype`.
      **kwargs: base `keras.layers.Layer` arguments (``name``...).

    Raises:
      ValueError: unknown `dtype` string, or `layer` already built.
      TypeError: if `layer` is not a Keras layer.

    Example:
      >>> ln = so.layers.Promote(keras.layers.LayerNormalization(), dtype="float32")
      >>> keras.mixed_precision.set_global_policy("mixed_float16")   # doctest: +SKIP
      >>> ln(x).dtype          # float16 out, computed in float32      # doctest: +SKIP
    """

    def __init__(self, layer, dtype=None, promote_dtype=None, **kwargs):
        if promote_dtype is not None:
            # From `get_config`: `promote_dtype` is the dtype to run `layer` in and `dtype`
            # is this wrapper's own dtype policy (e.g. mixed_float16), kept as it was saved.
            if dtype is not None:
                kwargs["dtype"] = dtype
            dtype = promote_dtype
        elif dtype is None:
            dtype = "float64"
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"safeops.layers.Promote: argument 'layer' must be a keras.layers.Layer; "
                f"got {type(layer).__name__}")
        name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
        if name not in _DTYPES:
            raise ValueError(
                f"safeops.layers.Promote: argument 'dtype' must be one of {', '.join(_DTYPES)}; "
                f"got {dtype!r}")
        if layer.built and any(keras.backend.standardize_dtype(w.dtype) != name
                               for w in layer.weights):
            raise ValueError(
                "safeops.layers.Promote: argument 'layer' is already built with weights of "
                f"another dtype; wrap it before it is called or built")
        super().__init__(layer, **kwargs)
        self.promote_dtype = name
        layer.dtype_policy = name
        self.supports_masking = getattr(layer, "supports_masking", False)

    def build(self, input_shape=None):
        super().build(input_shape)
        self.built = True

    def call(self, inputs, *args, **kwargs):
        def run(x):
            return self.layer(x, *args, **kwargs)

        out = promote(run, dtype=tf.as_dtype(self.promote_dtype))(inputs)
        return tf.nest.map_structure(
            lambda t: tf.cast(t, self.compute_dtype) if t.dtype.is_floating else t, out)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()  # "dtype": this wrapper's own policy (output dtype)
        config["promote_dtype"] = self.promote_dtype
        return config
