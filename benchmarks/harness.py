"""The measuring instrument: interleaved A/B timing and side-by-side accuracy.

For each case, device and mode (graph, `jit_compile=True`) and for forward and
forward+backward, the baseline and the safeops function are compiled once,
warmed up, then called alternately (A B A B ...). Each call is timed on its own
and synchronised before the clock is read (`tf.experimental.sync_devices` on
GPU); the ratio is computed pair by pair (B_i / A_i) and its median reported,
with min and max of each side.

Two instruments calibrate the rest: the A/A check (`AA_CASE`: `tf.reduce_sum` against
itself, run first and last; its ratio must stay within `report.AA_RANGE`, else nothing
measured in between is evidence) and a STREAM-like bandwidth measurement
(`measure_bandwidth`: a copy and a read of a buffer larger than the caches) against which
the memory-bound cases' achieved bytes per second are set.
"""

import math
import statistics
import time

import numpy as np
import tensorflow as tf

from benchmarks.registry import Case, pick, reduction_traffic

__all__ = ["AA_CASE", "SAMPLE_MIN_S", "measure_bandwidth", "measure_case", "time_interleaved"]

# One timed sample of a case lasts at least this long (calls are batched to reach it): on a
# small shared machine a sample of one 2 ms call takes a scheduling hiccup whole, and a
# median of 7 pairwise ratios then moves by +-0.3x; batching evens it out on both sides alike.
SAMPLE_MIN_S = 10e-3

AA_CASE = Case(
    name="harness/aa_check_reduce_sum",
    family="harness",
    make_inputs=lambda rng, size: (rng.standard_normal(
        pick(size, full=1 << 20, quick=1 << 20, smoke=1 << 10)).astype(np.float32),),
    baseline=tf.reduce_sum,
    candidate=tf.reduce_sum,
    baseline_name="tf.reduce_sum",
    candidate_name="tf.reduce_sum",
    accuracy_na="A/A timing check (the same op on both sides)",
    bar_source="none: the A/A check of the timing method; its ratio must lie in 0.9-1.1x",
    bytes_moved=reduction_traffic(),
    # every mode a target can be stated for: eager per-call costs are the most sensitive
    # to a busy machine
    modes=("graph", "xla", "eager"),
    extra={"purpose": "A/A check of the timing method, run first and last"},
)


def _sync(device_type):
    if device_type == "GPU" and hasattr(tf.experimental, "sync_devices"):
        tf.experimental.sync_devices()


def _float_positions(inputs):
    return [i for i, x in enumerate(inputs) if x.dtype.is_floating]


def _forward_backward(fn, inputs):
    """fn's value plus its gradient w.r.t. every floating input (sum of outputs)."""
    positions = _float_positions(inputs)

    def run(*args):
        with tf.GradientTape() as tape:
            for i in positions:
                tape.watch(args[i])
            out = fn(*args)
            total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in tf.nest.flatten(out)])
        grads = tape.gradient(total, [args[i] for i in positions],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return out, grads

    return run


def compile_fn(fn, inputs, mode, direction):
    """A `tf.function` for (mode, direction); the plain Python function in "eager" mode."""
    body = fn if direction == "fwd" else _forward_backward(fn, inputs)
    if mode == "eager":
        return body
    return tf.function(body, jit_compile=(mode == "xla"), reduce_retracing=True)


def time_interleaved(fns, inputs, repeats, warmup, device_type="CPU", min_time=0.0):
    """Time each function in `fns` on `inputs`, interleaved; returns lists of seconds.

    Each round calls every function once, in order. Warm-up rounds are discarded.
    `min_time` (seconds): calls per sample are batched until one sample lasts at
    least this long (used for very fast ops); times are per call.
    """
    for _ in range(warmup):
        for f in fns:
            f(*inputs)
            _sync(device_type)
    calls = 1
    if min_time > 0:
        t0 = time.perf_counter()
        fns[0](*inputs)
        _sync(device_type)
        one = max(time.perf_counter() - t0, 1e-7)
        calls = max(1, int(math.ceil(min_time / one)))
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for k, f in enumerate(fns):
            _sync(device_type)
            t0 = time.perf_counter()
            for _ in range(calls):
                out = f(*inputs)
            _sync(device_type)
            if device_type == "CPU":
                tf.nest.map_structure(lambda t: t, out)  # outputs are ready on return
            samples[k].append((time.perf_counter() - t0) / calls)
    return samples


def _summary(samples):
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
    }


def _message(err):
    """The informative line of an exception (TF's 'in user code:' traces end with it)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return ""
    return (lines[-1] if len(lines) > 1 and lines[0].endswith(":") else lines[0])[:300]


def _host(fn, arrays):
    """A host (NumPy) anchor called like the TF functions: ignores the tensors."""
    return lambda *_: fn(*arrays)


def measure_case(case, inputs, device, repeats, warmup, modes=None, last_direction_only=False):
    """Timings and accuracy of one case on one device.

    Returns a dict: ``{"timings": [...], "accuracy": {...} | None}`` where each
    timing row has mode, direction, baseline/safeops summaries, the pairwise
    ratio (median, min, max), and the anchors' summaries (TF anchors and host
    NumPy anchors, graph mode forward only). A case without a baseline gets
    only the safeops summary and its absolute bar (``bar_s``). A row that
    cannot be built or run is ``{"mode", "direction", "error"}``.
    `modes`: the modes to run (default all of the case's); `last_direction_only`:
    only forward+backward where the case has it (the smoke run).
    """
    device_type = device.device_type
    rows = []
    traffic = case.bytes_moved(inputs) if case.bytes_moved is not None else {}
    directions = ["fwd", "fwd+bwd"] if case.grad else ["fwd"]
    if last_direction_only:
        directions = directions[-1:]
    arrays = [np.asarray(x) for x in inputs]
    with tf.device(device.name):
        tensors = tuple(tf.identity(tf.convert_to_tensor(x)) for x in inputs)
        for mode in [m for m in case.modes if modes is None or m in modes]:
            for direction in directions:
                try:
                    fns = []
                    if case.baseline is not None:
                        fns.append(compile_fn(case.baseline, tensors, mode, direction))
                    fns.append(compile_fn(case.candidate, tensors, mode, direction))
                    anchor_fns = {}
                    if mode == "graph" and direction == "fwd":
                        anchor_fns = {k: compile_fn(f, tensors, mode, direction)
                                      for k, f in case.anchors.items()}
                        anchor_fns.update({k: _host(f, arrays)
                                           for k, f in case.host_anchors.items()})
                    fns += list(anchor_fns.values())
                    samples = time_interleaved(fns, tensors, repeats, warmup, device_type,
                                               min_time=SAMPLE_MIN_S if repeats > 1 else 0.0)
                except Exception as err:  # an op without an XLA kernel, say: reported, not fatal
                    rows.append({"mode": mode, "direction": direction,
                                 "error": f"{type(err).__name__}: {_message(err)}"})
                    continue
                key = f"{mode}/{direction}"
                row = {"mode": mode, "direction": direction}
                if case.baseline is not None:
                    base, ours, rest = samples[0], samples[1], samples[2:]
                    ratios = [b / a for a, b in zip(base, ours)]
                    row["baseline"] = _summary(base)
                    row["safeops"] = _summary(ours)
                    row["ratio"] = {"median": statistics.median(ratios), "min": min(ratios),
                                    "max": max(ratios)}
                else:
                    ours, rest = samples[0], samples[1:]
                    row["safeops"] = _summary(ours)
                row["anchors"] = {k: _summary(s) for k, s in zip(anchor_fns, rest)}
                # targets are recorded here and judged by the report (only for a run
                # whose A/A checks pass, never at smoke sizes)
                if case.bar.get(key) is not None and "ratio" in row:
                    row["bar"] = case.bar[key]
                if case.bar_s.get(key) is not None:
                    row["bar_s"] = case.bar_s[key]
                if case.bar_limit.get(key) is not None:
                    row["bar_limit"] = case.bar_limit[key]
                if direction in traffic:
                    row["bytes"] = {k: int(v) for k, v in traffic[direction].items()}
                rows.append(row)
        accuracy = None
        if case.accuracy_na:
            accuracy = {"metric": f"n/a: {case.accuracy_na}"}
        elif case.accuracy is not None:
            outputs = {"safeops": _numpy(case.candidate(*tensors))}
            if case.baseline is not None:
                outputs = {"baseline": _numpy(case.baseline(*tensors)), **outputs}
            for k, f in case.anchors.items():
                outputs[k] = _numpy(f(*tensors))
            for k, f in case.host_anchors.items():
                outputs[k] = _numpy(f(*arrays))
            for k, f in case.accuracy_only.items():
                outputs[k] = f(*arrays)
            accuracy = case.accuracy(inputs, outputs)
    return {"timings": rows, "accuracy": accuracy}


def measure_bandwidth(device, size, repeats, warmup):
    """STREAM-like memory bandwidth of `device`, measured with the cases' timing method.

    Two kernels on a float32 buffer larger than the caches (128 MiB; 4 MiB in smoke
    mode), each compiled once in graph mode: "copy" (`DeepCopy`, counted as the bytes
    read plus the bytes written, as STREAM counts them) and "read" (`reduce_max`, the
    bytes read). Returns ``{"n": elements, "copy": {...}, "read": {...}}``, each kernel
    with its bytes, time summary and ``gbps`` (1e9 bytes per second). As STREAM reports
    it, ``gbps`` is the best of the samples (at least 15 outside smoke mode; a kernel
    call takes ~10 ms): what the machine can do, which one slowed call cannot lower.
    ``{"error": str}`` stands for a kernel that could not run.
    """
    n = pick(size, full=1 << 25, quick=1 << 25, smoke=1 << 20)
    repeats = max(repeats, 15) if repeats > 1 else repeats
    kernels = {
        "copy": (lambda x: tf.raw_ops.DeepCopy(x=x), 2 * 4 * n),
        "read": (lambda x: tf.reduce_max(x), 4 * n),
    }
    out = {"n": n, "dtype": "float32"}
    with tf.device(device.name):
        x = tf.identity(tf.random.uniform([n], dtype=tf.float32))
        for name, (fn, nbytes) in kernels.items():
            try:
                f = tf.function(fn)
                (samples,) = time_interleaved([f], (x,), repeats, warmup, device.device_type,
                                              min_time=2e-3 if repeats > 1 else 0.0)
            except Exception as err:  # a device without the kernel: reported, not fatal
                out[name] = {"error": f"{type(err).__name__}: {_message(err)}"}
                continue
            summary = _summary(samples)
            out[name] = {"bytes": nbytes, **summary, "gbps": nbytes / summary["min_s"] / 1e9}
    return out


def _numpy(out):
    return tf.nest.map_structure(lambda t: np.asarray(t), out)
