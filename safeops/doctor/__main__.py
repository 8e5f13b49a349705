"""Command line: ``python -m safeops.doctor model.keras``.

Loads the model (without compiling it), prints `weights_report` and an `audit`
on a random standard-normal input of the model's input shape (batch 2 unless
--batch), and exits 1 when a finding at or above --fail-on (default "high") is
found or a weight holds NaN/inf, 2 when the model cannot be loaded, 0 otherwise.
"""

import argparse
import os
import sys

__all__ = ["main"]


def main(argv=None):
    """Run the doctor's command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m safeops.doctor",
                                     description="Audit a saved Keras model for numerical hazards.")
    parser.add_argument("model", help="path to a .keras (or .h5) model file")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the random input")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input")
    parser.add_argument("--fail-on", default="high", choices=("high", "medium", "low", "never"),
                        help="lowest severity that makes the exit status 1")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    import safeops  # noqa: F401  (registers safeops layers for deserialisation)
    from safeops import doctor
    from safeops.doctor.audit import SEVERITIES

    try:
        model = keras.saving.load_model(args.model, compile=False)
    except Exception as err:  # any loading failure is reported, not raised
        print(f"safeops.doctor: cannot load {args.model!r}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    inputs = []
    for t in model.inputs:
        shape = [args.batch if d is None else int(d) for d in t.shape]
        dtype = np.dtype(str(t.dtype)) if str(t.dtype) != "bfloat16" else np.float32
        inputs.append(rng.standard_normal(shape).astype(dtype))
    print(f"safeops.doctor: {args.model} ({model.name}), random input "
          + ", ".join(str(x.shape) for x in inputs))
    stats = doctor.weights_report(model)
    print()
    findings = doctor.audit(model, *inputs)
    if args.fail_on == "never":
        return 0
    limit = SEVERITIES.index(args.fail_on)
    bad = [f for f in findings if SEVERITIES.index(f.severity) <= limit]
    bad_weights = [s for s in stats if s.severity and SEVERITIES.index(s.severity) <= limit]
    if bad or bad_weights:
        print(f"\nsafeops.doctor: {len(bad)} finding(s) and {len(bad_weights)} weight problem(s) "
              f"at severity >= {args.fail_on}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
