"""The main job end to end on a tiny grid: sweep -> metrics.json per run -> comparison report.

(Interrupting a sweep and ``--resume``: tests/test_train.py.)
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from attention_arena.compare_run import main
from attention_arena.utils import read_metrics
from conftest import TINY, cli_env


@pytest.mark.integration
def test_compare_run_trains_a_grid_and_reports(tmp_path):
    """Linformer's default k=256 at length 64 is capped (it used to fail every such job)."""
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("data.max_length")]
    proc = subprocess.run(
        [sys.executable, "-m", "attention_arena.compare_run", "--sweep-dir", str(sweep),
         "attention=full,linformer", "data.max_length=64,128", "seed=0",
         *overrides],
        env=cli_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 4, runs
    baseline = read_metrics(sweep / "baseline" / "s0")  # the baseline row, same data and seed
    assert baseline["kind"] == "baseline" and baseline["status"] == "ok"
    assert (sweep / "baseline" / "s0" / "predictions.csv").is_file()
    with open(sweep / "comparison" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["attention"], r["max_length"]) for r in rows} == {
        ("full", "64"), ("full", "128"), ("linformer", "64"), ("linformer", "128"),
        ("tfidf-logreg", "")}
    assert all(r["status"] == "ok" for r in rows)
    assert read_metrics(sweep / "2_linformer_L64_s0")["notes"] == [
        "linformer k capped from 256 to 64 = max_len"]
    assert read_metrics(sweep / "3_linformer_L128_s0")["notes"] == [
        "linformer k capped from 256 to 128 = max_len"]
    assert (sweep / "comparison" / "accuracy_vs_length.png").stat().st_size > 1000
    assert "longformer" not in proc.stdout and "linformer" in proc.stdout
    assert "sweep ended" in proc.stdout and "4 jobs: 4 ok" in proc.stdout
    assert "--resume" not in proc.stderr
    assert "arena-compare" in proc.stdout


def test_resume_takes_no_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path), "seed=1"])
    assert "--resume takes no overrides" in capsys.readouterr().err


def test_a_rerun_is_one_job_with_its_number_in_its_sweep_directory(tmp_path):
    from omegaconf import OmegaConf

    from attention_arena.compare_run import rerun_command
    from attention_arena.utils import SweepJob

    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"hydra": [
        "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=false"]}}}),
        tmp_path / "multirun.yaml")
    job = SweepJob(3, ["attention=full", "seed=1"], None, "not run")
    command = rerun_command(job, tmp_path)
    assert command[:3] == [sys.executable, "-m", "attention_arena.train"]
    assert command[3:] == ["attention=full", "seed=1", "hydra.job.chdir=false", "hydra.job.num=3",
                           f"hydra.sweep.dir={tmp_path}",
                           f"hydra.run.dir={tmp_path}/${{hydra.sweep.subdir}}"]


@pytest.mark.parametrize("flag", [[], ["--no-baseline"]])
def test_resume_remembers_whether_the_sweep_has_a_baseline(tmp_path, monkeypatch, flag):
    from attention_arena import compare, compare_run

    calls = []

    def call(self, command):
        calls.append(command)
        (sweep / "multirun.yaml").write_text("{}")  # what the sweep would have written
        return 0

    monkeypatch.setattr(compare_run.SignalForwarder, "call", call)
    monkeypatch.setattr(compare_run, "resume", lambda sweep_dir, runner: 0)
    monkeypatch.setattr(compare_run, "baseline_command", lambda sweep_dir: ["baseline"])
    monkeypatch.setattr(compare, "main", lambda argv: 0)
    sweep = tmp_path / "sweep"
    assert main(["--sweep-dir", str(sweep), *flag, "seed=0"]) == 0
    assert (["baseline"] in calls) == (not flag)
    calls.clear()
    assert main(["--resume", str(sweep)]) == 0  # the baseline did not finish: rerun it, or not
    assert calls == ([] if flag else [["baseline"]])
