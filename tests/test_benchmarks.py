"""The benchmark suite: smoke runs (every registered case and sweep runs on tiny sizes, the JSON
validates against the documented schema, every timing row ran, the required plots exist by name,
progress shows an ETA, the flags do what they say) and unit tests of the report's logic (the A/A
gate, smoke marking, sizes in names, the overhead plot's legend and labels, the "what it fixes"
and bandwidth columns). Timings in smoke mode mean nothing; no test reads one as a speed."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the plots the report promises, by name
REQUIRED_PLOTS = ("overhead", "sum_error_vs_condition", "dot_error_vs_condition",
                  "cumsum_error_vs_condition", "bits_of_error_float32", "bits_of_error_float64")
# every op family in the package must have at least one case
REQUIRED_FAMILIES = ("summation", "division", "smooth", "straight_through", "special",
                     "precision", "clipping", "layers", "metrics", "doctor", "quantization",
                     "end_to_end")


def _run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _load(path):
    with open(path) as f:
        doc = json.load(f)
    schema.validate(doc)
    return doc


# the default run smokes a few cases (one sweep, seed and repeats flags set); the whole suite's
# smoke run takes minutes and is marked slow
SMOKE_ONLY = "summation/reduce_sum/*,division/safe_divide/*,sum_error_*"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("smoke")
    out = _run("--smoke", f"--only={SMOKE_ONLY}", "--seed=1", "--repeats=2",
               "--output_dir", str(out_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return out, out_dir, _load(out_dir / "results.json")


@pytest.fixture(scope="module")
def smoke_all(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("smoke_all")
    out = _run("--smoke", "--output_dir", str(out_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return out, out_dir, _load(out_dir / "results.json")


def test_schema_rejects_a_broken_document():
    with pytest.raises(ValueError):
        schema.validate({"schema": 1, "header": {}, "results": [], "sweeps": []})


def test_schema_rejects_a_timing_row_without_times():
    doc = {"schema": 1, "header": {k: "x" for k in schema._HEADER_KEYS}, "sweeps": [],
           "results": [{"case": "c", "family": "f", "device": "d", "accuracy": None,
                        "timings": [{"mode": "graph", "direction": "fwd", "baseline": {},
                                     "safeops": {}}]}]}
    with pytest.raises((ValueError, KeyError)):
        schema.validate(doc)


@pytest.mark.slow
def test_smoke_every_case_and_row_ran(smoke_all):
    _, _, doc = smoke_all
    failed = [r["case"] for r in doc["results"] if r.get("error")]
    assert not failed, failed
    row_errors = [(r["case"], t["mode"], t["direction"], t["error"])
                  for r in doc["results"] for t in r["timings"] if "error" in t]
    assert not row_errors, row_errors
    no_rows = [r["case"] for r in doc["results"] if not r["timings"]]
    assert not no_rows, no_rows
    assert doc["header"]["tensor_float_32"] == "disabled while measuring"
    assert doc["header"]["mode"] == "smoke"


@pytest.mark.slow
def test_smoke_every_family_has_cases_with_accuracy(smoke_all):
    _, _, doc = smoke_all
    families = {r["family"] for r in doc["results"]}
    assert set(REQUIRED_FAMILIES) <= families, set(REQUIRED_FAMILIES) - families
    # accuracy next to speed: a metric for every case, or an explicit "n/a: <reason>"
    missing = [r["case"] for r in doc["results"] if not (r["accuracy"] or {}).get("metric")]
    assert not missing, missing
    for r in doc["results"]:
        acc = r["accuracy"]
        if not acc["metric"].startswith("n/a: "):
            assert "safeops" in acc, r["case"]


@pytest.mark.slow
def test_smoke_plots_and_report(smoke_all):
    _, out_dir, doc = smoke_all
    sweeps = {sw["name"]: sw for sw in doc["sweeps"]}
    for name in REQUIRED_PLOTS:
        if name != "overhead":
            assert name in sweeps, name
            assert "error" not in sweeps[name], sweeps[name]
        assert (out_dir / f"{name}.png").stat().st_size > 1000, name
    report = (out_dir / "report.md").read_text()
    assert "## Summary: speed targets" in report
    assert report.index("## Summary: speed targets") < report.index("## Results")
    assert "## Targets per case" in report
    for r in doc["results"]:  # every case states its bar (or that there is none)
        assert f"- {r['case']} [" in report, r["case"]


@pytest.mark.slow
def test_smoke_missing_tf_op_is_absent_not_zero(smoke_all):
    _, out_dir, doc = smoke_all
    sw = next(s for s in doc["sweeps"] if s["name"] == "bits_of_error_float32")
    tf_series = sw["data"]["series"]["TF / TFP op"]
    cats = sw["data"]["categories"]
    missing = [c for c, v in zip(cats, tf_series) if v is None]
    assert "hypot" in missing  # TF has no hypot: must read as "not measured", not 0 bits
    report = (out_dir / "report.md").read_text()
    row = next(ln for ln in report.splitlines() if ln.startswith("| hypot |"))
    assert row.split("|")[3].strip() == "-", row


def test_smoke_progress_shows_eta(smoke):
    out, _, doc = smoke
    n = len(doc["results"]) + 2  # the cases and the A/A check, first and last
    assert re.search(rf"^\[1/{n}\] harness/aa_check_reduce_sum/1K on \S+: .*elapsed \d+ s, "
                     rf"about \d+ s left\) \[A/A check, first\]$", out.stdout, re.M), \
        out.stdout[:2000]
    assert re.search(rf"^\[2/{n}\] \S+ on \S+: .*elapsed \d+ s, about \d+ s left\)$",
                     out.stdout, re.M)
    assert re.search(rf"^\[{n}/{n}\] .*about 0 s left\) \[A/A check, last\]$", out.stdout, re.M)


def test_flags_only_seed_repeats(smoke):
    import benchmarks.cases  # noqa: F401
    from benchmarks.__main__ import _input_digest
    from benchmarks.registry import cases, sweeps

    _, _, doc = smoke
    assert sorted(r["case"] for r in doc["results"]) == ["division/safe_divide/4K",
                                                         "summation/reduce_sum/4K"]
    assert [r["position"] for r in doc["aa_checks"]] == ["first", "last"]
    assert [s["name"] for s in doc["sweeps"]] == ["sum_error_vs_condition"]
    assert doc["header"]["seed"] == 1 and doc["header"]["repeats"] == 2
    case = next(c for c in cases() if c.name == "summation/reduce_sum")
    seed0 = _input_digest(case.make_inputs(np.random.default_rng(0), "smoke"))
    seed1 = _input_digest(case.make_inputs(np.random.default_rng(1), "smoke"))
    sums = next(r for r in doc["results"] if r["case"] == "summation/reduce_sum/4K")
    assert sums["inputs_sha1"] == seed1 != seed0  # --seed reached the inputs
    sweep = next(s for s in sweeps() if s.name == "sum_error_vs_condition")
    assert doc["sweeps"][0]["data"] == json.loads(json.dumps(sweep.run("smoke", 1)))


def test_smoke_subset_plots_report_and_names(smoke):
    _, out_dir, doc = smoke
    for name in ("overhead", "sum_error_vs_condition"):
        assert (out_dir / f"{name}.png").stat().st_size > 1000, name
    report = (out_dir / "report.md").read_text()
    assert report.index("## Summary: speed targets") < report.index("## Results")
    for r in doc["results"]:  # every case states its bar (or that there is none)
        assert f"- {r['case']} [" in report, r["case"]
        assert not re.search(r"/(8M|4M)(/|$)", r["case"]), r["case"]  # the size that ran
    assert not [r["case"] for r in doc["results"] if r.get("error") or not r["timings"]]


def test_every_case_and_sweep_honours_the_seed():
    import benchmarks.cases  # noqa: F401
    from benchmarks.__main__ import _input_digest
    from benchmarks.registry import cases, sweeps

    same = []
    for case in cases():
        if case.fixed_inputs:
            continue
        a = _input_digest(case.make_inputs(np.random.default_rng(0), "smoke"))
        b = _input_digest(case.make_inputs(np.random.default_rng(1), "smoke"))
        if a == b:
            same.append(case.name)
    assert not same, f"inputs do not depend on the seed: {same}"
    sweep = next(s for s in sweeps() if s.name == "dot_error_vs_condition")
    assert sweep.run("smoke", 0) != sweep.run("smoke", 1)


def test_flag_devices_gpu_without_gpu_fails_clearly():
    # in-process: main() resolves --devices before it imports a case or writes a file
    import tensorflow as tf
    from absl import app

    from benchmarks.__main__ import _devices

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    with pytest.raises(app.UsageError, match="no GPU device is visible"):
        _devices(tf, ["gpu"])
    with pytest.raises(app.UsageError, match="unknown device type 'tpu'"):
        _devices(tf, ["tpu"])
    assert [d.device_type for d in _devices(tf, ["cpu"])] == ["CPU"] * len(
        tf.config.list_logical_devices("CPU"))


def test_flag_full_is_accepted(tmp_path):
    # full sizes for the A/A check alone (1M values, fast) and the bandwidth, one repeat
    out = _run("--full", "--only=harness", "--repeats=1", "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    doc = _load(tmp_path / "results.json")
    assert doc["header"]["mode"] == "full" and doc["results"] == []
    for aa in doc["aa_checks"]:
        assert aa["case"] == "harness/aa_check_reduce_sum/1M"
        assert {(t["mode"], t["direction"]) for t in aa["timings"]} == {
            (m, d) for m in ("graph", "xla", "eager") for d in ("fwd", "fwd+bwd")}
    (bw,) = doc["bandwidth"].values()
    assert bw["n"] == 1 << 25 and bw["copy"]["bytes"] == 2 * 4 * bw["n"]


def test_smoke_run_is_marked_and_judges_nothing(smoke):
    _, out_dir, doc = smoke
    header = doc["header"]
    assert header["bars_judged"] is False
    assert header["bars_not_judged_because"].startswith("smoke run")
    rows = [t for r in doc["results"] for t in r["timings"]]
    assert any("bar" in t for t in rows)  # targets are recorded...
    assert not any("meets_bar" in t for t in rows)  # ...and none is judged
    report = (out_dir / "report.md").read_text()
    head = report[:report.index("## A/A checks")]
    assert "**SMOKE RUN: tiny sizes" in head
    summary = report[report.index("## Summary"):report.index("## Results")]
    assert "Withheld" in summary and "target(s) met" not in summary
    assert not re.search(r": (met|NOT MET)\b", report)
    assert "(not judged)" in report
    # smoke runs time forward+backward only: a forward target says it was not measured
    line = next(ln for ln in report.splitlines() if ln.startswith("- summation/reduce_sum/4K ["))
    assert line.endswith("-> not measured in this run; graph/fwd target: <= 2x tf.reduce_sum "
                         "(not measured in this run); target: <= 1.3x the time at the machine's "
                         "memory bandwidth (not measured in this run)"), line


@pytest.mark.slow
def test_smoke_names_carry_the_size_run(smoke_all):
    _, _, doc = smoke_all
    names = {r["case"] for r in doc["results"]}
    # smoke sizes (4K vectors, 1K special-function inputs, 64x64 axis sums), not 8M/4M/4096
    for expected in ("summation/reduce_sum/4K", "division/safe_divide/4K",
                     "summation/reduce_sum_axis0/64x64", "special/softplus/1K",
                     "clipping/clip_by_global_norm/10x409",
                     "end_to_end/train_step_mlp_64_256_256_10/b8"):
        assert expected in names, sorted(names)
    stale = [n for n in names if re.search(r"/(8M|4M|4096x4096|1024x4096|b128)(/|$)", n)]
    assert not stale, stale


def test_smoke_bandwidth_and_aa_checks_recorded(smoke):
    _, out_dir, doc = smoke
    assert [a["position"] for a in doc["aa_checks"]] == ["first", "last"]
    (bw,) = doc["bandwidth"].values()
    assert set(bw) >= {"copy", "read", "n"}
    # measured before and after the cases; the limit is the faster run of each kernel
    assert set(bw["runs"]) == {"first", "last"}
    for kind in ("copy", "read"):
        assert bw[kind]["gbps"] == max(bw["runs"][p][kind]["gbps"] for p in ("first", "last"))
    sums = next(r for r in doc["results"] if r["case"] == "summation/reduce_sum/4K")
    row = sums["timings"][0]
    n = 1 << 12
    # fwd+bwd: read x; write the float32 sum and the gradient dx
    assert row["bytes"] == {"read": 4 * n, "written": 4 + 4 * n}
    assert row["bandwidth"]["limit"] == "copy"
    report = (out_dir / "report.md").read_text()
    assert "## Machine bandwidth (STREAM-like, measured in this run)" in report


# -- unit tests of the report logic (synthetic results, no timing) ------------------------------

def _timing(mode, direction, base_s, ours_s, bar=None, nbytes=None, bar_limit=None):
    t = {"mode": mode, "direction": direction, "anchors": {},
         "baseline": {"median_s": base_s, "min_s": base_s, "max_s": base_s},
         "safeops": {"median_s": ours_s, "min_s": ours_s, "max_s": ours_s},
         "ratio": {"median": ours_s / base_s, "min": ours_s / base_s, "max": ours_s / base_s}}
    if bar is not None:
        t["bar"] = bar
    if nbytes is not None:
        t["bytes"] = nbytes
    if bar_limit is not None:
        t["bar_limit"] = bar_limit
    return t


def _result(case, timings, accuracy=None, baseline_name="x / y"):
    return {"case": case, "family": case.split("/")[0], "device": "/device:CPU:0",
            "baseline_name": baseline_name, "candidate_name": "so.op", "bar_source": "note",
            "inputs_sha1": "0", "extra": {}, "timings": timings, "accuracy": accuracy}


def _aa(first, last):
    return [dict(_result("harness/aa_check_reduce_sum/1M",
                         [_timing("graph", "fwd", 1e-3, 1e-3 * ratio)]), position=pos)
            for pos, ratio in (("first", first), ("last", last))]


_HEADER = {"date": "d", "commit": "c", "mode": "quick", "repeats": 7, "warmup": 2,
           "tensorflow": "t", "keras": "k", "devices": ["/device:CPU:0"],
           "tensor_float_32": "disabled while measuring", "command": "python -m benchmarks"}

_BW = {"/device:CPU:0": {"n": 8, "copy": {"bytes": 64, "median_s": 1.0, "min_s": 1.0,
                                          "max_s": 1.0, "gbps": 10.0},
                         "read": {"bytes": 32, "median_s": 1.0, "min_s": 1.0, "max_s": 1.0,
                                  "gbps": 20.0}}}


def _cases():
    return [
        _result("division/safe_divide/4M",
                [_timing("graph", "fwd+bwd", 1e-3, 3e-3, bar=1.5,
                         nbytes={"read": 8_000_000, "written": 12_000_000})],
                accuracy={"metric": "max ulp vs exact x/y", "baseline": 1.0, "safeops": 0.5,
                          "baseline_nonfinite_grad": 128, "safeops_nonfinite_grad": 0}),
        _result("summation/reduce_sum/8M",
                [_timing("graph", "fwd", 1e-3, 1e-3, bar=2.0, bar_limit=1.3,
                         nbytes={"read": 8_000_000, "written": 4})],
                accuracy={"metric": "ulp vs exact sum", "baseline": 41, "safeops": 0,
                          "math.fsum (accuracy only)": 0},
                baseline_name="tf.reduce_sum"),
    ]


def _write(tmp_path, aa, mode="quick"):
    from benchmarks import report

    results = _cases()
    report.write(str(tmp_path), dict(_HEADER, mode=mode), results, (), aa, _BW)
    doc = _load(tmp_path / "results.json")
    return doc, (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("first,last", [(2.5, 1.0), (1.0, 0.85), (1.0, 1.12)])
def test_failed_aa_check_withholds_the_targets(tmp_path, first, last):
    doc, md = _write(tmp_path, _aa(first, last))
    assert doc["header"]["timings_reliable"] is False
    assert doc["header"]["bars_judged"] is False
    bad = first if not 0.9 <= first <= 1.1 else last
    (reason,) = doc["header"]["timings_unreliable_because"]
    assert f"{bad:.2f}x, outside 0.9-1.1x" in reason
    assert "first" in reason if bad == first else "last" in reason
    assert md.startswith("# safeops benchmark report\n\n**TIMINGS UNRELIABLE: A/A check")
    assert not any(k in t for r in doc["results"] for t in r["timings"]
                   for k in ("meets_bar", "meets_bar_limit"))
    summary = md[md.index("## Summary"):md.index("## Results")]
    assert "Withheld" in summary and "target(s) met" not in summary
    assert not re.search(r": (met|NOT MET)\b", md)


def test_passing_aa_checks_judge_the_targets(tmp_path):
    doc, md = _write(tmp_path, _aa(1.02, 0.97))
    assert doc["header"]["timings_reliable"] is True and doc["header"]["bars_judged"] is True
    divide, sums = doc["results"]
    assert divide["timings"][0]["meets_bar"] is False  # 3.0x against a 1.5x target
    assert sums["timings"][0]["meets_bar"] is True  # 1.0x against 2.0x
    # 8 MB in 1 ms is 8 GB/s: 2.5x the time at the 20 GB/s read limit, against 1.3x
    assert sums["timings"][0]["meets_bar_limit"] is False
    assert "UNRELIABLE" not in md and "SMOKE" not in md
    assert "1 target(s) met, 2 not met" in md
    assert "target: <= 1.5x x / y: NOT MET" in md
    assert ("target: <= 2x tf.reduce_sum: met; target: <= 1.3x the time at the machine's read "
            "bandwidth: NOT MET") in md
    assert ("- summation/reduce_sum/8M [CPU:0] graph/fwd: 2.50x; target: <= 1.3x the time at "
            "the machine's read bandwidth") in md


def test_missing_aa_check_is_unreliable():
    from benchmarks import report

    ok, reasons = report.aa_verdict(_aa(1.0, 1.0)[:1])
    assert not ok and reasons == ["the A/A check did not run last"]
    failed = dict(_aa(1.0, 1.0)[1], timings=[{"mode": "graph", "direction": "fwd",
                                              "error": "RuntimeError: x"}])
    ok, reasons = report.aa_verdict(_aa(1.0, 1.0)[:1] + [failed])
    assert not ok and any("failed: RuntimeError: x" in r for r in reasons)


def test_smoke_mode_withholds_targets_even_with_good_aa_checks(tmp_path):
    doc, md = _write(tmp_path, _aa(1.0, 1.0), mode="smoke")
    assert doc["header"]["timings_reliable"] is True and doc["header"]["bars_judged"] is False
    assert md.startswith("# safeops benchmark report (SMOKE RUN)\n\n**SMOKE RUN: tiny sizes")
    assert "Withheld: no target is judged in this run (smoke run" in md
    assert not re.search(r": (met|NOT MET)\b", md)


def test_schema_rejects_a_judged_target_in_a_smoke_run(tmp_path):
    doc, _ = _write(tmp_path, _aa(1.0, 1.0), mode="smoke")
    doc["results"][0]["timings"][0]["meets_bar"] = False
    with pytest.raises(ValueError, match="judged"):
        schema.validate(doc)
    doc, _ = _write(tmp_path, _aa(1.0, 1.0), mode="smoke")
    doc["aa_checks"] = doc["aa_checks"][:1]
    with pytest.raises(ValueError, match="first and last"):
        schema.validate(doc)


def test_what_it_fixes_column(tmp_path):
    from benchmarks import report

    _, md = _write(tmp_path, _aa(1.0, 1.0))
    results = md[md.index("## Results"):]
    header = next(ln for ln in results.splitlines() if ln.startswith("| case |"))
    assert "| what it fixes (baseline -> safeops) |" in header
    row = next(ln for ln in results.splitlines() if ln.startswith("| division/safe_divide/4M |"))
    assert row.endswith("| max ulp vs exact x/y: 1 -> 0.5; nonfinite grad: 128 -> 0 |")
    # the paired figures left the anchors section; other references stay there
    anchors = md[md.index("## Anchors"):]
    assert "nonfinite" not in anchors and "math.fsum (accuracy only) error 0" in anchors
    assert report.fixes_text({"metric": "n/a: overhead only"}) == "n/a: overhead only"
    assert report.fixes_text(None) == "-"


def test_bandwidth_column(tmp_path):
    doc, md = _write(tmp_path, _aa(1.0, 1.0))
    divide, sums = doc["results"]
    # 20 MB read + written in 3 ms: 6.67 GB/s, against the copy limit of 10 GB/s
    b = divide["timings"][0]["bandwidth"]
    assert b["limit"] == "copy" and b["bytes"] == 20_000_000
    assert b["safeops_gbps"] == pytest.approx(20e6 / 3e-3 / 1e9)
    assert b["baseline_gbps"] == pytest.approx(20e6 / 1e-3 / 1e9)
    assert b["over_limit"] == pytest.approx(10.0 / (20e6 / 3e-3 / 1e9))
    # a reduction (writes < 1/8 of its reads) is held to the read limit: 8 GB/s of 20
    b = sums["timings"][0]["bandwidth"]
    assert b["limit"] == "read" and b["over_limit"] == pytest.approx(20.0 / 8.000004)
    results = md[md.index("## Results"):]
    row = next(ln for ln in results.splitlines() if ln.startswith("| summation/reduce_sum/8M |"))
    assert "| 8.0 GB/s (baseline 8.0); 2.50x the read limit 20.0 GB/s |" in row
    assert "- /device:CPU:0: copy 10.0 GB/s" in md
    # the distance table, farthest from the limit first
    table = md[md.index("## Distance from the bandwidth limit"):md.index("## Results")]
    rows = [ln for ln in table.splitlines() if ln.startswith("| summation") or
            ln.startswith("| division")]
    assert rows == ["| summation/reduce_sum/8M | CPU:0 | graph | fwd | 8 | 8.0 | 8.0 | "
                    "read 20.0 GB/s | 2.50x |",
                    "| division/safe_divide/4M | CPU:0 | graph | fwd+bwd | 20 | 6.7 | 20.0 | "
                    "copy 10.0 GB/s | 1.50x |"]


def test_traffic_declarations():
    from benchmarks.registry import elementwise_traffic, memory_traffic, reduction_traffic

    x = np.zeros(1000, np.float32)
    assert reduction_traffic()((x,)) == {"fwd": {"read": 4000, "written": 4},
                                         "fwd+bwd": {"read": 4000, "written": 4004}}
    m = np.zeros((10, 100), np.float32)
    assert reduction_traffic(axis=1)((m,))["fwd"] == {"read": 4000, "written": 40}
    assert elementwise_traffic()((x, x)) == {"fwd": {"read": 8000, "written": 4000},
                                             "fwd+bwd": {"read": 8000, "written": 12000}}
    labels = np.zeros(1000, np.int32)  # integer inputs are read but get no gradient
    assert memory_traffic((x, labels), 4)["fwd+bwd"] == {"read": 8000, "written": 4004}


def test_names_carry_the_size_run():
    from benchmarks.registry import base_name, size_label

    assert size_label((np.zeros(1 << 23, np.float32),)) == "8M"
    assert size_label((np.zeros(1 << 12), np.zeros(3))) == "4K"
    assert size_label((np.zeros((64, 4096)), np.zeros((64, 4096)))) == "64x4096"
    assert size_label((np.zeros(1000),)) == "1000"
    # a size written into a registered name is dropped: the name shows the size that ran
    for name, base in (("summation/reduce_sum/8M", "summation/reduce_sum"),
                       ("layers/CompensatedDense/Nx1024", "layers/CompensatedDense"),
                       ("clipping/clip_by_global_norm/100x", "clipping/clip_by_global_norm"),
                       ("quantization/qat_train_step/mlp/b128", "quantization/qat_train_step/mlp"),
                       ("layers/StableSoftmax/masked_rows", "layers/StableSoftmax/masked_rows"),
                       ("doctor/audit/mlp6", "doctor/audit/mlp6"),
                       ("layers/NumericsMonitor/loss", "layers/NumericsMonitor/loss")):
        assert base_name(name) == base, name


def _overhead(judged, banner=()):
    from benchmarks import plots, report

    results = _cases()
    report.judge_bars(results, judged)
    plt = plots._plt()
    return plt, plots.overhead_figure(plt, results, banner, judged)


@pytest.mark.parametrize("judged", [True, False])
def test_overhead_plot_has_a_legend_and_unclipped_labels(judged):
    plt, fig = _overhead(judged)
    try:
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert legend is not None
        labels = [t.get_text() for t in legend.get_texts()]
        assert "target (max ratio)" in labels and "1.0x: same cost as baseline" in labels
        if judged:
            assert {"within its target", "over its target", "no target"} <= set(labels)
        else:
            assert labels[0] == "not judged (see the report header)"
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        for artist in [ax.xaxis.label, *ax.get_yticklabels(), ax.title]:
            box = artist.get_window_extent(renderer)
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1, artist.get_text()
            assert page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, artist.get_text()
        for tick in ax.get_yticklabels():
            assert tick.get_fontsize() >= 7
    finally:
        plt.close(fig)


def test_overhead_plot_marks_a_smoke_run():
    from benchmarks import report

    banner = report.status_banner({"mode": "smoke", "timings_reliable": True})
    plt, fig = _overhead(False, banner)
    try:
        assert "SMOKE RUN" in fig.axes[0].get_title()
        assert any("SMOKE RUN" in t.get_text() for t in fig.texts)  # the stamp across it
    finally:
        plt.close(fig)


def test_no_tracker_references_in_the_benchmark_package():
    pkg = os.path.join(ROOT, "benchmarks")
    found = []
    for folder, _, files in os.walk(pkg):
        for name in files:
            if name.endswith((".py", ".md")):
                path = os.path.join(folder, name)
                with open(path) as f:
                    for i, line in enumerate(f, 1):
                        if re.search(r"\bissues?\s*#?\d+|\bissue's\b|\bthe issue\b", line, re.I):
                            found.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not found, found


def _bw_run(copy, read):
    return {"n": 8, "dtype": "float32",
            "copy": {"bytes": 64, "median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "gbps": copy},
            "read": {"bytes": 32, "median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "gbps": read}}


def test_bandwidth_lowered_by_a_load_is_not_the_limit(tmp_path):
    from benchmarks import report

    # a load during the first run halved the read bandwidth: the faster run is the limit,
    # and the disagreement withholds the targets on the distance from the limit (the
    # interleaved ratios, vouched for by the A/A checks, are still judged)
    bw = {"/device:CPU:0": report.combine_bandwidth(_bw_run(10.0, 10.0), _bw_run(10.0, 20.0))}
    assert bw["/device:CPU:0"]["read"]["gbps"] == 20.0
    ok, (reason,) = report.bandwidth_verdict(bw)
    assert not ok and "read" in reason and "2.00x, outside 0.9-1.1x" in reason
    report.write(str(tmp_path), dict(_HEADER), _cases(), (), _aa(1.0, 1.0), bw)
    doc = _load(tmp_path / "results.json")
    header = doc["header"]
    assert header["timings_reliable"] is True and header["bars_judged"] is True
    assert header["limits_reliable"] is False and header["limits_unreliable_because"] == [reason]
    sums = doc["results"][1]["timings"][0]
    assert "meets_bar_limit" not in sums and "meets_bar" in sums
    assert sums["bandwidth"]["over_limit"] == pytest.approx(20.0 / 8.000004)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# safeops benchmark report\n\n**BANDWIDTH UNSTABLE: bandwidth (CPU:0, read)")
    assert "the machine's read bandwidth (not judged)" in md
    assert re.search(r": (met|NOT MET)\b", md)
    # runs that agree keep the run reliable
    agree = {"d": report.combine_bandwidth(_bw_run(10.0, 20.0), _bw_run(10.5, 19.0))}
    assert report.bandwidth_verdict(agree) == (True, [])
    assert agree["d"]["copy"]["gbps"] == 10.5 and agree["d"]["read"]["gbps"] == 20.0


def test_too_few_repeats_judge_nothing(tmp_path):
    from benchmarks import report

    report.write(str(tmp_path), dict(_HEADER, repeats=report.MIN_JUDGED_REPEATS - 1), _cases(),
                 (), _aa(1.0, 1.0), _BW)
    doc = _load(tmp_path / "results.json")
    assert doc["header"]["timings_reliable"] is True and doc["header"]["bars_judged"] is False
    assert "fewer than the 5 a median needs" in doc["header"]["bars_not_judged_because"]
    md = (tmp_path / "report.md").read_text()
    assert "Withheld" in md and not re.search(r": (met|NOT MET)\b", md)


def test_every_mode_with_a_target_is_covered_by_the_aa_check():
    import benchmarks.cases  # noqa: F401
    from benchmarks import harness
    from benchmarks.registry import cases

    barred = {key.split("/")[0] for c in cases()
              for kind in (c.bar, c.bar_s, c.bar_limit) for key in kind}
    assert barred <= set(harness.AA_CASE.modes), barred - set(harness.AA_CASE.modes)


def test_a_case_with_no_verdict_is_not_reported_met():
    from benchmarks import report

    case = _result("x/y/1", [_timing("graph", "fwd", 1e-3, 1e-3, bar=2.0)])
    _, per_case = report.bar_summary([case], judged=True)  # judge_bars never ran on it
    assert per_case[0].startswith("- x/y/1 [CPU:0]: note -> not judged;"), per_case[0]



def test_bandwidth_compares_best_with_best(tmp_path):
    """The limit is a best rate, so the op's rate is its best call, not its median."""
    from benchmarks import report

    t = _timing("graph", "fwd", 1e-3, 4e-3, nbytes={"read": 8_000_000, "written": 4})
    t["safeops"] = {"median_s": 4e-3, "min_s": 2e-3, "max_s": 5e-3}
    t["baseline"] = {"median_s": 1e-3, "min_s": 0.5e-3, "max_s": 2e-3}
    results = [_result("summation/reduce_sum/2M", [t])]
    bw = {"/device:CPU:0": {"n": 8, "read": {"bytes": 32, "min_s": 1.0, "median_s": 2.0,
                                             "max_s": 2.0, "gbps": 10.0},
                            "copy": {"bytes": 64, "min_s": 1.0, "median_s": 2.0,
                                     "max_s": 2.0, "gbps": 20.0}}}
    report.annotate_bandwidth(results, bw)
    b = t["bandwidth"]
    assert b["safeops_gbps"] == pytest.approx(8_000_004 / 2e-3 / 1e9)
    assert b["baseline_gbps"] == pytest.approx(8_000_004 / 0.5e-3 / 1e9)
    assert b["over_limit"] == pytest.approx(10.0 / (8_000_004 / 2e-3 / 1e9))


def test_xla_program_fingerprint_ignores_names_only():
    from benchmarks import xla_programs

    a = ("HloModule m.1\n%f.3 (param_0.2: f32[4]) -> f32[4] {\n  %param_0.2 = f32[4]{0} "
         "parameter(0)\n  ROOT %exp.7 = f32[4]{0} exponential(%param_0.2), "
         "metadata={op_name=\"a\"}\n}\nENTRY %main.9 (arg.1: f32[4]) -> f32[4] {\n"
         "  %arg.1 = f32[4]{0} parameter(0)\n  ROOT %r.2 = f32[4]{0} fusion(%arg.1), "
         "kind=kLoop, calls=%f.3\n}\n")
    renamed = (a.replace("%f.3", "%g.11").replace("param_0.2", "param_0.5")
               .replace("%exp.7", "%exponential.1").replace("main.9", "main.40")
               .replace("op_name=\"a\"", "op_name=\"b\""))
    other = a.replace("exponential(", "log(")
    reshaped = a.replace("f32[4]", "f32[8]")
    assert xla_programs.fingerprint(a) == xla_programs.fingerprint(renamed)
    assert xla_programs.fingerprint(a) != xla_programs.fingerprint(other)
    assert xla_programs.fingerprint(a) != xla_programs.fingerprint(reshaped)
    assert xla_programs.base_name("straight_through/round_ste") == "straight_through/round_ste"
    assert xla_programs.base_name("special/softmax/1Mx") == "special/softmax"
    assert xla_programs.base_name("quantization/qat_train_step/mlp/b128") == \
        "quantization/qat_train_step/mlp"


def test_xla_program_fingerprints_of_a_case():
    import tensorflow as tf
    from benchmarks import xla_programs

    progs = xla_programs._programs("straight_through/round_ste", "smoke")
    assert set(progs) == {"straight_through/round_ste"}
    entry = progs["straight_through/round_ste"]
    assert set(entry) == {"fwd", "fwd+bwd"} and entry["fwd"] != entry["fwd+bwd"]
    assert not any(v.startswith("error") for v in entry.values())
    assert xla_programs.compare(progs, progs) == [
        "SAME      straight_through/round_ste xla/fwd",
        "SAME      straight_through/round_ste xla/fwd+bwd"]
    del tf
