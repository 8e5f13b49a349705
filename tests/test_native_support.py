"""Shared by the native loader tests (no tests here): stand-in compilers, a fresh process.

A real build takes ~10 s (more on a busy machine), so the loader tests use a
stand-in compiler that copies the library this test process already built:
the loader cannot tell it from a compiler, and a test can count its calls.
"""

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from safeops import native

ROOT = Path(__file__).resolve().parent.parent

# Runs two ops (the compensated sum and the softmax kernel's), twice, then prints JSON:
# results, status, the safeops RuntimeWarnings seen, and whether a planted library ran.
OPS_SCRIPT = r"""
import json, os, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import tensorflow as tf
    import safeops as so
    x = tf.constant([[1e8, 1.0, -1e8, 2.0]])
    sums = [float(so.reduce_sum(x)) for _ in range(2)]
    soft = so.softmax(tf.constant([[0.0, 0.0]])).numpy().tolist()
marker = os.environ.get("PLANTED_MARKER", "")
print("RESULT " + json.dumps({
    "sums": sums, "softmax": soft, "status": so.native.status(),
    "warnings": [str(w.message) for w in caught
                 if issubclass(w.category, RuntimeWarning) and "safeops" in str(w.message)],
    "planted_ran": bool(marker) and os.path.exists(marker)}))
"""

PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  const char* p = getenv("PLANTED_MARKER");
  FILE* f = p ? fopen(p, "w") : NULL;
  if (f) { fputs("planted code ran\n", f); fclose(f); }
}
"""


def require_kernels(monkeypatch):
    """The loaded kernel library, SAFEOPS_NATIVE unset; skip where no compiler exists, fail
    where one exists but the kernels did not build."""
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    lib = native.library()
    if lib is None:
        if native._compiler() is not None:  # noqa: SLF001
            pytest.fail(f"a compiler exists but the kernels did not build: "
                        f"{native.status()['error']}")
        pytest.skip("no C++ compiler: the fused kernels cannot be built here")
    return lib


def tie_cases(p):
    """Sums of p-bit floats at and a hair off rounding midpoints: (heads, correctly rounded
    sums). h is half an ulp of 1: [1, h] is a tie that rounds to even (1), [1 + 2h, h] one that
    rounds up, a tiny term of either sign decides the tie of [1, h], and [4, 4h, 2**-2p] lies
    just above a tie at 4."""
    h = 2.0 ** -p
    heads = [[1.0, h], [1.0 + 2 * h, h], [1.0, h, h * 2.0 ** -(p - 3)],
             [1.0, h, -h * 2.0 ** -(p - 3)], [-1.0, -h], [4.0, 4 * h, 2.0 ** -(2 * p)]]
    return heads, [1.0, 1.0 + 4 * h, 1.0 + 2 * h, 1.0, -1.0, 4.0 + 8 * h]


def edge_sums(fi):
    """Finite sums at the edges of a format (`ml_dtypes.finfo` fi): results in the subnormal
    range, cancellation to a subnormal, overflow to inf and back into range, the largest
    finite value with half an ulp (a tie) and less, signed zeros."""
    big, tiny, sub = float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal)
    half_ulp_max = math.ldexp(1.0, fi.maxexp - 2 - fi.nmant)
    return [[tiny, -tiny + sub], [tiny, -0.75 * tiny], [3 * sub, -sub, sub], [big, big, -big],
            [big, big], [0.7 * big] * 3, [-big, -big], [big, half_ulp_max],
            [big, half_ulp_max / 2], [2 * tiny, -tiny, sub], [-sub, -0.0], [1.0, -1.0]]


def prebuilt_library():
    """The verified library this process loaded (built once for the whole test run)."""
    if native._compiler() is None:  # noqa: SLF001
        pytest.skip("no C++ compiler: the fused kernels cannot be built here")
    if native.library() is None:
        pytest.fail(f"a compiler exists but the kernels did not load: {native.status()['error']}")
    return Path(native._STATE["path"])  # noqa: SLF001


def write_script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def copy_compiler(directory, library, log):
    """A stand-in CXX: logs its pid, copies `library` to the -o argument."""
    return write_script(directory / "copy-cxx", f"""echo $$ >> '{log}'
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
cp '{library}' "$out"
""")


def env_for(cache, cxx, **extra):
    env = dict(os.environ)
    env.pop("SAFEOPS_NATIVE", None)
    env.update({"SAFEOPS_CACHE_DIR": str(cache), "CXX": str(cxx), "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONPATH": str(ROOT)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_ops(env, timeout=240):
    """OPS_SCRIPT in a fresh process: its JSON result (a crash fails the test with its output)."""
    proc = subprocess.run([sys.executable, "-c", OPS_SCRIPT], env=env, capture_output=True,
                          text=True, check=False, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def target_name(cxx, monkeypatch):
    """The cache file name a process with CXX=cxx uses."""
    monkeypatch.setenv("CXX", str(cxx))
    return native._name(str(cxx))  # noqa: SLF001


def calls(log):
    return len(log.read_text().split()) if log.exists() else 0


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def last_lines_per_thread_count(script, counts=(1, 2), timeout=300):
    """The last stdout line of `script` run in a fresh process per intra-op thread count
    (given as its one argument; TF fixes its pool at start-up), in the order of `counts`."""
    outs = []
    for threads in counts:
        proc = subprocess.run([sys.executable, "-c", script, str(threads)], capture_output=True,
                              text=True, check=False, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(proc.stdout.strip().splitlines()[-1])
    return outs
