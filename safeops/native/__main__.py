"""``python -m safeops.native build [--force] | status``: build the fused kernels ahead of time.

``build`` compiles (unless a verified library is cached), loads the result to
check it, and prints one line; on failure it prints one line saying why (no
compiler, an unsafe or read-only cache directory, a compiler error or
timeout) and exits with status 1.
"""

import sys


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _main(argv):
    command = argv[1:2]
    if command not in (["build"], ["status"]):
        print("usage: python -m safeops.native build [--force] | status", file=sys.stderr)
        return 2
    try:
        from safeops import native  # noqa: PLC0415  (TensorFlow's import inside the one-line guard)
        if command == ["status"]:
            print(native.status())
            return 0
        path = native.build(force="--force" in argv)
        native._load_verified(path)  # noqa: SLF001  (the same checked load as library())
    except Exception as err:  # noqa: BLE001  (one line, never a traceback)
        msg = _first_line(err)
        if not msg.startswith("safeops.native"):
            msg = f"safeops.native {command[0]}: {msg}"
        print(msg, file=sys.stderr)
        return 1
    print(f"safeops fused kernels: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
