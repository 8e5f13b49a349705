"""`compare_devices`: run a function and its gradient on every device and execution mode."""

import dataclasses

import numpy as np
import tensorflow as tf

from safeops import testing
from safeops._core.registry import new
from safeops.doctor._graph import to_numpy
from safeops.doctor._report import format_table

__all__ = ["DeviceDifference", "compare_devices", "format_device_differences"]

MODES = ("eager", "function", "jit_compile")


@dataclasses.dataclass(frozen=True)
class DeviceDifference:
    """The difference of one output or gradient in one run from the reference run.

    Args:
      quantity: "output[i]" or "grad[<input or variable>]".
      run: "<device> <mode>" of the run compared.
      reference: "<device> <mode>" of the reference run (the first one).
      dtype: the quantity's dtype.
      max_ulp: the largest ulp distance over its elements (None if it could not be compared).
      flagged: True when `max_ulp` exceeds the threshold, or the run failed / differs in shape.
      note: the error of a failed run, or a shape mismatch.
    """

    quantity: str
    run: str
    reference: str
    dtype: str
    max_ulp: object
    flagged: bool
    note: str = ""


def format_device_differences(diffs):
    """The comparison as a text table (what `compare_devices` prints).

    Args:
      diffs: a list of `DeviceDifference` (as `compare_devices` returns).

    Returns:
      A string.
    """
    rows = [(d.quantity, d.run, d.dtype, "-" if d.max_ulp is None else int(d.max_ulp),
             "YES" if d.flagged else "", d.note) for d in diffs]
    ref = diffs[0].reference if diffs else "-"
    return (f"safeops.doctor.compare_devices (reference: {ref})\n"
            + format_table(("quantity", "run", "dtype", "max ulp", "flagged", "note"), rows))


def _runner(fn, mode, names):
    def body(*args):
        with tf.GradientTape() as tape:
            for a in args:
                if a.dtype.is_floating:
                    tape.watch(a)
            out = fn(*args)
            parts = [tf.reduce_sum(tf.cast(o, tf.float64)) for o in tf.nest.flatten(out)
                     if o.dtype.is_floating]
            total = tf.add_n(parts) if parts else None
        variables = list(tape.watched_variables())
        floats = [a for a in args if a.dtype.is_floating]
        names[:] = [v.name for v in variables]  # Python strings, recorded at trace time
        if total is None:
            return out, []
        grads = tape.gradient(total, floats + variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return out, grads

    if mode == "eager":
        return body
    return tf.function(body, jit_compile=(mode == "jit_compile"), autograph=False)


def _numpy(x):
    return None if x is None else to_numpy(x)


@new("runs a function and its gradient on every device and execution mode and reports ulp differences")
def compare_devices(fn, *inputs, devices=None, modes=MODES, threshold_ulp=4, verbose=True):
    """Run `fn` and its gradient on every device and mode; report max ulp differences.

    Replaces comparing CPU and GPU results by eye. Method: for each device (default:
    every logical CPU and GPU device) and each mode ("eager", "function" =
    `tf.function`, "jit_compile" = `tf.function(jit_compile=True)`, where XLA may
    fuse and reassociate), the outputs of `fn(*inputs)` and the gradient of the sum
    of its floating outputs w.r.t. every floating input and every variable it reads
    are computed. Each is compared with the first run (first device, first mode) by
    `safeops.testing.ulp_distance` in its own dtype; NaN against NaN counts 0,
    NaN/inf against a finite value counts the maximum.

    Error bound: exact (the ulp distance is computed exactly). A deterministic,
    order-independent function gives 0 everywhere; reductions and fused ops
    may legitimately differ by a few ulps between devices, hence the threshold.
    Gradient: this reports gradients, it does not define one. dtypes: any
    floating output/gradient is compared; other outputs are compared exactly.

    Args:
      fn: a Python function, `tf.function` or Keras model.
      *inputs: its inputs (copied to each device).
      devices: device names ("/CPU:0", "/GPU:0"); default all logical CPUs and GPUs.
      modes: a subset of ("eager", "function", "jit_compile").
      threshold_ulp: differences above this many ulps are flagged (default 4).
      verbose: print the table.

    Returns:
      A list of `DeviceDifference`, one per (run other than the reference, quantity).

    Raises:
      TypeError: `fn` is not callable.
      ValueError: an unknown mode, no device, or a negative threshold.

    Example:
      >>> diffs = so.doctor.compare_devices(lambda x: x * x, tf.ones([3]), verbose=False)
      >>> max(d.max_ulp for d in diffs)
      0
    """
    op = "safeops.doctor.compare_devices"
    if not callable(fn):
        raise TypeError(f"{op}: argument 'fn' must be callable; got {type(fn).__name__}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"{op}: argument 'modes' must be a non-empty subset of {MODES}; got {modes}")
    if threshold_ulp < 0:
        raise ValueError(f"{op}: argument 'threshold_ulp' must be >= 0; got {threshold_ulp}")
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]
    if not devices:
        raise ValueError(f"{op}: argument 'devices' is empty")
    try:
        import keras
        if isinstance(fn, keras.Model):
            model = fn
            fn = lambda *a: model(a[0] if len(a) == 1 else list(a), training=False)  # noqa: E731
    except ImportError:  # pragma: no cover
        pass
    runs = []
    for dev in devices:
        for mode in modes:
            label = f"{dev} {mode}"
            try:
                with tf.device(dev):
                    args = [tf.identity(tf.convert_to_tensor(x)) for x in inputs]
                    vnames = []
                    out, grads = _runner(fn, mode, vnames)(*args)
                names = [f"output[{i}]" for i in range(len(tf.nest.flatten(out)))]
                floats = [i for i, a in enumerate(args) if a.dtype.is_floating]
                names += [f"grad[input {i}]" for i in floats] + [f"grad[{n}]" for n in vnames]
                values = [_numpy(x) for x in tf.nest.flatten(out)] + [_numpy(g) for g in grads]
                runs.append((label, dict(zip(names, values)), ""))
            except Exception as err:  # a mode that cannot run (e.g. XLA-unsupported op)
                runs.append((label, None, f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"))
    ref_label, ref, ref_err = runs[0]
    if ref is None:
        raise ValueError(f"{op}: the reference run {ref_label} failed: {ref_err}")
    diffs = []
    for label, vals, err in runs[1:]:
        for name, expected in ref.items():
            dtype = expected.dtype.name if expected is not None else "-"
            if vals is None:
                diffs.append(DeviceDifference(name, label, ref_label, dtype, None, True, err))
                continue
            actual = vals.get(name)
            if actual is None or expected is None or actual.shape != expected.shape:
                diffs.append(DeviceDifference(name, label, ref_label, dtype, None, True,
                                              "missing or different shape"))
                continue
            if expected.dtype.kind == "f" or dtype == "bfloat16":
                dist = int(np.max(testing.ulp_distance(actual, expected, dtype), initial=0))
            else:
                dist = int(np.count_nonzero(actual != expected))
            diffs.append(DeviceDifference(name, label, ref_label, dtype, dist, dist > threshold_ulp))
    if verbose:
        print(format_device_differences(diffs))
    return diffs
