"""One registry of the public names: what each replaces and how it differs.

Every public op, layer, loss, metric, optimizer and callback is registered
where it is defined, with the decorator `drop_in` (it replaces a TensorFlow or
Keras name) or `new` (it has no original). `docs/migration.md` is generated
from this registry (`render_markdown`), and a test fails when a public name
is missing from it or the page is stale.

    @drop_in("tf.math.reduce_sum",
             "float32 is accumulated in float64: the result is faithful "
             "(within 1 ulp of the exact sum) where TF's can lose every digit")
    def reduce_sum(input_tensor, axis=None, keepdims=False, name=None): ...
"""

import collections

__all__ = ["Entry", "drop_in", "entries", "new", "render_markdown"]

Entry = collections.namedtuple("Entry", ["name", "original", "differences", "section"])

_REGISTRY = {}


def _public_name(obj, name):
    if name is not None:
        return name
    module = obj.__module__
    parts = module.split(".")
    # safeops.summation.reduce_sum -> safeops.reduce_sum; safeops.layers.x.Cls -> safeops.layers.Cls
    if len(parts) >= 3 and parts[1] in _SUBPACKAGES:
        return f"safeops.{parts[1]}.{obj.__name__}"
    if len(parts) == 2 and parts[1] in _SUBPACKAGES:
        return f"safeops.{parts[1]}.{obj.__name__}"
    return f"safeops.{obj.__name__}"


# Public subpackages and modules whose names are used with their prefix (so.layers.X).
_SUBPACKAGES = ("layers", "losses", "metrics", "optimizers", "callbacks", "mixed_precision",
                "quantization", "doctor", "testing", "native")


def _section(public):
    parts = public.split(".")
    return parts[1] if len(parts) > 2 else "ops"


def _register(obj, original, differences, name):
    public = _public_name(obj, name)
    _REGISTRY[public] = Entry(public, original, tuple(differences), _section(public))
    return obj


def drop_in(original, *differences, name=None):
    """Register the decorated op or class as a replacement of `original`.

    Args:
      original: the TF/Keras name it replaces (``"tf.math.reduce_sum"``,
        ``"keras.layers.Dense"``); several originals joined with " / ".
      *differences: one sentence each, every documented difference from the
        original (a more accurate value, an extra variable, an error raised).
      name: the public name when it cannot be derived from the module.
    """
    def decorate(obj):
        return _register(obj, original, differences, name)
    return decorate


def new(*notes, name=None):
    """Register the decorated op or class as new: it has no TF/Keras original."""
    def decorate(obj):
        return _register(obj, None, notes, name)
    return decorate


def entries():
    """All registered entries, sorted by section and name."""
    return sorted(_REGISTRY.values(), key=lambda e: (e.section != "ops", e.section, e.name))


def _cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown():
    """The text of docs/migration.md."""
    lines = [
        "# Migrating to safeops",
        "",
        "Generated from the registry in `safeops/_core/registry.py` "
        "(`python -m safeops._core.migration > docs/migration.md`); a test fails when it is stale.",
        "",
        "Each drop-in keeps its original's signature, defaults, output type, shape and dtype, and "
        "raises the original's error types. The differences listed are deliberate, and each is "
        "asserted by a test.",
        "",
    ]
    by_section = collections.OrderedDict()
    for e in entries():
        by_section.setdefault(e.section, []).append(e)
    for section, items in by_section.items():
        lines += [f"## {section}", "", "| safeops | replaces | differences |", "|---|---|---|"]
        for e in items:
            original = f"`{e.original}`" if e.original else "new (no original)"
            diffs = "<br>".join(_cell(d) for d in e.differences) or "none"
            lines.append(f"| `{e.name}` | {original} | {diffs} |")
        lines.append("")
    return "\n".join(lines)
