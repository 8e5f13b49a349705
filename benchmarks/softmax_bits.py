"""Bits of error of the softmax family: ``python -m benchmarks.softmax_bits``.

10 000 rows of 4 from `safeops.testing.sample_floats` per dtype, scored exactly as
tests/test_softmax.py scores them (its mpmath references and its subnormal rules are
imported from there, so the table and the tests cannot drift apart). Prints Markdown rows:
op | dtype | naive formula | TF op | safeops (mean / max bits).
"""
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import numpy as np, tensorflow as tf, mpmath
import safeops as so
from safeops import testing
import test_softmax as T
for dtype in ["float32", "float64"]:
    rows = T._bits_rows(dtype, 10000); cols = rows.T
    lse = testing.reference(T._lse_mp, *cols, dtype=dtype)
    ls = np.stack([testing.reference(T._ls_mp(j), *cols, dtype=dtype) for j in range(4)], 1)
    sm = np.stack([testing.reference(lambda *v, j=j: mpmath.exp(T._ls_mp(j)(*v)), *cols, dtype=dtype) for j in range(4)], 1)
    x = tf.constant(rows); e = tf.exp(x)
    for name, ours, tfop, naive, ref in [
        ("reduce_logsumexp", so.reduce_logsumexp(x, axis=1), tf.reduce_logsumexp(x, axis=1), tf.math.log(tf.reduce_sum(e, axis=1)), lse),
        ("log_softmax", so.log_softmax(x), tf.nn.log_softmax(x), tf.math.log(tf.nn.softmax(x)), ls),
        ("softmax", so.softmax(x), tf.nn.softmax(x), e / tf.reduce_sum(e, axis=1, keepdims=True), sm)]:
        f = lambda o: T._bits(o, ref, dtype)
        b, t, n = f(ours), f(tfop), f(naive)
        print(f"| {name} | {dtype} | {n.mean():.2f} / {n.max():.1f} | {t.mean():.2f} / {t.max():.1f} | {b.mean():.2f} / {b.max():.1f} |")
