"""Tests for safeops.norm: overflow/underflow, zero-vector gradient, ords, parity, bad input."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing


def test_no_overflow_underflow():
    assert so.norm([1e30, 1e30]).numpy() == np.float32(np.sqrt(2) * 1e30)
    assert np.isinf(tf.norm([1e30, 1e30]).numpy())
    assert so.norm([1e-30, 1e-30]).numpy() == pytest.approx(np.sqrt(2) * 1e-30, rel=1e-7)
    assert tf.norm([1e-30, 1e-30]).numpy() == 0.0
    big = np.finfo(np.float64).max / 4
    assert so.norm(tf.constant([big, big], tf.float64)).numpy() == pytest.approx(big * np.sqrt(2))
    m = np.full((2, 3), 1e25, np.float32)
    np.testing.assert_allclose(so.norm(m, axis=1).numpy(), [np.sqrt(3) * 1e25] * 2, rtol=1e-6)


def test_matches_reference():
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        for scale in (1e-30, 1.0, 1e30):
            x = (rng.normal(size=(20, 7)) * scale).astype(dtype)
            ref = np.sqrt(np.array([testing.exact_dot(r, r) for r in x.astype(np.float64)]))
            out = so.norm(x, axis=1).numpy()
            # bound (k + 2) eps / 2 with k <= 7 terms: <= 5 ulp
            assert np.max(testing.ulp_distance(out, ref, dtype)) <= 5


def test_gradient_edges():
    x = tf.zeros([3])
    with tf.GradientTape() as t:
        t.watch(x)
        y = so.norm(x)
    np.testing.assert_array_equal(t.gradient(y, x).numpy(), [0, 0, 0])  # TF: NaN (#12071)
    with tf.GradientTape() as t:
        t.watch(x)
        y = tf.norm(x)
    assert np.isnan(t.gradient(y, x).numpy()).all()
    testing.assert_finite_gradients(so.norm, tf.constant([1e30, 1e30]))
    testing.assert_finite_gradients(so.norm, tf.constant([1e-30, -1e-30]))


def test_gradient_matches_finite_differences():
    x = np.random.default_rng(1).normal(size=(3, 4))
    assert testing.check_gradients(so.norm, x) < 1e-6
    assert testing.check_gradients(lambda v: so.norm(v, axis=1), x) < 1e-6
    assert testing.check_gradients(lambda v: so.norm(v, ord="fro", axis=(0, 1)), x) < 1e-6
    assert testing.check_gradients(lambda v: so.norm(v, ord=3, axis=0), x) < 1e-6


@pytest.mark.parametrize("ord_axis", [("euclidean", None), ("euclidean", 1), (2, 0), (1, -1),
                                      (np.inf, 0), (3, 1), ("fro", (0, 1)), ("euclidean", (1, 2)),
                                      (1, (0, 1)), (np.inf, (0, 2)), (2, (0, 1))])
@pytest.mark.parametrize("keepdims", [False, True])
def test_parity_with_tf(ord_axis, keepdims):
    o, ax = ord_axis
    x = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)
    ours = so.norm(x, ord=o, axis=ax, keepdims=keepdims)
    theirs = tf.norm(x, ord=o, axis=ax, keepdims=keepdims)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert np.max(testing.ulp_distance(ours, theirs, "float32")) <= 4


def test_execution_modes():
    for x in ([3e30, 4e30], [1e-30, 0.0], [0.0, 0.0], [3.0, 4.0]):
        r = testing.run_modes(so.norm, tf.constant(x))
        assert r["eager"] == r["function"] == r["jit_compile"]


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_dtypes(dtype):
    x = tf.constant([300.0, 400.0], dtype)  # float16: 300**2 overflows, computed in float32
    out = so.norm(x)
    assert out.dtype == dtype and float(out) == 500.0


def test_bad_input_raises():
    with pytest.raises(TypeError, match="safeops.norm"):
        so.norm(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="ord"):
        so.norm([1.0, 2.0], ord="fro")
    with pytest.raises(ValueError, match="ord"):
        so.norm([1.0, 2.0], ord=-1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"axis.*rank 1"):  # as tf.norm
        so.norm([1.0, 2.0], axis=3)
    with pytest.raises(ValueError, match="axis"):
        so.norm(tf.zeros([2, 2]), axis=(0, 0))
    assert np.isnan(so.norm([np.nan, 1.0]).numpy())


def _norm_mp(*v):
    return mpmath.sqrt(mpmath.fsum(t * t for t in v))


@pytest.mark.parametrize("dtype,big", [("float32", 1e30), ("float64", 1e300)])
def test_bits_of_error(dtype, big):
    # documented bound: mean <= 0.5 and max <= 2 bits (log2(1 + ulp distance)) vs mpmath, 2000 rows of 4
    # over bit patterns in [-big, big]; the naive sqrt(sum x^2) over/underflows and fails
    rows = testing.sample_floats(dtype, 8000, -big, big, seed=11).reshape(2000, 4)
    rows = rows[((np.abs(rows) >= np.finfo(dtype).tiny) | (rows == 0)).all(axis=1)]
    ref = testing.reference(_norm_mp, *rows.T, dtype=dtype)
    keep = np.abs(ref.astype(np.float64)) >= np.finfo(dtype).tiny
    b = testing.bits_of_error(so.norm(rows, axis=1).numpy()[keep], ref[keep], dtype)
    assert b.mean() <= 0.5 and b.max() <= 2
    naive = tf.sqrt(tf.reduce_sum(rows * rows, axis=1)).numpy()
    nb = testing.bits_of_error(naive[keep], ref[keep], dtype)
    assert nb.mean() > 0.5 or nb.max() > 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_matches_mpmath(dtype):
    # d norm / d x_j = x_j / norm(x): within 4 ulp of mpmath; exactly 0 at the zero vector
    rows = testing.sample_floats(dtype, 800, -1e10, 1e10, seed=12).reshape(200, 4)
    rows = rows[(np.abs(rows) >= np.finfo(dtype).tiny).all(axis=1)]
    x = tf.constant(rows)
    with tf.GradientTape() as t:
        t.watch(x)
        y = so.norm(x, axis=1)
    g = t.gradient(y, x).numpy()
    ref = np.stack([testing.reference(lambda *v, j=j: v[j] / _norm_mp(*v), *rows.T, dtype=dtype)
                    for j in range(4)], 1)
    r64 = ref.astype(np.float64)
    keep = (np.abs(r64) >= np.finfo(dtype).tiny) | (r64 == 0)
    assert np.max(testing.ulp_distance(g[keep], ref[keep], dtype)) <= 4
    z = tf.zeros([2, 3], dtype)
    with tf.GradientTape() as t:
        t.watch(z)
        y = so.norm(z, axis=1)
    assert np.all(t.gradient(y, z).numpy() == 0)
