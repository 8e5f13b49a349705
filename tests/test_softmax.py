"""Tests for safeops.softmax: masked rows, +inf, accuracy vs mpmath, gradients, modes, dtypes."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing

NINF = float("-inf")


def _grad(fn, x, **kw):
    x = tf.constant(x)
    with tf.GradientTape() as t:
        t.watch(x)
        y = fn(x, **kw)
    return y.numpy(), t.gradient(y, x).numpy()


def test_masked_rows():
    x = np.array([[NINF, NINF, NINF], [1.0, 2.0, 3.0]], np.float32)
    y, g = _grad(so.reduce_logsumexp, x, axis=-1)
    assert np.isneginf(y[0]) and np.all(g[0] == 0.0)  # issue: zero gradient
    _, gt = _grad(tf.reduce_logsumexp, x, axis=-1)
    assert np.isnan(gt[0]).all()                      # TF: NaN gradient
    p, gp = _grad(so.softmax, x)
    assert np.all(p[0] == 0.0) and np.all(np.isfinite(gp))
    assert np.isnan(tf.nn.softmax(x).numpy()[0]).all()  # TF: NaN
    lp, glp = _grad(so.log_softmax, x)
    assert np.all(np.isneginf(lp[0])) and np.all(np.isfinite(glp))
    assert np.isnan(tf.nn.log_softmax(x).numpy()[0]).all()


def test_positive_inf():
    x = np.array([[np.inf, 1.0, np.inf]], np.float32)
    assert np.isposinf(so.reduce_logsumexp(x, axis=-1).numpy()[0])
    np.testing.assert_array_equal(so.softmax(x).numpy(), [[0.5, 0.0, 0.5]])
    _, g = _grad(so.reduce_logsumexp, x, axis=-1)
    np.testing.assert_array_equal(g, [[0.5, 0.0, 0.5]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_reference(dtype):
    rows = testing.sample_floats(dtype, 400, -80, 80, seed=1).reshape(100, 4)
    ref = testing.reference(lambda a, b, c, d: mpmath.log(sum(mpmath.exp(v) for v in (a, b, c, d))),
                            *rows.T, dtype=dtype)
    out = so.reduce_logsumexp(rows, axis=1).numpy()
    # bound: ~1 ulp of the result plus 1 ulp of |max| on cancellation; the sample has no
    # cancellation below |result| >= 1e-3, so 2 ulp covers it.
    assert np.max(testing.ulp_distance(out, ref, dtype)) <= 2
    ref_p = testing.reference(
        lambda a, b, c, d: mpmath.exp(a) / sum(mpmath.exp(v) for v in (a, b, c, d)),
        *rows.T, dtype=dtype)
    normal = np.abs(ref_p.astype(np.float64)) >= np.finfo(dtype).tiny  # TF CPU flushes subnormals
    z = rows[:, 0].astype(np.float64) - rows.max(axis=1).astype(np.float64)
    # documented bound of the fused kernel: (|x_i - max| + n/2 + 2) ulp, n = 4
    bound = np.abs(z) + 4
    dist = testing.ulp_distance(so.softmax(rows).numpy()[:, 0], ref_p, dtype).astype(np.float64)
    assert np.all(dist[normal] <= bound[normal])
    ref_l = testing.reference(
        lambda a, b, c, d: a - mpmath.log(sum(mpmath.exp(v) for v in (a, b, c, d))),
        *rows.T, dtype=dtype)
    # documented: a few ulp of max(|result|, 1); 4 eps * max(|result|, 1) here
    err = np.abs(so.log_softmax(rows).numpy()[:, 0].astype(np.float64) - ref_l.astype(np.float64))
    eps = np.finfo(dtype).eps
    assert np.all(err <= 4 * eps * np.maximum(np.abs(ref_l.astype(np.float64)), 1.0))


def test_gradient_matches_finite_differences():
    x = np.random.default_rng(0).normal(size=(3, 5)) * 3
    assert testing.check_gradients(lambda v: so.reduce_logsumexp(v, axis=1), x) < 1e-6
    assert testing.check_gradients(so.softmax, x) < 1e-6
    assert testing.check_gradients(so.log_softmax, x) < 1e-6
    assert testing.check_gradients(lambda v: so.softmax(v, axis=0), x) < 1e-6


def test_parity_with_tf():
    x = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32) * 4
    z = np.abs(x - x.max(axis=1, keepdims=True))
    # TF's fused kernel is within (|x_i - max| + n/2 + 2) ulp of the exact value, ours
    # within 3 ulp (2 bits): they differ by at most the sum of the two bounds (n = 16)
    bound = z + 16 / 2 + 2 + 3
    assert np.all(testing.ulp_distance(so.softmax(x), tf.nn.softmax(x), "float32") <= bound)
    # log_softmax: TF a few ulp of max(|result|, 1) (4 here), ours 3 ulp
    lt = tf.nn.log_softmax(x).numpy()
    err = np.abs(so.log_softmax(x).numpy() - lt)
    assert np.all(err <= 7 * np.finfo(np.float32).eps * np.maximum(np.abs(lt), 1))
    assert np.max(testing.ulp_distance(so.reduce_logsumexp(x, axis=1),
                                       tf.reduce_logsumexp(x, axis=1), "float32")) <= 2
    assert so.reduce_logsumexp(x).shape == tf.reduce_logsumexp(x).shape
    assert so.reduce_logsumexp(x, axis=1, keepdims=True).shape == (8, 1)


def test_execution_modes():
    x = tf.constant([[NINF, NINF], [1.0, 2.0], [np.inf, 0.0]])
    for fn in [so.softmax, so.log_softmax, lambda v: so.reduce_logsumexp(v, axis=1)]:
        r = testing.run_modes(fn, x)
        for m in ("function", "jit_compile"):
            # masked / +inf rows exactly; XLA's fused kernel may differ by rounding (<= 2 ulp)
            assert np.max(testing.ulp_distance(r[m], r["eager"], "float32")) <= 2


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_dtypes(dtype):
    # float16 logits of 20 and -20: exp(40) overflows float16, computed in float32 it does not
    x = tf.constant([[20.0, -20.0, 0.0]], dtype)
    for fn in [so.softmax, so.log_softmax, lambda v: so.reduce_logsumexp(v, axis=-1)]:
        out = fn(x)
        assert out.dtype == dtype and np.all(np.isfinite(tf.cast(out, tf.float32)))


def test_bad_input_raises():
    with pytest.raises(TypeError, match="softmax"):
        so.softmax(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="axis"):
        so.reduce_logsumexp(tf.zeros([2, 3]), axis=5)
    assert np.isnan(so.softmax([np.nan, 1.0]).numpy()).all()
    assert np.isnan(so.log_softmax([np.nan, 1.0]).numpy()).all()
    assert np.isnan(so.reduce_logsumexp([np.nan, 1.0]).numpy())
