"""The one custom-gradient template of safeops' ops.

An op is written as two plain functions over tensors,

    forward(*inputs, *consts) -> out                  (or (out, saved) with saves=True)
    backward(g, *inputs, *consts[, *saved]) -> one gradient per input

and wrapped once, ``op = custom_gradient("softplus", forward, backward)``;
``op(*inputs, *consts)`` then returns `out` with `backward` as its gradient.
`inputs` are differentiated, `consts` (floors, bounds, limits) are not.
Gradients of inputs that were broadcast are summed back to the input's
shape (`reduce_to`), so `backward` works on the broadcast shape. `out` may be
a list of tensors; `g` is then the list of their upstream gradients.

Execution:

* Eagerly with no `tf.GradientTape` or `ForwardAccumulator` active (inference,
  metrics) only `forward` runs: no tape bookkeeping at all.
* Eagerly under a tape, the op is recorded on it directly (what
  `tf.custom_gradient` does, without its variable watcher, signature
  inspection and structure flattening on every call).
* In a graph, `tf.custom_gradient`; with ``fuse=True`` the forward and the
  backward each run XLA-compiled (`safeops._core.elementwise.fused`).

The eager recording reaches one TensorFlow internal, `tensorflow.python.eager.record`
(`_record`); where it is missing the template falls back to `tf.custom_gradient`
everywhere (slower eager calls, same results), and `tests/test_core_frontend.py`
fails loudly.
"""

import tensorflow as tf

from safeops._core.elementwise import MAX_SELECT_RANK, reduce_to
from safeops._core.elementwise import fused as _fused

try:  # the tape API under tf.custom_gradient (TF 2.x)
    from tensorflow.python.eager import record as _record

    _tape_active = _record.could_possibly_record
    _stop_recording = _record.stop_recording
    _record_operation = _record.record_operation
except (ImportError, AttributeError):  # pragma: no cover - depends on the TF release
    _record = None

__all__ = ["custom_gradient", "eager_recording_available", "register_gradient"]


def eager_recording_available():
    """Whether the eager fast path (direct tape recording) is in use."""
    return _record is not None


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _flatten(args):
    """(shape, 1-d args) when some argument has rank > 8 or unknown rank, else None.

    TF's CPU kernels of `tf.where` and `tf.clip_by_value` stop at rank 8;
    element-wise bodies run on the broadcast inputs as vectors instead (a
    reshape copies nothing). Scalars stay scalars.
    """
    if all(a.shape.rank is not None and a.shape.rank <= MAX_SELECT_RANK for a in args):
        return None
    big = [a for a in args if a.shape.rank != 0]
    shape = tf.shape(big[0])
    for a in big[1:]:
        shape = tf.broadcast_dynamic_shape(shape, tf.shape(a))
    flat = [a if a.shape.rank == 0 else tf.reshape(tf.broadcast_to(a, shape), [-1])
            for a in args]
    return shape, flat


def custom_gradient(name, forward, backward, n_inputs=None, fuse=False, saves=False,
                    elementwise=True, variables=False):
    """Wrap `forward`/`backward` (module doc) into one differentiable op.

    Args:
      name: the op name recorded on tapes.
      forward: ``forward(*inputs, *consts)``; returns the output (a tensor or a
        list of tensors), or ``(out, saved)`` with `saves` (saved: a tuple of
        tensors handed to `backward`, e.g. an exponential it can reuse).
      backward: ``backward(g, *inputs, *consts, *saved)``; returns one gradient
        per input (a tensor, None, or a tuple of them).
      n_inputs: how many leading arguments are differentiated (default all).
      fuse: compile `forward` and `backward` with XLA inside graphs (their
        arguments and results must be tensors).
      saves: whether `forward` returns ``(out, saved)``.
      elementwise: the op is element-wise (with broadcasting): inputs of rank
        above 8 or of unknown rank run as vectors (`_flatten`). `backward`
        None: no custom gradient (TF differentiates `forward`).
      variables: `forward` may read variables it is not given (user callables);
        `backward` is then called with ``variables=`` (the variables read, or
        None) and returns ``(input_gradients, variable_gradients)``. Always
        recorded through `tf.custom_gradient`, whose variable watcher finds them.

    Returns:
      ``op(*args)``.
    """
    watch = variables
    fwd = _fused(forward) if fuse else forward
    bwd = _fused(backward) if fuse and backward is not None else backward

    def run_forward(args):
        res = fwd(*args)
        if saves:
            out, saved = res
            return out, tuple(saved)
        return res, ()

    def make_grad(args, n, saved):
        inputs = args[:n]

        def grad(*gs, variables=None):
            g = gs[0] if len(gs) == 1 else list(gs)
            if watch:
                grads, var_grads = bwd(g, *args, *saved, variables=variables)
                return _as_list(grads), var_grads
            grads = _as_list(bwd(g, *args, *saved))
            if not elementwise:
                return grads
            return [reduce_to(gi, x) for gi, x in zip(grads, inputs)]

        return grad

    def op(*args):
        if elementwise:
            flat = _flatten(args)
            if flat is not None:
                shape, flat_args = flat
                out = differentiable(*flat_args)
                if isinstance(out, (list, tuple)):
                    return [tf.reshape(o, shape) for o in out]
                return tf.reshape(out, shape)
        return differentiable(*args)

    def differentiable(*args):
        if backward is None:
            return run_forward(args)[0]
        n = len(args) if n_inputs is None else n_inputs
        if tf.executing_eagerly() and _record is not None and not watch:
            if not _tape_active():
                return run_forward(args)[0]
            with _stop_recording():
                out, saved = run_forward(args)
            outs = _as_list(out)
            inputs = list(args[:n])
            # A tape maps each tensor to the op that made it: an output that is
            # an input object needs its own tensor.
            outs = [tf.identity(o) if any(o is x for x in inputs) else o for o in outs]
            grad = make_grad(args, n, saved)
            _record_operation(name, outs, inputs, lambda *gs: grad(*gs))
            return outs if isinstance(out, (list, tuple)) else outs[0]

        consts = args[n:]

        @tf.custom_gradient
        def inner(*inputs):
            full = tuple(inputs) + tuple(consts)
            out, saved = run_forward(full)
            grad = make_grad(full, n, saved)

            if watch:
                def grad_fn(*gs, variables=None):
                    res, var_grads = grad(*gs, variables=variables)
                    res = res if n > 1 else res[0]
                    return (res, var_grads) if variables else res
            else:
                def grad_fn(*gs):
                    res = grad(*gs)
                    return res if n > 1 else res[0]

            return out, grad_fn

        return inner(*args[:n])

    op.__name__ = name
    return op


def register_gradient(op_type):
    """`tf.RegisterGradient` as a decorator, tolerating a second registration of the same op
    type (a module imported again, e.g. a reload)."""
    def register(fn):
        try:
            tf.RegisterGradient(op_type)(fn)
        except KeyError:
            pass
        return fn
    return register

