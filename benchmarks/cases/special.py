"""Special functions, softmax family, norm and losses: speed vs TF / naive, bits of error.

The element-wise functions, the softmax family and the norm are memory-bound and declare the
bytes they move; the losses do not (a softmax and a reduction per row)."""

import keras
import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks import bits_of_error as boe
from benchmarks.registry import (Case, elementwise_traffic, pick, reduction_traffic,
                                 register)
from safeops import testing

_TF_BAR = "stated for fwd+bwd, graph, CPU: a drop-in at most 1.2x TF's (or Keras's) own op"
_NAIVE_BAR = "stated for fwd+bwd, graph, CPU: a new op at most 1.5x the naive formula"


def _n(size):
    return pick(size, full=1 << 20, quick=1 << 16, smoke=1 << 10)


def _elementwise_inputs(name):
    def make(rng, size):
        return tuple(a.astype(np.float32) for a in boe.inputs(
            name, "float32", _n(size), seed=int(rng.integers(2 ** 31))))
    return make


def _bits_accuracy(name):
    def accuracy(inputs, outputs):
        k = 2000  # mpmath reference on the first 2000 inputs
        args = [np.asarray(a)[:k] for a in inputs]
        # scored as the bits-of-error table (`benchmarks.bits_of_error.measure`): the same
        # mpmath reference, exact results in the subnormal range (flushed by TF's CPU
        # kernels) left out
        ref = testing.reference(boe.mp_reference(name, "float32"), *args, dtype="float32")
        keep = boe._normal(ref, "float32") | np.isnan(ref.astype(np.float64))
        res = {"metric": "bits of error (mean, max; subnormal results not scored)"}
        naive = boe.SPECS[name][3](*[tf.constant(a) for a in args]).numpy()
        for label, out in [("naive", naive)] + [(lb, np.asarray(o)[:k]) for lb, o in outputs.items()]:
            b = testing.bits_of_error(np.asarray(out)[keep], ref[keep], "float32")
            res[label] = f"{b.mean():.2f} / {b.max():.1f}"
        return res
    return accuracy


for _name in boe.SPECS:
    _arity, _dom, _mp, _naive, _tf, _ours = boe.SPECS[_name]
    # drop-ins for a TF op at most 1.2x that op; new ops at most 1.5x the naive formula
    # (the TF/TFP function, where one exists, is timed as an anchor)
    if _name in ("sqrt", "softplus", "log_sigmoid"):
        _base, _bname, _bar, _anchors = _tf, "tf", 1.2, {}
    else:
        _base, _bname, _bar = _naive, "naive formula", 1.5
        _anchors = {} if _tf is None or _name in ("log1mexp", "logsubexp", "softplus_inverse",
                                                  "log_cosh") else {"tf": _tf}
    register(Case(
        name=f"special/{_name}", family="special",
        make_inputs=_elementwise_inputs(_name), baseline=_base, candidate=_ours,
        baseline_name=_bname, candidate_name=f"so.{_name}",
        accuracy=_bits_accuracy(_name), bar={"graph/fwd+bwd": _bar}, anchors=_anchors,
        bar_source=_TF_BAR if _bar == 1.2 else _NAIVE_BAR, bytes_moved=elementwise_traffic(),
        extra={"inputs": "sampled over the op's domain"}))


def _rows(rng, size):
    rows = pick(size, full=1024, quick=256, smoke=8)
    return (rng.standard_normal((rows, 1024)).astype(np.float32) * 5,)


def _lse64(x):
    m = x.max(-1, keepdims=True)
    return m + np.log(np.sum(np.exp(x - m), -1, keepdims=True))


def _ulp_accuracy(ref_fn, what):
    """max ulp against a float64 evaluation (relative error ~1e-15, far below float32's
    half ulp of 6e-8, so it serves as the exact value)."""
    def accuracy(inputs, outputs):
        ref = ref_fn(*[np.asarray(v, np.float64) for v in inputs])
        return {"metric": f"max ulp vs float64 {what}", **{
            k: float(testing.ulp_distance(np.asarray(v), ref, "float32").max())
            for k, v in outputs.items()}}
    return accuracy


register(Case(name="special/reduce_logsumexp", family="special", make_inputs=_rows,
              baseline=lambda x: tf.reduce_logsumexp(x, axis=-1),
              candidate=lambda x: so.reduce_logsumexp(x, axis=-1),
              baseline_name="tf.reduce_logsumexp", candidate_name="so.reduce_logsumexp",
              accuracy=_ulp_accuracy(lambda x: _lse64(x)[..., 0], "logsumexp"),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR,
              bytes_moved=reduction_traffic(axis=-1)))
register(Case(name="special/log_softmax", family="special", make_inputs=_rows,
              baseline=tf.nn.log_softmax, candidate=so.log_softmax,
              baseline_name="tf.nn.log_softmax", candidate_name="so.log_softmax",
              accuracy=_ulp_accuracy(lambda x: x - _lse64(x), "log_softmax"),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR,
              bytes_moved=elementwise_traffic()))
register(Case(name="special/softmax", family="special", make_inputs=_rows,
              baseline=tf.nn.softmax, candidate=so.softmax,
              baseline_name="tf.nn.softmax", candidate_name="so.softmax",
              accuracy=_ulp_accuracy(lambda x: np.exp(x - _lse64(x)), "softmax"),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR,
              bytes_moved=elementwise_traffic()))
register(Case(name="special/norm", family="special",
              make_inputs=lambda rng, size: (rng.standard_normal(_n(size)).astype(np.float32),),
              baseline=tf.norm, candidate=so.norm, baseline_name="tf.norm",
              candidate_name="so.norm",
              accuracy=_ulp_accuracy(lambda x: np.sqrt(np.sum(x * x)), "sqrt(sum x^2)"),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR,
              bytes_moved=reduction_traffic()))


def _cce_inputs(rng, size):
    n = pick(size, full=8192, quick=1024, smoke=16)
    z = rng.standard_normal((n, 100)).astype(np.float32) * 3
    y = np.eye(100, dtype=np.float32)[rng.integers(0, 100, n)]
    return (y, z)


def _loss_accuracy(ref_fn):
    """max relative error per row against the loss evaluated in float64 from the logits."""
    def accuracy(inputs, outputs):
        ref = ref_fn(*[np.asarray(v) for v in inputs])
        return {"metric": "max relerr per row vs float64 loss from the logits", **{
            k: float(np.max(np.abs(np.asarray(v, np.float64) - ref) / np.abs(ref)))
            for k, v in outputs.items()}}
    return accuracy


def _cce64(y, z):
    z = z.astype(np.float64)
    return np.sum(y * (_lse64(z) - z), -1)


def _bce64(y, z):
    z = z.astype(np.float64)
    return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), -1)


register(Case(name="special/categorical_crossentropy/probs", family="special",
              make_inputs=_cce_inputs,
              baseline=lambda y, z: keras.losses.categorical_crossentropy(y, tf.nn.softmax(z)),
              candidate=lambda y, z: so.losses.categorical_crossentropy(y, tf.nn.softmax(z)),
              baseline_name="keras cce(softmax)", candidate_name="so.losses cce(softmax)",
              accuracy=_loss_accuracy(_cce64),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR))
register(Case(name="special/binary_crossentropy/logits", family="special",
              make_inputs=_cce_inputs,
              baseline=lambda y, z: keras.losses.binary_crossentropy(y, z, from_logits=True),
              candidate=lambda y, z: so.losses.binary_crossentropy(y, z, from_logits=True),
              baseline_name="keras bce", candidate_name="so.losses bce",
              accuracy=_loss_accuracy(_bce64),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR))


def _scce_inputs(rng, size):
    y, z = _cce_inputs(rng, size)
    return np.argmax(y, -1).astype(np.int32), z


def _scce64(labels, z):
    z = z.astype(np.float64)
    return (_lse64(z)[:, 0] - z[np.arange(len(labels)), labels])


register(Case(name="special/sparse_categorical_crossentropy/probs", family="special",
              make_inputs=_scce_inputs,
              baseline=lambda y, z: keras.losses.sparse_categorical_crossentropy(
                  y, tf.nn.softmax(z)),
              candidate=lambda y, z: so.losses.sparse_categorical_crossentropy(
                  y, tf.nn.softmax(z)),
              baseline_name="keras scce(softmax)", candidate_name="so.losses scce(softmax)",
              accuracy=_loss_accuracy(_scce64),
              bar={"graph/fwd+bwd": 1.2}, bar_source=_TF_BAR))
