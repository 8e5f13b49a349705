"""Tests of safeops.ste: straight-through estimators."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops as so
from safeops import testing

FLOATS = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
STE = [(so.round_ste, tf.round, np.round), (so.floor_ste, tf.floor, np.floor),
       (so.ceil_ste, tf.math.ceil, np.ceil), (so.sign_ste, tf.sign, np.sign)]



def _grads(fn, *xs):
    xs = [tf.convert_to_tensor(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = fn(*xs)
        loss = tf.reduce_sum(out * tf.cast(tf.range(1, tf.size(out) + 1), out.dtype))
    return out.numpy(), [g for g in tape.gradient(loss, xs)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("ste,tf_op,np_op", STE)
def test_forward_exact(dtype, ste, tf_op, np_op):
    # The forward is exact: equal to the NumPy reference in float64 (round half to
    # even, like np.round), also at halves, +-0, +-inf and huge values.
    x = testing.sample_floats(dtype, 200, -1e6, 1e6, seed=1)
    x[:8] = [0.5, 1.5, -2.5, -0.0, np.inf, -np.inf, 2.0**9 + 0.5, -3.0]
    out = ste(tf.constant(x))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), tf_op(tf.constant(x)).numpy())  # bit-identical
    # TF on CPU treats subnormal inputs as 0 (ceil(1e-40) = 0): compared with
    # the exact reference on normal numbers, zeros and infinities only.
    x64 = x.astype(np.float64)
    tiny = 2.0**-14 if dtype == tf.float16 else 2.0**-1022 if dtype == tf.float64 else 2.0**-126
    keep = (np.abs(x64) >= tiny) | (x64 == 0)
    ref = np_op(x64[keep])
    assert testing.ulp_distance(out.numpy()[keep], ref, dtype).max() == 0


@pytest.mark.parametrize("ste,tf_op,np_op", STE)
def test_gradient_is_identity(ste, tf_op, np_op):
    x = tf.constant([0.5, 1.5, -2.5, 0.0, np.inf, -np.inf, 1e30, 0.3])
    _, (g,) = _grads(ste, x)
    np.testing.assert_array_equal(g.numpy(), np.arange(1, 9))  # the upstream gradient itself
    _, (tg,) = _grads(tf_op, x)
    assert tg is None or not np.any(tg.numpy())  # what TF gives: no gradient / zeros


def test_clip_ste_forward_and_gradient():
    x = tf.constant([-3.0, -1.0, -0.25, 0.0, 1.0, 2.0, np.inf, -np.inf])
    out, (g,) = _grads(lambda v: so.clip_ste(v, -1.0, 1.0), x)
    np.testing.assert_array_equal(out, np.clip(x.numpy(), -1.0, 1.0))
    np.testing.assert_array_equal(out, tf.clip_by_value(x, -1.0, 1.0).numpy())
    # identity inside [lo, hi] (edges included), 0 outside
    np.testing.assert_array_equal(g.numpy(), [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0])
    # a fake quantizer: round_ste(clip_ste(x)) has gradient 1 inside, 0 outside
    xs = np.array([-2.0, -0.7, 0.2, 0.9, 1.5])
    _, (gq,) = _grads(lambda v: so.round_ste(so.clip_ste(v * 4.0, -4.0, 4.0)) / 4.0,
                      tf.constant(xs))
    np.testing.assert_array_equal(gq.numpy(), [0.0, 2.0, 3.0, 4.0, 0.0])


@settings(max_examples=20, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(FLOATS))
def test_no_nan_gradients(data, dtype):
    x = data.draw(testing.extreme_floats(dtype, extra=(0.5,)), label="x")
    for fn in (so.round_ste, so.floor_ste, so.ceil_ste, so.sign_ste,
               lambda v: so.clip_ste(v, -1.0, 1.0)):
        testing.assert_finite_gradients(fn, x)
    # the usual hand-written STE, x + stop_gradient(round(x) - x), is not exact at inf
    inf = tf.constant([np.inf], dtype)
    assert np.isnan((inf + tf.stop_gradient(tf.round(inf) - inf)).numpy().astype(np.float64)).all()
    assert np.isinf(so.round_ste(inf).numpy().astype(np.float64)).all()


def test_nan_propagates():
    # NaN in x gives NaN forward (the TF op's value); the gradient is the
    # documented one: the upstream gradient (identity STEs), 0 for clip_ste
    # (NaN is not inside [lo, hi]).
    x = tf.constant([np.nan, 0.4, -2.0])
    fns = {"round": so.round_ste, "floor": so.floor_ste, "ceil": so.ceil_ste,
           "sign": so.sign_ste, "clip": lambda v: so.clip_ste(v, -1.0, 1.0)}

    def all_ops(v):
        result = {}
        for name, fn in fns.items():
            with tf.GradientTape() as tape:
                tape.watch(v)
                out = fn(v)
            result[name] = (out, tape.gradient(out, v))
        return result

    for mode, res in testing.run_modes(all_ops, x).items():
        for name, (out, g) in res.items():
            np.testing.assert_array_equal(np.isnan(out), [True, False, False], err_msg=f"{name} {mode}")
            want = [0.0, 1.0, 0.0] if name == "clip" else [1.0, 1.0, 1.0]
            np.testing.assert_array_equal(g, want, err_msg=f"{name} {mode}")


def test_execution_modes():
    x = tf.constant(np.linspace(-3.0, 3.0, 25), tf.float32)
    for fn in (so.round_ste, so.floor_ste, so.ceil_ste, so.sign_ste,
               lambda v: so.clip_ste(v, -1.0, 1.5)):
        def fwd_bwd(v, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch(v)
                out = fn(v)
            return out, tape.gradient(out, v)
        modes = testing.run_modes(fwd_bwd, x)
        for mode, (out, g) in modes.items():
            np.testing.assert_array_equal(out, modes["eager"][0], err_msg=mode)
            np.testing.assert_array_equal(g, modes["eager"][1], err_msg=mode)


def test_bad_input_raises():
    for ste, _, _ in STE:
        with pytest.raises(TypeError, match=rf"safeops.{ste.__name__}: argument 'x'"):
            ste(tf.constant([1, 2]))
    with pytest.raises(TypeError, match="safeops.clip_ste: argument 'x'"):
        so.clip_ste(tf.constant([True]), 0.0, 1.0)
    with pytest.raises(ValueError, match="safeops.clip_ste: need lo <= hi"):
        so.clip_ste(tf.constant([1.0]), 2.0, 1.0)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def dynamic(hi):
        return so.clip_ste(tf.constant([0.5, 3.0]), 0.0, hi)

    np.testing.assert_array_equal(dynamic(tf.constant(1.0)).numpy(), [0.5, 1.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="lo <= hi"):
        dynamic(tf.constant(-1.0))
