"""Tests of `safeops.doctor.weights_report` against NumPy/ml_dtypes computations."""

import math

import keras
import ml_dtypes
import numpy as np
import pytest

from safeops.doctor import weights_report


def _model():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(32), keras.layers.Dense(10, activation="softmax")])


def test_layer_initialised_100x_too_small_is_flagged():
    keras.utils.set_random_seed(0)
    model = _model()
    small = model.layers[1].kernel
    small.assign(small.numpy() * 0.01)
    before = [w.copy() for w in model.get_weights()]
    stats = {s.weight: s for s in weights_report(model, verbose=False)}
    flagged = [name for name, s in stats.items() if s.flags]
    assert flagged == [small.path]
    s = stats[small.path]
    # Glorot scale of a 128x32 kernel: sqrt(2/160); its glorot_uniform std is that, times 0.01.
    assert s.init_std == pytest.approx(math.sqrt(2.0 / 160.0), rel=1e-12)
    assert s.scale_ratio == pytest.approx(0.01, rel=0.1)  # sampling error of a 4096-value std
    assert s.severity == "medium" and "vanish" in s.flags[0]
    relu = stats[model.layers[0].kernel.path]
    assert relu.init_std == pytest.approx(math.sqrt(2.0 / 64.0), rel=1e-12)  # He for ReLU
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # never modified


def test_statistics_match_numpy():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    w = np.array([[1e5, -2.0, 1e-9], [0.5, 0.25, -70000.0], [3.0, 1e-3, 0.0], [np.nan, 2.0, 1.0]],
                 np.float32)
    model.layers[0].kernel.assign(w)
    s = weights_report(model, verbose=False)[0]
    finite = w[np.isfinite(w)].astype(np.float64)
    assert (s.n_nan, s.n_inf) == (1, 0) and s.severity == "high"
    assert s.min == -70000.0 and s.max == 1e5 and s.std == pytest.approx(finite.std(), rel=1e-12)
    assert s.fp16_overflow == pytest.approx(2 / 11)  # 1e5 and -7e4 exceed 65504
    assert s.fp16_flush == pytest.approx(1 / 10)  # 1e-9 < 2**-25 of the 10 non-zero finite values
    b = finite.astype(ml_dtypes.bfloat16).astype(np.float64)
    assert s.bf16_relerr == pytest.approx(np.linalg.norm(b - finite) / np.linalg.norm(finite), rel=1e-9)
    # int8 per output channel, computed column by column (NaN treated as 0).
    x = np.nan_to_num(w.astype(np.float64))
    signal = noise = 0.0
    for j in range(3):
        col = x[:, j]
        step = np.abs(col).max() / 127
        q = np.round(col / step) * step
        signal += np.sum(col ** 2)
        noise += np.sum((col - q) ** 2)
    assert s.int8_sqnr_db == pytest.approx(10 * math.log10(signal / noise), rel=1e-9)


def test_clean_model_has_no_flags(capsys):
    keras.utils.set_random_seed(1)
    stats = weights_report(_model())
    assert all(not s.flags for s in stats)
    assert "weights_report" in capsys.readouterr().out


def test_bad_input():
    with pytest.raises(TypeError, match="weights_report.*'model'"):
        weights_report(3)
