"""Tests of `so.doctor.profile` (bits lost per layer against float64) and `so.doctor.advise`.

References are computed here, independently of the profiler: float64 NumPy forward
passes of the same weights, Keras layers built in the test, and the bits-lost formula
written out again (docs/doctor.md, "Precision profile").
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops.doctor import advise, profile
from safeops.doctor._bits import bits_lost, rel_errors

P16 = 11  # float16 precision in bits (u = 2^-11)


def _bits(y, r, p):
    """Bits lost (docs/doctor.md): clip(log2(|y - r| / max(|r|, rms(r)) / 2^-p), 0, p)."""
    y = np.asarray(y, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    floor = np.sqrt(np.mean(r ** 2))
    out = []
    for yi, ri in zip(y, r):
        if not math.isfinite(yi):
            out.append(p)
            continue
        rel = abs(yi - ri) / max(abs(ri), floor)
        out.append(0.0 if rel == 0 else min(max(math.log2(rel) + p, 0.0), p))
    return np.array(out)


def _planted(seed=0):
    """Dense -> Dense whose output rows have |mean|/std ~ 1e4 -> LayerNormalization -> Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(32, name="shift")(h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    out = keras.layers.Dense(4, name="head")(h)
    model = keras.Model(inp, out)
    model.get_layer("shift").bias.assign(np.full(32, 1e4, np.float32))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    return model, x, y


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((128, 16)).astype(np.float32)
    y = rng.standard_normal((128, 4)).astype(np.float32)
    return model, x, y


def _cnn(seed=0, n=64):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(10)(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return model, x, y


def _twin(model, policy):
    twin = keras.models.clone_model(
        model, clone_function=lambda la: la.__class__.from_config({**la.get_config(), "dtype": policy}))
    twin.set_weights(model.get_weights())
    return twin


def _float64_twin(model):
    return _twin(model, "float64")


def _eval_loss(model, x, y, loss):
    pred = tf.cast(model(x, training=False), tf.float64)
    yt = tf.cast(y, tf.float64) if np.issubdtype(np.asarray(y).dtype, np.floating) else y
    return float(tf.reduce_mean(loss(yt, pred)))


# ---------------------------------------------------------------- definitions

def test_bits_lost_definition():
    r = np.array([4.0, -2.0, 1.0, 0.0])
    rms = math.sqrt((16 + 4 + 1) / 4)
    y = r.copy()
    y[0] = 4.0 + 16 * 2.0 ** -11     # |r| > rms: rel 2^-9, 2 bits of 11
    y[2] = 1.0 + rms * 2.0 ** -10    # |r| < rms: measured against rms(r): 2^-10, 1 bit
    y[3] = rms * 2.0 ** -12          # at 0: measured against rms(r), below u: 0 bits
    rel = rel_errors(y, r)
    np.testing.assert_allclose(rel, [2.0 ** -9, 0.0, 2.0 ** -10, 2.0 ** -12], rtol=1e-12)
    np.testing.assert_allclose(bits_lost(rel, P16), [2.0, 0.0, 1.0, 0.0], atol=1e-12)
    y[1] = np.inf                    # not finite where the reference is: every bit lost
    assert bits_lost(rel_errors(y, r), P16)[1] == P16
    assert bits_lost([10.0], P16)[0] == P16  # capped at p


# ---------------------------------------------------------------- profile

def test_planted_layernorm_is_worst_under_float16():
    model, x, y = _planted()
    prof = profile(model, (x, y), policy="float16", loss="mse", verbose=False)
    assert prof.worst[0][0] == "ln"
    assert prof.first_over == "ln"
    ln = prof.layer("ln")
    assert ln.local_bits_mean > 8.0
    for name in ("d1", "shift", "head"):
        assert prof.layer(name).local_bits_mean <= 3.0, name
    # Rounding its input to float16 alone (float64 arithmetic after) loses as much: the fix is
    # to rescale the input, not to change the layer.
    assert ln.input_bits_mean == pytest.approx(ln.local_bits_mean, abs=1.0)
    assert prof.worst[0][2].startswith("rescale: rounding its input alone")

    # The same figure from scratch: the float64 input of the LayerNormalization, rounded to
    # float16 (what a float16 model feeds it), through a float16 Keras LayerNormalization.
    w1, b1, w2, b2, gamma, beta = (w.astype(np.float64) for w in model.get_weights()[:6])
    h = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0) @ w2 + b2
    mean = h.mean(-1, keepdims=True)
    ref = (h - mean) / np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-3) * gamma + beta
    ln16 = keras.layers.LayerNormalization(dtype="float16")
    ln16.build((None, 32))
    ln16.set_weights([gamma, beta])
    out16 = ln16(h.astype(np.float16)).numpy()
    assert abs(ln.local_bits_mean - _bits(out16, ref, P16).mean()) < 0.05


def test_healthy_mlp_loses_few_bits():
    model, x, y = _mlp()
    ws = [w.astype(np.float64) for w in model.get_weights()]
    ref = x.astype(np.float64)
    for k in range(0, 6, 2):  # the float64 forward pass, in NumPy
        ref = ref @ ws[k] + ws[k + 1]
        ref = np.maximum(ref, 0.0) if k < 4 else ref
    for policy, p in (("mixed_float16", 11), ("mixed_bfloat16", 8)):
        prof = profile(model, (x, y), policy=policy, loss="mse", verbose=False)
        assert prof.first_over is None
        for e in prof.layers:
            assert e.local_bits_mean <= 2.0 and e.bits_mean <= 3.0, (policy, e)
            assert e.dtype == policy.split("_")[1]
        low = _twin(model, policy)(x).numpy().astype(np.float64)
        expected = np.linalg.norm(low - ref) / np.linalg.norm(ref)
        assert prof.output_error == pytest.approx(expected, rel=1e-6)
        assert 0 < prof.output_error < 2.0 ** -p * 16


def test_float64_shadow_of_float64_model_loses_nothing():
    model64 = _float64_twin(_cnn(n=16)[0])
    _, x, y = _cnn(n=16)
    prof = profile(model64, (x, y), policy=None,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), verbose=False)
    assert prof.output_error == 0.0 and prof.loss_error == 0.0
    for e in prof.layers:
        assert e.dtype == "float64"
        assert (e.bits_mean, e.bits_max, e.local_bits_mean, e.local_bits_max) == (0, 0, 0, 0)
        assert e.grad_bits_max == 0.0
        assert e.weight_grad_bits_max in (0.0, None)


def test_planted_logsumexp_is_worst_under_float16():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    z = keras.layers.Dense(8, name="logits")(inp)
    lse = keras.layers.Lambda(  # log(sum(exp(z))) written out: exp overflows float16 past 11.1
        lambda t: keras.ops.log(keras.ops.sum(keras.ops.exp(t), axis=-1, keepdims=True)), name="lse")(z)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(lse))
    model.get_layer("logits").bias.assign(np.full(8, 15.0, np.float32))
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    prof = profile(model, x, policy="float16", verbose=False)
    assert prof.worst[0][0] == "lse" and prof.first_over == "lse"
    lse_entry = prof.layer("lse")
    assert lse_entry.local_bits_max == P16 and lse_entry.nonfinite == 1.0
    assert lse_entry.range_ratio < 1e-3  # its output, ~17, fits: an intermediate overflowed
    assert "so.reduce_logsumexp" in prof.worst[0][2]
    assert prof.layer("logits").local_bits_mean <= 1.0 and prof.layer("head").local_bits_mean <= 1.0
    # the reference: exp(15 + ...) > 65504 = float16 max, while its log is ~17
    z64 = x.astype(np.float64) @ model.get_layer("logits").kernel.numpy() + 15.0
    assert np.all(np.exp(z64).max(-1) > 65504) and np.abs(np.log(np.exp(z64).sum(-1))).max() < 30


def test_float16_overflow_is_reported_with_rescale():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="big"),
                              keras.layers.Dense(2, name="after")])
    model.get_layer("big").kernel.assign(np.full((4, 3), 3e4, np.float32))  # outputs ~1e5 > 65504
    x = np.abs(np.random.default_rng(0).standard_normal((8, 4))).astype(np.float32) + 0.5
    prof = profile(model, x, policy="float16", verbose=False)
    big = prof.layer("big")
    ref = x.astype(np.float64) @ np.full((4, 3), 3e4) + model.get_layer("big").bias.numpy()
    assert big.max_abs == pytest.approx(np.abs(ref).max(), rel=1e-12)
    assert big.range_ratio == pytest.approx(np.abs(ref).max() / 65504.0, rel=1e-12) and big.range_ratio > 1
    assert big.nonfinite == pytest.approx(np.mean(np.abs(ref) >= 65520.0))  # rounds to inf
    assert big.local_bits_max == P16
    assert prof.worst[0][0] == "big" and prof.worst[0][2].startswith("rescale: values reach")


def test_float16_underflow_fraction():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="tiny")])
    kernel = np.random.default_rng(1).standard_normal((8, 16)) * 1e-5
    model.get_layer("tiny").kernel.assign(kernel.astype(np.float32))
    x = np.random.default_rng(2).standard_normal((32, 8)).astype(np.float32)
    ref = x.astype(np.float64) @ kernel.astype(np.float32).astype(np.float64)
    expected = np.mean(np.abs(ref[ref != 0]) < 2.0 ** -14)  # below float16's smallest normal
    assert 0.3 < expected < 1.0
    f16 = profile(model, x, policy="float16", verbose=False).layer("tiny")
    bf16 = profile(model, x, policy="bfloat16", verbose=False).layer("tiny")
    assert f16.underflow == pytest.approx(expected, rel=1e-12)
    assert bf16.underflow == 0.0  # bfloat16 has float32's exponent range


def test_emulated_float16_convolutions_match_the_native_kernels():
    model, x, y = _cnn(n=8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    emulated = profile(model, (x, y), policy="mixed_float16", loss=loss, emulate=True, verbose=False)
    native = profile(model, (x, y), policy="mixed_float16", loss=loss, emulate=False, verbose=False)
    assert [e.emulated for e in emulated.layers] == [e.class_name == "Conv2D" for e in emulated.layers]
    assert not any(e.emulated for e in native.layers)
    for a, b in zip(emulated.layers, native.layers):
        for key in ("bits_mean", "local_bits_mean", "grad_bits_mean", "weight_grad_bits_mean"):
            va, vb = getattr(a, key), getattr(b, key)
            assert (va is None) == (vb is None)
            if va is not None:
                assert abs(va - vb) < 0.1, (a.name, key, va, vb)
    # the mean losses differ by roundings of float16 intermediates: below one float16 unit roundoff
    assert abs(emulated.loss[0] - native.loss[0]) <= 2.0 ** -11 * abs(native.loss[1])


@pytest.mark.parametrize("policy", ["mixed_float16", "float16", "mixed_bfloat16"])
def test_max_pooling_local_pass_is_its_rounded_float64_output(policy, monkeypatch):
    """A max pooling layer's local and rounding passes are taken from its float64 outputs
    rounded (a maximum commutes with a monotone rounding): the figures of the full passes,
    each layer run on the rounded inputs, exactly."""
    from safeops.doctor import _engine

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(8, 3, activation="tanh")(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(4)(h))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fast = profile(model, (x, y), policy=policy, loss=loss, verbose=False).as_dict()
    monkeypatch.setattr(_engine.GraphEngine, "_commutes_with_rounding", lambda self, node: False)
    full_model = keras.models.clone_model(model)
    full_model.set_weights(model.get_weights())
    full = profile(full_model, (x, y), policy=policy, loss=loss, verbose=False).as_dict()
    assert fast == full
    pools = [la for la in fast["layers"] if "pooling" in la["name"]]
    assert len(pools) == 2 and all(la["local_bits_mean"] is not None for la in pools)


def test_eager_and_graph_give_the_same_profile():
    model, x, y = _cnn(n=16)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    eager = profile(model, (x, y), policy="mixed_float16", loss=loss, mode="eager", verbose=False)
    graph = profile(model, (x, y), policy="mixed_float16", loss=loss, mode="graph", verbose=False)
    a, b = eager.as_dict(), graph.as_dict()
    assert a["worst"] == b["worst"] and a["first_over"] == b["first_over"]
    assert a["output_error"] == b["output_error"] and a["loss"] == b["loss"]
    # The profiled (16-bit) values are bit-identical; the float64 reference gradients may differ
    # in their last bit (graph rewrites reorder float64 sums): 1e-16 relative is 1e-12 bits.
    for la, lb in zip(a["layers"], b["layers"]):
        assert la.keys() == lb.keys()
        for key in la:
            if isinstance(la[key], float):
                assert la[key] == pytest.approx(lb[key], rel=1e-9, abs=1e-9), (la["name"], key)
            else:
                assert la[key] == lb[key], (la["name"], key)
        for key in ("bits_mean", "bits_max", "local_bits_mean", "local_bits_max", "max_abs"):
            assert la[key] == lb[key]


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, x, _ = _planted()
    profile(model, x, policy="float16", plot=str(tmp_path / "bits.png"), verbose=False)
    assert (tmp_path / "bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dict_table_and_loss_scale(capsys):
    model, x, y = _planted()
    prof = profile(model, (x, y), policy="mixed_float16", loss="mse", threshold=2.0)
    out = capsys.readouterr().out
    assert "worst: ln" in out and "first layer losing more than 2 bits" in out
    d = prof.as_dict()
    json.dumps(d)  # plain types only
    assert [e["name"] for e in d["layers"]] == ["d1", "shift", "ln", "head"]
    assert d["worst"][0]["layer"] == "ln" and d["threshold"] == 2.0
    # float16 gradients are computed with a loss scale that keeps them finite
    assert prof.loss_scale >= 1.0
    assert all(e.grad_bits_max is not None for e in prof.layers)
    assert d["loss"]["float64"] == pytest.approx(
        _eval_loss(_float64_twin(model), x.astype(np.float64), y.astype(np.float64),
                   keras.losses.mean_squared_error), rel=1e-12)


def test_residual_shared_and_masked_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="int32")
    e = keras.layers.Embedding(20, 8, mask_zero=True, name="emb")(inp)
    dense = keras.layers.Dense(8, name="shared")
    h = keras.ops.tanh(dense(dense(e)) + e)
    out = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling1D(name="pool")(h))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (16, 6))
    x[:, 4:] = 0
    prof = profile(model, x, policy="mixed_bfloat16", verbose=False)
    names = [e.name for e in prof.layers]
    assert names[:3] == ["emb", "shared", "shared#1"] and "pool" in names
    assert 0 < prof.output_error < 2.0 ** -8 * 8


def test_int8_policy_quantizes_supported_layers():
    model, x, _ = _cnn(n=16)
    prof = profile(model, x, policy="int8", verbose=False)
    quant = {e.class_name: e.quantization for e in prof.layers}
    assert quant["Dense"] == "int8" and quant["Conv2D"] is None  # Keras quantizes Dense, not Conv
    dense = next(e for e in prof.layers if e.class_name == "Dense")
    assert dense.local_bits_mean > 4.0  # int8 against float32's 24 bits


def test_float8_profile_and_advice():
    model, x, y = _mlp()
    eager = profile(model, (x, y), policy="float8", loss="mse", mode="eager", verbose=False)
    graph = profile(model, (x, y), policy="float8", loss="mse", mode="graph", verbose=False)
    assert [e.quantization for e in eager.layers] == ["float8"] * 3
    assert eager.loss == graph.loss and eager.layers[0].weight_grad_bits_mean is not None
    advice = advise(model, (x, y), budget=1e-2, loss="mse", dtypes=(), quantize=("float8",),
                    verbose=False)
    assert "float8" in advice.quantization.values() and advice.within_budget
    assert not any("not possible" in step for step in advice.steps)


def test_bad_input_raises():
    model, x, y = _mlp()

    class Sub(keras.Model):
        def call(self, z):
            return z

    with pytest.raises(ValueError, match="not built"):
        profile(Sub(), x, verbose=False)
    built = Sub()
    built(x)
    with pytest.raises(ValueError, match="tracks no layers"):
        profile(built, x, verbose=False)
    with pytest.raises(TypeError, match="keras.Model"):
        profile(lambda z: z, x, verbose=False)
    with pytest.raises(ValueError, match="policy"):
        profile(model, x, policy="float17", verbose=False)
    with pytest.raises(ValueError, match=r"data=\(x, y\)"):
        profile(model, x, loss="mse", verbose=False)
    with pytest.raises(ValueError, match="takes 1"):
        profile(model, [x, x], verbose=False)
    with pytest.raises(ValueError, match="mode"):
        profile(model, x, mode="xla", verbose=False)
    with pytest.raises(ValueError, match="budget"):
        advise(model, x, budget=0.0, verbose=False)
    with pytest.raises(ValueError, match="dtypes"):
        advise(model, x, dtypes=("float8",), verbose=False)


def test_keras_touchpoints():
    """The Keras internals the profiler reads (safeops/doctor/_keras_graph.py) still exist."""
    from keras.src.backend.common.masking import set_keras_mask  # noqa: F401

    model, _, _ = _mlp()
    graph = model._functional
    assert isinstance(graph._nodes_by_depth, dict)
    node = next(n for ns in graph._nodes_by_depth.values() for n in ns if not n.is_input)
    assert node.operation is not None and node.outputs and node.input_tensors
    args, _ = node.arguments.fill_in({id(t): 1.0 for t in node.input_tensors})
    assert args == (1.0,)
    # subclassed models: the tracked sublayers, and a model re-created from its config
    net = SubclassedNet()
    net(np.zeros((1, 5), np.float32))
    children = net._flatten_layers(include_self=False, recursive=False)
    assert [type(c).__name__ for c in children] == ["Dense", "ResidualBlock", "ResidualBlock", "Dense"]
    assert type(net).from_config(net.get_config())._flatten_layers is not None


# ---------------------------------------------------------------- subclassed models

class ResidualBlock(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)
        self.norm = keras.layers.LayerNormalization()

    def call(self, x):
        return self.norm(x + self.dense(x))


class SubclassedNet(keras.Model):
    def __init__(self, width=8, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(width, activation="relu")
        self.blocks = [ResidualBlock(width) for _ in range(2)]
        self.head = keras.layers.Dense(2)

    def call(self, x, training=False):
        h = self.first(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _net_and_twin(seed=0):
    """A subclassed model and the Functional model of the same layers, with the same weights."""
    keras.utils.set_random_seed(seed)
    net = SubclassedNet()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.standard_normal((32, 2)).astype(np.float32)
    net(x)
    inp = keras.Input((5,))
    h = keras.layers.Dense(8, activation="relu", name="first")(inp)
    names = ["first"]
    for k in range(2):
        h = keras.layers.LayerNormalization(name=f"norm{k}")(h + keras.layers.Dense(8, name=f"dense{k}")(h))
        names += [f"dense{k}", f"norm{k}"]
    twin = keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    names.append("head")
    sub = [net.first, net.blocks[0].dense, net.blocks[0].norm, net.blocks[1].dense,
           net.blocks[1].norm, net.head]
    for name, layer in zip(names, sub):
        twin.get_layer(name).set_weights(layer.get_weights())
    return net, twin, x, y, dict(zip([la.name for la in sub], names))


def test_subclassed_model_profiles_as_its_functional_twin():
    net, twin, x, y, name_of = _net_and_twin()
    sub = profile(net, (x, y), policy="float16", loss="mse", mode="eager", verbose=False)
    func = profile(twin, (x, y), policy="float16", loss="mse", mode="eager", verbose=False)
    blocks = [b.name for b in net.blocks]
    assert [e.name for e in sub.layers] == [
        net.first.name, f"{blocks[0]}/{net.blocks[0].dense.name}", f"{blocks[0]}/{net.blocks[0].norm.name}",
        f"{blocks[1]}/{net.blocks[1].dense.name}", f"{blocks[1]}/{net.blocks[1].norm.name}", net.head.name]
    assert sub.loss == func.loss and sub.output_error == func.output_error
    # The same operations on the same values in both: the same figures (the sums may be
    # ordered differently: 1e-12 relative).
    for e in sub.layers:
        f = func.layer(name_of[e.name.split("/")[-1]])
        assert e.dtype == f.dtype == "float16" and e.class_name == f.class_name
        for key in ("bits_mean", "bits_max", "local_bits_mean", "local_bits_max", "input_bits_mean",
                    "grad_bits_mean", "weight_grad_bits_mean", "max_abs", "underflow", "flops"):
            if e.name == net.first.name and key == "input_bits_mean":
                continue  # below
            assert getattr(e, key) == pytest.approx(getattr(f, key), rel=1e-12, abs=1e-12), (e.name, key)
    # The subclassed model in float16 rounds its inputs to float16 itself (a Functional model's
    # float32 Input does not): the first layer's input bits are what that rounding costs.
    kernel, bias = (w.astype(np.float64) for w in net.first.get_weights())
    ref = np.maximum(x.astype(np.float64) @ kernel + bias, 0.0)
    rounded = np.maximum(x.astype(np.float16).astype(np.float64) @ kernel + bias, 0.0)
    expected = _bits(rounded, ref, P16).mean()
    assert sub.layer(net.first.name).input_bits_mean == pytest.approx(expected, rel=1e-9)
    assert func.layer("first").input_bits_mean == 0.0


@pytest.mark.slow
def test_subclassed_planted_bottleneck_and_modes():
    net, _, x, y, _ = _net_and_twin(1)
    norm = net.blocks[1].norm
    net.blocks[1].dense.bias.assign(np.full(8, 1e4, np.float32))  # |mean|/std ~ 1e4 into the norm
    eager = profile(net, (x, y), policy="float16", loss="mse", mode="eager", verbose=False)
    graph = profile(net, (x, y), policy="float16", loss="mse", mode="graph", verbose=False)
    label = f"{net.blocks[1].name}/{norm.name}"
    assert graph.worst[0][0] == label and graph.layer(label).local_bits_mean > 8.0
    assert graph.layer(net.first.name).local_bits_mean <= 3.0
    for a, b in zip(eager.layers, graph.layers):
        for key in ("bits_mean", "bits_max", "local_bits_mean", "local_bits_max", "max_abs"):
            assert getattr(a, key) == getattr(b, key), (a.name, key)
    assert eager.loss == graph.loss and eager.worst == graph.worst


def test_subclassed_model_that_cannot_be_copied_is_refused():
    class Wrapper(keras.Model):  # its constructor takes a layer: no config re-creates it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x)

    model = Wrapper(keras.layers.Dense(3))
    x = np.ones((4, 2), np.float32)
    model(x)
    with pytest.raises(TypeError, match="get_config"):
        profile(model, x, verbose=False)
    net, _, x, y, _ = _net_and_twin()
    with pytest.raises(TypeError, match="subclassed"):
        advise(net, (x, y), loss="mse", verbose=False)


# ---------------------------------------------------------------- engine

def test_profile_reuses_its_copies_and_follows_weight_changes():
    import gc
    import weakref

    from safeops.doctor import _engine

    model, x, _ = _planted()
    first = profile(model, x, policy="float16", mode="eager", verbose=False)
    engine = _engine.engine(model, x)
    again = profile(model, x, policy="float16", mode="eager", verbose=False)
    assert _engine.engine(model, x) is engine and again.as_dict() == first.as_dict()
    # new weights: the profile is that of a fresh copy of the model with them
    model.get_layer("shift").bias.assign(np.zeros(32, np.float32))
    changed = profile(model, x, policy="float16", mode="eager", verbose=False)
    fresh = keras.models.clone_model(model)
    fresh.set_weights(model.get_weights())
    expected = profile(fresh, x, policy="float16", mode="eager", verbose=False)
    assert changed.as_dict() == expected.as_dict()
    assert changed.layer("ln").local_bits_mean < 3.0 < first.layer("ln").local_bits_mean
    ref = weakref.ref(model)
    del model, engine
    gc.collect()
    assert ref() is None  # the copies go with the model


def _kernel_scope(native_on):
    """The fused kernels as loaded (skipped where they are not), or the pure-TF path."""
    import contextlib  # noqa: PLC0415

    from safeops import native  # noqa: PLC0415
    if not native_on:
        return native.disabled()
    if native.library() is None:
        pytest.skip("fused kernels unavailable")
    return contextlib.nullcontext()


@pytest.mark.parametrize("native_on", [True, False], ids=["fused", "pure_tf"])
def test_in_graph_statistics_match_the_definition(native_on):
    """`sweep` (fast path, fused or in TF ops, and the masked slow path) gives what
    `rel_errors`/`bits_lost` define."""
    with _kernel_scope(native_on):
        _check_statistics_match_the_definition()


def _check_statistics_match_the_definition():
    from safeops._core.dtypes import limits
    from safeops.doctor._stats import CHUNK, means, value_range, sweep

    rng = np.random.default_rng(5)
    n = 2 * CHUNK + 7  # several chunks and a tail
    r = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3, n)
    r[:50] = 0.0
    r[50:60] = 2.0 ** -20  # below float16's smallest normal
    y = (r * (1 + rng.standard_normal(n) * 2.0 ** -10)).astype(np.float16)
    tiny = limits("float16").tiny
    cases = [(r, y)]
    y_bad = y.copy()
    y_bad[7], y_bad[9] = np.inf, np.nan
    r_bad = r.copy()
    r_bad[3] = np.inf
    cases += [(r, y_bad), (r_bad, y), (np.zeros(100), np.zeros(100, np.float16))]
    p, down = tf.constant(11.0, tf.float64), tf.constant(2.0 ** -11, tf.float64)
    def measured(rr, yy):  # the fast path where it holds, else the masked one (as the profiler)
        oks = []
        out = sweep(rr, [yy], p, down, tf.constant(tiny, tf.float64), oks=oks)
        return out if bool(oks[0]) else sweep(rr, [yy], p, down, tf.constant(tiny, tf.float64))

    fast = []
    for rr, yy in cases:
        oks = []
        sweep(tf.constant(rr), [tf.constant(yy)], p, down, tf.constant(tiny, tf.float64), oks=oks)
        fast.append(bool(oks[0]))
        parts, ranges = measured(tf.constant(rr), tf.constant(yy))
        mean, worst, rel = (float(v) for v in means([parts[0]], p))
        expected = rel_errors(yy, rr)
        bits = bits_lost(expected, P16)
        assert mean == pytest.approx(bits.mean(), rel=1e-12, abs=1e-300)
        # float64 throughout; log(x) / log(2) here, NumPy's log2 there: a few ulps apart
        assert worst == pytest.approx(bits.max(), rel=1e-12)
        assert rel == pytest.approx(expected.mean(), rel=1e-12, abs=1e-300)
        max_abs, _, under, nonfinite = (float(v) for v in value_range([ranges], 65504.0))
        fin = np.isfinite(rr)
        a = np.abs(rr[fin])
        assert max_abs == a.max()
        assert under == (np.mean(a[a > 0] < tiny) if np.any(a > 0) else 0.0)
        assert nonfinite == np.mean(~np.isfinite(yy.astype(np.float64)[fin]))
    assert fast == [True, False, False, False]  # both paths checked


@pytest.mark.parametrize("n", [1, 13, 16384 * 3 + 5])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_fused_statistics_agree_with_the_tf_ops_within_rounding(n, dtype):
    """The fused sweep against the same sums in TF ops, for every dtype compared, with a
    divisor and several tensors in one call. The paths sum r^2 in other orders (each within
    gamma_n relative of the exact sum, so their rms within gamma_n of each other) and form t
    with a reciprocal or a quotient (3 u apart): each t within d = gamma_n + 4 u relative of
    the other path's. Sums of the non-negative t within (2 gamma_n + d) T of each other, maxima
    within d M; each log of a product of g clipped values within g u of the sum of their logs
    (logs >= 0) and each log moved by at most d per value, so the sums of logs within
    n (2 g u + d) + 2 gamma_n S; counts and max |r| exact."""
    from safeops import native  # noqa: PLC0415
    from safeops.doctor._stats import _chunked, _group  # noqa: PLC0415

    lib = native.library()
    if lib is None:
        pytest.skip("fused kernels unavailable")
    rng = np.random.default_rng(n)
    p, tiny, decades, divisor = {"float16": (11, 6.1e-5, 2, 4.0), "bfloat16": (8, 1.2e-38, 4, 128.0),
                                 "float32": (24, 1.2e-38, 4, 128.0),
                                 "float64": (53, 2.2e-308, 4, 128.0)}[dtype]
    r = rng.standard_normal(n) * 10.0 ** rng.integers(-8, decades, n)
    r[: n // 7] = 0.0
    ys = [tf.constant(r * divisor * (1 + rng.standard_normal(n) * 2.0 ** -s), dtype)
          for s in (4, 9, 30)]
    r = tf.constant(r)
    down = tf.constant(2.0 ** -p, tf.float64)
    args = (down, tf.constant(tiny, tf.float64), tf.constant(divisor, tf.float64))
    fused = lib.safeops_profile_sweep(r, *args, ys).numpy()
    count = tf.constant(float(n), tf.float64)
    chunked = tf.function(lambda r, ys: _chunked(r, ys, tf.size(r), count, tf.constant(
        float(p), tf.float64), down, args[1], args[2]), autograph=False)
    sum_sq, _, acc = chunked(r, ys)
    ref = np.array([float(v) for v in acc] + [float(sum_sq)])
    u = 2.0 ** -53
    gamma = n * u / (1 - n * u)
    g = int(_group(tf.constant(float(p), tf.float64)))
    d = gamma + 4 * u
    for k in range(len(ys)):
        s_f, s_t = fused[3 * k], ref[3 * k]
        assert abs(s_f - s_t) <= n * (2 * g * u + d) + 2 * gamma * s_t, (k, s_f, s_t)
        assert abs(fused[3 * k + 1] - ref[3 * k + 1]) <= (2 * gamma + d) * ref[3 * k + 1]
        assert abs(fused[3 * k + 2] - ref[3 * k + 2]) <= d * ref[3 * k + 2]
    np.testing.assert_array_equal(fused[-4:-1], ref[-4:-1])
    assert fused[-1] == pytest.approx(ref[-1], rel=2 * gamma)


# ---------------------------------------------------------------- advise

@pytest.mark.parametrize("make, loss", [
    (_mlp, keras.losses.mean_squared_error),
    (_cnn, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
])
def test_advise_keeps_loss_within_budget_with_16bit_flops(make, loss):
    model, x, y = make()
    budget = 1e-3
    advice = advise(model, (x, y), budget=budget, loss=loss, quantize=(), verbose=False)
    assert isinstance(advice.policy_map, keras.dtype_policies.DTypePolicyMap)
    assert advice.within_budget and advice.error <= budget
    applied = advice.apply(model)
    ref = _eval_loss(_float64_twin(model), x.astype(np.float64), y, loss)
    got = _eval_loss(applied, x, y, loss)
    assert abs(got - ref) / abs(ref) <= budget
    # FLOPs of the matrix layers (2 * kernel size * output positions), counted here
    total = half = 0.0
    for layer in applied.layers:
        if not hasattr(layer, "kernel"):
            continue
        out = layer.output.shape
        flops = 2.0 * np.prod(layer.kernel.shape) * np.prod(out[1:-1] or [1])
        total += flops
        half += flops if layer.compute_dtype in ("float16", "bfloat16") else 0.0
    assert half / total >= 0.7
    assert advice.low_precision_flops >= 0.7


def test_advise_promotes_the_planted_bottleneck_and_its_input():
    model, x, y = _planted()
    advice = advise(model, (x, y), budget=1e-2, loss="mse", quantize=(), verbose=False)
    policies = advice.policies()
    assert policies["ln"] == "float32" and policies["shift"] == "float32"
    assert policies["d1"] in ("mixed_float16", "mixed_bfloat16")
    assert policies["head"] in ("mixed_float16", "mixed_bfloat16")
    ref = _eval_loss(_float64_twin(model), x.astype(np.float64), y.astype(np.float64),
                     keras.losses.mean_squared_error)
    got = _eval_loss(advice.apply(model), x, y, keras.losses.mean_squared_error)
    assert abs(got - ref) / ref <= 1e-2
    # all 16-bit is far outside the budget
    assert profile(model, (x, y), policy="mixed_float16", loss="mse", verbose=False).loss_error > 0.1


def test_advise_int8_where_keras_quantizes():
    model, x, y = _mlp()
    budget = 1e-2
    advice = advise(model, (x, y), budget=budget, loss="mse", quantize=("int8",), verbose=False)
    assert advice.quantization  # at least one Dense layer takes int8 within this budget
    applied = advice.apply(model)
    for name, mode in advice.quantization.items():
        assert applied.get_layer(name).quantization_mode == mode
    ref = _eval_loss(_float64_twin(model), x.astype(np.float64), y.astype(np.float64),
                     keras.losses.mean_squared_error)
    got = _eval_loss(applied, x, y, keras.losses.mean_squared_error)
    assert abs(got - ref) / ref <= budget
    assert model.layers[0].quantization_mode is None  # the model passed is unchanged
