"""`so.quantization`: quantization-aware training for Keras 3, int8 TFLite export, evaluation.

* `quantize_model`: QAT copy of a Keras 3 Sequential/Functional model (a
  tf_keras model is handed to tfmot, imported only then: see `legacy`).
* `export_tflite`: full-integer int8 TFLite flatbuffer; fails naming each op
  left in float unless allowed (`float_ops` lists them).
* `QuantizeConfig`: how a custom layer class is quantized.
* `evaluate_quantization`, `cast_weights`: output and weight error of a
  quantized or float16 model against its float reference.
* `fake_quant`, `MovingAverageQuantizer`, `QuantizeWrapper`: the building blocks.

Importing this package imports neither `tensorflow.lite`'s converter nor tfmot.
"""

from safeops.quantization.evaluate import EvaluationReport, cast_weights, evaluate_quantization
from safeops.quantization.export import export_tflite, float_ops
from safeops.quantization.fake_quant import MovingAverageQuantizer, fake_quant
from safeops.quantization.legacy import quantize_legacy_model
from safeops.quantization.wrappers import (QuantizationReport, QuantizeConfig, QuantizeWrapper,
                                           calibrate, quantization_report, quantize_model)

__all__ = [
    "EvaluationReport",
    "MovingAverageQuantizer",
    "QuantizationReport",
    "QuantizeConfig",
    "QuantizeWrapper",
    "calibrate",
    "cast_weights",
    "evaluate_quantization",
    "export_tflite",
    "fake_quant",
    "float_ops",
    "quantization_report",
    "quantize_legacy_model",
    "quantize_model",
]
