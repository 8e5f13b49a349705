"""Library-wide switches: reproducible (correctly rounded) reductions.

``so.config.set_reproducible(True)`` makes the sums built on the exact
accumulator (`so.reduce_sum`, `so.reduce_mean`, `so.cumsum`, `so.dot`) return
the *correctly rounded* result: the exact sum of the inputs rounded once,
whose bits depend only on the values summed -- not on their order, the
shape, the batch split, the device, the thread count or the compilation
(docs/reproducibility.md). `so.reduce_variance`/`reduce_std` (exact means of
float64-rounded squares), `so.reduce_logsumexp`, `so.softmax` and
`so.log_softmax` (an exact sum of the exponentials) and the statistics of the
stable normalization layers become independent of order and batch split too. Off by default: the default method is faster and
faithful (within 1 ulp), but its last bit can differ between the CPU kernel
and the pure-TF path.

The switch is read when an op is built: a `tf.function` traced before the
switch changed keeps the method it was traced with (trace it again, e.g. a
new `tf.function`). The context manager `reproducible()` overrides the
process-wide setting in the current thread. The environment variable
``SAFEOPS_REPRODUCIBLE=1`` turns it on at import.
"""

import contextlib
import os
import threading

from safeops._core.registry import new

__all__ = ["is_reproducible", "reproducible", "set_reproducible"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _from_env(value):
    """The switch's initial state from SAFEOPS_REPRODUCIBLE's value (ValueError if unreadable)."""
    v = (value or "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"safeops.config: SAFEOPS_REPRODUCIBLE must be one of {_TRUE + _FALSE[1:]}; "
                     f"got {value!r}")


_GLOBAL = {"on": _from_env(os.environ.get("SAFEOPS_REPRODUCIBLE"))}
_LOCAL = threading.local()


def _check_bool(op, enabled):
    if not isinstance(enabled, bool):
        raise TypeError(f"{op}: argument 'enabled' must be a bool; got {type(enabled).__name__}")
    return enabled


@new("Process-wide switch: reductions built afterwards are correctly rounded (bitwise "
     "reproducible on every device, order and batch split).",
     name="safeops.config.set_reproducible")
def set_reproducible(enabled=True):
    """Turn correctly rounded (bitwise reproducible) reductions on or off for the process.

    Args:
      enabled: bool; True for the exact accumulator, False for the default
        (faithful, faster) method.

    Returns:
      None.

    Raises:
      TypeError: if `enabled` is not a bool.

    Example:
      >>> so.config.set_reproducible(True)
      >>> so.config.is_reproducible()
      True
    """
    _GLOBAL["on"] = _check_bool("safeops.config.set_reproducible", enabled)


@new("Context manager: the switch in the current thread, restored on exit.",
     name="safeops.config.reproducible")
@contextlib.contextmanager
def reproducible(enabled=True):
    """Within this scope (this thread), reductions are built correctly rounded (or not).

    Nested scopes restore the enclosing setting on exit, also on an exception.

    Args:
      enabled: bool (default True).

    Yields:
      None.

    Raises:
      TypeError: if `enabled` is not a bool.

    Example:
      >>> with so.config.reproducible():
      ...     total = so.reduce_sum(x)   # correctly rounded
    """
    _check_bool("safeops.config.reproducible", enabled)
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    stack.append(enabled)
    try:
        yield
    finally:
        stack.pop()


@new("Whether reductions built now are correctly rounded.", name="safeops.config.is_reproducible")
def is_reproducible():
    """Whether ops built now use the exact accumulator (innermost scope, else the process setting).

    Returns:
      bool.
    """
    stack = getattr(_LOCAL, "stack", None)
    if stack:
        return stack[-1]
    return _GLOBAL["on"]
