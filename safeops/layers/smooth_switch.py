"""`SmoothSwitch`: the layer form of `so.smooth_where`."""

import keras
import tensorflow as tf

from safeops._core.registry import new
from safeops.where import smooth_where

__all__ = ["SmoothSwitch"]


@new("a layer form of so.smooth_where: a differentiable switch between two branches")
@keras.saving.register_keras_serializable(package="safeops")
class SmoothSwitch(keras.layers.Layer):
    """A smooth ``tf.where(x > threshold, if_above, if_below)`` layer (`so.smooth_where`).

    New layer (Keras has none): called on ``x`` it returns the logistic step
    ``sigmoid((x - threshold) / temperature)`` (if_above = 1, if_below = 0);
    called on ``[x, if_above, if_below]`` it returns the blend
    ``w * if_above + (1 - w) * if_below``.

    Method, error bound and gradient: those of `so.smooth_where` (weights
    ``sigmoid(z)`` and ``sigmoid(-z)``, never ``1 - w``; exact 0/1 limits for
    large ``|x - threshold| / temperature``; within 1 ulp unless the branches
    cancel). Gradient w.r.t. x: ``w (1 - w) (if_above - if_below) /
    temperature``, ``1 / (4 temperature)`` for the step at the threshold, 0 in
    the saturated tails.

    dtypes: computed by `smooth_where` (float16/bfloat16 in float32, float32 in
    float64, rounded once); output in the layer's compute dtype.

    Args:
      threshold: the switch point (float, default 0.0).
      temperature: positive width of the blend (float, default 1.0).
      **kwargs: base `keras.layers.Layer` arguments.

    Raises:
      ValueError: if `temperature` is not a positive finite number, or if the
        layer is called on a list whose length is not 3.

    Example:
      >>> so.layers.SmoothSwitch(threshold=0.0, temperature=0.5)(np.array([0.0, 100.0]))
      array([0.5, 1. ], dtype=float32)
    """

    def __init__(self, threshold=0.0, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            t = float("nan")
        if not (t > 0 and t < float("inf")):
            raise ValueError(
                "safeops.layers.SmoothSwitch: argument 'temperature' must be a positive finite "
                f"number; got {temperature!r}")
        self.threshold = float(threshold)
        self.temperature = t
        self.supports_masking = True

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 3:
                raise ValueError(
                    "safeops.layers.SmoothSwitch: argument 'inputs' must be x or "
                    f"[x, if_above, if_below]; got a list of {len(inputs)}")
            x, above, below = inputs
        else:
            x = inputs
            # scalars, broadcast by smooth_where: no tensors of ones and zeros to read
            above, below = tf.ones((), x.dtype), tf.zeros((), x.dtype)
        out = smooth_where(x, tf.constant(self.threshold, x.dtype), tf.cast(above, x.dtype),
                           tf.cast(below, x.dtype), temperature=self.temperature)
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
                input_shape[0], (list, tuple)):
            return tuple(input_shape[1])
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"threshold": self.threshold, "temperature": self.temperature})
        return config
