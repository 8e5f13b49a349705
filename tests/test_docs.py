"""The documentation: the site builds strictly, every public name has a reference entry,
and every example on every page gives the output the page shows."""

import doctest
import importlib
import inspect
import pathlib
import re
import subprocess
import sys

import keras
import pytest

import safeops

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
import build as docs_build  # noqa: E402  (docs/build.py)

PAGES = sorted(p.name for p in DOCS.glob("*.md"))
_FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _public_modules():
    return [importlib.import_module(name) for _, name in docs_build.api_modules()]


def test_every_public_module_has_a_reference_page():
    names = {name for _, name in docs_build.api_modules()}
    for attr in safeops.__all__:
        obj = getattr(safeops, attr)
        if inspect.ismodule(obj):
            assert obj.__name__ in names, f"{obj.__name__} has no API page"


@pytest.mark.parametrize("module", _public_modules(), ids=lambda m: m.__name__)
def test_every_public_function_and_class_is_documented(module):
    """A public function or class of a public module that is not in its __all__ would be
    missing from the reference (the pages are generated from __all__)."""
    exported = set(getattr(module, "__all__", []))
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or name in exported:
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and \
                getattr(obj, "__module__", "").startswith(module.__name__ + "."):
            missing.append(name)
    assert not missing, f"{module.__name__}: public names missing from __all__: {missing}"
    for name in exported:
        assert hasattr(module, name), f"{module.__name__}.__all__ lists {name}, which does not exist"
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_every_page_is_in_the_navigation():
    unlisted, absent = docs_build.missing_guides()
    assert not unlisted and not absent, (unlisted, absent)


def test_readme_links_the_guides():
    readme = (ROOT / "README.md").read_text()
    for _, page in docs_build.GUIDES:
        assert f"docs/{page}" in readme, f"README.md does not link docs/{page}"


def test_site_builds_without_warnings(tmp_path):
    """Strict MkDocs build: a broken link, a missing page or a docstring whose documented
    parameters do not match the signature fails it."""
    proc = subprocess.run([sys.executable, str(DOCS / "build.py"), "--out", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    html = (tmp_path / "site" / "api" / "safeops.html").read_text()
    for name in safeops.__all__:
        if not inspect.ismodule(getattr(safeops, name)) and not name.startswith("__"):
            assert f"safeops.{name}" in html, f"safeops.{name} missing from the reference"


def _run_page(path):
    """Run the Python blocks of a page in order, in one namespace. Blocks written as
    interactive sessions (>>>) are doctests: their shown output must match."""
    text = path.read_text()
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"__name__": "__docs__"}
    try:
        for i, block in enumerate(_FENCE.findall(text)):
            if ">>>" in block:
                test = parser.get_doctest(block, globs, f"{path.name}[{i}]", str(path), 0)
                runner.run(test, clear_globs=False)
                globs = test.globs
            else:
                exec(compile(block, f"{path.name}[{i}]", "exec"), globs)  # noqa: S102
    finally:  # a page may set process-wide state (a Keras dtype policy, reproducible mode)
        keras.mixed_precision.set_global_policy("float32")
        safeops.config.set_reproducible(False)
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("page", PAGES + ["README.md"])
def test_examples_give_the_output_shown(page):
    path = ROOT / page if page == "README.md" else DOCS / page
    failed, _ = _run_page(path)
    assert failed == 0, f"{page}: {failed} example(s) differ from the page (see the output above)"
