"""Fused CPU kernels (compensated reductions, softmax rows): built from the package, lazily.

TensorFlow's CPU kernels cannot widen float32 to float64 inside a reduction:
``tf.reduce_sum(tf.cast(x, tf.float64))`` writes the widened copy to memory
first, which costs 4-7x ``tf.reduce_sum`` at 8M elements. The C++ kernels in
``safeops/native/compensated.cc`` read float32 (or float64) once, widen in
registers and add with TwoSum in double (Ogita-Rump-Oishi Sum2), so
`so.reduce_sum`, `so.reduce_mean`, `so.cumsum` and `so.KahanAccumulator.add`
cost about what the TF op does (figures in BUILD_NOTES.md). ``softmax.cc``
computes the float32 softmax and log_softmax (forward and backward) and the
logsumexp forward of `safeops.softmax` in one cached pass per row, and the
eager softplus of small float32 tensors and the softplus / log_sigmoid forward and backward
of graphs (log_sigmoid eagerly too), one vectorised pass each. ``matmul.cc`` is the float32
`so.matmul`: a float64 GEMM (AVX-512 micro-kernel, operands widened while packed) on
shape-fixed tiles, one rounding. ``exact.cc`` gives the correctly
rounded row sums and means of the reproducible reductions
(`so.config.set_reproducible`): a certified double-double pass, and the
exact integer accumulator for the rows it cannot decide -- the same bits as
the pure-TF accumulator.
``doctor.cc`` holds the float64 convolution, its filter gradient and the
max-pool gradient of `so.doctor.profile`'s float64 copies, compiled for this
CPU (TensorFlow's float64 kernels are not).
``quant.cc`` is the float32 fake quantization of `so.quantization` (TF's
FakeQuantWithMinMaxVars bits and the input gradient, one vectorised pass each;
the training call of the moving-average activation quantizer as one op).

Build: on first use the source is compiled with the C++ compiler (``$CXX``,
else ``c++``) and the flags TensorFlow reports (``tf.sysconfig``), tuned for
this CPU (``-march=native``), into a private cache directory
(``$SAFEOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/safeops``, else
``~/.cache/safeops``), keyed by the source, the TF version, the flags and the
CPU; about 10 s, once. ``python -m safeops.native build`` does it ahead of
time (``make install`` runs it). Only a library this user built is loaded:
the directory must be private, and the file's SHA-256, recorded at build
time, is checked before every load (threat model: docs/native.md). A file
that fails the check, or does not load, is rebuilt once per process, never
loaded. The compiler runs under a deadline (``$SAFEOPS_BUILD_TIMEOUT``
seconds, default 300); a failed build is remembered for that compiler and
those flags (``build --force`` retries). `status()` says whether the kernels
are loaded and, if not, why; a failure is also warned about once per process.

Fallback: where the kernels cannot be built or loaded (no compiler, another
TF ABI, an unsafe cache directory), where ``SAFEOPS_NATIVE=0``, under XLA
(``jit_compile=True``: a custom op has no XLA kernel), on a GPU, or for a
dtype the kernels do not take, the ops use their pure-TF path, which has
the same documented error bounds. Which path ran never changes a result by
more than those bounds.

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
import sys
import threading
import warnings
from pathlib import Path

import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.ops import control_flow_util

from safeops.native import _build
from safeops._core.gradient import register_gradient
from safeops.native._build import Invalid as _Invalid, Unavailable

__all__ = ["Unavailable", "build", "disabled", "library", "status"]

_SOURCES = tuple(Path(__file__).parent / f for f in ("compensated.cc", "softmax.cc", "exact.cc",
                                                    "matmul.cc", "profile.cc", "doctor.cc",
                                                    "quant.cc"))
_HEADERS = (Path(__file__).parent / "common.h",)  # part of the cache key, not compiled alone
_LOG = logging.getLogger("safeops")
_LOCK = threading.Lock()
# lib/path: what is loaded; error: why not; tried: loading was attempted (once per process);
# rebuilt: a rebuild was attempted (at most once per process); warned: the one warning given
_STATE = {"lib": None, "path": None, "error": None, "tried": False, "rebuilt": False,
          "warned": False}
_OFF = threading.local()  # depth of `disabled()` scopes in this thread
# Tried in order: the first that compiles is used. GCC 12 cannot compile
# Eigen's AVX512-FP16 packet code, hence -mno-avx512fp16 first.
_ARCH_FLAGS = (["-march=native", "-mno-avx512fp16"], ["-march=native"], [])
_BASE_FLAGS = ["-shared", "-fPIC", "-O3", "-ffp-contract=off", "-fno-fast-math", "-w"]
# SAFEOPS_NATIVE_SANITIZE=address builds an AddressSanitizer variant (its own cache entry;
# Python must then run with the ASan runtime preloaded: `make native-asan`).
_SANITIZERS = {"address": ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"],
               "undefined": ["-fsanitize=undefined", "-fno-sanitize-recover=all", "-g"]}


def _enabled():
    if getattr(_OFF, "depth", 0):
        return False
    return os.environ.get("SAFEOPS_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


@contextlib.contextmanager
def disabled():
    """Within this scope (this thread), ops built take the pure-TF path, as with SAFEOPS_NATIVE=0.

    For graphs that must not reference the custom ops: a SavedModel to be
    served without safeops, a TFLite conversion (`so.quantization.export_tflite`
    uses it). Results stay within the same documented bounds.

    The choice is made when an op is built: eager ops called in the scope, and
    `tf.function`s traced in it, take the pure-TF path. A `tf.function` traced
    before the scope keeps the graph it traced (with the kernels) when it is
    called in the scope for an input signature it has already seen; trace a
    new `tf.function` (or `get_concrete_function`) inside the scope instead.

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
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "safeops"
    return Path.home() / ".cache" / "safeops"


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


def _extra_flags():
    names = os.environ.get("SAFEOPS_NATIVE_SANITIZE", "").strip()
    flags = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in _SANITIZERS:
            raise Unavailable(f"SAFEOPS_NATIVE_SANITIZE: unknown sanitizer {name!r} "
                              f"(known: {', '.join(_SANITIZERS)})")
        flags += _SANITIZERS[name]
    return flags


def _name(cxx):
    """File name of the shared object for this source, TF, Python, CPU, compiler and flags."""
    h = hashlib.sha256()
    flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    for part in (*(f.read_bytes() for f in _SOURCES + _HEADERS), tf.__version__.encode(),
                 sys.version.encode(), " ".join(flags).encode(), platform.machine().encode(),
                 _cpu_id().encode(), str(cxx).encode(),
                 " ".join(_BASE_FLAGS + _extra_flags()).encode()):
        h.update(part)
        h.update(b"\0")
    return f"safeops_kernels_{h.hexdigest()[:16]}.so"


def _commands():
    extra = _extra_flags()
    return [lambda out, arch=arch: (_BASE_FLAGS + extra + arch + tf.sysconfig.get_compile_flags()
                                    + [str(f) for f in _SOURCES] + ["-o", out]
                                    + tf.sysconfig.get_link_flags())
            for arch in _ARCH_FLAGS]


def _build_at(target, cxx, force, retry=None):
    """Compile into target (a checked directory) unless a verified library is already there
    (or `force`); a remembered failure is retried only where `retry` (default: `force`)."""
    if not force and _build.is_verified(target):
        return
    if not (force if retry is None else retry):
        remembered = _build.remembered_failure(target, cxx)
        if remembered is not None:
            raise Unavailable(f"an earlier build with {cxx} failed ({remembered}); "
                              f"`python -m safeops.native build --force` retries")
    timeout = _build.build_timeout()
    with _build.file_lock(target.with_name(target.stem + ".lock"), timeout + 60.0):
        if not force and _build.is_verified(target):
            return  # another process built it while this one waited
        try:
            _build.compile_into(target, cxx, _commands(), timeout)
        except Unavailable as err:
            _build.remember_failure(target, cxx, str(err))
            raise
        _build.forget_failure(target, cxx)


def build(force=False):
    """Compile the kernels into the cache (if not there already, verified) and return the path.

    Args:
      force: rebuild even when a verified shared object is cached, and retry
        a build remembered as failed.

    Returns:
      The path (`pathlib.Path`) of the shared object.

    Raises:
      RuntimeError: no C++ compiler was found, the cache directory is unsafe
        or cannot be written, the compiler failed or ran past
        ``$SAFEOPS_BUILD_TIMEOUT``, or an earlier build failed; the message
        (one line) says which.
    """
    cxx = _compiler()
    if cxx is None:
        raise Unavailable("safeops.native.build: no C++ compiler found (set $CXX)")
    try:
        directory = _build.secure_dir(_cache_dir(), create=True)
        target = directory / _name(cxx)
        _build_at(target, cxx, force)
    except Unavailable as err:
        raise Unavailable(f"safeops.native.build: {err}") from None
    except OSError as err:
        raise Unavailable(f"safeops.native.build: {err.strerror or err}: "
                          f"{getattr(err, 'filename', '') or ''}") from None
    return target


def _load_verified(target):
    """tf.load_op_library of the very file whose owner and hash were just checked."""
    fd = _build.open_verified(target)
    try:
        proc_path = f"/proc/self/fd/{fd}"
        path = proc_path if os.path.exists(proc_path) else str(target)
        try:
            return tf.load_op_library(path)
        except (RuntimeError, tf.errors.OpError) as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise _Invalid(f"{target} does not load: {msg}") from None
    finally:
        os.close(fd)


def _load():
    """Load the kernels, building them first where needed (a rebuild at most once a process)."""
    cxx = _compiler()
    directory = _build.secure_dir(_cache_dir(), create=True)
    target = directory / _name(cxx)
    try:
        return _load_verified(target), target
    except _Invalid as err:
        reason = err
    if cxx is None:
        raise Unavailable("no C++ compiler found (set $CXX)")
    if _STATE["rebuilt"]:
        raise Unavailable(f"{reason}; it was already rebuilt once in this process")
    _STATE["rebuilt"] = True
    unloadable = "does not load" in str(reason)
    try:
        _build_at(target, cxx, force=unloadable, retry=False)
    except OSError as err:
        raise Unavailable(f"building into {directory}: {err.strerror or err}") from None
    try:
        return _load_verified(target), target
    except _Invalid as err:
        _build.remember_failure(target, cxx, str(err))
        raise


def _warn_once(error):
    if _STATE["warned"]:
        return
    _STATE["warned"] = True
    warnings.warn(f"safeops: fused kernels unavailable, using the pure-TF path (same error "
                  f"bounds): {error}. `safeops.native.status()` has details; SAFEOPS_NATIVE=0 "
                  f"chooses the pure-TF path without this warning.", RuntimeWarning, stacklevel=4)


def library():
    """The loaded kernel library, building it on first use; None where unavailable.

    Returns:
      The module `tf.load_op_library` returns, or None when disabled
      (``SAFEOPS_NATIVE=0``) or when building/loading failed (the reason is
      in ``status()["error"]``; a RuntimeWarning is issued once per process).
      A thread that finds another one building waits at most the build's
      deadline, then takes the pure-TF path for that call.
    """
    if not _enabled():
        return None
    if _STATE["tried"]:
        return _STATE["lib"]
    if not _LOCK.acquire(timeout=2 * _build.build_timeout() + 120.0):
        return None
    try:
        if not _STATE["tried"]:
            try:
                _STATE["lib"], _STATE["path"] = _load()
                _STATE["error"] = None
            except (Unavailable, OSError, tf.errors.OpError) as err:
                _STATE["error"] = str(err)
                _LOG.info("safeops: fused kernels unavailable, using the pure-TF path: %s", err)
                _warn_once(err)
            _STATE["tried"] = True
    finally:
        _LOCK.release()
    return _STATE["lib"]


def status():
    """Where the fused kernels stand, without building or loading anything.

    Returns:
      A dict: ``state`` (what ops built now use: "disabled", "loaded", "not
      loaded yet" or "unavailable"), ``enabled`` (not switched off by ``SAFEOPS_NATIVE=0`` or
      `disabled()`), ``loaded`` (the library is loaded in this process),
      ``path`` (the shared object for this configuration), ``built`` (it
      exists, is this user's and matches its recorded SHA-256),
      ``cache_dir`` and ``error`` (why the kernels are not or cannot be
      loaded: the failure of this process, else a refused cache directory
      or a remembered failed build; None when nothing is wrong).
    """
    cxx = _compiler()
    error = _STATE["error"]
    path, built = _cache_dir(), False
    try:
        path = _cache_dir() / _name(cxx)
        directory = _build.secure_dir(_cache_dir(), create=False)
        path = directory / path.name
        built = _build.is_verified(path)
        if error is None and not built and cxx is not None:
            remembered = _build.remembered_failure(path, cxx)
            if remembered is not None:
                error = f"an earlier build with {cxx} failed ({remembered})"
    except Unavailable as err:
        if error is None and (os.path.exists(_cache_dir()) or path == _cache_dir()):
            error = str(err)
    if error is None and cxx is None and not _STATE["lib"]:
        error = "no C++ compiler found (set $CXX)"
    loaded = _STATE["lib"] is not None
    state = ("disabled" if not _enabled() else "loaded" if loaded
             else "unavailable" if _STATE["tried"] else "not loaded yet")
    return {"state": state, "enabled": _enabled(), "loaded": loaded, "path": str(path),
            "built": built, "cache_dir": str(_cache_dir()), "error": error}


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
    """The library, if the fused kernel should run for tensor x here; else None.

    None also for a tensor known to be empty: nothing to fuse, and a caller's
    ``reshape(x, [-1, n])`` cannot tell 0 rows of length 0 from 1.
    """
    if x.dtype not in dtypes or _in_xla() or not _on_cpu(x):
        return None
    if x.shape.is_fully_defined() and x.shape.num_elements() == 0:
        return None
    return library()


@register_gradient("SafeopsCompensatedSum")
def _sum_grad(op, grad):
    """Broadcast ones (sum) or 1/n (mean), as TF's; the compensation is not differentiated.
    A vector's sum (rank-1 input) is a scalar."""
    shape = tf.shape(op.inputs[0])
    vector = op.inputs[0].shape.rank == 1
    if op.get_attr("mean"):
        grad = grad / tf.cast(shape[0 if vector else 1], grad.dtype)
    return tf.broadcast_to(grad if vector else tf.expand_dims(grad, 1), shape)


@register_gradient("SafeopsExactSum")
def _exact_sum_grad(op, grad):
    """Broadcast ones (sum) or 1/n (mean) over the row, as TF's."""
    return _sum_grad(op, grad)


def _kind(op):
    kind = op.get_attr("kind")
    return kind.decode() if isinstance(kind, bytes) else kind


@register_gradient("SafeopsSoftmax")
def _softmax_grad(op, grad, _):
    """The hand-written backward of softmax / log_softmax / logsumexp rows (softmax.cc); the
    row statistics output is not differentiated."""
    return _STATE["lib"].safeops_softmax_grad(grad, op.inputs[0], *op.outputs, kind=_kind(op))


@register_gradient("SafeopsSoftmaxGrad")
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
        elif kind == "log_softmax":
            dx = g - p * tf.reduce_sum(g, -1, keepdims=True)
        else:
            dx = g * p
    return tape.gradient(dx, [g, x], output_gradients=grad) + [None, None]


@register_gradient("SafeopsCompensatedCumsum")
def _cumsum_grad(op, grad):
    """The cumulative sum of the upstream gradient in the opposite direction, as TF's."""
    return _STATE["lib"].safeops_compensated_cumsum(  # loaded: the forward op ran
        grad, exclusive=op.get_attr("exclusive"), reverse=not op.get_attr("reverse"))


@register_gradient("SafeopsLogistic")
def _logistic_grad(op, grad):
    """g sigmoid(x) (softplus) or g sigmoid(-x) (log_sigmoid): the backward kernel."""
    return _STATE["lib"].safeops_logistic_grad(grad, op.inputs[0], kind=_kind(op))


@register_gradient("SafeopsLogExpm1")
def _log_expm1_grad(op, grad):
    """g (1 + 1/expm1(x)) (softplus_inverse) or g sign(x) / expm1(|x|) (log1mexp): the
    backward kernel."""
    return _STATE["lib"].safeops_log_expm1_grad(grad, op.inputs[0], kind=_kind(op))


@register_gradient("SafeopsLogExpm1Grad")
def _log_expm1_grad_grad(op, grad):
    """Second order, by TF's ops: d/dg is the backward kernel on `grad`; d/dx is
    ``grad g s'(x)`` with ``s' = -1 / (expm1(a) (-expm1(-a)))`` (= -e^a / expm1(a)^2, no
    overflow), a = x (softplus_inverse, 0 from 40 on, where the slope is held at 1) or |x|
    (log1mexp).

    (No accuracy bound is claimed for second derivatives.)"""
    g, x = op.inputs
    kind = _kind(op)
    a = tf.abs(x) if kind == "log1mexp" else x
    d2 = -1.0 / (tf.math.expm1(a) * -tf.math.expm1(-a))
    if kind == "softplus_inverse":
        d2 = tf.where(x < 40.0, d2, tf.zeros_like(d2))
    return _STATE["lib"].safeops_log_expm1_grad(grad, x, kind=kind), grad * g * d2


@register_gradient("SafeopsLogisticGrad")
def _logistic_grad_grad(op, grad):
    """Second order, by TF's ops: d/dg is the backward kernel on `grad`; d/dx is
    ``grad g sigmoid'(x)``, negated for log_sigmoid, with ``sigmoid' = e / (1 + e)**2``,
    e = exp(-|x|) (no cancellation).

    (No accuracy bound is claimed for second derivatives.)"""
    g, x = op.inputs
    kind = _kind(op)
    e = tf.exp(-tf.abs(x))
    d2 = e / tf.square(1.0 + e)
    dx = grad * g * (d2 if kind == "softplus" else -d2)
    return _STATE["lib"].safeops_logistic_grad(grad, x, kind=kind), dx


@register_gradient("SafeopsFakeQuant")
def _fake_quant_grad(op, grad):
    """Straight-through: g inside the nudged range, 0 outside (TF's gradient op's first
    output, one pass); the range is not differentiated (callers stop its gradient)."""
    x, lo, hi = op.inputs
    dx = _STATE["lib"].safeops_fake_quant_grad(
        grad, x, lo, hi, num_bits=op.get_attr("num_bits"),
        narrow_range=op.get_attr("narrow_range"))
    return dx, None, None


@register_gradient("SafeopsFakeQuantGrad")
def _fake_quant_grad_grad(op, grad):
    """Second order: the backward is linear in g (the same mask again) and piecewise constant
    in x (zero)."""
    _, x, lo, hi = op.inputs
    dg = _STATE["lib"].safeops_fake_quant_grad(
        grad, x, lo, hi, num_bits=op.get_attr("num_bits"),
        narrow_range=op.get_attr("narrow_range"), keep_nan=op.get_attr("keep_nan"))
    return dg, tf.zeros_like(x), None, None


@register_gradient("SafeopsFakeQuantEma")
def _fake_quant_ema_grad(op, grad, *_):
    """Straight-through on the updated range (`SafeopsFakeQuantGrad`, keep_nan: a [0, 0]
    range passes the gradient only at NaN inputs); the range and its state are not
    differentiated."""
    dx = _STATE["lib"].safeops_fake_quant_grad(
        grad, op.inputs[0], op.outputs[1], op.outputs[2], num_bits=op.get_attr("num_bits"),
        keep_nan=True)
    return dx, None, None, None


tf.no_gradient("SafeopsSymmetricGrid")  # the weight grid's caller differentiates around it
