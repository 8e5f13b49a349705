"""Special functions, softmax family, norm and losses (issue 5): speed vs TF / naive, bits of error."""

import keras
import numpy as np
import tensorflow as tf

import safeops as so
from benchmarks import bits_of_error as boe
from benchmarks.registry import Case, register
from safeops import testing

_N = {True: 1 << 16, False: 1 << 20}


def _elementwise_inputs(name):
    def make(rng, quick):
        del rng
        return tuple(a.astype(np.float32) for a in boe.inputs(name, "float32", _N[quick], seed=0))
    return make


def _bits_accuracy(name):
    def accuracy(inputs, outputs):
        k = 2000  # mpmath reference on the first 2000 inputs
        args = [np.asarray(a)[:k] for a in inputs]
        ref = testing.reference(boe.SPECS[name][2], *args, dtype="float32")
        res = {"metric": "bits of error (mean, max)"}
        naive = boe.SPECS[name][3](*[tf.constant(a) for a in args]).numpy()
        for label, out in [("naive", naive)] + [(lb, np.asarray(o)[:k]) for lb, o in outputs.items()]:
            b = testing.bits_of_error(out, ref, "float32")
            res[label] = f"{b.mean():.2f} / {b.max():.1f}"
        return res
    return accuracy


for _name in boe.SPECS:
    _arity, _dom, _mp, _naive, _tf, _ours = boe.SPECS[_name]
    # issue 5: drop-ins for a TF op at most 1.2x that op; new ops at most 1.5x the
    # naive formula (the TF/TFP function, where one exists, is timed as an anchor)
    if _name in ("sqrt", "softplus", "log_sigmoid"):
        _base, _bname, _bar, _anchors = _tf, "tf", 1.2, {}
    else:
        _base, _bname, _bar = _naive, "naive formula", 1.5
        _anchors = {} if _tf is None or _name in ("log1mexp", "logsubexp", "softplus_inverse",
                                                  "log_cosh") else {"tf": _tf}
    register(Case(
        name=f"special/{_name}/1M", family="special",
        make_inputs=_elementwise_inputs(_name), baseline=_base, candidate=_ours,
        baseline_name=_bname, candidate_name=f"so.{_name}",
        accuracy=_bits_accuracy(_name), bar={"graph/fwd+bwd": _bar}, anchors=_anchors,
        extra={"n": "1M (quick: 64K), inputs sampled over the op's domain"}))


def _rows(rng, quick):
    return (rng.standard_normal((256 if quick else 1024, 1024)).astype(np.float32) * 5,)


register(Case(name="special/reduce_logsumexp/1Mx", family="special", make_inputs=_rows,
              baseline=lambda x: tf.reduce_logsumexp(x, axis=-1),
              candidate=lambda x: so.reduce_logsumexp(x, axis=-1),
              baseline_name="tf.reduce_logsumexp", candidate_name="so.reduce_logsumexp",
              bar={"graph/fwd+bwd": 1.2}))
register(Case(name="special/log_softmax/1Mx", family="special", make_inputs=_rows,
              baseline=tf.nn.log_softmax, candidate=so.log_softmax,
              baseline_name="tf.nn.log_softmax", candidate_name="so.log_softmax",
              bar={"graph/fwd+bwd": 1.2}))
register(Case(name="special/softmax/1Mx", family="special", make_inputs=_rows,
              baseline=tf.nn.softmax, candidate=so.softmax,
              baseline_name="tf.nn.softmax", candidate_name="so.softmax",
              bar={"graph/fwd+bwd": 1.2}))
register(Case(name="special/norm/1M", family="special",
              make_inputs=lambda rng, quick: (rng.standard_normal(_N[quick]).astype(np.float32),),
              baseline=tf.norm, candidate=so.norm, baseline_name="tf.norm",
              candidate_name="so.norm", bar={"graph/fwd+bwd": 1.2}))


def _cce_inputs(rng, quick):
    n = 1024 if quick else 8192
    z = rng.standard_normal((n, 100)).astype(np.float32) * 3
    y = np.eye(100, dtype=np.float32)[rng.integers(0, 100, n)]
    return (y, z)


register(Case(name="special/categorical_crossentropy/probs", family="special",
              make_inputs=_cce_inputs,
              baseline=lambda y, z: keras.losses.categorical_crossentropy(y, tf.nn.softmax(z)),
              candidate=lambda y, z: so.losses.categorical_crossentropy(y, tf.nn.softmax(z)),
              baseline_name="keras cce(softmax)", candidate_name="so.losses cce(softmax)",
              bar={"graph/fwd+bwd": 1.2}))
register(Case(name="special/binary_crossentropy/logits", family="special",
              make_inputs=_cce_inputs,
              baseline=lambda y, z: keras.losses.binary_crossentropy(y, z, from_logits=True),
              candidate=lambda y, z: so.losses.binary_crossentropy(y, z, from_logits=True),
              baseline_name="keras bce", candidate_name="so.losses bce",
              bar={"graph/fwd+bwd": 1.2}))
