"""CompensatedDense next to keras.layers.Dense: quantization, sparse and integer inputs, LoRA."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import testing
from safeops.layers import CompensatedDense

MODES = ["int8", "int4", "float8"]


def _pair(units=3, **kwargs):
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(units, **kwargs)
    ours = CompensatedDense(units, **kwargs)
    return dense, ours


def _build_same(dense, ours, in_dim, dtype="float32"):
    dense.build((None, in_dim))
    ours.build((None, in_dim))
    ours.set_weights(dense.get_weights())


def test_constructor_arguments_are_dense_arguments():
    assert inspect.signature(CompensatedDense) == inspect.signature(keras.layers.Dense)
    assert "lora_rank" in inspect.signature(keras.layers.Dense).parameters


def test_config_round_trips_both_ways():
    dense = keras.layers.Dense(4, activation="relu", use_bias=False, lora_rank=2, lora_alpha=4)
    ours = CompensatedDense.from_config(dense.get_config())
    assert ours.get_config() == dense.get_config()
    assert keras.layers.Dense.from_config(ours.get_config()).get_config() == ours.get_config()


@pytest.mark.parametrize("mode", MODES)
def test_quantize_every_dense_mode_as_dense(mode):
    dense, ours = _pair(8, use_bias=True)
    _build_same(dense, ours, 16)
    x = np.random.default_rng(1).normal(size=(4, 16)).astype("float32")
    dense.quantize(mode)
    ours.quantize(mode)
    assert ours.quantization_mode == dense.quantization_mode == mode
    assert ours.dtype_policy.name == dense.dtype_policy.name
    assert [v.dtype for v in ours.weights] == [v.dtype for v in dense.weights]
    # The same quantized kernels on the same weights: the same bits.
    np.testing.assert_array_equal(ours(x), dense(x))


@pytest.mark.parametrize("mode", MODES)
def test_model_quantize_does_not_leave_the_layer_float(mode):
    ours = CompensatedDense(4)
    model = keras.Sequential([keras.Input((6,)), ours])
    model.quantize(mode)
    assert ours.quantization_mode == mode
    if mode != "float8":
        assert ours._kernel.dtype == "int8"


def test_quantized_keras_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((6,)), CompensatedDense(4)])
    model.quantize("int8")
    x = np.random.default_rng(2).normal(size=(3, 6)).astype("float32")
    path = str(tmp_path / "q.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], CompensatedDense)
    assert loaded.layers[0].quantization_mode == "int8"
    np.testing.assert_array_equal(loaded(x), model(x))


def test_int4_keeps_the_kernel_error_of_dense():
    dense, ours = _pair(6)
    _build_same(dense, ours, 8)
    w = np.float64(dense.get_weights()[0])
    x = np.eye(8, dtype="float32")
    ours.quantize("int4")
    # Per-channel symmetric int4 on [-8, 7]: each weight within half a step of the channel.
    step = np.abs(w).max(axis=0) / 7
    assert np.all(np.abs(np.float64(ours(x)) - dense.bias.numpy() - w) <= step / 2 + 1e-6)


def test_integer_inputs_give_the_float_result_as_dense():
    dense, ours = _pair(3)
    _build_same(dense, ours, 4)
    x = np.array([[1, 2, 3, 4], [2**20, -3, 0, 7]], np.int32)
    got, want = ours(x), dense(x)
    assert got.dtype == want.dtype == tf.float32
    w, b = dense.get_weights()
    # int (21 bits) x float32 (24 bits) products are exact in float64 and their 4-term sums
    # within 2**-50 relative: the matmul rounds the dot product once (no value here lies that
    # near a float32 tie), then the float32 bias add rounds once more.
    exact = np.float64(x) @ np.float64(w)
    np.testing.assert_array_equal(got.numpy(), np.float32(exact) + b)
    # Dense: the same float result up to its float32 dot product, gamma_n ~ n u sum |x_i w_i|
    # (n = 4), plus the bias add's rounding
    np.testing.assert_array_less(np.abs(np.float64(want) - exact - b),
                                 4.01 * 2.0**-24 * (np.abs(np.float64(x)) @ np.abs(np.float64(w)))
                                 + 2.0**-24 * np.abs(exact + b) + 1e-30)


def test_sparse_input_as_dense_and_accurate():
    dense, ours = _pair(2, use_bias=False, kernel_initializer="ones")
    _build_same(dense, ours, 3)
    values = tf.constant([1e8, 1.0, -1e8])
    sp = tf.SparseTensor([[0, 0], [0, 1], [0, 2]], values, [2, 3])
    got = ours(sp)
    assert got.shape == dense(sp).shape == (2, 2) and got.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), [[1.0, 1.0], [0.0, 0.0]])  # exact: 1
    rng = np.random.default_rng(3)
    d = np.where(rng.random((5, 4, 3)) < 0.5, rng.normal(size=(5, 4, 3)), 0).astype("float32")
    dense2, ours2 = _pair(2)
    _build_same(dense2, ours2, 3)
    got3 = ours2(tf.sparse.from_dense(d))
    assert got3.shape == dense2(d).shape == (5, 4, 2)
    # float32 products are exact in float64 and 3-term sums nearly so: the sparse path rounds
    # the same value once as the dense path does, so they agree bit for bit.
    np.testing.assert_array_equal(got3.numpy(), ours2(d).numpy())
    w, b = (np.float64(v) for v in dense2.get_weights())
    ref = np.float64(d) @ w + b  # the bias is 0: one rounding, |err| <= u |ref|
    assert np.all(np.abs(np.float64(got3) - ref) <= 2.0**-24 * np.abs(ref))


def test_lora_as_dense():
    dense, ours = _pair(4, lora_rank=2, lora_alpha=8)
    x = np.random.default_rng(4).normal(size=(3, 5)).astype("float32")
    dense(x)
    ours(x)
    assert ours.lora_enabled and ours.lora_rank == 2 and ours.lora_alpha == 8
    assert dense.lora_alpha == 2  # Dense.build drops the constructor's alpha
    dense.lora_alpha = 8  # compare the same scale, alpha / rank = 4
    ours.set_weights(dense.get_weights())
    dense.lora_kernel_b.assign(np.ones((2, 4)))
    ours.lora_kernel_b.assign(np.ones((2, 4)))
    np.testing.assert_allclose(ours(x), dense(x), rtol=1e-5, atol=1e-6)
    assert [v.name for v in ours.trainable_weights] == [v.name for v in dense.trainable_weights]
    late = CompensatedDense(4)
    late.build((None, 5))
    late.enable_lora(3)
    assert late.lora_enabled and late.kernel.shape == (5, 4)
    # The merged kernel is W + (alpha / rank) A B, in float64: alpha 8, rank 2.
    w, a, b = (np.float64(v) for v in (ours._kernel.numpy(), ours.lora_kernel_a.numpy(),
                                       ours.lora_kernel_b.numpy()))
    np.testing.assert_allclose(np.float64(ours.kernel), w + 4.0 * a @ b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_dtypes_under_policies_as_dense(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        dense, ours = _pair(3)
        _build_same(dense, ours, 4)
        x = np.random.default_rng(5).normal(size=(2, 4)).astype("float32")
        got, want = ours(x), dense(x)
        assert got.dtype == want.dtype
        assert [v.dtype for v in ours.weights] == [v.dtype for v in dense.weights]
        tol = {"float32": 1e-6, "mixed_float16": 2.0**-10, "mixed_bfloat16": 2.0**-7}[policy]
        np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_checkpoint_round_trip(tmp_path):
    ours = CompensatedDense(3)
    ours.build((None, 2))
    ckpt = tf.train.Checkpoint(layer=ours)
    saved = ckpt.save(str(tmp_path / "c"))
    before = [w.copy() for w in ours.get_weights()]
    ours.kernel.assign(tf.zeros_like(ours.kernel))
    ckpt.restore(saved)
    for a, b in zip(ours.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_forward_rounds_the_product_once_then_adds_the_bias_as_dense():
    # inputs with a large common offset (the benchmark's data): Dense's float32 matmul loses
    # low bits, CompensatedDense rounds the float64 product once and adds the bias in float32
    dense, ours = _pair(32, bias_initializer="random_normal")
    _build_same(dense, ours, 256)
    rng = np.random.default_rng(6)
    x = (1e3 + rng.standard_normal((16, 2, 256))).astype("float32")
    w, b = dense.get_weights()
    product = np.float32(np.float64(x) @ np.float64(w))  # float64 sum: within 1e-12 relative
    want = product + b  # the documented contract: Keras's float32 bias add after one rounding
    runs = {"eager": ours(x).numpy(), "function": tf.function(ours)(x).numpy(),
            "jit_compile": tf.function(ours, jit_compile=True)(x).numpy()}
    for mode, got in runs.items():
        assert got.shape == (16, 2, 32) and got.dtype == np.float32, mode
        np.testing.assert_array_equal(got, want, err_msg=mode)
    # against float64 x @ w + b: at most the bias add's half ulp (the product is rounded once)
    ref = np.float64(x) @ np.float64(w) + np.float64(b)
    ulps = testing.ulp_distance(runs["eager"], ref, "float32")
    assert np.max(ulps) <= 1 and np.median(ulps) == 0
    assert np.median(testing.ulp_distance(dense(x).numpy(), ref, "float32")) > 0
