"""Private machinery behind `safeops.callbacks`: an instrumented Keras training step
and the eager layer-by-layer localisation of a non-finite value.

The instrumented step wraps ``model.train_step`` once per model. Inside the
traced step it records the raw (per-batch, unscaled) loss by wrapping
``model._compute_loss``, and the gradients by wrapping
``optimizer.apply_gradients``; when a registered check fails it copies the
batch to Python with a `tf.py_function` that sits in the untaken branch of a
`tf.cond`, so a healthy step pays one `is_finite` reduction and a branch.
With ``jit_compile=True`` the original step stays XLA-compiled (an inner
`tf.function(jit_compile=True)`); only the check and the capture run outside.
"""

import threading

import numpy as np
import keras
import tensorflow as tf

__all__ = []


def _all_finite(tensors):
    flags = [tf.reduce_all(tf.math.is_finite(tf.cast(t, tf.float32)
                                             if t.dtype in (tf.float16, tf.bfloat16) else t))
             for t in tensors if t is not None and t.dtype.is_floating]
    if not flags:
        return tf.constant(True)
    return tf.reduce_all(tf.stack(flags))


def _is_loss_scale_optimizer(opt):
    return type(opt).__name__ == "LossScaleOptimizer"


class StepInstrument:
    """Wraps a model's train step; hooks register checks and extra outputs."""

    def __init__(self, model):
        self.model = model
        self.users = []          # callbacks using this instrument
        self.captured = None     # (numpy data, flags dict, step index or None): first failure
        self.counter = None      # int64 variable: steps run since fit began (one replica only)
        self._saved_step = model.__dict__.get("train_step")
        self._local = threading.local()
        self._patched = False
        self._installed = False
        self._plain_fn = None    # Keras's own train_function, restored after fit
        self._cache = {}         # needs -> (compile config, step, traced train_function)

    # -- the flags a user needs: union over users ---------------------------
    def _wants(self, what):
        return any(what in u._probe_needs for u in self.users)

    def _patch(self):
        """Wrap model._compute_loss and optimizer.apply_gradients once (instance attributes).

        The wrappers record into a thread-local box, so the replica threads of a
        MirroredStrategy trace their steps independently.
        """
        if self._patched:
            return
        model, instrument = self.model, self
        opt = model.optimizer
        orig_cl = model._compute_loss

        def compute_loss(*args, **kwargs):
            loss = orig_cl(*args, **kwargs)
            box = getattr(instrument._local, "box", None)
            if box is not None:
                box["loss"] = loss
            return loss

        model._compute_loss = compute_loss
        if opt is not None:
            orig_apply = opt.apply_gradients

            def apply_gradients(grads_and_vars, *args, **kwargs):
                box = getattr(instrument._local, "box", None)
                if box is None:
                    return orig_apply(grads_and_vars, *args, **kwargs)
                want_grads = instrument._wants("gradients")
                # Skip the update of a failing step, so the weights stay as they were
                # (the report re-runs the step; the model is not poisoned).
                grads_and_vars = list(grads_and_vars)
                ok = tf.constant(True)
                if "loss" in box:
                    ok = tf.reduce_all(tf.math.is_finite(tf.cast(box["loss"], tf.float32)))
                if want_grads and not _is_loss_scale_optimizer(opt):
                    box["grads_ok"] = _all_finite([g for g, _ in grads_and_vars])
                    ok = tf.logical_and(ok, box["grads_ok"])
                ctx = tf.distribute.get_replica_context()
                if ctx is not None and ctx.num_replicas_in_sync > 1:
                    # apply_gradients synchronises replicas and cannot sit in a tf.cond:
                    # zero the gradients of a failing step instead (exactly a skipped step
                    # for plain SGD; optimizers with state still decay their moments).
                    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                         tf.cast(tf.logical_not(ok), tf.float32))
                    ok = bad < 0.5  # the same decision on every replica
                    zeroed = [(None if g is None else tf.where(ok, g, tf.zeros_like(g)), v)
                              for g, v in grads_and_vars]
                    return orig_apply(zeroed, *args, **kwargs)

                def apply():
                    orig_apply(grads_and_vars, *args, **kwargs)
                    return tf.constant(True)

                return tf.cond(ok, apply, lambda: tf.constant(False))

            opt.apply_gradients = apply_gradients
        self._patched = True

    def _unpatch(self):
        if not self._patched:
            return
        self.model.__dict__.pop("_compute_loss", None)
        if self.model.optimizer is not None:
            self.model.optimizer.__dict__.pop("apply_gradients", None)
        self._patched = False

    def install(self):
        model = self.model
        if not self._installed:
            self._plain_fn = model.train_function
        self._installed = True
        self._patch()
        jit = bool(model.jit_compile) and not model.run_eagerly
        key = (tuple(sorted({n for u in self.users for n in u._probe_needs})), jit,
               bool(model.run_eagerly), id(model.optimizer))
        cached = self._cache.get(key)
        if cached is not None and cached[0] is getattr(model, "_compile_config", None):
            # the same instrumented step as a previous fit: no retracing
            model.train_step, model.train_function = cached[1], cached[2]
            return
        orig_step = self._saved_step or type(model).train_step.__get__(model)
        strategy = getattr(model, "distribute_strategy", None)
        if self.counter is None and getattr(strategy, "num_replicas_in_sync", 1) == 1:
            # counts the steps inside the compiled function, so that the step of a failure
            # is known exactly when Keras runs several steps per call (steps_per_execution)
            with tf.init_scope():
                self.counter = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="safeops_step_counter")
        counter = self.counter if getattr(strategy, "num_replicas_in_sync", 1) == 1 else None
        want_weights = self._wants("weights")
        want_loss_out = self._wants("loss_output")
        instrument = self

        def core(data):
            box = {}
            instrument._local.box = box
            try:
                logs = orig_step(data)
            finally:
                instrument._local.box = None
            if "loss" in box:
                from keras.src.losses.loss import unscale_loss_for_distribution
                loss = tf.cast(unscale_loss_for_distribution(box["loss"]), tf.float32)
            else:
                loss = tf.cast(logs.get("loss", 0.0), tf.float32)
            loss_ok = tf.reduce_all(tf.math.is_finite(loss))
            grads_ok = tf.constant(True)
            if "grads_ok" in box:
                grads_ok = box["grads_ok"]
            weights_ok = tf.constant(True)
            if want_weights:
                weights_ok = _all_finite([tf.convert_to_tensor(v) for v in
                                          model.trainable_variables])
            return logs, loss, loss_ok, grads_ok, weights_ok

        if jit:
            core = tf.function(core, jit_compile=True, reduce_retracing=True)

        def step(data):
            logs, loss, loss_ok, grads_ok, weights_ok = core(data)
            ok = tf.logical_and(loss_ok, tf.logical_and(grads_ok, weights_ok))
            flat = tf.nest.flatten(data)
            pos = [i for i, t in enumerate(flat) if isinstance(t, tf.Tensor)]
            index = []
            if counter is not None:
                index = [counter.read_value()]  # this step's index, then count it
                counter.assign_add(1)

            def capture(*args):
                arrays = [a.numpy() for a in args[:len(pos)]]
                flags = [bool(a.numpy()) for a in args[len(pos):len(pos) + 3]]
                at = [int(a.numpy()) for a in args[len(pos) + 3:]]
                if instrument.captured is None:
                    leaves = [None] * len(flat)
                    for i, a in zip(pos, arrays):
                        leaves[i] = a
                    instrument.captured = (
                        tf.nest.pack_sequence_as(data, leaves),
                        dict(zip(("loss", "gradients", "weights"), flags)),
                        at[0] if at else None)
                return True

            def on_failure():
                return tf.py_function(capture, [flat[i] for i in pos] +
                                      [loss_ok, grads_ok, weights_ok] + index, Tout=tf.bool)

            tf.cond(ok, lambda: tf.constant(True), on_failure)
            if want_loss_out:
                logs = dict(logs)
                logs["_safeops_batch_loss"] = loss
            return logs

        model.train_step = step
        saved_jit = model._jit_compile
        model._jit_compile = False  # the outer step holds a py_function; XLA is kept inside
        try:
            model.make_train_function(force=True)
        finally:
            model._jit_compile = saved_jit
        self._cache[key] = (getattr(model, "_compile_config", None), step, model.train_function)

    def uninstall(self):
        model = self.model
        self._unpatch()
        if self._saved_step is None:
            model.__dict__.pop("train_step", None)
        else:
            model.train_step = self._saved_step
        model.train_function = self._plain_fn
        self._plain_fn = None
        self._installed = False


def attach(callback, model):
    inst = getattr(model, "_safeops_instrument", None)
    if inst is None:
        inst = StepInstrument(model)
        model._safeops_instrument = inst
    if callback not in inst.users:
        inst.users.append(callback)
    inst.install()
    if inst.counter is not None:
        inst.counter.assign(0)  # steps are counted from the start of this fit
    return inst


def detach(callback, model):
    inst = getattr(model, "_safeops_instrument", None)
    if inst is None:
        return
    if callback in inst.users:
        inst.users.remove(callback)
    if not inst.users:
        inst.uninstall()  # the instrument stays on the model: its traced steps are reused


# ---------------------------------------------------------------------------
# Localisation: re-run one batch eagerly, layer by layer, under a tape.
# ---------------------------------------------------------------------------


def _counts(tensors):
    nan = inf = 0
    for t in tensors:
        if t is None or not t.dtype.is_floating:
            continue
        a = np.asarray(tf.cast(t, tf.float32) if t.dtype == tf.bfloat16 else t)
        nan += int(np.isnan(a).sum())
        inf += int(np.isinf(a).sum())
    return nan, inf


def _float_tensors(structure):
    return [t for t in tf.nest.flatten(structure)
            if isinstance(t, (tf.Tensor, tf.Variable)) and t.dtype.is_floating]


def _layer_info(layer):
    return {"layer": layer.name, "layer_class": type(layer).__name__}


def localise(model, data):
    """Find the first layer whose output (forward) or gradient (backward) is non-finite.

    Every top-level layer's `call` is wrapped for the duration of one eager
    forward pass under a persistent `tf.GradientTape`, recording the tensors
    each call received and produced (in execution order). Forward: the first
    call whose outputs hold NaN/inf. Backward (if the forward pass is finite):
    calls are scanned from last to first; the first whose output gradient is
    finite but whose input or weight gradient is not is the culprit.

    Returns a dict (see `NumericsMonitor`), without step information.
    """
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    x = tf.nest.map_structure(lambda a: a if a is None else tf.convert_to_tensor(a), x)
    y = tf.nest.map_structure(lambda a: a if a is None else tf.convert_to_tensor(a), y)
    if sw is not None:
        sw = tf.nest.map_structure(tf.convert_to_tensor, sw)
    x_in = _float_tensors(x)
    nan, inf = _counts(x_in)
    if nan or inf:
        return {"direction": "input", "layer": None, "layer_class": None,
                "where": "input data", "nan": nan, "inf": inf}

    records = []
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    patched = []
    for layer in layers:
        orig = layer.call

        def call(*args, __orig=orig, __layer=layer, **kwargs):
            out = __orig(*args, **kwargs)
            records.append((__layer, _float_tensors((args, kwargs)), _float_tensors(out)))
            return out

        layer.call = call
        patched.append(layer)
    try:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x_in)
            y_pred = model(x, training=True)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=True)
    finally:
        for layer in patched:
            layer.__dict__.pop("call", None)

    bad_weights = [v.path for v in model.weights
                   if "float" in keras.backend.standardize_dtype(v.dtype)
                   and not np.all(np.isfinite(np.asarray(v.numpy(), np.float32)))]
    for layer, _, outs in records:
        nan, inf = _counts(outs)
        if nan or inf:
            rep = {"direction": "forward", **_layer_info(layer), "where": "output",
                   "nan": nan, "inf": inf}
            if bad_weights:
                rep["nonfinite_weights"] = bad_weights
            return rep
    nan, inf = _counts([loss])
    if nan or inf:
        return {"direction": "forward", "layer": "<loss>", "layer_class": "loss",
                "where": "loss value", "nan": nan, "inf": inf}

    for layer, ins, outs in reversed(records):
        weights = list(layer.trainable_weights)
        grads = tape.gradient(loss, outs + ins + weights,
                              unconnected_gradients=tf.UnconnectedGradients.NONE)
        g_out = grads[:len(outs)]
        g_in = grads[len(outs):len(outs) + len(ins)]
        g_w = grads[len(outs) + len(ins):]
        if sum(_counts(g_out)) == 0:
            n_in, i_in = _counts(g_in)
            n_w, i_w = _counts(g_w)
            if n_in + i_in + n_w + i_w:
                where = "gradient of inputs" if n_in + i_in else "gradient of weights"
                return {"direction": "backward", **_layer_info(layer), "where": where,
                        "nan": n_in + n_w, "inf": i_in + i_w}
        else:
            # the loss gradient reaching the last layer is already non-finite
            nan, inf = _counts(g_out)
            return {"direction": "backward", "layer": "<loss>", "layer_class": "loss",
                    "where": f"gradient of the loss w.r.t. the output of {layer.name}",
                    "nan": nan, "inf": inf}
    del tape
    return {"direction": "none", "layer": None, "layer_class": None,
            "where": "not reproduced when the batch was re-run eagerly", "nan": 0, "inf": 0}
