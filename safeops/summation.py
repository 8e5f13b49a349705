"""Accurate sums, means, variances and cumulative sums: drop-in for `tf.math.reduce_*`.

Method per dtype (chosen by measurement, see BUILD_NOTES.md):

=============  ==========================================================
input          method
=============  ==========================================================
float16        cast to float32, TF's reduction, one rounding back
bfloat16       cast to float32, TF's reduction, one rounding back
float32        fused kernel (`safeops.native`): widened to double in
               registers, TwoSum in double (Sum2), one rounding back;
               pure-TF fallback: cast to float64, TF's reduction
float64        fused kernel: Sum2 in double (TwoSum per element);
               pure-TF fallback: cascaded TwoSum tree (Sum2 in pairwise
               order), double-double
complex        real and imaginary parts as above; the variance of a
               complex tensor is that of its real and imaginary parts
               added (TF's definition, real result dtype)
others         delegated to TF unchanged (integer sums are exact; TF's
               own errors for bool and string)
RaggedTensor   the dense method on the padded values, or on the flat
               values (`safeops._core.ragged`); TF's output type
=============  ==========================================================

The fused kernel runs on the CPU outside XLA (see `safeops.native` for
when it applies and how it is built); under ``jit_compile=True`` and on a
GPU the pure-TF path runs. An accumulation in a wider type has no
compensation term for XLA to reassociate away; the float64 tree uses
TwoSum, which XLA:CPU compiles as written (fast-math off, checked in
tests/test_summation.py). Axes whose value or rank is unknown while a graph
is built take a dynamic layout (transpose by a computed permutation) with
the same arithmetic.
"""

import tensorflow as tf

from safeops._core import compensated as cs
from safeops._core import exact
from safeops._core.args import dtype_error
from safeops._core.axes import dynamic_axes, reduction_axes, scan_axis
from safeops._core.dtypes import COMPLEX_DTYPES, FLOAT_DTYPES, accumulation_dtype
from safeops._core.eft import prod_dw, two_sum
from safeops._core.elementwise import name_scope
from safeops._core.native import kernels
from safeops._core.ragged import is_ragged, ragged_reduce
from safeops._core.registry import drop_in
from safeops._core import reproducible
from safeops.config import is_reproducible

__all__ = ["cumsum", "reduce_mean", "reduce_std", "reduce_sum", "reduce_variance"]

# dtype membership by hash: a tuple's `in` compares DTypes one by one (about 1 us each
# eagerly, where the whole call of a small reduction is tens of us)
_FLOATS = frozenset(FLOAT_DTYPES)
_COMPLEX = frozenset(COMPLEX_DTYPES)
_EAGER_TENSOR = type(tf.constant(0.0))


def _input(value):
    """A tensor (or RaggedTensor) of value; TF's conversion and TF's errors."""
    if type(value) is _EAGER_TENSOR or isinstance(value, (tf.Tensor, tf.RaggedTensor)):
        return value
    return tf.convert_to_tensor(value)


def _check_numeric(op, arg, x):
    """bool and string raise what TF's kernel raises for them (`DTypeError`:
    InvalidArgumentError and TypeError at once), naming the op and the argument."""
    if x.dtype == tf.bool or x.dtype == tf.string:
        raise dtype_error(op, f"argument '{arg}' must be numeric; got {x.dtype.name}")


def _complex_parts(fn, x):
    return tf.complex(fn(tf.math.real(x)), fn(tf.math.imag(x)))


def _fused_reduce(x, axes, keepdims, mean):
    """The fused kernel's sum or mean (`safeops.native`), or None where it does not apply."""
    if not axes:
        return None
    lib = kernels(x)
    if lib is None:
        return None
    if x.shape.rank == 1 and not keepdims:  # a vector: the kernel takes it as it is
        return lib.safeops_compensated_sum(x, mean=mean)
    y, shape = cs.as_3d(x, axes)
    out = [1 if i in axes else d for i, d in enumerate(shape)] if keepdims else [
        d for i, d in enumerate(shape) if i not in axes]
    return tf.reshape(lib.safeops_compensated_sum(y, mean=mean), cs.shape_of(out))


def _axes(op, x, axis):
    """Static axes, or the checked dynamic axes tensor."""
    axes = reduction_axes(op, axis, x.shape.rank)
    return axes if axes is not None else dynamic_axes(op, axis, x)


def _dense(op, x, axis, keepdims, mean):
    """The sum (or mean) of a floating tensor: fused kernel, double-double tree or widening."""
    axes = _axes(op, x, axis)
    if isinstance(axes, tuple):
        if is_reproducible():  # correctly rounded: the same bits on every path
            reduce = exact.exact_reduce_mean if mean else exact.exact_reduce_sum
            return reduce(x, sorted(axes), keepdims)
        if not axes:
            return tf.identity(x)
        fused = _fused_reduce(x, axes, keepdims, mean=mean)
        if fused is not None:
            return fused
    if x.dtype == tf.float64:
        s, c, n = cs.sum_dd(x, axes, keepdims)
        if not mean:
            return cs.finish(s, c)
        q, r = cs.dd_div(s, c, n)
        return q + r
    acc = accumulation_dtype(x.dtype)
    reduce = tf.reduce_mean if mean else tf.reduce_sum
    return tf.cast(reduce(tf.cast(x, acc), axes, keepdims), x.dtype)


def _dense_sum(op, x, axis, keepdims):
    return _dense(op, x, axis, keepdims, mean=False)


def _dense_mean(op, x, axis, keepdims):
    return _dense(op, x, axis, keepdims, mean=True)


def _masked_mean(x, mask, axes, keepdims):
    """Mean over `axes` of the entries where `mask` (a padded ragged tensor)."""
    n = tf.reduce_sum(tf.cast(mask, x.dtype if x.dtype == tf.float64 else tf.float64), axes,
                      keepdims)
    if x.dtype == tf.float64:
        s, c, _ = cs.sum_dd(x, axes, keepdims)
        q, r = cs.dd_div(s, c, n)
        return q + r
    s = tf.reduce_sum(tf.cast(x, tf.float64), axes, keepdims)
    return tf.cast(s / n, x.dtype)


def _dispatch(op, x, axis, keepdims, dense, masked=None, tf_op=None, real_out=False):
    """The common frontend of the reductions: TF's input space around a float kernel.

    dense(op, x, axis, keepdims) reduces a float tensor; masked(x, mask, axes,
    keepdims) a padded ragged one (None: dense on the padded values);
    tf_op is TF's op, for the dtypes delegated to it.
    """
    if is_ragged(x):
        if x.dtype not in _FLOATS and x.dtype not in _COMPLEX:
            _check_numeric(op, "input_tensor", x)
            return tf_op(x, axis, keepdims)

        def on_dense(d, mask, axes, kd):
            if mask is None or masked is None:
                return _dispatch(op, d, list(axes), kd, dense, masked, tf_op, real_out)
            if d.dtype in _COMPLEX:
                return _complex_parts(lambda v: masked(v, mask, axes, kd), d) if not real_out \
                    else masked(d, mask, axes, kd)
            return masked(d, mask, axes, kd)

        def fallback(rt, ax, kd):
            acc = tf.float64 if rt.dtype in (tf.float32, tf.float64) else tf.float32
            if rt.dtype in _COMPLEX:
                return tf_op(rt, ax, kd)
            return tf.cast(tf_op(tf.cast(rt, acc), ax, kd), rt.dtype)

        return ragged_reduce(op, x, axis, keepdims, on_dense, fallback)
    if axis is None and x.shape.rank is None and not keepdims:
        x, axis = tf.reshape(x, [-1]), 0  # every axis of an unknown rank: a scalar result
    axes = reduction_axes(op, axis, x.shape.rank) if cs.needs_collapse(x) else None
    if axes and (x.dtype in _FLOATS or x.dtype in _COMPLEX):
        # above TF's rank limit for broadcasting kernels: merge adjacent axes first
        y, new_axes = cs.collapse(x, axes)
        out = _dispatch(op, y, list(new_axes), False, dense, masked, tf_op, real_out)
        out = tf.reshape(out, cs.reduced_shape(x, axes, keepdims))
        out.set_shape(cs.static_result_shape(x, axes, keepdims))
        return out
    if x.dtype in _FLOATS:
        return dense(op, x, axis, keepdims)
    if x.dtype in _COMPLEX and not real_out:
        return _complex_parts(lambda v: dense(op, v, axis, keepdims), x)
    _check_numeric(op, "input_tensor", x)
    return tf_op(x, axis, keepdims)


@drop_in("tf.math.reduce_sum",
         "float16/bfloat16/float32 are accumulated in a wider type and float64 with "
         "compensated (double-double) summation: faithful where TF's sum can lose every digit",
         "RaggedTensor input: compensated where TF's ragged sum is not (same output type)")
def reduce_sum(input_tensor, axis=None, keepdims=False, name=None):
    """Accurate sum of elements across dimensions; drop-in for `tf.math.reduce_sum`.

    Method: float32 and float64 on the CPU (outside XLA) run a fused C++
    kernel (`safeops.native`): each element is widened to double in registers
    and added with TwoSum into independent (sum, compensation) lanes, combined
    in a fixed order (Ogita-Rump-Oishi 2005 Sum2 in double), and rounded once.
    Elsewhere (XLA, GPU, no compiler): float32 accumulates in float64 (TF's
    own reduction on the cast tensor) and float64 uses a pairwise tree of
    TwoSum operations whose rounding errors are summed separately (Sum2,
    pairwise). float16/bfloat16 accumulate in float32. One rounding to the
    input dtype in every case.

    Reproducible mode (`safeops.config.reproducible()`, static axes): the
    result is the correctly rounded exact sum, computed with integer
    accumulation by exponent (`docs/reproducibility.md`): the same bits for
    any order, thread count, batch split, device and execution mode.

    Error bound (u = unit roundoff of the input dtype, u64 = 2**-53, n =
    reduced elements, gamma_k = k u / (1 - k u), cond = ``sum|x| / |sum x|``):
      float64: ``|res - s| <= u|s| + gamma_{n-1}^2 sum|x|``: as if computed
      in twice the precision (the pairwise fallback meets the tighter
      ``gamma_{ceil(log2 n)}^2``).
      float32, fused kernel: ``|res - s| <= u|s| + 2 u64 |s| + gamma64_{n-1}^2
      sum|x|``, so the result is *guaranteed* faithful (within 1 ulp) while
      ``gamma64_{n-1}^2 cond <~ u``: condition up to ~5e10 at n = 1e7.
      float32, fallback: ``|res - s| <= u|s| + gamma64_{n-1} sum|x|``, which
      guarantees faithful rounding only for ``cond <~ 2**29 / n``; beyond that
      it is *measured*: within 1 ulp for condition 1e8 at n = 1e5, 1e6 and 1e7
      (tests/test_summation.py and tests/test_native.py, where XLA and the
      fallback run; the n = 1e7 case is marked slow).
      float16/bfloat16: the fallback's bound with float32's accumulation;
      guaranteed faithful for ``cond <~ 2**13 / n``, measured faithful for
      condition 1e3 at n = 2000.
      `tf.reduce_sum` is off by ~15% at condition 1e8 in float32.

    XLA caveat (float64): under ``jit_compile=True`` XLA:CPU contracts a
    multiply feeding an add into an FMA; if the input is an inexact product
    computed in the same compiled function (``so.reduce_sum(x * y)``), the
    TwoSum tree's compensation is corrupted (measured on the condition-1e12
    dot data of tests/test_dot.py: 1.9e9 ulp off eagerly -- the rounded
    products alone -- and 1.4e10 ulp under XLA). Use ``so.dot(x, y)``
    (correctly rounded there in every mode).

    Gradient: the upstream gradient broadcast to the input shape (ones), as
    TF's; finite everywhere. The compensation term is not differentiated.

    dtypes: float16, bfloat16, float32, float64 (output dtype = input dtype);
    complex64/128 sum their real and imaginary parts separately as above;
    other dtypes are delegated to `tf.reduce_sum` (integer sums are exact).
    A RaggedTensor gives TF's output type (dense where the ragged dimensions
    are reduced, ragged where only uniform ones are). NaN/inf propagate as in
    TF; empty reductions give 0.

    Args:
      input_tensor: the tensor to reduce.
      axis: None (all dimensions), an integer, a list of integers or an
        integer tensor, in ``[-rank, rank)``; it may be unknown until the
        graph runs.
      keepdims: if true, retains reduced dimensions with length 1.
      name: optional name scope.

    Returns:
      The reduced tensor, of the input dtype and TF's output shape.

    Raises:
      tf.errors.InvalidArgumentError: a duplicated axis; an out-of-range axis
        eagerly; a bool or string tensor (also a TypeError), as TF.
      ValueError: an out-of-range axis while a graph is built, as TF.
      TypeError: a float axis, as TF.

    Example:
      >>> x = tf.constant([1e8, 1.0, -1e8])
      >>> float(tf.reduce_sum(x)), float(so.reduce_sum(x))
      (0.0, 1.0)
    """
    with name_scope(name or "reduce_sum"):
        x = _input(input_tensor)
        return _dispatch("safeops.reduce_sum", x, axis, keepdims, _dense_sum, None,
                         tf.reduce_sum)


@drop_in("tf.math.reduce_mean",
         "float16/bfloat16/float32 are accumulated in a wider type and float64 with "
         "compensated summation and a double-word division: faithful where TF's mean is not",
         "float32: the mean of values near the largest float does not overflow (TF's: inf)",
         "the mean of no complex values is NaN + NaNj, as for real values (TF's: 0j)")
def reduce_mean(input_tensor, axis=None, keepdims=False, name=None):
    """Accurate mean across dimensions; drop-in for `tf.math.reduce_mean`.

    Method: the sum of `reduce_sum` (fused kernel: the double-word (s, c) of
    Sum2; fallback: float16/bfloat16 in float32, float32 in float64, float64 as
    a double-word from the TwoSum tree) divided by n in the accumulation
    precision (float64: double-word division, the remainder s - q n exact by
    FMA in the kernel or from exact partial products in TF), rounded once to
    the input dtype. In reproducible mode (`safeops.config.reproducible()`,
    static axes) the exact sum is divided exactly and rounded once: the mean
    is correctly rounded.

    Error bound: that of `reduce_sum` divided by n, plus one rounding:
    ``|res - mean| <= u|mean| + (bound of reduce_sum) / n``; float32
    guaranteed faithful on the fused kernel in the range `reduce_sum` states,
    and measured within 1 ulp for condition numbers up to 1e8 on the fallback.
    float32's double accumulation does not overflow: the mean of
    ``[max, max, -1]`` is finite (TF's is inf).

    Gradient: upstream / n broadcast to the input shape, as TF's.

    dtypes: as `reduce_sum` (integers delegated to `tf.reduce_mean`, which
    truncates as TF does; complex by parts; RaggedTensor as `reduce_sum`).
    Empty reductions give NaN, as TF.

    Args:
      input_tensor: the tensor to reduce.
      axis: as `reduce_sum`.
      keepdims: if true, retains reduced dimensions with length 1.
      name: optional name scope.

    Returns:
      The mean, of the input dtype and TF's output shape.

    Raises:
      tf.errors.InvalidArgumentError: as `reduce_sum`.
      ValueError: as `reduce_sum`.
      TypeError: as `reduce_sum`.

    Example:
      >>> x = tf.constant([1e8, 3.0, -1e8])
      >>> float(so.reduce_mean(x))   # tf.reduce_mean gives 0.0
      1.0
    """
    with name_scope(name or "reduce_mean"):
        x = _input(input_tensor)
        return _dispatch("safeops.reduce_mean", x, axis, keepdims, _dense_mean, _masked_mean,
                         tf.reduce_mean)


def _variance_dd(x, axes, keepdims, mask=None):
    """float64 variance as a double word (vh, vl), the mean and n (keepdims, for the gradient)."""
    s, c, n = cs.sum_dd(x, axes, True)
    if mask is not None:
        n = tf.reduce_sum(tf.cast(mask, x.dtype), axes, keepdims=True)
    mh, ml = cs.dd_div(s, c, n)
    dh, dl = two_sum(x, -mh)
    dl = dl - ml
    if mask is not None:
        dh = tf.where(mask, dh, tf.zeros_like(dh))
        dl = tf.where(mask, dl, tf.zeros_like(dl))
    p, pe = prod_dw(dh, dh)  # exact partials: FMA contraction cannot change them
    rest = pe + 2.0 * dh * dl
    ss, sc, _ = cs.sum_dd(p, axes, keepdims)
    sc = sc + tf.reduce_sum(rest, axis=axes, keepdims=keepdims)
    n_out = n if keepdims or mask is None else tf.reshape(n, tf.shape(ss))
    vh, vl = cs.dd_div(ss, sc, n_out)
    return vh, vl, mh + ml, n


def _variance_f64(x, axes, keepdims, std, mask=None):
    @tf.custom_gradient
    def impl(v):
        vh, vl, mean, n = _variance_dd(v, axes, keepdims, mask)
        if std:
            r = tf.sqrt(vh)
            p, pe = prod_dw(r, r)
            corr = ((vh - p) - pe + vl) / (2.0 * r)
            out = r + tf.where((r > 0) & tf.math.is_finite(corr), corr, tf.zeros_like(r))
        else:
            out = vh + vl

        def grad(g):
            shape = cs.keep_shape(v, axes)
            g = g if keepdims else tf.reshape(g, shape)
            o = out if keepdims else tf.reshape(out, shape)
            scale = 2.0 * (v - mean) / n
            if mask is not None:
                scale = tf.where(mask, scale, tf.zeros_like(scale))
            if std:  # d std = d var / (2 std); 0 where std == 0 (constant input)
                safe = tf.where(o > 0, o, tf.ones_like(o))
                return g * tf.where(o > 0, scale / (2.0 * safe), tf.zeros_like(scale))
            return g * scale

        return tf.stop_gradient(out), grad

    return impl(x)


def _variance_acc(x, axes, keepdims, mask=None):
    """The variance of a float16/bfloat16/float32 tensor in its accumulation dtype."""
    acc = accumulation_dtype(x.dtype)
    xa = tf.cast(x, acc)
    if mask is None:
        # static axes as a cached constant: eagerly a Python tuple takes TF's slow path
        ax = cs.shape_of(list(axes)) if isinstance(axes, tuple) else axes
        d = xa - tf.reduce_mean(xa, ax, keepdims=True)
        return tf.reduce_mean(d * d, ax, keepdims)
    m = tf.cast(mask, acc)
    n = tf.reduce_sum(m, axes, keepdims=True)
    d = (xa - tf.reduce_sum(xa, axes, keepdims=True) / n) * m
    var = tf.reduce_sum(d * d, axes, keepdims=True) / n
    return var if keepdims else tf.reshape(var, cs.reduced_shape(x, axes, False))


def _sqrt0(var):
    # double where: gradient 0 (not NaN) where the variance is 0; NaN stays NaN
    pos = var > 0
    return tf.where(pos, tf.sqrt(tf.where(pos, var, tf.ones_like(var))), var)


def _variance(op, x, axis, keepdims, std, mask=None):
    axes = axis if mask is not None else _axes(op, x, axis)
    if mask is None and isinstance(axes, tuple) and is_reproducible():
        return reproducible.variance(x, list(axes), keepdims, std)  # exact means, any order
    if x.dtype in _COMPLEX:  # E|x - mean|^2 = var(re) + var(im), real dtype (TF's definition)
        re, im = tf.math.real(x), tf.math.imag(x)
        if re.dtype == tf.float64:
            var = (_variance_f64(re, axes, keepdims, False, mask)
                   + _variance_f64(im, axes, keepdims, False, mask))
            return _sqrt0(var) if std else var
        var = _variance_acc(re, axes, keepdims, mask) + _variance_acc(im, axes, keepdims, mask)
        return tf.cast(_sqrt0(var) if std else var, re.dtype)
    if x.dtype == tf.float64:
        return _variance_f64(x, axes, keepdims, std, mask)
    var = _variance_acc(x, axes, keepdims, mask)
    return tf.cast(_sqrt0(var) if std else var, x.dtype)


def _tf_variance(x, axis, keepdims):
    return tf.math.reduce_variance(x, axis, keepdims)


def _tf_std(x, axis, keepdims):
    return tf.math.reduce_std(x, axis, keepdims)


_VAR_DOC = """Accurate {what} across dimensions; drop-in for `tf.math.reduce_{tfname}`.

    Method: two passes. The mean is computed accurately (as `reduce_mean`),
    the deviations ``d = x - mean`` and ``sum d**2`` in the accumulation
    precision (float16/bfloat16: float32; float32: float64, where the
    deviations and squares are exact to float64's rounding); float64 keeps the
    mean as a double-word, forms d with TwoSum and d**2 from exact partial
    products and sums with the TwoSum tree (double-double). {extra}Rounded once to the
    input dtype.

    Error bound: within 4 ulp of the exact value (tested: 2 ulp observed) for
    data with ``|mean| / std`` up to 1e6 (e.g. 1e4 + N(0, 1) in float32), where
    `tf.math.reduce_{tfname}` loses most digits. Formally: relative error
    ``<= u + O(n u_acc) + O((|mean|/std)^2 u_acc^2)`` with u_acc the unit
    roundoff of the accumulation (float64: ~u^2). In reproducible mode
    (`safeops.config.reproducible()`, static axes) the mean is correctly
    rounded and the squared deviations (rounded in float64) are summed
    exactly: the same bits in any order, batch split and execution mode;
    relative error ``<= 3 u64 + u64^2 (mean/std)^2`` before the one rounding
    to the input dtype (float32: within 1 ulp).

    Gradient: {grad}; the gradient of the mean term vanishes as in TF.

    dtypes: float16, bfloat16, float32, float64 (output dtype = input dtype);
    complex64/complex128: ``E|x - mean|**2``, the {what} of the real and
    imaginary parts combined (each part as above, one more rounding), result
    float32/float64 as TF's. Other dtypes are delegated to TF (which raises
    TypeError for integers). A RaggedTensor gives TF's output type (the
    padded entries masked out). NaN/inf propagate (NaN); empty reductions
    give NaN.

    Args:
      input_tensor: the tensor to reduce.
      axis: as `reduce_sum`.
      keepdims: if true, retains reduced dimensions with length 1.
      name: optional name scope.

    Returns:
      The {what}, of the input dtype and TF's output shape.

    Raises:
      TypeError: for integer input (TF's error); axis errors as `reduce_sum`.

    Example:
      >>> x = 1e4 + tf.constant([-1.0, 1.0, -1.0, 1.0])
      >>> float(so.reduce_{tfname}(x))
      {example}
    """


def _spread(op, x, axis, keepdims, std):
    """reduce_variance (std=False) or reduce_std (std=True) through the shared dispatch."""
    return _dispatch(
        op, x, axis, keepdims,
        lambda o, v, a, k: _variance(o, v, a, k, std=std),
        lambda v, m, a, k: _variance(op, v, a, k, std, m),
        _tf_std if std else _tf_variance, real_out=True)


@drop_in("tf.math.reduce_variance",
         "two passes around an accurate mean (float64: double-double): within a few ulp where "
         "TF's loses most digits (large mean relative to the spread)")
def reduce_variance(input_tensor, axis=None, keepdims=False, name=None):
    with name_scope(name or "reduce_variance"):
        x = _input(input_tensor)
        return _spread("safeops.reduce_variance", x, axis, keepdims, std=False)


@drop_in("tf.math.reduce_std",
         "two passes around an accurate mean (float64: double-double, Newton-corrected square "
         "root): within a few ulp where TF's loses most digits",
         "the gradient at a constant input (std = 0) is 0, where TF's is NaN")
def reduce_std(input_tensor, axis=None, keepdims=False, name=None):
    with name_scope(name or "reduce_std"):
        x = _input(input_tensor)
        return _spread("safeops.reduce_std", x, axis, keepdims, std=True)


reduce_variance.__doc__ = _VAR_DOC.format(
    what="population variance", tfname="variance", extra="",
    grad="``2 (x - mean) / n`` times the upstream gradient, as TF's", example="1.0")
reduce_std.__doc__ = _VAR_DOC.format(
    what="population standard deviation", tfname="std",
    extra="The square root is taken in the accumulation precision (float64: with "
          "a Newton correction on the double-word variance). ",
    grad="``(x - mean) / (n std)``; at a constant input (std = 0) it is 0, where "
         "TF's gives NaN", example="1.0")


def _shift(c, axis, reverse):
    """c shifted one step along axis (towards the scan direction), zero filled.

    `axis` is a non-negative int or a scalar int32 tensor (dynamic axis)."""
    n = tf.shape(c)[axis]
    rolled = tf.roll(c, shift=-1 if reverse else 1, axis=axis)
    first = n - 1 if reverse else 0
    if isinstance(axis, int):
        mask_shape = [1] * c.shape.rank
        mask_shape[axis] = -1
    else:
        mask_shape = tf.tensor_scatter_nd_update(tf.ones([tf.rank(c)], tf.int32), [[axis]], [-1])
    mask = tf.reshape(tf.equal(tf.range(n), first), mask_shape)
    return tf.where(mask, tf.zeros_like(rolled), rolled)


def _cumsum(x, axis, exclusive, reverse):
    """Inclusive scan with a telescoping correction, in x's dtype (float32 or float64).

    c = TF's cumsum; e_j = (c_{j-1} + x_j) - c_j exactly (TwoSum, then a
    Sterbenz-exact difference); prefix_j = c_j + sum_{i<=j} e_i exactly, for
    any order TF's scan uses. The correction is summed by a second cumsum.
    """
    c = tf.cumsum(x, axis=axis, reverse=reverse)
    prev = tf.stop_gradient(_shift(c, axis, reverse))
    s, e1 = two_sum(prev, tf.stop_gradient(x))
    e = tf.stop_gradient(e1 + (s - c))
    corr = tf.cumsum(e, axis=axis, reverse=reverse)
    inc = c + tf.where(tf.math.is_finite(corr), corr, tf.zeros_like(corr))
    return _shift(inc, axis, reverse) if exclusive else inc


def _dynamic_scan_axis(op, axis, x):
    """A scalar axis known only when the graph runs, checked then (InvalidArgumentError)."""
    rank = tf.rank(x)
    a = tf.cast(axis, tf.int32)
    check = tf.debugging.Assert((a >= -rank) & (a < rank), [f"{op}: axis out of range", a, rank])
    with tf.control_dependencies([check]):
        return tf.math.floormod(a, tf.maximum(rank, 1))


def _scan(op, v, axis, exclusive, reverse):
    ax = scan_axis(op, axis, v.shape.rank)
    if ax is not None and cs.needs_collapse(v):  # above TF's rank limit: scan a 3-d view
        y, _ = cs.as_3d(v, [ax])
        out = tf.reshape(_scan(op, y, 1, exclusive, reverse), tf.shape(v))
        out.set_shape(v.shape)
        return out
    if ax is not None and is_reproducible():  # each prefix correctly rounded
        return exact.exact_cumsum(v, ax, exclusive, reverse)
    if ax is None:
        ax = _dynamic_scan_axis(op, axis, v)
    elif v.shape[ax] == 0:
        return tf.identity(v)
    else:
        lib = kernels(v)
        if lib is not None:
            return _native_scan(lib, v, ax, exclusive, reverse)
    acc = accumulation_dtype(v.dtype)
    return tf.cast(_cumsum(tf.cast(v, acc), ax, exclusive, reverse), v.dtype)


def _native_scan(lib, v, ax, exclusive, reverse):
    """The fused kernel's scan of v along the static axis `ax` (viewed as [outer, n, inner])."""
    if v.shape.rank == 1:  # a vector: the kernel takes it as it is
        return lib.safeops_compensated_cumsum(v, exclusive=exclusive, reverse=reverse)
    static = v.shape.as_list()
    if None in static:
        y, _ = cs.as_3d(v, [ax])
        y = lib.safeops_compensated_cumsum(y, exclusive=exclusive, reverse=reverse)
        return tf.reshape(y, tf.shape(v))
    # static shape: the raw Reshape kernel with cached shape constants (eagerly tf.reshape's
    # wrapper costs more than the scan of a small tensor)
    outer = inner = 1
    for d in static[:ax]:
        outer *= d
    for d in static[ax + 1:]:
        inner *= d
    y = tf.raw_ops.Reshape(tensor=v, shape=cs.shape_of([outer, static[ax], inner]))
    y = lib.safeops_compensated_cumsum(y, exclusive=exclusive, reverse=reverse)
    return tf.raw_ops.Reshape(tensor=y, shape=cs.shape_of(static))


def _ragged_cumsum(op, rt, axis, exclusive, reverse):
    """cumsum of a RaggedTensor along a uniform inner axis or its (last) ragged axis."""
    a = scan_axis(op, axis, rt.shape.rank)
    r = rt.ragged_rank
    if a is not None and a > r:
        return rt.with_flat_values(cumsum(rt.flat_values, a - r, exclusive, reverse))
    if a is not None and a == r == rt.shape.rank - 1 and a > 0:
        out = cumsum(rt.to_tensor(default_value=tf.zeros([], rt.dtype)), a, exclusive, reverse)
        return tf.RaggedTensor.from_tensor(out, lengths=rt.nested_row_lengths(),
                                           row_splits_dtype=rt.row_splits.dtype)
    return tf.cumsum(rt, axis, exclusive=exclusive, reverse=reverse)


@drop_in("tf.math.cumsum",
         "every prefix is accumulated with a compensation (float32 in double on the fused "
         "kernel): faithful where TF's running sum drifts (1e6 x 0.1: TF 100958.34)")
def cumsum(x, axis=0, exclusive=False, reverse=False, name=None):
    """Accurate cumulative sum; drop-in for `tf.math.cumsum`.

    Method: float32 and float64 on the CPU (outside XLA) run a fused C++
    kernel (`safeops.native`): a running TwoSum in double, each prefix
    ``s + c`` rounded once; long scans are cut into fixed blocks whose
    double-word offsets are summed first, so both cores scan. Elsewhere
    float16/bfloat16 are scanned in float32, float32 in float64 and float64 in
    float64, each with a telescoping correction: with c TF's cumsum,
    ``e_j = (c_{j-1} + x_j) - c_j`` is computed exactly (TwoSum plus a
    Sterbenz-exact difference) and ``c + cumsum(e)`` is every prefix to about
    twice the scan precision, whatever order TF's scan adds in. Rounded once
    to the input dtype. In reproducible mode (`safeops.config.reproducible()`,
    a static axis) every prefix is correctly rounded.

    Error bound, per prefix P_j: ``|res_j - P_j| <= u|P_j| + O(j u_acc^2)
    sum_{i<=j} |x_i|`` (u_acc: unit roundoff of the scan dtype, float64 for
    float32 and float64 input, float32 for float16/bfloat16). float32: every
    prefix within 1 ulp for prefix condition up to 1e8 (tested); 1e6 copies of
    0.1 end within 1 ulp of the exact 100000.0015 (tf.cumsum: 100958.34).

    Gradient: the reverse cumulative sum of the upstream gradient (exclusive
    and reverse as TF's). The correction term is not differentiated.

    dtypes: float16, bfloat16, float32, float64; complex by real and
    imaginary parts; other dtypes delegated to `tf.cumsum`. A RaggedTensor
    along its last (ragged) axis or a uniform inner axis stays ragged.

    Args:
      x: the tensor to scan.
      axis: an integer or a scalar integer tensor in ``[-rank, rank)``
        (default 0); it may be unknown until the graph runs.
      exclusive: if true, prefix j excludes x_j (the first output is 0).
      reverse: if true, scan from the end.
      name: optional name scope.

    Returns:
      A tensor of x's shape and dtype.

    Raises:
      tf.errors.InvalidArgumentError: axis out of range or not a scalar, in
        every mode (as `tf.cumsum`, which checks it at run time; here it is
        raised when the op is built where the axis is known); TypeError for a
        float axis; ValueError for None.

    Example:
      >>> x = tf.fill([1000000], 0.1)
      >>> float(so.cumsum(x)[-1])   # tf.cumsum: 100958.34
      100000.0
    """
    op = "safeops.cumsum"
    with name_scope(name or "cumsum"):
        t = _input(x)
        if is_ragged(t):
            return _ragged_cumsum(op, t, axis, exclusive, reverse)
        if t.dtype in _FLOATS:
            return _scan(op, t, axis, exclusive, reverse)
        if t.dtype in _COMPLEX:
            return _complex_parts(lambda v: _scan(op, v, axis, exclusive, reverse), t)
        _check_numeric(op, "x", t)
        return tf.cumsum(t, axis=axis, exclusive=exclusive, reverse=reverse)
