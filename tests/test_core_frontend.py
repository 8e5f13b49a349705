"""The shared frontend of the element-wise ops: argument conversion, scalar parameters,
the custom-gradient template and its one TensorFlow touchpoint."""

import numpy as np
import pytest
import tensorflow as tf

from safeops._core import args, elementwise, gradient


def test_dtype_error_is_both_of_tfs_errors():
    err = args.dtype_error("safeops.op", "bad dtype")
    assert isinstance(err, TypeError) and isinstance(err, tf.errors.InvalidArgumentError)
    assert str(err) == "safeops.op: bad dtype"
    # TF raises one eagerly and the other while building a graph, for the same mistake
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.math.add(tf.constant(1.0), tf.constant(1.0, tf.float64))
    with pytest.raises(TypeError):
        tf.function(lambda: tf.math.add(tf.constant(1.0), tf.constant(1.0, tf.float64)))()


def test_convert_n_follows_tf_rule():
    f64 = tf.constant([1.0, 2.0], tf.float64)
    for values in ((1.0, f64), (f64, 2), (np.float32(1.0), f64), ([1.0, 2.0], f64)):
        out = args.convert_n("op", ("x", "y"), values)
        assert [t.dtype for t in out] == [tf.float64, tf.float64]
    # no tensor: the first value's own dtype, as TF
    assert args.convert_n("op", ("x", "y"), (np.array([1.0]), 2.0))[1].dtype == tf.float64
    assert args.convert_n("op", ("x", "y"), (1.0, 2.0))[1].dtype == tf.float32
    with pytest.raises(args.DTypeError, match="op: arguments 'x' and 'y' must have the same"):
        args.convert_n("op", ("x", "y"), (tf.constant(1.0), f64))
    with pytest.raises(TypeError, match="op: arguments 'x' and 'y'"):
        args.convert_n("op", ("x", "y"), (tf.constant(1.0), f64), mismatch=TypeError)
    with pytest.raises(args.DTypeError, match="op: argument 'y' must have dtype"):
        args.convert_n("op", ("x", "y"), (1, tf.constant([1, 2])))
    with pytest.raises((TypeError, ValueError), match="op: argument 'x' cannot be converted"):
        args.convert_n("op", ("x", "y"), (object(), 1.0))  # TF's own error type, op named


def test_convert_keeps_allowed_composites_and_reads_variables():
    r = tf.ragged.constant([[1.0], []])
    assert args.convert("op", "x", r, composite=(tf.RaggedTensor,)) is r
    with pytest.raises(ValueError, match="op: argument 'x'"):
        args.convert("op", "x", tf.sparse.from_dense([[1.0]]))
    v = tf.Variable([1.0, 2.0])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(args.convert("op", "x", v) * 3.0)
    np.testing.assert_array_equal(tape.gradient(y, v).numpy(), [3.0, 3.0])


def test_param_checks_numbers_and_tensors_alike():
    for bad in (0.0, -1, tf.constant(0.0), np.float32(-1.0), float("nan")):
        with pytest.raises(ValueError, match="op: argument 'eps' must be > 0"):
            args.param("op", "eps", bad, tf.float32)
    with pytest.raises(ValueError, match="must be >= 0"):
        args.param("op", "c", -1.0, tf.float32, "nonnegative")
    for bad in ("1", True, None, [1.0, "a"]):
        with pytest.raises(TypeError, match="op: argument 'eps'"):
            args.param("op", "eps", bad, tf.float32)
    # a Python number goes straight to the dtype (no float32 detour)
    assert args.param("op", "eps", 1e-300, tf.float64).numpy() == 1e-300
    assert args.param("op", "eps", tf.constant(2), tf.float32).dtype == tf.float32
    with pytest.raises(args.DTypeError):
        args.param("op", "eps", tf.constant(1.0, tf.float64), tf.float32)
    assert args.param("op", "c", tf.constant(1.0, tf.float64), tf.float32,
                      cast=True).dtype == tf.float32

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def dynamic(eps):
        return args.param("op", "eps", eps, tf.float32) * 2.0

    assert dynamic(tf.constant(1.5)).numpy() == 3.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be > 0"):
        dynamic(tf.constant(-1.0))


def _fwd(x, y, c):
    return x * y + c, (x * y,)


def _bwd(g, x, y, c, xy):
    return g * y, g * x


_OP = gradient.custom_gradient("Test", _fwd, _bwd, n_inputs=2, saves=True)


def _grads(x, y):
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        out = _OP(x, y, tf.constant(1.0))
    return [out] + tape.gradient(out, [x, y])


def test_template_gradients_in_every_mode():
    x, y = tf.constant([[1.0, 2.0]]), tf.constant([[3.0], [4.0]])  # broadcast to [2, 2]
    expected = [[[4.0, 7.0], [5.0, 9.0]], [[7.0, 7.0]], [[3.0], [3.0]]]
    for mode, f in (("eager", _grads), ("function", tf.function(_grads)),
                    ("jit", tf.function(_grads, jit_compile=True))):
        got = f(x, y)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g.numpy(), e, err_msg=mode)
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as acc:
        out = _OP(x, y, tf.constant(1.0))
    np.testing.assert_array_equal(acc.jvp(out).numpy(), [[3.0, 3.0], [4.0, 4.0]])


def test_template_rank_above_eight_and_unknown_rank():
    x = tf.fill([1] * 9 + [2], 2.0)
    y = tf.constant(3.0)
    out, gx, gy = _grads(x, y)
    assert out.shape == x.shape and gx.shape == x.shape and gy.shape == ()
    np.testing.assert_array_equal(gx.numpy(), np.full(x.shape, 3.0))
    assert gy.numpy() == 4.0
    f = tf.function(_grads, input_signature=[tf.TensorSpec(None, tf.float32)] * 2)
    out, gx, gy = f(tf.constant([1.0, 2.0]), tf.constant(3.0))
    np.testing.assert_array_equal(out.numpy(), [4.0, 7.0])
    assert gy.numpy() == 3.0


def test_eager_tape_touchpoint():
    # The eager fast path records on TF's tape directly (tensorflow.python.eager.record).
    # If a TF release moves it, the template falls back to tf.custom_gradient; this test
    # says so loudly.
    assert gradient.eager_recording_available(), (
        "tensorflow.python.eager.record (could_possibly_record, stop_recording, "
        "record_operation) is gone: the template runs through tf.custom_gradient")
    x = tf.constant([1.0, 2.0])
    out = _OP(x, x, tf.constant(0.0))  # no tape: plain forward, nothing recorded
    np.testing.assert_array_equal(out.numpy(), [1.0, 4.0])


def test_select_any_rank():
    c = tf.fill([1] * 9 + [2], True)
    a, b = tf.fill([1] * 9 + [2], 1.0), tf.constant(0.0)
    np.testing.assert_array_equal(elementwise.select(c, a, b).numpy(), a.numpy())
    with pytest.raises(tf.errors.UnimplementedError):
        tf.where(c, a, b)


def test_name_scope_only_in_graphs():
    assert elementwise.name_scope("x") is elementwise._NO_SCOPE

    @tf.function
    def f():
        with elementwise.name_scope("inner"):
            return tf.identity(tf.constant(1.0), name="v")

    graph = f.get_concrete_function().graph
    assert any(op.name.startswith("inner/") for op in graph.get_operations())


def test_fused_bodies_are_traced_with_static_shapes_for_every_shape():
    """A fused (XLA-compiled) body called at several shapes keeps each call's static shape:
    softmax's float64 row sum of a static row length is a dot product with ones, also at the
    third shape (a trace relaxed to unknown dimensions would sum with a reduce instead)."""
    import safeops as so

    def hlo(shape):
        x = tf.zeros(shape, tf.float32)
        f = tf.function(lambda t: so.softmax(t), jit_compile=True)
        return f.experimental_get_compiler_ir(x)(stage="hlo")

    for shape in ([3, 40], [5, 24], [7, 1000]):
        text = hlo(shape)
        assert " dot(" in text, shape
        assert f"f64[{shape[0]},{shape[1]}]" in text, shape
