"""Parity of the element-wise drop-ins and clipping ops with their TensorFlow originals.

Each case runs the safeops op and the TF op on the same input and asserts the same
outcome: the same output type (Tensor, RaggedTensor, SparseTensor, IndexedSlices),
shape and dtype, and values equal to TF's within the op's documented bound (equal bits
where both use the same kernel, and for integers); or, where TF raises, an error of
TF's type. Covered: every dtype the TF op accepts, Python scalars and NumPy values,
broadcasting, composite tensors, unknown shapes in `tf.function` and in TF1 graphs,
empty tensors, rank 9, and the error cases. The deliberate differences listed in the
registry (docs/migration.md) are asserted as ours, next to TF's value.
"""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing
from safeops._core import registry

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_COMPLEX = ("complex64", "complex128")
_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _data(shape, dtype, seed=0, lo=-3.0, hi=3.0):
    rng = np.random.default_rng(seed)
    dtype = tf.as_dtype(dtype)
    if dtype.is_integer:
        low = 0 if dtype.is_unsigned else -5
        return tf.constant(rng.integers(low, 6, size=shape), dtype)
    v = rng.uniform(lo, hi, size=shape)
    if dtype.is_complex:
        return tf.complex(tf.constant(v, dtype.real_dtype),
                          tf.constant(rng.uniform(lo, hi, size=shape), dtype.real_dtype))
    return tf.cast(tf.constant(v), dtype)


def _outcome(fn):
    try:
        return fn(), None
    except Exception as err:  # compared by type below
        return None, err


def _same_outcome(ours_fn, tf_fn):
    """Both raise (ours an instance of TF's error type) or both return; returns the pair."""
    theirs, terr = _outcome(tf_fn)
    ours, oerr = _outcome(ours_fn)
    if terr is not None:
        assert oerr is not None, f"TF raised {type(terr).__name__}: {terr}; safeops returned"
        assert isinstance(oerr, type(terr)), (type(oerr), type(terr), oerr)
        return None, None
    assert oerr is None, f"safeops raised {type(oerr).__name__}: {oerr}; TF returned"
    return ours, theirs


def _flat(t):
    if isinstance(t, tf.RaggedTensor):
        return t.flat_values
    if isinstance(t, (tf.SparseTensor, tf.IndexedSlices)):
        return t.values
    return t


def _assert_like(ours, theirs, ulps=0):
    """Same type, shape, dtype, structure; values within `ulps` of TF's (equal when 0)."""
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    if isinstance(theirs, tf.RaggedTensor):
        for a, b in zip(ours.nested_row_splits, theirs.nested_row_splits):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    if isinstance(theirs, tf.SparseTensor):
        np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
        np.testing.assert_array_equal(ours.dense_shape.numpy(), theirs.dense_shape.numpy())
    if isinstance(theirs, tf.IndexedSlices):
        np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
        assert (ours.dense_shape is None) == (theirs.dense_shape is None)
    a, b = _flat(ours).numpy(), _flat(theirs).numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    if ulps == 0 or not (theirs.dtype.is_floating or theirs.dtype.is_complex):
        np.testing.assert_array_equal(a, b)
        return
    dtype = theirs.dtype.real_dtype if theirs.dtype.is_complex else theirs.dtype
    for part in ((np.real, np.imag) if theirs.dtype.is_complex else (lambda v: v,)):
        d = testing.ulp_distance(part(a), part(b), dtype.name)
        assert np.max(d, initial=0) <= ulps, (np.max(d), part(a), part(b))


# -- divide_no_nan ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", _FLOATS + _INTS + ("bool",))
def test_divide_no_nan_dtypes(dtype):
    x = _data([2, 5], dtype, 1) if dtype != "bool" else tf.constant([[True, False]])
    y = _data([2, 5], dtype, 2) if dtype != "bool" else tf.constant([[False, True]])
    if dtype != "bool":
        y = y * tf.cast(tf.constant([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1]]), y.dtype)  # zeros
    ours, theirs = _same_outcome(lambda: so.divide_no_nan(x, y),
                                 lambda: tf.math.divide_no_nan(x, y))
    if theirs is not None:  # same kernel for floats; TF's own result for integers
        _assert_like(ours, theirs)


def _exact_quotient(a, b):
    mpmath.mp.dps = 60
    if b == 0:
        return 0j
    q = mpmath.mpc(a.real, a.imag) / mpmath.mpc(b.real, b.imag)
    return complex(q)


@pytest.mark.parametrize("dtype", _COMPLEX)
def test_divide_no_nan_complex(dtype):
    # Parts that cancel in a*c + b*d: TF's kernel loses digits of the small part;
    # ours is within ~1 ulp of each exact part (registry difference).
    real = np.float32 if dtype == "complex64" else np.float64
    eps = np.finfo(real).eps
    xs = np.array([1 + 2j, 1 + 1j, 3 + 4j, 1e-3 + 1j, 2 + 0j, 5 - 1j], np.complex128)
    ys = np.array([0j, 1 + (1 + 8 * eps) * 1j, 1 + 2j, 1e3 + 1j, 0.5 + 0.25j, 0j], np.complex128)
    x, y = tf.constant(xs.astype(dtype)), tf.constant(ys.astype(dtype))
    ours, theirs = _same_outcome(lambda: so.divide_no_nan(x, y),
                                 lambda: tf.math.divide_no_nan(x, y))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    exact = np.array([_exact_quotient(a, b) for a, b in zip(x.numpy().astype(np.complex128),
                                                            y.numpy().astype(np.complex128))])
    got = ours.numpy()
    for part in (np.real, np.imag):
        d = testing.ulp_distance(part(got).astype(real), part(exact).astype(real),
                                 np.dtype(real).name)
        assert np.max(d) <= 2, (part(got), part(exact))
    # zero denominators give exactly 0, as TF
    assert got[0] == 0 and got[-1] == 0 and theirs.numpy()[0] == 0


@pytest.mark.parametrize("dtype", _COMPLEX)
def test_divide_no_nan_complex_gradient_as_tf(dtype):
    x = tf.constant([1 + 2j, 3 - 1j, 2 + 2j], dtype)
    y = tf.constant([2 + 1j, 0j, -1 + 0.5j], dtype)
    grads = {}
    for name, fn in (("ours", so.divide_no_nan), ("tf", tf.math.divide_no_nan)):
        with tf.GradientTape() as tape:
            tape.watch([x, y])
            loss = tf.reduce_sum(tf.math.real(fn(x, y)) + 2.0 * tf.math.imag(fn(x, y)))
        grads[name] = tape.gradient(loss, [x, y])
    for a, b in zip(grads["ours"], grads["tf"]):
        _assert_like(a, b, 2)


def test_divide_no_nan_tf1_graph():
    with tf.Graph().as_default():
        a = tf.compat.v1.placeholder(tf.float32, None)
        b = tf.compat.v1.placeholder(tf.float32, None)
        ours, theirs = so.divide_no_nan(a, b), tf.math.divide_no_nan(a, b)
        grads = tf.gradients(tf.reduce_sum(ours), [a, b])
        with tf.compat.v1.Session() as sess:
            feed = {a: [[1.0, 2.0], [3.0, 4.0]], b: [2.0, 0.0]}
            o, t, g = sess.run([ours, theirs, grads], feed)
    np.testing.assert_array_equal(o, t)
    np.testing.assert_array_equal(g[0], [[0.5, 0.0], [0.5, 0.0]])
    np.testing.assert_array_equal(g[1], [-1.0, 0.0])


def test_divide_no_nan_complex128_extremes():
    # No overflow or underflow in the intermediate products (TF's kernel forms c*c + d*d).
    x = tf.constant([1e300 + 1e300j, 1e-300 + 1e-300j, 3e-200 + 1e-200j], tf.complex128)
    y = tf.constant([1e300 + 1e300j, 1e-300 + 1e-300j, 1e-200 + 2e-200j], tf.complex128)
    got = so.divide_no_nan(x, y).numpy()
    exact = [_exact_quotient(a, b) for a, b in zip(x.numpy(), y.numpy())]
    np.testing.assert_allclose(got, exact, rtol=4e-16)


@pytest.mark.parametrize("x,y", [
    (1, 2), (1.0, 2.0), (3, 0), (1.0, tf.constant(2.0, tf.float64)),
    (tf.constant(2.0, tf.float64), 1), (tf.constant([1.0, 2.0], tf.float64), np.float32(2.0)),
    (tf.constant([1.0]), tf.constant([1.0], tf.float64)), (tf.constant([1]), 1.5),
    (np.array([1.0, 2.0]), 0.0), ([1.0, 2.0], [0.0, 4.0]),
])
def test_divide_no_nan_python_values(x, y):
    ours, theirs = _same_outcome(lambda: so.divide_no_nan(x, y),
                                 lambda: tf.math.divide_no_nan(x, y))
    if theirs is not None:
        _assert_like(ours, theirs)


@pytest.mark.parametrize("sx,sy", [([3, 1], [4]), ([0, 3], [3]), ([2, 1, 3], [1, 4, 1]),
                                   ([1] * 9 + [2], [1] * 8 + [2, 1])])
def test_divide_no_nan_broadcasting_empty_rank9(sx, sy):
    x, y = _data(sx, "float32", 3), _data(sy, "float32", 4)
    ours, theirs = _same_outcome(lambda: so.divide_no_nan(x, y),
                                 lambda: tf.math.divide_no_nan(x, y))
    _assert_like(ours, theirs)
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        loss = tf.reduce_sum(so.divide_no_nan(x, y))
    gx, gy = tape.gradient(loss, [x, y])
    assert gx.shape == x.shape and gy.shape == y.shape


def test_divide_no_nan_shape_errors():
    a, b = tf.constant([1.0, 2.0]), tf.constant([1.0, 2.0, 3.0])
    _same_outcome(lambda: so.divide_no_nan(a, b), lambda: tf.math.divide_no_nan(a, b))

    @tf.function
    def ours():
        return so.divide_no_nan(a, b)

    @tf.function
    def theirs():
        return tf.math.divide_no_nan(a, b)

    _same_outcome(ours, theirs)  # ValueError from shape inference in both


def test_divide_no_nan_ragged():
    x = tf.ragged.constant([[1.0, 2.0], [3.0], []])
    for y in (tf.ragged.constant([[2.0, 0.0], [4.0], []]), tf.constant(2.0),
              tf.constant([[2.0], [0.0], [1.0]])):
        ours, theirs = _same_outcome(lambda: so.divide_no_nan(x, y),
                                     lambda: tf.math.divide_no_nan(x, y))
        _assert_like(ours, theirs)


def test_divide_no_nan_gradient_at_zero_is_zero():
    # Registry difference: the gradient is 0 where y == 0 and never NaN; TF's is NaN
    # where x / y**2 overflows.
    x, y = tf.constant([1e30, 1.0]), tf.constant([1e-30, 0.0])
    grads = {}
    for name, fn in (("ours", so.divide_no_nan), ("tf", tf.math.divide_no_nan)):
        with tf.GradientTape() as tape:
            tape.watch([x, y])
            loss = tf.reduce_sum(fn(x, y) * 0.0)
        grads[name] = [g.numpy() for g in tape.gradient(loss, [x, y])]
    assert np.all(np.isfinite(grads["ours"][1])) and grads["ours"][1][1] == 0
    assert np.isnan(grads["tf"][1][0])


# -- sqrt, softplus, log_sigmoid -------------------------------------------------------

_UNARY = {"sqrt": (so.sqrt, tf.math.sqrt), "softplus": (so.softplus, tf.math.softplus),
          "log_sigmoid": (so.log_sigmoid, tf.math.log_sigmoid)}
# Documented bounds against the exact value: sqrt is TF's kernel (equal bits);
# softplus/log_sigmoid <= 3 ulp, TF's within 2 on these inputs (|x| <= 3).
_BOUND = {"sqrt": 0, "softplus": 5, "log_sigmoid": 5}


@pytest.mark.parametrize("name", sorted(_UNARY))
@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + ("int32", "int64", "bool"))
def test_unary_dtypes(name, dtype):
    ours_fn, tf_fn = _UNARY[name]
    x = _data([3, 4], dtype, 5) if dtype != "bool" else tf.constant([True])
    if name == "sqrt" and not tf.as_dtype(dtype).is_complex and dtype != "bool":
        x = tf.abs(x)
    ours, theirs = _same_outcome(lambda: ours_fn(x), lambda: tf_fn(x))
    if theirs is not None:
        _assert_like(ours, theirs, 0 if name == "sqrt" else _BOUND[name])


@pytest.mark.parametrize("name", sorted(_UNARY))
def test_unary_composites(name):
    ours_fn, tf_fn = _UNARY[name]
    ragged = tf.ragged.constant([[1.0, 4.0], [], [9.0]])
    sparse = tf.sparse.from_dense(tf.constant([[4.0, 0.0], [0.0, 9.0]]))
    slices = tf.IndexedSlices(tf.constant([[4.0]]), tf.constant([0]))
    for x in (ragged, sparse, slices):
        ours, theirs = _same_outcome(lambda: ours_fn(x), lambda: tf_fn(x))
        if theirs is not None:
            _assert_like(ours, theirs, _BOUND[name])


@pytest.mark.parametrize("name", sorted(_UNARY))
def test_unary_python_values_empty_rank9(name):
    ours_fn, tf_fn = _UNARY[name]
    for x in (2.0, 3, [1.0, 4.0], np.array([1.0, 4.0]), np.float16(2.0),
              tf.zeros([0, 3]), tf.fill([1] * 9 + [2], 4.0)):
        ours, theirs = _same_outcome(lambda: ours_fn(x), lambda: tf_fn(x))
        if theirs is not None:
            _assert_like(ours, theirs, _BOUND[name])


@pytest.mark.parametrize("name", sorted(_UNARY))
def test_unary_unknown_shapes(name):
    ours_fn, tf_fn = _UNARY[name]
    x = np.abs(np.random.default_rng(6).normal(size=[2, 3])).astype(np.float32) + 0.5
    results = {}
    for key, fn in (("ours", ours_fn), ("tf", tf_fn)):
        for spec in (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec(None, tf.float32)):
            f = tf.function(fn, input_signature=[spec])
            results[key, spec.shape.rank] = f(x).numpy()
            assert f(np.zeros([0, 5], np.float32)).shape == (0, 5)
    for rank in (2, None):
        np.testing.assert_allclose(results["ours", rank], results["tf", rank], rtol=4e-7)


def _v1_graph_run(fn, value):
    with tf.Graph().as_default():
        p = tf.compat.v1.placeholder(tf.float32, shape=None)
        out = fn(p)
        with tf.compat.v1.Session() as sess:
            return sess.run(out, {p: value})


@pytest.mark.parametrize("name", sorted(_UNARY))
def test_unary_tf1_graph(name):
    ours_fn, tf_fn = _UNARY[name]
    value = np.array([[0.25, 1.0, 4.0]], np.float32)
    np.testing.assert_allclose(_v1_graph_run(ours_fn, value), _v1_graph_run(tf_fn, value),
                               rtol=4e-7)
    assert _v1_graph_run(ours_fn, np.zeros([0, 2], np.float32)).shape == (0, 2)


def test_sqrt_gradient_at_zero():
    # Registry difference: the gradient at 0 is 0 (TF: inf).
    x = tf.constant([0.0, 4.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = so.sqrt(x), tf.sqrt(x)
    np.testing.assert_array_equal(tape.gradient(ours, x).numpy(), [0.0, 0.25])
    assert np.isinf(tape.gradient(theirs, x).numpy()[0])


def test_softplus_log_sigmoid_more_accurate_than_tf():
    # Registry difference: below log(eps) + 2 TF's kernel returns exp(x) (several
    # ulp off); ours stays within the documented 3 ulp, in every execution mode.
    x = np.array([-14.5, -15.0, -16.0, -14.0], np.float32)
    mpmath.mp.dps = 40
    exact_sp = np.array([float(mpmath.log1p(mpmath.exp(mpmath.mpf(float(v))))) for v in x])
    tf_err = testing.ulp_distance(tf.math.softplus(x).numpy(), exact_sp.astype(np.float32),
                                  "float32")
    assert np.max(tf_err) > 3
    for out in testing.run_modes(so.softplus, tf.constant(x)).values():
        assert np.max(testing.ulp_distance(out, exact_sp.astype(np.float32), "float32")) <= 3
    exact_ls = (-exact_sp).astype(np.float32)  # log_sigmoid(-x) = -softplus(x)
    for out in testing.run_modes(so.log_sigmoid, tf.constant(-x)).values():
        assert np.max(testing.ulp_distance(out, exact_ls, "float32")) <= 3


def test_softplus_gradient_is_accurate_sigmoid():
    # Registry difference: the gradient is sigmoid(x) within 1 ulp.
    x = tf.constant(np.linspace(-30, 30, 61), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = so.softplus(x)
    g = tape.gradient(y, x).numpy()
    mpmath.mp.dps = 40
    exact = np.array([float(1 / (1 + mpmath.exp(-mpmath.mpf(float(v))))) for v in x.numpy()])
    assert np.max(testing.ulp_distance(g, exact.astype(np.float32), "float32")) <= 1


def test_log_sigmoid_gradient_is_accurate_sigmoid():
    # Registry difference: the gradient is sigmoid(-x) within 1 ulp.
    x = tf.constant(np.linspace(-30, 30, 61), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = so.log_sigmoid(x)
    g = tape.gradient(y, x).numpy()
    mpmath.mp.dps = 40
    exact = np.array([float(1 / (1 + mpmath.exp(mpmath.mpf(float(v))))) for v in x.numpy()])
    assert np.max(testing.ulp_distance(g, exact.astype(np.float32), "float32")) <= 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_softplus_log_sigmoid_half_rounded_once(dtype):
    # Registry difference: half precision is computed in float32 and rounded once, so
    # the result is within 1 ulp of the exact value (subnormal results excluded).
    x = tf.cast(tf.constant(np.linspace(-12, 12, 97)), dtype)
    mpmath.mp.dps = 40
    xs = x.numpy().astype(np.float64)
    exact = np.array([float(mpmath.log1p(mpmath.exp(mpmath.mpf(v)))) for v in xs])
    tiny = float(np.finfo(np.float16).tiny) if dtype == "float16" else 1.2e-38
    keep = exact >= tiny
    for out in testing.run_modes(so.softplus, x).values():
        d = testing.ulp_distance(out[keep], exact[keep], dtype)
        assert np.max(d) <= 1, (dtype, np.max(d))
    for out in testing.run_modes(so.log_sigmoid, -x).values():
        d = testing.ulp_distance(out[keep], -exact[keep], dtype)
        assert np.max(d) <= 1, (dtype, np.max(d))


# -- clip_by_norm / clip_by_global_norm ------------------------------------------------

@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + ("int32",))
def test_clip_by_norm_dtypes(dtype):
    t = _data([2, 3], dtype, 7)
    ours, theirs = _same_outcome(lambda: so.clip_by_norm(t, 1.5),
                                 lambda: tf.clip_by_norm(t, 1.5))
    if theirs is not None:
        _assert_like(ours, theirs, 2)


@pytest.mark.parametrize("axes", [None, 0, 1, [1], (0, 1), -1, np.int64(1), [-1, 0]])
def test_clip_by_norm_axes(axes):
    t = _data([3, 4], "float32", 8)
    axes_t = axes if axes is None else tf.constant(axes)
    for a in (axes, axes_t):
        ours, theirs = _same_outcome(lambda: so.clip_by_norm(t, 1.0, axes=a),
                                     lambda: tf.clip_by_norm(t, 1.0, axes=a))
        _assert_like(ours, theirs, 1)


def test_clip_by_norm_bad_clip_norm_shape():
    x = tf.constant([-3.0, 0.0, 0.0, 4.0, 0.0, 0.0], shape=[2, 3, 1])
    clip = tf.constant([1.0, 2.0])
    _same_outcome(lambda: so.clip_by_norm(x, clip), lambda: tf.clip_by_norm(x, clip))
    ours, theirs = _same_outcome(lambda: so.clip_by_norm(x, tf.constant([4.0])),
                                 lambda: tf.clip_by_norm(x, tf.constant([4.0])))
    _assert_like(ours, theirs, 1)


def test_clip_by_norm_indexed_slices():
    values = tf.constant([[3.0, 4.0], [6.0, 8.0]])
    for slices in (tf.IndexedSlices(values, tf.constant([0, 5])),
                   tf.IndexedSlices(values, tf.constant([0, 5]), tf.constant([7, 2]))):
        for axes in (None, [1]):
            ours, theirs = _same_outcome(lambda: so.clip_by_norm(slices, 2.0, axes),
                                         lambda: tf.clip_by_norm(slices, 2.0, axes))
            _assert_like(ours, theirs, 1)


def test_clip_by_norm_unknown_shapes_tf1_empty():
    t = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    for spec in (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec(None, tf.float32)):
        ours = tf.function(lambda x: so.clip_by_norm(x, 1.0), input_signature=[spec])
        theirs = tf.function(lambda x: tf.clip_by_norm(x, 1.0), input_signature=[spec])
        np.testing.assert_allclose(ours(t).numpy(), theirs(t).numpy(), rtol=2e-7)
        assert ours(np.zeros([0, 2], np.float32)).shape == (0, 2)
    np.testing.assert_allclose(_v1_graph_run(lambda p: so.clip_by_norm(p, 1.0), t),
                               _v1_graph_run(lambda p: tf.clip_by_norm(p, 1.0), t), rtol=2e-7)
    _assert_like(so.clip_by_norm(tf.zeros([0, 3]), 1.0), tf.clip_by_norm(tf.zeros([0, 3]), 1.0))


def test_clip_by_norm_differences():
    # Registry differences: no overflow of the squared norm; identity gradient at the
    # zero tensor (as TF's own test asks); a negative clip_norm raises (TF: zeros);
    # rank 9 works (TF's select kernel stops at rank 8); the nonfinite= keyword.
    big = tf.constant([3e19, 4e19])
    np.testing.assert_allclose(so.clip_by_norm(big, 1.0).numpy(), [0.6, 0.8], rtol=2e-7)
    np.testing.assert_array_equal(tf.clip_by_norm(big, 1.0).numpy(), [0.0, 0.0])
    x = tf.zeros([3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = so.clip_by_norm(x, 1.0)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="clip_norm"):
        so.clip_by_norm(big, -1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        so.clip_by_norm(big, tf.constant(-1.0))
    np.testing.assert_array_equal(tf.clip_by_norm(big, -1.0).numpy(), [0.0, 0.0])
    t10 = tf.fill([1] * 9 + [2], 3.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(t10)
        theirs, ours = tf.clip_by_norm(t10, 1.0), so.clip_by_norm(t10, 1.0)
    with pytest.raises(tf.errors.UnimplementedError):  # TF's gradient stops at rank 8
        tape.gradient(theirs, t10)
    np.testing.assert_allclose(ours.numpy(), np.full([1] * 9 + [2], 2**-0.5), rtol=2e-7)
    assert tape.gradient(ours, t10).shape == t10.shape
    t9 = tf.fill([1] * 8 + [2, 2], 3.0)
    for axes in (None, [9], [0, 8]):
        ref = tf.clip_by_norm(tf.reshape(t9, [2, 2]), 1.0,
                              None if axes is None else [1] if axes == [9] else [0])
        got = so.clip_by_norm(t9, 1.0, axes)
        assert got.shape == t9.shape
        np.testing.assert_allclose(tf.reshape(got, [2, 2]).numpy(), ref.numpy(), rtol=2e-7)
    nan = tf.constant([1.0, np.nan])
    np.testing.assert_array_equal(so.clip_by_norm(nan, 0.5, nonfinite="zero").numpy(),
                                  [0.5, 0.0])
    assert np.all(np.isnan(tf.clip_by_norm(nan, 0.5).numpy()))


def test_clip_by_global_norm_parity():
    x0 = tf.constant([[-2.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    x1 = tf.constant([1.0, -2.0])
    s_no_shape = tf.IndexedSlices(tf.constant([1.0, -2.0]), tf.constant([3, 4]))
    s_shape = tf.IndexedSlices(tf.constant([[1.0]]), tf.constant([0]), dense_shape=(1, 1))
    inf = tf.constant([1.0, np.inf])
    for t_list in ([x0, x1], (x0, None, x1, None), [x0, s_no_shape], [s_shape], [], [None],
                   [x0, inf], [tf.zeros([0, 2])]):
        for clip in (4.0, tf.constant(6.0)):
            ours, theirs = _same_outcome(lambda: so.clip_by_global_norm(t_list, clip),
                                         lambda: tf.clip_by_global_norm(t_list, clip))
            assert len(ours[0]) == len(theirs[0])
            for a, b in zip(ours[0], theirs[0]):
                if b is None:
                    assert a is None
                    continue
                if isinstance(b, tf.IndexedSlices) and isinstance(b.dense_shape, tuple):
                    assert tuple(a.dense_shape) == b.dense_shape  # kept as given
                    a = tf.IndexedSlices(a.values, a.indices)
                    b = tf.IndexedSlices(b.values, b.indices)
                _assert_like(a, b, 2)
            np.testing.assert_allclose(ours[1].numpy(), theirs[1].numpy(), rtol=2e-7)
    for bad in (x1, "abc"):
        _same_outcome(lambda: so.clip_by_global_norm(bad, 1.0),
                      lambda: tf.clip_by_global_norm(bad, 1.0))
    _same_outcome(lambda: so.clip_by_global_norm([tf.constant([1, 2])], 1.0),
                  lambda: tf.clip_by_global_norm([tf.constant([1, 2])], 1.0))


def test_clip_by_global_norm_differences():
    # Registry differences: the norm never overflows (TF: NaN); a negative clip_norm
    # raises; lists of mixed floating dtypes are accepted (TF raises).
    big = [tf.constant([3e19, 4e19])]
    out, n = so.clip_by_global_norm(big, 1.0)
    np.testing.assert_allclose(out[0].numpy(), [0.6, 0.8], rtol=2e-7)
    assert np.all(np.isnan(tf.clip_by_global_norm(big, 1.0)[0][0].numpy()))
    with pytest.raises(ValueError, match="clip_norm"):
        so.clip_by_global_norm(big, -1.0)
    mixed = [tf.constant([3.0], tf.float16), tf.constant([4.0])]
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.clip_by_global_norm(mixed, 1.0)
    out, n = so.clip_by_global_norm(mixed, 1.0)
    assert [o.dtype for o in out] == [tf.float16, tf.float32]
    np.testing.assert_allclose([out[0].numpy()[0], out[1].numpy()[0]], [0.6, 0.8], rtol=1e-3)
    with tf.GradientTape() as tape:
        tape.watch(big)
        loss = tf.reduce_sum(so.clip_by_global_norm(big, 1.0)[0][0])
    assert np.all(np.isfinite(tape.gradient(loss, big)[0].numpy()))


def test_clip_gradients_keep_indexed_slices():
    # An embedding gradient stays sparse through both clipping ops and the optimizer path.
    table = tf.Variable(tf.ones([10, 2]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [1, 3]) * 100.0)
    g = tape.gradient(loss, table)
    assert isinstance(g, tf.IndexedSlices)
    assert isinstance(so.clip_by_norm(g, 1.0), tf.IndexedSlices)
    assert isinstance(so.clip_by_global_norm([g], 1.0)[0][0], tf.IndexedSlices)


# -- safe_where next to tf.where -------------------------------------------------------

def test_safe_where_values_as_tf_where_gradients_finite():
    x = tf.constant([-1.0, 0.0, 2.0, 5.0])
    cond = x > 0
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = so.safe_where(cond, tf.math.log, tf.zeros_like, x)
        theirs = tf.where(cond, tf.math.log(x), tf.zeros_like(x))
    _assert_like(ours, theirs)
    g = tape.gradient(ours, x).numpy()
    np.testing.assert_array_equal(g, np.float32([0.0, 0.0, 0.5, 0.2]))
    assert np.isnan(tape.gradient(theirs, x).numpy()[1])
    x9 = tf.fill([1] * 9 + [2], 2.0)
    got = so.safe_where(x9 > 0, tf.math.log, tf.zeros_like, x9)
    assert got.shape == x9.shape
    with pytest.raises(TypeError):
        so.safe_where(tf.constant([1.0]), tf.math.log, tf.zeros_like, x)


# -- the frontend shared by every op ---------------------------------------------------

_BINARY = {
    "logaddexp": lambda a, b: so.logaddexp(a, b),
    "logsubexp": lambda a, b: so.logsubexp(a, b),
    "hypot": lambda a, b: so.hypot(a, b),
    "soft_maximum": lambda a, b: so.soft_maximum(a, b),
    "soft_minimum": lambda a, b: so.soft_minimum(a, b),
    "smooth_where": lambda a, b: so.smooth_where(a, b, 1.0, 2.0),
    "safe_divide": lambda a, b: so.safe_divide(a, b),
    "relative_error": lambda a, b: so.relative_error(a, b),
    "divide_no_nan": lambda a, b: so.divide_no_nan(a, b),
}


@pytest.mark.parametrize("name", sorted(_BINARY))
def test_two_argument_ops_follow_tf_dtype_rule(name):
    fn = _BINARY[name]
    f64 = tf.constant([0.5, 1.5], tf.float64)
    for a, b in ((3.0, f64), (f64, 0.25), (np.float32(3.0), f64), ([3.0, 4.0], f64)):
        assert fn(a, b).dtype == tf.float64
        assert fn(a, b).shape == (2,)
    # Tensors of two dtypes: tf.math.add's error type (one class serves both of TF's:
    # InvalidArgumentError eagerly, TypeError in graphs); divide_no_nan raises TF's TypeError.
    f32 = tf.constant([1.0, 2.0])
    with pytest.raises(TypeError, match=r"arguments '\w+' and '\w+' must have the same dtype"):
        fn(f32, f64)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.math.add(f32, f64)
    if name != "divide_no_nan":
        with pytest.raises(tf.errors.InvalidArgumentError):
            fn(f32, f64)


_ELEMENTWISE = {
    "safe_divide": lambda x: so.safe_divide(x, x + 1.0),
    "safe_reciprocal": so.safe_reciprocal, "relative_error": lambda x: so.relative_error(x, 1.0),
    "smooth_where": lambda x: so.smooth_where(x, 0.0, 1.0, 2.0),
    "smooth_step": lambda x: so.smooth_step(x, 0.0, 1.0), "soft_abs": so.soft_abs,
    "soft_clip": lambda x: so.soft_clip(x, -1.0, 1.0),
    "soft_maximum": lambda x: so.soft_maximum(x, 0.5),
    "soft_minimum": lambda x: so.soft_minimum(x, 0.5),
    "round_ste": so.round_ste, "floor_ste": so.floor_ste, "ceil_ste": so.ceil_ste,
    "sign_ste": so.sign_ste, "clip_ste": lambda x: so.clip_ste(x, 0.0, 1.0),
    "hypot": lambda x: so.hypot(x, 1.0), "log1m": lambda x: so.log1m(-x),
    "safe_exp": so.safe_exp, "safe_log": so.safe_log, "sqrt": so.sqrt,
    "log1mexp": so.log1mexp, "log_cosh": so.log_cosh, "log_sigmoid": so.log_sigmoid,
    "logaddexp": lambda x: so.logaddexp(x, 0.5), "logsubexp": lambda x: so.logsubexp(x + 1.0, x),
    "softplus": so.softplus, "softplus_inverse": so.softplus_inverse,
    "divide_no_nan": lambda x: so.divide_no_nan(x, x + 1.0),
}


@pytest.mark.parametrize("name", sorted(_ELEMENTWISE))
def test_rank9_empty_and_unknown_shapes(name):
    fn = _ELEMENTWISE[name]
    x = tf.fill([1] * 8 + [2, 3], 0.75)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    assert y.shape == x.shape
    g = tape.gradient(y, x)
    assert g is None or g.shape == x.shape
    ref = fn(tf.reshape(x, [6]))
    np.testing.assert_array_equal(tf.reshape(y, [6]).numpy(), ref.numpy())
    assert fn(tf.zeros([0, 3])).shape == (0, 3)
    f = tf.function(fn, input_signature=[tf.TensorSpec(None, tf.float32)])
    np.testing.assert_array_equal(f(tf.reshape(x, [2, 3])).numpy(),
                                  tf.reshape(ref, [2, 3]).numpy())


def test_scalar_parameters_checked_as_tensors():
    for fn in (lambda e: so.safe_divide(1.0, 2.0, eps=e), lambda e: so.safe_log(1.0, eps=e),
               lambda e: so.soft_abs(1.0, eps=e), lambda e: so.relative_error(1.0, 2.0, eps=e)):
        for bad in (0.0, tf.constant(0.0), tf.constant(-1.0), np.float32(0.0)):
            with pytest.raises(ValueError, match="'eps' must be > 0"):
                fn(bad)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def dynamic(eps):
        return so.safe_log(0.0, eps=eps)

    assert np.isfinite(dynamic(tf.constant(1e-3)).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="eps"):
        dynamic(tf.constant(0.0))  # never -inf: the assert fires first


def test_soft_abs_at_infinity():
    x = tf.constant([np.inf, -np.inf, 0.0, 3.0])
    eps = tf.constant(1e-3)
    with tf.GradientTape() as tape:
        tape.watch([x, eps])
        y = so.soft_abs(x, eps)
    gx, ge = tape.gradient(y, [x, eps])
    np.testing.assert_array_equal(y.numpy()[:3], [np.inf, np.inf, 0.0])
    np.testing.assert_array_equal(gx.numpy()[:3], [1.0, -1.0, 0.0])
    assert np.isfinite(ge.numpy())
    assert np.isnan(so.soft_abs(tf.constant(np.nan)).numpy())


def test_nan_propagates():
    nan = tf.constant([np.nan])
    for name, fn in _ELEMENTWISE.items():
        if name in ("round_ste", "floor_ste", "ceil_ste", "sign_ste"):
            continue
        out = fn(nan).numpy()
        if name in ("safe_log",):  # documented: the floor replaces values below eps only
            assert np.isnan(out).all(), name
            continue
        assert np.isnan(out).all(), name


def test_registry_covers_elementwise_ops():
    names = {e.name: e for e in registry.entries()}
    drop_ins = {"safeops.divide_no_nan": "tf.math.divide_no_nan", "safeops.sqrt": "tf.math.sqrt",
                "safeops.softplus": "tf.math.softplus",
                "safeops.log_sigmoid": "tf.math.log_sigmoid",
                "safeops.clip_by_norm": "tf.clip_by_norm",
                "safeops.clip_by_global_norm": "tf.clip_by_global_norm"}
    for name, original in drop_ins.items():
        assert names[name].original == original and names[name].differences
    for name in list(_ELEMENTWISE) + ["safe_where", "promote"]:
        assert f"safeops.{name}" in names, name
