"""`explain_gradients`: why a gradient is None, zero or non-finite, in words."""

import dataclasses
import inspect
import linecache
import re
from typing import Optional

import numpy as np
import tensorflow as tf

from safeops._core.registry import new
from safeops.doctor import _graph
from safeops.doctor._report import format_table

__all__ = ["GradientIssue", "explain_gradients", "format_gradient_issues"]

_COMPARISONS = ("Less", "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual",
                "ApproximateEqual", "IsNan", "IsInf", "IsFinite")
_BLOCKERS = {
    "StopGradient": "stop_gradient", "PreventGradient": "prevent_gradient",
    "Round": "round", "Rint": "rint", "Floor": "floor", "Ceil": "ceil",
    "ArgMax": "argmax", "ArgMin": "argmin", "Shape": "shape", "Size": "size", "Rank": "rank",
    "ZerosLike": "zeros_like", "OnesLike": "ones_like", "FloorDiv": "floordiv",
    "FloorMod": "floormod",
}
_GRAD_SCOPE = re.compile(r"^gradients(?:_\d+)?/(.*)_grad/")


@dataclasses.dataclass(frozen=True)
class GradientIssue:
    """Why one gradient is None, zero or non-finite.

    Args:
      variable: the variable's (or input's) name.
      status: "none", "zero" or "non-finite".
      reason: short cause: "not used", "non-differentiable op", "not floating",
        "zero derivative", "forward non-finite", "backward non-finite", "unknown".
      message: the explanation in words.
      op_type: the type of the op responsible (None when no op is).
      op_name: its name in the traced graph (None when no op is).
      file: the user's file where the op (or the use outside the tape) is.
      line: the line in `file`.
      code: the text of that line.
    """

    variable: str
    status: str
    reason: str
    message: str
    op_type: Optional[str] = None
    op_name: Optional[str] = None
    file: Optional[str] = None
    line: Optional[int] = None
    code: str = ""


def format_gradient_issues(issues):
    """The issues as a text table (what `explain_gradients` prints).

    Args:
      issues: a list of `GradientIssue` (as `explain_gradients` returns).

    Returns:
      A string.
    """
    if not issues:
        return "safeops.doctor.explain_gradients: every gradient is finite and non-zero"
    rows = [(i.variable, i.status, i.reason, f"{i.op_type} {i.op_name}" if i.op_type else "-",
             f"{i.file.split('/')[-1]}:{i.line}" if i.file else "-") for i in issues]
    table = format_table(("variable", "gradient", "cause", "op", "source"), rows)
    details = "\n".join(f"  {i.variable}: {i.message}" + (f"\n      {i.code}" if i.code else "")
                        for i in issues)
    return f"safeops.doctor.explain_gradients: {len(issues)} problem(s)\n{table}\n{details}"


def _name(v, k):
    name = getattr(v, "path", None) or getattr(v, "name", None)
    try:
        return str(name) if name else f"input {k}"
    except AttributeError:  # eager tensors have no name
        return f"input {k}"


def _target(out):
    parts = [tf.reduce_sum(tf.cast(o, tf.float64)) for o in tf.nest.flatten(out)
             if hasattr(o, "dtype") and tf.as_dtype(o.dtype).is_floating]
    return tf.add_n(parts) if parts else None


def _handle(v):
    for obj in (v, getattr(v, "value", None)):
        h = getattr(obj, "handle", None) if obj is not None else None
        if h is not None:
            return h
    return None


def _sources(trace, v, inputs):
    """Graph tensors through which `v` enters the traced graph (empty if it does not)."""
    graph = trace.graph
    h = _handle(v)
    caps = list(getattr(graph, "captures", []))
    found = []
    for ext, internal in caps:
        if (h is not None and ext is h) or ext is v:
            found.append(internal)
    if not found:  # an input tensor passed positionally: its placeholder
        placeholders = [o.outputs[0] for o in trace.ops if o.type == "Placeholder"
                        and o.outputs[0].dtype != tf.resource]
        for k, x in enumerate(tf.nest.flatten(inputs)):
            if x is v and k < len(placeholders):
                found.append(placeholders[k])
    return found


def _reach(start_tensors, differentiable):
    """Ops reachable from `start_tensors`; if `differentiable`, only along floating edges and
    through ops with a gradient. Returns (set of op names reached, dict blocker-op -> first)."""
    seen, blockers, stack = set(), {}, [t for t in start_tensors]
    starts = {id(t) for t in start_tensors}
    while stack:
        t = stack.pop()
        if differentiable and not t.dtype.is_floating and id(t) not in starts:
            continue
        for c in t.consumers():
            if c.name in seen:
                continue
            if differentiable and c.type in _BLOCKERS:
                blockers.setdefault(c.name, c)
                continue
            if differentiable and c.type in _COMPARISONS:
                blockers.setdefault(c.name, c)
                continue
            if differentiable and c.type == "Cast" and not c.outputs[0].dtype.is_floating:
                blockers.setdefault(c.name, c)
                continue
            seen.add(c.name)
            stack.extend(c.outputs)
    return seen, blockers


def _describe_blocker(op):
    if op.type == "Cast":
        return f"cast to {op.outputs[0].dtype.name} (integer/bool values have no gradient)"
    if op.type in _COMPARISONS:
        return f"comparison {op.type} (boolean output has no gradient)"
    return f"{_BLOCKERS.get(op.type, op.type)} (no gradient is defined)"


def _outside_uses(v, fn, frame):
    """Lines of the caller's code (outside `fn`) that use the variable's Python name."""
    if frame is None:
        return []
    names = [n for n, val in list(frame.f_locals.items()) + list(frame.f_globals.items()) if val is v]
    if not names:
        return []
    try:
        path = inspect.getsourcefile(frame.f_code)
        if frame.f_code.co_name == "<module>":  # a script: search the whole file
            lines, start = linecache.getlines(path), 1
        else:
            lines, start = inspect.getsourcelines(frame.f_code)
    except (OSError, TypeError):
        return []
    start = max(start, 1)
    skip = set()
    try:
        fl, fs = inspect.getsourcelines(fn)
        if inspect.getsourcefile(fn) == path:
            skip = set(range(fs, fs + len(fl)))
    except (OSError, TypeError):
        pass
    code = getattr(getattr(fn, "python_function", fn), "__code__", None)
    fn_names = set(code.co_freevars + code.co_names) if code is not None else set()
    uses = []
    for i, text in enumerate(lines):
        lineno = start + i
        if lineno in skip or lineno >= frame.f_lineno or "explain_gradients" in text:
            continue
        for n in names:
            if re.search(rf"\b{re.escape(n)}\b", text) and not re.match(rf"\s*{re.escape(n)}\s*=", text):
                target = re.match(r"\s*(\w+)\s*=[^=]", text)
                feeds_fn = bool(target and target.group(1) in fn_names)
                uses.append((not feeds_fn, lineno, path, text.strip()))
    # Prefer a line assigning a name that fn reads (the value fn captured), then the first use.
    return [(p, ln, t) for _, ln, p, t in sorted(uses)]


def _explain_none(v, name, trace, inputs, fn, frame):
    dtype = tf.as_dtype(v.dtype)
    if not dtype.is_floating:
        return GradientIssue(name, "none", "not floating",
                             f"dtype {dtype.name} is not floating: TF computes no gradient for "
                             "integer or bool values; make it a float variable")
    sources = _sources(trace, v, inputs)
    if not sources:
        uses = _outside_uses(v, fn, frame)
        if uses:
            path, line, code = uses[0]
            return GradientIssue(
                name, "none", "not used",
                f"not used inside the recorded computation: it is used at line {line} outside it, "
                "and only the result (a constant to the tape) enters the function; compute that "
                "inside the function / tape", file=path, line=line, code=code)
        return GradientIssue(name, "none", "not used",
                             "not used inside the recorded computation (the function never reads "
                             "it; a value computed from it outside the tape is a constant)")
    outputs = [t.op.name for t in tf.nest.flatten(trace.graph_out) if hasattr(t, "op")]
    reached, _ = _reach(sources, differentiable=False)
    if not any(o in reached for o in outputs):
        return GradientIssue(name, "none", "not used",
                             "read inside the function, but its value never reaches the output")
    dreached, blockers = _reach(sources, differentiable=True)
    for op in sorted(blockers.values(), key=lambda o: trace.ops.index(o) if o in trace.ops else 0):
        after, _ = _reach(op.outputs, differentiable=False)
        if any(o in after or o == op.name for o in outputs):
            src = _graph.op_source(op)
            return GradientIssue(name, "none", "non-differentiable op",
                                 f"every path to the output crosses a non-differentiable op: "
                                 f"{_describe_blocker(op)}",
                                 op.type, op.name, src.file, src.line, src.code)
    return GradientIssue(name, "none", "unknown",
                         "a gradient function on the path returned None (custom gradient?)")


_ZERO_OPS = ("Relu", "Relu6", "Sign", "Select", "SelectV2", "Maximum", "Minimum", "ClipByValue")


def _explain_zero(v, name, trace, inputs):
    sources = _sources(trace, v, inputs)
    dreached, _ = _reach(sources, differentiable=True)
    for op in trace.ops:
        if op.name not in dreached or op.type not in _ZERO_OPS:
            continue
        vals = [trace.value(t) for t in op.inputs]
        why = None
        if op.type in ("Relu", "Relu6") and vals[0] is not None and np.all(np.asarray(vals[0], np.float64) <= 0):
            why = f"every input of {op.type} is <= 0 (dead ReLU): its derivative is 0"
        elif op.type == "Sign":
            why = "Sign has derivative 0 everywhere"
        elif op.type in ("Select", "SelectV2") and vals[0] is not None:
            c = np.asarray(vals[0], bool)
            on_t = op.inputs[1].op.name in dreached or op.inputs[1].op in [s.op for s in sources]
            never = not c.any() if on_t else c.all()
            if never:
                why = f"the where ({op.type}) never selects the branch that depends on it"
        if why:
            src = _graph.op_source(op)
            return GradientIssue(name, "zero", "zero derivative", why, op.type, op.name,
                                 src.file, src.line, src.code)
    return GradientIssue(name, "zero", "zero derivative",
                         "the gradient is exactly 0 at these inputs (saturated or flat path); no "
                         "single zero-derivative op was identified")


def _first_nonfinite(ops, trace):
    for op in ops:
        outs = [t for t in op.outputs if t.dtype.is_floating]
        if not outs or op.type in ("Const", "Placeholder", "ReadVariableOp"):
            continue
        ins = [trace.value(t) for t in op.inputs if t.dtype.is_floating]
        if any(x is not None and not np.all(np.isfinite(np.asarray(x, np.float64))) for x in ins):
            continue
        if any(trace.value(t) is not None and not np.all(np.isfinite(np.asarray(trace.value(t), np.float64)))
               for t in outs):
            return op
    return None


def _explain_nonfinite(v, name, trace, n_forward):
    fwd = _first_nonfinite(trace.ops[:n_forward], trace)
    if fwd is not None:
        src = _graph.op_source(fwd)
        outs = [trace.value(t) for t in tf.nest.flatten(trace.graph_out) if hasattr(t, "op")]
        hidden = all(o is None or np.all(np.isfinite(np.asarray(o, np.float64))) for o in outs)
        note = (": the output is finite (a where/select hides the inf/NaN), but the gradient "
                "through the unselected branch is 0 * inf = NaN; use so.safe_where / a safe op"
                if hidden else "")
        return GradientIssue(name, "non-finite", "forward non-finite",
                             f"the forward pass already produces inf/NaN at {fwd.type}{note}",
                             fwd.type, fwd.name, src.file, src.line, src.code)
    bwd = _first_nonfinite(trace.ops[n_forward:], trace)
    if bwd is not None:
        m = _GRAD_SCOPE.match(bwd.name)
        fop = None
        if m:
            try:
                fop = trace.graph.get_operation_by_name(m.group(1))
            except (KeyError, ValueError):
                fop = None
        target = fop if fop is not None else bwd
        src = _graph.op_source(target)
        x = [trace.value(t) for t in target.inputs if t.dtype.is_floating]
        rng = ""
        if x and x[0] is not None and np.size(x[0]):
            x0 = np.asarray(x[0], np.float64)
            rng = f" (its input spans [{np.nanmin(x0):.3g}, {np.nanmax(x0):.3g}])"
        what = (f"the backward pass first produces inf/NaN in the gradient of {target.type} "
                f"'{target.name}'{rng} (backward op {bwd.type})")
        return GradientIssue(name, "non-finite", "backward non-finite", what, target.type,
                             target.name, src.file, src.line, src.code)
    return GradientIssue(name, "non-finite", "unknown",
                         "the gradient is non-finite but no single op producing it was found")


@new("explains every None, zero or non-finite gradient: the op and the source line that caused it")
def explain_gradients(fn, variables, *inputs, verbose=True):
    """Compute d(sum of fn's outputs)/d(variables) and explain every None, zero or non-finite one.

    Replaces reading `tape.gradient(...)` results by hand. Method: the gradient
    is computed with a `tf.GradientTape`, as the user would. For each gradient
    that is None, all zero or has inf/NaN, `fn` is traced to a graph and its
    value and `tf.gradients` backward pass are evaluated on `inputs`:

    * None: the dtype is not floating; or the variable is not used inside the
      recorded computation (the line of the caller's code that uses it outside
      `fn` is given, found by its Python name); or every path to the output
      crosses a non-differentiable op (cast to integer/bool, round, floor, ceil,
      argmax/argmin, a comparison, `stop_gradient`), which is named with its line.
    * zero: the first zero-derivative op on the path (dead ReLU, sign, a `where`
      that never selects the variable's branch).
    * non-finite: the first forward op that turns finite values into inf/NaN,
      else the forward op whose gradient function first produced inf/NaN in the
      backward pass (ops in creation order, which is topological).

    Error bound: not applicable (a diagnostic). Gradient: this is the gradient
    explainer; dtypes: any (integer variables are reported as not floating).

    Args:
      fn: a Python function, `tf.function` or Keras model; called as `fn(*inputs)`.
      variables: a variable, tensor, or list of them (e.g. `model.trainable_variables`);
        tensors are watched explicitly.
      *inputs: the inputs to call `fn` with.
      verbose: print the explanations.

    Returns:
      A list of `GradientIssue`, one per problematic gradient (empty if all are fine).

    Raises:
      TypeError: `fn` is not callable, or an entry of `variables` is not a variable or tensor.
      ValueError: tracing `fn` on `inputs` failed (message has the function's own error).

    Example:
      >>> w = tf.Variable(2.0)
      >>> so.doctor.explain_gradients(lambda x: tf.round(w * x), [w], 1.5)[0].reason
      'non-differentiable op'
    """
    op = "safeops.doctor.explain_gradients"
    frame = inspect.currentframe().f_back
    single = not isinstance(variables, (list, tuple))
    variables = [variables] if single else list(variables)
    for k, v in enumerate(variables):
        if not (isinstance(v, (tf.Variable, tf.Tensor)) or _handle(v) is not None):
            raise TypeError(f"{op}: argument 'variables' must hold variables or tensors; entry {k} "
                            f"is {type(v).__name__}")
    call, _ = _graph.as_callable(fn, op)
    inputs = list(inputs)
    with tf.GradientTape() as tape:
        for v in variables:
            if isinstance(v, tf.Tensor) and tf.as_dtype(v.dtype).is_floating:
                tape.watch(v)
        target = _target(call(*inputs))
    grads = [None] * len(variables) if target is None else tape.gradient(target, variables)
    status = []
    for v, g in zip(variables, grads):
        if g is None:
            status.append("none")
            continue
        g = _graph.to_numpy(tf.convert_to_tensor(g)).astype(np.float64)  # 0-d bfloat16 too
        status.append("non-finite" if not np.all(np.isfinite(g)) else
                      "zero" if not np.any(g) else None)
    issues = []
    if any(status):
        count = {}

        def backward(graph, args, out):
            count["n"] = len(graph.get_operations())
            t = _target(out)
            xs = [v for v, s in zip(variables, status) if s in ("non-finite",)]
            xs = [getattr(v, "value", v) if not isinstance(v, tf.Variable) else v for v in xs]
            if t is None or not xs:
                return None
            return [g for g in tf.gradients(t, xs) if g is not None]

        trace = _graph.trace_and_evaluate(call, [x for x in inputs], fn, op, extra=backward)
        for k, (v, s) in enumerate(zip(variables, status)):
            name = _name(v, k)
            if s == "none":
                issues.append(_explain_none(v, name, trace, inputs, fn, frame))
            elif s == "zero":
                issues.append(_explain_zero(v, name, trace, inputs))
            elif s == "non-finite":
                issues.append(_explain_nonfinite(v, name, trace, count["n"]))
    if verbose:
        print(format_gradient_issues(issues))
    return issues
