"""Straight-through estimators: exact non-differentiable forward, usable gradient.

``round_ste``, ``floor_ste``, ``ceil_ste``, ``sign_ste`` pass the upstream
gradient through unchanged (identity, Bengio et al. 2013, "Estimating or
propagating gradients through stochastic neurons"); ``clip_ste`` passes it
where ``lo <= x <= hi`` and blocks it outside. The forward is the TF op itself
(bit-exact), written with `tf.custom_gradient` rather than ``x +
stop_gradient(op(x) - x)``, which turns inf into NaN and can round.
"""

import tensorflow as tf

from safeops._core import args
from safeops._core.elementwise import fused, name_scope
from safeops._core.gradient import custom_gradient
from safeops._core.registry import new

__all__ = ["ceil_ste", "clip_ste", "floor_ste", "round_ste", "sign_ste"]


def _straight_through(g, x):
    return g


_STE = {fn: custom_gradient(name, fn, _straight_through)
        for name, fn in (("RoundSTE", tf.round), ("FloorSTE", tf.floor),
                         ("CeilSTE", tf.math.ceil), ("SignSTE", tf.sign))}


def _identity_ste(op, tf_op, x, name):
    with name_scope(name or op.split(".")[-1]):
        return _STE[tf_op](args.convert(op, "x", x))


_STE_DOC = """{what} with a straight-through (identity) gradient.

    Forward: exactly `{tf_name}` (bit-identical, same dtype){note}. Gradient:
    the upstream gradient unchanged, everywhere (also at the jumps, and at
    +-inf); NaN in x gives NaN forward but the gradient stays the upstream one.

    dtypes: float16, bfloat16, float32, float64; output has x's dtype.

    Args:
      x: float tensor.
      name: optional name scope.

    Returns:
      `{tf_name}(x)`, x's shape and dtype.

    Raises:
      TypeError: integer or bool x (naming the op and the argument).

    Example:
      >>> x = tf.constant([0.4, 1.6])
      >>> with tf.GradientTape() as t:
      ...     t.watch(x)
      ...     y = so.{name}(x)
      >>> t.gradient(y, x)      # `{tf_name}`: None (no gradient)
      <tf.Tensor: shape=(2,), dtype=float32, numpy=array([1., 1.], dtype=float32)>
    """


@new("tf.round forward, straight-through (identity) gradient")
def round_ste(x, name=None):
    return _identity_ste("safeops.round_ste", tf.round, x, name)


@new("tf.floor forward, straight-through (identity) gradient")
def floor_ste(x, name=None):
    return _identity_ste("safeops.floor_ste", tf.floor, x, name)


@new("tf.math.ceil forward, straight-through (identity) gradient")
def ceil_ste(x, name=None):
    return _identity_ste("safeops.ceil_ste", tf.math.ceil, x, name)


@new("tf.sign forward, straight-through (identity) gradient")
def sign_ste(x, name=None):
    return _identity_ste("safeops.sign_ste", tf.sign, x, name)


round_ste.__doc__ = _STE_DOC.format(what="Rounds half to even", tf_name="tf.round",
                                    note="", name="round_ste")
floor_ste.__doc__ = _STE_DOC.format(what="Floor", tf_name="tf.floor", note="", name="floor_ste")
ceil_ste.__doc__ = _STE_DOC.format(what="Ceiling", tf_name="tf.math.ceil", note="",
                                   name="ceil_ste")
sign_ste.__doc__ = _STE_DOC.format(what="Sign", tf_name="tf.sign",
                                   note=" (sign(0) = 0, -1 or 1 elsewhere)", name="sign_ste")


@new("tf.clip_by_value forward, upstream gradient inside [lo, hi] and 0 outside")
def clip_ste(x, lo, hi, name=None):
    """Clips x to [lo, hi] with a straight-through gradient inside the interval.

    Forward: exactly ``tf.clip_by_value(x, lo, hi)``. Gradient w.r.t. x: the
    upstream gradient where ``lo <= x <= hi`` (edges included), 0 outside; the
    bounds get no gradient (they are treated as constants, e.g. the fixed range
    of a quantizer). NaN x gives NaN forward and gradient 0 (NaN is not inside
    [lo, hi]). Use it after `round_ste` to build a fake-quantizer whose
    gradient vanishes outside the representable range.

    dtypes: float16, bfloat16, float32, float64; lo, hi converted to x's dtype.

    Args:
      x: float tensor.
      lo: lower bound (scalar or broadcastable).
      hi: upper bound, ``lo <= hi``.
      name: optional name scope.

    Returns:
      The clipped tensor, x's shape and dtype.

    Raises:
      TypeError: integer or bool x.
      ValueError: ``lo > hi`` (statically; a `tf.debugging` assert when dynamic).

    Example:
      >>> so.clip_ste(tf.constant([-2.0, 0.5, 3.0]), -1.0, 1.0)
      <tf.Tensor: shape=(3,), dtype=float32, numpy=array([-1. ,  0.5,  1. ], dtype=float32)>
    """
    op = "safeops.clip_ste"
    with name_scope(name or "clip_ste"):
        x, lo, hi = args.convert_n(op, ("x", "lo", "hi"), (x, lo, hi))
        deps = args.check_ordered(op, "lo", "hi", lo, hi)
        return args.with_deps(deps, _clip_ste(x, lo, hi))


def _clip_ste_backward(g, x, lo, hi):
    inside = tf.logical_and(x >= lo, x <= hi)
    return tf.where(inside, g, tf.zeros_like(g))


# the backward's mask is one XLA-fused loop inside graphs (five element-wise kernels
# otherwise: two comparisons, their conjunction, the zeros and the selection)
_clip_ste = custom_gradient("ClipSTE", tf.clip_by_value, fused(_clip_ste_backward), n_inputs=1)
