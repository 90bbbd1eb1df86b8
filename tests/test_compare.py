"""arena-compare on a fake Hydra multirun with known numbers and per-document predictions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from attention_arena.compare import (
    NOT_FINISHED,
    STILL_RUNNING,
    load_runs,
    load_sweep,
    main,
    markdown_report,
    summarize,
    sweep_grid,
    write_report,
)
from attention_arena.compare.grid import BASELINE_JOBS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_DOCS, N_CLASSES = 100, 5
T_975_1 = 12.706205  # t(0.975, df=1)
ATTENTIONS, LENGTHS, SEEDS = ["full", "linformer", "longformer", "performer"], [512, 1024], [0, 1]

# (attention, length, seed) -> test documents it gets right (ids s<seed>-<i>), f1, tok/s, MB, s
OK = {
    ("full", 512, 0): (range(0, 90), 0.88, 1000.0, 500.0, 60.0),
    ("full", 512, 1): (range(0, 92), 0.90, 1200.0, 520.0, 62.0),
    ("full", 1024, 0): (range(0, 93), 0.91, 600.0, 900.0, 100.0),
    ("full", 1024, 1): (range(0, 95), 0.95, 700.0, 940.0, 104.0),
    # longformer 512 is right on a subset of full's documents: 18 discordant pairs, all full's
    ("longformer", 512, 0): (range(0, 80), 0.78, 2000.0, 300.0, 40.0),
    ("longformer", 512, 1): (range(0, 84), 0.80, 2200.0, 320.0, 41.0),
    # longformer 1024: +1 document on seed 0, -1 on seed 1: no difference
    ("longformer", 1024, 0): (range(6, 100), 0.93, 1900.0, 350.0, 45.0),
    ("longformer", 1024, 1): (range(5, 99), 0.93, 2100.0, 370.0, 47.0),
    ("performer", 512, 1): (range(0, 70), None, 1500.0, 400.0, 50.0),  # the one ok seed
}
NO_PREDICTIONS = {("linformer", 512, 0): 0.75}  # an older run: metrics.json only
BASELINE = {0: range(0, 97), 1: range(0, 99)}  # seed 2 of the baseline sweep never started


def _job_num(attention: str, length: int, seed: int) -> int:
    return (ATTENTIONS.index(attention) * len(LENGTHS) + LENGTHS.index(length)) * len(SEEDS) \
        + SEEDS.index(seed)


def _write_multirun(sweep: Path, params: dict, task: list[str], job_name: str = "train") -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    lines = ["hydra:", "  sweeper:",
             "    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
             "    max_batch_size: null", "    params:" + ("" if params else " null")]
    lines += [f"      {k}: {v}" for k, v in params.items()]
    lines += ["  overrides:", "    hydra: []", "    task:", *(f"    - {t}" for t in task),
              "  job:", f"    name: {job_name}",
              "seed: 0", "data:", "  name: bbc", "  max_length: 512", "attention:", "  name: full"]
    (sweep / "multirun.yaml").write_text("\n".join(lines) + "\n")


def _write_hydra(run_dir: Path, overrides: list[str], attention: str, length, seed: int) -> None:
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra / "config.yaml").write_text(
        f"seed: {seed}\ndata:\n  name: bbc\n  max_length: {length}\n"
        f"attention:\n  name: {attention}\n")


def _write_predictions(run_dir: Path, seed: int, correct: range) -> None:
    with open(run_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "index", "id", "label", "pred",
                    *(f"prob_{c}" for c in range(N_CLASSES))])
        for split in ("val", "test"):
            for i in range(N_DOCS):
                label = i % N_CLASSES
                pred = label if i in correct else (label + 1) % N_CLASSES
                w.writerow([split, i, f"s{seed}-{i}", label, pred,
                            *(1.0 if c == pred else 0.0 for c in range(N_CLASSES))])


def _metrics(run_dir: Path, attention: str, length, seed: int, acc=None, values=None,
             status="ok", error=None, kind=None) -> dict:
    f1, tps, mem, wall = values or (None,) * 4
    out = {
        "status": status, "error": error, "attention": attention, "data": "bbc",
        "max_length": length, "seed": seed, "parameters": 1_000_000,
        "val_acc": acc, "val_f1": f1, "test_acc": acc, "test_f1": f1,
        "train_tokens_per_s": tps, "peak_memory_mb": mem, "wall_time_s": wall,
        "epochs": 1, "steps": 10, "run_dir": str(run_dir),
        "overrides": [f"attention={attention}", f"data.max_length={length}", f"seed={seed}"],
    }
    if kind:
        out["kind"] = kind
    return out


def _model_run(root: Path, attention: str, length: int, seed: int, **metrics) -> Path:
    run_dir = root / f"{_job_num(attention, length, seed)}_{attention}_L{length}_s{seed}"
    _write_hydra(run_dir, [f"attention={attention}", f"data.max_length={length}",
                           f"seed={seed}"], attention, length, seed)
    if metrics:
        (run_dir / "metrics.json").write_text(json.dumps(
            _metrics(run_dir, attention, length, seed, **metrics)))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 4 backends × 2 lengths × 2 seeds grid (16 jobs), partly run, plus a baseline sweep."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    _write_multirun(root, {"attention": ",".join(ATTENTIONS),
                           "data.max_length": ",".join(map(str, LENGTHS))}, ["seed=0,1"])
    for (attention, length, seed), (correct, *values) in OK.items():
        run_dir = _model_run(root, attention, length, seed, acc=len(correct) / N_DOCS,
                             values=values)
        _write_predictions(run_dir, seed, correct)
    for (attention, length, seed), acc in NO_PREDICTIONS.items():
        _model_run(root, attention, length, seed, acc=acc, values=(0.7, 900.0, 450.0, 55.0))
    _model_run(root, "linformer", 1024, 0, status="failed",
               error="RuntimeError: max_len=512 < sequence length 1024")
    _model_run(root, "performer", 512, 0, status="running")  # killed mid-run
    _model_run(root, "performer", 1024, 0)                   # killed before metrics.json

    base = root / "baseline"
    _write_multirun(base, {}, ["seed=0,1,2"], job_name="baseline")
    for seed, correct in BASELINE.items():
        run_dir = base / f"{seed}_s{seed}"
        _write_hydra(run_dir, [f"seed={seed}"], "full", 512, seed)
        m = _metrics(run_dir, "tfidf-logreg", None, seed, acc=len(correct) / N_DOCS,
                     values=(0.97, None, None, 6.0), kind="baseline")
        m["overrides"] = [f"seed={seed}"]
        (run_dir / "metrics.json").write_text(json.dumps(m))
        _write_predictions(run_dir, seed, correct)
    return root


def _row(rows, attention, length):
    (row,) = [r for r in rows if r["attention"] == attention and r["max_length"] == length]
    return row


def _cmp(summary, attention, length):
    (c,) = [c for c in summary["comparisons"]
            if c["attention"] == attention and c["max_length"] == length]
    return c


def test_load_runs_statuses(sweep):
    runs = load_runs(sweep)
    assert len(runs) == 15
    assert [r["status"] for r in runs].count("ok") == 12
    assert [r["status"] for r in runs].count("failed") == 1
    not_run = {(r["attention"], r["max_length"], r["seed"]): r["error"]
               for r in runs if r["status"] == "not_run"}
    # read back from metrics.json ("running") and from .hydra/ (no metrics.json)
    assert not_run == {("performer", 512, 0): STILL_RUNNING,
                       ("performer", 1024, 0): NOT_FINISHED}
    with_pred = {(r["attention"], r["max_length"], r["seed"]) for r in runs if r["predictions"]}
    assert ("linformer", 512, 0) not in with_pred and ("full", 512, 0) in with_pred
    assert {r["kind"] for r in runs if r["attention"] == "tfidf-logreg"} == {"baseline"}


def test_load_sweep_lists_jobs_that_never_started(sweep):
    runs, grid = load_sweep(sweep)
    assert grid["jobs"] == 16 + 3 and len(runs) == 19
    assert sorted((s["dir"], s["jobs"]) for s in grid["sweeps"]) == [(".", 16), ("baseline", 3)]
    never = {(r["attention"], r["max_length"], r["seed"]): r for r in runs
             if r["error"] == "never started"}
    assert set(never) == {("linformer", 512, 1), ("linformer", 1024, 1), ("performer", 1024, 1),
                          ("tfidf-logreg", None, 2)}
    job = never[("linformer", 512, 1)]
    assert job["status"] == "not_run" and job["job"] == {"num": 5, "total": 16}
    assert job["overrides"] == ["attention=linformer", "data.max_length=512", "seed=1"]
    assert never[("tfidf-logreg", None, 2)]["kind"] == "baseline"


def test_summary_intervals(sweep):
    summary = summarize(load_sweep(sweep)[0], n_resamples=4000)
    rows = summary["rows"]
    assert len(rows) == 9  # 4 backends x 2 lengths + the baseline
    full512 = _row(rows, "full", 512)
    assert (full512["n_ok"], full512["n_failed"], full512["n_not_run"]) == (2, 0, 0)
    assert full512["interval"] == "t" and full512["n_seeds"] == 2
    assert full512["test_acc_mean"] == pytest.approx(91.0)
    assert full512["test_acc_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 90, 92
    # t-interval: 91 ± t(0.975, 1) · √2 / √2
    assert full512["test_acc_ci_low"] == pytest.approx(91.0 - T_975_1, abs=1e-4)
    assert full512["test_acc_ci_high"] == pytest.approx(91.0 + T_975_1, abs=1e-4)
    assert full512["test_f1_mean"] == pytest.approx(89.0)
    assert full512["train_tokens_per_s_mean"] == pytest.approx(1100.0)
    assert full512["wall_time_s_mean"] == pytest.approx(61.0)
    assert _row(rows, "longformer", 1024)["test_acc_std"] == pytest.approx(0.0)

    performer = _row(rows, "performer", 512)  # one ok seed with predictions: bootstrap
    assert (performer["n_ok"], performer["n_not_run"]) == (1, 1)
    assert performer["interval"] == "bootstrap" and performer["interval_n"] == N_DOCS
    half = 196 * math.sqrt(0.7 * 0.3 / N_DOCS)  # Wald, in points
    assert performer["test_acc_mean"] == pytest.approx(70.0)
    assert performer["test_acc_ci_low"] == pytest.approx(70.0 - half, abs=1.5)
    assert performer["test_acc_ci_high"] == pytest.approx(70.0 + half, abs=1.5)
    assert performer["test_f1_ci_low"] is None  # no F1 in metrics.json: nothing to show

    linformer = _row(rows, "linformer", 512)  # one seed, no predictions.csv: no interval
    assert linformer["interval"] == "none" and linformer["test_acc_ci_low"] is None
    assert "no per-document predictions" in linformer["interval_note"]
    assert linformer["vs_full"]["diff"] is None
    assert "no per-document predictions" in linformer["vs_full"]["note"]
    assert any("no per-document predictions" in n and "linformer L512" in n
               for n in summary["notes"])

    assert _row(rows, "linformer", 1024)["status"] == "failed"
    assert _row(rows, "linformer", 1024)["n_not_run"] == 1
    performer1024 = _row(rows, "performer", 1024)
    assert performer1024["status"] == "not_run" and performer1024["n_not_run"] == 2
    baseline = _row(rows, "tfidf-logreg", None)
    assert baseline["kind"] == "baseline" and (baseline["n_ok"], baseline["n_not_run"]) == (2, 1)
    assert baseline["test_acc_mean"] == pytest.approx(98.0)


def test_summary_paired_differences(sweep):
    summary = summarize(load_sweep(sweep)[0], n_resamples=4000)
    worse = _row(summary["rows"], "longformer", 512)["vs_full"]
    assert worse["diff"] == pytest.approx(-9.0)  # (80 + 84 − 90 − 92) / 200 documents
    assert worse["seeds"] == [0, 1] and worse["n_docs"] == 200
    assert worse["ci_high"] < 0 and worse["significant"] and worse["p_value"] < 0.001
    assert worse["mcnemar_p"] == pytest.approx(2 * 0.5**18)

    same = _row(summary["rows"], "longformer", 1024)["vs_full"]
    assert same["diff"] == pytest.approx(0.0) and not same["significant"]
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.5
    assert same["mcnemar_p"] == 1.0  # 11 vs 11 discordant documents

    one_seed = _cmp(summary, "performer", 512)  # paired on the seed both ran
    assert one_seed["seeds"] == [1] and one_seed["diff"] == pytest.approx(-22.0)

    # the baseline against full at each length, on the seeds both ran
    assert _cmp(summary, "tfidf-logreg", 512)["diff"] == pytest.approx(7.0)
    at_1024 = _cmp(summary, "tfidf-logreg", 1024)
    assert at_1024["diff"] == pytest.approx(4.0) and at_1024["significant"]
    assert at_1024["mcnemar_p"] == pytest.approx(2 * 0.5**8)
    assert _row(summary["rows"], "full", 512)["vs_full"] is None


def test_best_marks_resources_only(sweep):
    rows = summarize(load_sweep(sweep)[0], n_resamples=500)["rows"]
    lf512, full512 = _row(rows, "longformer", 512), _row(rows, "full", 512)
    assert {"train_tokens_per_s", "peak_memory_mb", "wall_time_s"} <= set(lf512["best"])
    assert "parameters" in full512["best"] and "parameters" in lf512["best"]  # a tie: both
    assert not any("acc" in c or "f1" in c for r in rows for c in r["best"])
    assert _row(rows, "tfidf-logreg", None)["best"] == []


def test_write_report_files(sweep, tmp_path):
    out = tmp_path / "report"
    paths = write_report(sweep, out, n_resamples=2000)
    md = paths["markdown"].read_text()
    assert paths["markdown"] == out / "comparison.md"
    assert "12 ok, 1 failed, 6 not run (the sweep grid in multirun.yaml has 19 jobs)" in md
    assert "| 512 | full | 91.00 ± 12.71 |" in md  # mean ± t half-width
    assert "| 512 | longformer | 82.00 ± 25.41 |" in md
    assert "**-9.00 [" in md  # significant: bold
    lf1024 = next(line for line in md.splitlines() if line.startswith("| 1024 | longformer |"))
    assert "| +0.00 [" in lf1024 and "| 1.000 |" in lf1024  # not significant: plain
    assert "**2,000**" in lf1024  # the highest throughput at 1024: bold (and said so)
    assert "| 512 | performer | 70.00 [" in md and "bootstrap, 100 test docs" in md
    assert "none: 1 seed, no per-document predictions" in md
    assert md.count("| full text | tfidf-logreg (baseline) | 98.00 ± ") == 2  # under each length
    assert "| 1024 | linformer | failed | failed |" in md
    assert "| 1024 | performer | not run | not run |" in md
    assert "## Not run (6)" in md and NOT_FINISHED in md and STILL_RUNNING in md
    assert "never started" in md and "attention=linformer data.max_length=512 seed=1" in md
    assert "## Failed runs" in md and "max_len=512 < sequence length 1024" in md
    assert "## Paired differences to full" in md and "p (exact McNemar)" in md

    for key in ("accuracy_png", "throughput_png", "memory_png"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, key

    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 19
    assert sorted(r["status"] for r in rows).count("not_run") == 6
    assert {"kind", "notes", "tokenizer", "job", "predictions"} <= set(rows[0])
    assert {r["kind"] for r in rows if r["attention"] == "tfidf-logreg"} == {"baseline"}

    summary = json.loads(paths["json"].read_text())
    row = next(r for r in summary["rows"] if (r["attention"], r["max_length"]) == ("full", 512))
    assert {"test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "n_seeds",
            "interval"} <= set(row)
    cmp = next(c for c in summary["comparisons"] if c["attention"] == "longformer"
               and c["max_length"] == 512)
    assert cmp["diff"] == pytest.approx(-9.0) and cmp["p_value"] < 0.05
    assert summary["grid"]["jobs"] == 19 and summary["statistics"]["bootstrap_resamples"] == 2000


def test_default_out_dir_and_rerun(sweep):
    paths = write_report(sweep, n_resamples=200)
    assert paths["markdown"].parent == sweep / "comparison"
    # the report folder must not be picked up as runs on a second pass
    assert len(load_runs(sweep)) == 15


def test_lone_run_without_grid_or_predictions(tmp_path):
    run_dir = tmp_path / "0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(
        _metrics(run_dir, "full", 512, 0, acc=0.5, values=(0.5, 10.0, 10.0, 1.0))))
    runs, grid = load_sweep(tmp_path)
    md = markdown_report(summarize(runs), runs, tmp_path, grid)
    assert "Failed runs" not in md and "Not run" not in md and "50.00" in md
    assert "| 512 | full | 50.00 | 50.00 | none: 1 seed, no per-document predictions |" in md
    table = md.split("\n\n")[2]
    assert "**" not in table  # a lone backend is not marked best


def test_bad_predictions_file_is_a_note_not_a_crash(sweep):
    bad = next(sweep.glob("*_longformer_L512_s0")) / "predictions.csv"
    bad.write_text("split,id\ntest,x\n")
    summary = summarize(load_sweep(sweep)[0], n_resamples=500)
    assert any("lacks the column(s) label, pred" in n for n in summary["notes"])
    lf = _row(summary["rows"], "longformer", 512)["vs_full"]
    assert lf["seeds"] == [1] and lf["diff"] == pytest.approx(-8.0)
    assert "seed 0: no per-document predictions" in lf["note"]


def test_cli(sweep, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert main([str(sweep), "--out", str(out), "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "91.00 ± 12.71" in printed and "-9.00 [" in printed
    assert NOT_FINISHED in printed and "never started" in printed
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
    assert run["status"] == "not_run" and run["error"] == NOT_FINISHED
    assert (run["attention"], run["data"], run["max_length"], run["seed"]) == (
        "performer", "bbc", 2048, 1)
    assert run["run"] == "3_performer_L2048_s1"


# --------------------------------------------------------------------------------------------
# The sweep grid
# --------------------------------------------------------------------------------------------

def test_sweep_grid_settings_and_errors(tmp_path):
    _write_multirun(tmp_path, {"data.max_length": "128,256"}, ["attention=performer", "seed=3"])
    jobs = sweep_grid(tmp_path)
    assert [j.settings for j in jobs] == [("bbc", "performer", 128, 3),
                                         ("bbc", "performer", 256, 3)]
    _write_multirun(tmp_path, {"data": "imdb,bbc"}, [])
    # another data group without a length override: the length is unknown, never guessed
    assert [(j.data, j.max_length) for j in sweep_grid(tmp_path)] == [("imdb", None),
                                                                      ("bbc", None)]
    text = (tmp_path / "multirun.yaml").read_text()
    (tmp_path / "multirun.yaml").write_text(text.replace(
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"))
    with pytest.raises(ValueError, match="only the basic sweeper"):
        sweep_grid(tmp_path)
    with pytest.raises(FileNotFoundError):
        sweep_grid(tmp_path / "nope")


def test_unreadable_grid_is_a_note(sweep):
    (sweep / "multirun.yaml").write_text("just text\n")
    runs, grid = load_sweep(sweep)
    assert len(runs) == 15 + 1  # the baseline sweep's grid still adds its missing seed
    assert any("grid of . not read" in n for n in grid["notes"])


def test_baseline_job_name_matches_the_baseline():
    from attention_arena.baseline import NAME

    assert BASELINE_JOBS == {"baseline": NAME}


def test_error_bars_are_the_interval_within_0_100_for_accuracy():
    from attention_arena.compare.report import _error_bar

    row = {"test_acc_mean": 95.0, "test_acc_ci_low": 80.0, "test_acc_ci_high": 110.0,
           "peak_memory_mb_mean": 95.0, "peak_memory_mb_ci_low": 80.0,
           "peak_memory_mb_ci_high": 110.0, "wall_time_s_mean": 3.0,
           "wall_time_s_ci_low": None, "wall_time_s_ci_high": None}
    assert _error_bar(row, "test_acc") == (15.0, 5.0)
    assert _error_bar(row, "peak_memory_mb") == (15.0, 15.0)
    assert _error_bar(row, "wall_time_s") == (0.0, 0.0)


def test_paired_difference_matches_documents_by_id():
    import numpy as np

    from attention_arena.compare import paired_difference
    from attention_arena.compare.load import Predictions

    ids = [f"d{i}" for i in range(40)]
    labels = np.arange(40) % 2
    ref = Predictions(ids, labels, np.where(np.arange(40) < 10, 1 - labels, labels), 2)
    other_pred = np.where(np.arange(40) < 5, 1 - labels, labels)  # wrong on d0..d4 only
    # the other run lists the same documents in reverse order
    other = Predictions(ids[::-1], labels[::-1], other_pred[::-1], 2)
    elsewhere = Predictions([f"e{i}" for i in range(40)], labels, labels, 2)
    runs = {"ref": ref, "other": other, "elsewhere": elsewhere}

    def preds(run):
        return runs[run["name"]]

    def ok(name, seed=0):
        return {"name": name, "status": "ok", "seed": seed}

    res = paired_difference([ok("ref")], [ok("other")], preds, n_resamples=500)
    # right on d5..d9 where ref is wrong, never the reverse: 5 vs 0 discordant documents
    assert res["diff"] == pytest.approx(12.5) and res["mcnemar_p"] == pytest.approx(2 / 32)
    res = paired_difference([ok("ref")], [ok("elsewhere")], preds, n_resamples=500)
    assert res["diff"] is None and res["reason"] == "different test documents"
    res = paired_difference([ok("ref", seed=1)], [ok("other")], preds, n_resamples=500)
    assert res["diff"] is None and res["reason"] == "no seed run by both"
