"""Gradient clipping: so.clip_by_global_norm and so.clip_by_norm vs TF's (memory-bound: each
case declares the bytes it moves)."""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, elementwise_traffic, pick, register
from safeops import testing

_BIG = np.float32([3e19, 4e19])  # the norm 5e19 overflows float32 when squared


def _inputs(rng, size):
    total = pick(size, full=1 << 22, quick=1 << 20, smoke=1 << 12)  # 4M in full mode
    count = pick(size, full=100, quick=100, smoke=10)  # 100 tensors traced cost ~5 s in smoke
    sizes = np.full(count, total // count)
    return tuple(rng.standard_normal(int(s)).astype(np.float32) for s in sizes)


def _big_ulps(clipped):
    """max ulp of clip([3e19, 4e19], 1) vs the exact [0.6, 0.8]; NaN/0 results count as inf."""
    got = np.asarray(clipped, np.float32)
    if not np.all(np.isfinite(got)) or not np.any(got):
        return float("inf")
    return float(testing.ulp_distance(got, np.array([0.6, 0.8]), "float32").max())


def _accuracy(inputs, outputs):
    return {"metric": "max ulp, clip [3e19, 4e19] to norm 1 (exact [0.6, 0.8])",
            "baseline": _big_ulps(tf.clip_by_global_norm([_BIG], 1.0)[0][0]),
            "safeops": _big_ulps(so.clip_by_global_norm([_BIG], 1.0)[0][0]),
            "baseline_result": str(tf.clip_by_global_norm([_BIG], 1.0)[0][0].numpy().tolist()),
            "safeops_result": str(so.clip_by_global_norm([_BIG], 1.0)[0][0].numpy().tolist())}


register(Case(
    name="clipping/clip_by_global_norm", family="clipping", make_inputs=_inputs,
    baseline=lambda *ts: tf.clip_by_global_norm(list(ts), 1.0)[0],
    candidate=lambda *ts: so.clip_by_global_norm(list(ts), 1.0)[0],
    baseline_name="tf.clip_by_global_norm", candidate_name="so.clip_by_global_norm",
    grad=False, accuracy=_accuracy, bar={"graph/fwd": 1.3, "xla/fwd": 1.3},
    bar_source="stated for 100 tensors, 4M float32 values in all",
    # one pass to the global norm, one to scale: the least is read once, write once
    bytes_moved=lambda inputs: {"fwd": {"read": sum(np.asarray(t).nbytes for t in inputs),
                                        "written": sum(np.asarray(t).nbytes for t in inputs)}},
    size_label=lambda inputs: f"{len(inputs)}x{np.asarray(inputs[0]).size}",
    extra={"size": "tensors x values per tensor"}))


def _norm_inputs(rng, size):
    n = pick(size, full=1 << 22, quick=1 << 22, smoke=1 << 12)
    return ((rng.standard_normal(n) * 1e3).astype(np.float32),)


def _norm_accuracy(inputs, outputs):
    x = np.asarray(inputs[0], np.float64)
    ref = x / np.sqrt(np.sum(x * x))  # float64: ~1e-16 relative, exact at float32's ulp scale
    return {"metric": "max ulp vs float64 (N(0,1e6) values); big: [3e19, 4e19] -> [0.6, 0.8]",
            "baseline": float(testing.ulp_distance(outputs["baseline"], ref, "float32").max()),
            "safeops": float(testing.ulp_distance(outputs["safeops"], ref, "float32").max()),
            "baseline_big": _big_ulps(tf.clip_by_norm(_BIG, 1.0)),
            "safeops_big": _big_ulps(so.clip_by_norm(_BIG, 1.0))}


register(Case(
    name="clipping/clip_by_norm", family="clipping", make_inputs=_norm_inputs,
    baseline=lambda t: tf.clip_by_norm(t, 1.0), candidate=lambda t: so.clip_by_norm(t, 1.0),
    baseline_name="tf.clip_by_norm", candidate_name="so.clip_by_norm",
    accuracy=_norm_accuracy,
    bar_source="none stated (the target is set for clip_by_global_norm)",
    bytes_moved=elementwise_traffic(),
    extra={"values": "float32, norm ~2e6 (clipped to 1)"}))
