"""Import cost of safeops over TensorFlow: ``python -m benchmarks.import_time``.

Fresh interpreters import `tensorflow` and `safeops` alternately (A B A B ...);
the median wall time of each and their difference are printed. The target:
`import safeops` costs at most 0.5 s more than `import tensorflow`.
"""

import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
FLAGS = flags.FLAGS


def _time_import(module):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv):
    del argv
    _time_import("tensorflow")  # warm the file cache
    tf_t, so_t = [], []
    for _ in range(FLAGS.rounds):
        tf_t.append(_time_import("tensorflow"))
        so_t.append(_time_import("safeops"))
    diffs = [b - a for a, b in zip(tf_t, so_t)]
    print(f"import tensorflow: median {statistics.median(tf_t):.2f} s "
          f"(min {min(tf_t):.2f}, max {max(tf_t):.2f})")
    print(f"import safeops:    median {statistics.median(so_t):.2f} s "
          f"(min {min(so_t):.2f}, max {max(so_t):.2f})")
    print(f"difference (pairwise median): {statistics.median(diffs):+.2f} s; bar +0.50 s")


if __name__ == "__main__":
    app.run(main)
