"""The TF-IDF + logistic regression baseline on small files written here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attention_arena.baseline import run_baseline
from attention_arena.compare import load_sweep, summarize
from attention_arena.data import TextClassificationDataModule
from conftest import cli_env, explain

TOPICS = [["goal", "match", "team", "league", "coach", "striker", "season", "cup"],
          ["market", "shares", "profit", "bank", "investor", "stock", "trade", "economy"]]
FILLER = ["the", "a", "of", "and", "in", "on", "to", "with", "for", "this", "that", "was"]


def _write_csv(path: Path, n: int, separable: bool, seed: int = 0) -> Path:
    """``n`` unique documents; with ``separable`` each label has its own topic words, else
    every document mixes both topics and the labels are coin flips."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = int(rng.integers(2))
            topic = TOPICS[label] if separable else TOPICS[0] + TOPICS[1]
            words = [str(rng.choice(topic if rng.random() < 0.4 else FILLER)) for _ in range(40)]
            w.writerow([" ".join(words) + f" doc{i}", label])
    return path


def _datamodule(path: Path, tmp_path: Path, seed: int = 0, **kw) -> TextClassificationDataModule:
    return TextClassificationDataModule(name="files", path=str(path), max_length=16, seed=seed,
                                        cache_dir=str(tmp_path / "cache"), **kw)


def _read_predictions(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_baseline_on_separable_classes(tmp_path):
    dm = _datamodule(_write_csv(tmp_path / "docs.csv", 300, separable=True), tmp_path)
    out = tmp_path / "run"
    result = run_baseline(dm, out, seed=0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert (metrics["status"], metrics["kind"], metrics["attention"]) == (
        "ok", "baseline", "tfidf-logreg")
    assert metrics["max_length"] is None and metrics["seed"] == 0 and metrics["data"] == "files"
    assert metrics["test_acc"] >= 0.95 and metrics["val_acc"] >= 0.95
    assert metrics["parameters"] > 0 and any("chosen on val" in n for n in metrics["notes"])

    rows = _read_predictions(out / "predictions.csv")
    assert list(rows[0]) == ["split", "index", "id", "label", "pred", "prob_0", "prob_1"]
    for split in ("val", "test"):
        part = [r for r in rows if r["split"] == split]
        texts, labels = dm.split_texts(split)
        assert len(part) == len(texts) == dm.split_sizes[split]
        assert [r["id"] for r in part] == dm.example_ids(split)
        assert [int(r["index"]) for r in part] == list(range(len(part)))
        assert [int(r["label"]) for r in part] == labels
        probs = np.array([[float(r["prob_0"]), float(r["prob_1"])] for r in part])
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert [int(r["pred"]) for r in part] == probs.argmax(axis=1).tolist()
    test = [r for r in rows if r["split"] == "test"]
    acc = np.mean([r["label"] == r["pred"] for r in test])
    assert acc == pytest.approx(metrics["test_acc"])


def test_baseline_near_chance_on_shuffled_labels(tmp_path):
    dm = _datamodule(_write_csv(tmp_path / "docs.csv", 600, separable=False), tmp_path)
    metrics = run_baseline(dm, tmp_path / "run", seed=0)
    assert 0.3 <= metrics["test_acc"] <= 0.7, metrics["test_acc"]


def test_baseline_reads_the_same_split_as_the_models(tmp_path):
    """The baseline reads the data module's split_texts: the same examples as the tokenized
    splits, also under limit_examples, never truncated; the fixed-C path skips tuning."""
    path = _write_csv(tmp_path / "docs.csv", 300, separable=True)
    dm = _datamodule(path, tmp_path, seed=3, limit_examples=90)
    metrics = run_baseline(dm, tmp_path / "run", seed=3, c=1.0)
    assert metrics["notes"][0] == "C=1 fixed (+baseline.C)"
    texts, _ = dm.split_texts("test")
    assert len(texts) == dm.split_sizes["test"] < 30
    assert all(len(t.split()) == 41 for t in texts)  # full texts, never truncated to 16 tokens
    other = _datamodule(path, tmp_path, seed=4)
    assert other.split_texts("test")[0] != _datamodule(path, tmp_path, seed=3).split_texts(
        "test")[0]


@pytest.mark.integration
def test_baseline_cli_sweep_and_report(tmp_path):
    path = _write_csv(tmp_path / "docs.csv", 200, separable=True)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "attention_arena.baseline", "-m", "seed=0,1,2", "data=files",
         f"data.path={path}", f"data.cache_dir={tmp_path / 'cache'}", "logger=none",
         f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=s${seed}"],
        env=cli_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["s0", "s1", "s2"]
    assert all((sweep / s / "predictions.csv").is_file() for s in ("s0", "s1", "s2"))

    (sweep / "s2" / "metrics.json").unlink()  # as if killed: the report must say so
    runs, grid = load_sweep(sweep)
    assert grid["jobs"] == 3
    (row,) = summarize(runs, n_resamples=200)["rows"]
    assert (row["attention"], row["kind"], row["max_length"]) == ("tfidf-logreg", "baseline",
                                                                 None)
    assert (row["n_ok"], row["n_not_run"], row["interval"]) == (2, 1, "t")
    assert row["test_acc_mean"] >= 90
