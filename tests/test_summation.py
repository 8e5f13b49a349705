"""safeops.summation: reduce_sum/mean/variance/std and cumsum against exact references."""

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import safeops as so
from safeops import testing

U64 = 2.0**-53


def _ulps(actual, expected, dtype):
    actual = actual.numpy() if hasattr(actual, "numpy") else actual
    return int(np.max(testing.ulp_distance(actual, expected, dtype)))


@pytest.mark.parametrize("n,seed", [(10**5, 0), (10**5, 1), (10**6, 0)])
def test_ill_conditioned_float32_faithful(n, seed):
    x, exact, cond = testing.ill_conditioned_sum(n, 1e8, "float32", seed=seed)
    assert cond > 5e7
    # documented: faithfully rounded (<= 1 ulp) for condition up to 1e8
    assert _ulps(so.reduce_sum(x), exact, "float32") <= 1
    assert _ulps(so.reduce_mean(x), exact / n, "float32") <= 1
    assert _ulps(tf.reduce_sum(x), exact, "float32") > 1  # the naive op fails the same check


@pytest.mark.slow
def test_ill_conditioned_float32_n_1e7():
    x, exact, _ = testing.ill_conditioned_sum(10**7, 1e8, "float32", seed=0)
    assert _ulps(so.reduce_sum(x), exact, "float32") <= 1
    assert _ulps(tf.reduce_sum(x), exact, "float32") > 1


@pytest.mark.parametrize("cond", [1e16, 1e24])
def test_ill_conditioned_float64_sum2_bound(cond):
    n = 20000
    x, exact, _ = testing.ill_conditioned_sum(n, cond, "float64", seed=2)
    abs_sum = float(testing.exact_sum(np.abs(x)))
    k = math.ceil(math.log2(n))
    gamma = k * U64 / (1 - k * U64)
    # documented Sum2 bound, plus u|s| for rounding the exact reference to float64
    bound = 2 * U64 * abs(exact) + gamma**2 * abs_sum
    assert abs(float(so.reduce_sum(x)) - exact) <= bound
    assert abs(float(so.reduce_mean(x)) - exact / n) <= bound / n + U64 * abs(exact / n)
    assert abs(float(tf.reduce_sum(x)) - exact) > bound


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_ill_conditioned_half_faithful(dtype):
    for seed in range(4):
        x, exact, _ = testing.ill_conditioned_sum(2000, 1e3, dtype, seed=seed)
        assert _ulps(so.reduce_sum(x), exact, dtype) <= 1
    # float16: tf.reduce_sum fails on one of these draws (seed 0: 36 ulp). bfloat16:
    # tf.reduce_sum already accumulates in float32, so no failure is claimed.
    if dtype == "float16":
        x, exact, _ = testing.ill_conditioned_sum(2000, 1e3, dtype, seed=0)
        assert _ulps(tf.reduce_sum(x), exact, dtype) > 1


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_execution_modes(dtype):
    big = 1e3 if dtype in (tf.float16, tf.bfloat16) else 1e8
    x = tf.constant([big, 1.0, -big], dtype)
    for fn in (so.reduce_sum, lambda v: so.reduce_mean(v) * 3, lambda v: so.cumsum(v)[-1]):
        out = testing.run_modes(fn, x)
        assert {k: float(v) for k, v in out.items()} == {
            "eager": 1.0, "function": 1.0, "jit_compile": 1.0}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_execution_modes_ill_conditioned(dtype):
    # XLA must keep the float64 accumulation / TwoSum tree: larger data, all modes exact.
    # (float64: cond 1e12, inside the Sum2 bound's faithful range u * cond * log2(n)^2 << 1)
    x, exact, _ = testing.ill_conditioned_sum(4096, 1e8 if dtype == "float32" else 1e12, dtype)
    out = testing.run_modes(so.reduce_sum, tf.constant(x))
    for mode, val in out.items():
        assert _ulps(val, exact, dtype) <= 1, mode


def _exact_var(x):
    with mpmath.workdps(60):
        v = [mpmath.mpf(float(t)) for t in x]
        m = mpmath.fsum(v) / len(v)
        var = mpmath.fsum([(t - m) ** 2 for t in v]) / len(v)
        return var, mpmath.sqrt(var)


@pytest.mark.parametrize("dtype,offset", [("float32", 1e4), ("float32", 1e6), ("float64", 1e6)])
def test_variance_std_within_4_ulp(dtype, offset):
    rng = np.random.default_rng(3)
    x = (offset + rng.standard_normal(1000)).astype(dtype)
    var, std = _exact_var(x)
    ref_var = testing.round_to_dtype(np.array([var], dtype=object), dtype)[0]
    ref_std = testing.round_to_dtype(np.array([std], dtype=object), dtype)[0]
    assert _ulps(so.reduce_variance(x), ref_var, dtype) <= 4  # documented: 4 ulp
    assert _ulps(so.reduce_std(x), ref_std, dtype) <= 4
    if dtype == "float32" and offset == 1e6:
        # TF's float32 two-pass variance loses the digits (mean error squared)
        assert _ulps(tf.math.reduce_variance(x), ref_var, dtype) > 4


def _exact_prefixes(x, dtype):
    with mpmath.workprec(2400):
        run = mpmath.mpf(0)
        out = []
        for t in x.astype(np.float64):
            run += mpmath.mpf(float(t))
            out.append(run)
    return testing.round_to_dtype(np.array(out, dtype=object), dtype)


def test_cumsum_prefixes_faithful_float32():
    x, _, cond = testing.ill_conditioned_sum(4000, 1e8, "float32", seed=4)
    ref = _exact_prefixes(x, "float32")
    assert int(np.max(testing.ulp_distance(so.cumsum(x).numpy(), ref, "float32"))) <= 1
    assert int(np.max(testing.ulp_distance(tf.cumsum(x).numpy(), ref, "float32"))) > 1
    rev = _exact_prefixes(x[::-1], "float32")[::-1]
    assert int(np.max(testing.ulp_distance(so.cumsum(x, reverse=True).numpy(), rev,
                                           "float32"))) <= 1


def test_cumsum_prefixes_float64():
    # cond 1e12: documented bound O(n u^2) sum|x| is below 1 ulp there
    x, _, _ = testing.ill_conditioned_sum(2000, 1e12, "float64", seed=5)
    ref = _exact_prefixes(x, "float64")
    assert int(np.max(testing.ulp_distance(so.cumsum(x).numpy(), ref, "float64"))) <= 1
    assert int(np.max(testing.ulp_distance(tf.cumsum(x).numpy(), ref, "float64"))) > 1


def test_cumsum_million_tenths():
    x = tf.fill([10**6], tf.constant(0.1, tf.float32))
    exact = 10**6 * float(np.float32(0.1))  # exact in float64
    assert _ulps(so.cumsum(x)[-1], exact, "float32") <= 1
    assert _ulps(tf.cumsum(x)[-1], exact, "float32") > 1


@pytest.mark.parametrize("fn,ref", [
    (lambda v: so.reduce_sum(v, axis=1), lambda v: tf.reduce_sum(v, axis=1)),
    (lambda v: so.reduce_mean(v, axis=0, keepdims=True),
     lambda v: tf.reduce_mean(v, axis=0, keepdims=True)),
    (lambda v: so.reduce_variance(v, axis=1), lambda v: tf.math.reduce_variance(v, axis=1)),
    (lambda v: so.reduce_std(v), lambda v: tf.math.reduce_std(v)),
    (lambda v: so.cumsum(v, axis=1, exclusive=True, reverse=True),
     lambda v: tf.cumsum(v, axis=1, exclusive=True, reverse=True)),
])
def test_gradient_matches_finite_differences_and_tf(fn, ref):
    x = np.random.default_rng(6).standard_normal((3, 4))
    assert testing.check_gradients(fn, x) < 1e-7
    for v in (tf.constant(x), tf.constant(x, tf.float32)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(v)
            a, b = fn(v), ref(v)
        np.testing.assert_allclose(tape.gradient(a, v), tape.gradient(b, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_gradient_edges(dtype):
    # sum: ones; mean: 1/n; std of a constant input: 0 (TF's reduce_std gives NaN there)
    x = tf.constant([2.0, 2.0, 2.0, 2.0], dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outs = [so.reduce_sum(x), so.reduce_mean(x), so.reduce_std(x), so.reduce_variance(x)]
    expected = [1.0, 0.25, 0.0, 0.0]
    for out, e in zip(outs, expected):
        np.testing.assert_array_equal(tape.gradient(out, x).numpy(), np.full(4, e))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-2.0**60, 2.0**60, width=32),  # variance < 3.4e38: finite in float32
                min_size=2, max_size=8))
def test_no_nan_gradients(values):
    x = np.array(values, np.float32)
    for fn in (so.reduce_sum, so.reduce_mean, so.reduce_variance, so.reduce_std, so.cumsum):
        testing.assert_finite_gradients(fn, x)


def test_parity_with_tf():
    # Well-conditioned data: same shape/dtype as TF, within 1 ulp of the float64 value (TF's
    # own float32 results are 1-2 ulp off here, so we compare both with float64).
    x = np.random.default_rng(7).uniform(1, 2, (64, 33)).astype(np.float32)
    x64 = x.astype(np.float64)
    for a, b, ref in [(so.reduce_sum(x, 0), tf.reduce_sum(x, 0), x64.sum(0)),
                      (so.reduce_mean(x, 1), tf.reduce_mean(x, 1), x64.mean(1)),
                      (so.cumsum(x, 1), tf.cumsum(x, 1), np.cumsum(x64, 1))]:
        assert a.shape == b.shape and a.dtype == b.dtype
        assert int(np.max(testing.ulp_distance(a.numpy(), ref, "float32"))) <= 1
        assert int(np.max(testing.ulp_distance(a.numpy(), b.numpy(), "float32"))) <= 4


def _exact_moments(x, axis, keepdims):
    """Exact sum, mean, variance, std of x (float64 array) over axis, as mpf object arrays."""
    axes = tuple(range(x.ndim)) if axis is None else tuple(np.atleast_1d(axis) % x.ndim)
    moved = np.moveaxis(x, axes, tuple(range(-len(axes), 0)))
    flat = moved.reshape(moved.shape[:x.ndim - len(axes)] + (-1,))
    out = [np.empty(flat.shape[:-1], dtype=object) for _ in range(4)]
    with mpmath.workdps(60):
        for idx in np.ndindex(flat.shape[:-1]):
            v = [mpmath.mpf(float(t)) for t in flat[idx]]
            s = mpmath.fsum(v)
            m = s / len(v)
            var = mpmath.fsum([(t - m) ** 2 for t in v]) / len(v)
            for o, val in zip(out, (s, m, var, mpmath.sqrt(var))):
                o[idx] = val
    if keepdims:
        out = [np.expand_dims(o, axes) for o in out]
    return out


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_dtypes_and_shapes(dtype):
    # Against exact references (not TF): sums and means of small integers are exact in every
    # dtype (<= 276), so 1 ulp (faithful rounding) is the documented bound; variance/std: 4 ulp.
    x = tf.cast(tf.reshape(tf.range(24.0), [2, 3, 4]), dtype)
    name = dtype.name
    for axis in (None, 0, -1, [0, 2]):
        for keepdims in (False, True):
            refs = _exact_moments(np.arange(24.0).reshape(2, 3, 4), axis, keepdims)
            for (so_fn, tf_fn), ref, tol in zip(
                    [(so.reduce_sum, tf.reduce_sum), (so.reduce_mean, tf.reduce_mean),
                     (so.reduce_variance, tf.math.reduce_variance),
                     (so.reduce_std, tf.math.reduce_std)], refs, (1, 1, 4, 4)):
                a, b = so_fn(x, axis, keepdims), tf_fn(x, axis, keepdims)
                assert a.dtype == dtype and a.shape == b.shape
                r = testing.round_to_dtype(np.asarray(ref, dtype=object).reshape(-1), name)
                got = tf.cast(a, tf.float64).numpy().reshape(-1)
                assert _ulps(got, r, name) <= tol, (so_fn.__name__, axis, keepdims)


def test_empty_axes_and_empty_tensors_as_tf():
    x = tf.constant([[1.0, 2.0, 4.0], [3.0, np.inf, np.nan]])
    for dtype in (tf.float16, tf.float32, tf.float64):
        v = tf.cast(x, dtype)
        for so_fn, tf_fn in [(so.reduce_sum, tf.reduce_sum), (so.reduce_mean, tf.reduce_mean),
                             (so.reduce_variance, tf.math.reduce_variance),
                             (so.reduce_std, tf.math.reduce_std)]:
            for args in ((v, []), (tf.zeros([0, 3], dtype), 0), (tf.zeros([0], dtype), None),
                         (tf.zeros([2, 0], dtype), 1)):
                a, b = so_fn(*args).numpy(), tf_fn(*args).numpy()
                assert a.shape == b.shape, (so_fn.__name__, dtype, args[1])
                np.testing.assert_array_equal(a, b, err_msg=f"{so_fn.__name__} {dtype.name}")


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_variance_std_nonfinite_propagate(dtype):
    # NaN in -> NaN out, inf -> NaN (inf - inf), exactly where TF gives NaN; finite rows
    # agree within the documented 4 ulp of the exact value.
    v = tf.constant([[1.0, 2.0, 4.0], [3.0, np.inf, 1.0], [np.nan, 1.0, 1.0],
                     [np.inf, np.inf, 1.0]], dtype)
    for so_fn, tf_fn in [(so.reduce_variance, tf.math.reduce_variance),
                         (so.reduce_std, tf.math.reduce_std)]:
        for mode, a in testing.run_modes(lambda t: so_fn(t, axis=1), v).items():
            b = tf_fn(v, axis=1).numpy()
            a, b = np.asarray(a, np.float64), b.astype(np.float64)
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=mode)
            assert np.isnan(a[1:]).all(), mode


def test_integer_mean_and_bool_input():
    ints = tf.constant([[1, 2], [4, 7]])
    for axis in (None, 0, 1):  # delegated to TF: integer (truncating) mean
        got, want = so.reduce_mean(ints, axis), tf.reduce_mean(ints, axis)
        assert got.dtype == tf.int32 and got.numpy().tolist() == want.numpy().tolist()
    assert int(so.reduce_mean(tf.constant([1, 2]))) == 1  # truncated, as TF
    for fn in (so.reduce_mean, so.reduce_std, so.reduce_variance, so.reduce_sum):
        with pytest.raises(TypeError, match=f"safeops.{fn.__name__}.*'input_tensor'.*bool"):
            fn(tf.constant([True, False]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_mean_and_variance_accuracy(dtype):
    # mean: the sum's documented bound (faithful for condition 1e3) divided by n, rounded once;
    # variance/std: documented 4 ulp, on data with |mean|/std = 16.
    for seed in range(3):
        x, exact, _ = testing.ill_conditioned_sum(2000, 1e3, dtype, seed=seed)
        assert _ulps(tf.cast(so.reduce_mean(x), tf.float64), exact / 2000, dtype) <= 1
    rng = np.random.default_rng(8)
    x = tf.cast(16.0 + rng.standard_normal(512), dtype)
    x64 = tf.cast(x, tf.float64).numpy()
    var, std = _exact_var(x64)
    for fn, ref in ((so.reduce_variance, var), (so.reduce_std, std)):
        r = testing.round_to_dtype(np.array([ref], dtype=object), dtype)[0]
        assert _ulps(tf.cast(fn(x), tf.float64), r, dtype) <= 4


def test_bfloat16_naive_sums():
    # tf.reduce_sum accumulates bfloat16 in float32 (measured: same 0 ulp as safeops on
    # these draws, in every mode), so it is no failing baseline; a bfloat16-precision
    # running sum (tf.math.add_n) is, and fails the same faithful-rounding test.
    for seed in range(3):
        x, exact, _ = testing.ill_conditioned_sum(2000, 1e3, "bfloat16", seed=seed)
        x = tf.constant(x)
        for mode, v in testing.run_modes(so.reduce_sum, x).items():
            assert _ulps(tf.cast(v, tf.float64), exact, "bfloat16") <= 1, mode
        assert _ulps(tf.cast(tf.math.add_n(tf.unstack(x)), tf.float64), exact, "bfloat16") > 1


def test_modes_on_ill_conditioned_mean_cumsum():
    # mean and cumsum under tf.function and XLA on cond-1e8 float32 data: every prefix and
    # the mean within 1 ulp (documented), where tf.cumsum is not.
    x, exact, _ = testing.ill_conditioned_sum(1500, 1e8, "float32", seed=11)
    ref = _exact_prefixes(x, "float32")
    for mode, v in testing.run_modes(so.cumsum, tf.constant(x)).items():
        assert int(np.max(testing.ulp_distance(v, ref, "float32"))) <= 1, mode
    for mode, v in testing.run_modes(lambda t: tf.cumsum(t), tf.constant(x)).items():
        assert int(np.max(testing.ulp_distance(v, ref, "float32"))) > 1, mode
    for mode, v in testing.run_modes(so.reduce_mean, tf.constant(x)).items():
        assert _ulps(v, exact / 1500, "float32") <= 1, mode
    x64, exact64, _ = testing.ill_conditioned_sum(1500, 1e12, "float64", seed=12)
    ref64 = _exact_prefixes(x64, "float64")
    for mode, v in testing.run_modes(so.cumsum, tf.constant(x64)).items():
        assert int(np.max(testing.ulp_distance(v, ref64, "float64"))) <= 1, mode
    for mode, v in testing.run_modes(so.reduce_mean, tf.constant(x64)).items():
        assert _ulps(v, exact64 / 1500, "float64") <= 1, mode


def test_cumsum_axis_error_matches_tf():
    x = tf.ones([2, 3])
    for axis in (2, -3):
        for wrap in (lambda f: f, tf.function):
            with pytest.raises(type(_tf_error(lambda: wrap(lambda v: tf.cumsum(v, axis))(x)))):
                wrap(lambda v: so.cumsum(v, axis))(x)
            with pytest.raises(tf.errors.InvalidArgumentError):
                wrap(lambda v: so.cumsum(v, axis))(x)


def test_gradients_finite_on_extreme_inputs():
    x = tf.constant([3e38, -3e38, 1e-45, -2e-38, 1.0, 3.4e38], tf.float32)  # max and subnormal
    for fn in (so.reduce_sum, so.reduce_mean, so.reduce_std, so.cumsum):
        testing.assert_finite_gradients(fn, x)
    # the variance itself overflows above sqrt(max); largest inputs with a finite variance
    testing.assert_finite_gradients(so.reduce_variance, tf.constant(
        [1.5e19, -1.5e19, 1e-45, -2e-38, 1.0], tf.float32))
    x64 = tf.constant([1.7e308, -1.7e308, 5e-324, 1.0], tf.float64)
    for fn in (so.reduce_sum, so.reduce_mean, so.cumsum):
        testing.assert_finite_gradients(fn, x64)


def test_integer_complex_empty_and_nonfinite():
    ints = tf.constant([[1, 2], [3, 4]])
    assert so.reduce_sum(ints, 0).numpy().tolist() == [4, 6]
    assert so.cumsum(ints, 1).numpy().tolist() == [[1, 3], [3, 7]]
    z = tf.constant([1e8 + 1j, 1.0 + 1e8j, -1e8 - 1e8j], tf.complex64)
    assert complex(so.reduce_sum(z)) == 1 + 1j
    for dtype in (tf.float32, tf.float64):
        assert float(so.reduce_sum(tf.zeros([0], dtype))) == 0.0
        assert np.isnan(float(so.reduce_mean(tf.zeros([0], dtype))))
        assert so.reduce_sum(tf.zeros([0, 3], dtype), 0).numpy().tolist() == [0, 0, 0]
        assert so.cumsum(tf.zeros([0], dtype)).shape == [0]
        v = tf.constant([[np.inf, 1.0], [np.inf, -np.inf], [np.nan, 1.0]], dtype)
        for so_fn, tf_fn in [(so.reduce_sum, tf.reduce_sum), (so.reduce_mean, tf.reduce_mean),
                             (so.cumsum, tf.cumsum)]:
            np.testing.assert_array_equal(so_fn(v, axis=1).numpy(), tf_fn(v, axis=1).numpy())


def test_mean_near_the_largest_float_does_not_overflow():
    # float32 accumulates in float64: the mean of [max, max, -1] is finite (TF's sum overflows)
    big = float(np.finfo(np.float32).max)
    x = tf.constant([big, big, -1.0], tf.float32)
    exact = (2 * big - 1.0) / 3  # float64: within a relative 2**-53 of the exact mean
    assert int(testing.ulp_distance(so.reduce_mean(x).numpy(), exact, "float32")) <= 1
    assert np.isinf(tf.reduce_mean(x).numpy())


def test_bad_input_raises():
    for fn, arg in [(so.reduce_sum, "input_tensor"), (so.reduce_variance, "input_tensor"),
                    (so.cumsum, "x")]:
        with pytest.raises(TypeError, match=f"safeops.*'{arg}'"):
            fn(tf.constant([True, False]))
        with pytest.raises(TypeError, match=f"safeops.*'{arg}'"):
            fn(tf.constant(["a"]))
    # complex input is accepted as by TF: E|x - mean|**2, a real result (exact here)
    z = tf.constant([1 + 2j, 3 - 1j, -1 + 2j, 1 - 1j], tf.complex128)
    assert so.reduce_variance(z).dtype == tf.float64
    assert float(so.reduce_variance(z)) == float(np.var(z.numpy())) == 4.25
    for dtype in (tf.float32, tf.float64):
        x = tf.ones([2, 3], dtype)
        with pytest.raises(type(_tf_error(lambda: tf.reduce_sum(x, axis=2)))):
            so.reduce_sum(x, axis=2)
        with pytest.raises(type(_tf_error(lambda: tf.cumsum(x, axis=-3)))):
            so.cumsum(x, axis=-3)


def _tf_error(fn):
    try:
        fn()
    except Exception as err:  # the error TF raises, to compare types with
        return err
    raise AssertionError("TF did not raise")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 70000])
def test_vector_kernel_path_gives_the_matrix_path_bits(n, dtype):
    # a vector reaches the fused kernels as it is (no reshapes around them); its sum,
    # mean and every scan must be the bits of the same data as one row of a matrix,
    # and the sum the exact sum rounded within the compensated bound
    x_np, _, _ = testing.ill_conditioned_sum(max(n, 4), 1e8, np.dtype(dtype).name, seed=n)
    x_np = x_np[:n]
    x = tf.constant(x_np)
    row = tf.reshape(x, [1, n])
    for mode in ("eager", "function"):
        def run(f):
            return f() if mode == "eager" else tf.function(f)()
        np.testing.assert_array_equal(run(lambda: so.reduce_sum(x)).numpy(),
                                      run(lambda: so.reduce_sum(row, axis=1)[0]).numpy())
        np.testing.assert_array_equal(run(lambda: so.reduce_mean(x)).numpy(),
                                      run(lambda: so.reduce_mean(row, axis=1)[0]).numpy())
        for exclusive in (False, True):
            for reverse in (False, True):
                np.testing.assert_array_equal(
                    run(lambda: so.cumsum(x, exclusive=exclusive, reverse=reverse)).numpy(),
                    run(lambda: so.cumsum(row, axis=1, exclusive=exclusive,
                                          reverse=reverse)[0]).numpy())
        for op in (so.reduce_sum, so.reduce_mean, so.cumsum):
            def grad(v, op=op):
                with tf.GradientTape() as tape:
                    tape.watch(v)
                    y = op(v) if v.shape.rank == 1 else op(v, axis=1)
                return tape.gradient(y, v)
            np.testing.assert_array_equal(run(lambda: grad(x)).numpy(),
                                          run(lambda: grad(row)[0]).numpy())
    exact = testing.exact_sum(x_np) if n else 0.0
    got = float(so.reduce_sum(x))
    if dtype == np.float32:  # double accumulation: within 1 ulp up to condition 1e8
        assert testing.ulp_distance(np.float64(got), np.float64(exact), "float32") <= 1
    else:  # Sum2: u |S| + gamma_{n-1}**2 sum |x|, then the final addition's rounding
        u = 2.0 ** -53
        gamma = (n - 1) * u / (1 - (n - 1) * u)
        bound = 2 * u * abs(exact) + gamma ** 2 * math.fsum(np.abs(x_np))
        assert abs(got - exact) <= bound
