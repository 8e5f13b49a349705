"""Print docs/migration.md from the registry: ``python -m safeops._core.migration``."""

import safeops  # noqa: F401  (importing registers every public name)
from safeops._core.registry import render_markdown

if __name__ == "__main__":
    print(render_markdown(), end="")
