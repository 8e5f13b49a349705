"""Fake quantization with straight-through gradients: the op and the activation quantizer.

`fake_quant` rounds a float tensor to the grid of a ``num_bits`` integer type
and back (quantize -> dequantize), so that training sees the rounding error the
integer model will have. `MovingAverageQuantizer` is the Keras layer that puts
it on activations, with the range tracked by an exponential moving average
while training and frozen at inference. Weight quantization (ranges taken from
the weights themselves, per channel) is `_quantize_weight`, used by the
wrappers in `safeops.quantization.wrappers`.
"""

import keras
import numpy as np
import tensorflow as tf

from safeops._core.dtypes import check_floating, convert_to_floating
from safeops._core.native import kernels
from safeops._core.registry import drop_in, new

__all__ = ["MovingAverageQuantizer", "fake_quant"]

_FQ_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_TINY = 1e-8  # smallest range half-width: an all-zero channel would give scale 0


def _check_bits(op, arg, bits):
    """`bits` must be an int in 2..16 (the range TF's fake-quant kernels accept)."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{op}: argument '{arg}' must be an int in 2..16; got {bits!r}")
    if not 2 <= bits <= 16:
        raise ValueError(f"{op}: argument '{arg}' must be in 2..16; got {bits}")
    return bits


def _checked_range(op, lo, hi):
    """Check ``lo <= hi`` and widen the range to contain 0."""
    lo_v, hi_v = tf.get_static_value(lo), tf.get_static_value(hi)
    message = f"{op}: argument 'min_value' must be <= argument 'max_value'"
    if lo_v is not None and hi_v is not None:
        if np.any(np.asarray(lo_v) > np.asarray(hi_v)):
            raise ValueError(f"{message}; got min_value={lo_v} and max_value={hi_v}")
    else:
        with tf.control_dependencies([tf.debugging.assert_less_equal(lo, hi, message=message)]):
            lo, hi = tf.identity(lo), tf.identity(hi)
    return tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)


def _zero_where_empty(out, x, empty):
    """0 (NaN kept) where the range is [0, 0]; `empty` broadcasts against the last axis."""
    return tf.where(empty, tf.where(tf.math.is_nan(x), x, tf.zeros_like(x)), out)


@drop_in("tf.quantization.fake_quant_with_min_max_vars / "
         "tf.quantization.fake_quant_with_min_max_vars_per_channel",
         "the range is widened to contain 0 ([1, 2] quantizes on [0, 2]; TF shifts it to [0, 1])",
         "equal bounds are valid and [0, 0] gives 0 (TF: NaN)",
         "min_value > max_value raises ValueError naming both arguments (TF: a constant)",
         "per-channel ranges on any axis (TF: the last only); float16/bfloat16/float64 inputs")
def fake_quant(inputs, min_value, max_value, num_bits=8, narrow_range=False, axis=None,
               name=None):
    """Quantize-dequantize `inputs` on a ``num_bits`` grid; straight-through gradient.

    Replaces `tf.quantization.fake_quant_with_min_max_vars` (per tensor) and
    `tf.quantization.fake_quant_with_min_max_vars_per_channel` (``axis`` given,
    any axis rather than only the last), checking bits, dtypes and shapes.

    Method: the range ``[min_value, max_value]`` is first widened to contain 0
    (``[min(min_value, 0), max(max_value, 0)]``: ``[1, 2]`` becomes ``[0, 2]``,
    where TF's kernel would shift it to ``[0, 1]`` and clamp every input to 1)
    and nudged by TF so that 0 is exactly representable; equal bounds are
    therefore valid (``[2, 2]`` becomes ``[0, 2]``), and ``[0, 0]`` maps every
    non-NaN input to 0 (TF: NaN); with ``q_min = 1 if
    narrow_range else 0``, ``q_max = 2**num_bits - 1`` and ``scale = (max - min) /
    (q_max - q_min)`` each value is clamped to the range and rounded to
    ``min + scale * round((x - min) / scale)``. float16/bfloat16/float64 inputs
    are computed in float32 (TF's kernels are float32-only) and cast back, so
    the output dtype is the input dtype.
    With one range, float32 on the CPU outside XLA runs `safeops.native`'s
    fused kernel (TF's bits, one vectorised pass forward and one backward);
    elsewhere, and under `so.native.disabled()`, TF's op.

    Error bound: for ``x`` inside the nudged range, ``|fake_quant(x) - x| <=
    scale / 2`` (plus one rounding of the output dtype when it is not float32);
    outside it the error is the distance to the range.

    Gradient (straight-through estimator, Bengio et al. 2013): ``d out / d x = 1``
    for ``min <= x <= max`` (both edges included) and 0 outside; no gradient
    flows to ``min_value``/``max_value`` (they are ranges, not parameters, here).

    Args:
      inputs: floating tensor (float16, bfloat16, float32, float64).
      min_value: scalar, or a vector of length ``inputs.shape[axis]``.
      max_value: same shape as ``min_value``; ``max_value >= min_value``.
      num_bits: int in 2..16.
      narrow_range: use ``[1, 2**num_bits - 1]`` (symmetric int8 weights: -127..127).
      axis: the channel axis for per-channel ranges, or None for one range.
      name: optional name scope.

    Returns:
      A tensor of the dtype and shape of ``inputs``.

    Raises:
      TypeError: ``inputs`` is not floating.
      ValueError: ``num_bits`` outside 2..16, ranges of the wrong shape, or
        ``min_value > max_value`` (the message names both arguments; for
        ranges only known when the graph runs, `tf.errors.InvalidArgumentError`
        with the same message; XLA-compiled functions skip that check).

    Example:
      >>> so.quantization.fake_quant([0.0, 0.3, 1.0], 0.0, 1.0, num_bits=2).numpy()
      array([0.        , 0.33333334, 1.        ], dtype=float32)
    """
    op = "safeops.quantization.fake_quant"
    _check_bits(op, "num_bits", num_bits)
    with tf.name_scope(name or "fake_quant"):
        x = convert_to_floating(op, "inputs", inputs, allowed=_FQ_DTYPES)
        dtype = x.dtype
        xf = tf.cast(x, tf.float32) if dtype != tf.float32 else x
        lo = tf.stop_gradient(tf.cast(min_value, tf.float32))
        hi = tf.stop_gradient(tf.cast(max_value, tf.float32))
        lo, hi = _checked_range(op, lo, hi)
        # A [0, 0] range would give TF's kernel a zero scale (NaN): quantize on a
        # unit range instead and map the result to 0 below.
        empty = tf.equal(lo, hi)
        hi = tf.where(empty, lo + 1.0, hi)
        if axis is None:
            if lo.shape.rank not in (None, 0) or hi.shape.rank not in (None, 0):
                raise ValueError(f"{op}: 'min_value' and 'max_value' must be scalars when "
                                 f"axis is None; got shapes {lo.shape} and {hi.shape}")
            out = _fake_quant_scalar(xf, lo, hi, num_bits, narrow_range)
            out = _zero_where_empty(out, xf, empty)
        else:
            rank = xf.shape.rank
            axis = axis % rank
            channels = xf.shape[axis]
            for arg, v in (("min_value", lo), ("max_value", hi)):
                if v.shape.rank != 1 or (channels is not None and v.shape[0] != channels):
                    raise ValueError(f"{op}: '{arg}' must be a vector of length "
                                     f"inputs.shape[{axis}]={channels}; got shape {v.shape}")
            perm = None
            if axis != rank - 1:
                perm = [d for d in range(rank) if d != axis] + [axis]
                xf = tf.transpose(xf, perm)
            out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                xf, lo, hi, num_bits=num_bits, narrow_range=narrow_range)
            out = _zero_where_empty(out, xf, empty)
            if perm is not None:
                out = tf.transpose(out, [perm.index(d) for d in range(rank)])
        return tf.cast(out, dtype) if dtype != tf.float32 else out


def _fake_quant_scalar(x, lo, hi, num_bits, narrow_range=False):
    """TF's FakeQuantWithMinMaxVars of float32 `x` on a scalar range: the fused CPU kernel
    (`safeops.native`, the same bits; its gradient is TF's first output, one pass) where it
    runs, else TF's op. The range must not be differentiated (callers stop its gradient)."""
    lib = kernels(x, (tf.float32,))
    if lib is not None:
        return lib.safeops_fake_quant(x, lo, hi, num_bits=num_bits, narrow_range=narrow_range)
    return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=num_bits,
                                                       narrow_range=narrow_range)


def _fake_quant_ordered(x, lo, hi, num_bits):
    """`fake_quant` of a float32 `x` on a scalar range already known to hold ``lo <= 0 <= hi``.

    The moving-average range is built that way, so the ordering check (an
    Assert per call) is not needed. A ``[0, 0]`` range gives 0 with NaN kept,
    as in `fake_quant`, but inside a `tf.cond`: a non-empty range (every batch
    but a dead one) costs no extra element-wise pass forward or backward.
    """
    lo, hi = tf.stop_gradient(lo), tf.stop_gradient(hi)  # a range, not a parameter
    empty = tf.equal(lo, hi)
    hi = tf.where(empty, lo + 1.0, hi)
    out = _fake_quant_scalar(x, lo, hi, num_bits)
    return tf.cond(empty, lambda: tf.where(tf.math.is_nan(x), x, tf.zeros_like(x)),
                   lambda: tf.identity(out))


def _weight_grid(wf, num_bits, axes, symmetric):
    """The quantize-dequantize of float32 `wf` with ranges reduced over `axes`."""
    if symmetric:
        return _symmetric_grid(wf, tf.constant(float(2 ** (num_bits - 1) - 1)), axes)
    return _asymmetric_grid(wf, tf.constant(float(2 ** num_bits - 1)), axes)


def _symmetric_grid(wf, n, axes):
    # |w| <= m, so |w * (n / m)| <= n (1 + 2u) rounds to at most n: no clip is needed.
    # Multiplying by n / m (one division per channel, not per element) may differ from
    # round(w / scale) only on exact ties, which the scale makes measure-zero.
    # m / n as DivNoNan (n > 0: the same quotient): in graphs, constant folding rewrites a
    # division by a constant n into a product with its rounded reciprocal, which would make
    # graphs differ from eager, XLA and the native kernel by an ulp.
    m = tf.maximum(tf.reduce_max(tf.abs(wf), axis=axes, keepdims=True), _TINY)
    return tf.round(wf * (n / m)) * tf.math.divide_no_nan(m, n)


def _asymmetric_grid(wf, levels, axes):
    lo = tf.minimum(tf.reduce_min(wf, axis=axes, keepdims=True), 0.0)
    hi = tf.maximum(tf.reduce_max(wf, axis=axes, keepdims=True), 0.0)
    scale = tf.maximum(hi - lo, _TINY) / levels
    zero = tf.round(-lo / scale)
    return (tf.clip_by_value(tf.round(wf / scale) + zero, 0.0, levels) - zero) * scale


# Large kernels: one XLA-fused kernel (memory-bound: one pass over the weights instead of
# one per element-wise op); small ones run the same ops unfused (an XLA call costs ~20 us).
# The grid size is an argument, not a constant, so that XLA does not turn a division by it
# into a multiplication by its rounded reciprocal: both paths give the same bits.
_fused_grids = {True: tf.function(_symmetric_grid, jit_compile=True, reduce_retracing=True),
                False: tf.function(_asymmetric_grid, jit_compile=True, reduce_retracing=True)}
_FUSE_MIN_SIZE = 1 << 15


def _fused_weight_grid(wf, num_bits, axes, symmetric):
    n = float(2 ** (num_bits - 1) - 1) if symmetric else float(2 ** num_bits - 1)
    return _fused_grids[symmetric](wf, tf.constant(n), axes)


def _quantize_weight(w, num_bits, per_channel, symmetric, channel_axis=-1, fuse=True):
    """Fake-quantize a kernel with ranges taken from its current values.

    Per channel: one range per output channel (``channel_axis``); symmetric:
    ``[-max|w|, max|w|]`` on the narrow grid ``scale * [-(2**(b-1)-1), 2**(b-1)-1]``
    (zero point 0, as TFLite's int8 kernels require); asymmetric: ``[min(w, 0),
    max(w, 0)]`` on the full grid with an integer zero point. Built from plain
    element-wise ops (TF's FakeQuant*PerChannel kernels are single-threaded and
    made a CPU train step 4x slower; these fuse and constant-fold at export);
    when ``fuse``, symmetric grids on the last axis (or per tensor) run as one
    `safeops.native` kernel on the CPU outside XLA (the same bits), others are
    compiled as one XLA kernel for large static-shape kernels when ``fuse``
    (callers tracing for the TFLite converter pass False); the gradient is the
    identity (straight-through; weights are always inside their own range), the
    ranges are not differentiated.
    """
    wf = tf.stop_gradient(tf.cast(w, tf.float32))
    rank = wf.shape.rank
    axis = channel_axis % rank
    axes = [d for d in range(rank) if d != axis] if per_channel else list(range(rank))
    size = wf.shape.num_elements()
    lib = None
    if fuse and symmetric and (not per_channel or axis == rank - 1):
        lib = kernels(wf, (tf.float32,))
    if lib is not None:  # one kernel, two passes: the bits of `_symmetric_grid`
        q = lib.safeops_symmetric_grid(wf, num_bits=num_bits, per_channel=per_channel)
    elif fuse and size is not None and size >= _FUSE_MIN_SIZE:
        q = _fused_weight_grid(wf, num_bits, axes, symmetric)
    else:
        q = _weight_grid(wf, num_bits, axes, symmetric)
    q = tf.cast(q, w.dtype)

    @tf.custom_gradient
    def straight_through(v):
        return tf.identity(q), lambda dy: dy

    return straight_through(tf.convert_to_tensor(w))


@new("activation fake-quantizer whose range is an exponential moving average while "
     "training and frozen at inference")
@keras.saving.register_keras_serializable(package="safeops")
class MovingAverageQuantizer(keras.layers.Layer):
    """Fake-quantizes activations with a range tracked by an exponential moving average.

    While training (``training=True``) the layer measures the batch range
    ``[min(x, 0), max(x, 0)]``; the first batch sets the range, later batches
    update it as ``r <- decay * r + (1 - decay) * r_batch``. At inference the
    stored range is used unchanged (frozen). Before any training batch the range
    is ``[-6, 6]`` (as tfmot's). The output is `fake_quant` of the input on that
    range, so the gradient is straight-through inside the range and 0 outside;
    no gradient flows to the range. While training on the CPU outside XLA the
    whole call (batch range, moving average, fake quant) is one `safeops.native`
    kernel with the same bits as the pure-TF ops.

    Args:
      num_bits: int in 2..16.
      ema_decay: decay of the moving average, in [0, 1).
      **kwargs: standard `keras.layers.Layer` arguments (name, dtype).

    Raises:
      ValueError: ``num_bits`` outside 2..16 or ``ema_decay`` outside [0, 1).
    """

    def __init__(self, num_bits=8, ema_decay=0.99, **kwargs):
        super().__init__(**kwargs)
        self.num_bits = _check_bits("safeops.quantization.MovingAverageQuantizer",
                                    "num_bits", num_bits)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError("safeops.quantization.MovingAverageQuantizer: argument "
                             f"'ema_decay' must be in [0, 1); got {ema_decay}")
        self.ema_decay = float(ema_decay)
        self.supports_masking = True

    def build(self, input_shape):
        self.range_min = self.add_weight(name="range_min", shape=(), initializer=
                                         keras.initializers.Constant(-6.0), trainable=False,
                                         dtype="float32", autocast=False)
        self.range_max = self.add_weight(name="range_max", shape=(), initializer=
                                         keras.initializers.Constant(6.0), trainable=False,
                                         dtype="float32", autocast=False)
        self.batches_seen = self.add_weight(name="batches_seen", shape=(), initializer="zeros",
                                            trainable=False, dtype="float32",
                                            autocast=False)

    def call(self, inputs, training=None):
        if training:
            fused = self._fused_training_call(inputs)
            if fused is not None:
                return fused
            x = tf.stop_gradient(tf.cast(inputs, tf.float32))
            bmin = tf.minimum(tf.reduce_min(x), 0.0)
            bmax = tf.maximum(tf.reduce_max(x), 0.0)
            first = tf.equal(self.batches_seen, 0.0)
            d = self.ema_decay
            new_min = tf.where(first, bmin, d * self.range_min + (1.0 - d) * bmin)
            new_max = tf.where(first, bmax, d * self.range_max + (1.0 - d) * bmax)
            self.range_min.assign(new_min)
            self.range_max.assign(new_max)
            self.batches_seen.assign_add(1.0)
            dtype = tf.as_dtype(inputs.dtype)
            xf = tf.cast(inputs, tf.float32) if dtype != tf.float32 else inputs
            out = _fake_quant_ordered(xf, new_min, new_max, self.num_bits)
            return tf.cast(out, dtype) if dtype != tf.float32 else out
        return fake_quant(inputs, self.range_min, self.range_max, num_bits=self.num_bits)

    def _fused_training_call(self, inputs):
        """The training branch as one `safeops.native` kernel (batch range, moving average,
        fake quant: the same bits as the ops below), or None where it does not run."""
        dtype = tf.as_dtype(inputs.dtype)
        xf = tf.cast(inputs, tf.float32) if dtype != tf.float32 else inputs
        lib = kernels(xf, (tf.float32,))
        if lib is None:
            return None
        d = self.ema_decay
        out, new_min, new_max = lib.safeops_fake_quant_ema(
            xf, tf.convert_to_tensor(self.range_min), tf.convert_to_tensor(self.range_max),
            tf.convert_to_tensor(self.batches_seen), num_bits=self.num_bits, decay=d,
            one_minus_decay=1.0 - d)
        self.range_min.assign(new_min)
        self.range_max.assign(new_max)
        self.batches_seen.assign_add(1.0)
        return tf.cast(out, dtype) if dtype != tf.float32 else out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_bits=self.num_bits, ema_decay=self.ema_decay)
        return config
