"""Native dispatch: whether the fused C++ kernels (`safeops.native`) run for a tensor here."""

import tensorflow as tf

from safeops import native as _native

__all__ = ["kernels"]

_DEFAULT = (tf.float32, tf.float64)


@tf.autograph.experimental.do_not_convert  # Python-level dispatch: never an AutoGraph graph
def kernels(x, dtypes=_DEFAULT):
    """The loaded kernel library when the fused kernel should run for tensor x; else None.

    None under XLA, on a GPU, where the kernels are disabled or unavailable,
    and for a dtype not in `dtypes` (the op then takes its pure-TF path).
    """
    if x.dtype not in dtypes:
        return None
    return _native._usable(x, dtypes)  # noqa: SLF001  (the one call site of the dispatch)
