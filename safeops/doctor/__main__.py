"""Command line of the numerics doctor.

    python -m safeops.doctor [audit] model.keras [options]     weights report + audit
    python -m safeops.doctor profile model.keras [options]     bits lost per layer
    python -m safeops.doctor advise model.keras [options]      dtype per layer within a budget

Exit status: 0 nothing found, 1 hazards found (audit: a finding at or above
--fail-on or a weight with NaN/inf; profile: a layer losing more than
--threshold bits; advise: the budget cannot be met), 2 the doctor could not
run (bad arguments, a module that does not import, a model that does not
load, a probe input too large, inputs it cannot make up, a failure while
running).
"""

import argparse
import importlib
import os
import sys
import traceback

__all__ = ["main"]

EXIT_OK, EXIT_FOUND, EXIT_CANNOT_RUN = 0, 1, 2
_COMMANDS = ("audit", "profile", "advise")
_PREFIX = "safeops.doctor"

_EPILOG = """\
exit status:
  0  ran, nothing found
  1  hazards found (audit: a finding at or above --fail-on, or a weight with NaN/inf;
     profile: a layer losing more than --threshold bits; advise: budget not met)
  2  could not run: bad arguments, an --import that fails, a model that does not load,
     a random probe larger than --max-probe-elements, inputs that cannot be made up
     (string inputs, or a subclassed model's: give --data), or an error while running

data files (--data): .npy (one input) or .npz (arrays named as the model's inputs, else
taken in file order, as for a subclassed model; an array named "y" holds the targets for
--loss).
"""


class _CannotRun(Exception):
    """A reason the doctor cannot run; printed, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        raise _CannotRun(f"{self.prog}: error: {message}")


def _parser(command):
    prog = f"python -m {_PREFIX}" + ("" if command == "audit" else f" {command}")
    desc = {
        "audit": ("Audit a saved Keras model for numerical hazards (weights report + audit). "
                  "Other commands: 'python -m safeops.doctor profile -h' (bits lost per layer "
                  "in a precision), 'python -m safeops.doctor advise -h' (dtype per layer)."),
        "profile": "Bits each layer of a saved Keras model loses in a precision, against float64.",
        "advise": "The cheapest dtype per layer of a saved Keras model within an error budget.",
    }[command]
    p = _Parser(prog=prog, description=desc, epilog=_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="path to a .keras (or .h5) model file")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers the model's custom objects); repeatable")
    p.add_argument("--data", help=".npy or .npz file with the inputs (default: a random probe)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the random probe (default 2)")
    p.add_argument("--dim", type=int, default=16,
                   help="size given to unknown non-batch dimensions of the probe (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random probe")
    p.add_argument("--max-probe-elements", type=int, default=2 ** 24, metavar="N",
                   help="largest random probe, in elements over all inputs (default 2^24)")
    p.add_argument("--traceback", action="store_true", help="print the traceback of a failure")
    if command == "audit":
        p.add_argument("--fail-on", default="high", choices=("high", "medium", "low", "never"),
                       help="lowest severity that makes the exit status 1")
    else:
        p.add_argument("--loss", help="a Keras loss name (needs targets 'y' in --data)")
        p.add_argument("--mode", default="graph" if command == "profile" else "eager",
                       choices=("eager", "graph"),
                       help="run eagerly or traced in tf.function (same figures)")
    if command == "profile":
        p.add_argument("--policy", default="mixed_float16",
                       help="Keras dtype policy to profile (default mixed_float16; int8, float8, ...)")
        p.add_argument("--threshold", type=float, default=4.0,
                       help="bits lost (mean) that count as a hazard (default 4)")
        p.add_argument("--plot", help="write the bits-lost chart to this PNG file")
        p.add_argument("--json", help="write the figures to this JSON file")
    if command == "advise":
        p.add_argument("--budget", type=float, default=1e-2,
                       help="allowed relative error of the loss (or of the outputs) (default 1e-2)")
        p.add_argument("--dtypes", default="float16,bfloat16", help="16-bit candidates")
        p.add_argument("--quantize", default="int8", help="Keras quantization modes to try ('' none)")
        p.add_argument("--save", help="save the advised model (.keras) here")
    return p


def main(argv=None):
    """Run the doctor's command line; returns the exit status (0, 1 or 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "audit"
    if argv and argv[0] in _COMMANDS:
        command, argv = argv[0], argv[1:]
    parser = _parser(command)
    args = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        for name, value in (("--batch", args.batch), ("--dim", args.dim),
                            ("--max-probe-elements", args.max_probe_elements)):
            if value < 1:
                raise _CannotRun(f"{parser.prog}: error: argument {name} must be >= 1; got {value}")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _import_modules(args.imports)
        model = _load(args.model)
        return _COMMAND_FNS[command](args, model)
    except _CannotRun as err:
        print(f"{_PREFIX}: {err}" if not str(err).startswith("python -m") else str(err), file=sys.stderr)
        return EXIT_CANNOT_RUN
    except Exception as err:  # a failure while running: a message, and exit 2
        if args is not None and args.traceback:
            traceback.print_exc()
        print(f"{_PREFIX}: could not run the {command}: {type(err).__name__}: {err}"
              + ("" if args is not None and args.traceback else " (--traceback for details)"),
              file=sys.stderr)
        return EXIT_CANNOT_RUN


def _import_modules(names):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:
            raise _CannotRun(f"--import {name}: {type(err).__name__}: {err}") from None


def _load(path):
    import keras
    import safeops  # noqa: F401  (registers safeops layers for deserialisation)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # any loading failure is reported, not raised
        hint = ""
        if "custom" in str(err).lower() or "Could not locate" in str(err):
            hint = " (a custom layer? --import the module that registers it)"
        raise _CannotRun(f"cannot load {path!r}: {type(err).__name__}: {err}{hint}") from None


def _model_inputs(model):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise _CannotRun(f"model {model.name!r} has no symbolic inputs (a subclassed model): "
                         "the random probe cannot know their shapes; give the inputs with --data")
    return inputs


def _probe(model, args):
    """A random input of the model's input shapes, within --max-probe-elements."""
    import numpy as np

    shapes, total = [], 0
    for t in _model_inputs(model):
        shape = []
        for i, d in enumerate(t.shape):
            shape.append((args.batch if i == 0 else args.dim) if d is None else int(d))
        shapes.append(shape)
        total += int(np.prod(shape, dtype=object))
    if total > args.max_probe_elements:
        desc = ", ".join(str(tuple(s)) for s in shapes)
        raise _CannotRun(
            f"the random probe for inputs {desc} would have {total:,} elements "
            f"(~{total * 4 / 2 ** 30:.3g} GiB in float32), more than --max-probe-elements "
            f"{args.max_probe_elements:,}; give --data, a smaller --batch/--dim, or raise the bound")
    rng = np.random.default_rng(args.seed)
    out = []
    for t, shape in zip(model.inputs, shapes):
        name = str(t.dtype)
        if name == "string" or "str" in name:
            raise _CannotRun(f"input {t.name!r} has dtype string: the random probe covers numeric "
                             "inputs only; give the inputs with --data")
        if name == "bool":
            out.append(rng.integers(0, 2, shape).astype(bool))
        elif "int" in name:  # small non-negative integers: valid ids for any Embedding/lookup
            out.append(rng.integers(0, 2, shape).astype(name))
        else:
            dtype = np.float32 if name == "bfloat16" else np.dtype(name)
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def _read_data(model, args):
    """(inputs, targets or None) from --data, or the random probe."""
    import numpy as np

    if args.data is None:
        return _probe(model, args), None
    try:
        loaded = np.load(args.data, allow_pickle=False)
    except Exception as err:
        raise _CannotRun(f"cannot read --data {args.data!r}: {type(err).__name__}: {err}") from None
    if isinstance(loaded, np.ndarray):
        arrays, y = [loaded], None
    else:
        files = {k: loaded[k] for k in loaded.files}
        y = files.pop("y", None)
        arrays = list(files.values())
    if not getattr(model, "inputs", None):  # a subclassed model: the arrays in the file's order
        return arrays, y
    names = [t.name for t in model.inputs]
    if not isinstance(loaded, np.ndarray) and all(n in files for n in names):
        arrays = [files[n] for n in names]
    if len(arrays) != len(names):
        raise _CannotRun(f"--data {args.data!r} holds {len(arrays)} input array(s); the model "
                         f"takes {len(names)} ({', '.join(names)})")
    return arrays, y


def _x(arrays):
    return arrays[0] if len(arrays) == 1 else arrays


def _audit(args, model):
    from safeops import doctor
    from safeops.doctor.audit import SEVERITIES

    inputs, _ = _read_data(model, args)
    print(f"{_PREFIX}: {args.model} ({model.name}), "
          + ("random input " if args.data is None else f"input {args.data} ")
          + ", ".join(str(x.shape) for x in inputs))
    stats = doctor.weights_report(model)
    print()
    findings = doctor.audit(model, *inputs)
    if args.fail_on == "never":
        return EXIT_OK
    limit = SEVERITIES.index(args.fail_on)
    bad = [f for f in findings if SEVERITIES.index(f.severity) <= limit]
    bad_weights = [s for s in stats if s.severity and SEVERITIES.index(s.severity) <= limit]
    if bad or bad_weights:
        print(f"\n{_PREFIX}: {len(bad)} finding(s) and {len(bad_weights)} weight problem(s) "
              f"at severity >= {args.fail_on}", file=sys.stderr)
        return EXIT_FOUND
    return EXIT_OK


def _data_for(args, model):
    inputs, y = _read_data(model, args)
    if args.loss and y is None:
        raise _CannotRun("--loss needs targets: an array named 'y' in the --data .npz file")
    return (_x(inputs), y) if args.loss else _x(inputs)


def _profile(args, model):
    import json
    from safeops import doctor

    prof = doctor.profile(model, _data_for(args, model), policy=args.policy, loss=args.loss,
                          threshold=args.threshold, plot=args.plot, mode=args.mode)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(prof.as_dict(), f, indent=1)
    if prof.first_over is not None:
        print(f"\n{_PREFIX}: layer {prof.first_over!r} loses more than {args.threshold:g} bits",
              file=sys.stderr)
        return EXIT_FOUND
    return EXIT_OK


def _advise(args, model):
    from safeops import doctor

    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    quantize = tuple(q for q in args.quantize.split(",") if q)
    advice = doctor.advise(model, _data_for(args, model), budget=args.budget, loss=args.loss,
                           dtypes=dtypes, quantize=quantize, mode=args.mode)
    if args.save:
        advice.apply(model).save(args.save)
        print(f"{_PREFIX}: advised model saved to {args.save}")
    return EXIT_OK if advice.within_budget else EXIT_FOUND


_COMMAND_FNS = {"audit": _audit, "profile": _profile, "advise": _advise}


if __name__ == "__main__":
    sys.exit(main())
