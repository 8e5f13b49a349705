"""The profiler's float64 kernel formulations (`safeops.doctor._kernels`) and their native
kernels (``safeops/native/doctor.cc``) against the TF ops they replace: forward values and
gradients equal, or within the float64 rounding bound of sums taken in another order."""

import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import native
from safeops.doctor import _kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U = 2.0 ** -53


def _gamma(k):
    return k * U / (1 - k * U)


def _lib():
    lib = native.library()
    if lib is None:
        pytest.skip(f"native kernels unavailable: {native.status()['error']}")
    return lib


def _pads(k, padding):
    return ((k - 1) // 2, k - 1 - (k - 1) // 2) if padding == "SAME" else (0, 0)


def _filter_grad(x, shape, g, padding):
    return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=shape, out_backprop=g,
                                           strides=[1, 1, 1, 1], padding=padding)


def _conv_grads(conv, x, k, g):
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        out = conv(x, k)
    return (out,) + tuple(tape.gradient(out, [x, k], output_gradients=g))


@pytest.mark.parametrize("kshape, padding", [
    ((3, 3, 4, 5), "SAME"), ((3, 3, 4, 5), "VALID"), ((2, 4, 3, 2), "SAME"),
    ((2, 4, 3, 2), "VALID"), ((1, 1, 3, 6), "SAME"), ((5, 3, 2, 3), "SAME"),
])
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_conv2d_equals_tf_conv2d_forward_and_gradients(kshape, padding, mode):
    """The pure-TF path (kernels disabled). Forward and kernel gradient: TF's ops (equal);
    input gradient: TF's Conv2DBackpropInput within the bound of two float64 sums of K
    products in different orders, 2 gamma_K sum(|g| |w|) (the same convolution of |g| and
    |w|)."""
    rng = np.random.default_rng(sum(kshape))
    x = tf.constant(rng.standard_normal((3, 7, 6, kshape[2])))
    k = tf.constant(rng.standard_normal(kshape))
    out_shape = tf.nn.conv2d(x, k, 1, padding).shape
    g = tf.constant(rng.standard_normal(out_shape))
    ours = lambda a, b: _kernels.conv2d(a, b, padding)  # noqa: E731
    run = tf.function(_conv_grads, autograph=False) if mode == "graph" else _conv_grads
    with native.disabled():
        out, dx, dk = run(ours, x, k, g)
    ref_out, ref_dx, ref_dk = _conv_grads(lambda a, b: tf.nn.conv2d(a, b, 1, padding), x, k, g)
    np.testing.assert_array_equal(out.numpy(), ref_out.numpy())
    np.testing.assert_array_equal(dk.numpy(), ref_dk.numpy())
    _, bound_dx, _ = _conv_grads(lambda a, b: tf.nn.conv2d(a, tf.abs(b), 1, padding), x, k, tf.abs(g))
    terms = kshape[0] * kshape[1] * kshape[3]
    u = 2.0 ** -53
    gamma = terms * u / (1 - terms * u)
    err = np.abs(dx.numpy() - ref_dx.numpy())
    assert np.all(err <= 2 * gamma * bound_dx.numpy())
    assert dx.dtype == tf.float64


@pytest.mark.parametrize("path", ["tf", "native"])
def test_float64_conv2d_copy_uses_the_formulation_and_equals_keras(path):
    """The pure-TF path: Keras's forward and kernel gradient (equal). The native path: the
    forward within the sum's bound 2 gamma_K sum(|x| |w|) (K = k_h k_w c_in, both sums
    within gamma_K of the exact one) plus one rounding of the bias add on each side."""
    if path == "native":
        _lib()
    rng = np.random.default_rng(1)
    layer = keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
    reference = keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
    x = tf.constant(rng.standard_normal((2, 6, 6, 3)))
    layer.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    assert _kernels.use_fast_float64(layer) is layer and "convolution_op" in vars(layer)
    with native.disabled() if path == "tf" else _nothing():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a, b = layer(x), reference(x)
            la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
        ga = tape.gradient(la, [x] + layer.trainable_weights)
    gb = tape.gradient(lb, [x] + reference.trainable_weights)
    if path == "tf":
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        for u, v in zip(ga[1:], gb[1:]):
            np.testing.assert_array_equal(u.numpy(), v.numpy())
    else:
        bound = 2 * _gamma(3 * 3 * 3) * tf.nn.conv2d(tf.abs(x), tf.abs(layer.kernel), 1,
                                                       "SAME").numpy()
        tol = bound + 2 * U * (np.abs(b.numpy()) + bound)
        assert np.all(np.abs(a.numpy() - b.numpy()) <= tol)
        for u, v in zip(ga[1:], gb[1:]):
            np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ga[0].numpy(), gb[0].numpy(), rtol=1e-12, atol=1e-12)
    for other in (keras.layers.Conv2D(4, 3, dtype="float32"),
                  keras.layers.Conv2D(4, 3, strides=2, dtype="float64"),
                  keras.layers.Conv2D(4, 3, dilation_rate=2, dtype="float64")):
        assert "convolution_op" not in vars(_kernels.use_fast_float64(other))


class _nothing:  # noqa: N801  (a null context)
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# (batch, height, width, c_in, k_h, k_w, c_out, padding): odd sizes, channels off multiples
# of 8 (a masked last vector), more than four vectors of output channels, 1x1, 5x3, batch 1
_SHAPES = [
    (3, 7, 6, 4, 3, 3, 5, "SAME"), (3, 7, 6, 4, 3, 3, 5, "VALID"), (1, 9, 5, 3, 5, 3, 17, "SAME"),
    (1, 9, 5, 3, 5, 3, 17, "VALID"), (2, 5, 4, 3, 1, 1, 6, "SAME"), (2, 6, 7, 9, 2, 4, 3, "VALID"),
    (2, 6, 7, 9, 2, 4, 40, "SAME"), (20, 8, 8, 16, 3, 3, 32, "SAME"), (1, 3, 3, 2, 3, 3, 1, "VALID"),
    (2, 11, 13, 1, 3, 3, 8, "SAME"),
]


@pytest.mark.parametrize("shape", _SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_native_conv2d_within_bound_of_tf(shape, mode):
    """Native forward, input gradient and kernel gradient against TF's float64 Conv2D,
    Conv2DBackpropInput and Conv2DBackpropFilter: each element within 2 gamma_K sum(|a| |b|)
    (two sums of the same K products, each within gamma_K of the exact sum), K = k_h k_w c_in,
    k_h k_w c_out and n out_h out_w; the same bits on a second call."""
    lib = _lib()
    n, h, w, cin, kh, kw, cout, padding = shape
    rng = np.random.default_rng(sum(shape[:-1]))
    x = tf.constant(rng.standard_normal((n, h, w, cin)))
    k = tf.constant(rng.standard_normal((kh, kw, cin, cout)))
    ref_out = tf.nn.conv2d(x, k, 1, padding)
    g = tf.constant(rng.standard_normal(ref_out.shape))
    ours = lambda a, b: _kernels.conv2d(a, b, padding)  # noqa: E731
    run = tf.function(_conv_grads, autograph=False) if mode == "graph" else _conv_grads
    out, dx, dk = run(ours, x, k, g)
    _, ref_dx, ref_dk = _conv_grads(lambda a, b: tf.nn.conv2d(a, b, 1, padding), x, k, g)
    abs_x, abs_k, abs_g = tf.abs(x), tf.abs(k), tf.abs(g)
    _, bound_dx, _ = _conv_grads(lambda a, b: tf.nn.conv2d(a, abs_k, 1, padding), x, k, abs_g)
    checks = ((out, ref_out, tf.nn.conv2d(abs_x, abs_k, 1, padding), kh * kw * cin),
              (dx, ref_dx, bound_dx, kh * kw * cout),
              (dk, ref_dk, _filter_grad(abs_x, k.shape, abs_g, padding),
               n * ref_out.shape[1] * ref_out.shape[2]))
    for ours_v, ref_v, bound, terms in checks:
        assert ours_v.dtype == tf.float64 and ours_v.shape == ref_v.shape
        assert np.all(np.abs(ours_v.numpy() - ref_v.numpy()) <= 2 * _gamma(terms) * bound.numpy())
    (pt, pb), (pl, pr) = _pads(kh, padding), _pads(kw, padding)
    again = (lib.safeops_conv2d_float64(x, k, padding=[pt, pb, pl, pr]),
             lib.safeops_conv2d_filter_grad_float64(x, g, padding=[pt, pb, pl, pr]))
    np.testing.assert_array_equal(again[0].numpy().view(np.int64), out.numpy().view(np.int64))
    np.testing.assert_array_equal(again[1].numpy().view(np.int64), dk.numpy().view(np.int64))


def test_native_conv2d_graph_runs_the_kernels():
    """A traced float64 conv2d's forward and backward reference the native ops (the
    dispatch chose them), and a float32 one does not (CPU-only hosts: with a GPU visible,
    graphs take the pure-TF path)."""
    _lib()
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible: graphs take the pure-TF path")
    x, k = tf.zeros([1, 5, 5, 2], tf.float64), tf.zeros([3, 3, 2, 4], tf.float64)

    def grads(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            out = _kernels.conv2d(x, k, "SAME")
        return tape.gradient(out, [x, k])

    ops = {op.type for op in tf.function(grads).get_concrete_function(x, k).graph.get_operations()}
    assert {"SafeopsConv2DFloat64", "SafeopsConv2DFilterGradFloat64"} <= ops
    ops = {op.type for op in tf.function(grads).get_concrete_function(
        tf.cast(x, tf.float32), tf.cast(k, tf.float32)).graph.get_operations()}
    assert not any(t.startswith("Safeops") for t in ops)


def test_native_conv2d_bits_do_not_depend_on_the_thread_count():
    """One intra-op thread and five, in fresh processes (set before TF starts), against this
    process: the same bits (the filter gradient's batch groups: 20 images, 10 groups)."""
    lib = _lib()
    code = textwrap.dedent("""
        import sys
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
        from safeops import native
        lib = native.library()
        x, k, g = (tf.constant(np.load(p)) for p in sys.argv[2:])
        print(lib.safeops_conv2d_float64(x, k, padding=[1, 1, 1, 1]).numpy().tobytes().hex())
        print(lib.safeops_conv2d_filter_grad_float64(x, g, padding=[1, 1, 1, 1]).numpy()
              .tobytes().hex())
    """)
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s) for s in ((20, 9, 10, 5), (3, 3, 5, 12), (20, 9, 10, 12))]
    x, k, g = (tf.constant(a) for a in arrays)
    here = [lib.safeops_conv2d_float64(x, k, padding=[1, 1, 1, 1]).numpy().tobytes().hex(),
            lib.safeops_conv2d_filter_grad_float64(x, g, padding=[1, 1, 1, 1]).numpy()
            .tobytes().hex()]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, a in enumerate(arrays):
            paths.append(os.path.join(tmp, f"a{i}.npy"))
            np.save(paths[-1], a)
        for threads in ("1", "5"):
            r = subprocess.run([sys.executable, "-c", code, threads, *paths], capture_output=True,
                               text=True, timeout=300, cwd=ROOT,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            assert r.returncode == 0, r.stderr[-3000:]
            assert r.stdout.strip().splitlines()[-2:] == here, threads


def _pool_inputs(rng, shape, kind):
    if kind == "normal":
        return rng.standard_normal(shape)
    x = rng.integers(-2, 3, shape).astype(np.float64)  # many ties
    if kind == "special":
        m = rng.random(shape)
        x[m < 0.1] = np.nan
        x[(m >= 0.1) & (m < 0.25)] = -np.inf
        x[(m >= 0.25) & (m < 0.3)] = np.inf
        x[(m >= 0.3) & (m < 0.35)] = -0.0
    return x


@pytest.mark.parametrize("shape, ksize, strides, padding", [
    ((2, 8, 8, 5), (2, 2), (2, 2), "VALID"), ((2, 9, 7, 3), (2, 2), (2, 2), "VALID"),
    ((2, 9, 7, 3), (3, 3), (2, 2), "SAME"), ((2, 9, 7, 3), (3, 3), (2, 2), "VALID"),
    ((1, 5, 5, 17), (2, 2), (2, 2), "SAME"), ((3, 6, 6, 4), (3, 3), (1, 1), "SAME"),
    ((2, 7, 9, 8), (1, 3), (1, 2), "SAME"), ((1, 4, 4, 2), (4, 4), (4, 4), "VALID"),
    ((2, 5, 6, 9), (3, 2), (2, 3), "SAME"),
], ids=str)
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
def test_native_max_pool_grad_equals_tf_bits(shape, ksize, strides, padding, kind):
    """The native MaxPoolGrad against tf.raw_ops.MaxPoolGrad: the same bits, with ties
    (integer values), -inf, inf, NaN and -0.0 in the windows, overlapping windows, SAME."""
    lib = _lib()
    rng = np.random.default_rng(len(shape) + sum(shape) + sum(ksize))
    x = tf.constant(_pool_inputs(rng, shape, kind))
    y = tf.nn.max_pool2d(x, ksize, strides, padding)
    g = tf.constant(rng.standard_normal(y.shape))
    ref = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=g, ksize=[1, *ksize, 1],
                                 strides=[1, *strides, 1], padding=padding)
    ours = lib.safeops_max_pool_grad_float64(x, g, ksize=ksize, strides=strides, padding=padding)
    np.testing.assert_array_equal(ours.numpy().view(np.int64), ref.numpy().view(np.int64))


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_max_pool2d_and_its_gradient_equal_tf(mode):
    """`max_pool2d`: TF's forward, and the gradient with the same bits as TF's in the same
    mode, with ties, infinities and NaN (the native kernel in float64; TF's own gradient in
    float32, which TF's graph rewrite to oneDNN may give other bits than in eager)."""
    rng = np.random.default_rng(3)

    def grads(pool, x, g):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = pool(x)
        return out, tape.gradient(out, x, output_gradients=g)

    run = tf.function(grads, autograph=False) if mode == "graph" else grads
    for dtype in (tf.float64, tf.float32):
        x = tf.constant(_pool_inputs(rng, (4, 9, 9, 6), "special"), dtype)
        g = tf.constant(rng.standard_normal((4, 5, 5, 6)), dtype)
        out, dx = run(lambda t: _kernels.max_pool2d(t, (3, 3), (2, 2), "SAME"), x, g)
        ref_out, ref_dx = run(lambda t: tf.nn.max_pool2d(t, (3, 3), (2, 2), "SAME"), x, g)
        np.testing.assert_array_equal(out.numpy(), ref_out.numpy())
        np.testing.assert_array_equal(dx.numpy(), ref_dx.numpy())


def test_float64_max_pooling_copy_uses_the_formulation_and_equals_keras():
    rng = np.random.default_rng(2)
    layer = keras.layers.MaxPooling2D(dtype="float64")
    reference = keras.layers.MaxPooling2D(dtype="float64")
    assert _kernels.use_fast_float64(layer) is layer and "call" in vars(layer)
    x = tf.constant(_pool_inputs(rng, (2, 7, 8, 3), "ties"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = layer(x), reference(x)
        la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(tape.gradient(la, x).numpy(), tape.gradient(lb, x).numpy())
    for other in (keras.layers.MaxPooling2D(dtype="float32"),
                  keras.layers.MaxPooling2D(data_format="channels_first", dtype="float64"),
                  keras.layers.AveragePooling2D(2, dtype="float64")):
        assert "call" not in vars(_kernels.use_fast_float64(other))


def test_under_xla_the_pure_tf_path_compiles():
    """A custom op has no XLA kernel: under jit_compile=True the formulations take TF's ops
    (the forward of max_pool2d equal to TF's, conv2d's within 2 gamma_K sum(|x| |w|))."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((2, 7, 6, 3)))
    k = tf.constant(rng.standard_normal((3, 3, 3, 4)))

    @tf.function(jit_compile=True)
    def run(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            out = _kernels.conv2d(x, k, "SAME")
            pooled = _kernels.max_pool2d(out, (2, 2), (2, 2), "VALID")
            total = tf.reduce_sum(pooled)
        return out, pooled, tape.gradient(total, [x, k])

    out, pooled, (dx, dk) = run(x, k)
    bound = 2 * _gamma(27) * tf.nn.conv2d(tf.abs(x), tf.abs(k), 1, "SAME").numpy()
    assert np.all(np.abs(out.numpy() - tf.nn.conv2d(x, k, 1, "SAME").numpy()) <= bound)
    np.testing.assert_array_equal(pooled.numpy(), tf.nn.max_pool2d(out, 2, 2, "VALID").numpy())
    assert dx.shape == x.shape and dk.shape == k.shape
    assert np.isfinite(dx.numpy()).all() and np.isfinite(dk.numpy()).all()
