"""Native dispatch: whether the fused C++ kernels (`safeops.native`) run for a tensor here."""

import tensorflow as tf

from safeops import native as _native

__all__ = ["kernels"]

_DEFAULT = (tf.float32, tf.float64)


def kernels(x, dtypes=_DEFAULT):
    """The loaded kernel library when the fused kernel should run for tensor x; else None.

    None under XLA, on a GPU, where the kernels are disabled or unavailable,
    and for a dtype not in `dtypes` (the op then takes its pure-TF path).
    """
    if x.dtype not in dtypes:
        return None
    if tf.executing_eagerly() and _no_gpu():  # eager on a CPU-only host: never XLA, always CPU
        return _native.library()
    return _usable(x, dtypes)


@tf.autograph.experimental.do_not_convert  # Python-level dispatch: never an AutoGraph graph
def _usable(x, dtypes):
    return _native._usable(x, dtypes)  # noqa: SLF001  (the one call site of the dispatch)


_GPU_STATE = []


def _no_gpu():
    """True when the process has no logical GPU (asked once: devices are fixed after start)."""
    if not _GPU_STATE:
        _GPU_STATE.append(not tf.config.list_logical_devices("GPU"))
    return _GPU_STATE[0]
