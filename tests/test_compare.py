"""arena-compare on a tiny fake Hydra multirun with known numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from attention_arena.compare import (
    CRASHED_ERROR,
    load_runs,
    main,
    markdown_table,
    summarize,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (attention, max_length) -> per-seed (test_acc, test_f1, tokens/s, peak MB, wall s)
KNOWN = {
    ("full", 512): [(0.90, 0.88, 1000.0, 500.0, 60.0), (0.92, 0.90, 1200.0, 520.0, 62.0)],
    ("full", 1024): [(0.93, 0.91, 600.0, 900.0, 100.0), (0.95, 0.95, 700.0, 940.0, 104.0)],
    ("longformer", 512): [(0.80, 0.78, 2000.0, 300.0, 40.0), (0.84, 0.80, 2200.0, 320.0, 41.0)],
    ("longformer", 1024): [(0.85, 0.83, 1900.0, 350.0, 45.0), (0.85, 0.83, 2100.0, 370.0, 47.0)],
}
PARAMS = {"full": 1_000_000, "longformer": 1_000_000}


def _write_hydra(run_dir: Path, attention: str, length: int, seed: int) -> None:
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(
        f"- attention={attention}\n- data.max_length={length}\n- seed={seed}\n")
    (hydra / "config.yaml").write_text(
        f"seed: {seed}\ndata:\n  name: bbc\n  max_length: {length}\n"
        f"attention:\n  name: {attention}\n")


def _metrics(run_dir: Path, attention: str, length: int, seed: int, values=None,
             status="ok", error=None) -> dict:
    acc, f1, tps, mem, wall = values or (None,) * 5
    return {
        "status": status, "error": error, "attention": attention, "data": "bbc",
        "max_length": length, "seed": seed, "parameters": PARAMS.get(attention, 900_000),
        "val_acc": acc, "val_f1": f1, "test_acc": acc, "test_f1": f1,
        "train_tokens_per_s": tps, "peak_memory_mb": mem, "wall_time_s": wall,
        "epochs": 1, "steps": 10, "run_dir": str(run_dir),
        "overrides": [f"attention={attention}", f"data.max_length={length}", f"seed={seed}"],
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    job = 0
    for (attention, length), seeds in KNOWN.items():
        for seed, values in enumerate(seeds):
            run_dir = root / str(job)
            _write_hydra(run_dir, attention, length, seed)
            (run_dir / "metrics.json").write_text(
                json.dumps(_metrics(run_dir, attention, length, seed, values)))
            job += 1
    # a run that failed and said so
    run_dir = root / str(job)
    _write_hydra(run_dir, "linformer", 1024, 0)
    (run_dir / "metrics.json").write_text(json.dumps(_metrics(
        run_dir, "linformer", 1024, 0, status="failed",
        error="RuntimeError: max_len=512 < sequence length 1024")))
    job += 1
    # a run that crashed hard: only .hydra/
    _write_hydra(root / str(job), "performer", 1024, 0)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def _row(rows, attention, length):
    (row,) = [r for r in rows if r["attention"] == attention and r["max_length"] == length]
    return row


def test_load_runs_finds_ok_failed_and_crashed(sweep):
    runs = load_runs(sweep)
    assert len(runs) == 10
    assert sum(r["status"] == "ok" for r in runs) == 8
    crashed = [r for r in runs if r["error"] == CRASHED_ERROR]
    assert len(crashed) == 1
    # backend, length and seed recovered from .hydra/overrides.yaml
    assert crashed[0]["attention"] == "performer"
    assert crashed[0]["max_length"] == 1024 and crashed[0]["seed"] == 0
    assert crashed[0]["status"] == "failed"


def test_summary_means_stds_and_best(sweep):
    rows = summarize(load_runs(sweep))
    assert len(rows) == 6  # 2 backends x 2 lengths + linformer (failed) + performer (crashed)
    full512 = _row(rows, "full", 512)
    assert full512["n_ok"] == 2 and full512["n_failed"] == 0
    assert full512["test_acc_mean"] == pytest.approx(91.0)
    assert full512["test_acc_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 90, 92
    assert full512["test_f1_mean"] == pytest.approx(89.0)
    assert full512["train_tokens_per_s_mean"] == pytest.approx(1100.0)
    assert full512["train_tokens_per_s_std"] == pytest.approx(math.sqrt(2 * 100.0**2))
    assert full512["peak_memory_mb_mean"] == pytest.approx(510.0)
    assert full512["wall_time_s_mean"] == pytest.approx(61.0)
    lf1024 = _row(rows, "longformer", 1024)
    assert lf1024["test_acc_mean"] == pytest.approx(85.0)
    assert lf1024["test_acc_std"] == pytest.approx(0.0)

    # best = among backends at the same length
    assert "test_acc" in full512["best"] and "test_f1" in full512["best"]
    lf512 = _row(rows, "longformer", 512)
    assert {"train_tokens_per_s", "peak_memory_mb", "wall_time_s"} <= set(lf512["best"])
    assert "test_acc" not in lf512["best"]
    assert "test_acc" in _row(rows, "full", 1024)["best"]
    # equal parameter counts: both marked
    assert "parameters" in full512["best"] and "parameters" in lf512["best"]

    linformer = _row(rows, "linformer", 1024)
    assert linformer["status"] == "failed" and linformer["n_ok"] == 0
    assert linformer["n_failed"] == 1
    assert "max_len=512" in linformer["errors"][0]
    performer = _row(rows, "performer", 1024)
    assert performer["status"] == "failed" and performer["errors"] == [CRASHED_ERROR]
    assert performer["best"] == []


def test_write_report_files(sweep, tmp_path):
    out = tmp_path / "report"
    paths = write_report(sweep, out)
    md = paths["markdown"].read_text()
    assert paths["markdown"] == out / "comparison.md"
    assert "**91.00 ± 1.41**" in md  # full @ 512 accuracy: best, bold
    assert "82.00 ± 2.83" in md and "**82.00 ± 2.83**" not in md
    assert "| linformer | 1024 | failed |" in md
    assert CRASHED_ERROR in md and "max_len=512 < sequence length 1024" in md
    assert "## Failed runs" in md

    for key in ("accuracy_png", "throughput_png", "memory_png"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, key
    assert {p.name for p in out.glob("*.png")} == {
        "accuracy_vs_length.png", "throughput_vs_length.png", "memory_vs_length.png"}

    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert sorted(r["status"] for r in rows).count("failed") == 2
    assert {r["run"] for r in rows} == {str(i) for i in range(10)}
    crashed = [r for r in rows if r["error"] == CRASHED_ERROR]
    assert len(crashed) == 1 and crashed[0]["attention"] == "performer"

    summary = json.loads(paths["json"].read_text())
    assert len(summary["rows"]) == 6


def test_default_out_dir_and_rerun(sweep):
    paths = write_report(sweep)
    assert paths["markdown"].parent == sweep / "comparison"
    # the report folder must not be picked up as runs on a second pass
    assert len(load_runs(sweep)) == 10


def test_markdown_without_failures(tmp_path):
    run_dir = tmp_path / "0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(
        json.dumps(_metrics(run_dir, "full", 512, 0, (0.5, 0.5, 10.0, 10.0, 1.0))))
    runs = load_runs(tmp_path)
    md = markdown_table(summarize(runs), runs)
    assert "Failed runs" not in md and "50.00" in md
    assert "**" not in md.split("\n", 4)[-1]  # a lone backend is not marked best


def test_cli(sweep, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "91.00 ± 1.41*" in printed
    assert CRASHED_ERROR in printed and "failed" in printed
    assert (out / "comparison.md").exists() and (out / "runs.csv").exists()


def test_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "nope")
    with pytest.raises(ValueError, match="no runs found"):
        load_runs(tmp_path)
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err


def test_crashed_run_read_from_real_hydra_layout(tmp_path):
    """Saved configs are unresolved: ``model.max_length`` is an interpolation, group choices are
    file names; the values must match what metrics.json would have said (data.name etc.)."""
    run_dir = tmp_path / "3_performer_L2048_s1"
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(
        "model:\n  max_length: ${arena.round_up:${data.max_length},${data.pad_to_multiple_of}}\n"
        "attention:\n  name: performer\n  num_features: 256\n"
        "data:\n  name: bbc\n  max_length: 2048\nseed: 1\n")
    (hydra / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      attention: performer\n      data: bbc_news\n")
    (hydra / "overrides.yaml").write_text("- attention=performer\n- attention.num_features=64\n")
    run = load_runs(tmp_path)[0]
    assert run["status"] == "failed" and run["error"] == CRASHED_ERROR
    assert (run["attention"], run["data"], run["max_length"], run["seed"]) == (
        "performer", "bbc", 2048, 1)
    assert run["run"] == "3_performer_L2048_s1"
