"""The legacy path: a tf_keras model goes to tfmot's `quantize_model`.

WARNING, process-wide effect: importing `tensorflow_model_optimization` sets
the environment variable ``TF_USE_LEGACY_KERAS=1`` for the whole process
(tfmot issues #1119, #1140, #1144, #1180, #1270), so every later ``tf.keras``
in that process may resolve to tf_keras instead of Keras 3. safeops imports
tfmot only inside `quantize_legacy_model`, never at ``import safeops``; run the
legacy path in its own process if the same program also uses Keras 3.
"""

from safeops._core.registry import new

__all__ = ["quantize_legacy_model"]


@new("hands a tf_keras model to tfmot's quantize_model, importing tfmot only then")
def quantize_legacy_model(model):
    """Quantization-aware copy of a tf_keras model via tfmot (imported only now).

    Calls ``tensorflow_model_optimization.quantization.keras.quantize_model``:
    tfmot's default 8-bit scheme (per-channel conv weights, per-tensor Dense,
    moving-average activation ranges). Side effect: importing tfmot sets
    ``TF_USE_LEGACY_KERAS=1`` in this process (see the module docstring).

    Args:
      model: a tf_keras Sequential or Functional model.

    Returns:
      tfmot's quantization-aware tf_keras model.

    Raises:
      ImportError: tfmot or tf_keras is not installed (``pip install
        safeops[tfmot]``).
      TypeError: ``model`` is not a tf_keras model.
    """
    if not any(c.__module__.startswith("tf_keras") for c in type(model).__mro__):
        raise TypeError("safeops.quantization.quantize_legacy_model: argument 'model' must be "
                        f"a tf_keras model; got {type(model).__module__}.{type(model).__name__}"
                        " (use safeops.quantization.quantize_model for Keras 3 models)")
    try:
        import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1
    except ImportError as err:
        raise ImportError("safeops.quantization.quantize_legacy_model needs "
                          "tensorflow-model-optimization and tf-keras (pip install "
                          f"'safeops[tfmot]'): {err}") from None
    return tfmot.quantization.keras.quantize_model(model)
