"""Tests for safeops.clip_by_norm / clip_by_global_norm (issue 11)."""

import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing
from safeops.clipping import _clip_gradients


def test_overflowing_norm():
    out, gn = so.clip_by_global_norm([tf.constant([3e19, 4e19])], 1.0)
    assert np.max(testing.ulp_distance(out[0], [0.6, 0.8], "float32")) <= 1
    assert np.isnan(tf.clip_by_global_norm([tf.constant([3e19, 4e19])], 1.0)[0][0].numpy()).all()
    out = so.clip_by_norm([3e19, 4e19], 1.0)
    assert np.max(testing.ulp_distance(out, [0.6, 0.8], "float32")) <= 1
    assert np.max(testing.ulp_distance(tf.clip_by_norm([3e19, 4e19], 1.0), [0.6, 0.8],
                                       "float32")) > 1  # TF: [0, 0]


def test_tiny_left_unchanged():
    t = tf.constant([1e-30, -1e-30, 3e-30])
    np.testing.assert_array_equal(so.clip_by_norm(t, 1.0), t)
    out, gn = so.clip_by_global_norm([t], 1.0)
    np.testing.assert_array_equal(out[0], t)
    assert gn.numpy() > 0  # TF's global norm underflows to 0
    assert tf.clip_by_global_norm([t], 1.0)[1].numpy() == 0.0


def test_parity_with_tf():
    rng = np.random.default_rng(0)
    ts = [tf.constant(rng.normal(size=s).astype(np.float32) * 3) for s in [(5,), (3, 4), (7,)]]
    for clip in (0.5, 100.0):
        ours, gn = so.clip_by_global_norm(ts, clip)
        theirs, tgn = tf.clip_by_global_norm(ts, clip)
        assert testing.ulp_distance(gn, tgn, "float32") <= 1
        for a, b in zip(ours, theirs):
            assert np.max(testing.ulp_distance(a, b, "float32")) <= 1
        for t in ts:
            assert np.max(testing.ulp_distance(so.clip_by_norm(t, clip),
                                               tf.clip_by_norm(t, clip), "float32")) <= 1
        t = ts[1]
        assert np.max(testing.ulp_distance(so.clip_by_norm(t, clip, axes=[1]),
                                           tf.clip_by_norm(t, clip, axes=[1]), "float32")) <= 1


def test_nonfinite_policies():
    ts = [tf.constant([np.inf, 1.0]), tf.constant([3.0, 4.0])]
    out, gn = so.clip_by_global_norm(ts, 1.0, nonfinite="propagate")
    assert all(np.isnan(o.numpy()).all() for o in out) and np.isinf(gn.numpy())
    out, gn = so.clip_by_global_norm(ts, 1.0, nonfinite="zero")
    n = np.sqrt(1 + 9 + 16)
    np.testing.assert_allclose(np.concatenate([o.numpy() for o in out]),
                               [0, 1 / n, 3 / n, 4 / n], rtol=1e-6)
    assert gn.numpy() == pytest.approx(n)
    out, gn = so.clip_by_global_norm(ts, 1.0, nonfinite="skip")
    assert all(np.all(o.numpy() == 0) for o in out) and not np.isfinite(gn.numpy())
    np.testing.assert_array_equal(so.clip_by_norm([np.nan, 2.0], 1.0, nonfinite="zero"), [0, 1])
    np.testing.assert_array_equal(so.clip_by_norm([np.nan, 2.0], 1.0, nonfinite="skip"), [0, 0])
    assert np.isnan(so.clip_by_norm([np.nan, 2.0], 1.0).numpy()).all()


def test_execution_modes():
    for policy in ("propagate", "zero", "skip"):
        def fn(a, b, policy=policy):
            return so.clip_by_global_norm([a, b], 1.0, nonfinite=policy)
        r = testing.run_modes(fn, tf.constant([3e19, 4e19]), tf.constant([np.inf, 1.0]))
        for m in ("function", "jit_compile"):
            np.testing.assert_array_equal(np.concatenate(r[m][0]), np.concatenate(r["eager"][0]))
        r = testing.run_modes(lambda a: so.clip_by_norm(a, 1.0, nonfinite=policy),
                              tf.constant([3e19, 4e19]))
        assert np.max(testing.ulp_distance(r["jit_compile"], [0.6, 0.8], "float32")) <= 1


def test_clip_gradients_helper():
    g = [tf.constant([3e19, 4e19]), None, tf.IndexedSlices(tf.constant([[3.0, 4.0]]),
                                                           tf.constant([0]), tf.constant([2, 2]))]
    out = _clip_gradients(g, global_clipnorm=1.0)
    assert out[1] is None and isinstance(out[2], tf.IndexedSlices)
    assert np.all(np.isfinite(out[0].numpy()))
    out = _clip_gradients(g, clipnorm=1.0)
    np.testing.assert_allclose(out[2].values.numpy(), [[0.6, 0.8]], rtol=1e-6)


def test_dtypes_and_bad_input():
    for dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64):
        out, gn = so.clip_by_global_norm([tf.constant([300.0, 400.0], dtype)], 1.0)
        assert out[0].dtype == dtype
        assert np.all(np.isfinite(tf.cast(out[0], tf.float32).numpy()))
    with pytest.raises(ValueError, match="nonfinite"):
        so.clip_by_norm([1.0], 1.0, nonfinite="ignore")
    with pytest.raises(ValueError, match="clip_norm"):
        so.clip_by_norm([1.0], -1.0)
    with pytest.raises(TypeError, match="t_list"):
        so.clip_by_global_norm(tf.constant([1.0]), 1.0)
    with pytest.raises(TypeError, match="clip_by_norm"):
        so.clip_by_norm(tf.constant([1, 2]), 1.0)
