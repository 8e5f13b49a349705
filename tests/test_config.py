"""so.config: the reproducibility switch (process-wide setting, thread-local scopes, env var)."""

import threading

import mpmath
import numpy as np

import pytest

from safeops import config
from safeops._core.registry import entries


@pytest.fixture(autouse=True)
def _restore():
    before = config._GLOBAL["on"]
    yield
    config._GLOBAL["on"] = before


def test_set_and_query():
    config.set_reproducible(True)
    assert config.is_reproducible() is True
    config.set_reproducible(False)
    assert config.is_reproducible() is False


def test_scope_overrides_and_restores_even_on_error():
    config.set_reproducible(False)
    with config.reproducible():
        assert config.is_reproducible()
        with config.reproducible(False):
            assert not config.is_reproducible()
        assert config.is_reproducible()
    assert not config.is_reproducible()
    with pytest.raises(RuntimeError):
        with config.reproducible():
            raise RuntimeError("inside")
    assert not config.is_reproducible()


def test_scope_is_per_thread():
    config.set_reproducible(False)
    seen = []
    with config.reproducible():
        t = threading.Thread(target=lambda: seen.append(config.is_reproducible()))
        t.start()
        t.join()
        assert config.is_reproducible()
    assert seen == [False]


def test_bad_values_raise():
    with pytest.raises(TypeError, match="set_reproducible.*enabled"):
        config.set_reproducible("yes")
    with pytest.raises(TypeError, match="reproducible.*enabled"):
        with config.reproducible(1):
            pass


@pytest.mark.parametrize("value,want", [(None, False), ("", False), ("0", False),
                                        ("1", True), ("true", True), (" ON ", True)])
def test_environment_variable(value, want):
    assert config._from_env(value) is want


def test_environment_variable_unreadable():
    with pytest.raises(ValueError, match="SAFEOPS_REPRODUCIBLE"):
        config._from_env("maybe")


def test_registered():
    names = {e.name for e in entries()}
    assert {"safeops.config.set_reproducible", "safeops.config.reproducible",
            "safeops.config.is_reproducible"} <= names


def _hard_float32_data(seed, n=4001):
    """Terms spanning 16 decades with heavy cancellation: TF's float32 sum loses digits."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 9, n)
    x = np.concatenate([x, -x[: n // 2] * (1 + 2.0 ** -20)])
    return rng.permutation(x).astype(np.float32)


def test_switch_makes_reduce_sum_mean_and_cumsum_correctly_rounded():
    """Under the switch the public ops give the correctly rounded sum, mean and prefixes
    (exact references from safeops.testing), in every execution mode and any order."""
    import tensorflow as tf
    import safeops as so
    from safeops import testing

    x = _hard_float32_data(0)
    want = testing.exact_sum(x, dtype=np.float32)
    assert float(tf.reduce_sum(x)) != float(want)  # the data defeats a float32 sum
    rows = x[:4000].reshape(40, 100)
    want_mean = testing.round_to_dtype(
        [mpmath.mpf(testing.exact_sum(r, dtype=np.float64)) / 100 for r in rows], np.float32)
    prefixes = testing.round_to_dtype(
        [testing.exact_sum(x[: j + 1], dtype=np.float64) for j in range(60)], np.float32)
    with config.reproducible():
        for fn in (so.reduce_sum, tf.function(so.reduce_sum),
                   tf.function(so.reduce_sum, jit_compile=True)):
            assert np.float32(fn(tf.constant(x)).numpy()).tobytes() == np.float32(want).tobytes()
        flipped = so.reduce_sum(tf.constant(x[::-1].copy())).numpy()
        assert flipped.tobytes() == np.float32(want).tobytes()
        np.testing.assert_array_equal(so.reduce_mean(tf.constant(rows), axis=1).numpy(), want_mean)
        np.testing.assert_array_equal(so.cumsum(tf.constant(x[:60])).numpy(), prefixes)
    assert not config.is_reproducible()
