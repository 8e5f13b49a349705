"""Tracing a target to a graph, finding the user's source line of an op, reading intermediate values.

The doctor traces the user's function (or Keras model) inside a `tf.function`
wrapper that, at the end of tracing, returns every floating and boolean tensor
of the graph as extra outputs. One call of that concrete function on the example
inputs therefore yields all intermediate values, which the hazard rules read.
"""

import inspect
import linecache
import os
import sysconfig

import numpy as np
import tensorflow as tf

__all__ = []

_DOCTOR_DIR = os.path.dirname(os.path.abspath(__file__))
_SAFEOPS_DIR = os.path.dirname(_DOCTOR_DIR)
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"])
_FETCH_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.bool)
_PASS_THROUGH = ("Identity", "IdentityN", "StopGradient", "Snapshot", "EnsureShape")


def _is_library(path):
    path = os.path.abspath(path) if path and not path.startswith("<") else (path or "")
    if path.startswith("<"):
        return True
    return ("site-packages" in path or "dist-packages" in path or path.startswith(_STDLIB_DIR)
            or path.startswith(_SAFEOPS_DIR + os.sep))


def _in_safeops_op(path):
    path = os.path.abspath(path) if path and not path.startswith("<") else ""
    return (path.startswith(_SAFEOPS_DIR + os.sep) and not path.startswith(_DOCTOR_DIR + os.sep)
            and os.path.basename(path) != "testing.py")


class OpSource:
    """Where an op came from: the user's file/line (or None) and the safeops op that made it."""

    def __init__(self, file=None, line=None, code="", safeops_fn=None):
        self.file, self.line, self.code, self.safeops_fn = file, line, code, safeops_fn


def op_source(op):
    """The innermost user frame of `op`'s creation traceback, below the doctor's own frames."""
    try:
        frames = [(f.filename, f.lineno, f.name) for f in op.traceback]
    except Exception:  # pragma: no cover - ops without a Python traceback
        return OpSource()
    start = 0
    for i, (path, _, _) in enumerate(frames):
        if path and os.path.abspath(path).startswith(_DOCTOR_DIR + os.sep):
            start = i + 1
    inner = frames[start:]
    safeops_fn = next((name for path, _, name in inner if _in_safeops_op(path)), None)
    for path, line, _ in reversed(inner):
        if not _is_library(path):
            return OpSource(path, line, linecache.getline(path, line).strip(), safeops_fn)
    return OpSource(safeops_fn=safeops_fn)


def producer(tensor):
    """The op that computes `tensor`, looking through Identity-like ops."""
    op = tensor.op
    while op.type in _PASS_THROUGH and op.inputs:
        index = tensor.value_index if op.type == "IdentityN" else 0
        tensor = op.inputs[min(index, len(op.inputs) - 1)]
        op = tensor.op
    return op


def consumers(op):
    """Ops that read any output of `op`, looking through Identity-like ops."""
    out, stack = [], [c for t in op.outputs for c in t.consumers()]
    while stack:
        c = stack.pop()
        if c.type in _PASS_THROUGH:
            stack.extend(cc for t in c.outputs for cc in t.consumers())
        else:
            out.append(c)
    return out


def describe_signature(target):
    """A readable description of what `target` expects (Keras input shapes or Python signature)."""
    inputs = getattr(target, "inputs", None)
    if inputs:
        try:
            return "inputs " + ", ".join(f"{tuple(t.shape)} {tf.as_dtype(t.dtype).name}" for t in inputs)
        except Exception:
            pass
    fn = getattr(target, "python_function", target)
    try:
        return f"{getattr(fn, '__name__', type(fn).__name__)}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return repr(target)


def as_callable(target, op):
    """(python callable, label) for a function, a `tf.function` or a Keras model."""
    try:
        import keras
        is_model = isinstance(target, keras.Model)
    except ImportError:  # pragma: no cover
        is_model = False
    if is_model:
        return (lambda *args: target(args[0] if len(args) == 1 else list(args), training=False),
                f"model {target.name!r}")
    if isinstance(target, (tf.Module,)) and not callable(target):
        raise TypeError(f"{op}: cannot trace {type(target).__name__}: it is not callable")
    python_fn = getattr(target, "python_function", None)
    if python_fn is not None:  # a tf.function: trace its Python body so lines point at user code
        return python_fn, getattr(python_fn, "__name__", "tf.function")
    if isinstance(target, tf.types.experimental.ConcreteFunction):
        raise TypeError(
            f"{op}: cannot trace a ConcreteFunction (its ops have no Python source); pass the "
            "tf.function or the Python function it was made from")
    if not callable(target):
        raise TypeError(
            f"{op}: argument 'target' must be a Python function, a tf.function or a Keras model; "
            f"got {type(target).__name__}, which cannot be traced")
    return target, getattr(target, "__name__", type(target).__name__)


def to_tensors(inputs):
    return tf.nest.map_structure(
        lambda x: x if isinstance(x, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(x), inputs)


class Trace:
    """A traced target: its graph, ops in creation order, and the value of every fetched tensor."""

    def __init__(self, graph, ops, values, outputs):
        self.graph, self.ops, self.values, self.outputs = graph, ops, values, outputs

    def value(self, tensor):
        """The NumPy value of `tensor` on the example inputs (constants included), or None."""
        if tensor.name in self.values:
            return self.values[tensor.name]
        static = tf.get_static_value(tensor)
        return None if static is None else to_numpy(static)


def to_numpy(value):
    """`value` as a NumPy array; 0-d bfloat16 tensors included.

    ``np.asarray`` of a 0-d bfloat16 EagerTensor raises ("__array__ method not
    producing an array"); ``.numpy()`` gives an ml_dtypes scalar that
    ``np.asarray`` accepts.
    """
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def trace_and_evaluate(fn, inputs, target, op, extra=None):
    """Trace `fn(*inputs)` in a tf.function and fetch every float/bool intermediate value.

    `extra(graph, args, out)` may add ops to the graph after the forward pass (e.g.
    gradients); whatever it returns is returned as `Trace.outputs["extra"]`.
    """
    holder = {}

    def wrapper(*args):
        graph = tf.compat.v1.get_default_graph()
        out = fn(*args)
        more = extra(graph, args, out) if extra is not None else None
        ops = list(graph.get_operations())
        fetch = []
        for o in ops:
            if o.type in ("Const", "NoOp"):
                continue
            for t in o.outputs:
                if t.dtype in _FETCH_DTYPES:
                    fetch.append(t)
        holder.update(graph=graph, ops=ops, names=[t.name for t in fetch], graph_out=out,
                      graph_extra=more)
        return {"out": out, "extra": more, "fetch": fetch}

    inputs = to_tensors(list(inputs))
    for autograph in (False, True):
        try:
            result = tf.function(wrapper, autograph=autograph)(*inputs)
            break
        except (tf.errors.OperatorNotAllowedInGraphError,) as err:
            if autograph:
                raise _trace_error(op, target, inputs, err) from err
        except (ValueError, TypeError) as err:
            raise _trace_error(op, target, inputs, err, type(err)) from err
        except tf.errors.OpError as err:
            raise _trace_error(op, target, inputs, err, ValueError) from err
        except (AttributeError, NotImplementedError) as err:
            raise _untraceable_error(op, target, err) from err
    values = {name: to_numpy(v) for name, v in zip(holder["names"], result["fetch"])}
    trace = Trace(holder["graph"], holder["ops"], values,
                  {"out": result["out"], "extra": result["extra"]})
    trace.graph_out, trace.graph_extra = holder["graph_out"], holder["graph_extra"]
    return trace


def _untraceable_error(op, target, err):
    """TypeError for a target whose Python body cannot run on symbolic (graph) tensors."""
    text = str(err)
    if isinstance(err, AttributeError) and "numpy" in text:
        why = ("it calls .numpy() on a tensor, which only eager tensors have; inside a graph "
               "use the tensor itself (or tf.py_function for code that needs NumPy values)")
    elif isinstance(err, NotImplementedError) and "numpy" in text.lower():
        why = ("it passes a tensor to a NumPy function, which needs concrete values; use the "
               "TensorFlow op instead (tf.math.sin for np.sin, ...)")
    else:
        why = "its Python code does not run on symbolic tensors"
    name = getattr(target, "__name__", type(target).__name__)
    return TypeError(f"{op}: argument 'target' ({name}) cannot be traced to a graph: {why}. "
                     f"Tracing raised {type(err).__name__}: {text}")


def _trace_error(op, target, inputs, err, kind=TypeError):
    shapes = ", ".join(
        f"{tuple(t.shape)} {t.dtype.name}" for t in tf.nest.flatten(inputs) if hasattr(t, "shape"))
    label = f"model {target.name!r}" if hasattr(target, "inputs") and hasattr(target, "name") else ""
    msg = (f"{op}: tracing {label} (expects {describe_signature(target)}) on example inputs [{shapes}] failed: "
           f"{type(err).__name__}: {err}")
    try:
        return kind(msg)
    except Exception:  # pragma: no cover
        return TypeError(msg)
