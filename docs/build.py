"""Build the documentation site: ``python docs/build.py [--out site] [--check]``.

The guides are the Markdown pages in docs/. The API reference is generated:
one page per public module, each listing that module's public names (its
``__all__``) through mkdocstrings, so every public name is reachable from the
navigation and from the search. Generated sources and the MkDocs configuration
go to ``build/docs-src`` (git-ignored); the site goes to ``site/``.

The build is strict: a broken link, a missing page or a public name without a
reference entry fails it (exit status 1). Nothing is fetched from the network.
"""

import argparse
import importlib
import inspect
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Guides in navigation order: (title, file). Every .md page in docs/ must be listed.
GUIDES = [
    ("Home", "index.md"),
    ("Getting started", "getting_started.md"),
    ("Migrating from TensorFlow and Keras", "migration.md"),
    ("Keras", "keras.md"),
    ("Precision", "precision.md"),
    ("Reproducibility", "reproducibility.md"),
    ("The numerics doctor", "doctor.md"),
    ("Quantization", "quantization.md"),
    ("Fused CPU kernels", "native.md"),
    ("Benchmarks", "benchmarks.md"),
    ("Verification toolkit", "testing.md"),
    ("Unsafe ops and their replacements", "unsafe_ops.md"),
]

# Public modules with a reference page: (page title, module whose __all__ is documented,
# module the names are documented under).
def api_modules():
    """(title, module name) of every public module; the top level is split by concept."""
    import safeops
    mods = [("safeops (top level)", "safeops")]
    for name in sorted(safeops.__all__):
        obj = getattr(safeops, name)
        if inspect.ismodule(obj) and obj.__name__.startswith("safeops."):
            mods.append((obj.__name__, obj.__name__))
    return mods


def public_names(module_name):
    """The documented names of a module: its __all__ minus submodules."""
    module = importlib.import_module(module_name)
    names = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name, None)
        if inspect.ismodule(obj) or name.startswith("__"):
            continue
        names.append(name)
    return names


def api_page(title, module_name):
    lines = [f"# `{title}`", ""]
    module = importlib.import_module(module_name)
    if module.__doc__:
        lines += [inspect.cleandoc(module.__doc__).split("\n\n")[0], ""]
    for name in public_names(module_name):
        obj = getattr(module, name)
        target = f"{module_name}.{name}"
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            lines += [f"## `{target}`", "", f"A constant: `{name} = {obj!r}`.", ""]
            continue
        lines += [f"::: {target}", "    options:", "      heading_level: 2",
                  "      show_root_heading: true", "      show_root_full_path: true", ""]
    return "\n".join(lines)


def missing_guides():
    listed = {f for _, f in GUIDES}
    on_disk = {p.name for p in DOCS.glob("*.md")}
    return sorted(on_disk - listed), sorted(listed - on_disk)


def write_sources(src):
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for _, page in GUIDES:
        shutil.copy(DOCS / page, src / page)
    for extra in DOCS.glob("*.png"):
        shutil.copy(extra, src / extra.name)
    (src / "api").mkdir()
    nav_api = []
    for title, module_name in api_modules():
        fname = "api/" + module_name.replace(".", "_") + ".md"
        (src / fname).write_text(api_page(title, module_name))
        nav_api.append((title, fname))
    return nav_api


def write_config(cfg_path, src, out, nav_api):
    def q(s):
        return '"' + s.replace('"', '\\"') + '"'
    nav = [f"  - {q(t)}: {f}" for t, f in GUIDES]
    nav.append("  - API reference:")
    nav += [f"    - {q(t)}: {f}" for t, f in nav_api]
    cfg = f"""site_name: safeops
docs_dir: {q(str(src))}
site_dir: {q(str(out))}
strict: true
use_directory_urls: false
theme:
  name: mkdocs
validation:
  omitted_files: warn
  absolute_links: warn
  unrecognized_links: warn
  anchors: warn
  nav:
    not_found: warn
plugins:
  - search
  - mkdocstrings:
      default_handler: python
      handlers:
        python:
          paths: [{q(str(ROOT))}]
          options:
            docstring_style: google
            docstring_options:
              warn_missing_types: false
              warn_unknown_params: false
            show_source: false
            members_order: source
            show_signature_annotations: false
            merge_init_into_class: true
            filters: ["!^_"]
markdown_extensions:
  - toc:
      permalink: true
  - tables
  - fenced_code
nav:
""" + "\n".join(nav) + "\n"
    cfg_path.write_text(cfg)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "site"))
    args = parser.parse_args(argv)
    unlisted, absent = missing_guides()
    if unlisted or absent:
        print(f"docs/build.py: pages not in the navigation: {unlisted}; "
              f"listed but missing: {absent}", file=sys.stderr)
        return 1
    work = ROOT / "build" / "docs-src"
    src = work / "docs"
    nav_api = write_sources(src)
    cfg = work / "mkdocs.yml"
    write_config(cfg, src, pathlib.Path(args.out).resolve(), nav_api)
    from mkdocs.commands import build as mk_build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort, MkDocsException
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(str(cfg))
        mk_build.build(config)
    except (Abort, MkDocsException) as err:
        print(f"docs/build.py: the site did not build: {err}", file=sys.stderr)
        return 1
    print(f"docs/build.py: site built in {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
