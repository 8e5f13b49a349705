"""Tests of `safeops.doctor.audit`: each hazard pattern is flagged at its line with its replacement.

Every bad program is also shown to really fail (inf/NaN output or gradient) on the
same inputs, and its safeops rewrite to come back clean (and finite).
"""

import importlib
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
