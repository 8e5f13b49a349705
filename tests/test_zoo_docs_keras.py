"""docs/keras.md runs: every ```python block, in order, in one namespace."""

import pathlib
import re

import keras

_DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "keras.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", _DOC.read_text(), flags=re.S)


def test_keras_guide_examples_run():
    blocks = _blocks()
    assert len(blocks) >= 6
    namespace = {"__name__": "docs_keras"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{_DOC}:block{i}", "exec"), namespace)
    finally:
        keras.mixed_precision.set_global_policy("float32")
