"""The case registry: each op family adds `Case`s from a module in `benchmarks/cases/`."""

import dataclasses
import re
from typing import Callable, Dict, Optional, Sequence

import numpy as np

__all__ = ["Case", "Sweep", "SIZES", "pick", "register", "register_sweep", "cases", "sweeps",
           "size_label", "memory_traffic", "elementwise_traffic", "reduction_traffic"]

SIZES = ("smoke", "quick", "full")

# a trailing name component that states a size ("8M", "4096x4096", "1Mx", "b128"): dropped at
# registration, because the name shown in a report always carries the size actually run
_SIZE_TOKEN = re.compile(r"^(b|N)?\d*(\.\d+)?[KMG]?(x(\d+[KMG]?)?)*$")


def pick(size, full, quick, smoke):
    """The value for the size mode `size` ("full", "quick" or "smoke")."""
    if size not in SIZES:
        raise ValueError(f"benchmarks: size mode must be one of {SIZES}; got {size!r}")
    return {"full": full, "quick": quick, "smoke": smoke}[size]


@dataclasses.dataclass
class Case:
    """One benchmark case: a baseline and the safeops op on the same inputs.

    Attributes:
      name: unique id, ``family/op`` or ``family/op/variant``, without a size: the report
        names each result ``<name>/<size actually run>`` (`size_label`); a trailing size
        component is dropped at registration (``"summation/reduce_sum/8M"`` is stored as
        ``"summation/reduce_sum"``).
      family: the op family (``"summation"``).
      make_inputs: ``make_inputs(rng, size) -> tuple`` of NumPy arrays or
        tensors (made once per case, placed on the measured device); `size` is
        "smoke" (tiny, for the tests), "quick" (`make bench`) or "full" (the size the
        target is stated for); `rng` is seeded from ``--seed``.
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
      bar: the speed target for this case, e.g. ``{"graph/fwd": 2.0}`` (ratio safeops /
        baseline); the report names it by what it is ("target: <= 2.0x tf.reduce_sum").
      bar_s: absolute targets in seconds on the safeops time, ``{"eager/fwd": 10.0}``.
      bar_limit: targets on the distance from the machine's bandwidth, ``{"graph/fwd":
        1.3}``: the safeops time at most 1.3x the time its `bytes_moved` take at the
        bandwidth measured in the same run.
      bar_source: a short note on the target (the size and mode it is stated for, a
        stretch goal) or why there is none; no tracker references.
      bytes_moved: for a memory-bound case (sums, element-wise ops), ``bytes_moved(inputs)
        -> {"fwd": {"read": int, "written": int}, "fwd+bwd": {...}}``: the bytes the op
        must read and write at the least (`memory_traffic`, `elementwise_traffic`,
        `reduction_traffic`). The report divides them by the measured time and sets the
        result next to the machine's bandwidth measured in the same run. None: not
        memory-bound (matmul, a training step), no bandwidth figure.
      size_label: ``size_label(inputs) -> str``, the size shown in the result's name;
        default `size_label` (the shape of the largest input).
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
    bar_limit: Dict[str, float] = dataclasses.field(default_factory=dict)
    bar_source: str = ""
    fixed_inputs: str = ""
    quick: bool = True
    extra: Dict[str, object] = dataclasses.field(default_factory=dict)
    bytes_moved: Optional[Callable] = None
    size_label: Optional[Callable] = None


def _count(n):
    """4194304 -> "4M", 4096 -> "4K", 1000 -> "1000" (binary prefixes, exact only)."""
    for shift, unit in ((30, "G"), (20, "M"), (10, "K")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def size_label(inputs):
    """The size of a case's inputs for its name: the largest input's shape ("8M" for a
    vector, "1024x4096" for a matrix)."""
    arrays = [np.asarray(x) for x in inputs]
    if not arrays:
        return "0"
    shape = max(arrays, key=lambda a: a.size).shape
    if len(shape) == 0:
        return "scalar"
    if len(shape) == 1:
        return _count(shape[0])
    return "x".join(str(d) for d in shape)


def memory_traffic(inputs, written_fwd, written_grads=None):
    """The least traffic of a memory-bound case: every input read once, every output
    written once; forward+backward also writes one gradient per floating input (or
    `written_grads` bytes). Returns the `Case.bytes_moved` dict."""
    arrays = [np.asarray(x) for x in inputs]
    read = sum(a.nbytes for a in arrays)
    if written_grads is None:
        written_grads = sum(a.nbytes for a in arrays if np.issubdtype(a.dtype, np.floating))
    return {"fwd": {"read": int(read), "written": int(written_fwd)},
            "fwd+bwd": {"read": int(read), "written": int(written_fwd + written_grads)}}


def elementwise_traffic(outputs=1):
    """`Case.bytes_moved` of an element-wise op with `outputs` outputs of the largest
    input's size."""
    def traffic(inputs):
        big = max((np.asarray(x) for x in inputs), key=lambda a: a.nbytes)
        return memory_traffic(inputs, outputs * big.nbytes)
    return traffic


def reduction_traffic(axis=None):
    """`Case.bytes_moved` of a reduction of the first input over `axis` (None: all)."""
    def traffic(inputs):
        x = np.asarray(inputs[0])
        kept = 1 if axis is None else x.size // x.shape[axis]
        return memory_traffic(inputs, kept * x.itemsize)
    return traffic


def base_name(name):
    """`name` without a trailing size component (see `Case.name`)."""
    head, _, last = name.rpartition("/")
    if head and head.count("/") >= 1 and _SIZE_TOKEN.match(last) and any(
            c.isdigit() for c in last):
        return head
    return name


_CASES = {}


def register(case):
    """Add a case; names must be unique. Returns the case (usable as a helper)."""
    case.name = base_name(case.name)
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
