"""`SwappedSublayers`: a user's layer whose sublayers `wrap_model` swapped, in a savable form."""

import keras

from safeops._core import rewrite as _rewrite
from safeops._core.registry import new

__all__ = ["SwappedSublayers"]

_OP = "safeops.layers.SwappedSublayers"


@new("holds a user's layer whose sublayers wrap_model replaced by drop-ins, and records the "
     "replacements in its config so that they survive .keras saving")
@keras.saving.register_keras_serializable(package="safeops")
class SwappedSublayers(keras.layers.Wrapper):
    """A user's layer whose sublayers were replaced by safeops drop-ins (made by `wrap_model`).

    A subclassed layer rebuilds its sublayers in ``__init__`` from its own
    config, so a swap made on the instance would be lost on reload. This
    wrapper keeps the layer (same name, weights in the same order) and lists
    the swaps in its config: ``{"path": [[attribute, index or None], ...],
    "class_name": registered name}``; `from_config` rebuilds the layer and
    replays them before it is built.

    Numerics, gradient and dtypes: those of the wrapped layer with its
    sublayers swapped (see each drop-in).

    Args:
      layer: the user's layer, sublayers already swapped (or to be swapped).
      swaps: the list of swaps (dicts as above).
      **kwargs: base layer arguments (``name``...).

    Call arguments: passed through to the wrapped layer unchanged.

    Raises:
      ValueError: a swap names a sublayer the layer does not have.
    """

    def __init__(self, layer, swaps, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.swaps = [{"path": [list(step) for step in s["path"]],
                       "class_name": s["class_name"]} for s in swaps]
        self.supports_masking = layer.supports_masking

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"),
                                                      custom_objects=custom_objects)
        swaps = config.pop("swaps")
        _rewrite.apply_swaps(
            layer, [(s["path"], keras.saving.get_registered_object(s["class_name"]))
                    for s in swaps], _OP)
        return cls(layer, swaps, **config)

    def build(self, input_shape=None):
        self.built = True  # the wrapped layer builds on its first call, as in the original

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        # plain lists (the attribute is a Keras TrackedList)
        swaps = [{"path": [list(step) for step in s["path"]], "class_name": s["class_name"]}
                 for s in self.swaps]
        return {**super().get_config(), "swaps": swaps}
