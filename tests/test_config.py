"""so.config: the reproducibility switch (process-wide setting, thread-local scopes, env var)."""

import threading

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
