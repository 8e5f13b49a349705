"""The hazard rules of `safeops.doctor.audit`: one function per op family.

Each rule receives the op, its Trace (intermediate values on the example inputs)
and returns a list of (severity, hazard, input range, message, replacement)
tuples. Thresholds per dtype are derived from the format's limits (see
docs/doctor.md for the derivations).
"""

import math

import numpy as np
import tensorflow as tf

from safeops.doctor._graph import consumers, producer

__all__ = []

_LOW_PRECISION = (tf.float16, tf.bfloat16)
_SOURCES = ("Placeholder", "Const", "ReadVariableOp", "VarHandleOp")


def _finfo(dtype):
    import ml_dtypes
    return ml_dtypes.finfo(ml_dtypes.bfloat16) if dtype == tf.bfloat16 else np.finfo(dtype.as_numpy_dtype)


def _f64(value):
    return None if value is None else np.asarray(value).astype(np.float64)


def _range(value):
    """(min, max) of the finite values, plus the count of NaN and inf."""
    v = _f64(value)
    if v is None or v.size == 0:
        return None
    finite = v[np.isfinite(v)]
    lo = float(finite.min()) if finite.size else math.nan
    hi = float(finite.max()) if finite.size else math.nan
    return (lo, hi, int(np.isnan(v).sum()), int(np.isinf(v).sum()))


def _all_finite(value):
    v = _f64(value)
    return v is None or bool(np.all(np.isfinite(v)))


def _is_one(tensor, trace):
    v = trace.value(tensor) if tensor.op.type == "Const" else None
    return v is not None and v.size >= 1 and bool(np.all(v == 1))


def _exp_threshold(dtype):
    """floor(log(max)) of the format: 88 for float32/bfloat16, 11 for float16, 709 for float64."""
    return float(math.floor(math.log(float(_finfo(dtype).max))))


def _hand_softmax(op):
    """True when `op` is exp(z) / sum(exp(z)) written by hand."""
    return op.type in ("RealDiv", "Div") and producer(op.inputs[0]).type == "Exp"


def _exp_replacement(op):
    for c in consumers(op):
        if c.type == "Sqrt":
            return "so.safe_exp(x / 2) (sqrt(exp(x)) == exp(x/2))"
        if c.type in ("Sum", "Mean") and any(cc.type == "Log" for cc in consumers(c)):
            return "so.reduce_logsumexp"
        if c.type == "Sum" and any(cc.type in ("RealDiv", "Div") for cc in consumers(c)):
            return "so.softmax (or so.log_softmax if its log is taken)"
        if _hand_softmax(c):
            return "so.softmax (or so.log_softmax if its log is taken)"
        if c.type in ("AddV2", "Add") and any(cc.type == "Log" for cc in consumers(c)):
            return "so.softplus"
        if c.type == "Log1p":
            return "so.softplus"
    if op.outputs[0].dtype in _LOW_PRECISION:
        return "so.safe_exp, or so.promote to compute in float32"
    if op.type == "Expm1":
        return "so.safe_exp(x) - 1 (saturates instead of inf; equals expm1(x) for x > 17)"
    return "so.safe_exp"


def rule_exp(op, trace):
    x = trace.value(op.inputs[0])
    y = trace.value(op.outputs[0])
    if x is None:
        return []
    dtype = op.inputs[0].dtype
    limit = _exp_threshold(dtype)
    hi = np.nanmax(_f64(x), initial=-np.inf)
    if hi < limit:
        return []
    overflow = not _all_finite(y) and _all_finite(x)
    sev = "high" if overflow else "medium"
    kind = "float16/bfloat16 exp overflow" if dtype in _LOW_PRECISION else "exp overflow"
    msg = (f"{op.type} of inputs up to {hi:.4g} >= {limit:g} (log of the {dtype.name} maximum)"
           + (": the result overflows to inf" if overflow else ": the result and its gradient "
              "are within a factor of e of overflow"))
    return [(sev, kind, _range(x), msg, _exp_replacement(op))]


def _log_replacement(op, trace):
    src = producer(op.inputs[0])
    if src.type in ("Softmax",) or _hand_softmax(src):
        return ("log-of-softmax", "so.log_softmax(logits), or so.losses.categorical_crossentropy("
                "y, logits, from_logits=True) for the loss")
    if src.type == "Sigmoid":
        return "log-of-sigmoid", "so.log_sigmoid(x)"
    if src.type == "Sub" and _is_one(src.inputs[0], trace):
        inner = producer(src.inputs[1]).type
        if inner == "Sigmoid":
            return "log-of-sigmoid", "so.log_sigmoid(-x) (log(1 - sigmoid(x)))"
        if inner == "Exp":
            return "log-of-1-minus-exp", "so.log1mexp"
    if src.type in ("AddV2", "Add") and any(producer(t).type == "Exp" for t in src.inputs):
        return "log-of-1-plus-exp", "so.softplus"
    if src.type in ("Sum",) and producer(src.inputs[0]).type == "Exp":
        return "log-of-sum-exp", "so.reduce_logsumexp"
    if op.type == "Log1p" and src.type == "Exp":
        return "log-of-1-plus-exp", "so.softplus"
    if op.type == "Log1p":
        return None, "so.safe_log(1 + x) (floors 1 + x at the smallest normal number)"
    return None, "so.safe_log"


def rule_log(op, trace):
    x = trace.value(op.inputs[0])
    if x is None:
        return []
    dtype = op.inputs[0].dtype
    pattern, replacement = _log_replacement(op, trace)
    v = _f64(x)
    if op.type == "Log1p":
        bad = np.nanmin(v, initial=np.inf) <= -1.0
        near = False
        edge = "-1"
    else:
        tiny = 10.0 * float(_finfo(dtype).tiny)  # 1.2e-37 in float32, as the issue asks (1e-37)
        bad = np.nanmin(v, initial=np.inf) <= 0.0
        near = np.nanmin(v, initial=np.inf) <= tiny
        edge = f"{tiny:.2g}"
    if bad:
        sev, what = "high", f"inputs reach {'-1' if op.type == 'Log1p' else '0'}: -inf or NaN, infinite gradient"
    elif near:
        sev, what = "high", (f"inputs reach <= {edge} (within 10x of the smallest normal number): "
                             "the next underflow gives -inf, and the gradient 1/x is so large that "
                             "an upstream gradient of ~40 makes it overflow")
    elif pattern is not None:
        sev, what = "medium", "underflows to -inf as soon as the probability does"
    else:
        return []
    hazard = pattern or "log-of-zero"
    subject = {"log-of-softmax": "a softmax output", "log-of-sigmoid": "a sigmoid output",
               "log-of-1-minus-exp": "1 - exp(x)", "log-of-1-plus-exp": "1 + exp(x)",
               "log-of-sum-exp": "sum(exp(x))"}.get(pattern, "values")
    msg = f"{op.type} of {subject}: {what}"
    return [(sev, hazard, _range(x), msg, replacement)]


def _norm_like(op):
    src = producer(op.inputs[0])
    if src.type in ("Sum",):
        inner = producer(src.inputs[0])
        if inner.type == "Square" or (inner.type == "Mul" and inner.inputs[0] is inner.inputs[1]):
            return True
    return False


def rule_sqrt(op, trace):
    x = trace.value(op.inputs[0])
    if x is None:
        return []
    v = _f64(x)
    lo = np.nanmin(v, initial=np.inf)
    if lo > 0:
        return []
    if op.type == "Sqrt":
        replacement = "so.norm" if _norm_like(op) else "so.sqrt"
        what = "negative inputs give NaN" if lo < 0 else "the gradient 1/(2 sqrt(x)) is infinite at 0"
    else:
        replacement = "so.safe_reciprocal(so.sqrt(x))"
        what = "rsqrt of inputs <= 0 is inf or NaN, and so is its gradient"
    return [("high", f"{op.type.lower()} at or below 0", _range(x), f"{op.type}: {what}", replacement)]


_REDUCTIONS = ("Sum", "Mean", "Prod", "Cumsum", "EuclideanNorm", "Max", "Min")
_ELEMENTWISE = ("Mul", "AddV2", "Add", "Sub", "Neg", "Square", "Abs", "Cast", "Identity", "Reshape",
                "Maximum", "Minimum", "SelectV2", "Select", "ExpandDims", "Squeeze", "BiasAdd",
                "Transpose", "RealDiv", "Div")


def _reduced_later(op, depth=6):
    """True when `op`'s output reaches a reduction through elementwise ops (a mean of quotients)."""
    frontier, seen = [op], set()
    for _ in range(depth):
        nxt = []
        for o in frontier:
            for c in consumers(o):
                if c.name in seen:
                    continue
                seen.add(c.name)
                if c.type in _REDUCTIONS:
                    return True
                if c.type in _ELEMENTWISE:
                    nxt.append(c)
        frontier = nxt
    return False


def _divide_replacement(op):
    if op.type in ("Reciprocal", "Inv"):
        return "so.safe_reciprocal"
    if _reduced_later(op):
        # so.safe_divide saturates x/0 at the dtype's largest value, and a sum or mean of
        # saturated values overflows to inf: the quotient that is reduced must give 0 at y = 0.
        return ("so.divide_no_nan (x/0 := 0, so the reduction that follows stays finite; "
                "so.safe_divide saturates at the dtype maximum and a mean of those is inf)")
    return "so.safe_divide (or so.divide_no_nan where x/0 should be 0)"


def rule_divide(op, trace):
    den_t = op.inputs[0] if op.type in ("Reciprocal", "Inv") else op.inputs[1]
    d = trace.value(den_t)
    y = trace.value(op.outputs[0])
    replacement = _divide_replacement(op)
    dtype = den_t.dtype
    out = []
    if d is not None:
        a = np.abs(_f64(d))
        dmin = float(np.nanmin(a, initial=np.inf))
        eps = float(_finfo(dtype).eps)
        ins_finite = all(_all_finite(trace.value(t)) for t in op.inputs)
        if dmin == 0.0:
            out.append(("high", "division by zero", _range(d),
                        f"{op.type}: the denominator is exactly 0 (inf or NaN, infinite gradient)",
                        replacement))
        elif ins_finite and not _all_finite(y):
            out.append(("high", "division overflow", _range(d),
                        f"{op.type}: the quotient overflows (|denominator| down to {dmin:.3g})",
                        replacement))
        elif dmin < eps:
            out.append(("medium", "division by near-zero", _range(d),
                        f"{op.type}: |denominator| down to {dmin:.3g} < eps({dtype.name}) = {eps:.3g}: "
                        "the quotient and its gradient -x/d^2 blow up", replacement))
    if not out and producer(den_t).type == "ReadVariableOp":
        out.append(("medium", "division by a learned scale", _range(d),
                    f"{op.type}: the denominator is a trainable variable with no floor; training can "
                    "drive it to 0", replacement))
    return out


def rule_where(op, trace):
    cond, t, e = (trace.value(x) for x in op.inputs)
    if cond is None or t is None or e is None:
        return []
    c, tv, ev = np.broadcast_arrays(np.asarray(cond, bool), _f64(t), _f64(e))
    bad = (c & ~np.isfinite(ev)) | (~c & ~np.isfinite(tv))
    if not bad.any():
        return []
    branch = np.where(c, ev, tv)
    return [("high", "where with non-finite branch", _range(branch),
             f"{op.type}: {int(bad.sum())} element(s) of the unselected branch are inf/NaN; the "
             "forward value hides them but the gradient is NaN (0 * inf)", "so.safe_where")]


def rule_reduce(op, trace):
    x_t = op.inputs[0]
    if x_t.dtype not in _LOW_PRECISION:
        return []
    x = trace.value(x_t)
    y = trace.value(op.outputs[0])
    if x is None or not _all_finite(x):
        return []
    repl = "so.reduce_mean" if op.type == "Mean" else "so.reduce_sum"
    repl += " (accumulates in float32), or so.promote"
    big = float(_finfo(x_t.dtype).max)
    if not _all_finite(y):
        return [("high", "low-precision reduction overflow", _range(x),
                 f"{op.type} in {x_t.dtype.name} overflows to inf on finite inputs", repl)]
    total = float(np.sum(np.abs(_f64(x))))
    if total > big:
        return [("medium", "low-precision reduction overflow", _range(x),
                 f"{op.type} in {x_t.dtype.name}: partial sums can reach {total:.3g} > {big:.4g}", repl)]
    return []


def rule_subtract(op, trace):
    a_t, b_t = op.inputs[0], op.inputs[1]
    if producer(a_t).type in _SOURCES and producer(b_t).type in _SOURCES:
        return []  # exact operands: the difference is correctly rounded (Sterbenz)
    a, b = trace.value(a_t), trace.value(b_t)
    if a is None or b is None:
        return []
    a, b = np.broadcast_arrays(_f64(a), _f64(b))
    d = a - b
    mask = np.isfinite(d) & (a != 0) & (b != 0) & (d != 0)
    if not mask.any():
        return []
    lost = np.log2(np.maximum(np.abs(a[mask]), np.abs(b[mask])) / np.abs(d[mask]))
    p = {tf.float16: 11, tf.bfloat16: 8, tf.float32: 24, tf.float64: 53}.get(a_t.dtype, 24)
    worst = float(lost.max())
    if worst <= p / 2:
        return []
    frac = float(np.mean(lost > p / 2))
    replacement = "reformulate (e.g. expm1, a^2-b^2 = (a-b)(a+b)) or so.promote"
    if _is_one(a_t, trace):
        inner = producer(b_t).type
        if inner == "Exp":
            replacement = "-tf.math.expm1(x) (or so.log1mexp if its log is taken)"
        elif inner == "Sigmoid":
            replacement = "tf.sigmoid(-x) (or so.log_sigmoid(-x) if its log is taken)"
    return [("low", "cancellation", _range(d),
             f"Sub cancels up to {worst:.1f} of {p} significant bits ({frac:.0%} of elements lose "
             f"more than half)", replacement)]


def rule_origin(op, trace):
    """Any other op that turns finite inputs into inf/NaN."""
    floats = [t for t in op.inputs if t.dtype.is_floating]
    outs = [t for t in op.outputs if t.dtype.is_floating]
    if not floats or not outs:
        return []
    if not all(_all_finite(trace.value(t)) for t in floats):
        return []
    bad = [t for t in outs if trace.value(t) is not None and not _all_finite(trace.value(t))]
    if not bad:
        return []
    dtype = bad[0].dtype
    repl = "so.promote (compute in float32)" if dtype in _LOW_PRECISION else "rescale the inputs"
    return [("high", "non-finite produced", _range(trace.value(bad[0])),
             f"{op.type} turns finite {dtype.name} inputs into inf/NaN", repl)]


RULES = {
    "Exp": rule_exp, "Expm1": rule_exp,
    "Log": rule_log, "Log1p": rule_log,
    "Sqrt": rule_sqrt, "Rsqrt": rule_sqrt,
    "RealDiv": rule_divide, "Div": rule_divide, "Reciprocal": rule_divide, "Inv": rule_divide,
    "Select": rule_where, "SelectV2": rule_where,
    "Sum": rule_reduce, "Mean": rule_reduce, "Prod": rule_reduce, "Cumsum": rule_reduce,
    "Sub": rule_subtract,
}
_IGNORED = ("Placeholder", "Const", "ReadVariableOp", "Identity", "IdentityN", "NoOp",
            "StopGradient", "AssignVariableOp", "VarHandleOp", "Shape")


def check(op, trace):
    """All findings of one op, as tuples (see module doc)."""
    rule = RULES.get(op.type)
    if rule is not None:
        found = rule(op, trace)
        if found or op.type in ("Exp", "Expm1", "Log", "Log1p", "Sqrt", "Rsqrt", "RealDiv", "Div",
                                "Reciprocal", "Inv"):
            return found
    if op.type in _IGNORED:
        return []
    return rule_origin(op, trace)
