"""Smoke tests of the benchmark suite: every registered case and sweep runs on tiny sizes, the
JSON validates against the documented schema, every timing row ran, the required plots exist by
name, progress shows an ETA, and the flags (--only, --devices, --repeats, --seed, --full) do
what they say. Timings in smoke mode mean nothing; only that everything runs is checked."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the plots the issue asks for, by name
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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("smoke")
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


def test_smoke_every_case_and_row_ran(smoke):
    _, _, doc = smoke
    failed = [r["case"] for r in doc["results"] if r.get("error")]
    assert not failed, failed
    row_errors = [(r["case"], t["mode"], t["direction"], t["error"])
                  for r in doc["results"] for t in r["timings"] if "error" in t]
    assert not row_errors, row_errors
    no_rows = [r["case"] for r in doc["results"] if not r["timings"]]
    assert not no_rows, no_rows
    assert doc["header"]["tensor_float_32"] == "disabled while measuring"
    assert doc["header"]["mode"] == "smoke"


def test_smoke_every_family_has_cases_with_accuracy(smoke):
    _, _, doc = smoke
    families = {r["family"] for r in doc["results"]}
    assert set(REQUIRED_FAMILIES) <= families, set(REQUIRED_FAMILIES) - families
    # accuracy next to speed: a metric for every case, or an explicit "n/a: <reason>"
    missing = [r["case"] for r in doc["results"] if not (r["accuracy"] or {}).get("metric")]
    assert not missing, missing
    for r in doc["results"]:
        acc = r["accuracy"]
        if not acc["metric"].startswith("n/a: "):
            assert "safeops" in acc, r["case"]


def test_smoke_plots_and_report(smoke):
    _, out_dir, doc = smoke
    sweeps = {sw["name"]: sw for sw in doc["sweeps"]}
    for name in REQUIRED_PLOTS:
        if name != "overhead":
            assert name in sweeps, name
            assert "error" not in sweeps[name], sweeps[name]
        assert (out_dir / f"{name}.png").stat().st_size > 1000, name
    report = (out_dir / "report.md").read_text()
    assert "## Summary: speed bars" in report
    assert report.index("## Summary: speed bars") < report.index("## Results")
    assert "## Bars per case" in report
    for r in doc["results"]:  # every case states its bar (or that there is none)
        assert f"- {r['case']} [" in report, r["case"]


def test_smoke_missing_tf_op_is_absent_not_zero(smoke):
    _, out_dir, doc = smoke
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
    n = len(doc["results"])
    assert re.search(rf"^\[1/{n}\] \S+ on \S+: .*elapsed \d+ s, about \d+ s left\)$",
                     out.stdout, re.M), out.stdout[:2000]
    assert re.search(rf"^\[{n}/{n}\] .*about 0 s left\)$", out.stdout, re.M)


def test_flags_only_seed_repeats(smoke, tmp_path):
    _, _, doc0 = smoke
    out = _run("--smoke", "--only=summation/reduce_sum/*,sum_error_*", "--seed=1",
               "--repeats=2", "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    doc1 = _load(tmp_path / "results.json")
    assert [r["case"] for r in doc1["results"]] == ["summation/reduce_sum/8M"]
    assert [s["name"] for s in doc1["sweeps"]] == ["sum_error_vs_condition"]
    assert doc1["header"]["seed"] == 1 and doc1["header"]["repeats"] == 2
    r0 = next(r for r in doc0["results"] if r["case"] == "summation/reduce_sum/8M")
    assert doc1["results"][0]["inputs_sha1"] != r0["inputs_sha1"]  # --seed changed the inputs
    s0 = next(s for s in doc0["sweeps"] if s["name"] == "sum_error_vs_condition")
    assert doc1["sweeps"][0]["data"] != s0["data"]


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


def test_flag_devices_gpu_without_gpu_fails_clearly(tmp_path):
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    out = _run("--smoke", "--devices=gpu", "--output_dir", str(tmp_path))
    assert out.returncode != 0
    assert "no GPU device is visible" in out.stderr + out.stdout, out.stderr[-2000:]
    assert not (tmp_path / "results.json").exists()


def test_flag_full_is_accepted(tmp_path):
    # full sizes only for the harness's own A/A case (1M values, fast), one repeat
    out = _run("--full", "--only=harness", "--repeats=1", "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    doc = _load(tmp_path / "results.json")
    assert doc["header"]["mode"] == "full"
    assert {(t["mode"], t["direction"]) for t in doc["results"][0]["timings"]} == {
        ("graph", "fwd"), ("graph", "fwd+bwd"), ("xla", "fwd"), ("xla", "fwd+bwd")}
