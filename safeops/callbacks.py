"""Keras callbacks for numerics: `NumericsMonitor` and `SmoothedLoss` (``so.callbacks``).

`keras.callbacks.TerminateOnNaN` stops training on a NaN loss but never says
which layer produced it, or whether it appeared in the forward or the backward
pass. `NumericsMonitor` does: it checks every training step inside the
compiled step and, on the first failure, re-runs the captured batch eagerly,
layer by layer under a `tf.GradientTape`, to name the first layer whose output
(forward) or gradient (backward) is non-finite.
"""

import logging
import math
import warnings

import keras

from safeops import _probe
from safeops._core.registry import drop_in, new

__all__ = ["NumericsMonitor", "SmoothedLoss"]

_log = logging.getLogger("safeops")

_CHECKS = {"loss": ("loss",), "gradients": ("loss", "gradients"),
           "all": ("loss", "gradients", "weights")}


@drop_in("keras.callbacks.TerminateOnNaN",
         "names the first layer whose output or gradient is non-finite, and the step (`report`)",
         "skips the update of the failing step, so the weights stay finite (TerminateOnNaN lets "
         "the NaN update through)",
         "extra arguments mode ('stop'/'warn') and check ('loss'/'gradients'/'all') come first; "
         "a bool in the first place is read as TerminateOnNaN's raise_error")
@keras.saving.register_keras_serializable(package="safeops")
class NumericsMonitor(keras.callbacks.Callback):
    """Stop (or warn) on the first non-finite value and name the layer that produced it.

    Replaces `keras.callbacks.TerminateOnNaN`, adding the localisation.

    Method. The model's training step is wrapped (for the duration of `fit`)
    so that, inside the compiled step, it checks:

    * ``check="loss"``: the raw batch loss (one `is_finite` on a scalar and a
      branch: "almost nothing", measured in the benchmark suite);
    * ``check="gradients"``: also every gradient passed to the optimizer (one
      `is_finite` pass over the gradients: needed to catch a NaN born in the
      backward pass at the step where it appears, before it poisons weights);
    * ``check="all"``: also every trainable weight after the update (one more
      pass over the weights). This costs more than ``"loss"``: measured
      1.12x-1.17x a plain training step of a 6 x Dense(256) MLP, batch 256, on
      2 CPU cores (``check="loss"``: 0.8x-1.0x, i.e. within noise), see
      ``python -m benchmarks --only=layers`` (`benchmarks/cases/layers.py`).

    A failing step copies its batch to Python (a `tf.py_function` in the
    untaken branch of a `tf.cond`; XLA-compiled steps stay compiled inside).
    At the end of that batch the callback re-runs the batch eagerly, layer by
    layer, and builds `report`: ``step`` (0-based training step counted from
    the start of this `fit`), ``epoch``, ``batch`` (index in the epoch),
    ``steps`` and ``batches`` (first and last step / batch of the Keras call in
    which the failure appeared, see below), ``direction`` (``"forward"``, ``"backward"``, ``"input"`` for
    non-finite data), ``layer`` and ``layer_class`` of the first culprit,
    ``where`` (its output, the gradient of its inputs or of its weights),
    ``nan`` and ``inf`` counts in that tensor, ``failed_checks`` and, if any
    weight is already non-finite, ``nonfinite_weights``. The report is logged
    (logger ``"safeops"``) and kept on the callback. With a Keras
    `LossScaleOptimizer` (``mixed_float16``) gradient overflow is expected and
    handled by the loss scale, so gradients are not checked there.

    The update of a failing step is skipped (a `tf.cond` around
    ``apply_gradients``), so the weights stay finite and the re-run sees the
    step as it was. Under `tf.distribute` (where ``apply_gradients`` cannot sit
    in a `tf.cond`) the failing step's gradients are zeroed on every replica
    instead: the same as a skip for plain SGD; stateful optimizers still decay
    their moments once.

    A NaN born in the backward pass is seen by ``check="loss"`` only one step
    later, as a forward NaN from weights it poisoned (``nonfinite_weights``
    says so); use ``check="gradients"`` to localise it at its origin.

    With ``steps_per_execution=k > 1`` Keras runs k steps in one call and
    calls the callback once per call, with the batch index of the last one.
    Steps are counted from the batch indices Keras passes (never one per
    callback call), and ``steps`` / ``batches`` give the range ``(first,
    last)`` of the failing call. Which of the k steps failed first is counted
    inside the compiled function (an int64 step counter, reset at the start
    of each fit), so ``step`` and ``batch`` are exact. Under a `tf.distribute`
    strategy with several replicas the counter is not kept (a per-replica
    variable would count each step once per replica): ``step`` / ``batch``
    are then None unless the call held one step; use
    ``steps_per_execution=1`` there while hunting a NaN.

    Numerics of the monitored model are unchanged (no gradient of its own;
    works for any dtype policy).

    Args:
      mode: ``"stop"`` (set ``model.stop_training`` at the failing step) or
        ``"warn"`` (log, warn and continue; only the first failure is reported).
        A bool here is `keras.callbacks.TerminateOnNaN`'s positional
        ``raise_error`` (with ``mode="stop"``), so its calls keep their meaning.
      check: ``"loss"``, ``"gradients"`` or ``"all"`` (see above).
      raise_error: as `keras.callbacks.TerminateOnNaN`'s: False stops
        gracefully (``mode``); True raises a `RuntimeError` at the failing
        batch, after the report is built and the model's training step is
        restored, so that no later callback's ``on_train_end`` runs (Keras's
        reason for the option). The message is the report's.

    Raises:
      ValueError: if `mode` or `check` is not one of the values above, or
        ``raise_error=True`` with ``mode="warn"`` (contradictory).
      RuntimeError: during `fit`, with ``raise_error=True``, at the first
        non-finite step.

    Example:
      >>> monitor = so.callbacks.NumericsMonitor(check="gradients")
      >>> model.fit(x, y, callbacks=[monitor])          # doctest: +SKIP
      >>> monitor.report["layer"], monitor.report["direction"]   # doctest: +SKIP
      ('dense_3', 'forward')
    """

    def __init__(self, mode="stop", check="loss", raise_error=False):
        super().__init__()
        if isinstance(mode, bool):  # TerminateOnNaN(True): its only argument is raise_error
            if raise_error is not False:
                raise ValueError("safeops.callbacks.NumericsMonitor: argument 'mode' is a bool "
                                 "(read as raise_error) and 'raise_error' is given too")
            mode, raise_error = "stop", mode
        if raise_error not in (True, False):
            raise ValueError("safeops.callbacks.NumericsMonitor: argument 'raise_error' must be "
                             f"True or False; got {raise_error!r}")
        if raise_error and mode == "warn":
            raise ValueError("safeops.callbacks.NumericsMonitor: argument 'raise_error=True' "
                             "cannot be combined with mode='warn'")
        self.raise_error = bool(raise_error)
        if mode not in ("stop", "warn"):
            raise ValueError(
                f"safeops.callbacks.NumericsMonitor: argument 'mode' must be 'stop' or 'warn'; "
                f"got {mode!r}")
        if check not in _CHECKS:
            raise ValueError(
                "safeops.callbacks.NumericsMonitor: argument 'check' must be 'loss', "
                f"'gradients' or 'all'; got {check!r}")
        self.mode = mode
        self.check = check
        self.report = None
        self._probe_needs = _CHECKS[check]
        self._inst = None
        self._step = 0
        self._epoch = 0
        self._epoch_start = 0
        self._first_batch = None

    def get_config(self):
        return {"mode": self.mode, "check": self.check, "raise_error": self.raise_error}

    def on_train_begin(self, logs=None):
        self.report = None
        self._step = 0
        self._inst = _probe.attach(self, self.model)
        self._inst.captured = None

    def on_train_end(self, logs=None):
        _probe.detach(self, self.model)
        self._inst = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = self._step  # global index of the epoch's batch 0

    def on_train_batch_begin(self, batch, logs=None):
        self._first_batch = batch

    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the first batch index of the call to `on_train_batch_begin`
        # and first + k - 1 to `on_train_batch_end` (steps_per_execution = k), even
        # when the epoch's last call runs fewer batches: clip to the epoch's length.
        first_batch = batch if self._first_batch is None else self._first_batch
        n_batches = (self.params or {}).get("steps")
        if n_batches:
            batch = min(batch, n_batches - 1)
        first = self._epoch_start + first_batch
        last = self._epoch_start + batch
        self._step = last + 1
        self._first_batch = None
        inst = self._inst
        if inst is None or inst.captured is None or self.report is not None:
            return
        data, flags, at = inst.captured
        exact = last == first or at is not None
        step = first if at is None else at
        report = {"step": step if exact else None, "epoch": self._epoch,
                  "batch": step - self._epoch_start if exact else None,
                  "steps": (first, last), "batches": (first_batch, batch),
                  "failed_checks": [k for k, ok in flags.items() if not ok]}
        try:
            report.update(_probe.localise(self.model, data))
        except Exception as err:  # localisation is best effort; the detection is not
            report.update({"direction": "unknown", "layer": None, "layer_class": None,
                           "where": f"localisation failed: {type(err).__name__}: {err}",
                           "nan": None, "inf": None})
        self.report = report
        if exact:
            when = f"at step {step} (epoch {self._epoch}, batch {step - self._epoch_start})"
        else:
            when = (f"in steps {first}-{last} (epoch {self._epoch}, batches {first_batch}-"
                    f"{batch}, run in one call by steps_per_execution: which of them failed "
                    f"first is not known)")
        message = (
            f"safeops.NumericsMonitor: non-finite values {when}; checks failed: "
            f"{', '.join(report['failed_checks'])}; first "
            f"culprit in the {report['direction']} pass: layer {report['layer']!r} "
            f"({report['layer_class']}), {report['where']}: {report['nan']} NaN, "
            f"{report['inf']} inf")
        _log.warning(message)
        if self.raise_error:
            # Keras does not call on_train_end after an exception: restore the step now.
            _probe.detach(self, self.model)
            self._inst = None
            raise RuntimeError(message)
        if self.mode == "stop":
            self.model.stop_training = True
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)


@new("logs an exponential moving average of the raw batch loss next to Keras's running mean")
@keras.saving.register_keras_serializable(package="safeops")
class SmoothedLoss(keras.callbacks.Callback):
    """Log an exponential moving average of the batch loss next to the raw loss.

    Keras logs, at each batch, the running mean of the loss over the epoch so
    far, and raw minibatch losses are noisy. This callback reads the raw loss
    of each batch (the value the step computed, unscaled) and adds to the logs
    ``batch_loss`` (raw) and ``loss_ema``, with
    ``ema_t = alpha * loss_t + (1 - alpha) * ema_{t-1}`` (``ema_0 = loss_0``,
    the pandas ``ewm(alpha=..., adjust=False)`` convention), kept in Python
    float64 across epochs. A non-finite batch loss is logged as is but not
    folded into the average. Both values also go into the epoch logs (so into
    `History`), and `values` keeps the list of ``(batch_loss, loss_ema)``.
    Reading the loss synchronises once per batch.

    Args:
      alpha: weight of the newest batch, strictly between 0 and 1.

    Raises:
      ValueError: if `alpha` is not in the open interval (0, 1).

    Example:
      >>> smooth = so.callbacks.SmoothedLoss(alpha=0.1)
      >>> model.fit(x, y, callbacks=[smooth])       # doctest: +SKIP
      >>> smooth.values[-1]                          # doctest: +SKIP
      (0.41, 0.43)
    """

    def __init__(self, alpha=0.1):
        super().__init__()
        try:
            ok = 0.0 < float(alpha) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"safeops.callbacks.SmoothedLoss: argument 'alpha' must be in (0, 1); got {alpha!r}")
        self.alpha = float(alpha)
        self._probe_needs = ("loss_output",)
        self.ema = None
        self.values = []

    def get_config(self):
        return {"alpha": self.alpha}

    def on_train_begin(self, logs=None):
        _probe.attach(self, self.model)

    def on_train_end(self, logs=None):
        _probe.detach(self, self.model)

    def _update(self, logs):
        if logs is None or "_safeops_batch_loss" not in logs:
            return
        raw = float(logs.pop("_safeops_batch_loss"))
        if math.isfinite(raw):
            self.ema = raw if self.ema is None else self.alpha * raw + (1.0 - self.alpha) * self.ema
        self.values.append((raw, self.ema))
        logs["batch_loss"] = raw
        logs["loss_ema"] = self.ema if self.ema is not None else math.nan

    def on_train_batch_end(self, batch, logs=None):
        self._update(logs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.pop("_safeops_batch_loss", None)
            if self.values:
                logs["batch_loss"], logs["loss_ema"] = self.values[-1]
