"""The fused reductions hold their output plus a bounded workspace, for every axis layout,
and give exact sums in each of their work partitions."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import native
from test_native_support import ROOT, copy_compiler, env_for, prebuilt_library

# Peak resident memory of one reduction: the kernel's high-water mark is reset
# (/proc/self/clear_refs) after a warm-up call, so only this call's allocations count.
_PEAK_SCRIPT = r"""
import json, os
import tensorflow as tf
import safeops as so

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field))

x = tf.ones([100000, 1, 3])
so.reduce_sum(tf.ones([10, 1, 3]), axis=1)  # kernels loaded, op created
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
before = kib("VmRSS:")
y = so.reduce_sum(x, axis=1)
peak = kib("VmHWM:") - before
assert float(tf.reduce_sum(y)) == 300000.0
print("RESULT " + json.dumps({"peak_kib": peak, "state": so.native.status()["state"]}))
"""


def _peak(env):
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], env=env, capture_output=True,
                          text=True, check=False, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_middle_axis_with_short_inner_dimension_peak_memory(tmp_path):
    """[100000, 1, 3] summed over axis 1 (1.1 MiB in, 1.1 MiB out): the kernel's peak stays
    within 2x of the pure-TF path's (a partial-sum buffer per output row made it 782 MiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("no /proc/self/clear_refs to reset the peak resident memory")
    cxx = copy_compiler(tmp_path, prebuilt_library(), tmp_path / "cxx.log")
    env = env_for(tmp_path / "cache", cxx)
    fused = _peak(env)
    env["SAFEOPS_NATIVE"] = "0"
    pure = _peak(env)
    assert fused["state"] == "loaded" and pure["state"] == "disabled"
    assert fused["peak_kib"] <= 2 * pure["peak_kib"], (fused, pure)


def _grid(shape, seed, dtype):
    """Multiples of 2**-10 below 8 in magnitude: float64 sums of up to 2**40 of them are exact."""
    k = np.random.default_rng(seed).integers(-2**13, 2**13, size=shape)
    return (k * 2.0**-10).astype(dtype)


@pytest.mark.parametrize("shape,axis", [
    ((100000, 1, 3), 1),   # one row per output: no partial sums at all
    ((70000, 3), 0),       # few columns, many row blocks: split into segments, merged in order
    ((3, 40000, 5), 1),    # several slabs, each split
    ((200, 1500), 0),      # three column chunks, one row block
    ((150, 20000), 0),     # many outputs: the split limited by the partial-sum budget
    ((2, 300000), 1),      # long rows: segments of 32768-element blocks
    ((200000, 1), 1),      # one element per output
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_layout_sums_exactly(shape, axis, dtype, monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    x = _grid(shape, sum(shape), dtype)
    exact = x.astype(np.float64).sum(axis)  # exact: see _grid
    np.testing.assert_array_equal(so.reduce_sum(x, axis).numpy(), exact.astype(dtype))
    n = shape[axis]
    # the mean: the exact sum divided once in double, then rounded once (faithful: 1 ulp)
    mean = so.reduce_mean(x, axis).numpy()
    np.testing.assert_allclose(mean, (exact / n).astype(dtype), rtol=np.finfo(dtype).eps, atol=0)
    cum = so.cumsum(x, axis).numpy()
    np.testing.assert_array_equal(cum, np.cumsum(x.astype(np.float64), axis).astype(dtype))


@pytest.mark.parametrize("shape", [(0, 0), (3, 0), (0, 5)])
def test_logsumexp_and_softmax_of_empty_rows(shape, monkeypatch):
    """As tf.reduce_logsumexp / tf.nn.softmax: empty outputs, and -inf for empty rows."""
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    x = tf.zeros(shape)
    np.testing.assert_array_equal(so.reduce_logsumexp(x, -1).numpy(),
                                  tf.reduce_logsumexp(x, -1).numpy())
    np.testing.assert_array_equal(so.reduce_logsumexp(x, 1, keepdims=True).numpy(),
                                  tf.reduce_logsumexp(x, 1, keepdims=True).numpy())
    assert so.softmax(x).shape == shape
