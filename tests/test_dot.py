"""safeops.dot: dot and matmul against exact dot products (safeops.testing.exact_dot)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing
from test_native_support import last_lines_per_thread_count

U64 = 2.0**-53


def _ulps(actual, expected, dtype):
    return int(np.max(testing.ulp_distance(actual.numpy(), expected, dtype)))


def test_dot_and_matmul_float32_cond_1e7():
    x, y, exact, cond = testing.ill_conditioned_dot(2000, 1e7, "float32", seed=1)
    assert cond > 3e6
    assert _ulps(so.dot(x, y), exact, "float32") <= 1  # documented: 1 ulp up to cond 1e7
    assert _ulps(so.matmul(x[None, :], y[:, None])[0, 0], exact, "float32") <= 1
    assert _ulps(so.matmul(x[:, None], y[:, None], transpose_a=True)[0, 0], exact,
                 "float32") <= 1
    assert _ulps(tf.reduce_sum(x * y), exact, "float32") > 1  # the naive ops fail
    assert _ulps(tf.linalg.matmul(x[None, :], y[:, None])[0, 0], exact, "float32") > 1


def test_dot_float64_dot2_bound():
    n = 1000
    x, y, exact, _ = testing.ill_conditioned_dot(n, 1e20, "float64", seed=2)
    absdot = float(testing.exact_dot(np.abs(x), np.abs(y)))
    k = math.ceil(math.log2(2 * n))
    gamma = k * U64 / (1 - k * U64)
    bound = 2 * U64 * abs(exact) + gamma**2 * absdot  # documented Dot2 bound + reference rounding
    assert abs(float(so.dot(x, y)) - exact) <= bound
    assert abs(float(so.matmul(x[None, :], y[:, None])[0, 0]) - exact) <= bound
    assert abs(float(tf.reduce_sum(x * y)) - exact) > bound


def test_batched_shapes_and_modes():
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        a = rng.standard_normal((2, 3, 5)).astype(dtype)
        b = rng.standard_normal((2, 5, 4)).astype(dtype)
        out = testing.run_modes(so.matmul, a, b)
        bt = np.swapaxes(b, -1, -2)
        ref = testing.exact_dot(np.broadcast_to(a[:, :, None, :], (2, 3, 4, 5)),
                                np.broadcast_to(bt[:, None, :, :], (2, 3, 4, 5)), dtype=name)
        for mode, v in out.items():
            assert v.shape == (2, 3, 4) and v.dtype == dtype, mode
            # well-conditioned (cond < 1e3): the documented bounds give <= 1 ulp in both dtypes
            assert int(np.max(testing.ulp_distance(v, ref, name))) <= 1, mode
        d = testing.run_modes(lambda u, w: so.dot(u, w, axis=1, keepdims=True), a, a)
        ref = testing.exact_dot(np.swapaxes(a, 1, 2), np.swapaxes(a, 1, 2), dtype=name)[:, None]
        for mode, v in d.items():  # sums of squares: cond 1, so the bounds give <= 1 ulp
            assert v.shape == (2, 1, 5), mode
            assert int(np.max(testing.ulp_distance(v, ref, name))) <= 1, mode
    x = tf.constant([1e8, 1.0, -1e8])
    for v in testing.run_modes(lambda u: so.dot(u, tf.ones_like(u)), x).values():
        assert float(v) == 1.0


def _dot2_bound(x, y, exact):
    """Documented float64 bound u|x.y| + gamma_{k+2}^2 |x|.|y|, k = ceil(log2 n), plus u|x.y|
    for rounding the exact reference to float64."""
    k = math.ceil(math.log2(x.shape[-1])) + 2
    gamma = k * U64 / (1 - k * U64)
    absdot = np.asarray(testing.exact_dot(np.abs(x), np.abs(y)), np.float64)
    return 2 * U64 * np.abs(exact) + gamma**2 * absdot


def test_float64_ill_conditioned_under_xla():
    # XLA:CPU contracts multiplies into FMAs (also products it duplicates into the TwoSum
    # tree's kernels); with only exact multiplies in the float64 path, every mode must give
    # the eager result, inside the Dot2 bound, where the naive product is far outside it.
    x, y, exact, cond = testing.ill_conditioned_dot(1000, 1e12, "float64", seed=0)
    assert cond > 1e11
    bound = float(_dot2_bound(x, y, exact))
    for fn in (lambda u, w: so.dot(u, w),
               lambda u, w: so.matmul(u[:, None], w[:, None], transpose_a=True)[0, 0]):
        out = testing.run_modes(fn, x, y)
        for mode, v in out.items():
            assert abs(float(v) - exact) <= bound, mode
            assert float(v) == float(out["eager"]), mode
    naive = testing.run_modes(lambda u, w: tf.reduce_sum(u * w), x, y)
    for mode, v in naive.items():
        assert abs(float(v) - exact) > bound, mode


def test_float64_matmul_under_xla():
    # batched, several ill-conditioned rows (cond 1e12 each): XLA = eager, inside the bound
    rows = [testing.ill_conditioned_dot(300, 1e12, "float64", seed=s) for s in range(6)]
    a = np.stack([r[0] for r in rows]).reshape(2, 3, 300)
    bt = np.stack([r[1] for r in rows]).reshape(2, 3, 300)  # [batch, n, k]
    b = np.swapaxes(bt, -1, -2)
    prods = np.broadcast_to(a[:, :, None, :], (2, 3, 3, 300)), \
        np.broadcast_to(bt[:, None, :, :], (2, 3, 3, 300))
    exact = np.asarray(testing.exact_dot(*prods), np.float64)
    bound = _dot2_bound(*prods, exact)
    out = testing.run_modes(so.matmul, a, b)
    for mode, v in out.items():
        assert np.all(np.abs(v - exact) <= bound), mode
        np.testing.assert_array_equal(v, out["eager"])
    assert np.any(np.abs(np.matmul(a, b) - exact) > bound)  # the naive product fails


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_nonfinite_propagate_as_tf(dtype):
    a = tf.constant([[np.inf, 1.0, 2.0], [np.inf, 1.0, -np.inf], [np.nan, 1.0, 0.0],
                     [1e300, 1e300, 1.0]], tf.float64)
    a = tf.cast(a, dtype)  # float32: 1e300 -> inf
    b = tf.constant([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1e10, -1.0, 1.0]], dtype)
    for mode, v in testing.run_modes(lambda u, w: so.dot(u, w), a, b).items():
        np.testing.assert_array_equal(v, tf.reduce_sum(a * b, -1).numpy(), err_msg=mode)
    for mode, v in testing.run_modes(lambda u, w: so.matmul(u, w, transpose_b=True), a, b).items():
        np.testing.assert_array_equal(v, tf.linalg.matmul(a, b, transpose_b=True).numpy(),
                                      err_msg=mode)


def test_gradients():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    assert testing.check_gradients(so.matmul, a, b) < 1e-7
    assert testing.check_gradients(lambda u, v: so.matmul(u, v, transpose_a=True),
                                   a.T.copy(), b) < 1e-7
    assert testing.check_gradients(lambda u, v: so.dot(u, v, axis=0), a, a[:, ::-1].copy()) < 1e-7
    x = tf.constant([3e38, -3e38, 1.0], tf.float32)
    testing.assert_finite_gradients(lambda u: so.dot(u, tf.constant([0.5, 0.5, 1.0])), x)


def test_dtypes_and_bad_input():
    for dtype in (tf.float16, tf.bfloat16):
        a = tf.cast([[1.0, 2.0], [3.0, 4.0]], dtype)
        assert so.matmul(a, a).dtype == dtype and so.dot(a, a).dtype == dtype
        np.testing.assert_array_equal(tf.cast(so.matmul(a, a), tf.float32), [[7, 10], [15, 22]])
    ints = tf.constant([[1, 2], [3, 4]])
    assert so.matmul(ints, ints).numpy().tolist() == [[7, 10], [15, 22]]
    with pytest.raises(TypeError, match="safeops.dot.*'x'"):
        so.dot(tf.constant([True]), tf.constant([True]))
    with pytest.raises(TypeError, match="safeops.matmul.*'a'"):
        so.matmul(tf.constant([["a"]]), tf.constant([["a"]]))
    with pytest.raises(TypeError, match="same dtype"):
        so.dot(tf.constant([1.0]), tf.constant([1.0], tf.float64))
    nan = so.dot(tf.constant([np.inf, 1.0], tf.float64), tf.constant([1.0, np.nan], tf.float64))
    assert np.isnan(float(nan))


def test_python_number_takes_the_tensor_dtype():
    y = tf.constant([1e-20, 1.0], tf.float64)
    out = so.dot([3.0, -1.0], y)  # 3e-20 - 1 in float64
    assert out.dtype == tf.float64 and float(out) == 3e-20 - 1.0
    assert so.matmul([[1.0, 2.0]], tf.constant([[1.0], [1.0]], tf.float64)).dtype == tf.float64


def _rounded_once(x, y, tx=False, ty=False):
    """float32 of the float64 product: float32 products are exact in float64, and the float64
    sum is within k u64 sum|x y| of the exact one, far inside half a float32 ulp here."""
    x, y = np.float64(x), np.float64(y)
    x = np.swapaxes(x, -1, -2) if tx else x
    y = np.swapaxes(y, -1, -2) if ty else y
    return np.float32(np.matmul(x, y))


_FLAGS = [{}, {"transpose_a": True}, {"transpose_b": True}, {"adjoint_a": True, "adjoint_b": True}]


@pytest.mark.parametrize("flags", _FLAGS, ids=lambda f: ",".join(f) or "plain")
def test_float32_matmul_is_the_float64_product_rounded_once(flags):
    # the documented float32 method, in every mode and on both paths (native kernel on the
    # CPU, TF's float64 matmul under XLA or with the kernels off)
    rng = np.random.default_rng(5)
    ta = flags.get("transpose_a", False) or flags.get("adjoint_a", False)
    tb = flags.get("transpose_b", False) or flags.get("adjoint_b", False)
    a = rng.standard_normal((300, 40) if ta else (40, 300)).astype(np.float32)
    b = rng.standard_normal((24, 300) if tb else (300, 24)).astype(np.float32)
    ref = _rounded_once(a, b, ta, tb)
    outs = testing.run_modes(lambda u, w: so.matmul(u, w, **flags), a, b)
    with so.native.disabled():
        outs["pure TF"] = so.matmul(a, b, **flags).numpy()
    for mode, v in outs.items():
        assert v.dtype == np.float32 and v.shape == (40, 24), mode
        u = testing.ulp_distance(v, ref, "float32")
        # one rounding of a float64 sum: equal to the rounded reference unless both float64
        # sums straddle a float32 midpoint (never here); 1 ulp is the documented bound
        assert np.max(u) <= 1 and np.median(u) == 0, mode
    naive = testing.ulp_distance(tf.linalg.matmul(a, b, **flags).numpy(), ref, "float32")
    assert np.median(naive) > 0  # float32 accumulation fails the same check


def test_float32_matmul_gradients_round_once():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((12, 200)).astype(np.float32)
    b = rng.standard_normal((200, 9)).astype(np.float32)
    g = rng.standard_normal((12, 9)).astype(np.float32)
    da_ref, db_ref = _rounded_once(g, b, ty=True), _rounded_once(a, g, tx=True)
    for ta, tb in [(False, False), (True, False), (False, True), (True, True)]:
        u, w = (a.T.copy() if ta else a), (b.T.copy() if tb else b)

        def flagged(x, y, ta=ta, tb=tb):
            with tf.GradientTape() as tape:
                tape.watch([x, y])
                out = so.matmul(x, y, transpose_a=ta, transpose_b=tb)
            return tape.gradient(out, [x, y], output_gradients=tf.constant(g))

        for mode, (da, db) in testing.run_modes(flagged, tf.constant(u), tf.constant(w)).items():
            ra, rb = (da_ref.T if ta else da_ref), (db_ref.T if tb else db_ref)
            for got, ref in ((da, ra), (db, rb)):
                assert got.shape == ref.shape, (mode, ta, tb)
                # computed in the accumulation precision: one rounding, as the forward
                u_ = testing.ulp_distance(got, ref, "float32")
                assert np.max(u_) <= 1 and np.median(u_) == 0, (mode, ta, tb)
    # second order: the gradient is itself a compensated matmul, differentiable again
    x = tf.constant(a[:3, :4])
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = tf.reduce_sum(so.matmul(x, x, transpose_b=True))
        dx = inner.gradient(y, x)
    # y = sum_k (sum_i x_ik)^2: dy/dx_ik = 2 colsum_k, and d(sum dx)/dx = 2 * 3 everywhere
    np.testing.assert_array_equal(outer.gradient(dx, x).numpy(), np.full((3, 4), 6.0))


def test_float32_shapes_and_errors_as_tf():
    rng = np.random.default_rng(7)

    def data(*shape):
        return tf.constant(rng.standard_normal(shape).astype(np.float32))

    cases = [(data(2, 1, 3, 4), data(5, 4, 2)),        # broadcast batch dimensions
             (data(3, 4, 5), data(5, 2)),              # one operand unbatched
             (data(0, 3), data(3, 4)), (data(2, 0), data(0, 3)),  # empty; k = 0 gives zeros
             (data(2, 0, 3), data(2, 3, 4)),
             (data(2100, 8), data(8, 1030)), (data(50, 9, 7), data(50, 7, 3))]  # many tiles
    for a, b in cases:
        want = tf.linalg.matmul(a, b)
        for mode, got in testing.run_modes(so.matmul, a, b).items():
            assert got.shape == tuple(want.shape) and got.dtype == np.float32, mode
            np.testing.assert_array_equal(got, _rounded_once(a, b), err_msg=mode)
    # unknown dimensions and rank: the static shape TF infers, the values of the known case
    a, b = data(2, 3, 4), data(2, 4, 5)
    for spec in ([None, None, None], [2, None, None], None):
        sig = [tf.TensorSpec(spec, tf.float32)] * 2
        ours = tf.function(so.matmul, input_signature=sig)
        theirs = tf.function(tf.linalg.matmul, input_signature=sig)
        got = ours(a, b)
        assert got.shape == (2, 3, 5)
        assert ours.get_concrete_function().structured_outputs.shape == \
            theirs.get_concrete_function().structured_outputs.shape, spec
        np.testing.assert_array_equal(got.numpy(), _rounded_once(a, b))
    # mismatched inner or batch dimensions: TF's error type, eagerly and while tracing
    for a, b in [(data(2, 3), data(4, 2)), (data(2, 2, 3), data(3, 3, 2))]:
        for wrap in (lambda f: f, tf.function):
            with pytest.raises(Exception) as theirs:
                wrap(tf.linalg.matmul)(a, b)
            with pytest.raises(type(theirs.value)):
                wrap(so.matmul)(a, b)
    # the same mismatch found only when the graph runs
    sig = [tf.TensorSpec([None, None], tf.float32)] * 2
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.function(tf.linalg.matmul, input_signature=sig)(data(2, 3), data(4, 2))
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.function(so.matmul, input_signature=sig)(data(2, 3), data(4, 2))


def _op_types(fn, *args, jit_compile=False):
    graph = tf.function(fn, jit_compile=jit_compile).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


def test_float32_matmul_kernel_where_it_can_run():
    lib = so.native.library()
    if lib is None or not hasattr(lib, "safeops_wide_matmul"):
        pytest.skip(f"native kernels without the matmul kernel: {so.native.status()['error']}")
    a = tf.ones([4, 3])
    assert "SafeopsWideMatmul" in _op_types(so.matmul, a, a, False, True)
    assert "SafeopsWideMatmul" not in _op_types(so.matmul, a, a, False, True, jit_compile=True)
    with so.native.disabled():
        assert "SafeopsWideMatmul" not in _op_types(so.matmul, a, a, False, True)
    # float16/bfloat16 keep TF's float32 matmul; float64 keeps Dot2
    for dtype in (tf.float16, tf.float64):
        assert "SafeopsWideMatmul" not in _op_types(so.matmul, tf.cast(a, dtype),
                                                    tf.cast(a, dtype), False, True)


def _wide_matmul_op():
    lib = so.native.library()
    if lib is None or not hasattr(lib, "safeops_wide_matmul"):
        pytest.skip(f"native kernels without the matmul kernel: {so.native.status()['error']}")
    return lib.safeops_wide_matmul


def _stored(rng, rows, cols, transpose, batch=None):
    shape = (cols, rows) if transpose else (rows, cols)
    return rng.standard_normal(shape if batch is None else (batch, *shape)).astype(np.float32)


def _as_used(x, transpose):
    x = np.float64(x)
    return np.swapaxes(x, -1, -2) if transpose else x


def _check_wide_bound(out, a, b, ta, tb, exact_sums):
    """|out - exact| <= half a float32 ulp + k 2^-53 sum|a b| (one rounding of a float64 sum
    in any order), exact from math.fsum or, with twice the float64 term, from NumPy."""
    x, y = _as_used(a, ta), _as_used(b, tb)
    k = x.shape[-1]
    size = np.abs(x) @ np.abs(y)
    if exact_sums:
        exact = np.empty(out.shape)
        for idx in np.ndindex(*out.shape):
            *q, i, j = idx
            exact[idx] = math.fsum(x[(*q, i)] * y[(*q, slice(None), j)])
        slack = 1.0
    else:
        exact = x @ y
        slack = 2.0
    half_ulp = 0.5 * np.spacing(np.abs(np.float32(exact))).astype(np.float64)
    err = np.abs(np.float64(out) - exact)
    assert np.all(err <= half_ulp + slack * k * 2.0**-53 * size), np.max(err / (2 * half_ulp))


# m, k, n around the packing edges: micro-tiles of 8 rows x 24 columns, 128-long blocks of
# the inner dimension, 192-row blocks of A within a tile, tiles fixed by the shape
_WIDE_SHAPES = [(1, 1, 1), (1, 300, 1), (1, 7, 33), (7, 1, 25), (9, 129, 23), (8, 128, 24),
                (16, 256, 48), (17, 257, 49), (25, 12, 7), (3, 131, 200)]
_WIDE_LARGE = [(520, 300, 530), (200, 1023, 61), (130, 44, 600)]


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_wide_matmul_kernel_within_one_rounding_of_the_exact_sum(ta, tb):
    op = _wide_matmul_op()
    rng = np.random.default_rng(21)
    for m, k, n in _WIDE_SHAPES + _WIDE_LARGE:
        a, b = _stored(rng, m, k, ta), _stored(rng, k, n, tb)
        out = op(a, b, transpose_a=ta, transpose_b=tb).numpy()
        assert out.dtype == np.float32 and out.shape == (m, n)
        _check_wide_bound(out, a, b, ta, tb, exact_sums=(m, k, n) in _WIDE_SHAPES)
        # the registered op through so.matmul in a graph: the same bits
        g = tf.function(lambda u, w: so.matmul(u, w, transpose_a=ta, transpose_b=tb))(a, b)
        assert g.numpy().tobytes() == out.tobytes()


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_wide_matmul_kernel_batched_and_ragged(ta, tb):
    op = _wide_matmul_op()
    rng = np.random.default_rng(22)
    for q, m, k, n in [(3, 17, 257, 49), (2, 1, 5, 1), (4, 33, 1, 26), (2, 250, 140, 75)]:
        a, b = _stored(rng, m, k, ta, q), _stored(rng, k, n, tb, q)
        out = op(a, b, transpose_a=ta, transpose_b=tb).numpy()
        assert out.shape == (q, m, n)
        _check_wide_bound(out, a, b, ta, tb, exact_sums=m * n * q < 5000)
        for i in range(q):  # each batch entry as its own product: the same bits
            one = op(a[i], b[i], transpose_a=ta, transpose_b=tb).numpy()
            assert one.tobytes() == out[i].tobytes()
    # k == 0 gives zeros, empty outputs stay empty
    z = op(np.zeros((2, 3, 0), np.float32), np.zeros((2, 0, 4), np.float32)).numpy()
    assert z.shape == (2, 3, 4) and not np.any(z) and not np.any(np.signbit(z))
    assert op(np.zeros((0, 5), np.float32), np.ones((5, 3), np.float32)).numpy().shape == (0, 3)


def test_wide_matmul_kernel_signed_zeros():
    op = _wide_matmul_op()
    one = np.ones((1, 1), np.float32)
    assert not np.signbit(op(-0.0 * one, one).numpy()[0, 0])
    assert np.signbit(op(1e-30 * one, -1e-30 * one).numpy()[0, 0])
    for m, k, n in [(3, 1, 2), (9, 3, 25), (40, 300, 50), (300, 260, 270)]:
        a = np.ones((m, k), np.float32)
        b = np.ones((k, n), np.float32)
        a[0] = -0.0      # every product -0.0: the sum starts at +0.0, so +0.0
        a[-1] = 1e-30    # negative products below float32's range: -0.0 after the rounding
        b[:, -1] = -1e-30
        a[1, :] = 0.0
        a[1, 0] = -0.0  # -0.0 and +0.0 products: +0.0
        out = op(a, b).numpy()
        assert np.all(out[0] == 0) and not np.any(np.signbit(out[0])), (m, k, n)
        assert out[-1, -1] == 0 and np.signbit(out[-1, -1]), (m, k, n)
        assert np.all(out[-1, :-1] == np.float32(k * np.float64(np.float32(1e-30))))
        assert np.all(out[1] == 0) and not np.any(np.signbit(out[1])), (m, k, n)
        ta_out = op(np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), transpose_a=True,
                    transpose_b=True).numpy()
        assert ta_out.tobytes() == out.tobytes()


def test_wide_matmul_kernel_propagates_nan_and_inf():
    op = _wide_matmul_op()
    rng = np.random.default_rng(23)
    for m, k, n in [(3, 5, 4), (17, 300, 49), (200, 259, 30)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        j = k - 3  # inside the last block of the inner dimension when k > 128
        a[0, j] = np.inf            # row 0: inf times b[j]: +-inf, NaN where b[j] is 0
        b[j, 0] = 0.0
        a[1, j] = np.nan            # row 1: NaN
        a[2, 1], a[2, j] = np.inf, -np.inf  # row 2: inf - inf where b[1], b[j] agree in sign
        b[1, 1], b[j, 1] = 2.0, 3.0
        b[1, 2], b[j, 2] = 2.0, -3.0
        b[k // 2, n - 1] = np.inf   # last column: inf unless another special value
        ref = np.einsum("ik,kj->ij", np.float64(a), np.float64(b), optimize=False)
        for ta, tb in [(False, False), (True, False), (False, True), (True, True)]:
            u = np.ascontiguousarray(a.T) if ta else a
            w = np.ascontiguousarray(b.T) if tb else b
            out = np.float64(op(u, w, transpose_a=ta, transpose_b=tb).numpy())
            assert np.array_equal(np.isnan(out), np.isnan(ref)), (m, k, n, ta, tb)
            inf = np.isinf(ref)
            assert np.array_equal(np.isinf(out), inf) and np.all(out[inf] == ref[inf])
        assert np.isnan(out[0, 0]) and np.isnan(out[1]).all() and np.isnan(out[2, 1])
        assert out[2, 2] == np.inf


_WIDE_THREADS_SCRIPT = """
import sys, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
import safeops as so
op = so.native.library().safeops_wide_matmul
rng = np.random.default_rng(24)
outs = []
for shape_a, shape_b, ta, tb in [((600, 700), (700, 530), False, False),
                                 ((700, 600), (530, 700), True, True),
                                 ((1000, 1023), (999, 1023), False, True),
                                 ((3, 300, 260), (3, 300, 270), True, False)]:
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal(shape_b).astype(np.float32)
    outs.append(op(a, b, transpose_a=ta, transpose_b=tb).numpy().ravel())
print(np.concatenate(outs).tobytes().hex()[::7][:200000])
import hashlib
print(hashlib.sha256(np.concatenate(outs).tobytes()).hexdigest())
"""


def test_wide_matmul_kernel_does_not_depend_on_the_thread_count():
    """Tiles fixed by the shape, the inner dimension in order: 1 and 2 threads give the same
    bits (each run in its own process: TF fixes its pool at start-up)."""
    _wide_matmul_op()
    one, two = last_lines_per_thread_count(_WIDE_THREADS_SCRIPT)
    assert one == two


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_gradient_skips_inputs_the_tape_does_not_need(ta, tb):
    # only the weight's gradient when the other operand is a constant (TF's MatMul
    # gradient does the same); each gradient equals the float64 product rounded once
    lib = so.native.library()
    if lib is None or not hasattr(lib, "safeops_wide_matmul"):
        pytest.skip(f"native kernels without the matmul kernel: {so.native.status()['error']}")
    rng = np.random.default_rng(11)
    a_np = rng.standard_normal((5, 7) if ta else (7, 5)).astype(np.float32)
    w_np = rng.standard_normal((3, 5) if tb else (5, 3)).astype(np.float32)
    a, w = tf.constant(a_np), tf.Variable(w_np)

    def both():
        with tf.GradientTape() as t:
            t.watch(a)
            y = so.matmul(a, w, transpose_a=ta, transpose_b=tb)
        return t.gradient(y, [a, w])

    def weight_only():
        with tf.GradientTape() as t:
            y = so.matmul(a, w, transpose_a=ta, transpose_b=tb)
        return t.gradient(y, w)

    def count(fn):
        graph = tf.function(fn).get_concrete_function().graph
        return sum(op.type == "SafeopsWideMatmul" for op in graph.get_operations())

    assert count(both) == 3 and count(weight_only) == 2
    # d/dw of sum(op(a) @ op(w)): column sums of op(a) against ones, float64 reference
    am = a_np.T.astype(np.float64) if ta else a_np.astype(np.float64)
    g = np.ones((am.shape[0], 3))
    gw = am.T @ g  # d/d op(w)
    ref_w = (gw.T if tb else gw).astype(np.float32)
    np.testing.assert_array_equal(tf.function(weight_only)().numpy(), ref_w)
    ga, gw2 = tf.function(both)()
    np.testing.assert_array_equal(gw2.numpy(), ref_w)
    wm = w_np.T.astype(np.float64) if tb else w_np.astype(np.float64)
    ga_ref = g @ wm.T
    np.testing.assert_array_equal(ga.numpy(), (ga_ref.T if ta else ga_ref).astype(np.float32))
