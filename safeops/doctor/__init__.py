"""The numerics doctor: find numerical hazards before they become NaNs.

``so.doctor.audit(fn_or_model, *inputs)`` lists hazardous ops with the user's
source line and the safeops replacement; ``explain_gradients`` says why a
gradient is None, zero or non-finite; ``compare_devices`` runs a function on
every device and execution mode and reports ulp differences;
``weights_report`` checks a model's weights (scale, float16/bfloat16/int8
fitness). ``python -m safeops.doctor model.keras`` runs the weights report and
an audit from the command line and exits non-zero on high-severity hazards.
"""

from safeops.doctor.audit import Finding, audit, format_findings
from safeops.doctor.devices import DeviceDifference, compare_devices
from safeops.doctor.gradients import GradientIssue, explain_gradients
from safeops.doctor.weights import WeightStats, weights_report

__all__ = [
    "DeviceDifference",
    "Finding",
    "GradientIssue",
    "WeightStats",
    "audit",
    "compare_devices",
    "explain_gradients",
    "format_findings",
    "weights_report",
]
