"""Gradient clipping that does not itself produce NaN: clip_by_norm, clip_by_global_norm.

TF 2.21: ``tf.clip_by_global_norm([[3e19, 4e19]], 1.0)`` returns NaN and
``tf.clip_by_norm([3e19, 4e19], 1.0)`` returns ``[0, 0]`` because the squared
norm overflows float32 although every value is finite. Here finite inputs
always give finite outputs in the exact clipped direction.

Method (both ops): a fast path forms ``sum(x*x)`` as TF does (in float32 for
float16/bfloat16, one fused reduction) and uses ``sqrt`` of it when every sum
is finite and above ``tiny / eps**2`` (so no square overflowed and those that
underflowed cannot matter). Otherwise (one `tf.cond` on the whole input) the
norm is kept in two parts, ``norm = a * q`` with ``a`` the power of two at or
below ``max|x|`` and ``q = sqrt(sum((x/a)**2))`` in ``[1, sqrt(n)]``; the
clipped value ``x * c / norm`` is formed as ``x * ((c/q) / a)`` or, when that
scale would be subnormal, ``(x/a) * (c/q)``. Division by a power of two is
exact, so the norm itself never overflows or underflows and is never
squared; the gradient is written by hand from the same parts.

Non-finite inputs follow a policy, ``nonfinite=``:

* ``"propagate"`` (default, TF's behaviour): a NaN norm makes every clipped
  value NaN; an inf norm gives 0 for finite entries and NaN for infinite ones
  (`clip_by_norm`, as TF) or NaN everywhere (`clip_by_global_norm`, as TF).
* ``"zero"``: non-finite entries are replaced by 0, the rest is clipped by
  the norm of the finite entries.
* ``"skip"``: `clip_by_global_norm` returns all zeros if any entry of any
  tensor is non-finite (skip the step), and the returned norm is the
  non-finite norm, which is the report. `clip_by_norm` zeroes each slice over
  which a norm is taken (the whole tensor for ``axes=None``, else each row)
  that holds a non-finite entry; the other slices are clipped as usual.
"""

import functools

import numpy as np
import tensorflow as tf

from safeops._core import args
from safeops._core.dtypes import limits, square_threshold, working_dtype
from safeops._core.elementwise import MAX_SELECT_RANK, name_scope
from safeops._core.gradient import custom_gradient
from safeops._core.registry import drop_in

__all__ = ["clip_by_global_norm", "clip_by_norm"]

_POLICIES = ("propagate", "zero", "skip")


def _check_policy(op, nonfinite):
    if nonfinite not in _POLICIES:
        raise ValueError(f"{op}: argument 'nonfinite' must be one of {_POLICIES}; "
                         f"got {nonfinite!r}")


def _clip_norm_tensor(op, clip_norm, dtype):
    # A Python float goes straight to float64 (tf.cast would round it to float32
    # first, clipping float64 tensors to a norm 1e-8 off); tensors of any real
    # dtype are cast, as TF does; a negative value raises (statically, else by
    # an assert) where TF silently returns zeros.
    c = args.param(op, "clip_norm", clip_norm, dtype, "nonnegative", cast=True)
    n = c.shape.num_elements()
    if n is not None and n != 1:  # TF: a shape error (ValueError) for such a clip_norm
        raise ValueError(f"{op}: argument 'clip_norm' must be a scalar; got shape {c.shape}")
    return tf.reshape(c, [])


def _tiny(dtype):
    return limits(dtype).tiny


def _fast_ok(ss, c):
    """Fast path: no square overflowed or mattered when underflowing, ``x * c`` cannot
    overflow where c < norm, and the scale c / norm is not subnormal."""
    lim = limits(ss.dtype)
    return ((ss >= square_threshold(ss.dtype)) & (ss <= lim.max / 4)
            & (c >= lim.tiny * tf.sqrt(ss)))


def _pow2_floor(m):
    """Largest power of two <= m for finite m >= tiny, else tiny (exponent-bit mask)."""
    itype, mask = (tf.int64, 0x7FF0000000000000) if m.dtype == tf.float64 else \
        (tf.int32, 0x7F800000)
    p = tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(m, itype), tf.constant(mask, itype)),
                   m.dtype)
    return tf.maximum(p, _tiny(m.dtype))


def _safe_pow2(m):
    """(a, finite): a = _pow2_floor(m) where m is finite, 1 elsewhere."""
    fin = tf.math.is_finite(m)
    return tf.where(fin, _pow2_floor(tf.where(fin, m, tf.ones_like(m))), tf.ones_like(m)), fin


def _div_pow2(k, a):
    """``k / a`` for k >= 0 and a normal power of two, by exponent arithmetic where exact.

    Not a float division: XLA folds ``(c / q) / a`` into ``c / (q * a)``, which
    overflows when the norm does. Falls back to ``k / a`` for non-finite k or
    a result outside the normal range (then 0/subnormal/inf either way).
    """
    itype, mant, bias = (tf.int64, 52, 1023) if k.dtype == tf.float64 else (tf.int32, 23, 127)
    kb, ab = tf.bitcast(k, itype), tf.bitcast(a, itype)
    ek, ea = tf.bitwise.right_shift(kb, mant), tf.bitwise.right_shift(ab, mant)
    e_new = ek - ea + bias
    exact = (ek > 0) & (ek < 2 * bias + 1) & (e_new >= 1) & (e_new <= 2 * bias)
    shifted = tf.bitcast(kb - tf.bitwise.left_shift(ea - bias, mant), k.dtype)
    return tf.where(exact, shifted, k / a)


def _times_ratio(x, c, a, q):
    """``x * c / (a * q)``, a a power of two: one multiply by ``(c / q) / a`` unless subnormal.

    A subnormal scale (norm > c * 2**126 in float32) is applied as
    ``(x / a) * (c / q)`` instead: x / a is exact and c / q is normal unless c
    itself is (the fast path is only taken when c / q is normal). A
    non-finite q (non-finite input) gives TF's ``x * (c / q)``.
    """
    k = c / q
    s = _div_pow2(k, a)
    # Not `~(s < tiny)`: grappler rewrites that to `s >= tiny`, which differs for NaN.
    one = (s >= _tiny(x.dtype)) | tf.math.is_nan(s) | ~tf.math.is_finite(q)
    return tf.where(one, x * s, (x / a) * k)


def _norm_parts(x, axes, c):
    """(ok, a, q, ss) with norm = a * q along `axes` (keepdims); ok: fast path (a == 1)."""
    ss = tf.reduce_sum(x * x, axis=axes, keepdims=True)
    ok = tf.reduce_all(_fast_ok(ss, c))

    def scaled():
        a, fin = _safe_pow2(tf.reduce_max(tf.abs(x), axis=axes, keepdims=True))
        r = x / a
        q = tf.sqrt(tf.reduce_sum(r * r, axis=axes, keepdims=True))
        return a, tf.where(fin, q, tf.sqrt(ss))  # inf or NaN norm of non-finite slices

    a, q = tf.cond(ok, lambda: (tf.ones_like(ss), tf.sqrt(ss)), scaled)
    return ok, a, q, ss


def _clip_forward(t, c, axes):
    x = tf.cast(t, c.dtype)
    ok, a, q, ss = _norm_parts(x, axes, c)
    keep = a * q <= c  # not clipped; False for a NaN norm (NaN out, as TF)

    def ours():
        return tf.where(keep, x, _times_ratio(x, c, a, q))

    def fast():
        # a == 1. TF's (x * c) / norm, bit for bit, where x * c can neither
        # overflow (_fast_ok) nor underflow while the result does not (c >= 1 or
        # every norm >= 1); else x * (c / norm).
        as_tf = (c >= 1) | (tf.reduce_min(ss) >= 1)
        return tf.cond(as_tf, lambda: tf.where(keep, x, (x * c) / q), ours)

    out = tf.cond(ok, fast, ours)
    return tf.cast(out, t.dtype), (x, a, q, keep)


def _clip_backward(g, t, c, x, a, q, keep, axes):
    g = tf.cast(g, c.dtype)
    # x / norm, 0 at the zero tensor. Not (x / a) / q: XLA folds that into x / (a * q),
    # and a * q overflows when the norm does.
    u = (x / a) * (1 / tf.where(q > 0, q, tf.ones_like(q)))
    p = tf.reduce_sum(g * u, axis=axes, keepdims=True)
    clipped = _times_ratio(g - u * p, c, a, q)  # (c / norm) (g - u <g, u>)
    pos = tf.cast(c > 0, c.dtype)  # clip_norm 0: the output is 0, so is its gradient
    gt = tf.where(keep, g * pos, clipped)
    gc = tf.reduce_sum(tf.where(keep, tf.zeros_like(p), p))
    return tf.cast(gt, t.dtype), gc


@functools.lru_cache(maxsize=None)
def _clip_op(axes):
    return custom_gradient("ClipByNorm", functools.partial(_clip_forward, axes=axes),
                           functools.partial(_clip_backward, axes=axes), saves=True,
                           elementwise=False)


def _clip_core(t, c, axes):
    """clip_by_norm of a (cleaned or not) tensor; c: scalar in the compute dtype."""
    return _clip_op(None if axes is None else tuple(axes))(t, c)


@drop_in("tf.clip_by_norm",
         "the norm never overflows or underflows: finite inputs give the exact clipped "
         "direction (TF: [0, 0] for [3e19, 4e19] in float32)",
         "gradient written from the two-part norm: finite for finite inputs, the identity "
         "at the zero tensor (TF: NaN for some clip norms)",
         "a negative clip_norm raises ValueError (TF returns zeros)",
         "any rank (TF's kernels stop at rank 8)",
         "extra keyword argument nonfinite= ('propagate' as TF, 'zero', 'skip')")
def clip_by_norm(t, clip_norm, axes=None, name=None, nonfinite="propagate"):
    """Clips `t` to a maximum L2 norm; drop-in for `tf.clip_by_norm`.

    Method: ``t * clip_norm / norm`` where ``norm > clip_norm``, `t` unchanged
    elsewhere, with the overflow-free two-part norm of the module doc:
    ``clip_by_norm([3e19, 4e19], 1.)`` is ``[0.6, 0.8]`` (TF: ``[0, 0]``),
    ``clip_by_norm([3e38, 3e38], 1.)`` is ``[0.7071068, 0.7071068]`` (TF:
    ``[0, 0]``); tiny tensors (1e-30) are left unchanged (no underflow to a
    zero norm). float16/bfloat16 are computed in float32 and rounded once
    (float16 ``[6e4, 6e4]`` clips to ``[0.7071, 0.7071]``; TF: ``[0, 0]``).

    Error bound: relative error of each clipped value <= (d + 4) u, u the
    unit roundoff of the compute dtype (2**-24 for float32, 2**-53 for
    float64) and d the depth of the sum of squares' reduction tree, plus
    one rounding to float16/bfloat16 (their u) for half inputs. Unclipped
    values are returned exactly. Wherever TF's squared norm neither overflows
    nor underflows (``tiny/eps**2 <= sum(t*t) < max``) the norm is TF's, bit
    for bit, and the result agrees with TF's within 1 ulp (TF forms
    ``(t * c) / norm``, this op ``t * (c / norm)``); elsewhere TF's result is
    wrong (NaN, 0, or unclipped) and this op's is not.

    Gradient (hand-written from the parts, never squaring the norm): for
    clipped slices ``(c / norm) * (g - u * <g, u>)`` with ``u = t / norm``,
    finite for every finite input (float32 ``[3e19, 4e19]``: gradient of the
    sum is ``[3.2e-21, -2.4e-21]``, TF: ``[2e-20, 2e-20]``); ``g`` for
    unclipped slices (at ``norm == clip_norm`` too), so **the gradient at the
    zero tensor is the identity** (finite; TF's is NaN for some clip norms);
    with ``clip_norm == 0`` the output is 0 and so is its gradient. Gradient
    with respect to `clip_norm`: ``sum(g * u)`` over clipped slices. Gradient
    error (the subtraction can cancel, so absolute): ``|err_i| <= 12 u (c /
    norm) (|g_i| + |u_i| sum_j |g_j u_j|)`` (tested; 2-3 element slices).

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output
    dtype = input dtype. `clip_norm` (a number or a scalar tensor of any real
    dtype) is cast to the compute dtype. An IndexedSlices is clipped through
    its values and returned as IndexedSlices (dense_shape kept, also when
    absent), as TF does. Any rank (TF's kernels stop at rank 8: higher ranks
    are clipped as a matrix of the norm axes).

    Args:
      t: float tensor or IndexedSlices.
      clip_norm: scalar >= 0.
      axes: None (whole tensor) or axes along which norms are taken.
      name: optional name scope.
      nonfinite: "propagate" (TF), "zero" or "skip" (module doc; "skip"
        zeroes each slice that holds a non-finite entry).

    Returns:
      The clipped tensor, shape and dtype of `t`.

    Raises:
      InvalidArgumentError, TypeError: non-float t (TF's pair; one exception
        that is both, naming the op and argument 't').
      ValueError: negative or non-scalar clip_norm (a negative tensor value
        known only when the graph runs: InvalidArgumentError from an assert),
        or an unknown policy.

    Example:
      >>> so.clip_by_norm([3e19, 4e19], 1.).numpy()   # tf.clip_by_norm: [0, 0]
      array([0.6, 0.8], dtype=float32)
    """
    op = "safeops.clip_by_norm"
    _check_policy(op, nonfinite)
    with name_scope(name or "clip_by_norm"):
        if isinstance(t, tf.IndexedSlices):  # clipped through its values, as TF does
            values = clip_by_norm(t.values, clip_norm, axes, None, nonfinite)
            return tf.IndexedSlices(values, t.indices, t.dense_shape)
        t = args.convert(op, "t", t)
        c = _clip_norm_tensor(op, clip_norm, working_dtype(t.dtype))
        if axes is not None:
            axes = tf.get_static_value(axes) if tf.is_tensor(axes) else axes
            axes = [int(a) for a in np.reshape(axes, [-1])]
        rank = t.shape.rank
        if rank is None and axes is None or rank is not None and rank > MAX_SELECT_RANK:
            return _clip_high_rank(t, c, axes, nonfinite)
        return _clip_by_norm(t, c, axes, nonfinite)


def _clip_high_rank(t, c, axes, nonfinite):
    """clip_by_norm beyond TF's rank-8 kernels: the norm axes moved last, as a matrix."""
    shape = tf.shape(t)
    if axes is None:
        return tf.reshape(_clip_by_norm(tf.reshape(t, [-1]), c, None, nonfinite), shape)
    rank = t.shape.rank
    axes = sorted({a % rank for a in axes})
    keep = [i for i in range(rank) if i not in axes]
    perm = keep + axes
    moved = tf.transpose(t, perm)
    matrix = tf.reshape(moved, tf.stack([-1, tf.reduce_prod(tf.gather(shape, axes))]))
    out = tf.reshape(_clip_by_norm(matrix, c, [1], nonfinite), tf.shape(moved))
    return tf.transpose(out, np.argsort(perm))


def _clip_by_norm(t, c, axes, nonfinite):
    finite = None
    if nonfinite != "propagate":
        finite = tf.math.is_finite(t)
        t_use = tf.where(finite, t, tf.zeros_like(t))
    else:
        t_use = t
    out = _clip_core(t_use, c, axes)
    if nonfinite == "skip":
        ok = tf.reduce_all(finite, axis=axes, keepdims=True)
        out = tf.where(ok, out, tf.zeros_like(out))
    return out


def _global_parts(xs, c):
    """(a, q, s): global norm = a * q (scalars), and the outputs' scale s: 1 where the
    norm is at most c, else TF's ``c * (1 / norm)`` bit for bit on the fast path (a == 1)
    and ``(c / q) / a`` on the scaled one. Each branch computes only its own scale (eagerly
    the other branch does not run)."""
    ss = tf.add_n([tf.reduce_sum(x * x) for x in xs])
    ok = _fast_ok(ss, c)

    def fast():
        one, q = tf.ones_like(ss), tf.sqrt(ss)
        return one, q, tf.where(q <= c, one, c * (1 / q))

    def scaled():
        a, fin = _safe_pow2(tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(x)) for x in xs])))
        q = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(x / a)) for x in xs]))
        q = tf.where(fin, q, tf.sqrt(ss))
        return a, q, tf.where(a * q <= c, tf.ones_like(q), _div_pow2(c / q, a))

    return tf.cond(ok, fast, scaled)


def _global_forward(c, *ts):
    dtype = c.dtype
    xs = [tf.cast(t, dtype) for t in ts]
    a, q, s = _global_parts(xs, c)
    n = a * q
    keep = n <= c
    s = tf.where(tf.math.is_finite(q), s, tf.constant(np.nan, dtype))  # TF: NaN for all
    # One multiply per element (TF's cost) unless that scale is subnormal.
    plain = keep | (s >= _tiny(dtype)) | tf.math.is_nan(s)
    outs = tf.cond(plain, lambda: [x * s for x in xs],
                   lambda: [_times_ratio(x, c, a, q) for x in xs])
    return [tf.cast(o, t.dtype) for o, t in zip(outs, ts)] + [n], (a, q, keep)


def _global_backward(gs, c, *rest):
    ts, (a, q, keep) = rest[:-3], rest[-3:]
    dtype = c.dtype
    xs = [tf.cast(t, dtype) for t in ts]
    g_out, g_n = gs[:-1], gs[-1]
    gs32 = [tf.zeros_like(x) if g is None else tf.cast(g, dtype) for g, x in zip(g_out, xs)]
    g_n = tf.zeros([], dtype) if g_n is None else tf.cast(g_n, dtype)
    qs = tf.where(q > 0, q, tf.ones_like(q))
    us = [(x / a) * (1 / qs) for x in xs]  # x / norm (see _clip_backward), 0 at zero

    def unclipped():
        pos = tf.cast(c > 0, dtype)  # clip_norm 0: outputs are 0, so are gradients
        return [g * pos + g_n * u for g, u in zip(gs32, us)], tf.zeros([], dtype)

    def clipped():
        p = tf.add_n([tf.reduce_sum(g * u) for g, u in zip(gs32, us)])
        return [_times_ratio(g - u * p, c, a, q) + g_n * u for g, u in zip(gs32, us)], p

    gts, gc = tf.cond(keep, unclipped, clipped)
    return [gc] + [tf.cast(g, t.dtype) for g, t in zip(gts, ts)]


_global_op = custom_gradient("ClipByGlobalNorm", _global_forward, _global_backward, saves=True,
                             elementwise=False)


def _global_core(c, ts):
    """(clipped list, global norm) of non-None tensors `ts`; c scalar in the compute dtype.

    Tensors of rank above 8 (or unknown rank) are clipped as vectors: TF's
    select kernels stop at rank 8, and the global norm does not see shapes.
    """
    flat = [t.shape.rank is None or t.shape.rank > MAX_SELECT_RANK for t in ts]
    shapes = [tf.shape(t) if f else None for t, f in zip(ts, flat)]
    res = _global_op(c, *[tf.reshape(t, [-1]) if f else t for t, f in zip(ts, flat)])
    outs = [tf.reshape(o, s) if f else o for o, s, f in zip(res[:-1], shapes, flat)]
    return outs, res[-1]


@drop_in("tf.clip_by_global_norm",
         "the global norm never overflows or underflows (TF: NaN for [[3e19, 4e19]] in float32)",
         "gradient written from the two-part norm: finite for finite inputs",
         "a negative clip_norm raises ValueError",
         "tensors of different floating dtypes are accepted (the norm in the first's working "
         "dtype; TF raises)",
         "extra keyword argument nonfinite= ('propagate' as TF, 'zero', 'skip')")
def clip_by_global_norm(t_list, clip_norm, use_norm=None, name=None, nonfinite="propagate"):
    """Clips tensors by the ratio of the sum of their norms; drop-in for `tf.clip_by_global_norm`.

    Method: ``t_i * clip_norm / global_norm`` when ``global_norm > clip_norm``,
    `t_i` unchanged otherwise, with the global norm kept in two parts (module
    doc) so it never overflows or underflows:
    ``clip_by_global_norm([[3e19, 4e19]], 1.)`` gives ``[0.6, 0.8]`` and
    ``clip_by_global_norm([[3e38, 3e38]], 1.)`` gives
    ``[0.7071068, 0.7071068]`` (TF: NaN). The common path costs what TF's
    does: one fused sum of squares per tensor and one multiply per element.

    Error bound: as `clip_by_norm` (relative (d + 4) u per value, d the depth
    of the summation over all tensors). Where TF's squared global norm
    neither overflows nor underflows, the result agrees with TF's within 1
    ulp (the norm may differ from TF's by its summation order).

    Gradient (hand-written, never squares the norm): with ``u_i = t_i / norm``
    and ``P = sum_i <g_i, u_i>``, clipped: ``(c / norm) (g_i - u_i P)``;
    unclipped (also at ``norm == clip_norm`` and at the all-zero list):
    ``g_i``; plus ``g_norm * u_i`` from the returned norm (0 at the zero
    list). Finite for all finite inputs. With ``clip_norm == 0`` the outputs
    and their gradients are 0. Gradient to `clip_norm`: ``P`` when clipped.
    With `use_norm`, TF's automatic gradient of ``t_i * c / max(use_norm, c)``.

    dtypes: float16/bfloat16 lists computed in float32; each output has its
    input's dtype; the returned norm has the compute dtype of the first
    tensor (float32 for float16/bfloat16 lists) and is inf when the true
    global norm exceeds that dtype's maximum (the clipped values are still
    right).

    Non-finite entries: see the module doc ("propagate" = TF; "zero";
    "skip": all outputs zero, returned norm non-finite).

    IndexedSlices entries are clipped through their values and stay
    IndexedSlices, with or without dense_shape, as TF's.

    Args:
      t_list: a list/tuple of float tensors or IndexedSlices (None entries are
        passed through).
      clip_norm: scalar >= 0.
      use_norm: optional precomputed global norm.
      name: optional name scope.
      nonfinite: "propagate", "zero" or "skip".

    Returns:
      ``(list_clipped, global_norm)`` as TF.

    Raises:
      TypeError: t_list not a sequence, or a non-float tensor.
      ValueError: negative clip_norm or unknown policy.

    Example:
      >>> clipped, norm = so.clip_by_global_norm([[3e19, 4e19]], 1.)
      >>> clipped[0].numpy()
      array([0.6, 0.8], dtype=float32)
    """
    op = "safeops.clip_by_global_norm"
    _check_policy(op, nonfinite)
    if not isinstance(t_list, (list, tuple)):
        raise TypeError(f"{op}: argument 't_list' must be a list or tuple; got "
                        f"{type(t_list).__name__}")
    with name_scope(name or "clip_by_global_norm"):
        # IndexedSlices are clipped through their values and rebuilt, as TF does
        slices = [t if isinstance(t, tf.IndexedSlices) else None for t in t_list]
        ts = [None if t is None else args.convert(op, "t_list", t.values if s is not None else t)
              for t, s in zip(t_list, slices)]
        present = [t for t in ts if t is not None]
        if not present:
            return list(t_list), tf.constant(0.0)
        dtype = working_dtype(present[0].dtype)
        if nonfinite != "propagate":
            finite = [tf.math.is_finite(t) for t in present]
            all_ok = tf.reduce_all(tf.stack([tf.reduce_all(f) for f in finite]))
            cleaned = [tf.where(f, t, tf.zeros_like(t)) for f, t in zip(finite, present)]
        else:
            cleaned = present
        if use_norm is None:
            c = _clip_norm_tensor(op, clip_norm, dtype)
            outs, gn = _global_core(c, cleaned)
            if nonfinite == "skip":
                gn = tf.cond(all_ok, lambda: gn, lambda: tf.sqrt(tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(t, dtype))) for t in present])))
        else:
            gn = tf.convert_to_tensor(use_norm)
            c = _clip_norm_tensor(op, clip_norm, gn.dtype)
            scale = tf.where(gn <= c, tf.ones_like(gn), c / gn)
            if nonfinite == "propagate":
                # TF's convention: a non-finite norm poisons every output with NaN.
                scale = tf.where(tf.math.is_finite(gn), scale, tf.constant(np.nan, gn.dtype))
            outs = [t * tf.cast(scale, t.dtype) for t in cleaned]
        if nonfinite == "skip":
            outs = [tf.where(all_ok, o, tf.zeros_like(o)) for o in outs]
        it = iter(outs)
        res = [None if t is None else next(it) for t in ts]
        res = [r if s is None else tf.IndexedSlices(r, s.indices, s.dense_shape)
               for r, s in zip(res, slices)]
        return res, gn

