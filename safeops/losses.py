"""Cross-entropy losses that keep the gradient when given probabilities (`so.losses`).

Functions with Keras 3's names, arguments and defaults, plus Keras `Loss`
classes registered as serializable (package "safeops"); a model's code changes
only in its import. With ``from_logits=False`` the logits behind the
probabilities are recovered when the probabilities came from a sigmoid/softmax:

* eagerly, from the ``_keras_logits`` attribute that `keras.activations`,
  `keras.ops` and `safeops.softmax` attach to their output;
* in a graph (`tf.function`, ``jit_compile=True``, Keras `fit`), from the
  producing op (``Sigmoid`` / ``Softmax``), looking through ``Identity`` ops
  (`tf.identity`), as Keras 2 did.

Keras 3.15 recovers logits in the first two cases too, but not through an
``Identity`` op: there it clips. The loss is then computed from the logits
(`tf.nn.*_cross_entropy_with_logits`, a few ulp, gradient ``sigmoid(z) - y`` /
``softmax(z) - y``), so it does not saturate. Otherwise -- e.g. an eager
`tf.sigmoid` output, which keeps no record of its logits, or a probability that
went through a ``Cast`` -- the documented fallback is Keras' clipping of the
probabilities to ``[eps, 1 - eps]`` with ``eps = keras.config.epsilon()``
(1e-7): the loss is at most -log(eps) = 16.12 in float32 (15.94 for the
``1 - eps`` side, which rounds to ``1 - 2**-23``), and its gradient is 0
beyond the clip. The results are the same eagerly, in `tf.function` and
under ``jit_compile=True``.

The `Loss` classes call like Keras's `Loss`: a mask on y_pred
(``_keras_mask``, set by masking layers) and the mask of ignored classes are
combined, every ``reduction`` ("sum_over_batch_size", "sum", "mean",
"mean_with_sample_weight", None/"none") and ``sample_weight`` of every shape
Keras accepts give Keras's value, but the weighted sum is accumulated in the
wide dtype (float32 -> float64) with a compensated sum and rounded once, so
the reduced loss is within about 1 ulp of the exact weighted mean of the
per-sample losses.

dtypes: y_pred float16, bfloat16, float32 or float64 (anything else:
`TypeError` naming the op and ``y_pred``); y_true is cast to y_pred's dtype
(sparse labels: to int64); the loss has y_pred's dtype and is computed in it
(no upcast). Error bounds below use u, the unit roundoff of that dtype
(2**-11, 2**-8, 2**-24, 2**-53). In float16/bfloat16 ``1 - eps`` rounds to 1,
so the fallback clip does not guard p == 1: label 0 gives inf and label 1 gives
NaN there, as in Keras. The `Loss` classes first convert both arguments to
their own ``dtype`` (default `keras.config.floatx()`, float32), as every Keras
`Loss` does; see `BinaryCrossentropy`.

Example (the saturation fixed; Keras gets the same probabilities):

>>> z = tf.constant([30.])
>>> float(-tf.math.log(1. - tf.sigmoid(z))[0])       # hand-written: sigmoid(30.) == 1.
inf
>>> @tf.function
... def loss_and_grad(loss_fn):
...     with tf.GradientTape() as tape:
...         tape.watch(z)
...         loss = loss_fn(tf.constant([0.]), tf.identity(tf.sigmoid(z)))
...     return loss, tape.gradient(loss, z)[0]
>>> [round(float(t), 2) for t in loss_and_grad(keras.losses.binary_crossentropy)]
[15.94, 0.0]
>>> [round(float(t), 2) for t in loss_and_grad(so.losses.binary_crossentropy)]
[30.0, 1.0]
"""

import keras
import tensorflow as tf

from safeops._core import keras_compat
from safeops._core.dtypes import FLOAT_DTYPES, accumulation_dtype, convert_to_floating
from safeops._core.registry import drop_in, new
from safeops.division import relative_error as _relative_error
from safeops.summation import reduce_sum as _accurate_sum

__all__ = [
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "RelativeError",
    "SparseCategoricalCrossentropy",
    "binary_crossentropy",
    "categorical_crossentropy",
    "relative_error",
    "sparse_categorical_crossentropy",
]


_RECOVERED = ("from_logits=False: the logits behind a sigmoid/softmax output are recovered also "
              "through Identity ops in a graph (Keras clips there: loss capped at 16.12, "
              "gradient 0)")
_REDUCED = ("the batch reduction (every reduction, sample weights, masks, as Keras's) is "
            "accumulated in float64 (float32 losses) with a compensated sum and rounded once")


def _logits_of(p, op_type):
    """The logits behind probabilities `p` (see module doc), or None."""
    z = keras_compat.get_keras_logits(p)
    if z is not None:
        return z
    if tf.executing_eagerly() and not isinstance(p, tf.Tensor):
        return None
    try:
        op = p.op
    except AttributeError:  # eager tensor
        return None
    while op.type == "Identity":
        op = op.inputs[0].op
    if op.type == op_type:
        return op.inputs[0]
    return None


def _prepare(op, y_true, y_pred, label_smoothing):
    y_pred = convert_to_floating(op, "y_pred", y_pred)
    y_true = tf.cast(tf.convert_to_tensor(y_true), y_pred.dtype)
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(f"{op}: y_true and y_pred must have the same shape; got "
                         f"{y_true.shape} and {y_pred.shape}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{op}: argument 'label_smoothing' must be in [0, 1]; "
                         f"got {label_smoothing}")
    return y_true, y_pred


def _eps(dtype):
    return tf.constant(keras.config.epsilon(), dtype)


@drop_in("keras.losses.binary_crossentropy",
         _RECOVERED)
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Binary cross-entropy, mean over `axis`; drop-in for `keras.losses.binary_crossentropy`.

    Method: from logits z (given, or recovered from a sigmoid, see module doc):
    ``max(z, 0) - z y + log1p(exp(-|z|))`` (`tf.nn.sigmoid_cross_entropy_with_logits`),
    then the mean over `axis`. Otherwise Keras' clipped formula
    ``-(y log p + (1 - y) log(1 - p))`` with p clipped to [eps, 1 - eps].
    Labels are smoothed as Keras does: ``y (1 - s) + s / 2``.

    Error bound (logit path, n = size of `axis`, u = unit roundoff): labels in
    {0, 1}: both terms are >= 0, no cancellation, relative error <= (n + 3) u
    (4 u per element, (n - 1) u for the mean); soft labels: ``max(z, 0) - z y``
    cancels, absolute error <= (n + 3) u (|z| + L). Measured against mpmath
    (3000 float32 and float64 logits, |z| up to ~100): <= 3.2 u relative (hard,
    n = 1), <= 2.5 u (|z| + L) (soft). Fallback: the clipped formula to a few
    ulp of the given p, but capped at 16.12 (float32) whatever the true loss.

    Gradient w.r.t. the logits: ``(sigmoid(z) - y) / n``: (0.5 - y) / n at
    z = 0, (1 - y) / n as z -> +inf, -y / n as z -> -inf (exactly 1 for z = 30,
    y = 0, n = 1, where Keras on unrecoverable probabilities gives 0); finite
    for every finite z, and still that value at z = +-inf, where the loss itself
    is NaN (inf - inf in TF's formula) or inf. When the logits are recovered the
    loss is a function of them only: the gradient w.r.t. the probability tensor
    itself is None. Fallback: w.r.t. p ``(p - y) / (p (1 - p) n)`` on
    [eps, 1 - eps] (the bounds included), 0 outside (so at p = 0 and p = 1).
    W.r.t. y_true: ``-z / n`` (logit path).

    dtypes: as the module doc: float16/bfloat16/float32/float64 y_pred, output
    in its dtype; in float16/bfloat16 the fallback gives inf/NaN at p == 1.

    Args:
      y_true: labels in [0, 1], same shape as y_pred (cast to its dtype).
      y_pred: probabilities (or logits with from_logits=True), float.
      from_logits: whether y_pred are logits.
      label_smoothing: float in [0, 1].
      axis: the axis to average over.

    Returns:
      Loss tensor with `axis` reduced, y_pred's dtype. NaN in y_pred gives NaN.

    Raises:
      TypeError: non-float y_pred (message names the op and ``y_pred``).
      ValueError: shape mismatch (shapes in the message) or label_smoothing
        outside [0, 1].

    Example (see the module doc for Keras' clipped 15.94 on the same input):

    >>> z = tf.constant([30.])
    >>> float(-tf.math.log(1. - tf.sigmoid(z))[0])     # hand-written formula
    inf
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(z)
    ...     loss = so.losses.binary_crossentropy([0.], keras.activations.sigmoid(z))
    >>> float(loss), float(tape.gradient(loss, z)[0])
    (30.0, 1.0)
    >>> round(float(so.losses.binary_crossentropy([0.], tf.sigmoid(z))), 2)  # eager tf: fallback
    15.94
    """
    op = "safeops.losses.binary_crossentropy"
    y_true, y_pred = _prepare(op, y_true, y_pred, label_smoothing)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    z = y_pred if from_logits else _logits_of(y_pred, "Sigmoid")
    if z is not None:
        z = tf.cast(z, y_pred.dtype)
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=z)
    else:
        eps = _eps(y_pred.dtype)
        p = tf.clip_by_value(y_pred, eps, 1.0 - eps)
        ce = -(y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p))
    return tf.reduce_mean(ce, axis=axis)


@drop_in("keras.losses.categorical_crossentropy",
         _RECOVERED)
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Categorical cross-entropy over `axis`; drop-in for `keras.losses.categorical_crossentropy`.

    Method: from logits z (given, or recovered from a softmax over the last
    axis, see module doc): ``sum(y * (logsumexp(z) - z))`` via
    `tf.nn.softmax_cross_entropy_with_logits` (max-shifted, never NaN for
    finite z). Otherwise Keras' formula: probabilities renormalised to sum 1,
    clipped to [eps, 1 - eps], ``-sum(y log p)``. Label smoothing:
    ``y (1 - s) + s / k`` with k the size of `axis`.

    Error bound (logit path, k classes, labels summing to 1): every term
    ``logsumexp(z) - z_i`` is >= 0, so there is no cancellation and the error
    is absolute in the k-term sum of exponentials: <= (k + 2) u (1 + L).
    Measured against mpmath (1000 float32 rows, k = 10, one-hot and soft
    labels, |z| up to ~300): <= 2.5 u (1 + L). (A loss below u, e.g.
    z = [40, 0] with label 0, is returned as 0.) Fallback: a few ulp of the
    renormalised, clipped p, capped at -log(eps) = 16.12 (float32).

    Gradient w.r.t. the logits: ``softmax(z) * sum(y) - y``: [1, -1] for
    z = [1000, 0], y = [0, 1] (exact, no NaN); finite for every finite z. An
    infinite logit gives a NaN loss, and so does a -inf (masked) logit even
    where its label is 0 (0 * inf in TF's kernel; the gradient there is still
    0): mask with a large finite negative value, or use the sparse loss. When
    the logits are recovered the gradient w.r.t. the probability tensor itself
    is None. Fallback: w.r.t. p through the clip, 0 for clipped entries.

    dtypes: as the module doc: float16/bfloat16/float32/float64 y_pred, output
    in its dtype.

    Args:
      y_true: one-hot (or soft) labels, same shape as y_pred.
      y_pred: probabilities (or logits with from_logits=True).
      from_logits: whether y_pred are logits.
      label_smoothing: float in [0, 1].
      axis: the class axis.

    Returns:
      Loss tensor with `axis` reduced, y_pred's dtype.

    Raises:
      TypeError: non-float y_pred (message names the op and ``y_pred``).
      ValueError: shape mismatch (shapes in the message) or label_smoothing
        outside [0, 1].

    Example (softmax(z)[2] = exp(-120) underflows to 0 in float32):

    >>> z = tf.constant([[60., 0., -60.]]); y = tf.constant([[0., 0., 1.]])
    >>> float(-tf.reduce_sum(y * tf.math.log(tf.nn.softmax(z))))   # hand-written
    inf
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(z)
    ...     loss = so.losses.categorical_crossentropy(y, so.softmax(z))
    >>> float(loss[0]), tape.gradient(loss, z).numpy().round(3).tolist()
    (120.0, [[1.0, 0.0, -1.0]])
    >>> round(float(so.losses.categorical_crossentropy(y, tf.nn.softmax(z))[0]), 2)  # fallback
    16.12
    >>> float(so.losses.categorical_crossentropy([[0., 1.]], [[1000., 0.]], from_logits=True)[0])
    1000.0
    """
    op = "safeops.losses.categorical_crossentropy"
    y_true, y_pred = _prepare(op, y_true, y_pred, label_smoothing)
    if label_smoothing:
        k = tf.cast(tf.shape(y_true)[axis], y_pred.dtype)
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / k
    z = y_pred if from_logits else None
    rank = y_pred.shape.rank
    if z is None and (axis == -1 or (rank is not None and axis == rank - 1)):
        z = _logits_of(y_pred, "Softmax")
    if z is not None:
        return tf.nn.softmax_cross_entropy_with_logits(labels=y_true,
                                                       logits=tf.cast(z, y_pred.dtype), axis=axis)
    eps = _eps(y_pred.dtype)
    p = y_pred / tf.reduce_sum(y_pred, axis=axis, keepdims=True)
    p = tf.clip_by_value(p, eps, 1.0 - eps)
    return -tf.reduce_sum(y_true * tf.math.log(p), axis=axis)


@drop_in("keras.losses.sparse_categorical_crossentropy", _RECOVERED,
         "any class axis (Keras's TensorFlow backend: -1 only)")
def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    """Sparse categorical cross-entropy; drop-in for `keras.losses.sparse_categorical_crossentropy`.

    Method: as `categorical_crossentropy` with integer labels: from logits z
    (given, or recovered from a softmax, see module doc)
    ``logsumexp(z) - z[label]`` via `tf.nn.sparse_softmax_cross_entropy_with_logits`;
    otherwise Keras' formula, ``-log p[label]`` of the renormalised probabilities
    clipped to [eps, 1 - eps]. Entries whose label equals `ignore_class` get
    loss 0 and the result carries Keras's mask (``_keras_mask``) of the valid
    entries, so the `Loss` classes (ours and Keras's) average over the valid
    entries only, as Keras does.

    Error bound: as `categorical_crossentropy` with one-hot labels:
    <= (k + 2) u (1 + L) for k classes (measured <= 2.1 u (1 + L), float32,
    k = 10, against mpmath). Fallback capped at 16.12 (float32).

    Gradient w.r.t. the logits: ``softmax(z) - onehot(label)``: [-1, 1] for
    z = [0, 1000], label 0; 0 for ignored entries; finite for every finite z.
    A -inf (masked) logit of another class is handled (loss and gradient
    finite). When the logits are recovered the gradient w.r.t. the probability
    tensor itself is None. Fallback: through the clip, 0 for clipped entries.
    No gradient w.r.t. the integer labels.

    dtypes: y_pred float16/bfloat16/float32/float64 (output in its dtype);
    y_true any integer dtype (float labels are truncated by the int64 cast).

    Args:
      y_true: integer class indices, shape y_pred.shape without `axis` (a
        trailing axis of length 1 is accepted).
      y_pred: probabilities (or logits with from_logits=True).
      from_logits: whether y_pred are logits.
      ignore_class: optional label value to ignore.
      axis: the class axis (any axis of y_pred).

    Returns:
      Loss tensor of y_true's shape, y_pred's dtype.

    Raises:
      TypeError: non-float y_pred (message names the op and ``y_pred``).
      ValueError: label/prediction shapes that do not match (shapes in the
        message), or `axis` out of range.
      tf.errors.InvalidArgumentError: a label outside [0, k) (eager and
        `tf.function` on CPU, TF's behaviour); under XLA the loss is NaN.

    Example (softmax(z)[2] = exp(-120) underflows to 0 in float32):

    >>> z = tf.constant([[60., 0., -60.]])
    >>> float(-tf.math.log(tf.nn.softmax(z)[0, 2]))   # hand-written
    inf
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(z)
    ...     loss = so.losses.sparse_categorical_crossentropy([2], so.softmax(z))
    >>> float(loss[0]), tape.gradient(loss, z).numpy().round(3).tolist()
    (120.0, [[1.0, 0.0, -1.0]])
    >>> float(so.losses.sparse_categorical_crossentropy([0], [[0., 1000.]], from_logits=True)[0])
    1000.0
    """
    op = "safeops.losses.sparse_categorical_crossentropy"
    y_pred = convert_to_floating(op, "y_pred", y_pred)
    rank = y_pred.shape.rank
    y_true = tf.convert_to_tensor(y_true)
    if rank is None:
        class_axis = axis
    else:
        if not -rank <= axis < rank:
            raise ValueError(f"{op}: argument 'axis' ({axis}) is out of range for y_pred of "
                             f"rank {rank}")
        class_axis = axis % rank
        if y_true.shape.rank == rank and y_true.shape[class_axis] == 1:
            y_true = tf.squeeze(y_true, class_axis)
        if class_axis != rank - 1:  # move the class axis last
            perm = [d for d in range(rank) if d != class_axis] + [class_axis]
            y_pred = tf.transpose(y_pred, perm)
    if not y_true.shape.is_compatible_with(y_pred.shape[:-1]):
        raise ValueError(f"{op}: y_true shape {y_true.shape} does not match y_pred shape "
                         f"{y_pred.shape} without its class axis")
    valid = None
    if ignore_class is not None:
        # Compared before the int64 cast, as Keras does (labels may arrive as floats).
        valid = tf.not_equal(y_true, tf.cast(ignore_class, y_true.dtype))
    labels = tf.cast(y_true, tf.int64)
    if valid is not None:
        labels = tf.where(valid, labels, tf.zeros_like(labels))
    z = y_pred if from_logits else _logits_of(y_pred, "Softmax")
    if valid is not None:
        # Ignored entries must not reach the kernel: a NaN there would give a NaN
        # gradient through the mask (0 * NaN).
        keep = tf.expand_dims(valid, -1)
        if z is not None:
            z = tf.where(keep, tf.cast(z, y_pred.dtype), tf.zeros_like(y_pred))
        y_pred = tf.where(keep, y_pred, tf.ones_like(y_pred))
    if z is not None:
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                            logits=tf.cast(z, y_pred.dtype))
    else:
        eps = _eps(y_pred.dtype)
        p = y_pred / tf.reduce_sum(y_pred, axis=-1, keepdims=True)
        p = tf.clip_by_value(p, eps, 1.0 - eps)
        ce = -tf.math.log(tf.gather(p, labels, axis=-1, batch_dims=labels.shape.rank))
    if valid is not None:
        ce = tf.where(valid, ce, tf.zeros_like(ce))
        # Keras's losses read this mask and average over the valid entries only.
        keras_compat.set_keras_mask(ce, valid)
    return ce


@new("relative error |y - p| / max(|y|, eps) as a loss, within 1 ulp")
def relative_error(y_true, y_pred, eps=None):
    """Relative error loss; the loss form of `safeops.relative_error`.

    Replaces hand-written ``|y - p| / (|y| + 1e-8)``, which loses the relative
    scale when |y| is small. Delegates to ``safeops.division.relative_error``,
    whose docstring has the details: method (float32 in
    float64, float64 with double-double), error <= 1 ulp, gradient at y_true ==
    y_pred (0 w.r.t. y_pred) and at y_true = 0 (the floor `eps` is active),
    saturation at the largest finite value.

    dtypes: float16, bfloat16, float32, float64, the same for both arguments;
    output in that dtype.

    Args:
      y_true: reference values.
      y_pred: predictions, same shape.
      eps: floor of the denominator (None: that op's default, the smallest
        normal number of the dtype).

    Returns:
      Elementwise relative error, y_pred's dtype.

    Raises:
      TypeError, ValueError: as ``safeops.relative_error`` (integer, bool or
        mismatched dtypes; eps <= 0).

    Example:

    >>> float(abs(1e-10 - 2e-10) / (1e-10 + 1e-8))   # hand-written: 1 %, not 100 %
    0.009900990099009901
    >>> float(so.losses.relative_error([1e-10], [2e-10])[0])
    1.0
    """
    return _relative_error(y_true, y_pred, eps=eps)


def _squeeze_or_expand(x1, x2, expand_rank_1=True):
    """Keras's rule: make ranks equal when they differ by a trailing axis of length 1."""
    r1, r2 = x1.shape.rank, x2.shape.rank
    if r1 is None or r2 is None or r1 == r2:
        return x1, x2
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = tf.expand_dims(x2, -1)
        else:
            x1 = tf.squeeze(x1, -1)
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = tf.expand_dims(x1, -1)
        else:
            x2 = tf.squeeze(x2, -1)
    return x1, x2


def _reduce_weighted(values, sample_weight, mask, reduction, dtype):
    """Keras's `reduce_weighted_values`, every product and the sum accumulated wide.

    The same weights as Keras (a mask scales the valid entries by
    ``total / valid`` for the mean reductions, so the mean is over the valid
    entries only), but computed in the accumulation dtype (float32 -> float64,
    float16/bfloat16 -> float32) with a compensated sum, and rounded once to
    `dtype`: the reduced loss is within about 1 ulp of the exact weighted mean,
    where Keras's float32 sum loses up to n/2 ulps.
    """
    values = tf.convert_to_tensor(values, dtype=dtype)
    if reduction is None or reduction == "none" or values.shape.rank == 0 or \
            tuple(values.shape) == (0,):
        if sample_weight is None and mask is None:
            return values
    wide = accumulation_dtype(values.dtype) if values.dtype in FLOAT_DTYPES else values.dtype
    v = tf.cast(values, wide)
    weight = None
    if sample_weight is not None:
        weight = tf.cast(tf.convert_to_tensor(sample_weight, dtype=dtype), wide)
    if mask is not None:
        mask = tf.cast(mask, tf.bool)
        if reduction in ("mean", "sum_over_batch_size"):
            total = tf.cast(tf.size(mask), wide)
            valid = tf.reduce_sum(tf.cast(mask, wide))
            float_mask = tf.where(mask, tf.math.divide_no_nan(total, valid), tf.zeros([], wide))
        else:
            float_mask = tf.cast(mask, wide)
        if weight is not None:
            float_mask, weight = _squeeze_or_expand(float_mask, weight)
            weight = weight * float_mask
        else:
            weight = float_mask
    if weight is not None:
        v, weight = _squeeze_or_expand(v, weight)
        v = v * weight
    if reduction is None or reduction == "none" or v.shape.rank == 0 or tuple(v.shape) == (0,):
        return tf.cast(v, values.dtype)
    loss = _accurate_sum(v)
    if reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        if reduction == "mean_with_sample_weight" and weight is not None:
            divisor = _accurate_sum(weight)
        else:
            divisor = tf.cast(tf.size(v), wide)
        loss = tf.math.divide_no_nan(loss, divisor)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return tf.cast(loss, values.dtype)


class _Base(keras.losses.Loss):
    """Keras's `Loss.__call__` (mask, sample weight, reduction) with an accurate reduction."""

    _fn = None
    _keys = ()

    def __call__(self, y_true, y_pred, sample_weight=None):
        in_mask = keras_compat.get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            y_pred = tf.nest.map_structure(
                lambda x: keras.ops.convert_to_tensor(x, dtype=self.dtype), y_pred)
            y_true = tf.nest.map_structure(
                lambda x: keras.ops.convert_to_tensor(x, dtype=self.dtype), y_true)
            losses = self.call(y_true, y_pred)
            out_mask = keras_compat.get_keras_mask(losses)
            if in_mask is not None and out_mask is not None:
                mask = tf.logical_and(tf.cast(in_mask, tf.bool), tf.cast(out_mask, tf.bool))
            else:
                mask = in_mask if in_mask is not None else out_mask
            return _reduce_weighted(losses, sample_weight, mask, self.reduction, self.dtype)

    def call(self, y_true, y_pred):
        y_true, y_pred = _squeeze_or_expand(tf.convert_to_tensor(y_true),
                                            tf.convert_to_tensor(y_pred))
        return type(self)._fn(y_true, y_pred, **{k: getattr(self, k) for k in self._keys})

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in self._keys})
        return config


@drop_in("keras.losses.BinaryCrossentropy",
         _RECOVERED,
         _REDUCED)
@keras.saving.register_keras_serializable(package="safeops")
class BinaryCrossentropy(_Base):
    """Keras `Loss` for `binary_crossentropy`; drop-in for `keras.losses.BinaryCrossentropy`.

    Same arguments, defaults and config as Keras'; ``call`` is
    `binary_crossentropy` (method, error bound, gradients at the edges and
    fallback are documented there), reduced over the batch by `reduction`.
    Guarantee: a sigmoid output whose logits can be recovered (module doc) gives
    the exact loss and the gradient ``sigmoid(z) - y`` instead of Keras'
    clipped 15.94 with gradient 0.

    dtypes: like every Keras `Loss`, both arguments are first converted to
    `dtype` (default `keras.config.floatx()`, float32): a float64 y_pred is
    computed and returned in float32, and a float16 sigmoid output reaches the
    function through a ``Cast``, which hides its logits (fallback clip). Pass
    ``dtype="float16"`` (or keep the final activation in float32, as Keras'
    mixed-precision guide advises) to keep them.

    Args:
      from_logits, label_smoothing, axis: as `binary_crossentropy`.
      reduction, name, dtype: as `keras.losses.Loss`.

    Raises:
      TypeError, ValueError: as `binary_crossentropy`.

    Example (batch mean of 30 and 30):

    >>> y = tf.constant([[0.], [1.]])
    >>> p = keras.activations.sigmoid(tf.constant([[30.], [-30.]]))
    >>> float(tf.reduce_mean(-(y * tf.math.log(p) + (1. - y) * tf.math.log(1. - p))))
    inf
    >>> float(so.losses.BinaryCrossentropy()(y, p))
    30.0
    """

    _fn = staticmethod(binary_crossentropy)
    _keys = ("from_logits", "label_smoothing", "axis")

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="binary_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@drop_in("keras.losses.CategoricalCrossentropy",
         _RECOVERED,
         _REDUCED)
@keras.saving.register_keras_serializable(package="safeops")
class CategoricalCrossentropy(_Base):
    """`Loss` for `categorical_crossentropy`; drop-in for `keras.losses.CategoricalCrossentropy`.

    Same arguments, defaults and config as Keras'; ``call`` is
    `categorical_crossentropy` (method, error bound, gradients at the edges and
    fallback are documented there), reduced over the batch by `reduction`.
    Guarantee: a softmax output whose logits can be recovered (module doc)
    gives the exact loss and the gradient ``softmax(z) - y`` instead of a
    clipped 16.12 with gradient 0. dtypes: as `BinaryCrossentropy` (arguments
    converted to `dtype`, default float32, first).

    Args:
      from_logits, label_smoothing, axis: as `categorical_crossentropy`.
      reduction, name, dtype: as `keras.losses.Loss`.

    Raises:
      TypeError, ValueError: as `categorical_crossentropy`.

    Example:

    >>> y = tf.constant([[0., 0., 1.]])
    >>> p = so.softmax(tf.constant([[60., 0., -60.]]))
    >>> float(-tf.reduce_sum(y * tf.math.log(p)))          # hand-written
    inf
    >>> float(so.losses.CategoricalCrossentropy()(y, p))
    120.0
    """

    _fn = staticmethod(categorical_crossentropy)
    _keys = ("from_logits", "label_smoothing", "axis")

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@drop_in("keras.losses.SparseCategoricalCrossentropy",
         _RECOVERED,
         _REDUCED,
         "get_config adds axis (Keras's class accepts axis but does not save it)",
         "any class axis (Keras's TensorFlow backend: -1 only)")
@keras.saving.register_keras_serializable(package="safeops")
class SparseCategoricalCrossentropy(_Base):
    """`Loss` for `sparse_categorical_crossentropy`; drop-in for
    `keras.losses.SparseCategoricalCrossentropy`.

    Same arguments, defaults and config as Keras'; ``call`` is
    `sparse_categorical_crossentropy` (method, error bound, gradients at the
    edges, fallback and `ignore_class` are documented there), reduced over the
    batch by `reduction`. Guarantee: a softmax output whose logits can be
    recovered (module doc) gives the exact loss and the gradient
    ``softmax(z) - onehot(y)`` instead of a clipped 16.12 with gradient 0.
    dtypes: as `BinaryCrossentropy` (arguments converted to `dtype`, default
    float32, first; integer labels become float and are cast back to int64).

    Args:
      from_logits, ignore_class, axis: as `sparse_categorical_crossentropy`.
      reduction, name, dtype: as `keras.losses.Loss`.

    Raises:
      TypeError, ValueError: as `sparse_categorical_crossentropy`.

    Example (batch mean of 120 and 0):

    >>> p = so.softmax(tf.constant([[60., 0., -60.], [60., 0., -60.]]))
    >>> float(-tf.reduce_mean(tf.math.log(tf.gather(p, [2, 0], batch_dims=1))))
    inf
    >>> float(so.losses.SparseCategoricalCrossentropy()(tf.constant([2, 0]), p))
    60.0
    """

    _fn = staticmethod(sparse_categorical_crossentropy)
    _keys = ("from_logits", "ignore_class", "axis")

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 axis=-1, name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits, self.ignore_class, self.axis = from_logits, ignore_class, axis


@new("Keras Loss for relative_error; reduced as the other safeops losses")
@keras.saving.register_keras_serializable(package="safeops")
class RelativeError(_Base):
    """Keras `Loss` for `relative_error` (mean over the batch by default).

    Replaces a hand-written ``|y - p| / (|y| + 1e-8)`` loss; ``call`` is
    `relative_error` (method, error bound <= 1 ulp, gradients at y_true ==
    y_pred and y_true = 0: see ``safeops.relative_error``), reduced by
    `reduction`. dtypes: as `BinaryCrossentropy` (arguments converted to
    `dtype`, default float32, first).

    Args:
      eps: as `relative_error`.
      reduction, name, dtype: as `keras.losses.Loss`.

    Raises:
      TypeError, ValueError: as `relative_error`.

    Example (batch mean of 1 and 0.5; hand-written: 0.0099 and 0.5):

    >>> float(so.losses.RelativeError()(tf.constant([1e-10, 2.]), tf.constant([2e-10, 1.])))
    0.75
    """

    _fn = staticmethod(relative_error)
    _keys = ("eps",)

    def __init__(self, eps=None, reduction="sum_over_batch_size", name="relative_error",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.eps = eps
