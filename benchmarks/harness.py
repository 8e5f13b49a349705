"""The measuring instrument: interleaved A/B timing and side-by-side accuracy.

For each case, device and mode (graph, `jit_compile=True`) and for forward and
forward+backward, the baseline and the safeops function are compiled once,
warmed up, then called alternately (A B A B ...). Each call is timed on its own
and synchronised before the clock is read (`tf.experimental.sync_devices` on
GPU); the ratio is computed pair by pair (B_i / A_i) and its median reported,
with min and max of each side.
"""

import math
import statistics
import time

import numpy as np
import tensorflow as tf

__all__ = ["measure_case", "time_interleaved"]


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
    """A `tf.function` for (mode, direction); None if it cannot be built."""
    body = fn if direction == "fwd" else _forward_backward(fn, inputs)
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


def measure_case(case, inputs, device, repeats, warmup, modes=None):
    """Timings and accuracy of one case on one device.

    Returns a dict: ``{"timings": [...], "accuracy": {...} | None}`` where each
    timing row has mode, direction, baseline/safeops summaries, the pairwise
    ratio (median, min, max), and anchors' medians.
    """
    device_type = device.device_type
    rows = []
    directions = ["fwd", "fwd+bwd"] if case.grad else ["fwd"]
    with tf.device(device.name):
        tensors = tuple(tf.identity(tf.convert_to_tensor(x)) for x in inputs)
        for mode in [m for m in case.modes if modes is None or m in modes]:
            for direction in directions:
                try:
                    fa = compile_fn(case.baseline, tensors, mode, direction)
                    fb = compile_fn(case.candidate, tensors, mode, direction)
                    anchor_fns = {}
                    if mode == "graph" and direction == "fwd":
                        anchor_fns = {k: compile_fn(f, tensors, mode, direction)
                                      for k, f in case.anchors.items()}
                    fns = [fa, fb] + list(anchor_fns.values())
                    samples = time_interleaved(fns, tensors, repeats, warmup, device_type,
                                               min_time=2e-3 if repeats > 1 else 0.0)
                except Exception as err:  # an op without an XLA kernel, say: reported, not fatal
                    rows.append({"mode": mode, "direction": direction,
                                 "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
                    continue
                ratios = [b / a for a, b in zip(samples[0], samples[1])]
                row = {
                    "mode": mode,
                    "direction": direction,
                    "baseline": _summary(samples[0]),
                    "safeops": _summary(samples[1]),
                    "ratio": {"median": statistics.median(ratios), "min": min(ratios),
                              "max": max(ratios)},
                    "anchors": {k: _summary(s) for k, s in zip(anchor_fns, samples[2:])},
                }
                bar = case.bar.get(f"{mode}/{direction}")
                if bar is not None:
                    row["bar"] = bar
                    row["meets_bar"] = row["ratio"]["median"] <= bar
                rows.append(row)
        accuracy = None
        if case.accuracy is not None:
            outputs = {"baseline": _numpy(case.baseline(*tensors)),
                       "safeops": _numpy(case.candidate(*tensors))}
            for k, f in case.anchors.items():
                outputs[k] = _numpy(f(*tensors))
            for k, f in case.accuracy_only.items():
                outputs[k] = f(*[np.asarray(x) for x in inputs])
            accuracy = case.accuracy(inputs, outputs)
    return {"timings": rows, "accuracy": accuracy}


def _numpy(out):
    return tf.nest.map_structure(lambda t: np.asarray(t), out)
