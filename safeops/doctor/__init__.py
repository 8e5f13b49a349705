"""The numerics doctor: find numerical hazards before they become NaNs.

``so.doctor.audit(fn_or_model, *inputs)`` lists hazardous ops with the user's
source line and the safeops replacement; ``explain_gradients`` says why a
gradient is None, zero or non-finite; ``compare_devices`` runs a function on
every device and execution mode and reports ulp differences;
``weights_report`` checks a model's weights (scale, float16/bfloat16/int8
fitness); ``profile`` measures the bits each layer of a Keras model loses in a
precision against float64, and ``advise`` picks the cheapest dtype per layer
within an error budget (a Keras ``DTypePolicyMap``). ``python -m safeops.doctor
model.keras`` runs the weights report and an audit from the command line
(``python -m safeops.doctor profile model.keras`` the profile); exit status 1
means hazards found, 2 that the doctor could not run.
"""

from safeops.doctor.advise import Advice, advise
from safeops.doctor.audit import Finding, audit, format_findings
from safeops.doctor.devices import DeviceDifference, compare_devices
from safeops.doctor.gradients import GradientIssue, explain_gradients
from safeops.doctor.precision import LayerPrecision, PrecisionProfile, profile
from safeops.doctor.weights import WeightStats, weights_report

__all__ = [
    "Advice",
    "DeviceDifference",
    "Finding",
    "GradientIssue",
    "LayerPrecision",
    "PrecisionProfile",
    "WeightStats",
    "advise",
    "audit",
    "compare_devices",
    "explain_gradients",
    "format_findings",
    "profile",
    "weights_report",
]
