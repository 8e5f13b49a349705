"""Parity of the reductions, scans, softmax, norm and matmul with their TensorFlow originals.

Each case runs the safeops op and the TF op on the same input and asserts the same
outcome: the same output type (Tensor or RaggedTensor), static and dynamic shape and
dtype, and values within the op's documented bound of TF's (equal for integers); or,
where TF raises, an error of TF's type. Covered: every dtype the TF op accepts, the
axis in every form, RaggedTensor inputs, unknown shapes and placeholder axes in
`tf.function` and in TF1 graphs, empty and dynamically empty tensors, and the error
cases. Deliberate differences (registry, docs/migration.md) are asserted as ours.
"""

import numpy as np
import pytest
import tensorflow as tf

import safeops as so

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_COMPLEX = ("complex64", "complex128")
_INTS = ("int32", "int64", "uint8")

# Values: TF and safeops agree within a few ulp of the scale of the data on these small,
# well-conditioned inputs (TF's own rounding is a few ulp; ours is faithful).
_ULPS = 4


def _eps(dtype):
    dtype = tf.as_dtype(dtype)
    if dtype.is_complex:
        dtype = tf.float32 if dtype == tf.complex64 else tf.float64
    return float(np.finfo(dtype.as_numpy_dtype).eps) if dtype != tf.bfloat16 else 2.0 ** -7


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dtype = tf.as_dtype(dtype)
    if dtype.is_integer:
        return tf.constant(rng.integers(0, 7, size=shape), dtype)
    v = rng.uniform(-2, 2, size=shape)
    if dtype.is_complex:
        return tf.complex(tf.constant(v, dtype.real_dtype),
                          tf.constant(rng.uniform(-2, 2, size=shape), dtype.real_dtype))
    return tf.cast(tf.constant(v), dtype)


def _numpy(t):
    if isinstance(t, tf.RaggedTensor):
        return t.to_list()
    return t.numpy()


def _outcome(fn):
    try:
        return fn(), None
    except Exception as err:  # TF's error or ours, compared by type below
        return None, err


def _assert_values(ours, theirs, scale):
    dtype = theirs.dtype
    if isinstance(theirs, tf.RaggedTensor):
        assert isinstance(ours, tf.RaggedTensor), type(ours)
        assert ours.ragged_rank == theirs.ragged_rank
        np.testing.assert_array_equal(ours.nested_row_lengths()[-1].numpy() if ours.ragged_rank
                                      else 0, theirs.nested_row_lengths()[-1].numpy()
                                      if theirs.ragged_rank else 0)
        ours, theirs = ours.flat_values, theirs.flat_values
    assert not isinstance(ours, tf.RaggedTensor), type(ours)
    a, b = ours.numpy(), theirs.numpy()
    assert a.shape == b.shape
    if dtype.is_integer or dtype == tf.bool:
        np.testing.assert_array_equal(a, b)
        return
    # absolute: a few ulp of the data's scale (cancellation); relative: a few ulp of the value
    tol = _ULPS * _eps(dtype) * (scale + np.abs(b.astype(np.complex128)))
    a64 = a.astype(np.complex128 if dtype.is_complex else np.float64)
    b64 = b.astype(np.complex128 if dtype.is_complex else np.float64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    bad = ~same & ~(np.abs(a64 - b64) <= tol)
    assert not bad.any(), f"ours {a64[bad][:5]} TF {b64[bad][:5]} (tolerance {tol[bad][:5]})"


def check(ours_fn, tf_fn, scale=1.0):
    """Same output type, shape, dtype and values (or the same error type) for both."""
    theirs, tf_err = _outcome(tf_fn)
    ours, our_err = _outcome(ours_fn)
    if tf_err is not None:
        assert our_err is not None, f"TF raised {type(tf_err).__name__}: {tf_err}; ours did not"
        assert isinstance(our_err, type(tf_err)), (
            f"TF raised {type(tf_err).__name__}, ours {type(our_err).__name__}: {our_err}")
        return None
    if our_err is not None:
        raise our_err
    assert type(ours) is type(theirs) or (tf.is_tensor(ours) and tf.is_tensor(theirs)
                                          and not isinstance(theirs, tf.RaggedTensor)), \
        (type(ours), type(theirs))
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert ours.shape.as_list() == theirs.shape.as_list() if theirs.shape.rank is not None \
        else True
    _assert_values(ours, theirs, scale)
    return ours


# --- dtypes and axis forms ----------------------------------------------------------------

_REDUCTIONS = [
    (so.reduce_sum, tf.reduce_sum),
    (so.reduce_mean, tf.reduce_mean),
    (so.reduce_variance, tf.math.reduce_variance),
    (so.reduce_std, tf.math.reduce_std),
    (so.reduce_logsumexp, tf.reduce_logsumexp),
]
_AXES = [None, 0, -1, 2, [0, 1], (0, 2), [], np.int64(1), np.int32(-2), tf.constant(1),
         tf.constant([0, 2], tf.int64), [tf.constant(0), 1]]


@pytest.mark.parametrize("ops", _REDUCTIONS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + _INTS + ("bool",))
def test_reduction_dtypes(ops, dtype):
    ours, theirs = ops
    x = _data([2, 3, 4], dtype) if dtype != "bool" else tf.constant([[True, False]])
    for keepdims in (False, True):
        check(lambda: ours(x, 1, keepdims), lambda: theirs(x, 1, keepdims), scale=8.0)


@pytest.mark.parametrize("ops", _REDUCTIONS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("axis", _AXES, ids=repr)
def test_reduction_axis_forms(ops, axis):
    ours, theirs = ops
    x = _data([2, 3, 4], "float32")
    for keepdims in (False, True):
        check(lambda: ours(x, axis, keepdims), lambda: theirs(x, axis, keepdims), scale=24.0)


_BAD_AXES = [[0, 0], [1, -1], 3, -4, 1.5, [0.0], "a", tf.constant(1.0), [[0], [1]]]


@pytest.mark.parametrize("ops", _REDUCTIONS + [(so.norm, None)], ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("axis", _BAD_AXES, ids=repr)
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_reduction_bad_axes_raise_tf_errors(ops, axis, mode):
    ours, theirs = ops
    if theirs is None:  # norm: TF's errors for its own axis rules
        ours, theirs = (lambda x, a: so.norm(x, axis=a)), (lambda x, a: tf.norm(x, axis=a))
    x = _data([2, 3], "float64")

    def run(fn):
        call = lambda: fn(x, axis)  # noqa: E731
        return call() if mode == "eager" else tf.function(call)()

    if mode == "eager" and isinstance(axis, list) and isinstance(axis[0], list) \
            and ops[1] is not None:
        return  # TF's eager kernels flatten a nested list of axes; covered by the graph mode
    check(lambda: run(ours), lambda: run(theirs))


@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + _INTS + ("bool",))
def test_cumsum_dtypes(dtype):
    x = _data([3, 5], dtype) if dtype != "bool" else tf.constant([True, False])
    for exclusive in (False, True):
        for reverse in (False, True):
            check(lambda: so.cumsum(x, 0, exclusive, reverse),
                  lambda: tf.cumsum(x, 0, exclusive, reverse), scale=8.0)


@pytest.mark.parametrize("axis", [0, 1, -1, -2, np.int64(1), tf.constant(1),
                                  tf.constant(0, tf.int64), [0], 2, -3, 1.5, "a", None],
                         ids=repr)
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_cumsum_axis_forms_and_errors(axis, mode):
    x = _data([3, 4], "float64")

    def run(fn):
        call = lambda: fn(x, axis)  # noqa: E731
        return call() if mode == "eager" else tf.function(call)()

    check(lambda: run(so.cumsum), lambda: run(tf.cumsum), scale=8.0)


_SOFTMAXES = [(so.softmax, tf.nn.softmax), (so.log_softmax, tf.nn.log_softmax)]


@pytest.mark.parametrize("ops", _SOFTMAXES, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + _INTS)
def test_softmax_dtypes(ops, dtype):
    ours, theirs = ops
    x = _data([3, 5], dtype)
    check(lambda: ours(x), lambda: theirs(x), scale=4.0)


_SOFTMAX_AXES = [None, 0, 1, -1, -3, np.int64(1), 3, -4, [1], 1.5, "a"]
_SOFTMAX_GRAPH_DEFAULT = (None, 3, -4, [1], 1.5, "a")  # each valid axis compiles (XLA): slow


@pytest.mark.parametrize("ops", _SOFTMAXES, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("axis,mode", [(a, "eager") for a in _SOFTMAX_AXES] + [
    pytest.param(a, "graph", marks=() if any(a is d for d in _SOFTMAX_GRAPH_DEFAULT)
                 else pytest.mark.slow) for a in _SOFTMAX_AXES], ids=repr)
def test_softmax_axis_forms_and_errors(ops, axis, mode):
    ours, theirs = ops
    x = _data([2, 3, 4], "float32")

    def run(fn):
        call = lambda: fn(x, axis)  # noqa: E731
        return call() if mode == "eager" else tf.function(call)()

    check(lambda: run(ours), lambda: run(theirs), scale=4.0)


def test_softmax_axis_tensor():
    # eager TF takes a tensor axis; in a graph TF's softmax cannot (it branches on the axis
    # in Python) while ours takes a tensor whose value is known when the graph is built
    x = _data([2, 3], "float32")
    check(lambda: so.softmax(x, tf.constant(0)), lambda: tf.nn.softmax(x, tf.constant(0)))
    graph = tf.function(lambda: so.softmax(x, tf.constant(0)))()
    np.testing.assert_allclose(graph.numpy(), tf.nn.softmax(x, 0).numpy(), rtol=4e-7)


_NORM_ORDS = ["euclidean", "fro", 1, 2, np.inf, 3, 0.5, 0, -1]


@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + ("int32",))
@pytest.mark.parametrize("ord_", _NORM_ORDS, ids=repr)
@pytest.mark.parametrize("axis", [None, 0, -1, [0, 1], (1, 0)], ids=repr)
def test_norm_dtypes_ords_axes(dtype, ord_, axis):
    if dtype in ("float16", "bfloat16") and ord_ not in ("euclidean", 1):
        return  # half types: the ords are the same code as float32 (compute dtype)
    x = _data([3, 4], dtype)
    for keepdims in (None, True):
        check(lambda: so.norm(x, ord_, axis, keepdims), lambda: tf.norm(x, ord_, axis, keepdims),
              scale=16.0)


def test_norm_axis_numpy_and_tensor_accepted():
    # a deliberate difference: TF's norm raises ValueError for a NumPy integer or tensor axis
    x = _data([3, 4], "float64")
    ref = tf.norm(x, axis=1)
    for axis in (np.int64(1), tf.constant(1), tf.constant([1])):
        with pytest.raises(ValueError):
            tf.norm(x, axis=axis)
        np.testing.assert_allclose(so.norm(x, axis=axis).numpy(), ref.numpy(), rtol=1e-15)


@pytest.mark.parametrize("dtype", _FLOATS + _COMPLEX + ("int32", "int64"))
def test_matmul_dtypes_and_flags(dtype):
    a, b = _data([2, 3, 4], dtype, 1), _data([2, 4, 5], dtype, 2)
    check(lambda: so.matmul(a, b), lambda: tf.linalg.matmul(a, b), scale=16.0)
    at = tf.linalg.matrix_transpose(a)
    bt = tf.linalg.adjoint(b)
    for kw in ({"transpose_a": True}, {"adjoint_a": True}):
        check(lambda: so.matmul(at if "transpose_a" in kw else tf.linalg.adjoint(a), b, **kw),
              lambda: tf.linalg.matmul(at if "transpose_a" in kw else tf.linalg.adjoint(a), b,
                                       **kw), scale=16.0)
    # TF's kernel hints (TF takes a_is_sparse for matrices only, ours for batches too)
    check(lambda: so.matmul(a[0], bt[0], adjoint_b=True, a_is_sparse=True, b_is_sparse=True,
                            grad_a=True, grad_b=True),
          lambda: tf.linalg.matmul(a[0], bt[0], adjoint_b=True, a_is_sparse=True,
                                   b_is_sparse=True, grad_a=True, grad_b=True), scale=16.0)
    # a deliberate difference: the hints are ignored, so batched operands work with them
    np.testing.assert_array_equal(so.matmul(a, b, a_is_sparse=True, b_is_sparse=True).numpy(),
                                  so.matmul(a, b).numpy())
    check(lambda: so.matmul(a, b, output_type=dtype),
          lambda: tf.linalg.matmul(a, b, output_type=dtype), scale=16.0)


def test_matmul_positional_order_and_errors():
    a = _data([2, 2], "float32")
    # TF's positional order: a, b, transpose_a, transpose_b, adjoint_a, adjoint_b, ...
    check(lambda: so.matmul(a, a, False, True, False, False),
          lambda: tf.linalg.matmul(a, a, False, True, False, False))
    for bad in [lambda f: f(a, a, transpose_a=True, adjoint_a=True),
                lambda f: f(tf.ones([3]), a),
                lambda f: f(tf.ones([2, 3]), tf.ones([2, 3])),
                lambda f: f(a, tf.ones([2, 2], tf.float64)),
                lambda f: f(tf.ones([2, 2], tf.int8), tf.ones([2, 2], tf.int8),
                            output_type=tf.float32)]:
        check(lambda: bad(so.matmul), lambda: bad(tf.linalg.matmul))


# --- RaggedTensor ---------------------------------------------------------------------------

def _ragged(dtype):
    v = [[1.5, -2.25, 3.0], [4.0], [], [0.5, 0.25]]
    return tf.cast(tf.ragged.constant(v, tf.float64), dtype)


@pytest.mark.parametrize("ops", _REDUCTIONS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("dtype", ("float32", "float64", "bfloat16", "int32"))
@pytest.mark.parametrize("axis", [None, 0, 1, -1, [0, 1]], ids=repr)
def test_ragged_reductions(ops, dtype, axis):
    ours, theirs = ops
    if ours is so.reduce_logsumexp and axis in (0, [0, 1]) and dtype != "int32":
        # TF's ragged reduce_logsumexp over the rows fails (a shape assertion); ours is the
        # dense result over the padded rows, padding -inf (no weight)
        r = _ragged(dtype)
        dense = tf.cast(r.to_tensor(default_value=-np.inf), tf.float64)
        ref = tf.reduce_logsumexp(dense, axis)
        np.testing.assert_allclose(tf.cast(ours(r, axis), tf.float64).numpy(), ref.numpy(),
                                   rtol=4 * _eps(dtype))
        return
    r = _ragged(dtype)
    for keepdims in (False, True):
        check(lambda: ours(r, axis, keepdims), lambda: theirs(r, axis, keepdims), scale=8.0)


def test_ragged_inner_axis_stays_ragged():
    r = tf.RaggedTensor.from_row_lengths(_data([5, 3], "float64"), [2, 0, 3])
    for ours, theirs in _REDUCTIONS[:4]:
        check(lambda: ours(r, 2), lambda: theirs(r, 2), scale=8.0)
    for ours, theirs in _SOFTMAXES:
        # softmax along a uniform inner axis: TF rejects it for RaggedTensors (not the last
        # axis); ours maps over the flat values
        out = ours(r, 2)
        assert isinstance(out, tf.RaggedTensor)
        np.testing.assert_allclose(out.flat_values.numpy(), theirs(r.flat_values, 1).numpy(),
                                   rtol=1e-15, atol=1e-15)


def test_ragged_sum_is_compensated():
    # a deliberate difference: TF's ragged float32 sum cancels, ours is exact here
    r = tf.ragged.constant([[1e8, 1.0, -1e8], [3.0]], tf.float32)
    assert so.reduce_sum(r, 1).numpy().tolist() == [1.0, 3.0]
    assert tf.reduce_sum(r, 1).numpy().tolist() != [1.0, 3.0]


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_ragged_softmax_and_log_softmax(dtype):
    r = _ragged(dtype)
    check(lambda: so.softmax(r), lambda: tf.nn.softmax(r), scale=2.0)
    # TF's log_softmax rejects a RaggedTensor; ours gives log(softmax) row by row
    out = so.log_softmax(r)
    assert isinstance(out, tf.RaggedTensor) and out.dtype == dtype
    for row_out, row in zip(out.to_list(), r.to_list()):
        ref = tf.nn.log_softmax(tf.constant(row, tf.float64)).numpy() if row else []
        np.testing.assert_allclose(row_out, ref, rtol=8 * _eps(dtype), atol=8 * _eps(dtype))
    check(lambda: so.softmax(r, 0), lambda: tf.nn.softmax(r, 0))  # both raise


def test_ragged_cumsum():
    r = _ragged("float64")
    for exclusive in (False, True):
        for reverse in (False, True):
            check(lambda: so.cumsum(r, 1, exclusive, reverse),
                  lambda: tf.cumsum(r, 1, exclusive, reverse), scale=8.0)


# --- unknown shapes, placeholder axes, TF1 graphs, empty tensors ------------------------------

_SPECS = [tf.TensorSpec([None, None], tf.float64), tf.TensorSpec(None, tf.float64),
          tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec(None, tf.float32)]


_UNKNOWN_DEFAULT = {(None, 0), (1, 1), ("placeholder", 1), ("placeholder", 2), (None, 3)}


@pytest.mark.parametrize("ops", _REDUCTIONS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("spec,axis", [
    pytest.param(spec, axis, marks=() if (axis, i) in _UNKNOWN_DEFAULT else pytest.mark.slow)
    for i, spec in enumerate(_SPECS) for axis in (None, 1, "placeholder")],
    ids=lambda v: f"{v.dtype.name}{v.shape}" if isinstance(v, tf.TensorSpec) else str(v))
def test_reductions_unknown_shapes(ops, spec, axis):
    ours, theirs = ops
    sigs = [spec] + ([tf.TensorSpec(None, tf.int32)] if axis == "placeholder" else [])

    def wrap(fn):
        if axis == "placeholder":
            return tf.function(lambda v, a: fn(v, a), input_signature=sigs)
        return tf.function(lambda v: fn(v, axis), input_signature=sigs)

    f_ours, f_tf = wrap(ours), wrap(theirs)
    static_ours = f_ours.get_concrete_function().structured_outputs.shape
    static_tf = f_tf.get_concrete_function().structured_outputs.shape
    assert static_ours.rank == static_tf.rank
    if static_tf.rank is not None:
        assert static_ours.is_compatible_with(static_tf)
    for shape in ([2, 3], [0, 3], [4, 0]):
        x = tf.cast(_data(shape, "float64"), spec.dtype)
        args = (x, 1) if axis == "placeholder" else (x,)
        check(lambda: f_ours(*args), lambda: f_tf(*args), scale=8.0)
    if axis == "placeholder":  # the axis is checked when the graph runs, as TF's kernel does
        x = tf.cast(_data([2, 3], "float64"), spec.dtype)
        for bad in (2, [0, 0]):
            check(lambda: f_ours(x, bad), lambda: f_tf(x, bad))


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if i in (0, 2) else s
                                  for i, s in enumerate(_SPECS)],
                         ids=lambda s: f"{s.dtype.name}{s.shape}")
def test_cumsum_softmax_norm_matmul_unknown_shapes(spec):
    for ours, theirs in [(so.cumsum, tf.cumsum), (so.softmax, tf.nn.softmax),
                         (so.log_softmax, tf.nn.log_softmax), (so.norm, tf.norm),
                         (lambda v: so.matmul(v, v, transpose_b=True),
                          lambda v: tf.linalg.matmul(v, v, transpose_b=True))]:
        f_ours = tf.function(ours, input_signature=[spec])
        f_tf = tf.function(theirs, input_signature=[spec])
        for shape in ([2, 3], [0, 3]):
            x = tf.cast(_data(shape, "float64"), spec.dtype)
            check(lambda: f_ours(x), lambda: f_tf(x), scale=8.0)


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_tf1_graph_placeholders(dtype):
    results = {}
    xv, rv = _data([2, 3], "float64").numpy(), _data([3, 4], "float64").numpy()
    for label, mod in (("ours", so), ("tf", None)):
        g = tf.Graph()
        with g.as_default():
            x = tf.compat.v1.placeholder(dtype, shape=None)
            ax = tf.compat.v1.placeholder(tf.int32, shape=None)
            rows = tf.compat.v1.placeholder(dtype, shape=[None, None])
            if mod is None:
                outs = [tf.reduce_sum(x, ax), tf.reduce_mean(x, ax, keepdims=True),
                        tf.math.reduce_std(rows, 0), tf.cumsum(x, ax),
                        tf.reduce_logsumexp(rows, 1), tf.nn.softmax(rows), tf.norm(rows)]
            else:
                outs = [so.reduce_sum(x, ax), so.reduce_mean(x, ax, keepdims=True),
                        so.reduce_std(rows, 0), so.cumsum(x, ax),
                        so.reduce_logsumexp(rows, 1), so.softmax(rows), so.norm(rows)]
            with tf.compat.v1.Session(graph=g) as sess:
                feed = {x: xv, ax: 1, rows: rv}
                results[label] = sess.run(outs, feed)
                results[label + "_shapes"] = [o.shape.rank for o in outs]
    assert results["ours_shapes"] == results["tf_shapes"]
    for a, b in zip(results["ours"], results["tf"]):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=16 * _eps(dtype))


@pytest.mark.parametrize("dtype", ("float32", "float64", "complex64"))
def test_empty_tensors(dtype):
    for shape in ([0], [2, 0], [0, 3], [1, 0, 3]):
        x = tf.zeros(shape, dtype)
        for ours, theirs in _REDUCTIONS[:4] + [(so.cumsum, tf.cumsum)]:
            for axis in ([None, 0, -1] if ours is not so.cumsum else [0, -1]):
                if ours is so.reduce_mean and dtype == "complex64" and x.shape[axis] == 0 \
                        if axis is not None else ours is so.reduce_mean and dtype == "complex64":
                    # a deliberate difference: the mean of no complex values is NaN + NaNj, as
                    # for real values (TF's complex mean gives 0j)
                    out = ours(x, axis).numpy()
                    assert np.isnan(out.real).all() and np.isnan(out.imag).all()
                    assert out.shape == theirs(x, axis).shape
                    continue
                check(lambda: ours(x, axis), lambda: theirs(x, axis))
        if dtype != "complex64":
            check(lambda: so.reduce_logsumexp(x, -1), lambda: tf.reduce_logsumexp(x, -1))
            check(lambda: so.softmax(x), lambda: tf.nn.softmax(x))
            check(lambda: so.log_softmax(x), lambda: tf.nn.log_softmax(x))


def test_edge_values():
    # reduce_logsumexp over no axes keeps TF's shape; the norm of an empty tensor is 0
    x = tf.zeros([1, 0, 3])
    check(lambda: so.reduce_logsumexp(x, axis=[]), lambda: tf.reduce_logsumexp(x, axis=[]))
    for ord_ in ("euclidean", 1, 2, 3, np.inf):
        assert float(so.norm(tf.zeros([0]), ord_)) == 0.0
    assert float(tf.norm(tf.zeros([0]), np.inf)) == -np.inf  # TF's, a deliberate difference


def test_high_rank():
    # rank 9: TF's variance, std and softmax stop at its broadcasting kernels' rank limit of
    # 8 (UnimplementedError); ours merge adjacent axes first. NumPy is the reference there.
    x = _data([2, 1, 2, 1, 2, 1, 2, 1, 2], "float64")
    v = x.numpy()
    refs = {so.reduce_sum: np.sum, so.reduce_mean: np.mean, so.reduce_variance: np.var,
            so.reduce_std: np.std,
            so.reduce_logsumexp: lambda a, axis: np.log(np.sum(np.exp(a), axis=axis))}
    for ours, ref in refs.items():
        out = ours(x, [0, 4, 8])
        assert out.shape == ref(v, axis=(0, 4, 8)).shape
        np.testing.assert_allclose(out.numpy(), ref(v, axis=(0, 4, 8)), rtol=1e-14)
    check(lambda: so.reduce_sum(x, [0, 4, 8], keepdims=True),
          lambda: tf.reduce_sum(x, [0, 4, 8], keepdims=True), scale=16.0)
    check(lambda: so.cumsum(x, 6), lambda: tf.cumsum(x, 6), scale=16.0)
    e = np.exp(v - v.max(axis=4, keepdims=True))
    np.testing.assert_allclose(so.softmax(x, 4).numpy(), e / e.sum(axis=4, keepdims=True),
                               rtol=1e-14)
    check(lambda: so.norm(x), lambda: tf.norm(x), scale=16.0)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_execution_modes(mode):
    x = _data([3, 4], "float64")
    xc = tf.complex(x, -x)
    cases = [(lambda: so.reduce_sum(xc, 1), lambda: tf.reduce_sum(xc, 1)),
             (lambda: so.reduce_variance(xc, 0), lambda: tf.math.reduce_variance(xc, 0)),
             (lambda: so.cumsum(xc, 1), lambda: tf.cumsum(xc, 1)),
             (lambda: so.matmul(xc, xc, adjoint_b=True),
              lambda: tf.linalg.matmul(xc, xc, adjoint_b=True)),
             (lambda: so.norm(xc), lambda: tf.norm(xc)),
             (lambda: so.softmax(x, None), lambda: tf.nn.softmax(x, None))]
    for ours, theirs in cases:
        if mode != "eager":
            ours = tf.function(ours, jit_compile=(mode == "xla"))
        check(ours, theirs, scale=16.0)


def test_ragged_in_tf_function():
    # a RaggedTensor of unknown row lengths in a graph: the same result type and values
    spec = tf.RaggedTensorSpec([None, None], tf.float64, ragged_rank=1)
    r = _ragged("float64")
    cases = [(lambda v: so.reduce_sum(v, 1), lambda v: tf.reduce_sum(v, 1)),
             (lambda v: so.reduce_std(v, 1), lambda v: tf.math.reduce_std(v, 1)),
             (lambda v: so.reduce_mean(v, 0, True), lambda v: tf.reduce_mean(v, 0, True)),
             (lambda v: so.softmax(v), lambda v: tf.nn.softmax(v)),
             (lambda v: so.cumsum(v, 1), lambda v: tf.cumsum(v, 1))]
    for ours, theirs in cases:
        check(lambda: tf.function(ours, input_signature=[spec])(r),
              lambda: tf.function(theirs, input_signature=[spec])(r), scale=8.0)
