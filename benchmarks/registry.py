"""The case registry: each op family adds `Case`s from a module in `benchmarks/cases/`."""

import dataclasses
from typing import Callable, Dict, Optional, Sequence

__all__ = ["Case", "Sweep", "SIZES", "pick", "register", "register_sweep", "cases", "sweeps"]

SIZES = ("smoke", "quick", "full")


def pick(size, full, quick, smoke):
    """The value for the size mode `size` ("full", "quick" or "smoke")."""
    if size not in SIZES:
        raise ValueError(f"benchmarks: size mode must be one of {SIZES}; got {size!r}")
    return {"full": full, "quick": quick, "smoke": smoke}[size]


@dataclasses.dataclass
class Case:
    """One benchmark case: a baseline and the safeops op on the same inputs.

    Attributes:
      name: unique id, ``family/op/size`` (``"summation/reduce_sum/8M"``).
      family: the op family (``"summation"``).
      make_inputs: ``make_inputs(rng, size) -> tuple`` of NumPy arrays or
        tensors (made once per case, placed on the measured device); `size` is
        "smoke" (tiny, for the tests), "quick" (`make bench`) or "full" (the op
        issue's size); `rng` is seeded from ``--seed``.
      baseline: the function a user has today (the TF op or the naive code);
        None for a case timed on its own (``bar_s``: an absolute bar).
      candidate: the safeops replacement, same arguments.
      baseline_name / candidate_name: labels for the report.
      grad: also time forward+backward (gradients w.r.t. the floating inputs).
      modes: subset of ("graph", "xla", "eager"); "xla" is `jit_compile=True`;
        "eager" calls the Python functions as they are (for Python-level code:
        `model.fit` with a callback, the doctor's audit).
      accuracy: optional ``accuracy(inputs, outputs) -> dict`` where outputs maps
        a label ("baseline", "safeops", anchors...) to its NumPy forward result;
        returns ``{"metric": "ulp"|"relerr"|..., "<label>": error, ...}``.
        Errors are measured against `safeops.testing` references.
      anchors: extra timed baselines ``{label: fn}`` (e.g. TFP's Kahan sum),
        measured in the same interleaved loop, forward only, graph mode.
      accuracy_only: ``{label: fn(inputs) -> NumPy}`` references that are not
        timed (math.fsum).
      host_anchors: ``{label: fn(*numpy_inputs)}`` timed on the host in the same
        interleaved loop as the baseline (NumPy's float64-accumulated sum).
      accuracy_na: why an accuracy column makes no sense for this case (e.g.
        "overhead only"); reported as the metric "n/a: <reason>".
      bar: the issue's speed bar for this case, e.g. ``{"graph/fwd": 2.0}``
        (ratio safeops / baseline).
      bar_s: absolute bars in seconds on the safeops time, ``{"eager/fwd": 10.0}``.
      bar_source: where the bar comes from ("issue 3: ..."), or why there is none.
      fixed_inputs: why the inputs do not depend on the seed (empty: they must).
      quick: run in ``--quick`` mode.
      extra: free-form facts shown in the report (condition number, n).
    """

    name: str
    family: str
    make_inputs: Callable
    baseline: Callable
    candidate: Callable
    baseline_name: str = "tf"
    candidate_name: str = "safeops"
    grad: bool = True
    modes: Sequence[str] = ("graph", "xla")
    accuracy: Optional[Callable] = None
    anchors: Dict[str, Callable] = dataclasses.field(default_factory=dict)
    accuracy_only: Dict[str, Callable] = dataclasses.field(default_factory=dict)
    host_anchors: Dict[str, Callable] = dataclasses.field(default_factory=dict)
    accuracy_na: str = ""
    bar: Dict[str, float] = dataclasses.field(default_factory=dict)
    bar_s: Dict[str, float] = dataclasses.field(default_factory=dict)
    bar_source: str = ""
    fixed_inputs: str = ""
    quick: bool = True
    extra: Dict[str, object] = dataclasses.field(default_factory=dict)


_CASES = {}


def register(case):
    """Add a case; names must be unique. Returns the case (usable as a helper)."""
    if case.name in _CASES:
        raise ValueError(f"benchmark case {case.name!r} registered twice")
    _CASES[case.name] = case
    return case


def cases():
    """All registered cases, in registration order."""
    return list(_CASES.values())


@dataclasses.dataclass
class Sweep:
    """An accuracy sweep drawn as one plot (e.g. relative error vs condition number).

    Attributes:
      name: unique id, also the PNG file name (``"sum_error_vs_condition"``).
      family: the op family.
      title, xlabel, ylabel: plot labels.
      run: ``run(size, seed) -> {"x": [...], "series": {label: [y, ...]}}`` or,
        for a bar chart, ``{"categories": [...], "series": {label: [y, ...]}}``;
        `size` as for `Case.make_inputs`, `seed` from ``--seed``. A value of None
        means "not measured" (e.g. TF has no such op): no bar, "-" in the table.
      log_x, log_y: logarithmic axes.
      kind: "line" or "bar".
    """

    name: str
    family: str
    title: str
    xlabel: str
    ylabel: str
    run: Callable
    log_x: bool = True
    log_y: bool = True
    kind: str = "line"


_SWEEPS = {}


def register_sweep(sweep):
    """Add an accuracy sweep; names must be unique."""
    if sweep.name in _SWEEPS:
        raise ValueError(f"benchmark sweep {sweep.name!r} registered twice")
    _SWEEPS[sweep.name] = sweep
    return sweep


def sweeps():
    """All registered sweeps, in registration order."""
    return list(_SWEEPS.values())
