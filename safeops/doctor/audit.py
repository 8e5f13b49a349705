"""`audit`: trace a function, `tf.function` or Keras model and report numerical hazards."""

import dataclasses
from typing import Optional, Tuple

from safeops._core.registry import new
from safeops.doctor import _graph, _hazards
from safeops.doctor._report import format_table

__all__ = ["Finding", "SEVERITIES", "audit", "format_findings"]

SEVERITIES = ("high", "medium", "low")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One hazard found by `audit`.

    Args:
      severity: "high" (inf/NaN on these inputs, or an infinite/NaN gradient),
        "medium" (within reach of failure, or a pattern known to fail), "low"
        (accuracy loss, e.g. cancellation).
      hazard: short name of the hazard ("log-of-softmax", "exp overflow", ...).
      op_type: the TF op type ("Log").
      op_name: the op's name in the traced graph.
      file: the user's source file that created the op (None for built-in layers).
      line: the line in `file`.
      code: the text of that line.
      input_range: (min, max, n_nan, n_inf) of the hazardous input.
      message: what goes wrong, in words.
      replacement: the safeops op (or rewrite) to use instead.
    """

    severity: str
    hazard: str
    op_type: str
    op_name: str
    file: Optional[str]
    line: Optional[int]
    code: str
    input_range: Optional[Tuple[float, float, int, int]]
    message: str
    replacement: str

    @property
    def location(self):
        return f"{self.file}:{self.line}" if self.file else self.op_name


def format_findings(findings):
    """The findings as a text table (what `audit` prints).

    Args:
      findings: a list of `Finding` (as `audit` returns).

    Returns:
      A string.
    """
    if not findings:
        return "safeops.doctor.audit: no numerical hazards found"
    rows = []
    for f in findings:
        rng = f.input_range
        rng_text = "-" if rng is None else (
            f"[{rng[0]:.3g}, {rng[1]:.3g}]" + (f" nan={rng[2]}" if rng[2] else "")
            + (f" inf={rng[3]}" if rng[3] else ""))
        where = f"{_short(f.file)}:{f.line}" if f.file else "-"
        rows.append((f.severity, f.hazard, f"{f.op_type} {f.op_name}", where, rng_text,
                     f.replacement))
    table = format_table(("severity", "hazard", "op", "source", "input range", "use instead"), rows)
    details = "\n".join(f"  [{f.severity}] {f.location}: {f.message}" + (f"\n      {f.code}" if f.code else "")
                        for f in findings)
    return f"safeops.doctor.audit: {len(findings)} finding(s)\n{table}\n{details}"


def _short(path):
    import os
    parts = path.split(os.sep)
    return os.sep.join(parts[-2:])


@new("traces a function, tf.function or Keras model and lists numerical hazards with the user's source line and the safeops replacement")
def audit(target, *example_inputs, min_severity="low", verbose=True):
    """Find numerical hazards in a function, `tf.function` or Keras model on example inputs.

    Replaces nothing in TF: it is a diagnostic. It traces `target` to a graph
    (inside a `tf.function`, so the user's code is not modified), evaluates
    every intermediate tensor once on `example_inputs`, and applies one rule
    per op family:

    * ``Log``/``Log1p``: inputs reaching 0 (or -1) or <= 10 * tiny(dtype)
      (1.2e-37 in float32) — high; log of a softmax/sigmoid output, of
      ``1 - exp``, ``1 + exp`` or ``sum(exp)`` — medium (names so.log_softmax,
      so.log_sigmoid, so.log1mexp, so.softplus, so.reduce_logsumexp);
    * ``Exp``/``Expm1``: inputs >= floor(log(max(dtype))) (88 in float32, 11 in
      float16) — medium, high if the result overflows (so.safe_exp);
    * ``RealDiv``/``Reciprocal``: a zero denominator or an overflowing quotient —
      high; |denominator| < eps(dtype) — medium; division by a trainable
      variable — medium (so.safe_divide, so.divide_no_nan, so.safe_reciprocal);
    * ``Sqrt``/``Rsqrt`` at or below 0 (infinite gradient) — high (so.sqrt, so.norm);
    * ``Select``/``SelectV2`` whose unselected branch is inf/NaN (NaN gradient)
      — high (so.safe_where);
    * float16/bfloat16 ``Sum``/``Mean``/``Prod``/``Cumsum`` that overflow — high,
      or whose sum of |x| exceeds the format's max — medium (so.reduce_sum, so.promote);
    * ``Sub`` of computed operands losing more than p/2 of the p significand
      bits (12 of 24 in float32) on some element — low;
    * any other op that turns finite inputs into inf/NaN — high.

    Ops created by safeops ops (recognised from their creation traceback, which
    runs through the safeops package) are treated as safe. Ops inside nested
    `tf.function`s and control-flow bodies are not inspected.

    Error bound: not applicable (a diagnostic); a finding is reported only when
    the example inputs or the graph's structure show the hazard, so a clean
    program on its inputs gives an empty list. Gradients are not computed (see
    `explain_gradients`); dtypes: every floating dtype is inspected.

    Args:
      target: a Python function, a `tf.function` or a `keras.Model`.
      *example_inputs: the inputs to trace and evaluate on (arrays or tensors).
      min_severity: report only findings at least this severe ("low", "medium", "high").
      verbose: print the table of findings.

    Returns:
      A list of `Finding`, most severe first, then in graph order.

    Raises:
      TypeError: `target` cannot be traced (not callable, a ConcreteFunction),
        or `min_severity` is not one of the levels.
      ValueError: (or the TypeError the traced function raised) tracing on the
        example inputs failed, e.g. a wrong shape; the message includes the
        traced function's own error and the expected signature.

    Example:
      >>> def loss(z, y):
      ...     p = tf.exp(z) / tf.reduce_sum(tf.exp(z), -1, keepdims=True)
      ...     return -tf.reduce_sum(y * tf.math.log(p), -1)
      >>> so.doctor.audit(loss, [[100.0, 0.0]], [[0.0, 1.0]])[0].replacement
      'so.log_softmax(logits), ...'
    """
    op = "safeops.doctor.audit"
    if min_severity not in _RANK:
        raise TypeError(f"{op}: argument 'min_severity' must be one of {SEVERITIES}; got {min_severity!r}")
    fn, _ = _graph.as_callable(target, op)
    trace = _graph.trace_and_evaluate(fn, example_inputs, target, op)
    findings = []
    for o in trace.ops:
        if o.type not in _hazards.RULES and o.type in _hazards._IGNORED:
            continue
        src = _graph.op_source(o)
        if src.safeops_fn is not None:
            continue
        for sev, hazard, rng, msg, repl in _hazards.check(o, trace):
            if _RANK[sev] > _RANK[min_severity]:
                continue
            findings.append(Finding(sev, hazard, o.type, o.name, src.file, src.line, src.code,
                                    rng, msg, repl))
    findings.sort(key=lambda f: _RANK[f.severity])  # stable: graph order within a level
    if verbose:
        print(format_findings(findings))
    return findings
