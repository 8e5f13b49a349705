"""The harness's own sanity case: tf.reduce_sum against itself (ratio ~1.0 expected)."""

import numpy as np
import tensorflow as tf

from benchmarks.registry import Case, register

register(Case(
    name="harness/reduce_sum_vs_itself/1M",
    family="harness",
    make_inputs=lambda rng, quick: (rng.standard_normal(1 << 20).astype(np.float32),),
    baseline=tf.reduce_sum,
    candidate=tf.reduce_sum,
    baseline_name="tf.reduce_sum",
    candidate_name="tf.reduce_sum",
    extra={"purpose": "A/A check of the timing method: the ratio should be ~1.0"},
))
