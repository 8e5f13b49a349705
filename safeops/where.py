"""Selections whose unselected branch cannot poison anything: safe_where, smooth_where.

`tf.where(c, f(x), g(x))` evaluates both branches everywhere; the gradient of the
unselected one is multiplied by 0, and ``0 * inf = NaN`` (TF issues #2540,
#20091, #38349). `safe_where` applies the "double-where" trick for you and writes
the backward pass once. `smooth_where` is a differentiable blend instead of a
jump.
"""

import tensorflow as tf

from safeops._core.args import convert, convert_n, param
from safeops._core.elementwise import abs_, cast, fused, name_scope, reduce_to, select, up
from safeops._core.gradient import custom_gradient
from safeops._core.registry import new
from safeops._core.transcendental import exp_neg

__all__ = ["safe_where", "smooth_where"]


@new("where(condition, true_fn(*args), false_fn(*args)) with the double-where trick built "
     "in: the unselected branch cannot put NaN into the value or the gradient "
     "(tf.where(c, f(x), g(x)) differentiates both branches)")
def safe_where(condition, true_fn, false_fn, *args, safe_value=1.0, name=None):
    """``where(condition, true_fn(*args), false_fn(*args))`` without NaN leaking through.

    Replaces ``tf.where(c, f(x), g(x))`` and the hand-written double-where trick.

    Method: each branch is evaluated on copies of the inputs in which the
    positions the branch does not select are replaced by `safe_value`
    (``where(condition, x, safe_value)`` for `true_fn`, the converse for
    `false_fn`); the results are then selected with `condition`. The backward
    pass (one `tf.custom_gradient`) back-propagates the upstream gradient
    through each branch and keeps, per position, only the selected branch's
    gradient with a select (not a multiplication by 0).

    Guarantee: for elementwise `true_fn` / `false_fn` (output position i depends
    only on input position i), the unselected branch cannot inject NaN or inf
    into the forward value or into any gradient, whatever it computes at
    `safe_value`. NaN or inf produced by the *selected* branch propagates (it is
    the value asked for), so NaN inputs at selected positions give NaN for
    branches that propagate NaN. Branches that capture variables are supported;
    variable gradients use the upstream gradient masked to the branch's
    positions.

    Gradient: that of the selected branch at each position (e.g. ``1/x`` for
    ``safe_where(x > 0, tf.math.log, tf.zeros_like, x)`` at x > 0), exactly 0
    from the other branch; no gradient w.r.t. `condition`.

    dtypes: any dtypes the branches accept; `safe_value` is cast to each
    argument's dtype; the output dtype is the branches' (they must agree).

    Args:
      condition: bool tensor, broadcastable with every argument.
      true_fn: callable of ``*args`` used where `condition` is True.
      false_fn: callable of ``*args`` used where `condition` is False.
      *args: the tensors the branches are applied to (at least one).
      safe_value: a value at which both branches are finite (default 1.0).
      name: optional name scope.

    Returns:
      The selected values, shape ``broadcast(condition, *args)``.

    Raises:
      TypeError: `condition` not bool, a branch not callable, or no `args`.
      InvalidArgumentError: incompatible shapes (TF's broadcasting error).

    Example:
      >>> x = tf.constant([0.0, 2.0])
      >>> with tf.GradientTape() as t:
      ...     t.watch(x)
      ...     y = so.safe_where(x > 0, tf.math.log, tf.zeros_like, x)
      >>> t.gradient(y, x)      # tf.where(x > 0, tf.math.log(x), 0.): [nan, 0.5]
      <tf.Tensor: shape=(2,), dtype=float32, numpy=array([0. , 0.5], dtype=float32)>
    """
    op = "safeops.safe_where"
    with name_scope(name or "safe_where"):
        if not callable(true_fn) or not callable(false_fn):
            raise TypeError(f"{op}: arguments 'true_fn' and 'false_fn' must be callable")
        if not args:
            raise TypeError(f"{op}: needs at least one argument tensor in '*args'")
        condition = convert(op, "condition", condition, allowed=(tf.bool,))
        args = [convert(op, "args", a, allowed=None) for a in args]
        safes = [tf.cast(safe_value, a.dtype) for a in args]
        differentiable = [a.dtype.is_floating or a.dtype.is_complex for a in args]

        return _safe_where_op(condition, true_fn, false_fn, safes, differentiable)(*args)


def _safe_where_op(condition, true_fn, false_fn, safes, differentiable):
    """The op for one call: `condition`, the branches and safe values are closed over."""
    n = len(safes)

    def forward(*xs):
        t_in = [select(condition, a, s) for a, s in zip(xs, safes)]
        f_in = [select(condition, s, a) for a, s in zip(xs, safes)]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([a for a, d in zip(t_in + f_in, differentiable * 2) if d])
            t_out = tf.convert_to_tensor(true_fn(*t_in))
            f_out = tf.convert_to_tensor(false_fn(*f_in))
        return select(condition, t_out, f_out), (tape, t_in, f_in, t_out, f_out)

    def backward(g, *rest, variables=None):
        xs, (tape, t_in, f_in, t_out, f_out) = rest[:n], rest[n:]
        zero = tf.zeros_like(g)
        if variables:
            g_t, g_f = select(condition, g, zero), select(condition, zero, g)
        else:  # elementwise branches: the final select discards the rest
            g_t = g_f = g
        gt = tape.gradient(t_out, t_in, output_gradients=g_t)
        gf = tape.gradient(f_out, f_in, output_gradients=g_f)
        grads = []
        for a, d, at, af in zip(xs, differentiable, gt, gf):
            if not d:
                grads.append(None)
                continue
            # A select, not a product: NaN/inf of the other branch is dropped.
            at = tf.zeros((), a.dtype) if at is None else at
            af = tf.zeros((), a.dtype) if af is None else af
            shape = tf.broadcast_dynamic_shape(tf.shape(condition), tf.shape(a))
            grads.append(reduce_to(tf.broadcast_to(select(condition, at, af), shape)
                                   if at.shape.rank == 0 and af.shape.rank == 0
                                   else select(condition, at, af), a))
        if not variables:
            return grads, None
        vt = tape.gradient(t_out, variables, output_gradients=g_t,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
        vf = tape.gradient(f_out, variables, output_gradients=g_f,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads, [a + b for a, b in zip(vt, vf)]

    return custom_gradient("SafeWhere", forward, backward, saves=True, elementwise=False,
                           variables=True)


@new("a logistic blend of width temperature instead of the jump of "
     "tf.where(x > threshold, if_above, if_below)")
def smooth_where(x, threshold, if_above, if_below, temperature=1.0, name=None):
    """Smooth version of ``tf.where(x > threshold, if_above, if_below)``.

    Computes ``w * if_above + (1 - w) * if_below`` with the logistic weight
    ``w = sigmoid((x - threshold) / temperature)``: a blend of width
    `temperature` around the threshold instead of a jump gradient descent
    cannot see.

    Method: with ``e = exp(-|z|)``, ``z = (x - threshold) / temperature``, the
    weights are ``1 / (1 + e)`` and ``e / (1 + e)`` (which is which follows the
    sign of z), so ``1 - w`` is never formed, they saturate to exact 0 and 1
    without overflow, and for large ``|z|`` the result is exactly the selected
    branch; at the threshold it is exactly the rounded average ``(if_above +
    if_below) / 2``. float16/bfloat16 are computed in float32 and float32 in
    float64 (its exponential as a polynomial XLA vectorises, see
    `safeops._core.transcendental`), rounded once; float64 natively.
    Error bound: ``|err| <= u * |out| + c * u * (|w * if_above| + |(1-w) *
    if_below|)`` with u the unit roundoff of the dtype and c = 0 (low precision
    dtypes) or c <= 4 (float64) -- within 1 ulp (4 ulp in float64) unless the
    two branches have opposite signs and cancel. Inside a `tf.function` the
    value and each gradient run as one XLA-compiled loop.

    Gradient: w.r.t. x ``w (1 - w) (if_above - if_below) / temperature``
    (continuous, 0 in the saturated tails, ``(a - b) / (4 T)`` at the
    threshold), computed as ``e (a - b) / ((1 + e)**2 T)`` in the working
    precision (float32: within 1 ulp also in the tails, where ``w (1 - w)``
    formed from w would cancel), a product of the difference (formed one
    precision up for
    float16/float32, as ``a/2 - b/2`` for bfloat16/float64, so it cannot
    overflow): finite wherever ``(|a| + |b|) / (4 T)`` is at most x's dtype's
    largest value (+-inf only beyond, where the exact value itself may not be
    representable); w.r.t. `if_above` ``w`` and `if_below` ``1 - w``; w.r.t.
    `threshold` minus that of x; w.r.t. `temperature` ``-z`` times that of x.

    NaN: not guarded. NaN in x, threshold or temperature gives NaN; NaN in a
    branch gives NaN even where that branch's weight is 0 (``0 * NaN``),
    unlike `tf.where`; use `safe_where` for a hard selection.

    dtypes: float16, bfloat16, float32, float64 (x's dtype; the other arguments
    are converted to it); output has that dtype.

    Args:
      x: float tensor, the switching variable.
      threshold: switch point, broadcastable with x.
      if_above: value (tensor) where x is above the threshold.
      if_below: value (tensor) where x is below.
      temperature: positive width of the blend (default 1.0).
      name: optional name scope.

    Returns:
      The blended tensor, shape ``broadcast(x, threshold, if_above, if_below)``.

    Raises:
      TypeError: integer or bool x.
      ValueError: ``temperature <= 0`` (statically; dynamic tensors get a
        `tf.debugging` assert).

    Example:
      >>> so.smooth_where(0.0, 0.0, 2.0, 4.0)     # at the threshold: the average
      <tf.Tensor: shape=(), dtype=float32, numpy=3.0>
    """
    op = "safeops.smooth_where"
    with name_scope(name or "smooth_where"):
        x, threshold, if_above, if_below = convert_n(
            op, ("x", "threshold", "if_above", "if_below"), (x, threshold, if_above, if_below))
        temperature = param(op, "temperature", temperature, x.dtype)
        return _smooth_where(x, threshold, if_above, if_below, temperature)


# float16 and float32 work in float32 and float64, whose range holds the difference
# of any two of their values: ``if_above - if_below`` is formed without overflow.
_DIFF_FITS = frozenset((tf.float16, tf.float32))


def _sw_parts(x, threshold, temperature):
    """(z, e, w) in the working dtype: ``z = (x - threshold) / T``, ``e = exp(-|z|)``
    and ``w`` the weight 1 or e on the side of if_above (the other side has the other),
    both over ``1 + e``: ``sigmoid(z) = w / (1 + e)``, ``sigmoid(-z) = (1 + e - w) / (1 + e)``
    without forming ``1 - sigmoid``."""
    z = (up(x) - up(threshold)) / up(temperature)
    e = exp_neg(-abs_(z), x.dtype)
    return z, e, tf.where(z >= 0, tf.ones_like(e), e)


def _sw_forward(x, threshold, a, b, temperature):
    # (a w + b w') / (1 + e) with {w, w'} = {1, e}: one quotient; exactly a or b
    # once e is 0, (a + b) / 2 (one rounding) at the threshold.
    z, e, w = _sw_parts(x, threshold, temperature)
    aw, bw = up(a), up(b)
    return cast((aw * w + bw * tf.where(z >= 0, e, tf.ones_like(e))) / (1.0 + e), x.dtype)


def _sw_slope(x, threshold, a, b, temperature):
    """``sigmoid(z) sigmoid(-z) (a - b) / T = e (a - b) / ((1 + e)**2 T)``; products and
    quotients of ``a - b`` only (no sum of rounded products for XLA's FMA contraction to
    change), ``a - b`` formed one precision up where it cannot overflow there, else as
    ``a/2 - b/2`` (the factor 2 restored in the product)."""
    _, e, _ = _sw_parts(x, threshold, temperature)
    aw, bw = up(a), up(b)
    if x.dtype in _DIFF_FITS:
        diff, p = aw - bw, e / ((1.0 + e) * (1.0 + e))
    else:
        diff, p = 0.5 * aw - 0.5 * bw, (2.0 * e) / ((1.0 + e) * (1.0 + e))
    return diff * p / up(temperature)


def _sw_gx(g, x, threshold, a, b, temperature):
    return cast(up(g) * _sw_slope(x, threshold, a, b, temperature), x.dtype)


def _sw_ga(g, x, threshold, temperature):
    _, e, w = _sw_parts(x, threshold, temperature)
    return cast(up(g) * w / (1.0 + e), x.dtype)


def _sw_gb(g, x, threshold, temperature):
    z, e, _ = _sw_parts(x, threshold, temperature)
    return cast(up(g) * tf.where(z >= 0, e, tf.ones_like(e)) / (1.0 + e), x.dtype)


# Each gradient is its own XLA-compiled loop inside a graph (one a graph prunes
# when it is not asked for), recomputing the exponential from x rather than
# reading a saved float64 tensor.
_sw_gx_fused, _sw_ga_fused, _sw_gb_fused = fused(_sw_gx), fused(_sw_ga), fused(_sw_gb)


def _sw_backward(g, x, threshold, a, b, temperature):
    gx = _sw_gx_fused(g, x, threshold, a, b, temperature)
    # d/dthreshold = -d/dx; d/dT = -z d/dx (plain ops: pruned unless asked for)
    z = (up(x) - up(threshold)) / up(temperature)
    g_t = cast(-(up(g) * _sw_slope(x, threshold, a, b, temperature)) * z, x.dtype)
    return (gx, -gx, _sw_ga_fused(g, x, threshold, temperature),
            _sw_gb_fused(g, x, threshold, temperature), g_t)


_smooth_where = custom_gradient("SmoothWhere", fused(_sw_forward), _sw_backward)
