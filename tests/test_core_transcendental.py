"""Tests of safeops._core.transcendental: float64 exp and log1p as polynomials (graph mode)."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

from safeops._core import transcendental as tr

U = 2.0**-53  # unit roundoff of float64

GRAPH_MODES = {
    "function": lambda f: tf.function(f, autograph=False),
    "jit_compile": lambda f: tf.function(f, jit_compile=True, autograph=False),
}


def _max_rel_error(got, x, mp_fn):
    with mpmath.workdps(40):
        errs = []
        for g, v in zip(got, x):
            exact = mp_fn(mpmath.mpf(float(v)))
            errs.append(abs((mpmath.mpf(float(g)) - exact) / exact))
    return float(max(errs))


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_exp_nonpositive_matches_mpmath(mode):
    rng = np.random.default_rng(0)
    z = np.concatenate([-rng.uniform(0, 1, 600), -rng.uniform(0, 707.9, 600),
                        -(10.0 ** rng.uniform(-30, 2.8, 400)), [0.0, -0.5 * np.log(2), -707.99]])
    got = GRAPH_MODES[mode](tr.exp_nonpositive)(tf.constant(z)).numpy()
    # documented: within 2 u (Cody-Waite reduction, degree-13 Taylor polynomial)
    assert _max_rel_error(got, z, mpmath.exp) <= 2 * U


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_log1p_unit_matches_mpmath(mode):
    rng = np.random.default_rng(1)
    e = np.concatenate([rng.uniform(0, 1, 800), 10.0 ** rng.uniform(-300, 0, 400),
                        [1.0, 0.41421356237309503, 0.4142135623730951, 2.0**-1021]])
    got = GRAPH_MODES[mode](tr.log1p_unit)(tf.constant(e)).numpy()
    # documented: within 4 u (a few roundings of s = e / (2 + e) and of the series)
    assert _max_rel_error(got, e, mpmath.log1p) <= 4 * U


@pytest.mark.parametrize("mode", ["eager", *GRAPH_MODES])
def test_special_values(mode):
    wrap = GRAPH_MODES.get(mode, lambda f: f)
    z = tf.constant([0.0, -np.inf, np.nan, -1e300, -800.0], tf.float64)
    out = wrap(tr.exp_nonpositive)(z).numpy()
    np.testing.assert_array_equal(out[[0, 1, 3, 4]], [1.0, 0.0, 0.0, 0.0])
    assert np.isnan(out[2])
    if mode != "eager":  # the polynomial's documented cut: 0 from -708 down
        assert wrap(tr.exp_nonpositive)(tf.constant([-708.0], tf.float64)).numpy()[0] == 0.0
    e = tf.constant([0.0, np.nan], tf.float64)
    out = wrap(tr.log1p_unit)(e).numpy()
    assert out[0] == 0.0 and np.isnan(out[1])


def test_graph_agrees_with_tf_kernels():
    # The graph (polynomial) and eager (tf.exp / tf.math.log1p) results differ by at
    # most a few float64 rounding errors, so float32 results rounded from either agree
    # except where the value lies within that distance of a float32 rounding boundary.
    rng = np.random.default_rng(2)
    z = tf.constant(-rng.uniform(0, 40, 4000))
    e = tf.constant(rng.uniform(0, 1, 4000))
    for mode, wrap in GRAPH_MODES.items():
        np.testing.assert_allclose(wrap(tr.exp_nonpositive)(z), tf.exp(z), rtol=4 * U, err_msg=mode)
        np.testing.assert_allclose(wrap(tr.log1p_unit)(e), tf.math.log1p(e), rtol=6 * U,
                                   err_msg=mode)
