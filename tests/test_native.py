"""safeops.native: the fused C++ kernels, their fallback, and both paths against exact sums.

Every accuracy check here runs twice: on the fused kernel ("fused") and with
``SAFEOPS_NATIVE=0`` on the pure-TF path ("tf"), so neither path goes untested
while the default run takes the fused one. References are exact: integer
multiples of a power of two (whose float64 prefix sums are exact) or mpmath.
"""

import shutil

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops as so
from safeops import native, testing
from test_native_support import last_lines_per_thread_count


def _has_compiler():
    return native._compiler() is not None  # noqa: SLF001


@pytest.fixture(params=["fused", "tf"])
def path(request, monkeypatch):
    """Run a test on the fused kernel, then on the pure-TF fallback."""
    if request.param == "fused":
        monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
        if native.library() is None:
            if _has_compiler():
                pytest.fail(f"a compiler exists but the kernels did not build: "
                            f"{native.status()['error']}")
            pytest.skip("no C++ compiler: the fused kernels cannot be built here")
    else:
        monkeypatch.setenv("SAFEOPS_NATIVE", "0")
    return request.param


def _op_types(fn, *args, jit_compile=False):
    graph = tf.function(fn, jit_compile=jit_compile).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


def _ulps(actual, expected, dtype):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    return int(np.max(testing.ulp_distance(actual, expected, dtype), initial=0))


def _grid(shape, seed, dtype):
    """Multiples of 2**-10 below 2**3 in magnitude: every partial sum of up to 2**40 of them
    is exact in float64, so float64 NumPy gives the exact sum to compare with."""
    k = np.random.default_rng(seed).integers(-2**13, 2**13, size=shape)
    return (k * 2.0**-10).astype(dtype)


def test_kernels_build_where_a_compiler_exists(monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if not _has_compiler():
        pytest.skip("no C++ compiler")
    assert native.library() is not None, native.status()["error"]
    st = native.status()
    assert st["loaded"] and st["built"] and st["enabled"] and st["error"] is None


def test_graph_uses_kernel_only_where_it_can(monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    x32 = tf.ones([8, 4], tf.float32)
    assert "SafeopsCompensatedSum" in _op_types(so.reduce_sum, x32)
    assert "SafeopsCompensatedSum" in _op_types(so.reduce_mean, tf.ones([8], tf.float64))
    assert "SafeopsCompensatedCumsum" in _op_types(so.cumsum, x32)
    # XLA cannot compile a custom op: the pure-TF path is traced instead
    for fn in (so.reduce_sum, so.reduce_mean, so.cumsum):
        types = _op_types(fn, x32, jit_compile=True)
        assert not {"SafeopsCompensatedSum", "SafeopsCompensatedCumsum"} & types
    # float16 keeps its float32 accumulation path; integers are TF's own op
    assert "SafeopsCompensatedSum" not in _op_types(so.reduce_sum, tf.ones([8], tf.float16))
    assert "SafeopsCompensatedSum" not in _op_types(so.reduce_sum, tf.ones([8], tf.int32))
    monkeypatch.setenv("SAFEOPS_NATIVE", "0")
    assert "SafeopsCompensatedSum" not in _op_types(so.reduce_sum, x32)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,axes", [
    ((3, 5, 7), [None, 0, 1, 2, -1, [0, 1], [1, 2], [0, 2]]),
    ((2, 40003), [None, 1, 0]),          # several 32768-element blocks, ragged tail
    ((37, 1031), [0, 1]),                # columns: two 512-wide chunks and a ragged tail
    ((4, 0, 3), [None, 1, [0, 2]]),      # empty
])
def test_sum_and_mean_exact_on_grid(path, dtype, shape, axes):
    x = _grid(shape, seed=len(shape) + shape[-1], dtype=dtype)
    x64 = x.astype(np.float64)
    for axis in axes:
        for keepdims in (False, True):
            ax = tuple(axis) if isinstance(axis, list) else axis
            exact = np.sum(x64, axis=ax, keepdims=keepdims)  # exact: see _grid
            got = so.reduce_sum(x, axis, keepdims)
            assert got.shape == tf.reduce_sum(x, axis, keepdims).shape
            assert got.dtype == tf.as_dtype(dtype)
            assert _ulps(got, exact.astype(dtype), dtype) == 0, (path, axis, keepdims)
            count = x64.size // max(exact.size, 1) if x64.size else 0
            mean = so.reduce_mean(x, axis, keepdims).numpy()
            if count == 0:
                assert np.all(np.isnan(mean))  # TF: the mean of nothing is NaN
                continue
            # mean = exact sum / n correctly rounded by float64 division, then rounded once
            # more for float32: within 1 ulp (documented: faithful)
            assert _ulps(mean, (exact / count).astype(dtype), dtype) <= 1, (path, axis)


def test_dynamic_shapes(path):
    x = _grid((6, 70001), seed=3, dtype="float32")
    spec = [tf.TensorSpec([None, None], tf.float32)]
    f = tf.function(lambda v: (so.reduce_sum(v, 1), so.reduce_mean(v, 0, keepdims=True),
                               so.cumsum(v, axis=1, reverse=True)), input_signature=spec)
    s, m, c = f(x)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(s.numpy(), x64.sum(1).astype(np.float32))
    assert m.shape == (1, 70001)
    np.testing.assert_array_equal(c.numpy(), np.cumsum(x64[:, ::-1], 1)[:, ::-1].astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_propagate_as_tf(path, dtype):
    big = float(tf.as_dtype(dtype).max)
    rows = [[np.inf, 1.0, 2.0], [np.inf, -np.inf, 0.0], [np.nan, 1.0, 0.0],
            [-np.inf, 1.0, -np.inf], [big, big, -1.0]]
    x = tf.constant(rows, dtype)
    np.testing.assert_array_equal(so.reduce_sum(x, 1).numpy(), tf.reduce_sum(x, 1).numpy())
    mean = so.reduce_mean(x, 1).numpy()
    np.testing.assert_array_equal(mean[:4], tf.reduce_mean(x[:4], 1).numpy())
    if dtype == "float32":  # the float64 accumulation does not overflow where TF's sum does
        assert mean[4] == np.float32((2 * big - 1) / 3) and np.isinf(tf.reduce_mean(x[4]))
    else:
        assert np.isinf(mean[4])
    # prefix by prefix: inf stays inf (the compensation's NaN is dropped), inf - inf is NaN
    v = tf.constant([1.0, np.inf, 1.0, -np.inf, 2.0, np.nan, 1.0], dtype)
    for rev in (False, True):
        for ex in (False, True):
            np.testing.assert_array_equal(so.cumsum(v, exclusive=ex, reverse=rev).numpy(),
                                          tf.cumsum(v, exclusive=ex, reverse=rev).numpy())


@pytest.mark.parametrize("shape,axis", [((3, 70001), 1), ((700, 5), 0), ((2, 9, 523), 1),
                                        ((2, 9, 523), 2), ((0, 4), 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cumsum_exact_on_grid(path, shape, axis, dtype):
    x = _grid(shape, seed=sum(shape), dtype=dtype)
    for rev in (False, True):
        for ex in (False, True):
            v = np.flip(x.astype(np.float64), axis) if rev else x.astype(np.float64)
            ref = np.cumsum(v, axis=axis)  # exact, see _grid
            if ex:
                ref = np.concatenate([np.zeros_like(np.take(ref, [0], axis)),
                                      np.delete(ref, -1, axis)], axis) if ref.size else ref
            ref = np.flip(ref, axis) if rev else ref
            got = so.cumsum(x, axis=axis, exclusive=ex, reverse=rev)
            np.testing.assert_array_equal(got.numpy(), ref.astype(dtype), err_msg=str((rev, ex)))


def _exact_prefixes(x, dtype):
    """Every prefix of x summed exactly (integers scaled by 2**-1100), rounded once."""
    scaled = [int(mpmath.ldexp(mpmath.mpf(float(t)), 1100)) for t in x]
    run, out = 0, []
    for k in scaled:
        run += k
        out.append(mpmath.ldexp(mpmath.mpf(run), -1100))
    with mpmath.workprec(4000):
        return testing.round_to_dtype(np.array(out, dtype=object), dtype)


def test_cumsum_ill_conditioned_across_blocks(path):
    # 70 000 elements: three kernel blocks, so the block offsets (double-words) are exercised
    x, _, cond = testing.ill_conditioned_sum(70000, 1e8, "float32", seed=7)
    assert cond > 5e7
    for rev in (False, True):
        ref = _exact_prefixes(x[::-1] if rev else x, "float32")
        ref = ref[::-1] if rev else ref
        # documented: every prefix within 1 ulp for prefix condition up to 1e8
        assert _ulps(so.cumsum(x, reverse=rev), ref, "float32") <= 1, rev
    assert _ulps(tf.cumsum(x), _exact_prefixes(x, "float32"), "float32") > 1


@pytest.mark.parametrize("n,cond", [(70000, 1e16), (70000, 1e24)])
def test_float64_sum2_bound(path, n, cond):
    x, exact, _ = testing.ill_conditioned_sum(n, cond, "float64", seed=8)
    abs_sum = float(testing.exact_sum(np.abs(x)))
    u = 2.0**-53
    gamma = (n - 1) * u / (1 - (n - 1) * u)
    # Sum2's bound (Ogita, Rump and Oishi 2005) u|s| + gamma_{n-1}^2 sum|x|, plus u|s| for the float64 reference
    bound = 2 * u * abs(exact) + gamma**2 * abs_sum
    assert abs(float(so.reduce_sum(x)) - exact) <= bound
    assert abs(float(tf.reduce_sum(x)) - exact) > bound


@pytest.mark.parametrize("fn", [
    lambda v: so.reduce_sum(v, 1),
    lambda v: so.reduce_mean(v, [0, 2], keepdims=True),
    lambda v: so.reduce_sum(v, [0, 2]),
    lambda v: so.cumsum(v, axis=1, exclusive=True, reverse=True),
    lambda v: so.cumsum(v, axis=2),
])
def test_gradients_match_finite_differences(path, fn):
    x = np.random.default_rng(9).standard_normal((3, 4, 5))
    assert testing.check_gradients(fn, x) < 1e-7  # central differences, float64


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_accumulator_paths_agree(monkeypatch, dtype):
    """The fused in-place add does exactly what assign_add(cast(v, float64)) does."""
    rng = np.random.default_rng(10)
    incs = [tf.constant(rng.standard_normal(5) * 10.0**rng.integers(-6, 3), dtype)
            for _ in range(50)]
    totals = {}
    for mode in ("fused", "tf"):
        if mode == "tf":
            monkeypatch.setenv("SAFEOPS_NATIVE", "0")
        acc = so.KahanAccumulator([5], dtype)
        step = tf.function(acc.add)
        for i, v in enumerate(incs):
            (acc.add if i % 2 else step)(v)
        acc.add(tf.constant(1.0, dtype))  # a scalar broadcast to the shape
        totals[mode] = acc._sum.numpy()  # noqa: SLF001
    exact = sum(v.numpy().astype(np.float64) for v in incs) + 1.0  # float64 sums, same order
    np.testing.assert_array_equal(totals["fused"], totals["tf"])
    np.testing.assert_allclose(totals["fused"], exact, rtol=1e-12)


def test_accumulator_add_does_not_change_a_held_value(monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    acc = so.KahanAccumulator([4])
    acc.add(tf.ones([4]))
    held = acc._sum.read_value()  # noqa: SLF001  (shares the variable's buffer)
    acc.add(tf.ones([4]))
    np.testing.assert_array_equal(held.numpy(), np.ones(4))  # copy on write
    np.testing.assert_array_equal(acc.value().numpy(), np.full(4, 2.0, np.float32))


def test_fallback_when_the_build_fails(monkeypatch, tmp_path):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    monkeypatch.setenv("SAFEOPS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: None)
    for key, value in {"lib": None, "path": None, "error": None, "tried": False,
                       "rebuilt": False, "warned": False}.items():
        monkeypatch.setitem(native._STATE, key, value)  # noqa: SLF001
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as caught:
        assert native.library() is None
        assert native.library() is None
    assert len(caught) == 1  # once per process
    assert "no C++ compiler" in native.status()["error"]
    assert native.status()["state"] == "unavailable"
    x = tf.constant([1e8, 1.0, -1e8])
    assert float(so.reduce_sum(x)) == 1.0
    assert "SafeopsCompensatedSum" not in _op_types(so.reduce_sum, x)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        native.build()


def test_build_is_cached():
    if not _has_compiler():
        pytest.skip("no C++ compiler")
    first = native.build()
    stamp = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == stamp


def test_graphs_take_the_tf_path_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    monkeypatch.setattr(native, "_gpus", lambda: True)
    x = tf.ones([8], tf.float32)
    assert "SafeopsCompensatedSum" not in _op_types(so.reduce_sum, x)
    assert native._on_cpu(x)  # noqa: SLF001  (an eager CPU tensor still runs on the CPU)
    assert float(so.reduce_sum(x)) == 8.0


def test_compiler_lookup_honours_cxx(monkeypatch):
    monkeypatch.setenv("CXX", "/opt/some/c++")
    assert native._compiler() == "/opt/some/c++"  # noqa: SLF001
    monkeypatch.delenv("CXX")
    assert native._compiler() in (shutil.which("c++"), shutil.which("g++"))  # noqa: SLF001


def test_disabled_scope_keeps_custom_ops_out_of_a_graph(monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    x = tf.constant([1e8, 1.0, -1e8])
    with native.disabled():
        with native.disabled():  # nests
            pass
        assert not native.status()["enabled"]
        types = _op_types(lambda v: (so.reduce_sum(v), so.cumsum(v)), x)
        assert float(so.reduce_sum(x)) == 1.0  # the pure-TF path, same bound
    assert not {"SafeopsCompensatedSum", "SafeopsCompensatedCumsum"} & types
    assert native.status()["enabled"]
    assert "SafeopsCompensatedSum" in _op_types(so.reduce_sum, x)


def test_disabled_applies_to_ops_built_in_its_scope_only(monkeypatch):
    """As documented: a tf.function traced before the scope keeps its graph (with the kernel)
    for a signature it has seen; one traced in the scope has none."""
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    x = tf.constant([1e8, 1.0, -1e8])
    before = tf.function(so.reduce_sum)
    assert float(before(x)) == 1.0
    with native.disabled():
        types = {op.type for op in before.get_concrete_function(x).graph.get_operations()}
        assert "SafeopsCompensatedSum" in types
        fresh = tf.function(so.reduce_sum)
        types = {op.type for op in fresh.get_concrete_function(x).graph.get_operations()}
        assert "SafeopsCompensatedSum" not in types
        assert float(fresh(x)) == 1.0


def test_saved_model_round_trip(tmp_path, monkeypatch):
    """A SavedModel that holds the custom op loads where safeops has loaded the kernels."""
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    module = tf.Module()
    module.f = tf.function(lambda v: so.reduce_sum(v, 1), input_signature=[
        tf.TensorSpec([None, None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    x = np.array([[1e8, 1.0, -1e8], [2.0, 3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(tf.saved_model.load(str(tmp_path)).f(x).numpy(), [1.0, 9.0])


def test_command_line():
    import subprocess
    import sys
    if not _has_compiler():
        pytest.skip("no C++ compiler")
    for args, expect in ((["build"], "safeops fused kernels: "), (["status"], "'built': True")):
        proc = subprocess.run([sys.executable, "-m", "safeops.native", *args], capture_output=True,
                              text=True, check=False, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert expect in proc.stdout
        assert "RuntimeWarning" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "safeops.native", "nonsense"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 2 and "usage" in proc.stderr


_THREADS_SCRIPT = """
import sys, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
import safeops as so
assert so.native.library() is not None
x, _, _ = so.testing.ill_conditioned_sum(300000, 1e8, "float32", seed=11)
v = tf.constant(np.stack([x, x[::-1]]))
out = [so.reduce_sum(v), so.reduce_sum(v, 1), so.reduce_sum(v, 0), so.cumsum(v, 1)[:, -7:],
       so.reduce_sum(tf.cast(v, tf.float64), 1)]
print(repr(np.concatenate([np.ravel(o.numpy()).astype(np.float64) for o in out]).tobytes().hex()))
"""


def test_result_does_not_depend_on_the_thread_count():
    """The kernels cut the work into fixed blocks combined in a fixed order: 1 and 2 threads
    give the same bits (each run in its own process: TF fixes its pool at start-up)."""
    if not _has_compiler():
        pytest.skip("no C++ compiler")
    one, two = last_lines_per_thread_count(_THREADS_SCRIPT)
    assert one == two


def test_softmax_kernel_used_for_float32_last_axis_only(monkeypatch):
    monkeypatch.delenv("SAFEOPS_NATIVE", raising=False)
    if native.library() is None:
        pytest.skip("kernels unavailable")
    x = tf.ones([4, 8])
    for fn in (so.softmax, so.log_softmax, lambda v: so.reduce_logsumexp(v, -1)):
        assert "SafeopsSoftmax" in _op_types(fn, x)
        assert "SafeopsSoftmax" not in _op_types(fn, x, jit_compile=True)
        assert "SafeopsSoftmax" not in _op_types(fn, tf.ones([4, 8], tf.float64))
    assert "SafeopsSoftmax" not in _op_types(lambda v: so.softmax(v, axis=0), x)
    assert "SafeopsSoftmax" not in _op_types(so.reduce_logsumexp, x)  # all axes


@pytest.mark.parametrize("kind", ["softmax", "logsumexp"])
def test_softmax_paths_agree(kind):
    """The kernel and the pure-TF path on the same rows: both within the documented bounds of
    a float64 reference (softmax 3 ulp, logsumexp 2 ulp), special rows equal."""
    if native.library() is None:
        pytest.skip("kernels unavailable")
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((300, 37)) * 20).astype(np.float32)
    x[0] = -np.inf
    x[1, [2, 7]] = np.inf
    x[2, 1] = np.nan
    x[3] = 0.0
    x[3, 3] = 30.0  # a dominant entry: s tiny
    x[4, :] = -np.inf
    x[4, 5] = 1.0   # one finite entry: s = 0 exactly
    fn = {"softmax": so.softmax,
          "logsumexp": lambda v: so.reduce_logsumexp(v, -1, keepdims=True)}[kind]
    outs = {}
    for mode in ("fused", "tf"):
        with (native.disabled() if mode == "tf" else _nothing()):
            with tf.GradientTape() as tape:
                xt = tf.constant(x)
                tape.watch(xt)
                y = fn(xt)
            outs[mode] = (y.numpy(), tape.gradient(y, xt, output_gradients=tf.ones_like(y)).numpy())
    x64 = x[5:].astype(np.float64)
    m = x64.max(1, keepdims=True)
    e = np.exp(x64 - m)
    top = (x64 == m) & (np.cumsum(x64 == m, 1) == 1)
    s = np.where(top, 0.0, e).sum(1, keepdims=True)
    ref = {"softmax": e / (1 + s), "logsumexp": m + np.log1p(s)}[kind].astype(np.float32)
    bound = 3 if kind == "softmax" else 2
    normal = np.abs(ref) >= np.finfo(np.float32).tiny  # CPU kernels flush subnormal results
    for mode, (y, g) in outs.items():
        assert _ulps(y[5:][normal], ref[normal], "float32") <= bound, mode
        assert np.all(np.abs(y[5:][~normal]) < np.finfo(np.float32).tiny), mode
        assert np.all(np.isfinite(g[[0, 3, 4]])), mode
    np.testing.assert_array_equal(outs["fused"][0][:5], outs["tf"][0][:5])  # special rows
    np.testing.assert_array_equal(np.isnan(outs["fused"][1]), np.isnan(outs["tf"][1]))
    # gradients of ordinary rows: within 1e-5 relative of each other (both are ~ulp accurate)
    np.testing.assert_allclose(outs["fused"][1][5:], outs["tf"][1][5:], rtol=1e-5, atol=1e-12)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_softmax_second_order_gradient():
    """Differentiating the kernel's backward (a Hessian-vector product) works and matches the
    pure-TF path, which differentiates its own backward."""
    if native.library() is None:
        pytest.skip("kernels unavailable")
    x0 = np.random.default_rng(13).standard_normal((3, 6)).astype(np.float32)
    w = tf.constant(np.random.default_rng(14).standard_normal((3, 6)).astype(np.float32))
    res = {}
    for mode in ("fused", "tf"):
        with (native.disabled() if mode == "tf" else _nothing()):
            x = tf.constant(x0)
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    loss = tf.reduce_sum(w * tf.math.log(so.softmax(x)))
                g = inner.gradient(loss, x)
                gg = tf.reduce_sum(g * g)
            res[mode] = outer.gradient(gg, x).numpy()
    np.testing.assert_allclose(res["fused"], res["tf"], rtol=1e-4, atol=1e-6)


def test_raw_kernel_gradients():
    """The registered gradients of the raw op (so.reduce_logsumexp takes the XLA-fused
    backward instead; the op's own stays correct): against float64 NumPy."""
    lib = native.library()
    if lib is None:
        pytest.skip("kernels unavailable")
    x = np.random.default_rng(15).standard_normal((5, 37)).astype(np.float32) * 5
    w = np.random.default_rng(16).standard_normal((5, 37)).astype(np.float32)
    x64 = x.astype(np.float64)
    p = np.exp(x64 - x64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for kind, g_out, ref in (
            ("logsumexp", w[:, :1], w[:, :1].astype(np.float64) * p),
            ("softmax", w, p * (w - np.sum(w * p, 1, keepdims=True)))):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y, _ = lib.safeops_softmax(xt, kind=kind)
        got = tape.gradient(y, xt, output_gradients=tf.constant(g_out)).numpy()
        # a few float32 roundings of quantities of size |g| max p: 1e-6 of the largest entry
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
