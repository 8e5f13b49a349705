"""Tests of ``python -m safeops.doctor model.keras`` (exit status, output)."""

import os
import subprocess
import sys

import keras
import numpy as np

from safeops.doctor.__main__ import main


def _save(tmp_path, name, big=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    if big:  # 3e38 * 8 inputs overflows float32 in the MatMul: inf logits, NaN softmax
        model.layers[0].kernel.assign(np.full((8, 16), 3e38, np.float32))
    path = str(tmp_path / name)
    model.save(path)
    return path


def test_clean_model_exits_zero(tmp_path, capsys):
    assert main([_save(tmp_path, "clean.keras")]) == 0
    out = capsys.readouterr().out
    assert "weights_report" in out and "no numerical hazards found" in out


def test_hazardous_model_exits_one(tmp_path, capsys):
    path = _save(tmp_path, "bad.keras", big=True)
    assert main([path]) == 1
    captured = capsys.readouterr()
    assert "non-finite produced" in captured.out and "finding(s)" in captured.err
    assert main([path, "--fail-on", "never"]) == 0


def test_unloadable_model_exits_two(tmp_path, capsys):
    assert main([str(tmp_path / "missing.keras")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_real_command_line(tmp_path):
    path = _save(tmp_path, "clean.keras")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "safeops.doctor", path], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "safeops.doctor.audit" in proc.stdout
