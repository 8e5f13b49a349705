"""reduce_logsumexp, softmax and log_softmax: accurate to ~1 ulp, and fully masked rows work.

Method shared by the three ops (Blanchard, Higham & Mary 2021, "Accurately
computing the log-sum-exp and softmax functions"): with m the row maximum,
``x - m = hi + lo`` is split exactly (TwoSum), ``e = exp(hi) (1 + lo)`` is
exp(x - m) to ~1 ulp however far x is below m (``exp(fl(x - m))`` alone is off by
up to ``|x - m| eps / 2`` relatively, 5 bits at |x - m| = 80 in float32), and
``s`` sums e over every entry but ONE max entry (ties: the other max entries add
exactly 1 each). Then

    logsumexp = m + log1p(s),  log_softmax_i = (x_i - m) - log1p(s),
    softmax_i = e_i / (1 + s)   (the max entry: 1 / (1 + s)),

so the max entry's log-probability ``-log1p(s)`` keeps its relative accuracy
when s is tiny (``log(1 + s)``, TF's kernel: ``log_softmax([20, 0, 0, 0])[0]``
is 0.0, exact -6.18e-9). float16/bfloat16 are computed in float32; s, log1p
and the final subtraction of float32 inputs are evaluated in float64 and
rounded once; float64 uses the compensated (TwoSum tree) sum of
`safeops._core.compensated` for s.

Masked rows: where m is not finite the shift is 0; an all -inf row has s = 0 and
no max entry (softmax 0, log_softmax -inf, logsumexp -inf); in a row holding
+inf the +inf entries count as exp(0) = 1 and the others as 0. NaN propagates
through s to the whole row.

Fused kernel: float32 rows along the last axis on the CPU, outside XLA, run a
C++ kernel (`safeops.native`, softmax.cc) for the softmax forward and backward
and the log_softmax and reduce_logsumexp forwards: the same method in one cached
pass per row, softmax rounded once from the double quotient e / (1 + s),
log_softmax from the double (x - m) - log1p(s). The log_softmax and logsumexp
backward passes in a graph are the XLA-fused ones below, fed with the kernel's
row max and s (they measured faster than the kernel's backward, which recomputes
the exps row by row; figures in BUILD_NOTES.md); eagerly log_softmax's backward is
the kernel's (one op instead of the formula's many).

Speed: inside a graph the forward and the backward pass of float16/bfloat16/
float32 inputs are each one XLA-compiled function (fused loops instead of a
kernel per elementwise op; traced once per shape and axis); float64 runs the
same formulas as plain ops. The forward passes keep row quantities only; the
backward passes recompute e from x and the row max. Eagerly, where the kernel
does not apply, log_softmax is one call of the traced function rather than some
sixty small ops.

Measured (bits of error = log2(1 + ulp distance) against mpmath, eager, 1000
rows of 4 from `safeops.testing.sample_floats` on [-80, 80], every entry):
mean / max float32: log_softmax 0.05 / 1.6, softmax 0.16 / 1.6, logsumexp
0.04 / 1.0; float64: 0.08 / 1.0, 0.05 / 1.6, 0.08 / 1.0. TF's fused
log_softmax: 0.47 / 29.7 (float32), 0.18 / 61.9 (float64) bits.
tests/test_softmax.py asserts mean <= 0.5, max <= 2 on 2000 rows (10 000 with
-m slow) in float32 on [-100, 100] and float64 on [-1e4, 1e4].
"""

import math

import tensorflow as tf

from safeops._core import compensated as cs
from safeops._core import reproducible
from safeops._core.args import dtype_error
from safeops._core.axes import class_axis, dynamic_axes, reduction_axes
from safeops._core.dtypes import FLOAT_DTYPES, accumulation_dtype, working_dtype
from safeops._core.eft import two_sum
from safeops._core.native import kernels
from safeops._core.ragged import is_ragged, ragged_reduce, ragged_rows
from safeops._core.registry import drop_in
from safeops.config import is_reproducible
from safeops._core.elementwise import fused as _fused
from safeops._core.elementwise import name_scope

__all__ = ["log_softmax", "reduce_logsumexp", "softmax"]

_EXP_M64 = math.exp(-64.0)  # float64, within 1/2 ulp
_EAGER_TENSOR = type(tf.constant(0.0))
_FLOATS = frozenset(FLOAT_DTYPES)


def _compute(dtype):
    return working_dtype(dtype)


def _plain_sum(v, axis):
    """A plain sum of `v` along `axis` (keepdims), in v's dtype.

    float64 sums go through a dot product with a vector of ones when `axis` is one
    axis of static length: XLA's and Eigen's float64 dot kernels are vectorized,
    their float64 reduce is a serial chain of adds (1M terms on 2 CPU cores: 1.5 ms
    against 3.3 ms). The products v * 1 are exact, so only the order of the float64
    additions changes (error <= n eps64 relative either way)."""
    rank = v.shape.rank
    if v.dtype == tf.float64 and isinstance(axis, int) and rank and v.shape[axis] is not None:
        a = axis % rank
        return tf.expand_dims(tf.tensordot(v, tf.ones([v.shape[a]], v.dtype), [[a], [0]]), a)
    return tf.reduce_sum(v, axis=axis, keepdims=True)


def _row_sum(v, axis, acc):
    """Sum along `axis` (keepdims) in `acc`: float64 rows with the compensated sum."""
    if v.dtype == tf.float64:  # the compensated (TwoSum tree) float64 sum
        if isinstance(axis, int) and v.shape.rank is not None:
            axes = (axis % v.shape.rank,)
        elif isinstance(axis, (list, tuple)):
            axes = tuple(sorted(a % v.shape.rank for a in axis))
        else:  # unknown rank or axes known only when the graph runs
            axes = axis if tf.is_tensor(axis) else tf.math.floormod(
                tf.reshape(axis, [-1]), tf.rank(v))
        s, c, _ = cs.sum_dd(v, axes, True)
        return cs.finish(s, c)
    return _plain_sum(tf.cast(v, acc), axis)


def _terms(x, axis, acc, need_s=True, m=None):
    """The shared core (module doc): (hi, lo, m, e, top, k, s).

    ``x - m = hi + lo`` exactly (TwoSum); ``e = exp(hi) (1 + lo)`` is exp(x - m)
    to ~1 ulp; `top` marks the entries equal to the row max (k of them); s is
    the sum (in `acc`) of exp(x_i - m) over every entry but one max entry.
    `m`: the row max (keepdims) when the caller has it.
    """
    if m is None:
        m = tf.reduce_max(x, axis=axis, keepdims=True)
    finite = tf.math.is_finite(m)
    m0 = tf.where(finite, m, tf.zeros_like(m))
    hi, lo = two_sum(x, -m0)
    lo = tf.where(tf.math.is_finite(lo), lo, tf.zeros_like(lo))
    # a row holding +inf: its +inf entries count as exp(0) = 1, finite ones as 0
    inf = tf.constant(float("inf"), x.dtype)
    pinf_row = tf.equal(m, inf)
    hi = tf.where(pinf_row, tf.where(tf.equal(x, inf), tf.zeros_like(x),
                                     tf.where(tf.math.is_nan(x), x, -inf)), hi)
    lo = tf.where(pinf_row, tf.zeros_like(lo), lo)
    e = tf.exp(hi) * (1 + lo)
    if not need_s:
        return hi, lo, m, e, None, None, None
    top = tf.equal(hi, 0)
    k = _plain_sum(tf.cast(top, acc), axis)  # exact: a count
    if x.dtype == tf.float32 and acc == tf.float64:
        # exp(hi) < 2**-126 for hi < -87.3 is flushed to 0 by FTZ kernels, yet a few such
        # terms can sum to a normal float32 s (log_softmax of the max entry ~ -s): take
        # them as exp(hi + 64) e**-64 (hi + 64 is exact for hi in [-128, -80] by Sterbenz;
        # below -128 a term is < 1e-55 and cannot reach a float32 result)
        low = hi < -80.0
        e_low = tf.exp(tf.maximum(hi, -128.0) + 64.0) * (1 + lo)
        e_acc = tf.where(low, tf.cast(e_low, acc) * tf.constant(_EXP_M64, acc), tf.cast(e, acc))
        u = _plain_sum(tf.where(top, tf.zeros_like(e_acc), e_acc), axis)
    else:
        u = _row_sum(tf.where(top, tf.zeros_like(e), e), axis, acc)
    s = u + tf.maximum(k - 1, 0)  # all -inf rows: k = 0, s = 0
    return hi, lo, m, e, top, k, s


# --- forward and backward passes: one XLA-fused loop each for float16/bfloat16/float32
# inside a graph (`safeops._core.elementwise.fused`), plain ops for float64 (its
# compensated sum needs static shapes) and eagerly.

def _lse_fwd(x, axis):
    c, acc = _compute(x.dtype), accumulation_dtype(x.dtype)
    _, _, m, e, _, _, s = _terms(tf.cast(x, c), axis, acc)
    m_acc = tf.cast(m, acc)
    finite = tf.math.is_finite(m_acc)
    out = tf.where(finite, m_acc + tf.math.log1p(s), m_acc)  # all -inf: -inf; +inf: +inf
    r = tf.cast(1 / (1 + s), c)
    return tf.cast(out, x.dtype), m, r


def _lse_bwd(g, x, m, r, axis):
    # e recomputed from x and the row max (see _softmax_fwd)
    c, acc = _compute(x.dtype), accumulation_dtype(x.dtype)
    _, _, _, e, _, _, _ = _terms(tf.cast(x, c), axis, acc, need_s=False, m=m)
    return tf.cast(g, c) * (e * r)


def _softmax_fwd(x, axis):
    # returns p, the row max m and the row sum of e; e itself is recomputed in the
    # backward pass: a second output the size of x costs more than the exps (1M
    # float32 entries on 2 CPU cores: 4.5 ms against 3.6 ms for the forward)
    c, acc = _compute(x.dtype), accumulation_dtype(x.dtype)
    _, _, m, e, _, _, _ = _terms(tf.cast(x, c), axis, acc, need_s=False)
    # e / sum(e): the sum includes the max entries' exact 1s, so no exclusion is needed
    total = _row_sum(e, axis, acc)
    total = tf.where(tf.equal(total, 0), tf.ones_like(total), total)  # masked rows: p = 0
    p = e / tf.cast(total, c)
    return tf.cast(p, x.dtype), m, total


def _softmax_bwd(g, x, m, total, axis):
    # p * (g - sum(g p)) written as p * ((g - c) - sum((g - c) p)) with c = g at a
    # largest p (e == 1: exp(0) (1 + 0); entries within rounding of the max may join
    # them, any c is exact algebra): the derivative p_max (1 - p_max) of a dominant
    # entry does not cancel. p = e / sum, d = g - c (exact) and the rest run in the
    # accumulation dtype (float32 inputs: float64), so p_i p_j carries only the exp
    # errors of e_i and e_j. From the float32 output p instead (e / sum rounded twice)
    # the gradient test's max error grows from 2-3 ulp to 4 ulp, its bound.
    cd, acc = _compute(x.dtype), total.dtype
    _, _, _, e, _, _, _ = _terms(tf.cast(x, cd), axis, acc, need_s=False, m=m)
    g = tf.cast(g, cd)
    ninf = tf.fill(tf.shape(g), tf.constant(-float("inf"), cd))
    c = tf.reduce_max(tf.where(tf.equal(e, 1), g, ninf), axis=axis, keepdims=True)
    c = tf.where(tf.math.is_finite(c), c, tf.zeros_like(c))  # all-zero p (masked row)
    p = tf.cast(e, acc) / total
    d = tf.cast(g, acc) - tf.cast(c, acc)
    return p * (d - _plain_sum(d * p, axis))


def _log_softmax_fwd(x, axis):
    c, acc = _compute(x.dtype), accumulation_dtype(x.dtype)
    hi, lo, m, _, _, _, s = _terms(tf.cast(x, c), axis, acc)
    # x - m - log1p(s), rounded once (float32: evaluated in float64)
    out = tf.cast(hi, acc) - (tf.math.log1p(s) - tf.cast(lo, acc))
    r = 1 / (1 + s)
    return tf.cast(out, x.dtype), m, tf.cast(r, c), tf.cast(s * r, c)


def _log_softmax_bwd(g, x, m, r, sr, axis):
    # g - p sum(g), p = e r; where e == 1 (a max entry, p = r): g (1 - r) - r (sum(g) - g)
    # with 1 - r = s r exactly, so the gradient of the max entry does not cancel.
    # e recomputed from x and the row max (see _softmax_fwd)
    cd, acc = _compute(x.dtype), accumulation_dtype(x.dtype)
    _, _, _, e, _, _, _ = _terms(tf.cast(x, cd), axis, acc, need_s=False, m=m)
    g = tf.cast(g, cd)
    total = tf.reduce_sum(g, axis=axis, keepdims=True)
    return tf.where(tf.equal(e, 1), g * sr - r * (total - g), g - e * (r * total))


_FUSED = {f.__name__: _fused(f) for f in (_lse_fwd, _lse_bwd, _softmax_fwd, _softmax_bwd,
                                          _log_softmax_fwd, _log_softmax_bwd)}


def _call(fn, dtype, *args):
    """`fn(*args)`, XLA-fused unless the compute dtype is float64."""
    # an axis known only when the graph runs cannot be compiled (XLA needs static axes)
    plain = dtype == tf.float64 or tf.is_tensor(args[-1])
    return (fn if plain else _FUSED[fn.__name__])(*args)


def _fused_op(fwd, bwd, x, axis):
    """``fwd(x, axis)`` = (out, *saved) with the hand-written backward
    ``bwd(g, x, *saved, axis)``; each pass one XLA-fused loop (see `_call`)."""
    @tf.custom_gradient
    def inner(x):
        out, *saved = _call(fwd, x.dtype, x, axis)

        def grad(g):
            return tf.cast(_call(bwd, x.dtype, g, x, *saved, axis), x.dtype)

        return out, grad

    return inner(x)


def _native_rows(kind, x, axis):
    """The fused C++ kernel (`safeops.native`, softmax.cc) for float32 rows along the last
    axis on the CPU outside XLA: (output, row statistics [rows, 2] = (max, s) in float64),
    the output in x's shape (softmax) or the keepdims shape (logsumexp); or None where it
    does not apply."""
    rank = x.shape.rank
    if x.dtype != tf.float32 or not rank or not isinstance(axis, int) or isinstance(axis, bool):
        return None
    if axis % rank != rank - 1:
        return None
    lib = kernels(x, (tf.float32,))
    if lib is None:
        return None
    static = x.shape.as_list()
    if rank == 2 and None not in static:  # already [rows, n]: the kernel alone
        return lib.safeops_softmax(x, kind=kind)
    if None not in static:  # cached shape constants: the eager fast path (one op each)
        rows = 1
        for d in static[:-1]:
            rows *= d
        y, stats = lib.safeops_softmax(tf.reshape(x, cs.shape_of([rows, static[-1]])),
                                       kind=kind)
        return tf.reshape(y, cs.shape_of(static if kind != "logsumexp"
                                         else static[:-1] + [1])), stats
    # rows counted, not inferred: a [0, 0] input has 0 rows of length 0 (reshape's -1 says 1)
    shape = tf.shape(x)
    y, stats = lib.safeops_softmax(
        tf.reshape(x, tf.stack([tf.reduce_prod(shape[:-1]), shape[-1]])), kind=kind)
    if kind != "logsumexp":
        out = tf.reshape(y, tf.shape(x))
        out.set_shape(x.shape)
    else:
        out = tf.reshape(y, _keep_shape(x))
        out.set_shape(x.shape[:-1].concatenate([1]))
    return out, stats


def _keep_shape(x):
    static = x.shape.as_list()
    if None not in static:
        return cs.shape_of(static[:-1] + [1])
    return tf.concat([tf.shape(x)[:-1], [1]], 0)


def _logsumexp_keep(x, axis):
    # forward on the fused kernel where it applies (0.70-0.95x tf.reduce_logsumexp), backward
    # the XLA-fused `_lse_bwd` from the row max and 1 / (1 + s): the kernel's own backward
    # measured 1.29-1.36x forward+backward against 1.10-1.16x for this one
    @tf.custom_gradient
    def inner(v):
        fused = _native_rows("logsumexp", v, axis)
        if fused is None:
            out, m, r = _call(_lse_fwd, v.dtype, v, axis)
        else:
            out, stats = fused
            m = r = None  # formed in the backward pass only (the forward stays 3 ops)

        def grad(g):
            m_, r_ = m, r
            if m_ is None:
                m_ = tf.reshape(tf.cast(stats[:, 0], tf.float32), _keep_shape(v))
                r_ = tf.reshape(tf.cast(1.0 / (1.0 + stats[:, 1]), tf.float32), _keep_shape(v))
            return tf.cast(_call(_lse_bwd, v.dtype, g, v, m_, r_, axis), v.dtype)

        return out, grad

    return inner(x)


def _rows_3d(fn, x, axis):
    """fn on x viewed as [outer, n, inner] (axis in the middle) where x's rank passes TF's
    kernel limit; None otherwise."""
    if not cs.needs_collapse(x):
        return None
    y, _ = cs.as_3d(x, [axis % x.shape.rank])
    out = tf.reshape(fn(y, 1), tf.shape(x))
    out.set_shape(x.shape)
    return out


def _softmax(x, axis):
    high = _rows_3d(_softmax, x, axis)
    if high is not None:
        return high
    fused = _native_rows("softmax", x, axis)
    return fused[0] if fused is not None else _fused_op(_softmax_fwd, _softmax_bwd, x, axis)


def _log_softmax(x, axis):
    high = _rows_3d(_log_softmax, x, axis)
    if high is not None:
        return high
    if tf.executing_eagerly():
        # eagerly the fused kernel, forward and backward (one op each, the backward
        # registered in `safeops.native`); without it one call of the traced function
        # (the XLA-fused passes) costs less than the ~60 small ops of the formula
        fused = _native_rows("log_softmax", x, axis)
        return fused[0] if fused is not None else _EAGER_LOG_SOFTMAX(x, axis)
    return _log_softmax_graph(x, axis)


def _log_softmax_graph(x, axis):
    # in a graph: the forward on the fused kernel where it applies, the backward the
    # XLA-fused `_log_softmax_bwd` from the kernel's row max and s (the kernel's own backward,
    # which recomputes the exps row by row, measured slower forward+backward; BUILD_NOTES.md)
    @tf.custom_gradient
    def inner(v):
        fused = _native_rows("log_softmax", v, axis)
        if fused is None:
            out, *saved = _call(_log_softmax_fwd, v.dtype, v, axis)
        else:
            out, stats = fused
            saved = None  # formed in the backward pass only

        def grad(g):
            if saved is None:
                return _log_softmax_bwd_from_stats(g, v, stats, axis)
            return tf.cast(_call(_log_softmax_bwd, v.dtype, g, v, *saved, axis), v.dtype)

        return out, grad

    return inner(x)


def _log_softmax_bwd_from_stats(g, v, stats, axis):
    """`_log_softmax_bwd` fed with the row max, 1 / (1 + s) and s / (1 + s) formed from the
    kernel's row statistics (float64 [rows, 2]), which carry no gradient: its own gradient
    (second order) is the plain formula ``g - softmax(v) sum(g)`` differentiated by a tape,
    as for the kernel's backward (no accuracy bound is claimed for second derivatives)."""
    @tf.custom_gradient
    def bwd(g, v):
        keep = _keep_shape(v)
        s = stats[:, 1]
        r = 1.0 / (1.0 + s)
        m, r, sr = (tf.reshape(tf.cast(t, tf.float32), keep) for t in (stats[:, 0], r, s * r))
        dx = tf.cast(_call(_log_softmax_bwd, v.dtype, g, v, m, r, sr, axis), v.dtype)

        def grad2(h):
            with tf.GradientTape() as tape:
                tape.watch([g, v])
                plain = g - tf.nn.softmax(v, axis) * tf.reduce_sum(g, axis, keepdims=True)
            return tape.gradient(plain, [g, v], output_gradients=h)

        return dx, grad2

    return bwd(g, v)


def _input(op, arg, value):
    """A floating tensor or RaggedTensor; other dtypes raise TF's error for them
    (InvalidArgumentError eagerly, TypeError in a graph: `DTypeError` is both)."""
    if type(value) is _EAGER_TENSOR:  # the eager fast path
        x = value
    else:
        x = value if isinstance(value, (tf.Tensor, tf.RaggedTensor)) else tf.convert_to_tensor(
            value)
    if x.dtype not in _FLOATS:
        raise dtype_error(op, f"argument '{arg}' must have dtype float16, bfloat16, float32 or "
                              f"float64; got {x.dtype.name}")
    return x


def _axis(op, x, axis):
    """The class axis (None: the last); an axis tensor known only when the graph runs is
    not accepted (TF's softmax does not accept it either)."""
    a = class_axis(op, axis, x.shape.rank)
    if a is None:
        raise TypeError(f"{op}: argument 'axis' must be known when the op is built; got {axis}")
    return a


def _logsumexp(op, x, axis, keepdims):
    if axis is None and x.shape.rank is None and not keepdims:
        x, axis = tf.reshape(x, [-1]), 0  # every axis of an unknown rank: a scalar result
    axes = reduction_axes(op, axis, x.shape.rank)
    if axes and cs.needs_collapse(x):  # above TF's rank limit: merge adjacent axes first
        y, new_axes = cs.collapse(x, axes)
        out = tf.reshape(_logsumexp(op, y, list(new_axes), False),
                         cs.reduced_shape(x, axes, keepdims))
        out.set_shape(cs.static_result_shape(x, axes, keepdims))
        return out
    if axes is None:
        axes_arg = dynamic_axes(op, axis, x)
    elif not axes:  # nothing reduced: log(exp(x)) = x
        return tf.identity(x)
    else:
        if is_reproducible():  # the sum of the exponentials exact: any order, any batch
            return reproducible.logsumexp(x, list(axes), keepdims)
        axes_arg = axes[0] if len(axes) == 1 else list(axes)
    out = _logsumexp_keep(x, axes_arg)
    if not keepdims:
        shape = cs.reduced_shape(x, axes if axes is not None else axes_arg, False)
        static = out.shape
        out = tf.reshape(out, shape)
        if axes is not None and static.rank is not None:
            out.set_shape([d for i, d in enumerate(static) if i not in axes])
    return out


def _ragged_fallback(rt, axis, keepdims):
    return tf.cast(tf.reduce_logsumexp(tf.cast(rt, accumulation_dtype(rt.dtype)), axis,
                                       keepdims), rt.dtype)


_EAGER_LOG_SOFTMAX = tf.function(lambda x, axis: _log_softmax(x, axis), reduce_retracing=True,
                                 autograph=False)


@drop_in("tf.math.reduce_logsumexp",
         "within 2 ulp (exact split of x - max, the sum one precision up or compensated), "
         "where TF's loses digits for terms far below the max",
         "a row of -inf gives -inf with gradient 0 (TF: NaN gradient)")
def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None):
    """Computes ``log(sum(exp(input_tensor), axis))``; drop-in for `tf.reduce_logsumexp`.

    Method: ``m + log1p(s)`` (module doc): exp(x - m) from the exact split
    x - m = hi + lo, the sum s over all but one max entry accumulated one
    precision up (float32 -> float64, float16/bfloat16 -> float32) or, for
    float64, with the compensated sum (TwoSum tree), then log1p and + m rounded
    once. The float32 forward along the last axis on the CPU (outside XLA) runs
    the fused kernel (`safeops.native`), same method.

    Bound: <= 2 ulp of max(|result|, tiny) when no cancellation (float32: ~0.5
    ulp plus the double rounding; measured max 1 bit), i.e. relative error
    <= 2 eps; when m < 0 and log1p(s) ~ -m the result cancels and the error is
    <= 2 eps (|m| + log1p(s)) absolute. The inner sum adds <= eps relative for
    any row length (float64: compensated; a plain float64 sum of n terms adds up
    to ~log2(n) eps). A row that is all -inf gives -inf (TF: -inf too, but NaN
    gradient); a row with +inf gives +inf; NaN propagates.

    Gradient: ``softmax(x)`` along the axis, from e / (1 + s) (within ~2 ulp of
    the exact derivative, no 1 - p cancellation); **0 for all -inf rows** (TF:
    NaN); for a row with +inf, 1/k on its k +inf entries and 0 elsewhere.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype; a RaggedTensor as `safeops.reduce_sum` (padding -inf). Other
    dtypes raise TF's error (`DTypeError`: InvalidArgumentError and TypeError).

    Args:
      input_tensor: float tensor.
      axis: None (all axes), an integer, a list of integers or an integer
        tensor (as `safeops.reduce_sum`).
      keepdims: keep the reduced axes with length 1.
      name: optional name scope.

    Returns:
      The reduced tensor, input dtype.

    Raises:
      TypeError / InvalidArgumentError: non-float input (names the op and
        'input_tensor'); axis errors as `tf.reduce_logsumexp` raises them.

    Example:
      >>> so.reduce_logsumexp([-float('inf'), -float('inf')]).numpy()
      -inf
      >>> float(so.reduce_logsumexp([0.0, -30.0]))   # tf.reduce_logsumexp: 0.0
      9.357622912219837e-14
    """
    op = "safeops.reduce_logsumexp"
    with name_scope(name or "reduce_logsumexp"):
        x = _input(op, "input_tensor", input_tensor)
        if is_ragged(x):
            return ragged_reduce(op, x, axis, keepdims,
                                 lambda d, _, axes, kd: _logsumexp(op, d, axes, kd),
                                 _ragged_fallback, pad=-float("inf"))
        return _logsumexp(op, x, axis, keepdims)


@drop_in("tf.nn.softmax / tf.math.softmax",
         "within 3 ulp for any row (TF's error grows with |x_i - max| and the row length)",
         "a fully masked row (all -inf) gives 0 (TF: NaN)",
         "the gradient of a dominant entry does not cancel (within ~4 ulp)",
         "RaggedTensor along the ragged last axis as TF; a uniform inner axis too")
def softmax(logits, axis=None, name=None):
    """Computes ``exp(x) / sum(exp(x), axis)``; drop-in for `tf.nn.softmax`.

    Method: ``e_i / sum(e)`` with e_i = exp(x_i - m) from the exact split of
    x_i - m (module doc; the sum, which holds the max entries' exact 1s, equals
    1 + s); float16/bfloat16 computed in float32, the denominator
    of float32 inputs summed in float64. float32 along the last axis on the
    CPU (outside XLA): the fused kernel (`safeops.native`), same method, p
    rounded once from the double quotient.

    Bound: <= 3 ulp (2 bits) for any row, measured max 1.6 bits (TF's kernel:
    ``(|x_i - max| + n/2 + 2)`` ulp, 4.8 bits on [-80, 80]); results below the
    smallest normal are flushed to 0 on CPU, as TF does. **A fully masked row
    (all -inf) gives 0** (TF: NaN); a row with +inf gives 1/k on its k +inf
    entries; NaN propagates to its row. The logits are attached to the output
    (``_keras_logits``), so `safeops.losses` (and Keras' losses) recover them in
    eager mode and compute the loss from logits.

    Gradient: the Jacobian-vector product ``p * (g - sum(g p))``, evaluated as
    ``p * ((g - c) - sum((g - c) p))`` with c the value of g at a largest
    p, so the derivative ``p_max (1 - p_max)`` of a dominant entry does not
    cancel (within ~4 ulp of the exact one); 0 for fully masked rows.

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype; a RaggedTensor along its ragged last axis (or a uniform
    inner axis) gives a RaggedTensor. Other dtypes raise TF's error.

    Args:
      logits: float tensor.
      axis: the class axis: an integer, NumPy integer or integer tensor; None
        (default) is the last axis, as TF.
      name: optional name scope.

    Returns:
      A tensor of logits' shape and dtype.

    Raises:
      TypeError / InvalidArgumentError: non-float input (names the op and
        'logits').
      InvalidArgumentError: axis out of range, in every mode (as TF);
        TypeError for a list.

    Example:
      >>> so.softmax([-float('inf'), -float('inf')]).numpy()
      array([0., 0.], dtype=float32)
    """
    op = "safeops.softmax"
    with name_scope(name or "softmax"):
        x = _input(op, "logits", logits)
        if is_ragged(x):
            return ragged_rows(op, x, axis, _softmax, -float("inf"))
        a = _axis(op, x, axis)
        out = reproducible.softmax(x, a % x.shape.rank) if is_reproducible() else _softmax(x, a)
        try:
            out._keras_logits = x
        except AttributeError:
            pass
        return out


@drop_in("tf.nn.log_softmax / tf.math.log_softmax",
         "within 3 ulp; the max entry's -log1p(s) keeps its relative accuracy (TF: 0.0 for "
         "log_softmax([20, 0, 0, 0])[0], exact -6.18e-9)",
         "a fully masked row gives -inf with a finite gradient (TF: NaN)",
         "accepts a RaggedTensor (TF's log_softmax does not)")
def log_softmax(logits, axis=None, name=None):
    """Computes ``x - log(sum(exp(x), axis))``; drop-in for `tf.nn.log_softmax`.

    Method: ``(x_i - m) - log1p(s)`` (module doc), with x_i - m = hi + lo exact
    and, for float32 inputs, the subtraction evaluated in float64 and rounded
    once; float16/bfloat16 computed in float32. float32 along the last axis on
    the CPU (outside XLA): the fused kernel (`safeops.native`), same method.

    Bound: <= 3 ulp (2 bits) of the result for every entry, measured max 1.6 bits;
    in particular the max entry ``-log1p(s)`` keeps its relative accuracy when
    s is tiny (TF: ``log_softmax([[20., 0, 0, 0]])[0, 0]`` is 0.0, exact
    -6.18e-9; 29.7 bits of error in float32, 61.9 in float64). **A fully masked
    row gives -inf everywhere** (TF: NaN); within a row, -inf entries give -inf;
    NaN propagates to its row.

    Gradient: ``g - softmax(x) * sum(g)``; for a max entry (p = 1/(1+s)) it is
    evaluated as ``g s/(1+s) - (sum(g) - g)/(1+s)``, so 1 - p does not cancel.
    Finite for fully masked rows, where softmax is 0 and the gradient is g (TF:
    NaN).

    dtypes: float16, bfloat16 (computed in float32), float32, float64; output in
    the input dtype; a RaggedTensor along its ragged last axis (or a uniform
    inner axis) gives a RaggedTensor. Other dtypes raise TF's error.

    Args:
      logits: float tensor.
      axis: the class axis: an integer, NumPy integer or integer tensor; None
        (default) is the last axis, as TF.
      name: optional name scope.

    Returns:
      A tensor of logits' shape and dtype.

    Raises:
      TypeError / InvalidArgumentError: non-float input (names the op and
        'logits').
      InvalidArgumentError: axis out of range, in every mode (as TF);
        TypeError for a list.

    Example:
      >>> so.log_softmax([-float('inf'), -float('inf')]).numpy()
      array([-inf, -inf], dtype=float32)
      >>> float(so.log_softmax([[20.0, 0.0, 0.0, 0.0]])[0, 0])   # tf.nn.log_softmax: 0.0
      -6.1834608544586445e-09
    """
    op = "safeops.log_softmax"
    with name_scope(name or "log_softmax"):
        x = _input(op, "logits", logits)
        if is_ragged(x):
            return ragged_rows(op, x, axis, _log_softmax, -float("inf"))
        a = _axis(op, x, axis)
        if is_reproducible():
            return reproducible.log_softmax(x, a % x.shape.rank)
        return _log_softmax(x, a)
