"""Doctor speed: ``python -m benchmarks.doctor_time``.

Times `so.doctor.audit` on a 6-layer MLP (784-256x5-10) and a small CNN (3 conv + 2 dense,
32x32x3), batch 32, three calls each, then saves both models and times the command line
``python -m safeops.doctor MODEL.keras`` in a fresh interpreter (TF start-up included).
Bars: audit < 10 s, command line < 20 s.
"""

import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _models(keras):
    mlp = keras.Sequential([keras.Input((784,))]
                           + [keras.layers.Dense(256, activation="relu") for _ in range(5)]
                           + [keras.layers.Dense(10, activation="softmax")])
    cnn = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    return {"mlp": (mlp, (32, 784)), "cnn": (cnn, (32, 32, 32, 3))}


def main():
    import keras
    import numpy as np

    import safeops as so

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out_dir = tempfile.mkdtemp()
    for name, (model, shape) in _models(keras).items():
        x = rng.standard_normal(shape).astype(np.float32)
        for k in range(3):
            t0 = time.perf_counter()
            findings = so.doctor.audit(model, x, verbose=False)
            print(f"audit {name} call {k}: {time.perf_counter() - t0:.3f} s, "
                  f"{len(findings)} findings (bar < 10 s)")
        path = os.path.join(out_dir, f"{name}.keras")
        model.save(path)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "safeops.doctor", path],
                              capture_output=True, text=True)
        print(f"python -m safeops.doctor {name}.keras: {time.perf_counter() - t0:.2f} s wall "
              f"(TF start-up included), exit {proc.returncode} (bar < 20 s)")


if __name__ == "__main__":
    main()
