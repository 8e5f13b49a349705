"""The drop-in registry covers every public name, and docs/migration.md is generated from it."""

import inspect
import pathlib

import safeops
from safeops._core import registry

_SUBPACKAGES = ("layers", "losses", "metrics", "optimizers", "callbacks", "mixed_precision",
                "quantization")
_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "migration.md"


def _public_callables():
    """(public name, object) for every function or class a user reaches by its public name."""
    out = []
    for name in safeops.__all__:
        obj = getattr(safeops, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((f"safeops.{name}", obj))
    for sub in _SUBPACKAGES:
        module = getattr(safeops, sub)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                out.append((f"safeops.{sub}.{name}", obj))
    return out


def test_public_names_are_found():
    names = dict(_public_callables())
    # a few names of each kind, so that an empty walk cannot pass
    for name in ("safeops.reduce_sum", "safeops.softmax", "safeops.KahanAccumulator"):
        assert name in names


def test_every_public_function_and_class_is_registered():
    registered = {e.name for e in registry.entries()}
    missing = sorted(name for name, _ in _public_callables() if name not in registered)
    assert not missing, (f"{len(missing)} public names are not in the registry "
                         f"(decorate them with @drop_in or @new): {missing}")


def test_drop_ins_name_their_original():
    for e in registry.entries():
        if e.original is not None:
            assert e.original.startswith(("tf.", "keras.")), e
        assert all(isinstance(d, str) and d.strip() for d in e.differences), e


def test_migration_page_is_current():
    expected = registry.render_markdown()
    assert _PAGE.exists(), "docs/migration.md is missing: python -m safeops._core.migration"
    assert _PAGE.read_text(encoding="utf-8") == expected, (
        "docs/migration.md is stale: python -m safeops._core.migration > docs/migration.md")
