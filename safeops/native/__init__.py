"""Fused CPU kernels (compensated reductions, softmax rows): built from the package, lazily.

TensorFlow's CPU kernels cannot widen float32 to float64 inside a reduction:
``tf.reduce_sum(tf.cast(x, tf.float64))`` writes the widened copy to memory
first, which costs 4-7x ``tf.reduce_sum`` at 8M elements. The C++ kernels in
``safeops/native/compensated.cc`` read float32 (or float64) once, widen in
registers and add with TwoSum in double (Ogita-Rump-Oishi Sum2), so
`so.reduce_sum`, `so.reduce_mean`, `so.cumsum` and `so.KahanAccumulator.add`
cost about what the TF op does (figures in BUILD_NOTES.md). ``softmax.cc``
computes the float32 softmax (forward and backward) and logsumexp forward of
`safeops.softmax` in one cached pass per row.

Build: on first use the source is compiled with the C++ compiler (``$CXX``,
else ``c++``) and the flags TensorFlow reports (``tf.sysconfig``), tuned for
this CPU (``-march=native``), into a cache directory (``$SAFEOPS_CACHE_DIR``,
else ``$XDG_CACHE_HOME/safeops``, else ``~/.cache/safeops``), keyed by the
source, the TF version, the flags and the CPU; about 10 s, once. ``python -m
safeops.native build`` does it ahead of time (``make install`` runs it).

Fallback: where the kernels cannot be built or loaded (no compiler, another
TF ABI), where ``SAFEOPS_NATIVE=0``, under XLA (``jit_compile=True``: a
custom op has no XLA kernel), on a GPU, or for a dtype the kernels do not
take, the ops use their pure-TF path, which has the same documented error
bounds. Which path ran never changes a result by more than those bounds.

Example:
  >>> import safeops as so
  >>> so.native.status()["enabled"]
  True
"""

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.ops import control_flow_util

__all__ = ["build", "disabled", "library", "status"]

_SOURCES = tuple(Path(__file__).parent / f for f in ("compensated.cc", "softmax.cc"))
_HEADERS = (Path(__file__).parent / "common.h",)  # part of the cache key, not compiled alone
_LOG = logging.getLogger("safeops")
_LOCK = threading.Lock()
_STATE = {"lib": None, "path": None, "error": None, "tried": False}
_OFF = threading.local()  # depth of `disabled()` scopes in this thread
# Tried in order: the first that compiles is used. GCC 12 cannot compile
# Eigen's AVX512-FP16 packet code, hence -mno-avx512fp16 first.
_ARCH_FLAGS = (["-march=native", "-mno-avx512fp16"], ["-march=native"], [])


def _enabled():
    if getattr(_OFF, "depth", 0):
        return False
    return os.environ.get("SAFEOPS_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


@contextlib.contextmanager
def disabled():
    """Within this scope (this thread), ops take the pure-TF path, as with SAFEOPS_NATIVE=0.

    For graphs that must not reference the custom ops: a SavedModel to be
    served without safeops, a TFLite conversion (`so.quantization.export_tflite`
    uses it). Results stay within the same documented bounds.

    Args:
      (none)

    Yields:
      None.

    Example:
      >>> with so.native.disabled():
      ...     concrete = tf.function(so.reduce_sum).get_concrete_function(x)
    """
    _OFF.depth = getattr(_OFF, "depth", 0) + 1
    try:
        yield
    finally:
        _OFF.depth -= 1


def _cache_dir():
    root = os.environ.get("SAFEOPS_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "safeops"


def _compiler():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _cpu_id():
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _target():
    """Cache path of the shared object for this source, TF, Python and CPU."""
    h = hashlib.sha256()
    for part in (*(f.read_bytes() for f in _SOURCES + _HEADERS), tf.__version__.encode(), sys.version.encode(),
                 " ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode(),
                 platform.machine().encode(), _cpu_id().encode(), str(_compiler()).encode()):
        h.update(part)
        h.update(b"\0")
    return _cache_dir() / f"safeops_kernels_{h.hexdigest()[:16]}.so"


def build(force=False):
    """Compile the kernels into the cache (if not there already) and return the path.

    Args:
      force: rebuild even when the cached shared object exists.

    Returns:
      The path (`pathlib.Path`) of the shared object.

    Raises:
      RuntimeError: no C++ compiler was found, or every flag set failed to
        compile; the message holds the compiler's last output.
    """
    target = _target()
    if target.exists() and not force:
        return target
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("safeops.native.build: no C++ compiler found (set $CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    base = ["-shared", "-fPIC", "-O3", "-ffp-contract=off", "-fno-fast-math", "-w"]
    last = ""
    for arch in _ARCH_FLAGS:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = ([cxx] + base + arch + tf.sysconfig.get_compile_flags()
               + [str(f) for f in _SOURCES] + ["-o", tmp] + tf.sysconfig.get_link_flags())
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            os.replace(tmp, target)  # atomic: a concurrent builder sees old or new, never half
            return target
        os.unlink(tmp)
        last = proc.stderr[-4000:]
    raise RuntimeError(f"safeops.native.build: compilation failed:\n{last}")


def library():
    """The loaded kernel library, building it on first use; None where unavailable.

    Args:
      (none)

    Returns:
      The module `tf.load_op_library` returns, or None when disabled
      (``SAFEOPS_NATIVE=0``) or when building/loading failed (the reason is
      in ``status()["error"]`` and logged once at INFO level).
    """
    if not _enabled():
        return None
    if _STATE["tried"]:
        return _STATE["lib"]
    with _LOCK:
        if not _STATE["tried"]:
            try:
                path = build()
                _STATE["lib"] = tf.load_op_library(str(path))
                _STATE["path"] = path
            except (RuntimeError, OSError, tf.errors.OpError) as err:
                _STATE["error"] = str(err)
                _LOG.info("safeops: fused kernels unavailable, using the pure-TF path: %s", err)
            _STATE["tried"] = True
    return _STATE["lib"]


def status():
    """Where the fused kernels stand, without building anything.

    Args:
      (none)

    Returns:
      A dict: ``enabled`` (not switched off by ``SAFEOPS_NATIVE=0``),
      ``loaded`` (the library is loaded in this process), ``path`` (the
      cached shared object for this configuration), ``built`` (it exists)
      and ``error`` (why building or loading failed, or None).
    """
    target = _target()
    return {"enabled": _enabled(), "loaded": _STATE["lib"] is not None, "path": str(target),
            "built": target.exists(), "error": _STATE["error"]}


def _gpus():
    return bool(tf.config.list_logical_devices("GPU"))


def _on_cpu(x):
    """True where an op on x will run on the CPU, as far as it is known when the op is built.

    With no GPU every op does. With one, an eager op runs where its input
    lives unless a device scope says otherwise; a graph op's placement is
    decided later, so graphs take the pure-TF path (TF's GPU kernels need no
    fused cast).
    """
    if not _gpus():
        return True
    if not tf.executing_eagerly():
        return False
    scope = context.context().device_name or ""
    return "GPU" not in scope.upper() and "CPU" in x.device.upper()


def _in_xla():
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _usable(x, dtypes=(tf.float32, tf.float64)):
    """The library, if the fused kernel should run for tensor x here; else None."""
    if x.dtype not in dtypes or _in_xla() or not _on_cpu(x):
        return None
    return library()


def _register_gradient(op_type):
    """`tf.RegisterGradient`, tolerating a second import of this module (a reload)."""
    def register(fn):
        try:
            tf.RegisterGradient(op_type)(fn)
        except KeyError:
            pass
        return fn
    return register


@_register_gradient("SafeopsCompensatedSum")
def _sum_grad(op, grad):
    """Broadcast ones (sum) or 1/n (mean), as TF's; the compensation is not differentiated."""
    shape = tf.shape(op.inputs[0])
    if op.get_attr("mean"):
        grad = grad / tf.cast(shape[1], grad.dtype)
    return tf.broadcast_to(tf.expand_dims(grad, 1), shape)


def _kind(op):
    kind = op.get_attr("kind")
    return kind.decode() if isinstance(kind, bytes) else kind


@_register_gradient("SafeopsSoftmax")
def _softmax_grad(op, grad, _):
    """The hand-written backward of softmax / logsumexp rows (softmax.cc); the row
    statistics output is not differentiated."""
    return _STATE["lib"].safeops_softmax_grad(grad, op.inputs[0], *op.outputs, kind=_kind(op))


@_register_gradient("SafeopsSoftmaxGrad")
def _softmax_grad_grad(op, grad):
    """Second order: the plain TF formulas of the backward, differentiated by a tape.

    (No accuracy bound is claimed for second derivatives.)"""
    g, x, _, _ = op.inputs  # forward outputs: their dependence on x is in p below
    kind = _kind(op)
    with tf.GradientTape() as tape:
        tape.watch([g, x])
        p = tf.nn.softmax(x)
        if kind == "softmax":
            dx = p * (g - tf.reduce_sum(g * p, -1, keepdims=True))
        else:
            dx = g * p
    return tape.gradient(dx, [g, x], output_gradients=grad) + [None, None]


@_register_gradient("SafeopsCompensatedCumsum")
def _cumsum_grad(op, grad):
    """The cumulative sum of the upstream gradient in the opposite direction, as TF's."""
    return _STATE["lib"].safeops_compensated_cumsum(  # loaded: the forward op ran
        grad, exclusive=op.get_attr("exclusive"), reverse=not op.get_attr("reverse"))
