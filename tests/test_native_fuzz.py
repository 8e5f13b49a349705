"""Every raw fused-kernel op, called with mismatched ranks, shapes, dtypes and attributes, gets
an error naming the op, never a crash or a value read out of bounds.

Run as a script (``python tests/test_native_fuzz.py``) it calls the ops of the library
`safeops.native` loads and exits non-zero on a wrong outcome; `make native-asan` runs it on
an AddressSanitizer build, where an out-of-bounds read aborts. The test below runs it in a
fresh process, so a crash fails the test instead of killing pytest.
"""

import os
import subprocess
import sys

import numpy as np

_OPS = ("SafeopsCompensatedSum", "SafeopsCompensatedCumsum", "SafeopsWidenAssignAdd",
        "SafeopsSoftmax", "SafeopsSoftmaxGrad", "SafeopsSoftplus", "SafeopsExactSum",
        "SafeopsWideMatmul", "SafeopsKahanAssignAdd", "SafeopsExactSegmentSum")
_OPS += ("SafeopsConv2DFloat64", "SafeopsConv2DFilterGradFloat64", "SafeopsMaxPoolGradFloat64")
_OPS += ("SafeopsProfileSweep",)


def _fuzz(seed=0, random_cases=400):  # noqa: C901  (one table of cases)
    import tensorflow as tf  # noqa: PLC0415

    from safeops import native  # noqa: PLC0415

    lib = native.library()
    assert lib is not None, f"kernels not loaded: {native.status()['error']}"
    rng = np.random.default_rng(seed)
    allowed = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, TypeError, ValueError)
    tally = {"ok": 0, "rejected": 0}

    def t(shape, dtype=tf.float32):
        return tf.constant(rng.standard_normal(shape), dtype)

    def expect(op, fn, ok, args=""):
        """ok: True (must run), False (must raise, naming op), None (either)."""
        try:
            out = fn()
            for o in tf.nest.flatten(out):
                if o is not None and o.shape.num_elements():
                    np.asarray(o)  # reads the whole output
        except allowed as err:
            assert ok is not True, f"{op}({args}) raised {err!r}"
            text = str(err)
            if isinstance(err, tf.errors.OpError):  # from TF's op checks or the kernel's
                assert op in text, (op, args, text)
            else:  # from the generated Python wrapper, before any kernel runs
                assert "argument" in text.lower() or "attr" in text.lower(), (op, args, text)
            tally["rejected"] += 1
            return
        assert ok is not False, f"{op}({args}) should have been rejected"
        tally["ok"] += 1

    softmax = lambda x, kind: lib.safeops_softmax(x, kind=kind)  # noqa: E731
    grad = lambda g, x, y, s, kind: lib.safeops_softmax_grad(g, x, y, s, kind=kind)  # noqa: E731

    # the reported out-of-bounds read, and near-valid shapes for every input of the backward
    expect("SafeopsSoftmaxGrad", lambda: grad(tf.ones([1, 1]), tf.zeros([2, 1000]), tf.ones([1, 1]),
                                              tf.zeros([1, 2], tf.float64), "softmax"), False)
    expect("SafeopsSoftmaxGrad", lambda: grad(tf.ones([1]), tf.zeros([1]), tf.ones([1]),
                                              tf.zeros([1, 2], tf.float64), "softmax"), False)
    for kind in ("softmax", "log_softmax", "logsumexp"):
        rows, n = 3, 37
        good = [t([rows, n if kind != "logsumexp" else 1]), t([rows, n]),
                t([rows, n if kind != "logsumexp" else 1]), t([rows, 2], tf.float64)]
        expect("SafeopsSoftmaxGrad", lambda: grad(*good, kind), True)
        for i in range(4):
            base = good[i].shape.as_list()
            for shape in ([base[0] + 1, base[1]], [base[0] - 1, base[1]], [base[0], base[1] + 1],
                          [base[0], base[1] - 1], [base[0], base[1] * 1000], base[:1],
                          base + [1], [], [0, base[1]]):
                bad = list(good)
                bad[i] = t(shape, good[i].dtype)
                # logsumexp's g, y and stats do not depend on n: x may have any row length
                free = kind == "logsumexp" and i == 1 and len(shape) == 2 and shape[0] == rows
                expect("SafeopsSoftmaxGrad", lambda: grad(*bad, kind), True if free else False,
                       f"{kind} {i} {shape}")
            wrong = list(good)
            wrong[i] = tf.cast(good[i], tf.float64 if i < 3 else tf.float32)
            expect("SafeopsSoftmaxGrad", lambda: grad(*wrong, kind), False, f"{i} dtype")
        for shape in ([rows, n], [0, n], [rows, 0], [0, 0], [1, 1]):
            expect("SafeopsSoftmax", lambda: softmax(t(shape), kind), True, shape)
        for shape in ([], [n], [2, 3, 4]):
            expect("SafeopsSoftmax", lambda: softmax(t(shape), kind), False, shape)
        # empty rows, but [rows, 2] statistics overflow: an error, not an abort
        expect("SafeopsSoftmax", lambda: softmax(tf.zeros([2**62, 0]), kind), False, "huge")
        expect("SafeopsSoftmaxGrad", lambda: grad(tf.zeros([2**62, 0]), tf.zeros([2**62, 0]),
                                                  tf.zeros([2**62, 0]), tf.zeros([1, 2], tf.float64),
                                                  kind), False, "huge")
        expect("SafeopsSoftmax", lambda: softmax(t([2, 3], tf.float64), kind), False, "float64")
    # statistics whose row max is not in the row (a crafted call): no top entry is read or
    # written past the row, every entry gets the plain g - p sum(g)
    for n in (1, 5, 16, 33):
        x, g = t([2, n]), t([2, n])
        stats = tf.constant([[1e3, 0.5], [-2.5, 1.0]], tf.float64)
        expect("SafeopsSoftmaxGrad", lambda: grad(g, x, g, stats, "log_softmax"), True, n)
        assert np.isfinite(grad(g, x, g, stats, "log_softmax").numpy()).all(), n
    for kind in ("log-softmax", "", "SOFTMAX", 3):
        expect("SafeopsSoftmax", lambda: softmax(t([2, 3]), kind), False, kind)
        expect("SafeopsSoftmaxGrad", lambda: grad(t([2, 3]), t([2, 3]), t([2, 3]),
                                                  t([2, 2], tf.float64), kind), False, kind)

    # softplus: element-wise, any float32 shape; other dtypes rejected by the wrapper
    for shape in ([], [0], [1], [3], [2, 3, 4], [0, 5], [1] * 9):
        expect("SafeopsSoftplus", lambda: lib.safeops_softplus(t(shape)), True, shape)
    for dtype in (tf.float64, tf.float16, tf.int32):
        expect("SafeopsSoftplus", lambda: lib.safeops_softplus(t([3], dtype)), False, dtype)

    _fuzz_logistic(lib, expect, np.random.default_rng(seed + 3), random_cases)  # own stream
    _fuzz_quant(lib, expect, np.random.default_rng(seed + 5), random_cases)  # own stream
    _fuzz_log_expm1(lib, expect, np.random.default_rng(seed + 7), random_cases)  # own stream

    # the reductions: rank 3 [outer, n, inner] or rank 1 [n] only, float32/float64 only
    for op, fn in (("SafeopsCompensatedSum", lambda x: lib.safeops_compensated_sum(x, mean=True)),
                   ("SafeopsCompensatedCumsum",
                    lambda x: lib.safeops_compensated_cumsum(x, exclusive=True, reverse=True))):
        for shape in ([2, 3, 4], [0, 3, 4], [2, 0, 4], [2, 3, 0], [1, 70000, 1], [3, 5, 600],
                      [5], [0], [70000]):
            expect(op, lambda: fn(t(shape)), True, shape)
        for shape in ([], [2, 3], [1, 2, 3, 4]):
            expect(op, lambda: fn(t(shape)), False, shape)
        # empty, but [outer, inner] (or the scan's work) would overflow or never end
        expect(op, lambda: fn(tf.zeros([2**40, 0, 2**40])), None, "huge empty")
        for dtype in (tf.float16, tf.bfloat16, tf.int32, tf.complex64):
            expect(op, lambda: fn(tf.zeros([2, 3, 4], dtype)), False, dtype)
    for attrs in ({"mean": "yes"}, {"mean": 1.5}):
        expect("SafeopsCompensatedSum", lambda: lib.safeops_compensated_sum(t([1, 2, 3]), **attrs),
               False, attrs)

    # the accumulator's in-place add: the variable must be an initialised float64 of the shape
    widen = lib.safeops_widen_assign_add
    var = tf.Variable(tf.zeros([4], tf.float64))
    first = t([4])
    expect("SafeopsWidenAssignAdd", lambda: widen(var.handle, first), True)
    np.testing.assert_array_equal(var.numpy(), first.numpy().astype(np.float64))
    for values in (t([5]), t([4, 1]), t([]), t([0])):
        expect("SafeopsWidenAssignAdd", lambda: widen(var.handle, values), False, values.shape)
    for other in (tf.Variable(tf.zeros([4], tf.float32)), tf.Variable(tf.zeros([4], tf.int32))):
        expect("SafeopsWidenAssignAdd", lambda: widen(other.handle, t([4])), False, other.dtype)
    unset = tf.raw_ops.VarHandleOp(dtype=tf.float64, shape=[4], shared_name="safeops_fuzz_unset")
    expect("SafeopsWidenAssignAdd", lambda: widen(unset, t([4])), False, "uninitialised")
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0)
    expect("SafeopsWidenAssignAdd", lambda: widen(table.resource_handle, t([4])), False, "table")
    two = tf.stack([var.handle, var.handle])
    expect("SafeopsWidenAssignAdd", lambda: widen(two, t([4])), False, "two handles")
    expect("SafeopsWidenAssignAdd", lambda: widen(two[:0], t([4])), False, "no handle")
    expect("SafeopsWidenAssignAdd", lambda: widen(var.handle, t([4], tf.float64)), False, "f64")
    # no rejected call changed the variable
    np.testing.assert_array_equal(var.numpy(), first.numpy().astype(np.float64))

    # the optimizer's in-place Kahan update: two initialised variables of delta's dtype and shape
    kahan = lib.safeops_kahan_assign_add
    kw = tf.Variable(tf.ones([4], tf.float32))
    kc = tf.Variable(tf.zeros([4], tf.float32))
    expect(_OPS[8], lambda: kahan(kw.handle, kc.handle, t([4])), True)
    before = (kw.numpy().copy(), kc.numpy().copy())
    for delta in (t([5]), t([4, 1]), t([]), t([0]), t([4], tf.float64)):
        expect(_OPS[8], lambda: kahan(kw.handle, kc.handle, delta), False, delta.shape)
    for other in (tf.Variable(tf.zeros([4], tf.float64)), tf.Variable(tf.zeros([5])),
                  tf.Variable(tf.zeros([4], tf.int32))):
        expect(_OPS[8], lambda: kahan(kw.handle, other.handle, t([4])), False, other.dtype)
        expect(_OPS[8], lambda: kahan(other.handle, kc.handle, t([4])), False, other.dtype)
    expect(_OPS[8], lambda: kahan(kw.handle, kw.handle, t([4])), False, "same variable")
    unset32 = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[4], shared_name="safeops_fuzz_k")
    expect(_OPS[8], lambda: kahan(kw.handle, unset32, t([4])), False, "uninitialised")
    expect(_OPS[8], lambda: kahan(table.resource_handle, kc.handle, t([4])), False, "table")
    pair = tf.stack([kw.handle, kw.handle])
    expect(_OPS[8], lambda: kahan(pair, kc.handle, t([4])), False, "two handles")
    expect(_OPS[8], lambda: kahan(kw.handle, pair[:0], t([4])), False, "no handle")
    # no rejected call changed either variable
    np.testing.assert_array_equal(kw.numpy(), before[0])
    np.testing.assert_array_equal(kc.numpy(), before[1])

    # the segment sums: data [rows, inner], ids [rows] within [0, num) (negative: dropped) and
    # counts [num] equal to each segment's rows; any other call an error naming the op
    segment = lib.safeops_exact_segment_sum
    seg_rng = np.random.default_rng(seed + 1)  # its own stream: the cases above stay as they were

    def st(shape, dtype=tf.float32):
        return tf.constant(seg_rng.standard_normal(shape), dtype)

    def counts(ids, num):
        ids = np.asarray(ids)
        return tf.constant(np.bincount(ids[ids >= 0], minlength=num)[:num], tf.int32)

    for rows, inner, num in ((5, 3, 4), (0, 3, 2), (5, 0, 2), (3, 2, 0), (70, 33, 5)):
        ids = np.arange(rows) % max(num, 1) if num else -np.ones(rows, np.int64)
        for dtype in (tf.float32, tf.float64, tf.float16, tf.bfloat16):
            expect("SafeopsExactSegmentSum", lambda: segment(
                tf.zeros([rows, inner], dtype), ids, counts(ids, num)), True, (rows, inner, num))
    ids4, x4 = np.array([0, 1, 1, 2]), st([4, 2])
    dropped = np.array([0, 1, 1, -2 ** 31], np.int32)
    for args, ok in (((x4, dropped, counts(dropped, 2)), True), ((x4, ids4, counts(ids4, 4)), True),
                     ((st([4]), ids4, counts(ids4, 3)), False),
                     ((st([4, 2, 1]), ids4, counts(ids4, 3)), False),
                     ((st([5, 2]), ids4, counts(ids4, 3)), False),
                     ((st([3, 2]), ids4, counts(ids4, 3)), False),
                     ((x4, ids4[None], counts(ids4, 3)), False),
                     ((x4, np.int64(0), counts(ids4, 3)), False),
                     ((x4, ids4, tf.constant(3)), False),
                     ((x4, ids4, counts(ids4, 3)[None]), False),
                     ((x4, np.array([0, 1, 3, 2]), counts(ids4, 3)), False),
                     ((x4, np.array([0, 1, 1, 2 ** 40]), counts(ids4, 3)), False),
                     ((x4, dropped, counts(ids4, 3)), False), ((x4, ids4, counts(ids4, 2)), False),
                     ((x4, ids4, tf.constant([1, 2, 0], tf.int32)), False),
                     ((x4, ids4, counts(ids4, 0)), False),
                     ((tf.zeros([0, 2 ** 40]), np.zeros([0], np.int32),
                       tf.zeros([2 ** 23], tf.int32)), False)):
        expect("SafeopsExactSegmentSum", lambda: segment(*args), ok, [np.shape(a) for a in args])
    for dtype in (tf.int32, tf.complex64):
        expect("SafeopsExactSegmentSum", lambda: segment(tf.zeros([4, 2], dtype), ids4,
                                                         counts(ids4, 3)), False, dtype)
    expect("SafeopsExactSegmentSum", lambda: segment(x4, ids4.astype(np.float32),
                                                     counts(ids4, 3)), False, "float ids")
    expect("SafeopsExactSegmentSum", lambda: segment(x4, ids4, tf.constant([1, 2, 1], tf.int64)),
           False, "int64 counts")
    expect("SafeopsExactSegmentSum", lambda: segment(x4, ids4, counts(ids4, 3), mean="no"), False,
           "mean")

    # graphs with unknown shapes: the shape functions cannot see the mismatch, the kernels must
    spec = tf.TensorSpec(None, tf.float32)
    gfun = tf.function(lambda g, x, y, s: grad(g, x, y, s, "softmax"), input_signature=[
        spec, spec, spec, tf.TensorSpec(None, tf.float64)])
    expect("SafeopsSoftmaxGrad", lambda: gfun(tf.ones([1, 1]), tf.zeros([2, 1000]), tf.ones([1, 1]),
                                              tf.zeros([1, 2], tf.float64)), False, "graph")
    sfun = tf.function(lambda x: lib.safeops_compensated_sum(x), input_signature=[spec])
    expect("SafeopsCompensatedSum", lambda: sfun(tf.ones([4, 4])), False, "graph")
    gseg = tf.function(lambda x, i, c: segment(x, i, c), input_signature=[
        spec, tf.TensorSpec(None, tf.int64), tf.TensorSpec(None, tf.int32)])
    for args in ((x4, ids4[:3], counts(ids4, 3)), (st([4]), ids4, counts(ids4, 3)),
                 (x4, ids4, tf.constant(3))):
        expect("SafeopsExactSegmentSum", lambda: gseg(*args), False, "graph")

    # random calls: any rank, shape and dtype for every input, any attribute value
    dtypes = (tf.float32, tf.float32, tf.float64, tf.float16, tf.int32)

    def anything():
        rank = int(rng.integers(0, 5))
        shape = [int(rng.choice([0, 1, 2, 3, 7, 40])) for _ in range(rank)]
        return t(shape, dtypes[int(rng.integers(len(dtypes)))])

    kinds = ("softmax", "log_softmax", "logsumexp")
    for _ in range(random_cases):
        which = int(rng.integers(9))
        kind = kinds[int(rng.integers(3))]
        flag = bool(rng.integers(2))
        args = [anything() for _ in range(4)]
        shapes = [a.shape.as_list() for a in args]
        if which == 0:
            expect(_OPS[0], lambda: lib.safeops_compensated_sum(args[0], mean=flag), None, shapes)
        elif which == 1:
            expect(_OPS[1], lambda: lib.safeops_compensated_cumsum(args[0], reverse=flag), None,
                   shapes)
        elif which == 2:
            expect(_OPS[2], lambda: widen(var.handle, args[0]), None, shapes)
        elif which == 3:
            expect(_OPS[3], lambda: softmax(args[0], kind), None, shapes)
        elif which == 4:
            expect(_OPS[4], lambda: grad(*args, kind), None, shapes)
        elif which == 5:
            expect(_OPS[6], lambda: lib.safeops_exact_sum(args[0], mean=flag), None, shapes)
        elif which == 7:
            expect(_OPS[8], lambda: kahan(kw.handle, kc.handle, args[0]), None, shapes)
        else:
            expect(_OPS[7], lambda: lib.safeops_wide_matmul(args[0], args[1], transpose_a=flag),
                   None, shapes)
    # random calls of the segment sum: any data, ids of any shape (mostly integers in and
    # around the range), counts of any length (half of them right for rank-1 ids)
    def any_tensor():
        shape = [int(seg_rng.choice([0, 1, 2, 3, 7, 40])) for _ in range(int(seg_rng.integers(5)))]
        return st(shape, dtypes[int(seg_rng.integers(len(dtypes)))])

    for _ in range(random_cases // 2):
        flag = bool(seg_rng.integers(2))
        data = any_tensor()
        if seg_rng.integers(3) == 0:
            ids = any_tensor()
        else:
            rank = int(seg_rng.integers(3))
            shape = [int(seg_rng.choice([0, 1, 2, 3, 7, 40])) for _ in range(rank)]
            ids = tf.constant(seg_rng.integers(-3, 9, shape),
                              tf.int32 if seg_rng.integers(2) else tf.int64)
        cnt = tf.constant(seg_rng.integers(0, 4, int(seg_rng.choice([0, 1, 3, 8]))), tf.int32)
        if seg_rng.integers(2) and ids.dtype.is_integer and ids.shape.rank == 1:
            cnt = counts(ids.numpy(), int(seg_rng.integers(0, 10)))
        expect("SafeopsExactSegmentSum", lambda: segment(data, ids, cnt, mean=flag), None,
               [data.shape.as_list(), ids.shape.as_list(), cnt.shape.as_list()])
    _fuzz_profile_sweep(lib, expect, t, np.random.default_rng(seed + 2), random_cases)
    _fuzz_doctor_kernels(lib, expect, t, np.random.default_rng(seed + 3), random_cases)
    return tally


def _fuzz_profile_sweep(lib, expect, t, rng, random_cases):
    """The profiler's statistics op: a reference, scalars and a list of compared tensors."""
    import tensorflow as tf  # noqa: PLC0415

    op = "SafeopsProfileSweep"
    f64 = lambda v: tf.constant(v, tf.float64)  # noqa: E731
    sweep = lambda r, ys, down=f64(2.0 ** -11), tiny=f64(1e-5), div=f64(1.0): (  # noqa: E731
        lib.safeops_profile_sweep(r, down, tiny, div, ys))
    r = t([37], tf.float64)
    good = [t([37], tf.float16), t([37], tf.bfloat16), t([37]), t([37], tf.float64)]
    expect(op, lambda: sweep(r, good), True)
    expect(op, lambda: sweep(t([0], tf.float64), [t([0], tf.float16)]), True)
    expect(op, lambda: sweep(t([37, 1], tf.float64), good), False, "rank 2 r")
    expect(op, lambda: sweep(r, [t([36])]), False, "short y")
    expect(op, lambda: sweep(r, [t([38])]), False, "long y")
    expect(op, lambda: sweep(r, [t([37, 1])]), True, "y of any shape with r's size")
    expect(op, lambda: sweep(r, [t([37], tf.int32)]), False, "int y")
    expect(op, lambda: sweep(r, [t([37])] * 9), False, "nine ys")
    expect(op, lambda: sweep(t([37]), [t([37])]), False, "float32 r")
    expect(op, lambda: sweep(r, good[:1], down=f64([0.5])), False, "vector down")
    for bad in (0.0, -1.0, 2.0, np.nan, 2.0 ** -1070):
        expect(op, lambda: sweep(r, good[:1], down=f64(bad)), False, f"down {bad}")
    for bad in (0.0, -2.0, np.inf, np.nan):
        expect(op, lambda: sweep(r, good[:1], div=f64(bad)), False, f"divisor {bad}")
    spec = tf.TensorSpec(None, tf.float64)
    gfun = tf.function(lambda r, y: sweep(r, [y]), input_signature=[spec, tf.TensorSpec(None, tf.float32)])
    expect(op, lambda: gfun(r, t([5])), False, "graph")
    expect(op, lambda: gfun(t([2, 2], tf.float64), t([4])), False, "graph rank")
    dtypes = (tf.float64, tf.float32, tf.float16, tf.bfloat16, tf.int32)
    for _ in range(random_cases // 4):
        n = int(rng.choice([0, 1, 7, 8, 9, 40]))
        ys = [t([int(rng.choice([n, n, 0, 1, 9]))], dtypes[int(rng.integers(len(dtypes)))])
              for _ in range(int(rng.integers(1, 4)))]
        expect(op, lambda: sweep(t([n], tf.float64), ys), None, [n] + [y.shape for y in ys])


def _fuzz_doctor_kernels(lib, expect, t, rng, random_cases):  # noqa: C901  (one table)
    """The profiler's float64 convolution, its filter gradient and the max-pool gradient:
    rank-4 float64 NHWC tensors, paddings in [0, k - 1], windows and strides from 1."""
    import tensorflow as tf  # noqa: PLC0415

    conv, fgrad, pool = ("SafeopsConv2DFloat64", "SafeopsConv2DFilterGradFloat64",
                         "SafeopsMaxPoolGradFloat64")
    f64 = lambda shape: t(shape, tf.float64)  # noqa: E731
    c = lambda x, k, p=(1, 1, 1, 1): lib.safeops_conv2d_float64(x, k, padding=list(p))  # noqa: E731
    fg = lambda x, g, p=(1, 1, 1, 1): (  # noqa: E731
        lib.safeops_conv2d_filter_grad_float64(x, g, padding=list(p)))
    mp = lambda x, g, k=(2, 2), s=(2, 2), p="VALID": lib.safeops_max_pool_grad_float64(  # noqa: E731
        x, g, ksize=list(k), strides=list(s), padding=p)
    x, k = f64([2, 5, 6, 3]), f64([3, 3, 3, 4])
    for xs, ks, pads, ok in (
            ([2, 5, 6, 3], [3, 3, 3, 4], (1, 1, 1, 1), True),
            ([1, 7, 5, 9], [5, 3, 9, 17], (2, 2, 1, 1), True),
            ([2, 5, 6, 3], [1, 1, 3, 2], (0, 0, 0, 0), True),
            ([1, 1, 1, 1], [3, 3, 1, 2], (2, 2, 2, 2), True),
            ([0, 5, 6, 3], [3, 3, 3, 4], (1, 1, 1, 1), True),
            ([2, 0, 6, 3], [3, 3, 3, 4], (1, 1, 1, 1), True),
            ([2, 5, 0, 3], [3, 3, 3, 4], (2, 2, 2, 2), True),
            ([2, 5, 6, 0], [3, 3, 0, 4], (1, 1, 1, 1), True),
            ([2, 5, 6, 3], [3, 3, 3, 0], (1, 1, 1, 1), True),
            ([2, 5, 6, 3], [1, 1, 3, 2], (1, 0, 0, 0), False),
            ([1, 2, 2, 3], [3, 3, 3, 4], (0, 0, 0, 0), True),
            ([1, 1, 2, 3], [3, 3, 3, 4], (0, 0, 0, 0), False),
            ([2, 5, 6, 3], [3, 3, 4, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [0, 3, 3, 4], (0, 0, 1, 1), False),
            ([2, 5, 6], [3, 3, 3, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3, 1], [3, 3, 3, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [3, 3, 3], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [3, 3, 3, 4], (1, 1, 1), False),
            ([2, 5, 6, 3], [3, 3, 3, 4], (-1, 1, 1, 1), False),
            ([2, 5, 6, 3], [3, 3, 3, 4], (1, 1, 1, 2 ** 40), False),
            ([2, 5, 6, 3], [3, 3, 3, 4], (3, 1, 1, 1), False)):
        expect(conv, lambda: c(f64(xs), f64(ks), pads), ok, (xs, ks, pads))
    expect(conv, lambda: c(t([2, 5, 6, 3]), k), False, "float32 input")
    expect(conv, lambda: c(x, tf.cast(k, tf.float32)), False, "float32 filter")
    # empty, but dimensions past 2^31 or an output past 2^40 elements: an error, not an abort
    expect(conv, lambda: c(tf.zeros([2 ** 33, 1, 1, 0], tf.float64), tf.zeros([1, 1, 0, 1],
                                                                             tf.float64), (0,) * 4),
           False, "huge batch")
    expect(conv, lambda: c(tf.zeros([1, 2 ** 30, 2 ** 30, 0], tf.float64),
                           tf.zeros([1, 1, 0, 5], tf.float64), (0,) * 4), False, "huge output")
    expect(conv, lambda: c(tf.zeros([1, 4, 4, 0], tf.float64),
                           tf.zeros([2 ** 31 - 1, 2 ** 31 - 1, 0, 8], tf.float64),
                           (2 ** 30,) * 4), True, "huge empty filter: zeros")

    g = f64([2, 5, 6, 4])
    for xs, gs, pads, ok in (
            ([2, 5, 6, 3], [2, 5, 6, 4], (1, 1, 1, 1), True),
            ([1, 9, 5, 3], [1, 9, 5, 17], (2, 2, 1, 1), True),
            ([2, 5, 6, 3], [2, 5, 6, 4], (0, 0, 0, 0), True),
            ([2, 5, 6, 3], [2, 1, 1, 4], (0, 0, 0, 0), True),
            ([0, 5, 6, 3], [0, 5, 6, 4], (1, 1, 1, 1), True),
            ([2, 5, 6, 0], [2, 5, 6, 4], (1, 1, 1, 1), True),
            ([2, 5, 6, 3], [2, 5, 6, 0], (1, 1, 1, 1), True),
            ([2, 0, 6, 3], [2, 0, 6, 4], (1, 1, 1, 1), True),
            ([2, 5, 6, 3], [3, 5, 6, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [2, 9, 6, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [2, 7, 8, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [2, 5, 6], (1, 1, 1, 1), False),
            ([2, 5, 6], [2, 5, 6, 4], (1, 1, 1, 1), False),
            ([2, 5, 6, 3], [2, 5, 6, 4], (1, 1, -2, 1), False),
            ([2, 5, 6, 3], [2, 5, 6, 4], (2 ** 33, 1, 1, 1), False),
            ([2, 5, 6, 3], [2, 5, 6, 4], (1, 1), False)):
        expect(fgrad, lambda: fg(f64(xs), f64(gs), pads), ok, (xs, gs, pads))
    expect(fgrad, lambda: fg(t([2, 5, 6, 3]), g), False, "float32 input")
    expect(fgrad, lambda: fg(tf.zeros([1, 2 ** 30, 1, 0], tf.float64),
                             tf.zeros([1, 1, 1, 2 ** 30], tf.float64), (0,) * 4), True,
           "huge empty filter")
    expect(fgrad, lambda: fg(tf.zeros([1, 2 ** 21, 1, 1], tf.float64),
                             tf.zeros([1, 1, 1, 2 ** 20], tf.float64), (0,) * 4), False,
           "filter past 2^40 elements")

    for xs, gs, ksize, strides, padding, ok in (
            ([2, 6, 6, 3], [2, 3, 3, 3], (2, 2), (2, 2), "VALID", True),
            ([2, 7, 9, 17], [2, 4, 5, 17], (3, 3), (2, 2), "SAME", True),
            ([2, 7, 9, 17], [2, 3, 4, 17], (3, 3), (2, 2), "VALID", True),
            ([1, 5, 5, 2], [1, 5, 5, 2], (3, 3), (1, 1), "SAME", True),
            ([1, 1, 1, 1], [1, 1, 1, 1], (9, 9), (5, 5), "SAME", True),
            ([0, 6, 6, 3], [0, 3, 3, 3], (2, 2), (2, 2), "VALID", True),
            ([2, 6, 6, 0], [2, 3, 3, 0], (2, 2), (2, 2), "VALID", True),
            ([2, 0, 6, 3], [2, 0, 3, 3], (2, 2), (2, 2), "SAME", True),
            ([2, 6, 6, 3], [2, 3, 3, 2], (2, 2), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 4, 3], (2, 2), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [1, 3, 3, 3], (2, 2), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 3], (2, 2), (2, 2), "VALID", False),
            ([2, 6, 6], [2, 3, 3, 3], (2, 2), (2, 2), "VALID", False),
            ([2, 1, 1, 3], [2, 0, 0, 3], (2, 2), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (0, 2), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (2, 2), (2, 0), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (2, 2, 1), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (2,), (2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (2, 2), (-2, 2), "VALID", False),
            ([2, 6, 6, 3], [2, 1, 1, 3], (2 ** 40, 2), (2, 2), "SAME", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (2, 2), (2, 2), "EXPLICIT", False),
            ([2, 6, 6, 3], [2, 3, 3, 3], (2, 2), (2, 2), "same", False)):
        expect(pool, lambda: mp(f64(xs), f64(gs), ksize, strides, padding), ok,
               (xs, gs, ksize, strides, padding))
    expect(pool, lambda: mp(t([2, 6, 6, 3]), f64([2, 3, 3, 3])), False, "float32 input")
    expect(pool, lambda: mp(tf.zeros([2 ** 33, 2, 2, 0], tf.float64),
                            tf.zeros([2 ** 33, 1, 1, 0], tf.float64)), False, "huge batch")

    # graphs with unknown shapes: the shape functions cannot see the mismatch, the kernels must
    spec = tf.TensorSpec(None, tf.float64)
    gconv = tf.function(lambda a, b: c(a, b), input_signature=[spec, spec])
    expect(conv, lambda: gconv(x, f64([3, 3, 4, 4])), False, "graph")
    gfg = tf.function(lambda a, b: fg(a, b), input_signature=[spec, spec])
    expect(fgrad, lambda: gfg(x, f64([2, 9, 6, 4])), False, "graph")
    gmp = tf.function(lambda a, b: mp(a, b), input_signature=[spec, spec])
    expect(pool, lambda: gmp(f64([2, 6, 6, 3]), f64([2, 3, 2, 3])), False, "graph")

    # random calls: any rank and shape, paddings, windows and strides in and around the range
    dims = (0, 1, 2, 3, 7)
    dtypes = (tf.float64, tf.float64, tf.float64, tf.float32)

    def any_tensor():
        rank = int(rng.choice([3, 4, 4, 4, 5]))
        shape = [int(rng.choice(dims)) for _ in range(rank)]
        return tf.constant(rng.standard_normal(shape), dtypes[int(rng.integers(len(dtypes)))])

    for _ in range(random_cases // 2):
        a, b = any_tensor(), any_tensor()
        pads = [int(rng.choice([-1, 0, 0, 1, 2, 3, 2 ** 31])) for _ in range(4)]
        shapes = [a.shape.as_list(), b.shape.as_list()]
        which = int(rng.integers(3))
        if which == 0:
            expect(conv, lambda: c(a, b, pads), None, shapes + [pads])
        elif which == 1:
            expect(fgrad, lambda: fg(a, b, pads), None, shapes + [pads])
        else:
            ksize = [int(rng.choice([0, 1, 2, 3, 9])) for _ in range(2)]
            strides = [int(rng.choice([0, 1, 2, 3])) for _ in range(2)]
            padding = "SAME" if rng.integers(2) else "VALID"
            expect(pool, lambda: mp(a, b, ksize, strides, padding), None,
                   shapes + [ksize, strides, padding])


def test_raw_ops_reject_bad_calls_without_crashing(tmp_path, monkeypatch):
    """The fuzz script in a fresh process (a crash fails here) on a copy of the built library,
    placed in the cache with its hash as a build leaves it: loaded as it is, not rebuilt."""
    import hashlib  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    from test_native_support import (ROOT, calls, copy_compiler, env_for,  # noqa: PLC0415
                                     prebuilt_library, target_name)
    log = tmp_path / "cxx.log"
    cxx = copy_compiler(tmp_path, prebuilt_library(), log)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    name = target_name(cxx, monkeypatch)
    shutil.copy(prebuilt_library(), cache / name)
    digest = hashlib.sha256((cache / name).read_bytes()).hexdigest()
    (cache / f"{name}.sha256").write_text(digest + "\n")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env_for(cache, cxx),
                          capture_output=True, text=True, check=False, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "fuzz: ok" in proc.stdout
    assert calls(log) == 0


def test_every_registered_op_is_fuzzed_and_documented():
    """Each REGISTER_OP of the kernel sources is in this fuzz table and in docs/native.md's
    list of the ops a traced graph may reference."""
    import glob  # noqa: PLC0415
    import re  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    registered = set()
    for path in glob.glob(os.path.join(root, "safeops", "native", "*.cc")):
        with open(path) as f:
            registered |= set(re.findall(r'REGISTER_OP\("(\w+)"\)', f.read()))
    with open(os.path.join(root, "docs", "native.md")) as f:
        documented = set(re.findall(r"`(Safeops\w+)`", f.read()))
    assert registered == set(_OPS)
    assert registered <= documented, registered - documented


_OPS += ("SafeopsLogistic", "SafeopsLogisticGrad", "SafeopsLogExpm1", "SafeopsLogExpm1Grad")


def _fuzz_kind_pair(expect, rng, random_cases, op, fwd, bwd, kinds, bad_kinds, t, dtypes):
    """An element-wise forward/backward pair chosen by its `kind` attribute (`op` and `op`Grad,
    called as ``fwd(x, kind)`` and ``bwd(g, x, kind)``): any shape of each of `dtypes` runs;
    every other dtype, g and x of different shapes or dtypes (also in graphs of unknown
    shapes, where only the kernel can see it) and any other kind are rejected. `t(shape,
    dtype)` makes an input."""
    import tensorflow as tf  # noqa: PLC0415

    grad_op = op + "Grad"
    for kind in kinds:
        for dtype in dtypes:
            for shape in ([], [0], [1], [7], [8], [9], [15], [17], [33], [2, 3, 4], [0, 5],
                          [1] * 9):
                expect(op, lambda: fwd(t(shape, dtype), kind), True, shape)
                expect(grad_op, lambda: bwd(t(shape, dtype), t(shape, dtype), kind), True, shape)
    for dtype in {tf.float64, tf.float16, tf.bfloat16, tf.int32, tf.complex64} - set(dtypes):
        expect(op, lambda: fwd(tf.zeros([3], dtype), kinds[0]), False, dtype)
        expect(grad_op, lambda: bwd(tf.zeros([3], dtype), tf.zeros([3], dtype), kinds[0]),
               False, dtype)
    expect(grad_op, lambda: bwd(t([3]), t([3], tf.float64), kinds[0]), False, "mixed dtypes")
    for gs, xs in (([3], [4]), ([4], [3]), ([3], [3, 1]), ([], [3]), ([3], []), ([0], [3]),
                   ([3], [0]), ([2, 3], [3, 2]), ([6], [2, 3])):
        expect(grad_op, lambda: bwd(t(gs), t(xs), kinds[0]), False, (gs, xs))
    for kind in bad_kinds:
        expect(op, lambda: fwd(t([3]), kind), False, kind)
        expect(grad_op, lambda: bwd(t([3]), t([3]), kind), False, kind)
    spec = tf.TensorSpec(None, tf.float32)
    gfun = tf.function(lambda g, x: bwd(g, x, kinds[0]), input_signature=[spec, spec])
    for gs, xs in (([3], [4]), ([1], [1000]), ([1000], [1]), ([2, 3], [3, 2])):
        expect(grad_op, lambda: gfun(t(gs), t(xs)), False, ("graph", gs, xs))
    mixed = (tf.float32, tf.float64, tf.float16, tf.int32)
    for _ in range(random_cases // 4):
        shapes = [[int(rng.choice([0, 1, 3, 8, 16, 17])) for _ in range(int(rng.integers(3)))]
                  for _ in range(2)]
        args = [t(s, mixed[int(rng.integers(len(mixed)))]) for s in shapes]
        kind = kinds[int(rng.integers(len(kinds)))]
        expect(op, lambda: fwd(args[0], kind), None, shapes)
        expect(grad_op, lambda: bwd(*args, kind), None, shapes)


def _fuzz_logistic(lib, expect, rng, random_cases):
    """softplus / log_sigmoid of graphs: float32 or float64 of any shape."""
    import tensorflow as tf  # noqa: PLC0415

    def t(shape, dtype=tf.float32):
        return tf.constant(rng.standard_normal(shape), dtype)

    _fuzz_kind_pair(expect, rng, random_cases, "SafeopsLogistic",
                    lambda x, kind: lib.safeops_logistic(x, kind=kind),
                    lambda g, x, kind: lib.safeops_logistic_grad(g, x, kind=kind),
                    ("softplus", "log_sigmoid"), ("sigmoid", "", "SOFTPLUS", "log-sigmoid", 1),
                    t, (tf.float32, tf.float64))


def _fuzz_log_expm1(lib, expect, rng, random_cases):
    """softplus_inverse / log1mexp: float32 of any shape, values of every sign and size (the
    non-finite ones included)."""
    import tensorflow as tf  # noqa: PLC0415

    def t(shape, dtype=tf.float32):
        if not dtype.is_floating:
            return tf.constant(rng.integers(-5, 5, shape), dtype)
        with np.errstate(over="ignore"):
            v = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-40, 40, shape)).astype(
                dtype.as_numpy_dtype)
        if v.size:
            v.flat[rng.integers(v.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.0])
        return tf.constant(v, dtype)

    _fuzz_kind_pair(expect, rng, random_cases, "SafeopsLogExpm1",
                    lambda x, kind: lib.safeops_log_expm1(x, kind=kind),
                    lambda g, x, kind: lib.safeops_log_expm1_grad(g, x, kind=kind),
                    ("softplus_inverse", "log1mexp"),
                    ("softplus", "", "LOG1MEXP", "softplus-inverse", 1), t, (tf.float32,))


_OPS += ("SafeopsFakeQuant", "SafeopsFakeQuantGrad", "SafeopsFakeQuantEma", "SafeopsSymmetricGrid")


def _fuzz_quant(lib, expect, rng, random_cases):  # noqa: C901  (one table of cases)
    """Fake quant: x (and g, of x's shape) float32 of any shape; min and max float32 scalars;
    num_bits in 2..16; narrow_range a bool (false for the moving-average op, whose range_min,
    range_max and seen are float32 scalars and decay / one_minus_decay required floats)."""
    import tensorflow as tf  # noqa: PLC0415

    def t(shape, dtype=tf.float32):
        return tf.constant(rng.standard_normal(shape) * 3, dtype)

    lo, hi = tf.constant(-1.0), tf.constant(2.0)
    fwd = lambda x, a=lo, b=hi, **kw: lib.safeops_fake_quant(x, a, b, **kw)  # noqa: E731
    bwd = lambda g, x, a=lo, b=hi, **kw: lib.safeops_fake_quant_grad(g, x, a, b, **kw)  # noqa: E731
    for shape in ([], [0], [1], [15], [17], [33], [2, 3, 4], [0, 5], [1] * 9):
        for bits in (2, 8, 16):
            for narrow in (False, True):
                kw = dict(num_bits=bits, narrow_range=narrow)
                expect("SafeopsFakeQuant", lambda: fwd(t(shape), **kw), True, (shape, kw))
                expect("SafeopsFakeQuantGrad", lambda: bwd(t(shape), t(shape), **kw), True,
                       (shape, kw))
    for bits in (-1, 0, 1, 17, 32, 2 ** 31 - 1):
        expect("SafeopsFakeQuant", lambda: fwd(t([3]), num_bits=bits), False, bits)
        expect("SafeopsFakeQuantGrad", lambda: bwd(t([3]), t([3]), num_bits=bits), False, bits)
    for bits in (8.0, "8", True, None, 2.5):  # the wrapper's int conversion decides
        expect("SafeopsFakeQuant", lambda: fwd(t([3]), num_bits=bits), None, repr(bits))
    for narrow in ("yes", 2, None):
        expect("SafeopsFakeQuant", lambda: fwd(t([3]), narrow_range=narrow), None, repr(narrow))
    # min / max: scalars of float32 only
    for shape in ([1], [0], [2], [1, 1], [3]):
        for which in (0, 1):
            a, b = (t(shape), hi) if which == 0 else (lo, t(shape))
            expect("SafeopsFakeQuant", lambda: fwd(t([3]), a, b), False, (which, shape))
            expect("SafeopsFakeQuantGrad", lambda: bwd(t([3]), t([3]), a, b), False,
                   (which, shape))
    for dtype in (tf.float64, tf.float16, tf.bfloat16, tf.int32):
        expect("SafeopsFakeQuant", lambda: fwd(t([3], dtype)), False, dtype)
        expect("SafeopsFakeQuant", lambda: fwd(t([3]), t([], dtype), hi), False, ("min", dtype))
        expect("SafeopsFakeQuantGrad", lambda: bwd(t([3], dtype), t([3])), False, ("g", dtype))
        expect("SafeopsFakeQuantGrad", lambda: bwd(t([3]), t([3]), lo, t([], dtype)), False,
               ("max", dtype))
    for gs, xs in (([3], [4]), ([4], [3]), ([3], [3, 1]), ([], [3]), ([3], []), ([0], [3]),
                   ([3], [0]), ([2, 3], [3, 2]), ([6], [2, 3])):
        expect("SafeopsFakeQuantGrad", lambda: bwd(t(gs), t(xs)), False, (gs, xs))
    # graphs with unknown shapes: the shape function cannot see the mismatch, the kernel must
    spec = tf.TensorSpec(None, tf.float32)
    gfwd = tf.function(lambda x, a, b: fwd(x, a, b), input_signature=[spec] * 3)
    gbwd = tf.function(lambda g, x, a, b: bwd(g, x, a, b), input_signature=[spec] * 4)
    for ls, hs in (([1], []), ([], [2]), ([0], [0]), ([1000], [])):
        expect("SafeopsFakeQuant", lambda: gfwd(t([5]), t(ls), t(hs)), False, ("graph", ls, hs))
        expect("SafeopsFakeQuantGrad", lambda: gbwd(t([5]), t([5]), t(ls), t(hs)), False,
               ("graph", ls, hs))
    for gs, xs in (([3], [4]), ([1], [1000]), ([1000], [1]), ([2, 3], [3, 2])):
        expect("SafeopsFakeQuantGrad", lambda: gbwd(t(gs), t(xs), lo, hi), False,
               ("graph", gs, xs))
    expect("SafeopsFakeQuant", lambda: gfwd(t([0, 3]), lo, hi), True, "graph empty")
    for keep in (True, False):  # the moving-average quantizer's gradient
        for shape in ([0], [5], [2, 17]):
            expect("SafeopsFakeQuantGrad", lambda: bwd(t(shape), t(shape), 0.0 * lo, 0.0 * hi,
                                                       keep_nan=keep), True, (shape, keep))
    # the moving-average quantizer: x any float32 shape; range_min, range_max, seen scalars
    ema = lambda x, a=lo, b=hi, s=tf.constant(1.0), **kw: lib.safeops_fake_quant_ema(  # noqa: E731
        x, a, b, s, **{"decay": 0.9, "one_minus_decay": 0.1, **kw})
    for shape in ([], [0], [1], [15], [17], [2, 3, 4], [0, 5], [40000]):
        for seen in (0.0, 1.0):
            expect("SafeopsFakeQuantEma", lambda: ema(t(shape), s=tf.constant(seen)), True,
                   (shape, seen))
    expect("SafeopsFakeQuantEma", lambda: ema(t([4]), num_bits=16, decay=0.0,
                                              one_minus_decay=1.0), True, "attrs")
    for bits in (-1, 0, 1, 17, 2 ** 31 - 1):
        expect("SafeopsFakeQuantEma", lambda: ema(t([3]), num_bits=bits), False, bits)
    expect("SafeopsFakeQuantEma", lambda: ema(t([3]), narrow_range=True), False, "narrow")
    expect("SafeopsFakeQuantEma", lambda: lib.safeops_fake_quant_ema(t([3]), lo, hi, lo),
           False, "no decay")
    for i in range(1, 4):
        for shape in ([1], [0], [2], [1, 1]):
            args = [t([3]), lo, hi, tf.constant(1.0)]
            args[i] = t(shape)
            expect("SafeopsFakeQuantEma", lambda: ema(*args), False, (i, shape))
        for dtype in (tf.float64, tf.int32, tf.float16):
            args = [t([3]), lo, hi, tf.constant(1.0)]
            args[i] = tf.zeros([], dtype)
            expect("SafeopsFakeQuantEma", lambda: ema(*args), False, (i, dtype))
    for dtype in (tf.float64, tf.float16, tf.bfloat16, tf.int32):
        expect("SafeopsFakeQuantEma", lambda: ema(t([3], dtype)), False, ("x", dtype))
    gema = tf.function(lambda x, a, b, s: ema(x, a, b, s), input_signature=[spec] * 4)
    for shapes in (([5], [1], [], []), ([5], [], [2], []), ([5], [], [], [0]),
                   ([5], [], [], [1000])):
        expect("SafeopsFakeQuantEma", lambda: gema(*[t(s) for s in shapes]), False,
               ("graph", shapes))
    expect("SafeopsFakeQuantEma", lambda: gema(t([0, 3]), lo, hi, lo), True, "graph empty")
    # the weight grid: w float32 of rank >= 1
    grid = lambda w, **kw: lib.safeops_symmetric_grid(w, **kw)  # noqa: E731
    for shape in ([1], [0], [15], [17], [2, 3, 4], [0, 5], [5, 0], [3, 40000], [1] * 9):
        for per_channel in (True, False):
            for bits in (2, 8, 16):
                expect("SafeopsSymmetricGrid", lambda: grid(t(shape), num_bits=bits,
                                                            per_channel=per_channel), True,
                       (shape, bits, per_channel))
    expect("SafeopsSymmetricGrid", lambda: grid(t([])), False, "scalar")
    for bits in (-1, 0, 1, 17, 2 ** 31 - 1):
        expect("SafeopsSymmetricGrid", lambda: grid(t([3]), num_bits=bits), False, bits)
    expect("SafeopsSymmetricGrid", lambda: grid(t([3]), narrow_range=True), False, "narrow")
    for dtype in (tf.float64, tf.float16, tf.int32):
        expect("SafeopsSymmetricGrid", lambda: grid(t([3], dtype)), False, dtype)
    ggrid = tf.function(lambda w: grid(w), input_signature=[spec])
    expect("SafeopsSymmetricGrid", lambda: ggrid(t([])), False, "graph scalar")
    expect("SafeopsSymmetricGrid", lambda: ggrid(t([4, 0])), True, "graph empty")
    dtypes = (tf.float32, tf.float32, tf.float64, tf.int32)
    for _ in range(random_cases // 4):
        shapes = [[int(rng.choice([0, 1, 3, 16, 17])) for _ in range(int(rng.integers(3)))]
                  for _ in range(4)]
        args = [t(s, dtypes[int(rng.integers(len(dtypes)))]) for s in shapes]
        bits = int(rng.choice([0, 1, 2, 8, 16, 17]))
        expect("SafeopsFakeQuant", lambda: fwd(*args[1:], num_bits=bits), None, shapes)
        expect("SafeopsFakeQuantGrad", lambda: bwd(*args, num_bits=bits), None, shapes)
        expect("SafeopsFakeQuantEma", lambda: ema(*args, num_bits=bits), None, shapes)
        expect("SafeopsSymmetricGrid", lambda: grid(args[0], num_bits=bits), None, shapes)


def _check_sanitized():
    """Under `make native-asan`: the library loaded must be the instrumented build."""
    from safeops import native  # noqa: PLC0415
    if "address" in os.environ.get("SAFEOPS_NATIVE_SANITIZE", ""):
        with open(native._STATE["path"], "rb") as f:  # noqa: SLF001
            assert b"__asan_report" in f.read(), "the loaded library is not built with ASan"


if __name__ == "__main__":
    counts = _fuzz()
    _check_sanitized()
    print(f"fuzz: ok ({counts['ok']} calls ran, {counts['rejected']} rejected)")
