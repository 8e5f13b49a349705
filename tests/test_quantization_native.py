"""The fused fake-quant kernels (SafeopsFakeQuant, SafeopsFakeQuantGrad; safeops/native/quant.cc)
against TF's own ops, bit for bit, and their wiring into `so.quantization`.

References: `tf.quantization.fake_quant_with_min_max_vars` (forward) and the first output of
`tf.raw_ops.FakeQuantWithMinMaxVarsGradient` (gradient), over every num_bits, both
narrow_range settings, ranges TF nudges (min > 0, max < 0, min == max, [0, 0], tiny, huge,
NaN and infinite bounds), special inputs (NaN, +-inf, +-0, subnormals, +-3e38) and sizes
around the vector width (the padded tail) and large enough to be split over threads. The
training check runs the same QAT steps with the kernels and under `so.native.disabled()`
(TF's ops) and compares every weight and range bit for bit.
"""

import keras
import numpy as np
import pytest
from test_native_support import require_kernels
import tensorflow as tf

import safeops as so
from safeops import native
from safeops.quantization import MovingAverageQuantizer, export_tflite, quantize_model
from safeops.quantization.fake_quant import _fused_grids, _quantize_weight, _symmetric_grid

_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 3e38, -3e38,
                     np.float32(2.0 ** -126)], np.float32)
_RANGES = [(-1, 1), (0, 1), (-1, 0), (0.5, 2), (-2, -0.5), (1, 1), (-1, -1), (0, 0), (-0.0, 0.0),
           (-6, 6), (-1e-30, 1e-30), (-1e-38, 1e-38), (-3e38, 3e38), (-1e-3, 7), (-0.1, 1e4),
           (0.3, 0.3), (2, 1), (1e-45, 2e-45), (np.nan, 1), (-1, np.nan), (-np.inf, 1),
           (-1, np.inf)]
_SIZES = (0, 1, 7, 15, 16, 17, 33, 1001)


@pytest.fixture(name="lib")
def _lib(monkeypatch):
    return require_kernels(monkeypatch)


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _assert_same_bits(got, ref, what):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, what
    bad = np.nonzero(_bits(got).ravel() != _bits(ref).ravel())[0]
    assert bad.size == 0, (what, bad[:5], got.ravel()[bad[:5]], ref.ravel()[bad[:5]])


def _inputs(rng, n, lo, hi):
    finite = np.isfinite(lo) and np.isfinite(hi)
    scale = max(abs(lo), abs(hi), 1.0) if finite else 1.0
    x = (rng.standard_normal(n) * min(scale * 1.5, 1e37)).astype(np.float32)
    x[:_SPECIAL.size] = _SPECIAL[:n]
    g = rng.standard_normal(n).astype(np.float32)
    g[:4] = np.array([np.inf, -np.inf, np.nan, -1.0], np.float32)[:n]
    return x, g


@pytest.mark.parametrize("num_bits", range(2, 17))
@pytest.mark.parametrize("narrow_range", [False, True])
def test_forward_and_gradient_match_tf_bit_for_bit(lib, num_bits, narrow_range):
    rng = np.random.default_rng(num_bits * 2 + narrow_range)
    attrs = dict(num_bits=num_bits, narrow_range=narrow_range)
    for lo, hi in _RANGES:
        lo32, hi32 = tf.constant(lo, tf.float32), tf.constant(hi, tf.float32)
        for n in _SIZES:
            x, g = _inputs(rng, n, lo, hi)
            ref = tf.quantization.fake_quant_with_min_max_vars(x, lo32, hi32, **attrs)
            _assert_same_bits(lib.safeops_fake_quant(x, lo32, hi32, **attrs), ref,
                              ("forward", lo, hi, n))
            gref = tf.raw_ops.FakeQuantWithMinMaxVarsGradient(
                gradients=g, inputs=x, min=lo32, max=hi32, **attrs)[0]
            _assert_same_bits(lib.safeops_fake_quant_grad(g, x, lo32, hi32, **attrs), gref,
                              ("gradient", lo, hi, n))


def test_large_and_shaped_tensors_match_tf_in_graphs(lib):
    """Sizes split over threads, any rank, inside a tf.function (the QAT path)."""
    rng = np.random.default_rng(7)
    lo, hi = tf.constant(-2.7), tf.constant(3.1)

    @tf.function
    def both(x, g):
        return (lib.safeops_fake_quant(x, lo, hi), lib.safeops_fake_quant_grad(g, x, lo, hi),
                tf.quantization.fake_quant_with_min_max_vars(x, lo, hi),
                tf.raw_ops.FakeQuantWithMinMaxVarsGradient(gradients=g, inputs=x, min=lo,
                                                           max=hi)[0])

    for shape in ([128, 26, 26, 32], [3, 100003], [0, 5], []):
        x = tf.constant(rng.standard_normal(shape).astype(np.float32) * 3)
        g = tf.constant(rng.standard_normal(shape).astype(np.float32))
        y, dx, yref, dxref = both(x, g)
        _assert_same_bits(y, yref, ("forward", shape))
        _assert_same_bits(dx, dxref, ("gradient", shape))


def test_fake_quant_uses_the_kernel_and_matches_the_tf_path(lib):
    """`fake_quant` (scalar range, float32, graph): the kernel runs and its value and
    gradient equal the pure-TF path's, [0, 0] and min > 0 ranges included."""
    del lib
    x = tf.constant(np.concatenate([np.linspace(-3, 3, 301), _SPECIAL]).astype(np.float32))
    w = tf.constant(np.random.default_rng(3).standard_normal(x.shape[0]).astype(np.float32))

    def value_and_grad(t, lo, hi, bits, narrow):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = so.quantization.fake_quant(t, lo, hi, num_bits=bits, narrow_range=narrow)
            loss = tf.reduce_sum(tf.where(tf.math.is_finite(y), y, 0.0) * w)
        return y, tape.gradient(loss, t)

    for lo, hi, bits, narrow in ((-1.5, 1.0, 8, False), (0.5, 2.0, 4, True), (0.0, 0.0, 8, False),
                                 (-2.0, -2.0, 3, False), (-1e-6, 1e4, 16, True)):
        args = (x, tf.constant(lo), tf.constant(hi), bits, narrow)
        fn = tf.function(value_and_grad)
        ops = {op.type for op in fn.get_concrete_function(*args).graph.get_operations()}
        assert "SafeopsFakeQuant" in ops
        got = fn(*args)
        with native.disabled():
            ref_fn = tf.function(value_and_grad)
            ops = {op.type for op in ref_fn.get_concrete_function(*args).graph.get_operations()}
            assert not any(o.startswith("Safeops") for o in ops), ops
            ref = ref_fn(*args)
        for a, b, what in zip(got, ref, ("value", "gradient")):
            _assert_same_bits(a, b, (what, lo, hi, bits, narrow))


def test_second_order_gradient_is_defined(lib):
    """d/dg of the backward is the same mask; d/dx is 0 (piecewise constant)."""
    x = tf.constant([-3.0, -0.5, 0.0, 0.4, 2.0])  # inside or well outside the nudged range
    lo, hi = tf.constant(-1.0), tf.constant(1.0)

    @tf.function
    def second(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                z = lib.safeops_fake_quant(x, lo, hi) * x
            g = inner.gradient(z, x)
        return g, outer.gradient(g, x)

    g, gg = second(x)
    # y * x: d/dx = mask * x + y; the second derivative is mask + mask (STE twice)
    mask = np.array([0.0, 1.0, 1.0, 1.0, 0.0], np.float32)
    y = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi).numpy()
    np.testing.assert_array_equal(g.numpy(), mask * x.numpy() + y)
    np.testing.assert_array_equal(gg.numpy(), 2 * mask)


@pytest.mark.parametrize("num_bits", [2, 8, 16])
def test_moving_average_quantizer_matches_the_tf_path(lib, num_bits):
    """The training call as one kernel (SafeopsFakeQuantEma): outputs, input gradients and the
    range variables equal the pure-TF path's bit for bit over a sequence of batches: the
    first batch, all-zero batches (a [0, 0] range: NaN kept, gradient only at NaN), NaN and
    infinite inputs, an empty batch, float16 inputs."""
    del lib
    rng = np.random.default_rng(num_bits)

    def batch(kind, dtype=np.float32):
        x = rng.standard_normal((5, 37)).astype(np.float32) * 3
        if kind == "zeros":
            x[:] = 0.0
            x[1, 2] = np.nan
        elif kind == "special":
            x[0, :5] = [np.nan, np.inf, -np.inf, -0.0, 1e-40]
        elif kind == "positive":
            x = np.abs(x) + 0.5
        elif kind == "empty":
            x = x[:0]
        return x.astype(dtype)

    sequences = [["zeros", "zeros", "normal", "zeros"], ["normal", "positive", "normal"],
                 ["empty", "normal", "special", "normal"], ["special", "normal"]]
    for kinds in sequences:
        for dtype in (np.float32, np.float16):
            batches = [batch(k, dtype) for k in kinds]
            g = rng.standard_normal((5, 37)).astype(dtype)
            results = []
            for use_native in (True, False):
                layer = MovingAverageQuantizer(num_bits=num_bits, ema_decay=0.9,
                                               dtype="float16" if dtype == np.float16 else None)
                layer.build(None)

                def step(x, layer=layer):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = layer(x, training=True)
                        loss = tf.reduce_sum(tf.cast(y, tf.float32)
                                             * tf.cast(g, tf.float32)[:tf.shape(x)[0]])
                    return y, tape.gradient(loss, x)

                fn = tf.function(step)
                out = []
                if use_native:
                    ops = {op.type for op in fn.get_concrete_function(
                        tf.TensorSpec([None, 37], dtype)).graph.get_operations()}
                    assert "SafeopsFakeQuantEma" in ops, ops
                    for x in batches:
                        out.append([v.numpy() for v in fn(tf.constant(x))])
                else:
                    with native.disabled():
                        for x in batches:
                            out.append([v.numpy() for v in fn(tf.constant(x))])
                out.append([v.numpy() for v in layer.weights])
                results.append(out)
            for step_a, step_b in zip(*results):
                for a, b in zip(step_a, step_b):
                    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
                    _assert_same_bits(a, b, (kinds, dtype))


@pytest.mark.parametrize("num_bits", [2, 4, 8, 16])
def test_symmetric_grid_matches_the_tf_grid(lib, num_bits):
    """SafeopsSymmetricGrid == `_symmetric_grid` (TF's element-wise ops) bit for bit, NaN,
    zero channels and subnormals included, per channel and per tensor, and == the XLA-fused
    grid on finite weights (XLA's max may drop a NaN); `_quantize_weight` runs it."""
    rng = np.random.default_rng(num_bits)
    n = tf.constant(float(2 ** (num_bits - 1) - 1))
    for shape in ([784, 256], [256, 10], [3, 3, 32, 64], [9216, 17], [5], [1, 1], [17, 33]):
        for special in (False, True):
            w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
            if special:
                flat = w.reshape(-1)
                flat[:3] = [0.0, -0.0, 1e-40][:flat.size]
                if w.ndim == 2 and shape[1] > 3:
                    w[:, 2] = 0.0
                    w[1, 3] = np.nan
            for per_channel in (True, False):
                axes = list(range(w.ndim - 1)) if per_channel else list(range(w.ndim))
                got = lib.safeops_symmetric_grid(w, num_bits=num_bits, per_channel=per_channel)
                _assert_same_bits(got, _symmetric_grid(tf.constant(w), n, axes),
                                  (shape, special, per_channel))
                if np.isfinite(w).all():
                    _assert_same_bits(got, _fused_grids[True](tf.constant(w), n, axes),
                                      ("xla", shape, per_channel))
    w = tf.constant(rng.standard_normal([20, 8]).astype(np.float32))
    fn = tf.function(lambda v: _quantize_weight(v, num_bits, True, True))
    assert "SafeopsSymmetricGrid" in {op.type for op in
                                      fn.get_concrete_function(w).graph.get_operations()}
    with native.disabled():
        _assert_same_bits(fn(w), tf.function(lambda v: _quantize_weight(v, num_bits, True,
                                                                        True))(w), "wired")


def _qat(kind):
    keras.utils.set_random_seed(0)
    if kind == "mlp":
        model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(4)])
    else:
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
        h = keras.layers.Flatten()(h)
        model = keras.Model(inp, keras.layers.Dense(4)(h))
    return quantize_model(model)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_qat_training_matches_the_tf_path(lib, kind):
    """A few SGD steps of a QAT model with the kernels and with TF's ops: every weight and
    activation range ends with the same bits, and the step's graph holds the kernels."""
    del lib
    rng = np.random.default_rng(0)
    shape = (32, 20) if kind == "mlp" else (32, 8, 8, 1)
    xs = [tf.constant(rng.standard_normal(shape).astype(np.float32)) for _ in range(4)]
    ys = [tf.constant(rng.integers(0, 4, 32).astype(np.int32)) for _ in range(4)]
    results = []
    for use_native in (True, False):
        model = _qat(kind)
        opt = keras.optimizers.SGD(learning_rate=0.1)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def step(x, y, model=model, opt=opt, loss_fn=loss_fn):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            return loss

        fn = tf.function(step)
        if use_native:
            ops = {op.type for op in
                   fn.get_concrete_function(xs[0], ys[0]).graph.get_operations()}
            fused = {"SafeopsFakeQuantEma", "SafeopsFakeQuantGrad", "SafeopsSymmetricGrid"}
            assert fused <= ops, ops
            for x, y in zip(xs, ys):
                fn(x, y)
        else:
            with native.disabled():
                for x, y in zip(xs, ys):
                    fn(x, y)
        results.append([v.numpy() for v in model.weights])
    for a, b in zip(*results):
        _assert_same_bits(a, b, "weight")


def test_exported_tflite_holds_no_custom_op(lib):
    """The converter traces under `so.native.disabled()`: no Safeops op in the TFLite model,
    although an inference graph of the same model holds the kernels."""
    del lib
    model = _qat("cnn")
    x = np.random.default_rng(1).standard_normal((16, 8, 8, 1)).astype(np.float32)
    model(x, training=True)
    graph = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.constant(x)).graph
    assert "SafeopsFakeQuant" in {op.type for op in graph.get_operations()}
    blob = export_tflite(model, x)
    interpreter = tf.lite.Interpreter(model_content=blob)
    names = {d["op_name"] for d in interpreter._get_ops_details()}  # noqa: SLF001
    assert names and not any("Safeops" in n or "Custom" in n.title() for n in names), names
    assert b"Safeops" not in blob
