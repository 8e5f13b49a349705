"""A model zoo for the model-level tools: small real architectures with random weights.

Each builder returns a fresh Keras model and the inputs it is tested on
(``(model, x, y)``); nothing is downloaded (``weights=None``).
"""

import keras
import numpy as np
from keras import ops

VOCAB, SEQ, DIM = 40, 12, 16


def _rng(seed):
    return np.random.default_rng(seed)


def tokens(n=8, seed=0, pad_rows=(1,)):
    """Token ids with trailing padding (0); the rows in `pad_rows` are all padding."""
    rng = _rng(seed)
    x = rng.integers(1, VOCAB, (n, SEQ))
    lengths = rng.integers(3, SEQ + 1, n)
    x[np.arange(SEQ)[None, :] >= lengths[:, None]] = 0
    for r in pad_rows:
        x[r] = 0
    return x.astype("int32")


@keras.saving.register_keras_serializable(package="safeops_zoo")
class DecoderBlock(keras.layers.Layer):
    """A pre-norm decoder block that owns its sublayers (created in __init__)."""

    def __init__(self, dim, heads, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads = dim, heads
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="attention")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.ffn = [keras.layers.Dense(2 * dim, activation="relu", name="ffn_in"),
                    keras.layers.Dense(dim, name="ffn_out")]
        self.supports_masking = True

    def call(self, x, mask=None):
        h = self.norm1(x)
        x = x + self.attention(h, h, query_mask=mask, value_mask=mask, use_causal_mask=True)
        h = self.norm2(x)
        for layer in self.ffn:
            h = layer(h)
        return x + h

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads}


def transformer(seed=0, decoder=True):
    """Encoder classifier: Embedding(mask_zero) + positions (added with +), MHA with padding and
    causal masks, LayerNorm, residual adds, keras.ops calls, masked average pooling, softmax."""
    keras.utils.set_random_seed(seed)
    tok = keras.Input((SEQ,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, DIM, mask_zero=True, name="tok_emb")(tok)
    pad = ops.not_equal(tok, 0)  # `x + ...` drops the Keras mask: pass it on explicitly
    positions = ops.cumsum(ops.ones_like(tok), axis=1) - 1
    x = x + keras.layers.Embedding(SEQ, DIM, name="pos_emb")(positions)
    pairs = ops.logical_and(ops.expand_dims(pad, 1), ops.expand_dims(pad, 2))
    h = keras.layers.MultiHeadAttention(2, DIM // 2, name="mha")(
        x, x, attention_mask=pairs, use_causal_mask=True)
    x = keras.layers.LayerNormalization(name="ln1")(x + h)
    h = keras.layers.Dense(2 * DIM, name="ffn_in")(x)
    h = keras.layers.Dense(DIM, name="ffn_out")(ops.gelu(h))
    x = keras.layers.LayerNormalization(name="ln2")(x + h)
    if decoder:
        x = DecoderBlock(DIM, 2, name="decoder")(x, mask=pad)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x, mask=pad)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(tok, out, name="transformer")
    x_data = tokens(8, seed)
    y = _rng(seed).integers(0, 3, 8)
    return model, x_data, y


def lstm(seed=0):
    """Embedding(mask_zero) -> LSTM (the mask reaches it through Keras's mask propagation)."""
    keras.utils.set_random_seed(seed)
    tok = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, DIM, mask_zero=True)(tok)
    x = keras.layers.LSTM(DIM, return_sequences=True)(x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(tok, out, name="lstm"), tokens(8, seed), _rng(seed).integers(0, 3, 8)


def _images(n, size, channels=3, seed=0):
    return _rng(seed).uniform(0, 1, (n, size, size, channels)).astype("float32")


def small_cnn(seed=0, size=16):
    """Conv -> BatchNorm -> ReLU twice (foldable), a residual add, global pooling, softmax."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    h = keras.layers.Conv2D(8, 3, padding="same")(x)
    h = keras.layers.BatchNormalization()(h)
    x = keras.layers.Activation("relu")(keras.layers.Add()([x, h]))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inp, out, name="small_cnn"), _images(8, size, seed=seed), \
        _rng(seed).integers(0, 4, 8)


def unet(seed=0, size=16):
    """U-Net-like: down, up, skip Concatenate, BatchNorm, per-pixel softmax."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    d1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    d2 = keras.layers.MaxPooling2D()(d1)
    d2 = keras.layers.Conv2D(16, 3, padding="same")(d2)
    d2 = keras.layers.ReLU()(keras.layers.BatchNormalization()(d2))
    u1 = keras.layers.UpSampling2D()(d2)
    x = keras.layers.Concatenate()([u1, d1])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    out = keras.layers.Conv2D(2, 1, activation="softmax")(x)
    y = _rng(seed).integers(0, 2, (8, size, size))
    return keras.Model(inp, out, name="unet"), _images(8, size, seed=seed), y


def mlp(seed=0):
    """The residual MLP `Dense(x) + x`: an op node between layers."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8,))
    h = keras.layers.Dense(8)(inp) + inp
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(16, activation="relu")(h))
    x = _rng(seed).standard_normal((16, 8)).astype("float32")
    return keras.Model(inp, out, name="mlp"), x, _rng(seed).integers(0, 3, 16)


def two_in_two_out(seed=0):
    """Two inputs (features, tokens), two outputs (a class and a value), a shared layer."""
    keras.utils.set_random_seed(seed)
    a = keras.Input((DIM,), name="features")
    tok = keras.Input((SEQ,), dtype="int32", name="tokens")
    shared = keras.layers.Dense(DIM, name="shared")
    e = keras.layers.Embedding(VOCAB, DIM, mask_zero=True)(tok)
    s = keras.layers.GlobalAveragePooling1D()(e)
    h = keras.layers.Concatenate()([shared(a), shared(s)])
    h = keras.layers.LayerNormalization()(h)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    val = keras.layers.Dense(1, name="value")(keras.layers.UnitNormalization()(h))
    model = keras.Model([a, tok], [cls, val], name="two_in_two_out")
    rng = _rng(seed)
    x = [rng.standard_normal((8, DIM)).astype("float32"), tokens(8, seed)]
    y = [rng.integers(0, 3, 8), rng.standard_normal((8, 1)).astype("float32")]
    return model, x, y


def nested(seed=0):
    """A Functional model inside a Functional model, and a Sequential one inside that."""
    keras.utils.set_random_seed(seed)
    inner_seq = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.LayerNormalization()], name="inner_seq")
    i = keras.Input((8,))
    h = keras.layers.Dense(16)(i)
    inner = keras.Model(i, inner_seq(h), name="inner")
    inner.layers[1].trainable = False  # trainability must carry over
    o = keras.Input((8,))
    x = inner(o)
    x = keras.layers.RMSNormalization()(x)
    out = keras.layers.Softmax()(keras.layers.Dense(3)(x))
    rng = _rng(seed)
    return keras.Model(o, out, name="nested"), rng.standard_normal((8, 8)).astype("float32"), \
        rng.integers(0, 3, 8)


def mobilenet(seed=0, size=32):
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV3Small(input_shape=(size, size, 3), weights=None,
                                                classes=4, include_preprocessing=False)
    return model, _images(4, size, seed=seed), _rng(seed).integers(0, 4, 4)


def resnet50(seed=0, size=32):
    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(input_shape=(size, size, 3), weights=None, classes=4)
    return model, _images(4, size, seed=seed), _rng(seed).integers(0, 4, 4)


def efficientnet(seed=0, size=32):
    keras.utils.set_random_seed(seed)
    model = keras.applications.EfficientNetB0(input_shape=(size, size, 3), weights=None,
                                              classes=4)
    return model, _images(4, size, seed=seed), _rng(seed).integers(0, 4, 4)


def wrapped_transformer(seed=0):
    """The transformer made NaN-proof by so.wrap_model (the float model QAT starts from)."""
    import safeops as so
    model, x, y = transformer(seed, decoder=False)
    return so.wrap_model(model)[0], x, y
