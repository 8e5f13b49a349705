"""Herbie-style bits-of-error table for safeops' special functions.

``python -m benchmarks.bits_of_error [--n=10000] [--output=PATH]``

For each op and dtype (float32, float64): `n` inputs from
`safeops.testing.sample_floats` over the op's domain (uniform over bit
patterns), the mpmath reference at 60 digits (`safeops.testing.reference`),
and mean / max `bits_of_error` for the naive formula, the TF (or TFP) op where
one exists, and safeops. Prints a Markdown table (and writes it to --output).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mpmath  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import safeops as so  # noqa: E402
from safeops import testing  # noqa: E402

__all__ = ["SPECS", "measure", "main"]

_F32MAX = float(np.finfo(np.float32).max)
_F64MAX = float(np.finfo(np.float64).max)
_TINY = {"float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(np.float64).tiny)}
_MAX = {"float32": _F32MAX, "float64": _F64MAX}


def _tfp():
    import tensorflow_probability as tfp  # lazily: slow import
    return tfp


def _dom(f32, f64):
    return {"float32": f32, "float64": f64}


def _lse2(x, y):
    return tf.reduce_logsumexp(tf.stack([x, y]), axis=0)


def _mp_log1mexp(a):
    """log(1 - exp(-a)) in mpmath, a >= 0, accurate at any working precision."""
    if a <= mpmath.log(2):
        return mpmath.log(-mpmath.expm1(-a))
    return mpmath.log1p(-mpmath.exp(-a))


def _mp_safe_log(dtype):
    """safe_log's documented function: log(max(x, smallest normal)); x <= 0 included."""
    return lambda x: mpmath.log(max(x, _TINY[dtype]))


def _mp_safe_exp(dtype):
    """safe_exp's documented function: min(exp(x), largest finite) (saturates, never inf)."""
    return lambda x: min(mpmath.exp(x), _MAX[dtype])


# name: (arity, domains per dtype [(lo, hi)] per argument, mpmath fn, naive, tf op or None, safeops)
SPECS = {
    "sqrt": (1, _dom([(0, _F32MAX)], [(0, _F64MAX)]), mpmath.sqrt,
             tf.sqrt, tf.sqrt, so.sqrt),
    "hypot": (2, _dom([(-_F32MAX, _F32MAX)] * 2, [(-_F64MAX, _F64MAX)] * 2),
              lambda x, y: mpmath.sqrt(x * x + y * y),
              lambda x, y: tf.sqrt(x * x + y * y), None, so.hypot),
    "log1m": (1, _dom([(-_F32MAX, 1.0)], [(-_F64MAX, 1.0)]), lambda x: mpmath.log1p(-x),
              lambda x: tf.math.log(1 - x), lambda x: tf.math.log1p(-x), so.log1m),
    # danger zones in the domains: 0 and subnormals for safe_log, beyond the
    # overflow point (88.72 / 709.78) for safe_exp; references are the documented
    # floored / saturated functions (float32 here, float64 in _MP_BY_DTYPE)
    "safe_log": (1, _dom([(0.0, _F32MAX)], [(0.0, _F64MAX)]), _mp_safe_log("float32"),
                 tf.math.log, tf.math.log, so.safe_log),
    "safe_exp": (1, _dom([(-104.0, 1000.0)], [(-746.0, 10000.0)]), _mp_safe_exp("float32"),
                 tf.exp, tf.exp, so.safe_exp),
    "log1mexp": (1, _dom([(-_F32MAX, _F32MAX)], [(-_F64MAX, _F64MAX)]),
                 lambda x: _mp_log1mexp(abs(x)),
                 lambda x: tf.math.log(1 - tf.exp(-tf.abs(x))),
                 lambda x: _tfp().math.log1mexp(x), so.log1mexp),
    "logaddexp": (2, _dom([(-100.0, 100.0)] * 2, [(-800.0, 800.0)] * 2),
                  lambda x, y: max(x, y) + mpmath.log1p(mpmath.exp(-abs(x - y))),
                  lambda x, y: tf.math.log(tf.exp(x) + tf.exp(y)), _lse2, so.logaddexp),
    "logsubexp": (2, _dom([(-100.0, 100.0)] * 2, [(-800.0, 800.0)] * 2),
                  lambda x, y: x + _mp_log1mexp(x - y),
                  lambda x, y: tf.math.log(tf.exp(x) - tf.exp(y)),
                  lambda x, y: _tfp().math.log_sub_exp(x, y), so.logsubexp),
    "softplus": (1, _dom([(-_F32MAX, _F32MAX)], [(-_F64MAX, _F64MAX)]),
                 lambda x: mpmath.log1p(mpmath.exp(x)),
                 lambda x: tf.math.log(1 + tf.exp(x)), tf.math.softplus, so.softplus),
    "softplus_inverse": (1, _dom([(0, _F32MAX)], [(0, _F64MAX)]),
                         lambda x: mpmath.log(mpmath.expm1(x)),
                         lambda x: tf.math.log(tf.exp(x) - 1),
                         lambda x: _tfp().math.softplus_inverse(x), so.softplus_inverse),
    "log_sigmoid": (1, _dom([(-_F32MAX, _F32MAX)], [(-_F64MAX, _F64MAX)]),
                    lambda x: -mpmath.log1p(mpmath.exp(-x)),
                    lambda x: tf.math.log(tf.sigmoid(x)), tf.math.log_sigmoid, so.log_sigmoid),
    "log_cosh": (1, _dom([(-_F32MAX, _F32MAX)], [(-_F64MAX, _F64MAX)]),
                 lambda x: mpmath.log1p(2 * mpmath.sinh(x / 2) ** 2),
                 lambda x: tf.math.log(tf.cosh(x)), lambda x: _tfp().math.log_cosh(x),
                 so.log_cosh),
}


_MP_BY_DTYPE = {("safe_log", "float64"): _mp_safe_log("float64"),
                ("safe_exp", "float64"): _mp_safe_exp("float64")}
# ops whose subnormal inputs are scored (the floor is the point of safe_log);
# the others' are left out, see `inputs`
_SUBNORMAL_INPUTS = {"safe_log"}


def mp_reference(name, dtype):
    """The mpmath function `name` is scored against for `dtype`."""
    return _MP_BY_DTYPE.get((name, dtype), SPECS[name][2])


def _normal(a, dtype):
    """True where `a` is 0, inf or a normal number (TF's CPU kernels flush subnormals)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    return (a == 0) | (a >= float(np.finfo(dtype).tiny))


def _sample(name, dtype, n, seed):
    """(args, number of subnormal draws left out before the first n were kept)."""
    arity, domains = SPECS[name][0], SPECS[name][1][dtype]
    args = [testing.sample_floats(dtype, 2 * n, lo, hi, seed=seed + k)
            for k, (lo, hi) in enumerate(domains)][:arity]
    if name in _SUBNORMAL_INPUTS:
        keep = np.ones(2 * n, bool)
    else:
        keep = np.logical_and.reduce([_normal(a, dtype) for a in args])
    idx = np.flatnonzero(keep)[:n]
    dropped = int(np.sum(~keep[:idx[-1] + 1])) if len(idx) else 0
    args = [a[idx] for a in args]
    if name == "logsubexp":
        args = [np.maximum(args[0], args[1]), np.minimum(args[0], args[1])]
    return args, dropped


def inputs(name, dtype, n, seed=0):
    """`n` sampled arguments of `name` for `dtype` (logsubexp: ordered x >= y).

    Subnormal inputs are left out (except for safe_log, whose floor is meant
    for them): TensorFlow's CPU kernels run with flush-to-zero /
    denormals-are-zero, so no TF op (including `tf.sqrt`) sees them; the
    comparison would measure the CPU mode, not the formula. `measure` reports
    how many draws were left out.
    """
    return _sample(name, dtype, n, seed)[0]


def _bits(fn, args, ref, dtype, keep):
    try:
        out = fn(*[tf.constant(a) for a in args])
    except Exception:  # noqa: BLE001 - an op without a kernel for this dtype
        return None
    b = testing.bits_of_error(np.asarray(out)[keep], ref[keep], dtype)
    return float(np.mean(b)), float(np.max(b))


def measure(name, dtype, n=10000, seed=0):
    """Bits of error of the naive formula, the TF op and safeops on `n` inputs.

    Returns {"naive": (mean, max), "tf": (mean, max) | None, "safeops": (mean,
    max), "n": scored count, "subnormal_inputs": draws left out by `inputs`,
    "subnormal_results": inputs not scored in bits, "flush_error": the largest
    |safeops - exact| on those, in units of the smallest normal number}.

    Inputs whose exact result is subnormal are not scored in bits: TF's CPU
    kernels flush such results to 0, which is up to 2**23 (float32) ulp away in
    the subnormal range. They are checked instead in absolute terms: flushing
    costs at most one smallest normal, so `flush_error` <= 1 is the bound.
    """
    _, _, _, naive, tf_op, ours = SPECS[name]
    args, dropped = _sample(name, dtype, n, seed)
    ref = testing.reference(mp_reference(name, dtype), *args, dtype=dtype, dps=60)
    keep = _normal(ref, dtype) | np.isnan(ref.astype(np.float64))
    flush = 0.0
    if not keep.all():
        out = np.asarray(ours(*[tf.constant(a) for a in args]), np.float64)[~keep]
        flush = float(np.max(np.abs(out - ref[~keep].astype(np.float64)))) / _TINY[dtype]
    return {"naive": _bits(naive, args, ref, dtype, keep),
            "tf": _bits(tf_op, args, ref, dtype, keep) if tf_op is not None else None,
            "safeops": _bits(ours, args, ref, dtype, keep), "n": int(keep.sum()),
            "subnormal_inputs": dropped, "subnormal_results": int((~keep).sum()),
            "flush_error": flush}


def _fmt(v):
    return "—" if v is None else f"{v[0]:.2f} / {v[1]:.1f}"


def table(n=10000, names=None, log=print):
    rows = ["| op | dtype | naive mean / max | TF mean / max | safeops mean / max | "
            "subnormal inputs / results left out |",
            "|---|---|---|---|---|---|"]
    for name in names or SPECS:
        for dtype in ("float32", "float64"):
            r = measure(name, dtype, n)
            rows.append(f"| {name} | {dtype} | {_fmt(r['naive'])} | {_fmt(r['tf'])} | "
                        f"{_fmt(r['safeops'])} | {r['subnormal_inputs']} / "
                        f"{r['subnormal_results']} |")
            log(rows[-1])
    return "\n".join(rows)


def main(argv):
    n = 10000
    out = None
    names = None
    for a in argv[1:]:
        if a.startswith("--n="):
            n = int(a[4:])
        elif a.startswith("--output="):
            out = a[9:]
        elif a.startswith("--only="):
            names = a[7:].split(",")
    md = table(n, names, log=lambda s: print(s, file=sys.stderr))
    header = (f"Bits of error (Herbie's metric, mean / max over {n} inputs sampled uniformly "
              f"over bit patterns, subnormal inputs (except for safe_log) and subnormal results left out of the bits because TF's CPU kernels flush them to zero, counted in the last column; mpmath at 60 digits; safe_log and safe_exp scored against their floored / saturated definitions). TF {tf.__version__}; TF column: the TF "
              f"op, TFP's for log1mexp, logsubexp, softplus_inverse, log_cosh; reduce_logsumexp "
              f"of a 2-row stack for logaddexp.\n\n")
    print(header + md)
    if out:
        with open(out, "w") as f:
            f.write(header + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
