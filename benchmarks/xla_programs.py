"""Fingerprints of the XLA programs the benchmark cases compile: ``python -m benchmarks.xla_programs``.

The selection flag is the suite's ``--only``.

For every case with a `jit_compile=True` mode, the safeops side (forward, and
forward+backward where the case has one) is compiled as the suite compiles it and its
optimized HLO is reduced to a fingerprint that ignores what does not change the machine
code's work: instruction, computation and parameter names (renumbered in order of first
appearance) and source metadata. Two trees whose fingerprints agree for a case run the
same XLA program on the same inputs, so a change of that case's XLA ratio between two
benchmark runs of those trees is run-to-run spread, not a regression.

    python -m benchmarks.xla_programs --output=new.json
    (in another checkout) python -m benchmarks.xla_programs --output=old.json
    python -m benchmarks.xla_programs --compare=old.json,new.json
"""

import hashlib
import json
import os
import re
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# the suite's flags (--only among them) and its case selection
from benchmarks.__main__ import _selected  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Write the fingerprints (JSON) here.")
flags.DEFINE_string("compare", None, "Two fingerprint files OLD,NEW: print what differs.")
flags.DEFINE_string("size", "quick", "Input size the cases are compiled for (smoke, quick, full).")

_SIZE_SUFFIX = re.compile(r"^(b\d+|Nx\d*|\d+[KM]?x?\d*)$")


def canonical(hlo):
    """Optimized HLO text without names or metadata: equal for the same program."""
    hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    hlo = re.sub(r"HloModule \S+", "HloModule", hlo)
    names = {}
    hlo = re.sub(r"%[\w.\-]+", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), hlo)
    hlo = re.sub(r"(?<=[(,] )[\w.\-]+: ", "x: ", hlo)  # parameter names in signatures
    hlo = re.sub(r"\([\w.\-]+: ", "(x: ", hlo)
    return re.sub(r"ENTRY \S+", "ENTRY", hlo)


def fingerprint(hlo):
    return hashlib.sha1(canonical(hlo).encode()).hexdigest()[:16]


def base_name(name):
    """A case name without a trailing size component (older trees carried one)."""
    parts = name.split("/")
    if len(parts) > 2 and _SIZE_SUFFIX.match(parts[-1]):
        parts = parts[:-1]
    return "/".join(parts)


def _programs(only, size):
    import numpy as np
    import tensorflow as tf

    import benchmarks.cases  # noqa: F401  (registers every family)
    from benchmarks import registry
    from benchmarks.harness import _forward_backward

    out = {}
    for case in _selected(registry.cases(), only):
        if "xla" not in case.modes or case.baseline is None:
            continue
        inputs = tuple(tf.constant(v) if isinstance(v, np.ndarray) else v
                       for v in case.make_inputs(np.random.default_rng(0), size))
        # positional only: get_compiler_ir binds every parameter of the traced function
        fwd = (lambda f: (lambda *a: f(*a)))(case.candidate)
        entry = {}
        for direction in ("fwd", "fwd+bwd") if case.grad else ("fwd",):
            body = fwd if direction == "fwd" else _forward_backward(fwd, inputs)
            try:
                hlo = tf.function(body, jit_compile=True).experimental_get_compiler_ir(
                    *inputs)(stage="optimized_hlo")
                entry[direction] = fingerprint(hlo)
            except Exception as err:  # reported, not fatal: the case may not compile
                entry[direction] = f"error: {type(err).__name__}"
        out[base_name(case.name)] = entry
    return out


def compare(old, new):
    """Lines: each case and direction in both files, SAME or DIFFERENT."""
    lines = []
    for name in sorted(set(old) & set(new)):
        for direction in sorted(set(old[name]) & set(new[name])):
            a, b = old[name][direction], new[name][direction]
            verdict = "error" if a.startswith("error") or b.startswith("error") else (
                "SAME" if a == b else "DIFFERENT")
            lines.append(f"{verdict:9s} {name} xla/{direction}")
    return lines


def main(argv):
    del argv
    if FLAGS.compare:
        old_path, new_path = FLAGS.compare.split(",")
        with open(old_path) as f_old, open(new_path) as f_new:
            print("\n".join(compare(json.load(f_old), json.load(f_new))))
        return
    programs = _programs(FLAGS.only, FLAGS.size)
    text = json.dumps(programs, indent=1, sort_keys=True)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
