"""Gradient clipping that does not itself produce NaN: clip_by_norm, clip_by_global_norm.

TF 2.21: ``tf.clip_by_global_norm([[3e19, 4e19]], 1.0)`` returns NaN because
the squared norm overflows float32 although every value is finite. Here the
norm is the scaled norm of `safeops.norms` (fast path as TF, scaled recompute
on overflow/underflow), so finite inputs always give finite outputs in the
exact clipped direction.

Non-finite inputs follow a policy, ``nonfinite=``:

* ``"propagate"`` (default, TF's behaviour): the norm is inf/NaN and every
  clipped value becomes NaN (or 0 for an inf norm and finite entries, as TF).
* ``"zero"``: non-finite entries are replaced by 0, the rest is clipped by
  the norm of the finite entries.
* ``"skip"``: if any entry is non-finite, every output is zeros (skip the step);
  the returned norm is the non-finite norm, which is the report.
"""

import tensorflow as tf

from safeops._dtypes import convert_to_floating
from safeops.norms import _global_norm, _scaled_norm

__all__ = ["clip_by_global_norm", "clip_by_norm"]

_POLICIES = ("propagate", "zero", "skip")


def _check_policy(op, nonfinite):
    if nonfinite not in _POLICIES:
        raise ValueError(f"{op}: argument 'nonfinite' must be one of {_POLICIES}; "
                         f"got {nonfinite!r}")


def _clip_norm_tensor(op, clip_norm, dtype):
    if isinstance(clip_norm, (int, float)) and not clip_norm >= 0:
        raise ValueError(f"{op}: argument 'clip_norm' must be >= 0; got {clip_norm}")
    return tf.cast(clip_norm, dtype)


def clip_by_norm(t, clip_norm, axes=None, name=None, nonfinite="propagate"):
    """Clips `t` to a maximum L2 norm; drop-in for `tf.clip_by_norm`.

    Method: ``t * (clip_norm / max(norm, clip_norm))`` with the scaled,
    overflow-free norm (see module doc): ``clip_by_norm([3e19, 4e19], 1.)`` is
    ``[0.6, 0.8]`` within 1 ulp (TF: NaN); tiny tensors (1e-30) are left
    unchanged (no underflow to a zero norm). Where TF's result is finite the two
    agree within 1 ulp. Output dtype = input dtype.

    Gradient: TF's automatic gradient of the expression above (the norm's
    gradient is 0 at the zero tensor, so no NaN).

    Args:
      t: float tensor.
      clip_norm: scalar >= 0.
      axes: None (whole tensor) or axes along which norms are taken.
      name: optional name scope.
      nonfinite: "propagate" (TF), "zero" or "skip" (module doc).

    Returns:
      The clipped tensor.

    Raises:
      TypeError: non-float t.
      ValueError: negative clip_norm or unknown policy.

    Example:
      >>> so.clip_by_norm([3e19, 4e19], 1.).numpy()   # tf.clip_by_norm: [nan, nan]
      array([0.6, 0.8], dtype=float32)
    """
    op = "safeops.clip_by_norm"
    _check_policy(op, nonfinite)
    with tf.name_scope(name or "clip_by_norm"):
        t = convert_to_floating(op, "t", t)
        c = _clip_norm_tensor(op, clip_norm, t.dtype)
        if axes is not None and not isinstance(axes, (list, tuple)):
            axes = [axes]
        finite = None
        if nonfinite != "propagate":
            finite = tf.math.is_finite(t)
            t_use = tf.where(finite, t, tf.zeros_like(t))
        else:
            t_use = t
        n = _scaled_norm(t_use, list(axes) if axes is not None else None, keepdims=True)
        scale = c / tf.maximum(n, c)
        out = t_use * scale
        if nonfinite == "skip":
            ok = tf.reduce_all(finite, axis=axes, keepdims=True)
            out = tf.where(ok, out, tf.zeros_like(out))
        return out


def clip_by_global_norm(t_list, clip_norm, use_norm=None, name=None, nonfinite="propagate"):
    """Clips tensors by the ratio of the sum of their norms; drop-in for `tf.clip_by_global_norm`.

    Method: ``t_i * clip_norm / max(global_norm, clip_norm)`` with the global
    norm computed without overflow or underflow (scaled, see `safeops.norms`):
    ``clip_by_global_norm([[3e19, 4e19]], 1.)`` gives ``[0.6, 0.8]`` (TF: NaN).
    Equal to TF's result within 1 ulp wherever TF's is finite.

    Non-finite entries: see the module doc ("propagate" = TF; "zero";
    "skip": all outputs zero, returned norm non-finite).

    Args:
      t_list: a list/tuple of float tensors (None entries are passed through).
      clip_norm: scalar >= 0.
      use_norm: optional precomputed global norm.
      name: optional name scope.
      nonfinite: "propagate", "zero" or "skip".

    Returns:
      ``(list_clipped, global_norm)`` as TF; global_norm has the first tensor's
      dtype (float32 for float16/bfloat16 lists).

    Raises:
      TypeError: t_list not a sequence, or a non-float tensor.
      ValueError: negative clip_norm or unknown policy.

    Example:
      >>> so.clip_by_global_norm([[3e19, 4e19]], 1.)[0][0].numpy()
      array([0.6, 0.8], dtype=float32)
    """
    op = "safeops.clip_by_global_norm"
    _check_policy(op, nonfinite)
    if not isinstance(t_list, (list, tuple)):
        raise TypeError(f"{op}: argument 't_list' must be a list or tuple; got "
                        f"{type(t_list).__name__}")
    with tf.name_scope(name or "clip_by_global_norm"):
        ts = [None if t is None else convert_to_floating(op, "t_list", t) for t in t_list]
        present = [t for t in ts if t is not None]
        if not present:
            return list(t_list), tf.constant(0.0)
        if nonfinite != "propagate":
            finite = [tf.math.is_finite(t) for t in present]
            all_ok = tf.reduce_all(tf.stack([tf.reduce_all(f) for f in finite]))
            cleaned = [tf.where(f, t, tf.zeros_like(t)) for f, t in zip(finite, present)]
        else:
            cleaned = present
        if use_norm is None:
            gn = _global_norm(cleaned)
            report = _global_norm(present) if nonfinite == "skip" else gn
        else:
            gn = report = tf.convert_to_tensor(use_norm)
        c = _clip_norm_tensor(op, clip_norm, gn.dtype)
        scale = c / tf.maximum(gn, c)
        if nonfinite == "propagate":
            # TF's convention: a non-finite norm poisons every output with NaN.
            scale = tf.where(tf.math.is_finite(gn), scale, tf.constant(float("nan"), gn.dtype))
        outs = [t * tf.cast(scale, t.dtype) for t in cleaned]
        if nonfinite == "skip":
            outs = [tf.where(all_ok, o, tf.zeros_like(o)) for o in outs]
            gn = report
        it = iter(outs)
        return [None if t is None else next(it) for t in ts], gn


def _clip_gradients(grads, clipnorm=None, global_clipnorm=None, nonfinite="propagate"):
    """Keras-optimizer-style clipping for optimizers (`clipnorm`, `global_clipnorm`).

    For the compensated optimizers (`safeops.optimizers`): ``clipnorm`` clips
    each gradient by its own norm, ``global_clipnorm`` all of them together,
    both with the overflow-free norm. None gradients pass through;
    `tf.IndexedSlices` are clipped through their values.
    """
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError("_clip_gradients: set at most one of clipnorm and global_clipnorm")
    if clipnorm is None and global_clipnorm is None:
        return list(grads)

    def values(g):
        return g.values if isinstance(g, tf.IndexedSlices) else g

    def rebuild(g, v):
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(v, g.indices, g.dense_shape)
        return v

    if clipnorm is not None:
        return [None if g is None else rebuild(g, clip_by_norm(values(g), clipnorm,
                                                               nonfinite=nonfinite))
                for g in grads]
    clipped, _ = clip_by_global_norm([None if g is None else values(g) for g in grads],
                                     global_clipnorm, nonfinite=nonfinite)
    return [None if g is None else rebuild(g, v) for g, v in zip(grads, clipped)]
