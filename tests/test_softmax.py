"""Tests for safeops.softmax: masked rows, +inf, accuracy vs mpmath, gradients, modes, dtypes.

Every test runs twice: with the fused C++ kernel that float32 rows along the last axis take on
the CPU ("fused"), and with SAFEOPS_NATIVE=0 on the pure-TF path ("tf").
"""

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing

NINF = float("-inf")


@pytest.fixture(autouse=True, params=["fused", "tf"])
def _path(request, monkeypatch):
    if request.param == "tf":
        monkeypatch.setenv("SAFEOPS_NATIVE", "0")
    else:
        monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    return request.param


def _grad(fn, x, **kw):
    x = tf.constant(x)
    with tf.GradientTape() as t:
        t.watch(x)
        y = fn(x, **kw)
    return y.numpy(), t.gradient(y, x).numpy()


def test_masked_rows():
    x = np.array([[NINF, NINF, NINF], [1.0, 2.0, 3.0]], np.float32)
    y, g = _grad(so.reduce_logsumexp, x, axis=-1)
    assert np.isneginf(y[0]) and np.all(g[0] == 0.0)  # zero gradient, not NaN
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
    with pytest.raises(tf.errors.InvalidArgumentError, match="axis"):  # as TF, eagerly
        so.reduce_logsumexp(tf.zeros([2, 3]), axis=5)
    assert np.isnan(so.softmax([np.nan, 1.0]).numpy()).all()
    assert np.isnan(so.log_softmax([np.nan, 1.0]).numpy()).all()
    assert np.isnan(so.reduce_logsumexp([np.nan, 1.0]).numpy())


# --- bits of error (Herbie's metric) against mpmath: mean <= 0.5 and max <= 2 (documented) ---

_DOMAIN = {"float32": 100.0, "float64": 1e4}  # past exp's overflow: the naive formulas fail


def _lse_mp(*v):
    return mpmath.log(mpmath.fsum(mpmath.exp(t) for t in v))


def _ls_mp(j):
    """log_softmax_j as -log1p(sum over i != j of exp(v_i - v_j)): no cancellation, at
    60 digits, when the entry dominates (v_j - logsumexp(v) would round to 0)."""
    def f(*v):
        return -mpmath.log1p(mpmath.fsum(mpmath.exp(t - v[j]) for i, t in enumerate(v) if i != j))
    return f


def _bits_rows(dtype, n):
    rows = testing.sample_floats(dtype, 4 * n, -_DOMAIN[dtype], _DOMAIN[dtype], seed=5)
    rows = rows.reshape(n, 4)
    normal = np.abs(rows.astype(np.float64)) >= np.finfo(dtype).tiny
    return rows[(normal | (rows == 0)).all(axis=1)]  # TF's CPU kernels flush subnormal inputs


def _bits(out, ref, dtype):
    ref64 = ref.astype(np.float64)
    keep = (np.abs(ref64) >= np.finfo(dtype).tiny) | (ref64 == 0)  # flushed results not scored
    return testing.bits_of_error(np.asarray(out)[keep], ref[keep], dtype)


def _check_bits(dtype, n):
    rows = _bits_rows(dtype, n)
    cols = rows.T
    lse = testing.reference(_lse_mp, *cols, dtype=dtype)
    ls = np.stack([testing.reference(_ls_mp(j), *cols, dtype=dtype) for j in range(4)], 1)
    sm = np.stack([testing.reference(lambda *v, j=j: mpmath.exp(_ls_mp(j)(*v)), *cols,
                                     dtype=dtype) for j in range(4)], 1)
    x = tf.constant(rows)
    e = tf.exp(x)
    cases = {  # op: (ours, naive formula, reference)
        "reduce_logsumexp": (so.reduce_logsumexp(x, axis=1),
                             tf.math.log(tf.reduce_sum(e, axis=1)), lse),
        "log_softmax": (so.log_softmax(x), tf.math.log(tf.nn.softmax(x)), ls),
        "softmax": (so.softmax(x), e / tf.reduce_sum(e, axis=1, keepdims=True), sm),
    }
    for name, (ours, naive, ref) in cases.items():
        b = _bits(ours, ref, dtype)
        assert b.mean() <= 0.5 and b.max() <= 2, (name, b.mean(), b.max())   # the documented bound
        nb = _bits(naive, ref, dtype)
        assert nb.mean() > 0.5 or nb.max() > 2, (name, "naive passes")       # the check bites


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bits_of_error(dtype):
    _check_bits(dtype, 2000)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bits_of_error_10000(dtype):
    _check_bits(dtype, 10000)


def test_bits_of_error_in_graph():
    # the graph path is a separate (XLA-fused) implementation: same bound
    rows = _bits_rows("float32", 1000)
    ls = testing.reference(_ls_mp(0), *rows.T, dtype="float32")
    out = tf.function(so.log_softmax)(tf.constant(rows)).numpy()[:, 0]
    b = _bits(out, ls, "float32")
    assert b.mean() <= 0.5 and b.max() <= 2
    assert float(so.log_softmax([[20.0, 0.0, 0.0, 0.0]])[0, 0]) == pytest.approx(
        -3 * math.exp(-20), rel=1e-7)
    assert float(tf.nn.log_softmax([[20.0, 0.0, 0.0, 0.0]])[0, 0]) == 0.0  # TF's kernel


def test_logsumexp_long_row_compensated():
    # 2**17 float64 terms of 64 distinct values in random order: the exact result is
    # log(sum_v count_v exp(v)) from 64 mpmath exps. A max entry of 0 keeps the result
    # small (~4e-3), so the relative error of the inner sum shows up in full.
    rng = np.random.default_rng(3)
    vals = rng.uniform(-30.0, -10.0, 64)
    x = np.concatenate([[0.0], rng.choice(vals, 2**17)])
    rng.shuffle(x)
    counts = {v: int(np.sum(x == v)) for v in vals}
    with mpmath.workdps(60):
        exact = mpmath.log1p(mpmath.fsum(c * mpmath.exp(mpmath.mpf(float(v)))
                                         for v, c in counts.items()))
    ref = testing.round_to_dtype(np.array([exact], object), "float64")[0]
    ours = float(so.reduce_logsumexp(tf.constant(x)))
    # documented bound: relative error <= 2 eps with the compensated sum -> <= 2 ulp
    assert testing.ulp_distance(ours, ref, "float64") <= 2
    e = tf.exp(tf.constant(x))  # the same formula with TF's plain sum fails that bound
    m = np.max(x)
    plain = float(m + tf.math.log1p(tf.reduce_sum(e) - 1.0))
    assert testing.ulp_distance(plain, ref, "float64") > 2


# --- gradients against the mpmath derivative, 4 ulp (documented bound) ------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_matches_mpmath(dtype):
    rows = testing.sample_floats(dtype, 4 * 400, -40, 40, seed=7).reshape(400, 4)
    rows = rows[(np.abs(rows) >= np.finfo(dtype).tiny).all(axis=1)]  # TF flushes subnormals
    x = tf.constant(rows)
    assert len(rows) > 100
    cols = rows.T
    # reduce_logsumexp: d/dx_j = softmax_j; softmax: d p_0 / d x_j = p_0 (delta_0j - p_j)
    d_lse = np.stack([testing.reference(lambda *v, j=j: mpmath.exp(_ls_mp(j)(*v)), *cols,
                                        dtype=dtype) for j in range(4)], 1)

    def dsm(j):
        def f(*v):
            p = [mpmath.exp(_ls_mp(i)(*v)) for i in range(4)]
            if j == 0:  # p_0 (1 - p_0), with 1 - p_0 summed, not cancelled
                return p[0] * mpmath.fsum(p[1:])
            return -p[0] * p[j]
        return f

    d_sm = np.stack([testing.reference(dsm(j), *cols, dtype=dtype) for j in range(4)], 1)
    for fn, ref in [(lambda v: so.reduce_logsumexp(v, axis=1), d_lse),
                    (lambda v: so.softmax(v)[:, 0], d_sm)]:
        for run in (lambda f: f(), lambda f: tf.function(f)()):
            def grad():
                with tf.GradientTape() as t:
                    t.watch(x)
                    y = fn(x)
                return t.gradient(y, x)
            g = np.asarray(run(grad))
            r64 = ref.astype(np.float64)
            keep = np.isfinite(r64) & ((np.abs(r64) >= np.finfo(dtype).tiny) | (r64 == 0))
            assert np.max(testing.ulp_distance(g[keep], ref[keep], dtype)) <= 4


def test_bad_input_raises_names_op_and_argument():
    with pytest.raises(TypeError, match=r"safeops\.reduce_logsumexp.*input_tensor"):
        so.reduce_logsumexp(tf.constant([1, 2]))
    with pytest.raises(TypeError, match=r"safeops\.log_softmax.*logits"):
        so.log_softmax(tf.constant([1, 2]))
    with pytest.raises(TypeError, match=r"safeops\.softmax.*logits"):
        so.softmax(tf.constant([1, 2]))
    # an out-of-range class axis: InvalidArgumentError, as tf.nn.softmax
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"safeops\.softmax.*axis.*rank 2"):
        so.softmax(tf.zeros([2, 3]), axis=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"safeops\.log_softmax.*axis"):
        so.log_softmax(tf.zeros([2, 3]), axis=-3)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_log_softmax_sum_of_flushed_terms(mode):
    # Each exp(x_i - m) ~ 8.7e-39 is below float32's smallest normal (FTZ kernels flush
    # it), but their sum s ~ 2.6e-38 is normal, and log_softmax of the max entry is -s.
    row = np.array([[1.4592832e-04, 87.64068, -4.4514082e-20, 5.5164321e-17]], np.float32)
    ref = testing.reference(_ls_mp(1), *row.T, dtype="float32")
    fn = so.log_softmax if mode == "eager" else tf.function(so.log_softmax)
    out = fn(tf.constant(row)).numpy()[:, 1]
    assert ref[0] < -np.finfo(np.float32).tiny          # a normal float32 result
    assert testing.bits_of_error(out, ref, "float32").max() <= 2   # the documented bound


# --- the graph path's backward recomputes e from x and the row max ----------------------------

def _softmax_vjp64(x, g, axis):
    """p (g - sum(g p)) in float64 from float64 p, and the scale of its error terms."""
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    g = np.moveaxis(g.astype(np.float64), axis, -1)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    c = np.take_along_axis(g, np.argmax(p, -1)[..., None], -1)  # the implementation's shift
    d = g - c
    vjp = p * (d - np.sum(d * p, -1, keepdims=True))
    scale = p * (np.abs(d) + np.sum(np.abs(d) * p, -1, keepdims=True))
    return np.moveaxis(vjp, -1, axis), np.moveaxis(scale, -1, axis)


@pytest.mark.parametrize("shape,axis", [((6, 7), -1), ((6, 7), 0), ((3, 5, 4), 1), ((9,), 0)])
def test_gradient_modes_and_axes(shape, axis):
    # float32 in graph and XLA (the fused path, a dot with ones for the float64 sum along
    # any axis) against the float64 vector-Jacobian product with a random upstream g.
    # Bound: each p_i carries relative error <= 2 eps (e from exp(hi) (1 + lo), ~1 ulp,
    # plus the rounded sum), so |error| <= 2 eps p_j (|d_j| + sum |d_i| p_i) from p,
    # the same from the sum, plus the final rounding: 4 eps * scale + 1 ulp.
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    ref, scale = _softmax_vjp64(x, g, axis)
    eps = np.finfo(np.float32).eps

    def vjp(xt):
        with tf.GradientTape() as t:
            t.watch(xt)
            y = so.softmax(xt, axis=axis)
        return t.gradient(y, xt, output_gradients=tf.constant(g))

    for mode, out in testing.run_modes(vjp, tf.constant(x)).items():
        tol = 4 * eps * scale + np.spacing(np.abs(ref).astype(np.float32))
        assert np.all(np.abs(out - ref) <= tol), mode


def test_gradient_edge_rows_in_graph():
    # masked, +inf and NaN rows through the fused backward: same values as eagerly
    x = tf.constant([[NINF, NINF, NINF], [np.inf, 1.0, np.inf], [np.nan, 1.0, 2.0],
                     [3.0, 1.0, 2.0]], tf.float32)
    g = tf.constant([[1.0, 2.0, 3.0]] * 4)

    def vjp(xt):
        with tf.GradientTape() as t:
            t.watch(xt)
            y = so.softmax(xt)
        return t.gradient(y, xt, output_gradients=g)

    r = testing.run_modes(vjp, x)
    assert np.all(r["eager"][0] == 0.0)                         # masked row: 0
    assert np.all(np.isfinite(r["eager"][:2]))
    # +inf row: p = [1/2, 0, 1/2], c = 3 (g at a max entry): p (g - c - sum((g - c) p))
    np.testing.assert_array_equal(r["eager"][1], [-0.5, 0.0, 0.5])
    assert np.isnan(r["eager"][2]).all()                        # NaN propagates
    for m in ("function", "jit_compile"):
        np.testing.assert_array_equal(r[m][:3], r["eager"][:3])
        assert np.max(testing.ulp_distance(r[m][3], r["eager"][3], "float32")) <= 2


@pytest.mark.parametrize("op", ["log_softmax", "reduce_logsumexp"])
def test_gradient_edge_rows_in_graph_log_ops(op):
    # their backward passes also recompute e from x and the row max in the fused path
    fn = so.log_softmax if op == "log_softmax" else (lambda v: so.reduce_logsumexp(v, axis=-1))
    x = tf.constant([[NINF, NINF, NINF], [np.inf, 1.0, np.inf], [3.0, 1.0, 2.0]], tf.float32)

    def grad(xt):
        with tf.GradientTape() as t:
            t.watch(xt)
            y = fn(xt)
        g = tf.constant([1.0, 2.0, 3.0]) if op == "reduce_logsumexp" else tf.constant(
            [[1.0, 2.0, 3.0]] * 3)
        return t.gradient(y, xt, output_gradients=g)

    r = testing.run_modes(grad, x)
    assert np.all(np.isfinite(r["eager"]))
    if op == "reduce_logsumexp":  # softmax times the upstream g: 0 / [1, 0, 1] / p
        np.testing.assert_array_equal(r["eager"][:2], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    else:  # masked row: softmax 0, gradient g
        np.testing.assert_array_equal(r["eager"][0], [1.0, 2.0, 3.0])
    for m in ("function", "jit_compile"):
        np.testing.assert_array_equal(r[m][:2], r["eager"][:2])
        assert np.max(testing.ulp_distance(r[m][2], r["eager"][2], "float32")) <= 2


@pytest.mark.parametrize("shape", [[0, 0], [0, 3], [2, 0]])
def test_empty_rows_with_unknown_shape_match_tf(shape):
    """Shapes known only when the graph runs: 0 rows of length 0 stay 0 rows (the kernel path
    must not infer one row from reshape's -1)."""
    spec = [tf.TensorSpec([None, None], tf.float32)]
    x = tf.zeros(shape)
    lse = tf.function(lambda v: so.reduce_logsumexp(v, axis=-1), input_signature=spec)(x)
    np.testing.assert_array_equal(lse.numpy(), tf.reduce_logsumexp(x, axis=-1).numpy())
    sm = tf.function(so.softmax, input_signature=spec)(x)
    assert sm.shape == tf.nn.softmax(x).shape


# --- log_softmax on the fused kernel (eager forward and backward; in a graph its forward
# --- with the XLA-fused backward) and on the pure-TF path: the same documented bounds ---------

def _lsm_rows():
    """Rows of 37 (two 16-lane blocks and a tail) with spreads past exp's range, a dominant
    entry, a masked row, -inf entries, a +inf row with two +inf entries and ties."""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((12, 37)) * np.array([[1.0], [5.0], [30.0], [60.0]] * 3)).astype(
        np.float32)
    x[4] = -30.0
    x[4, 17] = 25.0                              # one entry dominates: log p_top ~ -1e-23
    x[5] = NINF                                  # masked row
    x[6, ::3] = NINF                             # -inf entries in a finite row
    x[7, [2, 30]] = np.inf                       # +inf row: -log 2 on its two +inf entries
    x[8, [0, 20, 36]] = x[8].max() + 1.0         # three tied maxima
    return x


def _lsm_reference(x):
    """x_ij - logsumexp(x_i) at 80 digits, rounded once to float32."""
    out = np.empty(x.shape, object)
    with mpmath.workdps(80):
        for i, row in enumerate(x.astype(np.float64)):
            if np.isposinf(row).any():
                k = int(np.isposinf(row).sum())
                out[i] = [-mpmath.log(k) if np.isposinf(v) else mpmath.mpf("-inf") for v in row]
                continue
            finite = [mpmath.mpf(float(v)) for v in row if np.isfinite(v)]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in finite)) if finite else None
            out[i] = [mpmath.mpf(float(v)) - lse if np.isfinite(v) else mpmath.mpf("-inf")
                      for v in row]
    return testing.round_to_dtype(out, "float32")


def _lsm_check(out, ref):
    # documented bound: <= 3 ulp (2 bits) of every entry; -inf entries exactly
    out = np.asarray(out)
    assert np.array_equal(np.isneginf(out), np.isneginf(ref))
    keep = np.isfinite(ref.astype(np.float64)) & (np.abs(ref) >= np.finfo(np.float32).tiny)
    assert np.max(testing.ulp_distance(out[keep], ref[keep], "float32")) <= 3


def test_log_softmax_kernel_kind(_path):
    if _path == "tf":
        pytest.skip("the kernel itself")
    x = _lsm_rows()
    lib = so.native.library()
    y, stats = lib.safeops_softmax(tf.constant(x), kind="log_softmax")
    ref = _lsm_reference(x)
    _lsm_check(y, ref)
    # the row statistics are those of the other kinds: (max, s)
    _, stats_sm = lib.safeops_softmax(tf.constant(x), kind="softmax")
    np.testing.assert_array_equal(stats.numpy(), stats_sm.numpy())
    assert np.isnan(lib.safeops_softmax(tf.constant([[1.0, np.nan]]), kind="log_softmax")[0]).all()
    # the pure-TF path meets the same bound on the same rows
    with so.native.disabled():
        _lsm_check(so.log_softmax(x), ref)


def test_log_softmax_modes_match_reference():
    x = tf.constant(_lsm_rows())
    ref = _lsm_reference(x.numpy())
    for out in testing.run_modes(so.log_softmax, x).values():
        _lsm_check(out, ref)
    # the dominant entry keeps its relative accuracy (TF's kernel returns 0.0 there)
    assert ref[4, 17] < 0 and tf.nn.log_softmax(x).numpy()[4, 17] == 0.0


def _lsm_vjp(fn, x, g):
    def vjp(xt):
        with tf.GradientTape() as t:
            t.watch(xt)
            y = fn(xt)
        return t.gradient(y, xt, output_gradients=g)
    return testing.run_modes(vjp, tf.constant(x))


def test_log_softmax_gradient_float32():
    # g - p sum(g) against float64 from float64 p. Bound: p carries <= 2 eps relative (the
    # exp, ~1 ulp, and 1 / (1 + s)); sum(g) <= (n - 1) eps sum|g| (a float32 sum on the
    # XLA-fused path); plus the roundings of the product and the difference (2 eps):
    # |error| <= (n + 4) eps (|g_i| + p_i sum|g|) + 1 ulp of the result.
    x = _lsm_rows()[[0, 1, 2, 3, 4, 6, 8]]
    g = np.random.default_rng(22).standard_normal(x.shape).astype(np.float32)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    p = np.exp(x64 - x64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = g64 - p * g64.sum(-1, keepdims=True)
    n, eps = x.shape[1], np.finfo(np.float32).eps
    tol = (n + 4) * eps * (np.abs(g64) + p * np.abs(g64).sum(-1, keepdims=True))
    tol += np.spacing(np.abs(ref).astype(np.float32))
    for mode, out in _lsm_vjp(so.log_softmax, x, tf.constant(g)).items():
        assert np.all(np.abs(out - ref) <= tol), mode


def test_log_softmax_gradient_of_dominant_entry():
    # d log p_0 / d x_0 = 1 - p_0 = s / (1 + s) = 3 e^-20 / (1 + 3 e^-20): computed as
    # 1 - p it is 0.0 in float32; the documented formula keeps it to a few ulp.
    # d log p_0 / d x_1 = -p_1 = -e^-20 / (1 + s).
    x = np.array([[20.0, 0.0, 0.0, 0.0]], np.float32)
    g = tf.constant([[1.0, 0.0, 0.0, 0.0]])
    with mpmath.workdps(40):
        s = 3 * mpmath.exp(-20)
        exact = testing.round_to_dtype(np.array([s / (1 + s), -mpmath.exp(-20) / (1 + s)],
                                                object), "float32")
    for mode, out in _lsm_vjp(so.log_softmax, x, g).items():
        assert testing.ulp_distance(out[0, 0], exact[0], "float32") <= 2, (mode, out)
        assert testing.ulp_distance(out[0, 1], exact[1], "float32") <= 1, (mode, out)


def test_log_softmax_second_order(_path):
    # d/dx of sum(v * (g - p sum(g))) = -sum(g) p_j (v_j - sum(v p)); no bound is documented
    # for second derivatives: float32 against float64 within 1e-5 relative to the scale.
    # The kernel's backward (eager) and the backward fed with its row statistics (graph)
    # each have their own second-order rule; under XLA the kernel does not run.
    if _path == "tf":
        pytest.skip("the kernel paths' second-order rules")
    rng = np.random.default_rng(23)
    x = (rng.standard_normal((5, 19)) * 4).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    v = rng.standard_normal(x.shape).astype(np.float32)
    x64, g64, v64 = (a.astype(np.float64) for a in (x, g, v))
    p = np.exp(x64 - x64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = -g64.sum(-1, keepdims=True) * p * (v64 - (v64 * p).sum(-1, keepdims=True))

    def second(xt):
        with tf.GradientTape() as outer:
            outer.watch(xt)
            with tf.GradientTape() as inner:
                inner.watch(xt)
                y = so.log_softmax(xt)
            dx = inner.gradient(y, xt, output_gradients=tf.constant(g))
            z = tf.reduce_sum(dx * v)
        return outer.gradient(z, xt)

    xt = tf.constant(x)
    for mode, out in (("eager", second(xt)), ("function", tf.function(second)(xt))):
        out = out.numpy()
        assert np.all(np.isfinite(out)), mode
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max(), err_msg=mode)


def test_log_softmax_dispatch(_path):
    # float32 along the last axis: the kernel's forward in a graph (its backward the
    # XLA-fused one, from the row statistics); never under XLA or for float64
    def op_types(fn, x, jit=False):
        def f(v):
            with tf.GradientTape() as t:
                t.watch(v)
                y = fn(v)
            return y, t.gradient(y, v)
        graph = tf.function(f, jit_compile=jit).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    x = tf.ones([4, 8])
    used = "SafeopsSoftmax" in op_types(so.log_softmax, x)
    assert used == (_path == "fused")
    assert "SafeopsSoftmaxGrad" not in op_types(so.log_softmax, x)
    assert "SafeopsSoftmax" not in op_types(so.log_softmax, x, jit=True)
    assert "SafeopsSoftmax" not in op_types(so.log_softmax, tf.ones([4, 8], tf.float64))
    assert "SafeopsSoftmax" not in op_types(lambda v: so.log_softmax(v, axis=0), x)
