"""The fused correctly rounded sum (safeops/native/exact.cc) against the pure-TF accumulator.

Every result is checked three ways, bit for bit: the fused kernel, the pure-TF
path (``SAFEOPS_NATIVE=0``, the path XLA and GPUs run) and an exact reference
independent of both -- the exact `Fraction` sum rounded once by `_round`
below (`math.fsum` as well for float64). Rows are long enough for the
kernel's vector filter and its segments to run, and built so that its
certification must fail on some (ties, sums near a midpoint, subnormal and
overflowing results, exact cancellation), which sends them to its exact pass.
"""

import math
import os
import subprocess
import sys
import tempfile
import textwrap
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from test_native_support import edge_sums, require_kernels, tie_cases
import tensorflow as tf

import safeops as so
from safeops import native, testing
from safeops._core import exact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NP = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
      "float64": np.float64}
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
DTYPES = list(NP)


@pytest.fixture(autouse=True)
def _kernels(monkeypatch):
    require_kernels(monkeypatch)


def _round(fr, dtype):
    """The Fraction fr rounded once to nearest-even in dtype (gradual underflow, overflow to
    inf as round-to-nearest gives), from the format's parameters alone."""
    fi = ml_dtypes.finfo(NP[dtype])
    p = fi.nmant + 1
    if fr == 0:
        return NP[dtype](0.0)
    a = abs(fr)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2**e <= a < 2**(e + 2)
    if Fraction(2) ** e > a:
        e -= 1
    if Fraction(2) ** (e + 1) <= a:
        e += 1
    quantum = Fraction(2) ** (max(e, fi.minexp) - p + 1)
    m = a / quantum
    k = m.numerator // m.denominator
    rest = m - k
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and k % 2 == 1):
        k += 1
    value = k * quantum
    out = math.inf if value >= Fraction(2) ** fi.maxexp else float(value)
    return NP[dtype](-out if fr < 0 else out)


def _exact(row):
    """The exact sum of finite values as a Fraction (integers scaled by 2**1074)."""
    total = 0
    for v in np.asarray(row, np.float64).ravel().tolist():
        num, den = v.as_integer_ratio()
        total += num * ((1 << 1074) // den)
    return Fraction(total, 1 << 1074)


def _reference(row, dtype):
    """Correctly rounded sum of a row of finite values (only -0.0s give -0.0)."""
    row = np.asarray(row)
    if row.size and np.all((row == 0) & np.signbit(row)):
        return NP[dtype](-0.0)
    return _round(_exact(row), dtype)


def _bits(a):
    a = np.asarray(a)
    return a.view(UINT[a.dtype.itemsize])


def _same_bits(got, want):
    got = np.asarray(got)
    np.testing.assert_array_equal(_bits(got), _bits(np.asarray(want, dtype=got.dtype)))


def _graph_ops(fn, *args, jit_compile=False):
    graph = tf.function(fn, jit_compile=jit_compile).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


def _both(monkeypatch, fn, *args):
    """fn's results (NumPy) on the fused kernel and on the pure-TF path, in graph mode; the
    graphs are checked to contain, or not, the kernel."""
    out = []
    for setting in ("1", "0"):
        monkeypatch.setenv("SAFEOPS_NATIVE", setting)
        f = tf.function(fn)
        concrete = f.get_concrete_function(*args)
        has_kernel = any(op.type == "SafeopsExactSum" for op in concrete.graph.get_operations())
        assert has_kernel == (setting == "1")
        out.append(tf.nest.map_structure(lambda t: t.numpy(), concrete(*args)))
    monkeypatch.delenv("SAFEOPS_NATIVE")
    return out


def _wide(rng, rows, n, lo, hi, dtype, tweak):
    """Rows with exponents over [lo, hi] whose big halves cancel up to a relative `tweak`."""
    x = rng.standard_normal((rows, n)) * 10.0 ** rng.uniform(lo, hi, (rows, n))
    half = n // 2
    x[:, half:2 * half] = -x[:, :half] * rng.choice([1.0, 1.0 + tweak], (rows, half))
    return rng.permuted(x, axis=1).astype(NP[dtype])


# -------------------------------------------------------------------- correct rounding

@pytest.mark.parametrize("dtype,cond", [("float64", c) for c in (1e2, 1e8, 1e16, 1e32, 1e100,
                                                                 1e300)]
                         + [("float32", c) for c in (1e4, 1e12, 1e30)])
def test_any_condition(monkeypatch, dtype, cond):
    """Sums of condition 1e2 to 1e300 (GenSum): where the filter's bound is too wide, the exact
    pass decides; a filter that trusted its double-double here would be wrong."""
    rows = [testing.ill_conditioned_sum(400, cond, dtype, seed=s)[0] for s in range(4)]
    x = tf.constant(np.stack(rows))
    fused, pure = _both(monkeypatch, lambda v: exact.exact_reduce_sum(v, [1]), x)
    want = [_reference(r, dtype) for r in rows]
    _same_bits(fused, want)
    _same_bits(pure, want)
    if dtype == "float64":
        _same_bits(fused, [math.fsum(r) for r in rows])


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_rows_every_dtype(monkeypatch, dtype):
    """Long rows (the vector filter, several blocks) of any exponent range and heavy
    cancellation, sums and means."""
    rng = np.random.default_rng(len(dtype))
    lo, hi = {"float16": (-3, 3), "bfloat16": (-30, 30), "float32": (-30, 30),
              "float64": (-250, 250)}[dtype]
    p = ml_dtypes.finfo(NP[dtype]).nmant + 1
    x = _wide(rng, 6, 1500, lo, hi, dtype, 2.0 ** -(p - 4))
    fused, pure = _both(monkeypatch, lambda v: (exact.exact_reduce_sum(v, [1]),
                                                exact.exact_reduce_mean(v, [1])), x)
    _same_bits(fused[0], [_reference(r, dtype) for r in x])
    _same_bits(fused[1], [_round(_exact(r) / len(r), dtype) for r in x])
    _same_bits(pure[0], fused[0])
    _same_bits(pure[1], fused[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_and_near_ties(monkeypatch, dtype):
    """Exact ties round to even, and sums a hair off a midpoint round away from it, inside
    rows of cancelling noise (the filter cannot decide them: the exact pass does)."""
    t = NP[dtype]
    p = ml_dtypes.finfo(t).nmant + 1
    rng = np.random.default_rng(p)
    heads, want = tie_cases(p)
    rows = []
    for head in heads:
        noise = (rng.standard_normal(300) * 8.0).astype(t).astype(np.float64)
        rows.append(rng.permutation(np.concatenate([head, noise, -noise,
                                                    np.zeros(8 - len(head))])))
    x = np.array(rows).astype(t)
    fused, pure = _both(monkeypatch, lambda v: exact.exact_reduce_sum(v, [1]), x)
    _same_bits(fused, np.array(want, t))
    _same_bits(fused, [_reference(r, dtype) for r in x])
    _same_bits(pure, fused)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_overflow_and_special_values(monkeypatch, dtype):
    t = NP[dtype]
    fi = ml_dtypes.finfo(t)
    big = float(fi.max)
    finite = edge_sums(fi)
    inf, nan = math.inf, math.nan
    special = [[inf, 1.0], [-inf, 1.0], [inf, -inf], [nan, 1.0, inf], [inf, inf, -0.0],
               [-0.0, -0.0], [-0.0, 0.0]]
    n = 200  # padded with zeros of the sign that keeps each row's IEEE sum
    pad = [-0.0 if r and all(v == 0 and math.copysign(1, v) < 0 for v in r) else 0.0
           for r in finite + special]
    rows = [r + [z] * (n - len(r)) for r, z in zip(finite + special, pad)]
    x = tf.constant(np.array(rows).astype(t))
    fused, pure = _both(monkeypatch, lambda v: exact.exact_reduce_sum(v, [1]), x)
    _same_bits(pure, fused)
    _same_bits(fused[:len(finite)], [_reference(np.array(r).astype(t), dtype)
                                     for r in rows[:len(finite)]])
    got = fused[len(finite):].astype(np.float64)
    assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2]) and np.isnan(got[3])
    assert np.isposinf(got[4])
    assert got[5] == 0 and np.signbit(got[5]) and got[6] == 0 and not np.signbit(got[6])
    assert np.isposinf(float(fused[4])) and float(fused[3]) == big  # overflow; back in range
    nan_bits = _bits(fused[len(finite) + 2])  # NaN as the pure-TF path assembles it
    _same_bits(fused[len(finite) + 3], np.array(nan_bits).view(t))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mean_correctly_rounded_and_edges(monkeypatch, dtype):
    t = NP[dtype]
    rng = np.random.default_rng(3)
    x = _wide(rng, 5, 999, -20, 20, dtype, 2.0 ** -12)  # 999 terms: the division is inexact
    fused, pure = _both(monkeypatch, lambda v: exact.exact_reduce_mean(v, [1]), x)
    want = [_round(_exact(r) / 999, dtype) for r in x]
    _same_bits(fused, want)
    _same_bits(pure, fused)
    big = float(ml_dtypes.finfo(t).max)
    edge = np.array([[big] * 300, [-0.0] * 300, [float(ml_dtypes.finfo(t).smallest_subnormal)]
                     + [0.0] * 299], t)
    fused, pure = _both(monkeypatch, lambda v: exact.exact_reduce_mean(v, [1]), edge)
    _same_bits(pure, fused)
    assert float(fused[0]) == big  # no intermediate overflow
    assert fused[1] == 0 and np.signbit(fused[1])
    assert fused[2] == 0 and not np.signbit(fused[2])  # below half the smallest subnormal


def test_segmented_long_rows(monkeypatch):
    """Few long rows: cut into segments run in parallel; a tie row goes to the segmented
    exact pass."""
    rng = np.random.default_rng(4)
    n = 200_000
    x = _wide(rng, 3, n, -15, 15, "float32", 2.0 ** -10)
    noise = (rng.standard_normal(n // 2 - 1) * 16.0).astype(np.float32)
    x[1] = rng.permutation(np.concatenate([[1.0, 2.0 ** -24], noise, -noise]))
    fused, pure = _both(monkeypatch, lambda v: (exact.exact_reduce_sum(v, [1]),
                                                exact.exact_reduce_mean(v, [1])), x)
    _same_bits(pure[0], fused[0])
    _same_bits(pure[1], fused[1])
    assert float(fused[0][1]) == 1.0  # the tie, to even
    _same_bits(fused[0][:2], [_reference(r, "float32") for r in x[:2]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_and_middle_axes_read_in_place(monkeypatch, dtype):
    """Reductions over consecutive axes followed by others take the kernel's column layout
    [outer, n, inner] (no transpose): same bits as the pure-TF path and the reference."""
    rng = np.random.default_rng(7 + len(dtype))
    lo, hi = {"float16": (-3, 3), "bfloat16": (-30, 30), "float32": (-30, 30),
              "float64": (-250, 250)}[dtype]
    x = _wide(rng, 3 * 4 * 70, 300, lo, hi, dtype, 2.0 ** -6).reshape(3, 4, 70, 300)
    x = np.ascontiguousarray(np.moveaxis(x, 3, 1))  # [3, 300, 4, 70]: the cancelling axis 1
    h = 2.0 ** -(ml_dtypes.finfo(NP[dtype]).nmant + 1)
    x[0, :, 0, :2] = 0.0
    x[0, :2, 0, :2] = [[1.0, 1.0 + 2 * h], [h, h]]  # ties: to even, down and up
    def fns(v):
        return (exact.exact_reduce_sum(v, [1]), exact.exact_reduce_mean(v, [1], True),
                exact.exact_reduce_sum(v, [0, 1]))

    fused, pure = _both(monkeypatch, fns, x)
    for a, b in zip(fused, pure):
        _same_bits(a, b)
    assert "Transpose" not in _graph_ops(lambda v: exact.exact_reduce_sum(v, [1]), x)
    _same_bits(fused[0][0, 0, :2], np.array([1.0, 1.0 + 4 * h], NP[dtype]))
    _same_bits(fused[0][0, 0, :4], [_reference(x[0, :, 0, j], dtype) for j in range(4)])
    _same_bits(fused[2][1, 60:64], [_reference(x[:, :, 1, j], dtype) for j in range(60, 64)])


# -------------------------------------------------------------------- reproducibility

def test_bits_invariant_under_permutation_and_reshape():
    rng = np.random.default_rng(11)
    x = _wide(rng, 1, 1 << 16, -200, 200, "float64", 2.0 ** -20).ravel()
    whole = exact.exact_reduce_sum(tf.constant(x)).numpy()
    _same_bits(whole, math.fsum(x))
    for _ in range(2):
        _same_bits(exact.exact_reduce_sum(tf.constant(rng.permutation(x))).numpy(), whole)
    for shape, axis in (([256, 256], [0, 1]), ([16, 64, 64], None), ([64, 1024], [1, 0])):
        _same_bits(exact.exact_reduce_sum(tf.constant(x.reshape(shape)),
                                          None if axis is None else sorted(axis)).numpy(),
                   whole)


def test_one_and_two_threads_same_bits():
    """One intra-op thread in a fresh process (set before TF starts) against this process's
    default pool, on shapes that take the per-row and the segmented parallel split."""
    code = textwrap.dedent("""
        import sys
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        from safeops._core import exact
        for path in sys.argv[1:]:
            x = np.load(path)
            print(exact.exact_reduce_sum(tf.constant(x), [1]).numpy().tobytes().hex())
    """)
    rng = np.random.default_rng(1)
    arrays = [_wide(rng, 2, 1 << 18, -30, 30, "float32", 2.0 ** -9),
              _wide(rng, 64, 4096, -200, 200, "float64", 2.0 ** -40)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, a in enumerate(arrays):
            paths.append(os.path.join(tmp, f"x{i}.npy"))
            np.save(paths[-1], a)
        r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()[-2:]
    for a, line in zip(arrays, lines):
        here = exact.exact_reduce_sum(tf.constant(a), [1]).numpy()
        assert here.tobytes().hex() == line
        _same_bits(here[:2], [_reference(row, a.dtype.name) for row in a[:2]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_execution_modes_same_bits(dtype):
    """Eager and tf.function run the kernel, jit_compile=True the pure-TF path: same bits."""
    rng = np.random.default_rng(2)
    x = tf.constant(_wide(rng, 8, 640, -20, 20, dtype, 2.0 ** -10))

    def f(v):
        return exact.exact_reduce_sum(v, [1]), exact.exact_reduce_mean(v, [0])

    assert "SafeopsExactSum" in _graph_ops(f, x)
    assert "SafeopsExactSum" not in _graph_ops(f, x, jit_compile=True)
    eager = [t.numpy() for t in f(x)]
    graph = [t.numpy() for t in tf.function(f)(x)]
    xla = [t.numpy() for t in tf.function(f, jit_compile=True)(x)]
    for a, b, c in zip(eager, graph, xla):
        _same_bits(b, a)
        _same_bits(c, a)
    _same_bits(eager[0], [_reference(r, dtype) for r in x.numpy()])


def test_reproducible_switch_uses_kernel():
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 300)).astype(np.float32))
    with so.config.reproducible():
        ops = _graph_ops(lambda v: (so.reduce_sum(v, 1), so.reduce_mean(v)), x)
        got = so.reduce_sum(x, 1).numpy()
    assert "SafeopsExactSum" in ops
    _same_bits(got, [_reference(r, "float32") for r in x.numpy()])


# -------------------------------------------------------------------- gradients, shapes

def test_gradients_match_tf():
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 5, 4)))
    for ours, theirs in ((exact.exact_reduce_sum, tf.reduce_sum),
                         (exact.exact_reduce_mean, tf.reduce_mean)):
        for axis, keepdims in ((None, False), ([1], False), ([0, 2], True)):
            w = tf.constant(np.random.default_rng(1).standard_normal(
                theirs(x, axis, keepdims).shape))
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                la = tf.reduce_sum(ours(x, axis, keepdims) * w)
                lb = tf.reduce_sum(theirs(x, axis, keepdims) * w)
            _same_bits(tape.gradient(la, x).numpy(), tape.gradient(lb, x).numpy())


def test_registered_gradient_of_the_op():
    """The op's own gradient (a graph loaded without the Python wrapper differentiates it)."""
    lib = native.library()
    x = tf.constant(np.arange(12, dtype=np.float64).reshape(3, 4))
    for mean in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = lib.safeops_exact_sum(x, mean=mean)
            loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, 3.0], tf.float64))
        g = tape.gradient(loss, x).numpy()
        want = np.repeat(np.array([[1.0], [2.0], [3.0]]), 4, 1) / (4.0 if mean else 1.0)
        _same_bits(g, want)
        x3 = tf.reshape(x, [1, 3, 4])  # [outer, n, inner]: columns
        with tf.GradientTape() as tape:
            tape.watch(x3)
            y = lib.safeops_exact_sum(x3, mean=mean)
            loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0, 3.0, 4.0]], tf.float64))
        want = np.tile([[[1.0, 2.0, 3.0, 4.0]]], [1, 3, 1]) / (3.0 if mean else 1.0)
        _same_bits(tape.gradient(loss, x3).numpy(), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_shapes(dtype):
    lib = native.library()
    t = NP[dtype]
    for shape in ([0, 0], [0, 7], [5, 0], [1, 1], [1 << 20, 0], [3, 1], [1, 63], [2, 64],
                  [2, 129]):
        x = np.full(shape, 1.5, t)
        s = lib.safeops_exact_sum(x).numpy()
        m = lib.safeops_exact_sum(x, mean=True).numpy()
        assert s.shape == m.shape == (shape[0],)
        if shape[0]:
            _same_bits(s, np.full(shape[0], 1.5 * shape[1], t))
            if shape[1]:
                _same_bits(m, np.full(shape[0], 1.5, t))
            else:
                assert np.all(np.isnan(m.astype(np.float64)))  # as tf.reduce_mean
    for bad in (np.ones([3], t), np.ones([2, 2, 2, 2], t), np.ones([], t)):
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank"):
            lib.safeops_exact_sum(bad)
    rng = np.random.default_rng(len(dtype))
    for _ in range(40):  # any rank and size: a result or an error naming the op, never a crash
        shape = [int(rng.choice([0, 1, 2, 3, 40, 70])) for _ in range(int(rng.integers(0, 5)))]
        try:
            out = lib.safeops_exact_sum(np.zeros(shape, t), mean=bool(rng.integers(2))).numpy()
            assert len(shape) in (2, 3) and out.shape == tuple(shape[:1] + shape[2:])
        except tf.errors.InvalidArgumentError as err:
            assert len(shape) not in (2, 3) and "SafeopsExactSum" in str(err)
    _same_bits(lib.safeops_exact_sum(np.zeros([2, 0, 3], t), mean=True).numpy().ravel()[:1],
               np.array([np.nan], t))  # the empty mean of each column is NaN
    with pytest.raises(tf.errors.InvalidArgumentError):  # [2^62, 2^62] outputs cannot exist
        lib.safeops_exact_sum(tf.zeros([1 << 62, 0, 1 << 62], t))
    fn = tf.function(lambda v: lib.safeops_exact_sum(v),
                     input_signature=[tf.TensorSpec([None, None], t)])
    assert fn(tf.zeros([4, 0], t)).shape == (4,)
    assert fn(tf.zeros([0, 4], t)).shape == (0,)
    for axis in (None, [0], [1]):  # the public entry points on empty inputs
        e = tf.zeros([0, 3], t)
        _same_bits(exact.exact_reduce_sum(e, axis).numpy(), tf.reduce_sum(e, axis).numpy())
