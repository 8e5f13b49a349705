"""Tests of the dtype rules every op shares (safeops/_core/dtypes.py)."""

import pytest
import tensorflow as tf

from safeops._core import dtypes as _dtypes


@pytest.mark.parametrize("dtype,acc", [
    (tf.float16, tf.float32), (tf.bfloat16, tf.float32),
    (tf.float32, tf.float64), (tf.float64, tf.float64),
])
def test_accumulation_dtype(dtype, acc):
    assert _dtypes.accumulation_dtype(dtype) == acc
    assert _dtypes.accumulation_dtype(dtype.name) == acc


@pytest.mark.parametrize("bad", [tf.int32, tf.bool, tf.string, tf.complex64])
def test_non_floating_dtypes_raise_type_error_naming_op_and_argument(bad):
    with pytest.raises(TypeError, match=r"safeops.op_x: argument 'y_arg' .*float32.*got " + bad.name):
        _dtypes.check_floating("safeops.op_x", "y_arg", bad)
    with pytest.raises(TypeError):
        _dtypes.accumulation_dtype(bad)


def test_convert_to_floating_follows_tf_conversion_rules():
    t = _dtypes.convert_to_floating("op", "x", [1.0, 2.0])
    assert t.dtype == tf.float32  # Python floats become float32, as in TF
    t64 = _dtypes.convert_to_floating("op", "x", tf.constant([1.0], tf.float64))
    assert t64.dtype == tf.float64
    with pytest.raises(TypeError, match="op: argument 'x'.*got int32"):
        _dtypes.convert_to_floating("op", "x", [1, 2])
    with pytest.raises(TypeError, match="op: argument 'x' cannot be converted"):
        _dtypes.convert_to_floating("op", "x", object())
    with pytest.raises(TypeError, match="op: argument 'x'.*got string"):
        _dtypes.convert_to_floating("op", "x", "not a number")
    t_int = _dtypes.convert_to_floating("op", "x", [1, 2], allowed=(tf.int32,))
    assert t_int.dtype == tf.int32
