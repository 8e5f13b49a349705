"""Reductions built on the exact accumulator (moments, dot products, logsumexp, the
normalization layers' statistics) against exact rational references, and their bits under
permutation, batch composition and compilation."""

from fractions import Fraction

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops._core import reproducible as rep

U64 = 2.0 ** -53


def _round(fr, dtype):
    """The float of `dtype` nearest to the rational `fr` (ties to even): no double rounding."""
    c = np.array(float(fr), dtype)
    cands = {c.item(), np.nextafter(c, np.array(np.inf, dtype)).item(),
             np.nextafter(c, np.array(-np.inf, dtype)).item()}
    cands = [np.array(v, dtype) for v in cands if np.isfinite(v)]

    def key(v):
        mant = np.frexp(v)[0] * 2.0 ** np.finfo(dtype).nmant
        return abs(Fraction(float(v)) - fr), int(abs(mant)) % 2
    return min(cands, key=key)


def _exact_dot(a, b):
    return sum((Fraction(float(p)) * Fraction(float(q)) for p, q in zip(a, b)), Fraction(0))


def _cancelling_pairs(rng, n, dtype, spread):
    """Rows whose products cancel: big terms +t and -t plus small ones (huge condition)."""
    big = rng.standard_normal(n // 2) * 10.0 ** rng.integers(0, spread, n // 2)
    x = np.concatenate([big, -big]).astype(dtype)
    y = np.ones(n, dtype)
    small = rng.standard_normal(n).astype(dtype)
    return np.concatenate([x, small]), np.concatenate([y, rng.standard_normal(n).astype(dtype)])


@pytest.mark.parametrize("dtype,spread", [(np.float32, 30), (np.float64, 250)])
def test_dot_is_correctly_rounded_at_any_condition(dtype, spread):
    rng = np.random.default_rng(1)
    rows = [_cancelling_pairs(rng, 200, dtype, spread) for _ in range(4)]
    rows.append((rng.standard_normal(400).astype(dtype), rng.standard_normal(400).astype(dtype)))
    x = np.stack([r[0] for r in rows])
    y = np.stack([r[1] for r in rows])
    got = rep.dot(tf.constant(x), tf.constant(y), [1]).numpy()
    for i in range(len(rows)):
        assert got[i] == _round(_exact_dot(x[i], y[i]), dtype), i


def test_dot_ties_and_near_ties_round_as_the_exact_value():
    # exact sums 1 + 2**-24 (a tie: even is 1.0), 1 + 2**-24 + 2**-30 (just above it: 1 + 2**-23;
    # a left-to-right float32 sum gives 1.0) and 1 + 2**-24 - 2**-30 (just below: 1.0)
    h, t = 2.0 ** -12, 2.0 ** -15
    x = tf.constant([[1.0, h, 0.0], [1.0, h, t], [1.0, h, -t]], tf.float32)
    y = tf.constant([[1.0, h, 0.0], [1.0, h, t], [1.0, h, t]], tf.float32)
    got = rep.dot(x, y, [1]).numpy()
    np.testing.assert_array_equal(got, np.float32([1.0, 1.0 + 2.0 ** -23, 1.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dot_bits_do_not_depend_on_order_or_compilation(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 999)) * 10.0 ** rng.integers(-6, 6, (3, 999))).astype(dtype)
    y = rng.standard_normal((3, 999)).astype(dtype)
    ref = rep.dot(tf.constant(x), tf.constant(y), [1]).numpy()
    perm = rng.permutation(999)
    np.testing.assert_array_equal(rep.dot(tf.constant(x[:, perm]), tf.constant(y[:, perm]),
                                          [1]).numpy(), ref)
    for jit in (False, True):
        f = tf.function(lambda a, b: rep.dot(a, b, [1]), jit_compile=jit)
        np.testing.assert_array_equal(f(x, y).numpy(), ref)


def test_dot_gradient_is_the_plain_product_rule():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((2, 5)), tf.float64)
    y = tf.constant(rng.standard_normal((2, 5)), tf.float64)
    g = tf.constant([2.0, -3.0], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        out = rep.dot(x, y, [1])
    gx, gy = tape.gradient(out, [x, y], output_gradients=g)
    np.testing.assert_array_equal(gx.numpy(), g.numpy()[:, None] * y.numpy())
    np.testing.assert_array_equal(gy.numpy(), g.numpy()[:, None] * x.numpy())


def _exact_variance(row):
    vals = [Fraction(float(v)) for v in row]
    m = sum(vals, Fraction(0)) / len(vals)
    return sum(((v - m) ** 2 for v in vals), Fraction(0)) / len(vals), m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variance_against_the_exact_rational_variance(dtype):
    rng = np.random.default_rng(4)
    # |mean| / std = 1e3: the documented bound 3 u + u**2 (mean/std)**2 is 3 u + 1e-26
    x = (1e3 + rng.standard_normal((3, 300))).astype(dtype)
    mean, var = rep.moments(tf.constant(x), [1])
    for i in range(3):
        ev, em = _exact_variance(x[i])
        assert mean.numpy()[i] == _round(em, dtype)
        if dtype == np.float64:
            assert abs(Fraction(float(var.numpy()[i])) - ev) <= ev * Fraction(3.0001 * U64)
        else:  # float64 result within 3u, then one rounding: at most one float32 ulp away
            exact32 = _round(ev, dtype)
            assert abs(int(var.numpy()[i].view(np.int32)) - int(exact32.view(np.int32))) <= 1


def test_variance_of_complex_is_real_and_sums_the_parts():
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((2, 50)) + 1j * rng.standard_normal((2, 50))).astype(np.complex128)
    _, var = rep.moments(tf.constant(z), [1])
    assert var.dtype == tf.float64
    np.testing.assert_allclose(var.numpy(), np.var(z, axis=1), rtol=8 * U64)


def test_row_statistics_do_not_depend_on_the_batch():
    rng = np.random.default_rng(6)
    row = (rng.standard_normal(257) * 10.0 ** rng.integers(-3, 3, 257)).astype(np.float32)
    results = []
    for batch in (1, 5, 64):
        x = rng.standard_normal((batch, 257)).astype(np.float32)
        x[batch // 2] = row
        m, v = rep.moments(tf.constant(x), [1])
        results.append((m.numpy()[batch // 2], v.numpy()[batch // 2]))
        perm = rng.permutation(257)
        m2, v2 = rep.moments(tf.constant(x[:, perm]), [1])
        assert (m2.numpy()[batch // 2], v2.numpy()[batch // 2]) == results[-1]
    assert len(set(results)) == 1


def test_logsumexp_softmax_log_softmax_against_mpmath():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((2, 64)) * 30).astype(np.float32)
    x[1, 0] = 80.0  # one dominant entry: log_softmax of it is tiny
    lse = rep.logsumexp(tf.constant(x), [1]).numpy()
    sm = rep.softmax(tf.constant(x), 1).numpy()
    lsm = rep.log_softmax(tf.constant(x), 1).numpy()
    mpmath.mp.prec = 200
    for i in range(2):
        ref = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in x[i]))
        # float64 steps (error ~ 1e-15 relative) then one rounding: at most one ulp of float32
        assert abs(lse[i] - float(ref)) <= np.spacing(np.float32(abs(float(ref))))
        for j in (0, 1, 2):
            r = mpmath.mpf(float(x[i, j])) - ref
            assert abs(lsm[i, j] - float(r)) <= np.spacing(np.float32(abs(float(r))))
            p = mpmath.exp(r)
            assert abs(sm[i, j] - float(p)) <= np.spacing(np.float32(float(p)))
    perm = rng.permutation(64)
    np.testing.assert_array_equal(rep.logsumexp(tf.constant(x[:, perm]), [1]).numpy(), lse)


def _ln_rows(layer, rng, row, batch):
    x = rng.standard_normal((batch, row.size)).astype(np.float32) * 3 + 7
    x[batch - 1] = row
    return layer(tf.constant(x)).numpy()[batch - 1]


def test_layer_normalization_output_does_not_depend_on_the_batch():
    rng = np.random.default_rng(8)
    row = (1e4 + rng.standard_normal(384)).astype(np.float32)  # |mean|/std = 1e4
    layer = so.layers.StableLayerNormalization(epsilon=1e-6)
    with so.config.reproducible():
        outs = [_ln_rows(layer, rng, row, b) for b in (1, 3, 33)]
        graph = tf.function(layer)
        x = np.stack([row, row[::-1]])
        eager = layer(tf.constant(x)).numpy()
        np.testing.assert_array_equal(graph(tf.constant(x)).numpy(), eager)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    # the reversed row has the same statistics: its outputs are the reversed outputs
    np.testing.assert_array_equal(eager[1], eager[0][::-1])
    # same values as the default method within its documented error (n u at n = 384)
    ref = (row.astype(np.float64) - row.astype(np.float64).mean()) / np.sqrt(
        row.astype(np.float64).var() + 1e-6)
    np.testing.assert_allclose(outs[0], ref, atol=384 * 2.0 ** -24)


def test_normalization_layers_train_under_the_switch():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 6, 8)).astype(np.float32)
    with so.config.reproducible():
        for layer in (so.layers.StableLayerNormalization(),
                      so.layers.StableGroupNormalization(groups=2),
                      so.layers.StableBatchNormalization()):
            with tf.GradientTape() as tape:
                out = layer(tf.constant(x), training=True)
                loss = tf.reduce_sum(out * tf.constant(x))
            grads = tape.gradient(loss, layer.trainable_variables)
            assert all(np.isfinite(g.numpy()).all() for g in grads), type(layer).__name__
            plain = type(layer).from_config(layer.get_config())
            plain.build(x.shape)
            plain.set_weights(layer.get_weights())
    # the default method on the same layer: the same values within float32 rounding
    with so.config.reproducible(False):
        default = plain(tf.constant(x), training=True).numpy()
    with so.config.reproducible():
        again = plain(tf.constant(x), training=True).numpy()
    np.testing.assert_allclose(again, default, atol=1e-5)


def test_public_variance_std_dot_under_the_switch():
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((3, 200)) * 10.0 ** rng.integers(-4, 4, (3, 200))).astype(np.float32)
    y = rng.standard_normal(200).astype(np.float32)
    perm = rng.permutation(200)
    with so.config.reproducible():
        var = so.reduce_variance(x, axis=1).numpy()
        std = so.reduce_std(x, axis=-1, keepdims=True).numpy()
        d = so.dot(x, y, axis=-1).numpy()  # y broadcast against every row
        np.testing.assert_array_equal(so.reduce_variance(x[:, perm], axis=1).numpy(), var)
        np.testing.assert_array_equal(so.dot(x[:, perm], y[perm]).numpy(), d)
        graph = tf.function(lambda v: so.reduce_variance(v, 1), jit_compile=True)
        np.testing.assert_array_equal(graph(tf.constant(x)).numpy(), var)
    assert std.shape == (3, 1)
    for i in range(3):
        ev, _ = _exact_variance(x[i])
        assert abs(int(var[i].view(np.int32)) - int(_round(ev, np.float32).view(np.int32))) <= 1
        assert d[i] == _round(_exact_dot(x[i], y), np.float32)
    np.testing.assert_allclose(std[:, 0], np.sqrt(var.astype(np.float64)), rtol=2.0 ** -23)


def test_public_softmax_family_under_the_switch_matches_the_default_method():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((4, 50)) * 8).astype(np.float32)
    x[3] = -np.inf  # a fully masked row: the default method's documented values and gradients
    x[2, [4, 9]] = np.inf  # a row holding +inf: its +inf entries share the probability
    perm = rng.permutation(50)
    results = {}
    for on in (False, True):
        with so.config.reproducible(on):
            xt = tf.constant(x)
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(xt)
                outs = (so.softmax(xt), so.log_softmax(xt), so.reduce_logsumexp(xt, axis=1))
            grads = [tape.gradient(o, xt, output_gradients=tf.ones_like(o) * 0.5) for o in outs]
            results[on] = [o.numpy() for o in outs] + [g.numpy() for g in grads]
            if on:
                again = (so.softmax(x[:, perm]), so.log_softmax(x[:, perm]),
                         so.reduce_logsumexp(x[:, perm], axis=1))
                np.testing.assert_array_equal(again[0].numpy(), results[on][0][:, perm])
                np.testing.assert_array_equal(again[1].numpy(), results[on][1][:, perm])
                np.testing.assert_array_equal(again[2].numpy(), results[on][2])
    for a, b in zip(results[False], results[True]):
        assert np.array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_allclose(np.where(np.isfinite(b), b, 0), np.where(np.isfinite(a), a, 0),
                                   rtol=4 * 2.0 ** -23, atol=4 * 2.0 ** -24)
