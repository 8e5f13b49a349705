"""Verification toolkit: exact references, error metrics, hard inputs, gradient checks.

Everything safeops claims about accuracy is measured with these functions, so
each of them is itself tested against an independent computation
(`tests/test_testing.py`). They work on NumPy values: TF tensors are accepted
and converted, bfloat16 values are `ml_dtypes.bfloat16` arrays.

Error metrics
  `ulp_distance`, `bits_of_error` (Herbie's metric).
References
  `reference` (mpmath, correctly rounded), `exact_sum`, `exact_dot`.
Hard inputs
  `ill_conditioned_sum`, `ill_conditioned_dot` (Ogita, Rump & Oishi 2005,
  Algorithm 6.1 GenDot and the derived GenSum), `sample_floats`.
Gradients and execution modes
  `check_gradients`, `assert_finite_gradients`, `run_modes`.
"""

import math

import ml_dtypes
import mpmath
import numpy as np
import tensorflow as tf

__all__ = [
    "assert_finite_gradients",
    "bits_of_error",
    "check_gradients",
    "exact_dot",
    "exact_sum",
    "extreme_floats",
    "ill_conditioned_dot",
    "ill_conditioned_sum",
    "reference",
    "round_to_dtype",
    "run_modes",
    "sample_floats",
    "special_floats",
    "ulp_distance",
]

# ---------------------------------------------------------------------------
# Floating-point formats: precision p (significand bits, hidden bit included),
# minimum normal exponent, largest finite value, storage type and its bits.
# ---------------------------------------------------------------------------


class _Format:
    def __init__(self, name, p, emin, emax, np_type, uint, width):
        self.name = name
        self.p = p
        self.emin = emin
        self.max = (2.0 - 2.0 ** (1 - p)) * 2.0**emax
        self.np_type = np_type
        self.uint = uint
        self.width = width


_FORMATS = {
    "float16": _Format("float16", 11, -14, 15, np.float16, np.uint16, 16),
    "bfloat16": _Format("bfloat16", 8, -126, 127, ml_dtypes.bfloat16, np.uint16, 16),
    "float32": _Format("float32", 24, -126, 127, np.float32, np.uint32, 32),
    "float64": _Format("float64", 53, -1022, 1023, np.float64, np.uint64, 64),
}


def _format(dtype):
    if isinstance(dtype, _Format):
        return dtype
    try:
        name = tf.as_dtype(dtype).name
    except TypeError:
        name = np.dtype(dtype).name
    try:
        return _FORMATS[name]
    except KeyError:
        raise TypeError(
            f"safeops.testing: dtype must be float16, bfloat16, float32 or float64; got {name}"
        ) from None


def _as_numpy(x):
    if isinstance(x, (tf.Tensor, tf.Variable)):
        x = x.numpy()
    return np.asarray(x)


def _to_float64(x):
    """Exact conversion of a float array of any of the four formats to float64."""
    x = _as_numpy(x)
    if x.dtype == object:
        raise TypeError("safeops.testing: use round_to_dtype for mpmath values")
    return x.astype(np.float64)


def round_to_dtype(x, dtype):
    """Round values correctly (to nearest, ties to even) to `dtype`.

    Unlike ``x.astype(bfloat16)`` (which rounds float64 through float32 and so
    can round twice), this rounds once, including subnormals and overflow to
    inf. Accepts float arrays (rounded from their exact float64 value) and
    object arrays of `mpmath.mpf` (rounded from their exact value).

    Args:
      x: array-like of floats or of `mpmath.mpf`.
      dtype: float16, bfloat16, float32 or float64.

    Returns:
      A NumPy array of `dtype` (`ml_dtypes.bfloat16` for bfloat16).
    """
    fmt = _format(dtype)
    arr = _as_numpy(x)
    if arr.dtype == object:
        out = np.array([_round_mpf(v, fmt) for v in arr.ravel()], dtype=np.float64)
        return out.reshape(arr.shape).astype(fmt.np_type)
    x64 = arr.astype(np.float64)
    if fmt.name == "float64":
        return x64
    out = np.array(x64, copy=True)
    finite = np.isfinite(x64) & (x64 != 0)
    v = x64[finite]
    _, e = np.frexp(v)  # v = m * 2**e with 0.5 <= |m| < 1: leading bit 2**(e-1)
    q = np.maximum(e - 1, fmt.emin) - (fmt.p - 1)  # exponent of the quantum
    r = np.ldexp(np.rint(np.ldexp(v, -q)), q)  # np.rint rounds ties to even
    r = np.where(np.abs(r) > fmt.max, np.copysign(np.inf, v), r)
    out[finite] = r
    return out.astype(fmt.np_type)


def _round_mpf(v, fmt):
    """Correctly round one mpmath number to `fmt`; returns a float64."""
    v = mpmath.mpf(v) if not isinstance(v, mpmath.mpf) else v
    if mpmath.isnan(v):
        return math.nan
    if mpmath.isinf(v):
        return math.inf if v > 0 else -math.inf
    if v == 0:
        return 0.0
    with mpmath.workprec(max(mpmath.mp.prec, 4 * fmt.p + 64)):
        _, e = mpmath.frexp(v)  # v = m * 2**e, 0.5 <= |m| < 1
        q = max(int(e) - 1, fmt.emin) - (fmt.p - 1)
        scaled = mpmath.ldexp(v, -q)
        n = _nint_even(scaled)
        r = mpmath.ldexp(n, q)
    out = float(r)  # exact: r has at most p significant bits, in range
    if abs(out) > fmt.max:
        return math.copysign(math.inf, out)
    return out


def _nint_even(x):
    """Nearest integer to an mpf, ties to even (exact)."""
    fl = mpmath.floor(x)
    frac = x - fl
    if frac > 0.5:
        return fl + 1
    if frac < 0.5:
        return fl
    return fl if int(fl) % 2 == 0 else fl + 1


# ---------------------------------------------------------------------------
# Error metrics
# ---------------------------------------------------------------------------


def _ordered(x, fmt):
    """Map floats of `fmt` to uint64 keys whose order is the order of the values.

    Consecutive representable values get consecutive keys; +0 and -0 share one.
    """
    bits = x.view(fmt.uint).astype(np.uint64)
    sign = np.uint64(1) << np.uint64(fmt.width - 1)
    mag = bits & (sign - np.uint64(1))
    offset = np.uint64(1) << np.uint64(63)
    neg = (bits & sign) != 0
    return np.where(neg, offset - mag, offset + mag)


def ulp_distance(actual, expected, dtype):
    """Number of representable `dtype` values between `actual` and `expected`.

    Both are first rounded correctly to `dtype` (`round_to_dtype`), so an
    exact reference given in float64 (or as mpmath numbers) can be compared with
    a float32 result. Adjacent values are 1 apart; +0 and -0 are 0 apart; two
    NaNs, or two infinities of the same sign, are 0 apart. NaN or inf against a
    finite value, NaN against inf, and +inf against -inf count as the maximum,
    ``2**width - 1``.

    Args:
      actual: array-like (NumPy, TF tensor, Python floats).
      expected: array-like of the same (broadcastable) shape.
      dtype: float16, bfloat16, float32 or float64.

    Returns:
      A `np.uint64` array (0-d for scalars) of distances.
    """
    fmt = _format(dtype)
    a = round_to_dtype(actual, fmt)
    b = round_to_dtype(expected, fmt)
    a, b = np.broadcast_arrays(a, b)
    # np.ascontiguousarray makes a 0-d array 1-d: reshape back so scalars give a 0-d result
    ka = _ordered(np.ascontiguousarray(a), fmt).reshape(a.shape)
    kb = _ordered(np.ascontiguousarray(b), fmt).reshape(b.shape)
    dist = np.where(ka > kb, ka - kb, kb - ka)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    worst = np.uint64(2**fmt.width - 1)
    both_nan = np.isnan(a64) & np.isnan(b64)
    same_inf = np.isinf(a64) & np.isinf(b64) & (np.sign(a64) == np.sign(b64))
    any_bad = ~np.isfinite(a64) | ~np.isfinite(b64)
    dist = np.where(any_bad, worst, dist)
    dist = np.where(both_nan | same_inf, np.uint64(0), dist)
    return dist.astype(np.uint64)


def bits_of_error(actual, expected, dtype):
    """Herbie's metric: ``log2(1 + ulp_distance(actual, expected, dtype))``.

    0 means exact (correctly rounded), 1 means one ulp off, and the maximum is
    the format's width (16, 32 or 64) for NaN/inf against finite values.

    Args:
      actual, expected, dtype: as for `ulp_distance`.

    Returns:
      A float64 array of the same shape as the broadcast inputs.
    """
    return np.log2(1.0 + ulp_distance(actual, expected, dtype).astype(np.float64))


# ---------------------------------------------------------------------------
# High-precision references
# ---------------------------------------------------------------------------


def reference(mp_fn, *arrays, dtype, dps=60):
    """Evaluate `mp_fn` elementwise in mpmath at `dps` digits, rounded to `dtype`.

    Inputs are converted exactly to `mpmath.mpf`; the result is rounded once,
    correctly, to `dtype`. A result that is complex (e.g. log of a negative
    number) or raises becomes NaN.

    Args:
      mp_fn: a function of mpmath numbers (``lambda x: mpmath.log1p(x)``).
      *arrays: broadcastable array-likes of inputs.
      dtype: the dtype to round to.
      dps: decimal digits of working precision (default 60).

    Returns:
      A NumPy array of `dtype`.
    """
    fmt = _format(dtype)
    arrs = np.broadcast_arrays(*[_to_float64(a) for a in arrays])
    shape = arrs[0].shape if arrs else ()
    flat = [a.ravel() for a in arrs]
    out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
    with mpmath.workdps(dps):
        for i in range(out.size):
            args = [mpmath.mpf(float(a[i])) for a in flat]
            try:
                val = mp_fn(*args)
            except (ValueError, ZeroDivisionError, OverflowError):
                out[i] = math.nan
                continue
            if isinstance(val, mpmath.mpc):
                out[i] = _round_mpf(val.real, fmt) if val.imag == 0 else math.nan
            else:
                out[i] = _round_mpf(val, fmt)
    return out.reshape(shape).astype(fmt.np_type)


_EXACT_PREC = 2300  # bits: sums of float64 values between 2**-1074 and 2**1024 are exact


def _nonfinite_sum(v):
    if np.isnan(v).any() or (np.isposinf(v).any() and np.isneginf(v).any()):
        return math.nan
    return math.inf if np.isposinf(v).any() else -math.inf


def _exact_sum_mpf(v):
    """Exact sum of a 1-D float64 array as an mpf (or a non-finite float).

    Repeated `math.fsum` (each correctly rounded) peels the exact sum into a
    non-overlapping expansion t1 + t2 + ..., added exactly in mpmath.
    """
    v = np.asarray(v, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        return _nonfinite_sum(v)
    terms = []
    while True:
        t = math.fsum(np.concatenate([v, -np.asarray(terms, dtype=np.float64)]))
        if t == 0.0:
            break
        terms.append(t)
    with mpmath.workprec(_EXACT_PREC):
        total = mpmath.mpf(0)
        for t in terms:
            total += mpmath.mpf(t)
    return total


def _finish(values, shape, dtype):
    fmt = _format(dtype if dtype is not None else "float64")
    out = np.array([_round_mpf(v, fmt) if isinstance(v, mpmath.mpf) else v for v in values],
                   dtype=np.float64).reshape(shape)
    out = out.astype(fmt.np_type)
    return out[()] if out.ndim == 0 else out


def exact_sum(x, axis=None, dtype=None):
    """The exact sum of `x`, correctly rounded once to `dtype` (default float64).

    The sum is computed exactly (repeated `math.fsum` into a non-overlapping
    expansion, added in mpmath) and rounded once, so it is the reference a
    faithfully or correctly rounded float32/float64 sum is compared with.
    NaN/inf inputs give NaN/inf as IEEE addition would.

    Args:
      x: array-like of any of the four float formats.
      axis: None (all elements) or an int.
      dtype: the dtype of the result (default float64).

    Returns:
      A NumPy scalar or array.
    """
    x64 = _to_float64(x)
    if axis is None:
        return _finish([_exact_sum_mpf(x64)], (), dtype)
    moved = np.moveaxis(x64, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1]) if moved.size else moved.reshape(-1, moved.shape[-1])
    return _finish([_exact_sum_mpf(r) for r in rows], moved.shape[:-1], dtype)


_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitter for float64


def _exact_products(x, y):
    """Float64 arrays whose elementwise sum is exactly x*y (Dekker's TwoProduct).

    Products that would overflow or whose error term underflows are returned
    separately as mpf values (exact in mpmath).
    """
    p = x * y
    risky = (~np.isfinite(p)) | (np.abs(p) < 2.0**-960) & (p != 0) | (np.abs(x) > 2.0**995) | (
        np.abs(y) > 2.0**995)
    safe_x, safe_y = np.where(risky, 0.0, x), np.where(risky, 0.0, y)
    p = safe_x * safe_y

    def split(a):
        c = _SPLIT * a
        hi = c - (c - a)
        return hi, a - hi

    xh, xl = split(safe_x)
    yh, yl = split(safe_y)
    err = xl * yl - (((p - xh * yh) - xl * yh) - xh * yl)
    extra = []
    with mpmath.workprec(_EXACT_PREC):
        for a, b in zip(x[risky], y[risky]):
            extra.append(mpmath.mpf(float(a)) * mpmath.mpf(float(b)))
    return p, err, extra


def _exact_dot_mpf(x, y):
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float(np.dot(x, y))
    p, err, extra = _exact_products(x, y)
    total = _exact_sum_mpf(np.concatenate([p, err]))
    if extra:
        with mpmath.workprec(_EXACT_PREC):
            total = mpmath.mpf(total) + mpmath.fsum(extra)
    return total


def exact_dot(x, y, dtype=None):
    """The exact inner product of `x` and `y` along the last axis, rounded once.

    Products are split exactly (Dekker's TwoProduct in float64, with mpmath for
    products out of its range) and summed exactly as in `exact_sum`.

    Args:
      x, y: array-likes of the same shape (batched over leading axes).
      dtype: the dtype of the result (default float64).

    Returns:
      A NumPy scalar (1-D inputs) or an array of the leading shape.
    """
    x64, y64 = np.broadcast_arrays(_to_float64(x), _to_float64(y))
    if x64.ndim <= 1:
        return _finish([_exact_dot_mpf(x64.ravel(), y64.ravel())], (), dtype)
    xs = x64.reshape(-1, x64.shape[-1])
    ys = y64.reshape(-1, y64.shape[-1])
    return _finish([_exact_dot_mpf(a, b) for a, b in zip(xs, ys)], x64.shape[:-1], dtype)


# ---------------------------------------------------------------------------
# Ill-conditioned inputs (Ogita, Rump & Oishi 2005, Section 6)
# ---------------------------------------------------------------------------

_TAIL_MAX = 256  # cancelling entries generated one by one with an exact running sum


def _gen_sum_once(n, b, f, fmt, rng):
    """One GenSum draw: exponents spread over `b` bits, final sum of order 2**f."""
    m = max(1, min(n // 2, _TAIL_MAX))
    k = n - m
    e = np.rint(rng.random(k) * b)
    e[0] = np.rint(b)
    if k > 1:
        e[-1] = 0.0
    head = round_to_dtype((2.0 * rng.random(k) - 1.0) * np.exp2(e), fmt).astype(np.float64)
    running = _exact_sum_mpf(head)
    tail = np.empty(m, dtype=np.float64)
    tail_e = np.rint(np.linspace(b, f, m))
    signs = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    mags = 0.5 + 0.5 * rng.random(m)  # |target| in [0.5, 1) * 2**e: no accidental zero sum
    with mpmath.workprec(_EXACT_PREC):
        running = mpmath.mpf(running)
        for i in range(m):
            target = mpmath.mpf(float(signs[i] * mags[i] * 2.0 ** tail_e[i]))
            tail[i] = _round_mpf(target - running, fmt)
            running += mpmath.mpf(tail[i])
    x = np.concatenate([head, tail])
    return x[rng.permutation(n)]


def _gen_dot_once(n, b, f, fmt, rng):
    """One GenDot draw (Algorithm 6.1): exponent range `b` bits, result of order 2**f."""
    m = max(1, min(n // 2, _TAIL_MAX))
    k = n - m
    e = np.rint(rng.random(k) * b / 2.0)
    e[0] = np.rint(b / 2.0) + 1.0
    if k > 1:
        e[-1] = 0.0
    x = np.empty(n)
    y = np.empty(n)
    x[:k] = round_to_dtype((2.0 * rng.random(k) - 1.0) * np.exp2(e), fmt).astype(np.float64)
    y[:k] = round_to_dtype((2.0 * rng.random(k) - 1.0) * np.exp2(e), fmt).astype(np.float64)
    running = _exact_dot_mpf(x[:k], y[:k])
    tail_e = np.rint(np.linspace(b / 2.0, f, m))
    with mpmath.workprec(_EXACT_PREC):
        running = mpmath.mpf(running)
        for i in range(m):
            j = k + i
            x[j] = _round_mpf(mpmath.mpf(float((2.0 * rng.random() - 1.0) * 2.0 ** tail_e[i])), fmt)
            if x[j] == 0.0:
                x[j] = 2.0 ** tail_e[i]
            sign = -1.0 if rng.random() < 0.5 else 1.0
            target = mpmath.mpf(float(sign * (0.5 + 0.5 * rng.random()) * 2.0 ** tail_e[i]))
            y[j] = _round_mpf((target - running) / mpmath.mpf(x[j]), fmt)
            running += mpmath.mpf(x[j]) * mpmath.mpf(y[j])
    perm = rng.permutation(n)
    return x[perm], y[perm]


def _sum_condition(x):
    s = _exact_sum_mpf(x)
    a = _exact_sum_mpf(np.abs(x))
    with mpmath.workprec(_EXACT_PREC):
        return float(mpmath.mpf(a) / abs(mpmath.mpf(s))) if s != 0 else math.inf


def _dot_condition(x, y):
    d = _exact_dot_mpf(x, y)
    a = _exact_dot_mpf(np.abs(x), np.abs(y))
    with mpmath.workprec(_EXACT_PREC):
        return float(2 * mpmath.mpf(a) / abs(mpmath.mpf(d))) if d != 0 else math.inf


def _calibrated(generate, condition, n, cond, fmt, seed):
    """Draw with exponent range b = log2(cond), then correct by the miss, a few times.

    The miss (log2 of achieved / target) is taken off b; once b reaches its floor
    of 1 bit (small targets at large n, where n random entries alone give a
    condition of order n), it raises f, the exponent of the final sum, instead.
    Each try reuses the same seed, so the output is a deterministic function of
    the arguments; the try whose achieved condition is closest (in log) wins.
    """
    if n < 4:
        raise ValueError(f"safeops.testing: n must be at least 4, got {n}")
    if not cond > 1:
        raise ValueError(f"safeops.testing: cond must be > 1, got {cond}")
    b, f = math.log2(cond), 0.0
    best = None
    for _ in range(8):
        out = generate(n, b, f, fmt, np.random.default_rng(seed))
        achieved = condition(*out) if isinstance(out, tuple) else condition(out)
        miss = math.log2(achieved) - math.log2(cond)
        if best is None or abs(miss) < abs(best[2]):
            best = (out, achieved, miss)
        if abs(miss) < 1.0:
            break
        if b - miss >= 1.0:
            b -= miss
        else:
            f += miss - (b - 1.0)
            b = 1.0
    return best[0], best[1]


def ill_conditioned_sum(n, cond, dtype, seed=0):
    """A vector whose sum has condition number about `cond`, with its exact sum.

    GenSum, derived from Ogita, Rump & Oishi, "Accurate sum and dot product",
    SIAM J. Sci. Comput. 26(6), 2005, Algorithm 6.1 (GenDot): the first n - m
    entries are random with exponents spread over [0, b]; the last m entries
    (m = min(n/2, 256)) are chosen one by one, against the exact running sum
    (mpmath), so that the partial sums cancel down to a value of order 1. The
    vector is then permuted. b starts at log2(cond) and is corrected by the
    measured miss (deterministically, same seed), so the achieved condition
    ``sum|x| / |sum x|`` is close to `cond`.

    Args:
      n: length (>= 4).
      cond: target condition number (> 1).
      dtype: float16, bfloat16, float32 or float64 (the entries' dtype).
      seed: random seed.

    Returns:
      ``(x, exact, achieved_cond)``: x a NumPy array of `dtype`, exact the exact
      sum correctly rounded to float64, achieved_cond the exact condition
      number (as a float).
    """
    fmt = _format(dtype)
    x, achieved = _calibrated(_gen_sum_once, _sum_condition, n, cond, fmt, seed)
    return x.astype(fmt.np_type), exact_sum(x), achieved


def ill_conditioned_dot(n, cond, dtype, seed=0):
    """Vectors whose dot product has condition number about `cond` (GenDot).

    Ogita, Rump & Oishi 2005, Algorithm 6.1: the first half of x and y has
    exponents spread over [0, b/2]; each later y_i is chosen so that the exact
    running dot product (mpmath) cancels towards a value 2**e_i with e_i falling
    linearly from b/2 to 0 (the cancelling tail is capped at 256 entries for
    large n). Condition: ``2 |x|.|y| / |x.y|``, as in the paper.

    Args:
      n: length (>= 4).
      cond: target condition number (> 1).
      dtype: the entries' dtype.
      seed: random seed.

    Returns:
      ``(x, y, exact, achieved_cond)`` with exact the exact dot product
      correctly rounded to float64.
    """
    fmt = _format(dtype)
    (x, y), achieved = _calibrated(_gen_dot_once, _dot_condition, n, cond, fmt, seed)
    return x.astype(fmt.np_type), y.astype(fmt.np_type), exact_dot(x, y), achieved


def sample_floats(dtype, n, lo, hi, seed=0):
    """`n` floats of `dtype` in [lo, hi], uniform over bit patterns, not values.

    As Herbie samples: every representable value in the range is equally
    likely, so tiny, huge and subnormal values (and both signs when lo < 0 < hi)
    all appear. NaN is never drawn; lo and hi may be infinite.

    Args:
      dtype: float16, bfloat16, float32 or float64.
      n: number of samples.
      lo, hi: bounds (rounded to `dtype`), lo <= hi.
      seed: random seed.

    Returns:
      A NumPy array of `dtype`.
    """
    fmt = _format(dtype)
    if not lo <= hi:
        raise ValueError(f"safeops.testing.sample_floats: need lo <= hi, got {lo} > {hi}")
    bounds = round_to_dtype(np.array([lo, hi], dtype=np.float64), fmt)
    keys = _ordered(bounds, fmt)
    rng = np.random.default_rng(seed)
    offset = np.uint64(1) << np.uint64(63)
    lo_k = int(keys[0]) - int(offset)
    hi_k = int(keys[1]) - int(offset)
    draws = rng.integers(lo_k, hi_k, size=n, endpoint=True, dtype=np.int64)
    sign = np.uint64(1) << np.uint64(fmt.width - 1)
    mag = np.abs(draws).astype(np.uint64)
    bits = np.where(draws < 0, mag | sign, mag).astype(fmt.uint)
    return bits.view(fmt.np_type)


def special_floats(dtype, extra=()):
    """The edge values of `dtype`: 0, the smallest subnormal, the smallest normal, 1, the
    largest finite value and any `extra` values, each with both signs (a Python list).

    Args:
      dtype: float16, bfloat16, float32 or float64.
      extra: more magnitudes to include (e.g. 0.5 for rounding ops).

    Returns:
      A list of Python floats, exactly representable in `dtype`.
    """
    info = ml_dtypes.finfo(_format(dtype).np_type)
    v = [0.0, float(info.smallest_subnormal), float(info.tiny), 1.0, float(info.max)]
    v += [float(e) for e in extra]
    return v + [-a for a in v]


def extreme_floats(dtype, min_size=1, max_size=24, extra=()):
    """A hypothesis strategy for property tests: NumPy arrays of `dtype` holding any finite
    values (hypothesis favours 0, subnormals and +-max) followed by `special_floats`.

    bfloat16 draws are float32 values rounded to bfloat16, those beyond bfloat16's largest
    value clamped to it. Needs hypothesis (the `test` extra); it is imported here only.

    Args:
      dtype: float16, bfloat16, float32 or float64.
      min_size, max_size: how many drawn values precede the special ones.
      extra: passed to `special_floats`.

    Returns:
      A `hypothesis.strategies.SearchStrategy` of NumPy arrays of `dtype`.
    """
    from hypothesis import strategies as st

    fmt = _format(dtype)
    big = float(ml_dtypes.finfo(fmt.np_type).max)
    width = {"float16": 16, "bfloat16": 32, "float32": 32, "float64": 64}[fmt.name]
    elem = st.floats(width=width, allow_nan=False, allow_infinity=False)
    specials = special_floats(dtype, extra)
    return st.lists(elem, min_size=min_size, max_size=max_size).map(
        lambda v: np.clip(np.array(v + specials, np.float64), -big, big).astype(fmt.np_type))


# ---------------------------------------------------------------------------
# Gradients and execution modes
# ---------------------------------------------------------------------------


def _loss_and_grads(fn, xs, weights):
    with tf.GradientTape() as tape:
        for x in xs:
            tape.watch(x)
        out = fn(*xs)
        loss = tf.reduce_sum(tf.cast(out, tf.float64) * weights)
    grads = tape.gradient(loss, xs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return loss, grads


def check_gradients(fn, *xs, delta=None, seed=0):
    """Max relative error between `fn`'s tape gradient and float64 central differences.

    Inputs are converted to float64. The scalar ``L = sum(w * fn(*xs))`` with
    fixed random weights w is differentiated by the tape and by central
    differences ``(L(x + h e_i) - L(x - h e_i)) / 2h`` for every element, with
    ``h = delta * max(1, |x_i|)`` (default delta = eps**(1/3) ~ 6e-6, which
    balances truncation and rounding error). The error of element i is
    ``|g_i - fd_i| / max(|fd_i|, 1e-6 * max_j |fd_j|, tiny)``; the maximum over
    all elements of all inputs is returned. Expect ~1e-9 for a correct gradient
    of a smooth function and O(1) for a wrong one.

    Args:
      fn: a function of float64 tensors returning a tensor.
      *xs: array-likes, the point to check at.
      delta: relative step (default eps**(1/3)).
      seed: seed of the random output weights.

    Returns:
      A float, the maximum relative error.
    """
    xs = [tf.constant(np.asarray(_as_numpy(x), dtype=np.float64)) for x in xs]
    out_shape = tf.shape(fn(*xs))
    weights = tf.constant(np.random.default_rng(seed).uniform(0.5, 1.5, size=out_shape.numpy()))
    _, grads = _loss_and_grads(fn, xs, weights)
    delta = np.finfo(np.float64).eps ** (1.0 / 3.0) if delta is None else delta

    def loss_at(vals):
        return float(tf.reduce_sum(tf.cast(fn(*vals), tf.float64) * weights))

    tape_all, fd_all = [], []
    for k, x in enumerate(xs):
        base = x.numpy()
        flat = base.ravel()
        fd = np.empty_like(flat)
        for i in range(flat.size):
            h = delta * max(1.0, abs(flat[i]))
            h = (flat[i] + h) - flat[i]  # representable step
            plus, minus = flat.copy(), flat.copy()
            plus[i] += h
            minus[i] -= h
            vp = list(xs)
            vp[k] = tf.constant(plus.reshape(base.shape))
            vm = list(xs)
            vm[k] = tf.constant(minus.reshape(base.shape))
            fd[i] = (loss_at(vp) - loss_at(vm)) / (2.0 * h)
        fd_all.append(fd)
        tape_all.append(np.asarray(grads[k], dtype=np.float64).ravel())
    fd = np.concatenate(fd_all)
    g = np.concatenate(tape_all)
    if not np.all(np.isfinite(g)):
        return math.inf
    floor = max(1e-6 * float(np.max(np.abs(fd), initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(g - fd) / np.maximum(np.abs(fd), floor), initial=0.0))


def assert_finite_gradients(fn, *xs):
    """Raise `AssertionError` unless `fn`'s output and every input gradient are finite.

    Inputs keep their dtype (use this to check float32 behaviour at extreme
    values). A gradient that is None (input not connected) is reported too.

    Args:
      fn: a function of tensors.
      *xs: array-likes or tensors.

    Returns:
      The list of gradients as NumPy arrays.
    """
    xs = [tf.convert_to_tensor(x) for x in xs]
    with tf.GradientTape() as tape:
        for x in xs:
            tape.watch(x)
        out = fn(*xs)
        loss = tf.reduce_sum(out)
    out_np = np.asarray(tf.cast(out, tf.float64))
    if not np.all(np.isfinite(out_np)):
        raise AssertionError(f"non-finite output at {np.argwhere(~np.isfinite(out_np))[:5].tolist()}")
    grads = tape.gradient(loss, xs)
    result = []
    for k, g in enumerate(grads):
        if g is None:
            raise AssertionError(f"gradient of input {k} is None")
        g = np.asarray(tf.cast(g, tf.float64))
        if not np.all(np.isfinite(g)):
            bad = np.argwhere(~np.isfinite(g))[:5].tolist()
            raise AssertionError(f"non-finite gradient of input {k} at {bad}")
        result.append(g)
    return result


def run_modes(fn, *args):
    """Run `fn(*args)` eagerly, in `tf.function`, and in `tf.function(jit_compile=True)`.

    Args:
      fn: a function of tensors.
      *args: its arguments.

    Returns:
      A dict ``{"eager": ..., "function": ..., "jit_compile": ...}`` of NumPy
      results (nested structures are kept).

    Raises:
      tf.errors.InvalidArgumentError: if XLA cannot compile `fn` (e.g. it holds
        a `tf.numpy_function`): the third mode is really compiled, never a
        silent fallback to the graph.
    """
    def to_np(structure):
        return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, structure)

    return {
        "eager": to_np(fn(*args)),
        "function": to_np(tf.function(fn)(*args)),
        "jit_compile": to_np(tf.function(fn, jit_compile=True)(*args)),
    }
