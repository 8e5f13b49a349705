"""Tests of ``python -m safeops.doctor model.keras`` (exit status, output)."""

import importlib.util
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


# ---------------------------------------------------------------- imports, bounds, exit codes

def test_import_option_registers_custom_layers(tmp_path, monkeypatch, capsys):
    module = "doctor_cli_custom_layers"
    (tmp_path / f"{module}.py").write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='doctor_cli_test')\n"
        "class Scale(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2.0 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module(module)
    model = keras.Sequential([keras.Input((4,)), mod.Scale(), keras.layers.Dense(2)])
    path = str(tmp_path / "custom.keras")
    model.save(path)
    # A fresh process has not imported the module: unregister it and forget the import.
    keras.saving.get_custom_objects().pop("doctor_cli_test>Scale")
    sys.modules.pop(module)
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and "--import" in err and "Traceback" not in err
    assert main([path, "--import", module]) == 0
    assert "no numerical hazards found" in capsys.readouterr().out
    assert main([path, "--import", "no_such_module_xyz"]) == 2
    assert "--import no_such_module_xyz: ModuleNotFoundError" in capsys.readouterr().err


def test_probe_size_is_bounded(tmp_path, capsys):
    model = keras.Sequential([keras.Input((50000, 50000)), keras.layers.Dense(1)])
    path = str(tmp_path / "huge_input.keras")
    model.save(path)
    assert main([path]) == 2  # "could not run", not 1 ("hazards found")
    err = capsys.readouterr().err
    assert "5,000,000,000 elements" in err and "--max-probe-elements" in err
    assert main([path, "--max-probe-elements", "100"]) == 2


def test_bad_arguments_get_a_message_and_exit_two(tmp_path, capsys):
    path = _save(tmp_path, "clean.keras")
    for argv in ([path, "--batch", "x"], [path, "--batch", "0"], [path, "--bogus"], [],
                 ["profile", path, "--threshold", "many"], [path, "--fail-on", "sometimes"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error" in err and "Traceback" not in err, argv
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit status" in out and "2  could not run" in out and "--import" in out


def test_string_inputs_get_a_message(tmp_path, capsys):
    inp = keras.Input((1,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["a", "b"])(inp)
    model = keras.Model(inp, keras.layers.Embedding(3, 2)(ids))
    path = str(tmp_path / "text.keras")
    model.save(path)
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert "dtype string" in err and "--data" in err and "Traceback" not in err


def _planted(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = keras.layers.Dense(16, name="shift")(inp)
    out = keras.layers.Dense(2, name="head")(keras.layers.LayerNormalization(name="ln")(h))
    model = keras.Model(inp, out)
    model.get_layer("shift").bias.assign(np.full(16, 1e4, np.float32))
    path = str(tmp_path / "planted.keras")
    model.save(path)
    rng = np.random.default_rng(0)
    data = str(tmp_path / "data.npz")
    np.savez(data, x=rng.standard_normal((32, 8)).astype(np.float32),
             y=rng.standard_normal((32, 2)).astype(np.float32))
    return path, data


def test_profile_command(tmp_path, capsys):
    import json

    path, data = _planted(tmp_path)
    js, png = str(tmp_path / "p.json"), str(tmp_path / "p.png")
    plot = ["--plot", png] if importlib.util.find_spec("matplotlib") else []
    assert main(["profile", path, "--data", data, "--policy", "float16", "--loss", "mse",
                 "--json", js] + plot) == 1  # the LayerNormalization loses its bits
    assert "worst: ln" in capsys.readouterr().out
    with open(js) as f:
        figures = json.load(f)
    assert figures["worst"][0]["layer"] == "ln" and figures["first_over"] == "ln"
    if plot:
        with open(png, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    assert main(["profile", path, "--data", data, "--policy", "float64"]) == 0
    assert main(["profile", path, "--policy", "float17"]) == 2
    assert "not a Keras dtype policy" in capsys.readouterr().err


def test_advise_command_saves_the_advised_model(tmp_path, capsys):
    path, data = _planted(tmp_path)
    out = str(tmp_path / "advised.keras")
    assert main(["advise", path, "--data", data, "--loss", "mse", "--quantize", "",
                 "--save", out]) == 0
    advised = keras.saving.load_model(out)
    policies = {layer.name: layer.dtype_policy.name for layer in advised.layers[1:]}
    assert policies["ln"] == "float32" and policies["shift"] == "float32"
    assert policies["head"] in ("mixed_float16", "mixed_bfloat16")


def test_subclassed_model_profiles_with_data_and_refuses_a_probe(tmp_path, monkeypatch, capsys):
    module = "doctor_cli_subclassed"
    (tmp_path / f"{module}.py").write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='doctor_cli_test')\n"
        "class Net(keras.Model):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.hidden = keras.layers.Dense(8, activation='relu', name='hidden')\n"
        "        self.out = keras.layers.Dense(2, name='out')\n"
        "    def call(self, x):\n"
        "        return self.out(self.hidden(x))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module(module)
    keras.utils.set_random_seed(0)
    model = mod.Net()
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    model(x)
    path, data = str(tmp_path / "net.keras"), str(tmp_path / "x.npy")
    model.save(path)
    np.save(data, x)
    assert main(["profile", path, "--data", data, "--policy", "float64"]) == 0
    out = capsys.readouterr().out
    assert "hidden" in out and "out" in out
    assert main(["profile", path, "--policy", "float16"]) == 2  # no shapes for a probe
    assert "subclassed" in capsys.readouterr().err
