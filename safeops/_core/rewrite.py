"""Rewriting a Keras model layer by layer, by Keras's own cloning (`keras.models.clone_model`).

One mechanism serves `so.wrap_model` and `so.quantization.quantize_model`:
every node of a Functional graph is replayed (layers, op nodes such as ``x +
y``, ``keras.ops.*`` and the ``NotEqual`` of an ``Embedding(mask_zero=True)``
mask, shared layers once, nested Functional/Sequential models recursively),
each layer either replaced by the caller's `replace` function or rebuilt from
its config; sublayers held as attributes of a user's subclassed layer are
offered to `replace` too, before the layer is built. Weights are then copied
from the original (``copy_weights``), trainability and dtype policies come with
the configs, masks with the replayed graph. Failures name the layer and why
(`RewriteError`, a `ValueError`), never an `AttributeError`.

This module is the one place that touches Keras internals for rewriting: the
Functional class (``keras.src.models.functional``), a layer's sublayer list
(``_layers``) and its tracker (``_tracker``), a Lambda layer's ``_output_shape``.
`tests/test_wrap.py` checks each of them, so a Keras release that moves them
fails there, loudly.
"""

import keras
from keras.src.models.functional import Functional

__all__ = ["RewriteError", "apply_swaps", "check_model", "copy_weights", "is_graph_model",
           "is_user_layer", "rebuild", "rewrite", "sublayers"]


class RewriteError(ValueError):
    """A model that cannot be rewritten; the message names the layer and the reason."""


def is_graph_model(obj):
    """Whether `obj` is a Sequential or Functional model (a graph that can be replayed)."""
    return isinstance(obj, (keras.Sequential, Functional))


def is_user_layer(layer):
    """Whether `layer` is a user's own class (not one of Keras's or safeops's)."""
    module = type(layer).__module__
    return not (module.startswith("keras.") or module.startswith("safeops.")
                or module.startswith("tensorflow."))


def check_model(model, op):
    """Raise unless `model` is a built Sequential or Functional Keras 3 model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{op}: argument 'model' must be a keras.Model (Sequential or "
                        f"Functional); got {type(model).__module__}.{type(model).__name__}")
    if not is_graph_model(model):
        raise TypeError(
            f"{op}: argument 'model' must be a Sequential or Functional model (built with "
            f"keras.Input); got a subclassed model ({type(model).__name__}) without a functional "
            "graph, which cannot be rewritten layer by layer. Build it as a Functional model "
            "around its layers, or use the safeops layers directly in its code")
    if not model.built or not model.inputs:
        raise RewriteError(f"{op}: the model '{model.name}' has no known input shape; build it "
                           "(start it with keras.Input(shape)) before rewriting it")


def rebuild(layer, op):
    """A fresh, unbuilt copy of `layer` from its config, or a `RewriteError` saying why not."""
    cls = type(layer).__name__
    if type(layer) is keras.layers.Lambda:
        # from_config would deserialize a Python lambda (refused in safe mode); the live
        # function is at hand, and a Lambda holds no weights
        return keras.layers.Lambda(layer.function, output_shape=layer._output_shape,
                                   mask=layer.mask, arguments=layer.arguments, name=layer.name,
                                   dtype=layer.dtype_policy, trainable=layer.trainable)
    try:
        config = layer.get_config()
    except Exception as err:  # NotImplementedError for layers with unknown __init__ args
        raise RewriteError(
            f"{op}: cannot rebuild layer '{layer.name}' ({cls}): its get_config() failed "
            f"({type(err).__name__}: {err}). Give the class a get_config() that returns its "
            "constructor arguments") from None
    try:
        return type(layer).from_config(config)
    except Exception as err:
        raise RewriteError(
            f"{op}: cannot rebuild layer '{layer.name}' ({cls}) from its config "
            f"({type(err).__name__}: {err}). Its get_config() must return every constructor "
            "argument (and from_config() accept them)") from None


def sublayers(layer):
    """``[(attribute, index or None, sublayer)]``: the layers held as attributes of `layer`."""
    out = []
    for attr, value in list(vars(layer).items()):
        if attr in ("_layers", "_tracker") or attr.startswith("_keras") or \
                attr in ("_inbound_nodes", "_outbound_nodes"):
            continue
        if isinstance(value, keras.layers.Layer):
            out.append((attr, None, value))
        elif isinstance(value, (list, tuple)):
            out += [(attr, i, v) for i, v in enumerate(value) if isinstance(v, keras.layers.Layer)]
    return out


def _replace_tracked(parent, attr, index, old, new):
    """Put `new` where `old` was: in the attribute and at the same place in ``parent._layers``
    (so the weights keep their order)."""
    layers = parent._layers
    position = next((i for i, v in enumerate(layers) if v is old), None)
    tracker = parent._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        if index is None:
            setattr(parent, attr, new)
        else:
            container = getattr(parent, attr)
            if isinstance(container, tuple):
                items = list(container)
                items[index] = new
                setattr(parent, attr, type(container)(items))
            else:
                container[index] = new
        tracker.untrack(old)
        if position is not None:
            layers[:] = [v for v in layers if v is not new]
            layers.insert(min(position, len(layers)), new)
            tracker.stored_ids["layers"].add(id(new))
    finally:
        if locked:
            tracker.lock()


def _swap_sublayers(layer, replace, path, op, chain=()):
    """Offer each sublayer of a user's (unbuilt) layer to `replace`; descend into user layers.

    Returns the swaps made: ``[(chain, new class)]`` with ``chain`` the list of
    ``[attribute, index or None]`` steps from `layer` to the sublayer."""
    swaps = []
    for attr, index, sub in sublayers(layer):
        sub_path = f"{path}/{sub.name}"
        step = chain + ([attr, index],)
        new = replace(sub, sub_path)
        if new is not None:
            if sub.built:
                raise RewriteError(
                    f"{op}: cannot swap sublayer '{sub_path}' ({type(sub).__name__}): the "
                    f"rebuilt '{layer.name}' builds it in its constructor, before its weights "
                    "could be copied")
            _replace_tracked(layer, attr, index, sub, new)
            swaps.append((list(step), type(new)))
        elif is_user_layer(sub):
            swaps += _swap_sublayers(sub, replace, sub_path, op, step)
    return swaps


def apply_swaps(layer, swaps, op):
    """Replay recorded swaps on a freshly built-from-config (unbuilt) `layer`.

    Args:
      layer: the user layer.
      swaps: ``[(chain, class)]`` as returned by the rewrite: each sublayer at
        ``chain`` is replaced by ``class.from_config(sublayer.get_config())``.
      op: the public name used in error messages.
    """
    for chain, cls in swaps:
        parent = layer
        for attr, index in chain[:-1]:
            parent = getattr(parent, attr)
            if index is not None:
                parent = parent[index]
        attr, index = chain[-1]
        sub = getattr(parent, attr, None)
        if index is not None and sub is not None:
            sub = sub[index]
        if not isinstance(sub, keras.layers.Layer):
            raise RewriteError(f"{op}: layer '{layer.name}' ({type(layer).__name__}) has no "
                               f"sublayer at {chain!r} to swap")
        _replace_tracked(parent, attr, index, sub, cls.from_config(sub.get_config()))


def copy_weights(old, new, op):
    """Assign `old`'s weights to `new` (same order, same shapes), or a `RewriteError` saying why."""
    source, target = old.weights, new.weights
    if len(source) != len(target) or any(
            tuple(a.shape) != tuple(b.shape) for a, b in zip(source, target)):
        raise RewriteError(
            f"{op}: cannot carry the weights of layer '{old.name}' ({type(old).__name__}) over "
            f"to its rebuilt copy: {[tuple(v.shape) for v in source]} against "
            f"{[tuple(v.shape) for v in target]}. Its get_config() must return every "
            "constructor argument that shapes its weights")
    for a, b in zip(source, target):
        b.assign(keras.ops.cast(a.value, b.dtype))


def rewrite(model, replace, *, op, call_function=None, swap_sublayers=True, on_swapped=None):
    """Clone `model` with each layer replaced by ``replace(layer, path)`` or rebuilt from config.

    Args:
      model: a built Sequential or Functional model (see `check_model`).
      replace: ``(layer, path) -> new layer or None`` (None: rebuild from the
        config). Called once per layer (shared layers once), for the layers
        of nested models (path ``"outer/inner"``) and, before the layer is
        built, for the sublayers held as attributes of a user's subclassed
        layer (path ``"layer/sublayer"``).
      op: the public name used in error messages.
      call_function: optional ``(layer, *args, **kwargs) -> outputs`` used to
        call each new layer (Functional graphs; a Sequential model is then
        rebuilt as a Functional one).
      swap_sublayers: offer sublayers of user layers to `replace`.
      on_swapped: ``(layer, swaps) -> layer`` called for a user layer whose
        sublayers were swapped (e.g. to wrap it in a layer that records the
        swaps in its config, so that they survive saving).

    Returns:
      ``(new_model, pairs)``: the clone (no weights copied yet) and
      ``[(old layer, new layer, path)]`` for every layer that was replaced or
      rebuilt (op nodes and nested models are not listed; their layers are).

    Raises:
      RewriteError: a layer cannot be rebuilt or called (the message names it).
    """
    memo, pairs, prefix = {}, [], []

    def call(layer, *args, **kwargs):
        try:
            if call_function is not None:
                return call_function(layer, *args, **kwargs)
            return layer(*args, **kwargs)
        except RewriteError:
            raise
        except Exception as err:
            raise RewriteError(
                f"{op}: the rebuilt layer '{'/'.join(prefix + [layer.name])}' "
                f"({type(layer).__name__}) failed when called on the model's tensors "
                f"({type(err).__name__}: {err})") from None

    def clone_fn(layer):
        if id(layer) in memo:
            return memo[id(layer)]
        if not isinstance(layer, keras.layers.Layer):
            new = layer  # an op node (x + y, keras.ops.*): stateless, replayed as it is
        elif is_graph_model(layer):
            prefix.append(layer.name)
            try:
                new = clone_graph(layer)
            finally:
                prefix.pop()
            new.trainable = layer.trainable
        else:
            path = "/".join(prefix + [layer.name])
            new = replace(layer, path)
            if new is None:
                new = rebuild(layer, op)
                if swap_sublayers and is_user_layer(layer):
                    swaps = _swap_sublayers(new, replace, path, op)
                    if swaps and on_swapped is not None:
                        new = on_swapped(new, swaps)
            pairs.append((layer, new, path))
        memo[id(layer)] = new
        return new

    def clone_graph(m):
        if isinstance(m, keras.Sequential):
            if call_function is None:
                new = keras.models.clone_model(m, clone_function=clone_fn)
                if not new.built:
                    new.build(m.inputs[0].shape)
                return new
            spec = m.inputs[0]
            x = inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=spec.name)
            for layer in m.layers:
                x = call(clone_fn(layer), x)
            return keras.Model(inputs, x, name=m.name)
        return keras.models.clone_model(m, clone_function=clone_fn, call_function=call)

    new_model = clone_graph(model)
    new_model.trainable = model.trainable
    return new_model, pairs
