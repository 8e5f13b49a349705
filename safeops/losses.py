"""Cross-entropy losses that keep the gradient when given probabilities (`so.losses`).

Functions with Keras 3's names, arguments and defaults, plus serializable
Keras `Loss` classes. With ``from_logits=False`` the probabilities' logits are
recovered when the probabilities came from a sigmoid/softmax:

* eagerly, from the ``_keras_logits`` attribute that `keras.activations`
  and `safeops.softmax` attach to their output;
* in a graph (`tf.function`, Keras `fit`), from the producing op (``Sigmoid``
  / ``Softmax``, looking through ``Identity``), as Keras 2 did.

The loss is then computed from the logits (`tf.nn.*_cross_entropy_with_logits`,
exact to a few ulp, gradient ``sigmoid(z) - y`` / ``softmax(z) - y``), so it
does not saturate: Keras returns a clipped ~15.9 with gradient 0 for
``binary_crossentropy(0., sigmoid(30.))``; here it is 30.0 with gradient 1
w.r.t. the logit. Otherwise the documented fallback is Keras' clipping of the
probabilities to ``[eps, 1 - eps]`` with ``eps = keras.config.epsilon()``
(1e-7): the loss is at most -log(eps) = 16.1 and its gradient is 0 beyond the
clip.
"""

import keras
import tensorflow as tf

from safeops._dtypes import convert_to_floating

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


def _logits_of(p, op_type):
    """The logits behind probabilities `p` (see module doc), or None."""
    z = getattr(p, "_keras_logits", None)
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


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Binary cross-entropy, mean over `axis`; drop-in for `keras.losses.binary_crossentropy`.

    Method: from logits z (given, or recovered from a sigmoid, see module doc):
    ``max(z, 0) - z y + log1p(exp(-|z|))`` (`tf.nn.sigmoid_cross_entropy_with_logits`),
    error a few ulp for any z. Otherwise Keras' clipped formula (loss <= -log(1e-7) = 16.1).
    Labels are smoothed as Keras does: ``y (1 - s) + s / 2``.

    Gradient w.r.t. the logits: ``(sigmoid(z) - y) / n`` -- 1 for z = 30, y = 0
    (Keras on the probabilities: 0). Through the fallback clip: 0 outside
    [eps, 1 - eps].

    Args:
      y_true: labels in [0, 1], same shape as y_pred (cast to its dtype).
      y_pred: probabilities (or logits with from_logits=True), float.
      from_logits: whether y_pred are logits.
      label_smoothing: float in [0, 1].
      axis: the axis to average over.

    Returns:
      Loss tensor with `axis` reduced, y_pred's dtype.

    Raises:
      TypeError: non-float y_pred.
      ValueError: shape mismatch (shapes in the message) or label_smoothing
        outside [0, 1].

    Example:
      >>> p = tf.sigmoid(tf.constant([30.])) ; so.losses.binary_crossentropy([0.], p)
      # 30.0 under tf.function or with keras.activations.sigmoid (Keras: 16.1)
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


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Categorical cross-entropy over `axis`; drop-in for `keras.losses.categorical_crossentropy`.

    Method: from logits z (given, or recovered from a softmax over the last
    axis, see module doc): ``-sum(y * log_softmax(z))`` via
    `tf.nn.softmax_cross_entropy_with_logits` (a few ulp, never NaN for finite
    z). Otherwise Keras' formula: probabilities renormalised, clipped to
    [eps, 1 - eps], ``-sum(y log p)``. Label smoothing: ``y (1 - s) + s / k``.

    Gradient w.r.t. the logits: ``softmax(z) * sum(y) - y``; through the fallback
    clip it is 0 for clipped entries.

    Args:
      y_true: one-hot (or soft) labels, same shape as y_pred.
      y_pred: probabilities (or logits with from_logits=True).
      from_logits: whether y_pred are logits.
      label_smoothing: float in [0, 1].
      axis: the class axis.

    Returns:
      Loss tensor with `axis` reduced.

    Raises:
      TypeError: non-float y_pred.
      ValueError: shape mismatch or label_smoothing outside [0, 1].

    Example:
      >>> so.losses.categorical_crossentropy([[0., 1.]], [[1000., 0.]], from_logits=True)
      # [1000.]
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


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    """Sparse categorical cross-entropy; drop-in for `keras.losses.sparse_categorical_crossentropy`.

    As `categorical_crossentropy` with integer labels (logits recovered from a
    softmax, otherwise Keras' clipping). Entries whose label equals
    `ignore_class` get loss 0.

    Args:
      y_true: integer class indices, shape y_pred.shape without `axis` (a
        trailing axis of length 1 is accepted).
      y_pred: probabilities (or logits with from_logits=True).
      from_logits: whether y_pred are logits.
      ignore_class: optional label value to ignore.
      axis: the class axis (-1 or the last axis).

    Returns:
      Loss tensor of y_true's shape.

    Raises:
      TypeError: non-float y_pred.
      ValueError: label/prediction shapes that do not match, or axis not last.

    Example:
      >>> so.losses.sparse_categorical_crossentropy([0], [[0., 1000.]], from_logits=True)
      # [1000.]
    """
    op = "safeops.losses.sparse_categorical_crossentropy"
    y_pred = convert_to_floating(op, "y_pred", y_pred)
    rank = y_pred.shape.rank
    if rank is not None and axis not in (-1, rank - 1):
        raise ValueError(f"{op}: only the last axis is supported as class axis; got {axis}")
    y_true = tf.convert_to_tensor(y_true)
    if rank is not None and y_true.shape.rank == rank and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, -1)
    if not y_true.shape.is_compatible_with(y_pred.shape[:-1]):
        raise ValueError(f"{op}: y_true shape {y_true.shape} does not match y_pred shape "
                         f"{y_pred.shape} without its class axis")
    labels = tf.cast(y_true, tf.int64)
    mask = None
    if ignore_class is not None:
        mask = tf.not_equal(labels, ignore_class)
        labels = tf.where(mask, labels, tf.zeros_like(labels))
    z = y_pred if from_logits else _logits_of(y_pred, "Softmax")
    if z is not None:
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                            logits=tf.cast(z, y_pred.dtype))
    else:
        eps = _eps(y_pred.dtype)
        p = y_pred / tf.reduce_sum(y_pred, axis=-1, keepdims=True)
        p = tf.clip_by_value(p, eps, 1.0 - eps)
        ce = -tf.math.log(tf.gather(p, labels, axis=-1, batch_dims=labels.shape.rank))
    if mask is not None:
        ce = tf.where(mask, ce, tf.zeros_like(ce))
    return ce


def relative_error(y_true, y_pred, eps=None):
    """Relative error loss; the loss form of `safeops.relative_error` (division issue).

    Delegates to ``safeops.division.relative_error`` (imported lazily): see its
    docstring for the method, bound and gradient at y_true == 0.

    Args:
      y_true: reference values.
      y_pred: predictions, same shape.
      eps: floor of the denominator (None: that op's default).

    Returns:
      Elementwise relative error, y_pred's dtype.

    Raises:
      TypeError, ValueError: as ``safeops.relative_error``.
    """
    from safeops.division import relative_error as _rel  # lazily: owned by issue 4
    return _rel(y_true, y_pred, eps=eps)


class _Base(keras.losses.Loss):
    _fn = None
    _keys = ()

    def call(self, y_true, y_pred):
        return type(self)._fn(y_true, y_pred, **{k: getattr(self, k) for k in self._keys})

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in self._keys})
        return config


@keras.saving.register_keras_serializable(package="safeops")
class BinaryCrossentropy(_Base):
    """Keras `Loss` for `binary_crossentropy` (same arguments as Keras').

    Args:
      from_logits, label_smoothing, axis: as `binary_crossentropy`.
      reduction, name, dtype: as `keras.losses.Loss`.
    """

    _fn = staticmethod(binary_crossentropy)
    _keys = ("from_logits", "label_smoothing", "axis")

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="binary_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@keras.saving.register_keras_serializable(package="safeops")
class CategoricalCrossentropy(_Base):
    """Keras `Loss` for `categorical_crossentropy` (same arguments as Keras').

    Args:
      from_logits, label_smoothing, axis: as `categorical_crossentropy`.
      reduction, name, dtype: as `keras.losses.Loss`.
    """

    _fn = staticmethod(categorical_crossentropy)
    _keys = ("from_logits", "label_smoothing", "axis")

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@keras.saving.register_keras_serializable(package="safeops")
class SparseCategoricalCrossentropy(_Base):
    """Keras `Loss` for `sparse_categorical_crossentropy` (same arguments as Keras').

    Args:
      from_logits, ignore_class, axis: as `sparse_categorical_crossentropy`.
      reduction, name, dtype: as `keras.losses.Loss`.
    """

    _fn = staticmethod(sparse_categorical_crossentropy)
    _keys = ("from_logits", "ignore_class", "axis")

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 axis=-1, name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits, self.ignore_class, self.axis = from_logits, ignore_class, axis


@keras.saving.register_keras_serializable(package="safeops")
class RelativeError(_Base):
    """Keras `Loss` for `relative_error` (mean over the batch by default).

    Args:
      eps: as `relative_error`.
      reduction, name, dtype: as `keras.losses.Loss`.
    """

    _fn = staticmethod(relative_error)
    _keys = ("eps",)

    def __init__(self, eps=None, reduction="sum_over_batch_size", name="relative_error",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.eps = eps
