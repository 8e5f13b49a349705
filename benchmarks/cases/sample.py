"""The harness's own sanity case: tf.reduce_sum against itself (ratio ~1.0 expected)."""

import numpy as np
import tensorflow as tf

from benchmarks.registry import Case, pick, register

register(Case(
    name="harness/reduce_sum_vs_itself/1M",
    family="harness",
    make_inputs=lambda rng, size: (rng.standard_normal(
        pick(size, full=1 << 20, quick=1 << 20, smoke=1 << 10)).astype(np.float32),),
    baseline=tf.reduce_sum,
    candidate=tf.reduce_sum,
    baseline_name="tf.reduce_sum",
    candidate_name="tf.reduce_sum",
    accuracy_na="A/A timing check (the same op on both sides)",
    bar_source="none (the harness's A/A check: the ratio should be ~1.0)",
    extra={"purpose": "A/A check of the timing method: the ratio should be ~1.0"},
))
