"""The public API: every exported name exists and is documented; importing safeops
is cheap and never switches the process to legacy Keras."""

import inspect
import subprocess
import sys
import types

import safeops


def _public_objects():
    """(qualified name, object) for every public name, descending into namespace modules."""
    seen = []
    for name in safeops.__all__:
        assert hasattr(safeops, name), f"safeops.__all__ lists {name!r} but it does not exist"
        obj = getattr(safeops, name)
        if name == "__version__":
            continue
        if isinstance(obj, types.ModuleType):
            for sub in getattr(obj, "__all__", []):
                assert hasattr(obj, sub), f"safeops.{name}.__all__ lists missing {sub!r}"
                seen.append((f"{name}.{sub}", getattr(obj, sub)))
        else:
            seen.append((name, obj))
    return seen


def _doc(obj):
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        doc += "\n" + (inspect.getdoc(obj.__init__) or "")
    return doc


def test_version():
    assert isinstance(safeops.__version__, str) and safeops.__version__.count(".") == 2


def test_every_public_name_exists_and_has_an_args_section():
    missing = []
    for qualname, obj in _public_objects():
        if isinstance(obj, types.ModuleType):
            continue
        if callable(obj) and _takes_arguments(obj) and "Args:" not in _doc(obj):
            missing.append(qualname)
    assert not missing, f"public callables without an 'Args:' docstring section: {missing}"


def _takes_arguments(obj):
    """Whether a public callable has parameters to document (classes: their constructor)."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return True
    return any(name not in ("self", "cls") for name in params)


def test_all_is_explicit_and_unique():
    assert len(safeops.__all__) == len(set(safeops.__all__))
    assert "testing" in safeops.__all__


def test_import_never_touches_legacy_keras():
    code = (
        "import os, sys\n"
        "os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
        "import safeops\n"
        "bad = [m for m in sys.modules if m.startswith(('tensorflow_model_optimization', 'tf_keras'))]\n"
        "assert not bad, bad\n"
        "assert os.environ.get('TF_USE_LEGACY_KERAS') is None, os.environ['TF_USE_LEGACY_KERAS']\n"
        "import tensorflow as tf\n"
        "assert tf.keras.__version__.startswith('3'), tf.keras.__version__\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "clean" in out.stdout
