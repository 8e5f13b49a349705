"""softplus on the fused kernel (small float32 tensors, eagerly), and float32 logaddexp /
logsubexp on the float64 polynomials inside graphs: the same documented bounds and bits as
the other paths, against mpmath."""

import mpmath
import numpy as np
import tensorflow as tf

import safeops as so
from safeops import testing

_TINY = np.finfo(np.float32).tiny


def _softplus_inputs():
    # 1000 values over the float32 range (mostly small magnitudes: bit-uniform), the branch
    # points of TF's kernel (log(eps) + 2 ~ -13.9 and its negation) and the edges
    x = testing.sample_floats("float32", 1000, -100.0, 100.0, seed=31)
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, -13.9, -14.0, -15.0, 13.9, 14.0, 15.5, 88.0,
                      -87.0, 1e30, -1e30, np.inf, -np.inf], np.float32)
    x = np.concatenate([x, edges])
    return x[(np.abs(x) >= _TINY) | (x == 0)]  # TF's CPU kernels read subnormals as 0


def test_softplus_small_tensors_match_reference():
    x = _softplus_inputs()
    ref = testing.reference(lambda v: mpmath.log1p(mpmath.exp(v)), x, dtype="float32")
    keep = (np.abs(ref.astype(np.float64)) >= _TINY) | ~np.isfinite(ref.astype(np.float64))
    outs = {}
    for size in (16, 1000):  # single calls of at most the kernel's size limit
        outs[size] = np.concatenate([so.softplus(tf.constant(c)).numpy()
                                     for c in np.array_split(x, len(x) // size)])
    with so.native.disabled():  # the three-kernel float64 path
        outs["tf"] = np.concatenate([so.softplus(tf.constant(c)).numpy()
                                     for c in np.array_split(x, len(x) // 16)])
    for path, out in outs.items():
        # the module's bound: <= 3 ulp (2 bits); evaluated in double and rounded once
        # these are within 1 ulp (a double rounding)
        assert np.max(testing.ulp_distance(out[keep], ref[keep], "float32")) <= 1, path
    np.testing.assert_array_equal(outs[16], outs["tf"])  # the same double evaluation
    naive = tf.math.softplus(tf.constant(x)).numpy()    # TF's kernel fails that bound
    assert np.max(testing.ulp_distance(naive[keep], ref[keep], "float32")) > 3


def test_softplus_kernel_edges_and_gradient():
    x = tf.constant([np.nan, np.inf, -np.inf, 0.0, -200.0, 200.0], tf.float32)
    with tf.GradientTape() as t:
        t.watch(x)
        y = so.softplus(x)
    g = t.gradient(y, x).numpy()
    y = y.numpy()
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0.0 and y[3] == np.float32(np.log(2))
    assert y[4] == 0.0 and y[5] == 200.0
    # sigmoid(x): NaN propagates, 1 at +inf, 0 at -inf, exactly 0.5 at 0
    assert np.isnan(g[0]) and list(g[1:]) == [1.0, 0.0, 0.5, 0.0, 1.0]
    z = np.linspace(-30, 30, 61).astype(np.float32)
    ref = testing.reference(lambda v: 1 / (1 + mpmath.exp(-v)), z, dtype="float32")
    zt = tf.constant(z)
    keep = np.abs(ref.astype(np.float64)) >= _TINY
    for mode, out in testing.run_modes(lambda v: _grad(so.softplus, v), zt).items():
        # eagerly sigmoid is evaluated one precision up and rounded once (<= 1 ulp); in a
        # graph in float32, within the 4-ulp gradient bound of the element-wise ops
        bound = 1 if mode == "eager" else 4
        assert np.max(testing.ulp_distance(out[keep], ref[keep], "float32")) <= bound, mode


def _grad(fn, v):
    with tf.GradientTape() as t:
        t.watch(v)
        y = fn(v)
    return t.gradient(y, v)


def _same_bits_in_every_mode(fn, x, y):
    """fn's value and gradients eagerly, in a tf.function and under XLA: the same bits;
    returns the eager ones."""
    modes = testing.run_modes(_value_and_grads(fn), tf.constant(x), tf.constant(y))
    eager = list(modes["eager"])
    for mode, outs in modes.items():
        for got, want in zip(outs, eager):
            np.testing.assert_array_equal(got, want, err_msg=mode)
    return eager


def _value_and_grads(fn):
    def run(x, y):
        with tf.GradientTape() as t:
            t.watch([x, y])
            out = fn(x, y)
        return (out, *t.gradient(out, [x, y]))
    return run


def _pair_inputs(seed):
    # bit-uniform pairs, pairs a few units apart (where exp(-|x - y|) matters), the edges
    x = testing.sample_floats("float32", 1000, -100.0, 100.0, seed=seed)
    y = testing.sample_floats("float32", 1000, -100.0, 100.0, seed=seed + 1)
    rng = np.random.default_rng(seed)
    near = rng.uniform(-20, 20, 1000).astype(np.float32)
    edges = np.array([0.0, 1.0, -1.0, 88.0, -87.0, 1e30, -1e30, np.inf, -np.inf, np.nan],
                     np.float32)
    x = np.concatenate([x, near, edges, edges, np.zeros_like(edges)])
    y = np.concatenate([y, (near + rng.uniform(-5, 5, 1000)).astype(np.float32), edges,
                        np.zeros_like(edges), edges])
    keep = ((np.abs(x) >= _TINY) | (x == 0)) & ((np.abs(y) >= _TINY) | (y == 0))
    return x[keep], y[keep]


def test_logaddexp_float32_same_bits_in_every_mode():
    # Inside graphs float32 exp and log1p run as float64 polynomials (2 and 4 units of
    # 2**-53), eagerly as TF's kernels: far below the float32 rounding, so value and
    # gradients agree bit for bit on these inputs, and with mpmath within the bounds
    # (value correctly rounded but for a double rounding: 1 ulp; gradients 4 ulp).
    x, y = _pair_inputs(seed=7)
    eager = _same_bits_in_every_mode(so.logaddexp, x, y)
    refs = [testing.reference(f, x, y, dtype="float32") for f in (
        lambda a, b: mpmath.log(mpmath.exp(a) + mpmath.exp(b)),
        lambda a, b: 1 / (1 + mpmath.exp(b - a)), lambda a, b: 1 / (1 + mpmath.exp(a - b)))]
    fin = np.isfinite(x) & np.isfinite(y) & (x != y)
    for got, ref, bound in zip(eager, refs, (1, 4, 4)):
        r64 = np.abs(ref.astype(np.float64))
        ok = fin & (r64 >= _TINY)
        assert np.max(testing.ulp_distance(np.asarray(got)[ok], ref[ok], "float32")) <= bound
    value, gx, gy = eager
    eq = x == y
    assert np.all(gx[eq & ~np.isnan(x)] == 0.5) and np.all(gy[eq & ~np.isnan(x)] == 0.5)
    assert np.all(np.isnan(value[np.isnan(x) | np.isnan(y)]))
    assert np.all(value[(x == np.inf) | (y == np.inf)] == np.inf)


def test_logsubexp_float32_same_bits_in_every_mode():
    # As logaddexp: inside graphs exp, expm1 (a Taylor series) and log (exponent bits and
    # log1p) run as float64 polynomials, eagerly TF's kernels. x >= y
    # (x < y is NaN in every mode), adjacent floats included (1 - exp(-|x - y|) tiny).
    x, y = _pair_inputs(seed=11)
    x, y = np.fmax(x, y), np.fmin(x, y)
    adj = testing.sample_floats("float32", 300, -100.0, 100.0, seed=13)
    adj = adj[np.abs(adj) >= _TINY]
    x = np.concatenate([x, np.nextafter(adj, np.float32(np.inf)), [np.nan, 1.0, np.nan]])
    y = np.concatenate([y, adj, [1.0, np.nan, np.nan]]).astype(np.float32)
    x = x.astype(np.float32)
    eager = _same_bits_in_every_mode(so.logsubexp, x, y)
    refs = [testing.reference(f, x, y, dtype="float32") for f in (
        lambda a, b: mpmath.log(mpmath.exp(a) - mpmath.exp(b)),
        lambda a, b: -1 / mpmath.expm1(b - a), lambda a, b: -1 / mpmath.expm1(a - b))]
    fin = np.isfinite(x) & np.isfinite(y) & (x > y)
    for got, ref, bound in zip(eager, refs, (1, 4, 4)):
        r64 = np.abs(ref.astype(np.float64))
        ok = fin & (r64 >= _TINY) & np.isfinite(r64)
        assert np.max(testing.ulp_distance(np.asarray(got)[ok], ref[ok], "float32")) <= bound
    value = eager[0]
    assert np.all(np.isnan(value[np.isnan(x) | np.isnan(y)]))
    assert np.all(value[(x == y) & np.isfinite(x)] == -np.inf)
