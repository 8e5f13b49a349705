"""Smoke test of the benchmark suite: every registered case and sweep runs, the JSON
validates against the documented schema, and the report and plots are written."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_schema_rejects_a_broken_document():
    with pytest.raises(ValueError):
        schema.validate({"schema": 1, "header": {}, "results": [], "sweeps": []})


def test_suite_smoke_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--output_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[1/" in out.stdout  # progress lines
    with open(tmp_path / "results.json") as f:
        doc = json.load(f)
    schema.validate(doc)
    failed = [r["case"] for r in doc["results"] if r.get("error")]
    assert not failed, failed
    assert doc["header"]["tensor_float_32"] == "disabled while measuring"
    assert (tmp_path / "report.md").stat().st_size > 0
    assert (tmp_path / "overhead.png").stat().st_size > 1000
    for sw in doc["sweeps"]:
        assert "error" not in sw, sw
        assert (tmp_path / f"{sw['name']}.png").stat().st_size > 1000
