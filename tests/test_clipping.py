"""Tests for safeops.clip_by_norm / clip_by_global_norm (issue 11)."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing


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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(6))
def test_parity_with_tf(dtype, seed):
    # Where TF's squared norm neither overflows nor underflows, the fast path forms TF's norm
    # with TF's reduction and TF's formula ((t * c) / norm; global: t * (c * (1 / norm))), so
    # clipped values are TF's bit for bit; unclipped ones are t exactly, and TF's (t * c) / c
    # (or t * (c * (1 / c))) is within 1 ulp of t. Hence 1 ulp. float64 also checks that a
    # Python clip_norm is not rounded to float32 on its way (that error is ~1e8 ulps).
    rng = np.random.default_rng(seed)
    ts = [tf.constant((rng.normal(size=s) * rng.uniform(0.1, 10)).astype(dtype))
          for s in [(50,), (30, 40), (7,)]]
    for clip in (0.3, 1.7, 13.1, 1e4):
        ours, gn = so.clip_by_global_norm(ts, clip)
        theirs, tgn = tf.clip_by_global_norm(ts, clip)
        assert testing.ulp_distance(gn, tgn, dtype) <= 1
        for a, b in zip(ours, theirs):
            assert np.max(testing.ulp_distance(a, b, dtype)) <= 1
        for t in ts:
            assert np.max(testing.ulp_distance(so.clip_by_norm(t, clip),
                                               tf.clip_by_norm(t, clip), dtype)) <= 1
        for axes in ([0], [1]):
            assert np.max(testing.ulp_distance(so.clip_by_norm(ts[1], clip, axes=axes),
                                               tf.clip_by_norm(ts[1], clip, axes=axes),
                                               dtype)) <= 1


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
    # propagate, inf norm: 0 for finite entries, NaN for the inf one (as TF).
    out = so.clip_by_norm([np.inf, 1.0], 1.0).numpy()
    assert np.isnan(out[0]) and out[1] == 0


def test_skip_with_axes_zeroes_only_affected_slices():
    # Documented: "skip" zeroes each slice over which a norm is taken that holds a
    # non-finite entry; the other slices are clipped as usual.
    t = tf.constant([[np.nan, 1.0], [3.0, 4.0], [0.3, 0.4]])
    out = so.clip_by_norm(t, 1.0, axes=[1], nonfinite="skip").numpy()
    np.testing.assert_array_equal(out[0], [0, 0])
    assert np.max(testing.ulp_distance(out[1], [0.6, 0.8], "float32")) <= 1
    np.testing.assert_array_equal(out[2], t.numpy()[2])  # norm 0.5 <= 1: unchanged
    # axes=None: the slice is the whole tensor.
    np.testing.assert_array_equal(so.clip_by_norm(t, 1.0, nonfinite="skip"), np.zeros((3, 2)))


@pytest.mark.parametrize("policy", ["propagate", "zero", "skip"])
def test_execution_modes(policy):
    def glob(a, b):
        return so.clip_by_global_norm([a, b], 1.0, nonfinite=policy)

    huge, bad = tf.constant([3e19, 4e19]), tf.constant([np.inf, 1.0])
    for args in [(huge, bad), (huge, tf.constant([0.0, 0.0])), (bad, tf.constant([np.nan]))]:
        r = testing.run_modes(glob, *args)
        for m in ("function", "jit_compile"):
            np.testing.assert_array_equal(np.concatenate(r[m][0]), np.concatenate(r["eager"][0]))
            np.testing.assert_array_equal(r[m][1], r["eager"][1])

    def one(a):
        return so.clip_by_norm(a, 1.0, nonfinite=policy)

    r = testing.run_modes(one, huge)
    for m in ("eager", "function", "jit_compile"):
        assert np.max(testing.ulp_distance(r[m], [0.6, 0.8], "float32")) <= 1, m
    rows = tf.constant([[3e38, 3e38], [np.inf, 1.0], [np.nan, 1.0], [0.3, 0.4]])
    for fn in (one, lambda a: so.clip_by_norm(a, 1.0, axes=[1], nonfinite=policy)):
        r = testing.run_modes(fn, rows)
        for m in ("function", "jit_compile"):
            np.testing.assert_array_equal(r[m], r["eager"])
    row = r["jit_compile"]
    assert np.max(testing.ulp_distance(row[0], [2**-0.5] * 2, "float32")) <= 1
    np.testing.assert_array_equal(row[3], rows.numpy()[3])


def test_overflow_beyond_float_max():
    # The true norm 4.2e38 exceeds float32's max: TF gives NaN (global) and [0, 0].
    # Reference 1/sqrt(2) from mpmath; the acceptance is 1 ulp (the general bound,
    # (d + 4) u relative, allows 4 ulps; here every intermediate but c/q is exact).
    ref = testing.reference(lambda x: 1 / mpmath.sqrt(2) * x, np.ones(2), dtype="float32")
    t = tf.constant([3e38, 3e38])
    out, gn = so.clip_by_global_norm([t], 1.0)
    assert np.max(testing.ulp_distance(out[0], ref, "float32")) <= 1
    assert np.isinf(gn.numpy())  # the norm itself is not representable; documented
    assert np.max(testing.ulp_distance(so.clip_by_norm(t, 1.0), ref, "float32")) <= 1
    assert np.isnan(tf.clip_by_global_norm([t], 1.0)[0][0].numpy()).all()
    np.testing.assert_array_equal(tf.clip_by_norm(t, 1.0), [0, 0])
    # Tiny clip norm on a huge tensor: the scale c / norm is below float32's range.
    ref = testing.reference(lambda x: mpmath.mpf("1e-30") / mpmath.sqrt(2) * x, np.ones(2),
                            dtype="float32")
    c = float(np.float32(1e-30))
    ref = np.float64(c) / np.sqrt(2.0)  # exact enough in float64 (|err| ~ 1e-16 relative)
    assert np.max(testing.ulp_distance(so.clip_by_norm(t, c), [ref] * 2, "float32")) <= 1
    assert np.max(testing.ulp_distance(so.clip_by_global_norm([t], c)[0][0], [ref] * 2,
                                       "float32")) <= 1
    # bfloat16 has float32's range: computed in float32, rounded once (0.5 bf16 ulp + tiny).
    out = so.clip_by_norm(tf.constant([3e38, 3e38], tf.bfloat16), 1.0)
    assert out.dtype == tf.bfloat16
    assert np.max(testing.ulp_distance(out, [2**-0.5] * 2, "bfloat16")) <= 1


def test_float16_norm_in_float32():
    # ||[6e4, 6e4]|| = 84853 overflows float16 (max 65504): TF clips to [0, 0]. Computed in
    # float32 (error (d + 4) 2**-24, far below float16's 2**-11) and rounded once: 1 ulp.
    t = tf.constant([6e4, 6e4], tf.float16)
    for out in (so.clip_by_norm(t, 1.0), so.clip_by_global_norm([t], 1.0)[0][0]):
        assert out.dtype == tf.float16
        assert np.max(testing.ulp_distance(out, [2**-0.5] * 2, "float16")) <= 1
    np.testing.assert_array_equal(tf.clip_by_norm(t, 1.0), [0, 0])


def _fn_norm(clip, axes=None):
    return lambda t: so.clip_by_norm(t, clip, axes=axes)


def _fn_global(clip):
    def fn(a, b):
        outs, gn = so.clip_by_global_norm([a, b], clip)
        return tf.concat([tf.reshape(outs[0], [-1]), outs[1], gn[None]], 0)
    return fn


@pytest.mark.parametrize("clip", [0.5, 3.0, 100.0])
def test_gradient_matches_finite_differences(clip):
    # float64 central differences (h = eps**(1/3)): error O(h**2) ~ 1e-10 relative for this
    # smooth function away from the kink norm == clip (norms here: 2.8..14); a wrong
    # gradient is off by O(1). 1e-6 leaves room for the curvature constant.
    x = np.random.default_rng(1).normal(size=(3, 4)) * 2
    assert testing.check_gradients(_fn_norm(clip), x) < 1e-6
    assert testing.check_gradients(_fn_norm(clip, axes=[1]), x) < 1e-6
    assert testing.check_gradients(_fn_global(clip), x, x[0]) < 1e-6
    # Gradient with respect to clip_norm.
    assert testing.check_gradients(lambda c: so.clip_by_norm(tf.constant(x), c), 0.7) < 1e-6
    assert testing.check_gradients(
        lambda c: so.clip_by_global_norm([tf.constant(x)], c)[0][0], 0.7) < 1e-6


def _analytic_grad(t, g, clip):
    """float64 gradient of sum(g * clip(t)) for one clipped slice: (c/n)(g - u <g, u>)."""
    t, g = np.asarray(t, np.float64), np.asarray(g, np.float64)
    n = np.sqrt(np.sum((t / 1e19) ** 2)) * 1e19
    u = t / n
    p = np.sum(g * u)
    return clip / n * (g - u * p), clip / n * (np.abs(g) + np.abs(u) * np.sum(np.abs(g * u)))


@pytest.mark.parametrize("values, clip", [([3e19, 4e19], 1.0), ([3e38, 3e38], 1e30),
                                          ([-1e30, 2e30, 5e29], 1.0)])
def test_gradient_huge_inputs(values, clip):
    # Documented gradient bound: |err_i| <= 12 u (c/n)(|g_i| + |u_i| sum_j |g_j u_j|),
    # u = 2**-24 (a few roundings in u, <g, u>, the subtraction and the scale; the
    # subtraction cancels, hence the absolute form). The squared norm overflows float32.
    t = tf.constant(values, tf.float32)
    g = np.random.default_rng(0).uniform(0.5, 1.5, size=len(values))
    want, scale = _analytic_grad(np.float32(values), g, clip)
    for fn in (lambda x: so.clip_by_norm(x, clip),
               lambda x: so.clip_by_global_norm([x], clip)[0][0]):
        for jit in (None, False, True):
            def grad(x, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(fn(x) * tf.constant(g, tf.float32))
                return tape.gradient(loss, x)
            f = grad if jit is None else tf.function(grad, jit_compile=jit)
            got = f(t).numpy().astype(np.float64)
            assert np.all(np.abs(got - want) <= 12 * 2**-24 * scale), (jit, got, want)
    # Global norm split over two tensors, with the norm output used too.
    a, b = tf.constant(values[:1], tf.float32), tf.constant(values[1:], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        outs, gn = so.clip_by_global_norm([a, b], clip)
        loss = tf.reduce_sum(tf.concat(outs, 0) * tf.constant(g, tf.float32)) + gn * 1e-20
    ga, gb = tape.gradient(loss, [a, b])
    got = np.concatenate([ga.numpy(), gb.numpy()]).astype(np.float64)
    n = np.sqrt(np.sum((np.float32(values).astype(np.float64) / 1e19) ** 2)) * 1e19
    extra = 1e-20 * np.float32(values) / n  # d(norm)/dt = u
    assert np.all(np.abs(got - want - extra) <= 12 * 2**-24 * (scale + np.abs(extra)))


def test_gradient_at_zero_tensor():
    # Documented: at the zero tensor (norm 0 <= clip_norm) the gradient is the identity g;
    # with clip_norm == 0 the output is identically 0 and so is the gradient; the gradient
    # of the returned global norm at 0 is 0 (TF: NaN).
    z = tf.zeros([3])
    cases = [(lambda t: so.clip_by_norm(t, 1.0), 1.0),
             (lambda t: so.clip_by_global_norm([t], 1.0)[0][0], 1.0),
             (lambda t: so.clip_by_norm(t, 0.0), 0.0),
             (lambda t: so.clip_by_global_norm([t], 0.0)[0][0], 0.0),
             (lambda t: so.clip_by_global_norm([t], 1.0)[1], 0.0)]
    for fn, want in cases:
        for mode in ("eager", "function", "jit_compile"):
            def grad(t, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch(t)
                    loss = tf.reduce_sum(fn(t))
                return tape.gradient(loss, t)
            f = grad if mode == "eager" else tf.function(grad, jit_compile=mode == "jit_compile")
            np.testing.assert_array_equal(f(z), np.full(3, want))
            np.testing.assert_array_equal(fn(z), np.zeros(np.shape(fn(z))))


def test_optimizer_clipping_keeps_sparse_gradients_and_finite_norms():
    """Keras's clipnorm / global_clipnorm on a safeops optimizer: a norm that overflows in
    float32 (5e19 squared) still clips to finite values; IndexedSlices stay IndexedSlices."""
    g = [tf.constant([3e19, 4e19]), None, tf.IndexedSlices(tf.constant([[3.0, 4.0]]),
                                                           tf.constant([0]), tf.constant([2, 2]))]
    out = so.optimizers.SGD(global_clipnorm=1.0)._clip_gradients(g)
    assert out[1] is None and isinstance(out[2], tf.IndexedSlices)
    np.testing.assert_allclose(out[0].numpy(), [0.6, 0.8], rtol=1e-6)
    out = so.optimizers.SGD(clipnorm=1.0)._clip_gradients(g)
    assert isinstance(out[2], tf.IndexedSlices)
    np.testing.assert_allclose(out[0].numpy(), [0.6, 0.8], rtol=1e-6)
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


def test_use_norm_nonfinite_only_propagate_poisons():
    # A non-finite `use_norm` gives NaN only under "propagate" (TF's convention); "zero" and
    # "skip" clip by it: scale = c / max(inf, c) = 0, so the outputs are exact zeros.
    t = [tf.constant([3.0, 4.0])]
    out, _ = so.clip_by_global_norm(t, 1.0, use_norm=float("inf"))
    assert np.isnan(out[0].numpy()).all()
    for policy in ("zero", "skip"):
        out, _ = so.clip_by_global_norm(t, 1.0, use_norm=float("inf"), nonfinite=policy)
        np.testing.assert_array_equal(out[0].numpy(), [0.0, 0.0])
