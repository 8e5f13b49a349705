"""Tests of `safeops.doctor.audit`: each hazard pattern is flagged at its line with its replacement.

Every bad program is also shown to really fail (inf/NaN output or gradient) on the
same inputs, and its safeops rewrite to come back clean (and finite).
"""

import importlib
import math
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import testing
from safeops.doctor import audit


def _op(module, name):
    mod = pytest.importorskip(f"safeops.{module}")
    return getattr(mod, name)


def _line(fn, marker="# HAZARD"):
    """The line number of `marker` in `fn`'s source (the line audit must report)."""
    lines, start = inspect.getsourcelines(fn)
    hits = [start + i for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, hits
    return hits[0]


def _only(findings, hazard):
    hits = [f for f in findings if f.hazard == hazard]
    assert hits, [(f.hazard, f.op_type) for f in findings]
    return hits[0]


def _grads(fn, *xs):
    xs = [tf.convert_to_tensor(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = fn(*xs)
        total = tf.reduce_sum(out)
    return out.numpy(), [g.numpy() for g in tape.gradient(total, xs)]


# ---------------------------------------------------------------- bad programs and their rewrites

def cross_entropy(z, y):
    e = tf.exp(z)
    p = e / tf.reduce_sum(e, axis=-1, keepdims=True)
    return -tf.reduce_sum(y * tf.math.log(p), axis=-1)  # HAZARD


def log_sigmoid_naive(x):
    return tf.math.log(tf.sigmoid(x))  # HAZARD


def sqrt_exp(x):
    return tf.sqrt(tf.exp(x))  # HAZARD


SCALE = tf.Variable([1.0, 0.5, 2.0], name="scale")


def divide_by_scale(x):
    return x / SCALE  # HAZARD


def where_log(x):
    return tf.where(x > 0, tf.math.log(x), tf.zeros_like(x))  # HAZARD


def f16_sum(x):
    return tf.reduce_sum(x)  # HAZARD


def f16_exp(x):
    return tf.exp(x) * 2.0  # HAZARD


def cancellation(x):
    y = x + 1.0
    return y - 1.0  # HAZARD


Z = np.array([[100.0, 0.0, -100.0], [2.0, 1.0, 0.5]], np.float32)
Y = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], np.float32)


def test_handwritten_softmax_cross_entropy_flagged():
    found = audit(cross_entropy, Z, Y, verbose=False)
    f = _only(found, "log-of-softmax")
    assert (f.severity, f.op_type, f.line) == ("high", "Log", _line(cross_entropy))
    assert f.file == __file__
    assert "so.log_softmax" in f.replacement and "from_logits=True" in f.replacement
    assert f.input_range[0] == 0.0  # exp(-100)/sum underflows to exactly 0
    # The hazard is real: the naive loss is inf and its gradient NaN on these logits.
    out, (gz, _) = _grads(cross_entropy, Z, Y)
    assert not np.isfinite(out[0]) and not np.all(np.isfinite(gz))
    # On tame logits it is still reported (medium), as a pattern that fails later.
    tame = audit(cross_entropy, Z[1:], Y[1:], verbose=False)
    assert [(f.hazard, f.severity) for f in tame] == [("log-of-softmax", "medium")]


def test_log_sigmoid_flagged():
    x = np.array([-200.0, 0.0, 3.0], np.float32)
    f = _only(audit(log_sigmoid_naive, x, verbose=False), "log-of-sigmoid")
    assert (f.severity, f.line, f.replacement) == ("high", _line(log_sigmoid_naive), "so.log_sigmoid(x)")
    assert np.isneginf(log_sigmoid_naive(x).numpy()[0])  # the naive op fails


def test_sqrt_exp_flagged():
    x = np.array([100.0, 0.0, 3.0], np.float32)
    f = _only(audit(sqrt_exp, x, verbose=False), "exp overflow")
    assert (f.severity, f.op_type, f.line) == ("high", "Exp", _line(sqrt_exp))
    assert f.replacement.startswith("so.safe_exp(x / 2)")
    assert f.input_range[1] == 100.0
    assert np.isinf(sqrt_exp(x).numpy()[0])  # exp(100) overflows although sqrt(exp(100)) = 5.2e21


def test_division_by_learned_scale_flagged():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    f = _only(audit(divide_by_scale, x, verbose=False), "division by a learned scale")
    assert (f.severity, f.line) == ("medium", _line(divide_by_scale))
    assert "so.safe_divide" in f.replacement
    # Value evidence raises the severity: a scale that reached 0 is high.
    old = SCALE.numpy()
    try:
        SCALE.assign([1.0, 0.0, 2.0])
        f0 = _only(audit(divide_by_scale, x, verbose=False), "division by zero")
        assert f0.severity == "high" and f0.input_range[:2] == (0.0, 2.0)
        assert np.isinf(divide_by_scale(x).numpy()[1])
    finally:
        SCALE.assign(old)


def test_where_with_log_branch_flagged():
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    found = audit(where_log, x, verbose=False)
    f = _only(found, "where with non-finite branch")
    assert (f.severity, f.op_type, f.line, f.replacement) == ("high", "SelectV2", _line(where_log),
                                                              "so.safe_where")
    assert (f.input_range[2], f.input_range[3]) == (1, 1)  # log(-1) = NaN, log(0) = -inf
    out, (g,) = _grads(where_log, x)
    assert np.all(np.isfinite(out)) and np.isnan(g[1])  # the forward value hides what the gradient shows


def test_float16_sum_and_exp_flagged():
    x = np.full([10000], 10.0, np.float16)
    f = _only(audit(f16_sum, x, verbose=False), "low-precision reduction overflow")
    assert (f.severity, f.line) == ("high", _line(f16_sum))
    assert f.replacement.startswith("so.reduce_sum")
    assert np.isinf(f16_sum(x).numpy())  # 1e5 > 65504
    e = _only(audit(f16_exp, np.array([12.0, 1.0], np.float16), verbose=False),
              "float16/bfloat16 exp overflow")
    assert e.severity == "high" and e.line == _line(f16_exp)  # exp(12) = 162755 > 65504


def test_cancellation_flagged():
    x = np.array([1e-5, 1.0], np.float32)
    f = _only(audit(cancellation, x, verbose=False), "cancellation")
    assert (f.severity, f.line) == ("low", _line(cancellation))
    # The cancellation is real: the result's relative error is far above float32 eps.
    rel = abs(float(cancellation(tf.constant(x)).numpy()[0]) - 1e-5) / 1e-5
    assert rel > 2.0 ** -12


def test_tf_function_target_reports_user_lines():
    f = _only(audit(tf.function(log_sigmoid_naive), np.array([-200.0], np.float32), verbose=False),
              "log-of-sigmoid")
    assert f.line == _line(log_sigmoid_naive)


# ---------------------------------------------------------------- rewritten with safeops: clean

def test_rewrites_with_safeops_are_clean():
    log_softmax = _op("softmax", "log_softmax")
    log_sigmoid = _op("logexp", "log_sigmoid")
    safe_exp = _op("special", "safe_exp")
    safe_divide = _op("division", "safe_divide")
    reduce_sum = _op("summation", "reduce_sum")
    safe_log = _op("special", "safe_log")

    def ce_fixed(z, y):
        return -tf.reduce_sum(y * log_softmax(z), axis=-1)

    programs = [
        (ce_fixed, (Z, Y)),
        (lambda x: log_sigmoid(x), (np.array([-200.0, 0.0, 3.0], np.float32),)),
        (lambda x: safe_exp(x * 0.5), (np.array([100.0, 0.0, 3.0], np.float32),)),
        (lambda x: safe_divide(x, SCALE), (np.array([1.0, 2.0, 3.0], np.float32),)),
        (lambda x: safe_log(tf.maximum(x, 0.0)), (np.array([-1.0, 0.0, 2.0], np.float32),)),
        (lambda x: reduce_sum(x), (np.full([10000], 1.0, np.float16),)),
    ]
    for fn, args in programs:
        assert audit(fn, *args, verbose=False) == [], fn
    # The rewritten loss is finite where the naive one was not, and exact: the row-0 loss is
    # 200 + log(1 + e^-100 + e^-200) = 200 in float32 (mpmath reference).
    out, (gz, _) = _grads(ce_fixed, Z, Y)
    ref = testing.reference(lambda a, b, c: -(c - __import__("mpmath").log(
        __import__("mpmath").exp(a) + __import__("mpmath").exp(b) + __import__("mpmath").exp(c))),
        *Z[0], dtype="float32")
    assert testing.ulp_distance(out[0], ref, "float32") <= 2  # 2 ulps: the op's documented bound
    assert np.all(np.isfinite(gz))


def test_safe_where_rewrite_clean():
    safe_where = _op("where", "safe_where")
    x = np.array([-1.0, 0.0, 2.0], np.float32)

    def fixed(v):
        return safe_where(v > 0, tf.math.log, tf.zeros_like, v)

    assert audit(fixed, x, verbose=False) == []
    testing.assert_finite_gradients(fixed, x)  # the gradient the naive where made NaN


def test_clean_function_gives_empty_list():
    assert audit(lambda x: tf.math.log(x) + tf.exp(x) / (x + 1.0), np.array([1.0, 2.0], np.float32),
                 verbose=False) == []


def _mlp():
    return keras.Sequential([keras.Input((16,))]
                            + [keras.layers.Dense(32, activation="relu") for _ in range(5)]
                            + [keras.layers.Dense(10, activation="softmax")])


def _cnn():
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax")])


def test_keras_models_are_clean_and_unmodified():
    rng = np.random.default_rng(0)
    for model, shape in ((_mlp(), (8, 16)), (_cnn(), (4, 16, 16, 3))):
        before = [w.copy() for w in model.get_weights()]
        assert audit(model, rng.standard_normal(shape).astype(np.float32), verbose=False) == []
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_keras_model_with_hazard():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax"),
                              keras.layers.Lambda(lambda p: tf.math.log(p))])  # HAZARD-LAMBDA
    model.layers[0].kernel.assign(np.full((4, 3), 0.0, np.float32) + np.array([[60.0, 0.0, -60.0]]))
    found = audit(model, np.ones((2, 4), np.float32), verbose=False)
    f = _only(found, "log-of-softmax")
    assert f.severity == "high" and f.op_type == "Log"


def test_printed_table(capsys):
    audit(log_sigmoid_naive, np.array([-200.0], np.float32))
    text = capsys.readouterr().out
    assert "log-of-sigmoid" in text and "so.log_sigmoid(x)" in text and "high" in text


# ---------------------------------------------------------------- bad input

def test_untraceable_targets_raise():
    with pytest.raises(TypeError, match="audit.*'target'.*cannot be traced"):
        audit(42, 1.0)
    cf = tf.function(log_sigmoid_naive).get_concrete_function(tf.TensorSpec([None], tf.float32))
    with pytest.raises(TypeError, match="ConcreteFunction"):
        audit(cf, np.ones([2], np.float32))
    with pytest.raises(TypeError, match="min_severity"):
        audit(log_sigmoid_naive, np.ones([2], np.float32), min_severity="urgent")


def test_wrong_shape_gives_the_functions_error_and_signature():
    model = _mlp()
    with pytest.raises(ValueError) as err:
        audit(model, np.ones((2, 15), np.float32), verbose=False)
    msg = str(err.value)
    assert "safeops.doctor.audit" in msg and "(None, 16)" in msg and "(2, 15)" in msg
    with pytest.raises(ValueError, match=r"cross_entropy\(z, y\)"):
        audit(cross_entropy, np.ones((2, 3), np.float32), np.ones((2, 4), np.float32), verbose=False)


def test_min_severity_filters():
    x = np.array([1e-5, 1.0], np.float32)
    assert audit(cancellation, x, min_severity="medium", verbose=False) == []


def test_public_docstrings_have_args():
    doctor = importlib.import_module("safeops.doctor")
    for name in ("audit", "explain_gradients", "compare_devices", "weights_report"):
        assert "Args:" in getattr(doctor, name).__doc__


# ---------------------------------------------------------------- more patterns and their safeops ops

def naive_norm(x):
    return tf.sqrt(tf.reduce_sum(tf.square(x)))  # HAZARD


def naive_logsumexp(x):
    return tf.math.log(tf.reduce_sum(tf.exp(x)))  # HAZARD


def naive_softplus(x):
    return tf.math.log(1.0 + tf.exp(x))  # HAZARD


def naive_log1mexp(x):
    return tf.math.log(1.0 - tf.exp(x))  # HAZARD


@pytest.mark.parametrize("naive, x, hazard, replacement, module, fixed", [
    (naive_norm, [0.0, 0.0], "sqrt at or below 0", "so.norm", "norms", "norm"),
    (naive_logsumexp, [100.0, 0.0], "exp overflow", "so.reduce_logsumexp", "softmax", "reduce_logsumexp"),
    (naive_softplus, [100.0, 0.0], "exp overflow", "so.softplus", "logexp", "softplus"),
    (naive_log1mexp, [-1e-10, -1.0], "log-of-1-minus-exp", "so.log1mexp", "logexp", "log1mexp"),
])
def test_more_patterns_flagged_and_fixed(naive, x, hazard, replacement, module, fixed):
    x = np.array(x, np.float32)
    f = _only(audit(naive, x, verbose=False), hazard)
    assert f.severity == "high" and f.line == _line(naive) and replacement in f.replacement
    with pytest.raises(AssertionError):  # the naive program really fails (inf/NaN value or gradient)
        testing.assert_finite_gradients(naive, x)
    op = _op(module, fixed)
    assert audit(lambda t: op(t), x, verbose=False) == []
    testing.assert_finite_gradients(lambda t: op(t), x)


def test_safeops_cross_entropy_from_logits_is_clean():
    cce = _op("losses", "categorical_crossentropy")
    assert audit(lambda z, y: cce(y, z, from_logits=True), Z, Y, verbose=False) == []


def f16_matmul(x):
    return tf.matmul(x, x)  # HAZARD


def test_other_overflow_is_reported_where_it_starts():
    x = np.full((2, 2), 200.0, np.float16)  # 2 * 200 * 200 = 80000 > 65504
    found = audit(f16_matmul, x, verbose=False)
    assert [(f.hazard, f.op_type, f.severity, f.line) for f in found] == [
        ("non-finite produced", "MatMul", "high", _line(f16_matmul))]
    assert "so.promote" in found[0].replacement
    assert np.all(np.isinf(f16_matmul(tf.constant(x)).numpy()))


def test_multi_input_keras_model():
    a, b = keras.Input((4,)), keras.Input((3,))
    p = keras.layers.Dense(2, activation="sigmoid")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], keras.layers.Lambda(lambda t: tf.math.log(t))(p))
    found = audit(model, np.ones((2, 4), np.float32), np.ones((2, 3), np.float32), verbose=False)
    assert [(f.hazard, f.severity) for f in found] == [("log-of-sigmoid", "medium")]


# ---------------------------------------------------------------- rules of the remaining DEBAR ops

def naive_rsqrt(x):
    return tf.math.rsqrt(x)  # HAZARD


def naive_reciprocal(x):
    return tf.math.reciprocal(x)  # HAZARD


def naive_expm1(x):
    return tf.math.expm1(x)  # HAZARD


def naive_log1p(x):
    return tf.math.log1p(x)  # HAZARD


def naive_log_tiny(x):
    return 50.0 * tf.math.log(x)  # HAZARD


def naive_divide(x, d):
    return x / d  # HAZARD


def _flagged(naive, args, hazard, severity, replacement):
    f = _only(audit(naive, *args, verbose=False), hazard)
    assert (f.severity, f.line, f.file) == (severity, _line(naive), __file__), f
    assert replacement in f.replacement, f.replacement
    return f


def test_rsqrt_at_zero_flagged_and_fixed():
    x = np.array([0.0, 4.0], np.float32)
    f = _flagged(naive_rsqrt, (x,), "rsqrt at or below 0", "high", "so.safe_reciprocal(so.sqrt(x))")
    assert f.op_type == "Rsqrt" and f.input_range[:2] == (0.0, 4.0)
    assert np.isinf(naive_rsqrt(tf.constant(x)).numpy()[0])  # rsqrt(0) = inf

    def fixed(v):
        return so.safe_reciprocal(so.sqrt(v))

    assert audit(fixed, x, verbose=False) == []
    testing.assert_finite_gradients(fixed, x)


def test_reciprocal_of_zero_flagged_and_fixed():
    x = np.array([0.0, 2.0], np.float32)
    f = _flagged(naive_reciprocal, (x,), "division by zero", "high", "so.safe_reciprocal")
    assert f.op_type == "Reciprocal"
    assert np.isinf(naive_reciprocal(tf.constant(x)).numpy()[0])
    assert audit(lambda v: so.safe_reciprocal(v), x, verbose=False) == []
    testing.assert_finite_gradients(lambda v: so.safe_reciprocal(v), x)


def test_expm1_overflow_flagged_and_fixed():
    x = np.array([100.0, 20.0, 0.0], np.float32)
    f = _flagged(naive_expm1, (x,), "exp overflow", "high", "so.safe_exp(x) - 1")
    assert f.op_type == "Expm1" and f.input_range[1] == 100.0
    assert np.isinf(naive_expm1(tf.constant(x)).numpy()[0])  # expm1(100) = 2.7e43 > 3.4e38

    def fixed(v):
        return so.safe_exp(v) - 1.0

    assert audit(fixed, x, verbose=False) == []
    out = fixed(tf.constant(x)).numpy()
    assert np.all(np.isfinite(out))
    # For x = 20 exp(x) - 1 equals expm1(x) to float32 rounding (float64 reference; 1 ulp is
    # safe_exp's documented bound, the subtraction of 1 from 4.9e8 is exact).
    assert testing.ulp_distance(out[1], np.float32(np.expm1(20.0)), "float32") <= 1


def test_log1p_at_minus_one_flagged_and_fixed():
    x = np.array([-1.0, 0.5], np.float32)
    f = _flagged(naive_log1p, (x,), "log-of-zero", "high", "so.safe_log(1 + x)")
    assert f.op_type == "Log1p" and f.input_range[0] == -1.0
    assert np.isneginf(naive_log1p(tf.constant(x)).numpy()[0])

    def fixed(v):
        return so.safe_log(1.0 + v)

    assert audit(fixed, x, verbose=False) == []
    testing.assert_finite_gradients(fixed, x)


@pytest.mark.parametrize("tiny", [1e-37, 5e-38])
def test_log_of_tiny_values_flagged_and_fixed(tiny):
    x = np.array([tiny, 1.0], np.float32)
    f = _flagged(naive_log_tiny, (x,), "log-of-zero", "high", "so.safe_log")
    assert f.op_type == "Log" and f.input_range[0] == np.float32(tiny)
    assert "<= 1.2e-37" in f.message
    # The hazard is real: d(50 log x)/dx = 50 / x > 3.4e38 at x <= 1.2e-37 overflows.
    _, (g,) = _grads(naive_log_tiny, x)
    assert np.isinf(g[0])
    assert audit(lambda v: so.safe_log(v), x, verbose=False) == []


def test_log_just_above_the_tiny_threshold_is_clean():
    # 10 * tiny(float32) = 1.18e-37 is the documented threshold; 2e-37 is above it.
    assert audit(lambda v: tf.math.log(v), np.array([2e-37, 1.0], np.float32), verbose=False) == []


def test_division_by_near_zero_flagged_and_fixed():
    x = np.array([1.0, 1.0], np.float32)
    d = np.array([1e-9, 1.0], np.float32)  # 1e-9 < eps(float32) = 1.19e-7
    f = _flagged(naive_divide, (x, d), "division by near-zero", "medium", "so.safe_divide")
    assert f.op_type == "RealDiv" and f.input_range[0] == np.float32(1e-9)
    assert audit(lambda a, b: so.safe_divide(a, b), x, d, verbose=False) == []


def test_overflowing_division_flagged_and_fixed():
    x = np.array([1e30, 1.0], np.float32)
    d = np.array([1e-10, 2.0], np.float32)  # 1e30 / 1e-10 = 1e40 > 3.4e38
    f = _flagged(naive_divide, (x, d), "division overflow", "high", "so.safe_divide")
    assert np.isinf(naive_divide(tf.constant(x), tf.constant(d)).numpy()[0])
    assert f.input_range[0] == np.float32(1e-10)
    assert audit(lambda a, b: so.safe_divide(a, b), x, d, verbose=False) == []
    out = so.safe_divide(tf.constant(x), tf.constant(d)).numpy()
    assert out[0] == np.finfo(np.float32).max and out[1] == 0.5  # saturated, and exact elsewhere


# ---------------------------------------------------------------- bfloat16 scalars

def bf16_sum(x):
    return tf.reduce_sum(x)  # HAZARD


def test_bfloat16_reduction_overflow_flagged():
    big = float(tf.bfloat16.max) / 50  # 100 of them sum to 2 * max(bfloat16)
    x = tf.fill([100], tf.constant(big, tf.bfloat16))
    assert np.isinf(float(bf16_sum(x).numpy()))  # the hazard is real
    f = _flagged(bf16_sum, (x,), "low-precision reduction overflow", "high", "so.reduce_sum")
    assert "bfloat16" in f.message
    assert audit(lambda t: so.reduce_sum(t), x, verbose=False) == []
    # A bfloat16 reduction that stays in range is clean (and its 0-d output does not crash).
    assert audit(lambda t: tf.reduce_sum(t), tf.ones([8], tf.bfloat16), verbose=False) == []


def test_bfloat16_sum_of_magnitudes_above_max_is_medium():
    big = float(tf.bfloat16.max) / 50
    x = tf.constant([big] * 60 + [-big] * 60, tf.bfloat16)  # exact sum 0; sum |x| = 2.4 max
    assert float(bf16_sum(x).numpy()) == 0.0  # this order of summation happens not to overflow
    f = _flagged(bf16_sum, (x,), "low-precision reduction overflow", "medium", "so.reduce_sum")
    assert "partial sums can reach" in f.message


# ---------------------------------------------------------------- untraceable Python bodies

def calls_numpy(x):
    return tf.constant(x.numpy() * 2.0)


def calls_numpy_function(x):
    return np.sin(x)


def test_function_calling_numpy_method_cannot_be_traced():
    with pytest.raises(TypeError, match=r"audit: argument 'target' \(calls_numpy\) cannot be "
                                        r"traced.*\.numpy\(\).*only eager tensors"):
        audit(calls_numpy, np.ones([2], np.float32), verbose=False)


def test_function_passing_tensor_to_numpy_cannot_be_traced():
    with pytest.raises(TypeError, match=r"cannot be traced.*passes a tensor to a NumPy function"):
        audit(calls_numpy_function, np.ones([2], np.float32), verbose=False)
    with pytest.raises(TypeError, match="explain_gradients.*cannot be traced"):
        w = tf.Variable(1.0)
        so.doctor.explain_gradients(lambda x: calls_numpy_function(w * x), [w], 1.0, verbose=False)


# ---------------------------------------------------------------- advice that keeps the loss finite

def mean_of_quotients(x, d):
    return tf.reduce_mean(x / d)


def masked_mean_loss(x, m):
    per_row = tf.reduce_sum(x * m, axis=1) / tf.reduce_sum(m, axis=1)  # 0/0 on an all-masked row
    return tf.reduce_mean(per_row)


def test_quotient_reduced_afterwards_gets_a_replacement_that_keeps_the_mean_finite():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    d = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]], np.float32)
    found = audit(mean_of_quotients, x, d, verbose=False)
    assert found[0].hazard == "division by zero"
    assert found[0].replacement.startswith("so.divide_no_nan")
    # The saturating op is not enough here: the mean of its saturated values is inf.
    assert np.isinf(float(tf.reduce_mean(so.safe_divide(x, d))))

    def fixed(x, d):
        return tf.reduce_mean(so.divide_no_nan(x, d))

    assert audit(fixed, x, d, verbose=False) == []  # the re-audit finds nothing
    quotients = [xi / di if di else 0.0 for xi, di in zip(x.ravel().tolist(), d.ravel().tolist())]
    assert float(fixed(x, d)) == pytest.approx(math.fsum(quotients) / 6, rel=1e-6)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fixed(xt, d)
    assert np.all(np.isfinite(tape.gradient(y, xt).numpy()))


def test_masked_mean_with_an_all_masked_row():
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    m = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)
    assert np.isnan(float(masked_mean_loss(x, m)))
    found = audit(masked_mean_loss, x, m, verbose=False)
    assert found and found[0].replacement.startswith("so.divide_no_nan")

    def fixed(x, m):
        per_row = so.divide_no_nan(tf.reduce_sum(x * m, axis=1), tf.reduce_sum(m, axis=1))
        return tf.reduce_mean(per_row)

    assert audit(fixed, x, m, verbose=False) == []
    assert float(fixed(x, m)) == pytest.approx((1.5 + 0.0) / 2)


def test_quotient_not_reduced_keeps_the_saturating_advice():
    found = audit(lambda x, d: x / d, np.ones([2], np.float32), np.array([1.0, 0.0], np.float32),
                  verbose=False)
    assert found[0].replacement.startswith("so.safe_divide")
