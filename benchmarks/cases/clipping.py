"""Gradient clipping (issue 11): so.clip_by_global_norm vs tf.clip_by_global_norm."""

import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks.registry import Case, register


def _inputs(rng, quick):
    total = (1 << 18) if quick else (1 << 22)  # 4M float32 values in full mode
    sizes = np.full(100, total // 100)
    return tuple(rng.standard_normal(int(s)).astype(np.float32) for s in sizes)


def _accuracy(inputs, outputs):
    big = [np.float32([3e19, 4e19])]
    ours = so.clip_by_global_norm(big, 1.0)[0][0].numpy()
    theirs = tf.clip_by_global_norm(big, 1.0)[0][0].numpy()
    return {"metric": "clip [3e19, 4e19] to 1 (want [0.6, 0.8])",
            "baseline": str(theirs.tolist()), "safeops": str(ours.tolist())}


register(Case(
    name="clipping/clip_by_global_norm/100x", family="clipping", make_inputs=_inputs,
    baseline=lambda *ts: tf.clip_by_global_norm(list(ts), 1.0)[0],
    candidate=lambda *ts: so.clip_by_global_norm(list(ts), 1.0)[0],
    baseline_name="tf.clip_by_global_norm", candidate_name="so.clip_by_global_norm",
    grad=False, accuracy=_accuracy, bar={"graph/fwd": 1.3, "xla/fwd": 1.3},
    extra={"tensors": 100, "values": "4M (quick: 256K)"}))
