"""``python -m safeops.native build [--force] | status``: build the fused kernels ahead of time."""

import sys

import tensorflow as tf

from safeops.native import build, status


def _main(argv):
    if argv[1:2] == ["build"]:
        try:
            path = build(force="--force" in argv)
        except RuntimeError as err:
            print(err, file=sys.stderr)
            return 1
        tf.load_op_library(str(path))
        print(f"safeops fused kernels: {path}")
        return 0
    if argv[1:2] == ["status"]:
        print(status())
        return 0
    print("usage: python -m safeops.native build [--force] | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
