"""The main job end to end on a tiny grid: sweep -> metrics.json per run -> comparison report."""

from __future__ import annotations

import csv
import subprocess
import sys

from conftest import TINY, cli_env


def test_compare_run_trains_a_grid_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("data.max_length")]
    proc = subprocess.run(
        [sys.executable, "-m", "attention_arena.compare_run", "--sweep-dir", str(sweep),
         "attention=full,longformer", "data.max_length=64,128",
         *overrides],
        env=cli_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 4, runs
    with open(sweep / "comparison" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["attention"], r["max_length"]) for r in rows} == {
        ("full", "64"), ("full", "128"), ("longformer", "64"), ("longformer", "128")}
    assert all(r["status"] == "ok" for r in rows)
    assert (sweep / "comparison" / "accuracy_vs_length.png").stat().st_size > 1000
    assert "longformer" in proc.stdout and "arena-compare" in proc.stdout
