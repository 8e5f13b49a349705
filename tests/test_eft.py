"""safeops.eft: two_sum, fast_two_sum, two_prod are error-free (checked exactly)."""

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing

DTYPES = ["float16", "bfloat16", "float32", "float64"]
# TF evaluates float16/bfloat16 arithmetic through float32 on CPU (double rounding), so the
# documented exactness range for half types is |a|, |b| within 12 binades of each other.
_RANGE = {"float16": (2.0**-4, 2.0**8), "bfloat16": (2.0**-4, 2.0**8),
          "float32": (2.0**-60, 1e4), "float64": (2.0**-400, 1e4)}
# (TF flushes subnormals to zero on CPU, so the ranges keep the error terms normal.)


def _operands(dtype, n, seed):
    lo, hi = _RANGE[dtype]
    mag = testing.sample_floats(dtype, n, lo, hi, seed=seed)
    sign = np.where(np.random.default_rng(seed).random(n) < 0.5, -1, 1).astype(mag.dtype)
    return mag * sign


def _f64(t):
    return np.asarray(tf.cast(t, tf.float64))


def _exact_zero(*terms):
    """True where the float64 terms add up to exactly zero (math.fsum is exact here)."""
    return np.array([math.fsum(t) == 0.0 for t in zip(*terms)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_sum_is_error_free(dtype):
    a, b = _operands(dtype, 2000, 1), _operands(dtype, 2000, 2)
    s, e = so.two_sum(tf.constant(a), tf.constant(b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert _exact_zero(_f64(s), _f64(e), -a64, -b64).all()
    # the rounded sum alone is not exact (otherwise this test proves nothing)
    assert not _exact_zero(_f64(s), -a64, -b64).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_two_sum_is_error_free_when_ordered(dtype):
    a, b = _operands(dtype, 2000, 3), _operands(dtype, 2000, 4)
    big = np.where(np.abs(a.astype(np.float64)) >= np.abs(b.astype(np.float64)), a, b)
    small = np.where(np.abs(a.astype(np.float64)) >= np.abs(b.astype(np.float64)), b, a)
    s, e = so.fast_two_sum(tf.constant(big), tf.constant(small))
    assert _exact_zero(_f64(s), _f64(e), -big.astype(np.float64), -small.astype(np.float64)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_prod_is_error_free(dtype):
    lo = 8.0 if dtype == "float16" else 1e-2  # float16 error terms must stay normal (>= 2**-14)
    a = testing.sample_floats(dtype, 300, lo, 1e2, seed=5)
    b = -testing.sample_floats(dtype, 300, lo, 1e2, seed=6)
    p, e = so.two_prod(tf.constant(a), tf.constant(b))
    p64, e64 = _f64(p), _f64(e)
    with mpmath.workprec(300):
        ok = [mpmath.mpf(float(x)) * mpmath.mpf(float(y)) == mpmath.mpf(pp) + mpmath.mpf(ee)
              for x, y, pp, ee in zip(a, b, p64, e64)]
        naive_ok = [mpmath.mpf(float(x)) * mpmath.mpf(float(y)) == mpmath.mpf(pp)
                    for x, y, pp in zip(a, b, p64)]
    assert all(ok)
    assert not all(naive_ok)


def test_two_prod_documented_example():
    _, e = so.two_prod(tf.constant(1.0 + 2.0**-20), tf.constant(1.0 + 2.0**-20))
    assert float(e) == 2.0**-40


@pytest.mark.parametrize("fn", [so.two_sum, so.fast_two_sum, so.two_prod])
def test_execution_modes(fn):
    # XLA must not simplify (a + b) - a to b: the error terms must survive jit_compile.
    a = tf.constant(testing.sample_floats("float32", 500, 1e3, 1e8, seed=7))
    b = tf.constant(testing.sample_floats("float32", 500, 1e-3, 1.0, seed=8))
    out = testing.run_modes(lambda x, y: fn(x, y), a, b)
    for mode in ("function", "jit_compile"):
        np.testing.assert_array_equal(out[mode][0], out["eager"][0])
        np.testing.assert_array_equal(out[mode][1], out["eager"][1])
    assert np.count_nonzero(out["jit_compile"][1]) > 400


@pytest.mark.parametrize("fn", [so.two_sum, so.fast_two_sum])
def test_gradient_of_sum_is_one_error_not_differentiated(fn):
    a, b = tf.constant(3.0, tf.float64), tf.constant(1e-20, tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        s, e = fn(a, b)
    assert [float(g) for g in tape.gradient(s, [a, b])] == [1.0, 1.0]
    assert tape.gradient(e, [a, b]) == [None, None]


def test_two_prod_gradient_matches_finite_differences():
    a = np.array([1.5, -2.25, 3.0])
    b = np.array([0.5, 4.0, -1.0])
    assert testing.check_gradients(lambda x, y: so.two_prod(x, y)[0], a, b) < 1e-8
    with tf.GradientTape() as tape:
        x = tf.constant(a)
        tape.watch(x)
        _, e = so.two_prod(x, tf.constant(b))
    assert tape.gradient(e, x) is None


def test_non_finite_propagate_to_the_rounded_result():
    s, _ = so.two_sum(tf.constant([np.inf, np.nan, 1.0]), tf.constant([1.0, 1.0, -np.inf]))
    np.testing.assert_array_equal(s.numpy(), tf.constant([np.inf, np.nan, 1.0]).numpy()
                                  + np.array([1.0, 1.0, -np.inf], np.float32))


@pytest.mark.parametrize("fn,name", [(so.two_sum, "safeops.two_sum"),
                                     (so.fast_two_sum, "safeops.fast_two_sum"),
                                     (so.two_prod, "safeops.two_prod")])
def test_bad_input_raises(fn, name):
    with pytest.raises(TypeError, match=f"{name}.*'a'"):
        fn(tf.constant([1, 2]), tf.constant([1, 2]))
    with pytest.raises(TypeError, match=f"{name}.*'a'"):
        fn(tf.constant([True]), tf.constant([1.0]))
    with pytest.raises(TypeError, match="same dtype"):
        fn(tf.constant([1.0]), tf.constant([1.0], tf.float64))


def _exact_pairs(a, b, p, e, prec=300):
    with mpmath.workprec(prec):
        return [mpmath.mpf(float(x)) * mpmath.mpf(float(y)) == mpmath.mpf(float(pp))
                + mpmath.mpf(float(ee)) for x, y, pp, ee in zip(a, b, _f64(p), _f64(e))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_range_documented(dtype):
    # The bit-mask split overflows only within a relative 2**-(p-s) of the largest finite
    # value (documented); exact up to there, where Veltkamp's split (max / 2**s) was not.
    big = {"float32": [3.0e38, -1.0e37], "float64": [1.5e308, -1.0e300]}[dtype]
    a = tf.constant(big, dtype)
    b = tf.constant([0.75 + 2.0**-20, 1.0 + 2.0**-9], dtype)
    p, e = so.two_prod(a, b)
    assert np.all(np.isfinite(_f64(e)))
    assert all(_exact_pairs(a.numpy(), b.numpy(), p, e, prec=2200))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_prod_exact_inside_larger_xla_cluster(dtype):
    # XLA:CPU contracts multiply-adds into FMAs; the bit-mask split has no multiply to
    # contract. p and e feed further adds in the same compiled function, as in Dot2.
    a = testing.sample_floats(dtype, 400, 1e-2, 1e2, seed=9)
    b = -testing.sample_floats(dtype, 400, 1e-2, 1e2, seed=10)

    def fn(x, y):
        p, e = so.two_prod(x, y)
        return p, e, tf.reduce_sum(p + e), tf.cumsum(e)

    out = testing.run_modes(fn, a, b)
    for mode in ("function", "jit_compile"):
        for i in range(2):
            np.testing.assert_array_equal(out[mode][i], out["eager"][i], err_msg=mode)
    assert all(_exact_pairs(a, b, *out["jit_compile"][:2]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_prod_dw_bound_in_every_mode(dtype):
    # Private double-word product used by dot/matmul/mean/variance: built from exact partial
    # products only, so identical in every mode; documented |p + e - ab| <= 4 u^2 |ab|.
    from safeops._core.eft import prod_dw as _prod_dw
    u = 2.0**-24 if dtype == "float32" else 2.0**-53
    a = testing.sample_floats(dtype, 400, 1e-3, 1e3, seed=11)
    b = testing.sample_floats(dtype, 400, 1e-3, 1e3, seed=12) * np.where(
        np.arange(400) % 2, 1, -1).astype(dtype)
    out = testing.run_modes(_prod_dw, tf.constant(a), tf.constant(b))
    for mode in ("function", "jit_compile"):
        np.testing.assert_array_equal(out[mode][0], out["eager"][0], err_msg=mode)
        np.testing.assert_array_equal(out[mode][1], out["eager"][1], err_msg=mode)
    p, e = out["eager"]
    with mpmath.workprec(300):
        for x, y, pp, ee in zip(a, b, p, e):
            ab = mpmath.mpf(float(x)) * mpmath.mpf(float(y))
            assert abs(mpmath.mpf(float(pp)) + mpmath.mpf(float(ee)) - ab) <= 4 * u**2 * abs(ab)
            assert abs(mpmath.mpf(float(pp)) - ab) <= 3 * u * abs(ab)  # documented
    nf = testing.run_modes(_prod_dw,
                           tf.constant([np.inf, np.nan, 2.0], dtype),
                           tf.constant([1.0, 1.0, -np.inf], dtype))
    for mode, (pp, ee) in nf.items():  # non-finite products as TF's multiply, error term 0
        np.testing.assert_array_equal(pp, [np.inf, np.nan, -np.inf], err_msg=mode)
        np.testing.assert_array_equal(ee, [0.0, 0.0, 0.0], err_msg=mode)


def test_python_number_takes_the_tensor_dtype():
    # TF's rule: a Python number takes the other argument's dtype (no float32 mismatch)
    b = tf.constant([2.0**-60, 3.0], tf.float64)
    for fn in (so.two_sum, so.fast_two_sum, so.two_prod):
        r, e = fn(1.0, b)
        assert r.dtype == e.dtype == tf.float64
    s, e = so.two_sum(1.0, b)
    assert s.numpy().tolist() == [1.0, 4.0] and e.numpy().tolist() == [2.0**-60, 0.0]
    with pytest.raises(TypeError):  # two tensors of different dtypes: TF's error
        so.two_sum(tf.constant(1.0), b)
