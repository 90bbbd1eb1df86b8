"""The baseline row: TF-IDF + logistic regression on exactly the neural runs' splits.

    python -m attention_arena.baseline                          # BBC News, seed 0
    python -m attention_arena.baseline data=files data.path=my.csv
    python -m attention_arena.baseline -m seed=0,1,2 hydra.sweep.dir=SWEEP/baseline

A Hydra app on the same config as ``arena-train`` (so every ``data.*`` option and ``seed`` mean
the same: same de-duplication, split and ``limit_examples`` subsample); model, attention and
trainer options are ignored. It reads the FULL texts (no truncation: ``max_length`` is null).

Model: word uni- and bigrams seen in at least 2 training documents, sublinear tf, l2-normalised
TF-IDF fitted on the training split; multinomial logistic regression (lbfgs). ``C`` is tuned on
the validation split over :data:`C_GRID` (highest val accuracy, the smaller C on ties) and the
model trained on the training split with that C is evaluated; ``+baseline.C=<value>`` fixes C.

A run directory gets ``metrics.json`` (``kind: baseline``, ``attention: tfidf-logreg``) and
``predictions.csv`` (one row per val and test document), like an ``arena-train`` run.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from . import train
from .stats import macro_f1
from .train import CONF_DIR, run_job
from .utils import METRIC_KEYS, register_resolvers

NAME = "tfidf-logreg"
C_GRID = (1.0, 10.0, 100.0)
EVAL_SPLITS = ("val", "test")

register_resolvers()


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def _features(train_texts: list[str]):
    """The TF-IDF vectorizer fitted on the training texts (terms in at least 2 documents)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2,
                                 dtype=np.float32)
    return vectorizer.fit(train_texts)


def _fit(x, labels: list[int], c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, labels)


def _probabilities(model, x, num_classes: int) -> np.ndarray:
    """(N, num_classes) class probabilities; classes absent from training get 0."""
    probs = np.zeros((x.shape[0], num_classes))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def _fit_best_c(x_train, y_train: list[int], x_val, y_val: list[int], seed: int,
                grid: Sequence[float]):
    """The model of ``grid``'s C with the highest val accuracy (the smallest C on ties), the C
    and every C's val accuracy."""
    fits = {c: _fit(x_train, y_train, c, seed) for c in sorted(grid)}
    scores = {c: float(np.mean(m.predict(x_val) == np.asarray(y_val))) for c, m in fits.items()}
    best = max(scores, key=lambda c: (scores[c], -c))
    return fits[best], best, scores


def write_predictions(path: Path, rows: dict[str, tuple[list[str], np.ndarray, np.ndarray]]
                      ) -> Path:
    """``predictions.csv`` (see CONTRACTS): ``rows[split] = (ids, labels, probs (N, C))``."""
    num_classes = next(iter(rows.values()))[2].shape[1]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "index", "id", "label", "pred",
                    *(f"prob_{c}" for c in range(num_classes))])
        for split, (ids, labels, probs) in rows.items():
            for i, (doc, label, p) in enumerate(zip(ids, labels, probs, strict=True)):
                w.writerow([split, i, doc, int(label), int(p.argmax()),
                            *(f"{x:.6g}" for x in p)])
    return path


def run_baseline(datamodule: Any, out_dir: str | Path, seed: int, c: float | None = None,
                 c_grid: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Fit and evaluate the baseline on ``datamodule``'s splits; write ``metrics.json`` and
    ``predictions.csv`` into ``out_dir``; return the metrics dict.

    ``c``: a fixed inverse regularisation strength; None tunes it on val over ``c_grid``.
    """
    start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datamodule.prepare_data()
    datamodule.setup()
    num_classes = datamodule.num_classes
    data = {s: datamodule.split_texts(s) for s in ("train", *EVAL_SPLITS)}
    vectorizer = _features(data["train"][0])
    x = {s: vectorizer.transform(texts) for s, (texts, _) in data.items()}  # (N, terms)
    if c is None:
        model, c, scores = _fit_best_c(x["train"], data["train"][1], x["val"], data["val"][1],
                                       seed, c_grid)
        note = f"C={c:g} chosen on val accuracy over " + ", ".join(
            f"C={k:g}: {v:.4f}" for k, v in scores.items())
    else:
        model = _fit(x["train"], data["train"][1], c, seed)
        note = f"C={c:g} fixed (+baseline.C)"

    result: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    rows = {}
    for split in EVAL_SPLITS:
        probs = _probabilities(model, x[split], num_classes)
        y, pred = np.asarray(data[split][1]), probs.argmax(axis=1)
        result[f"{split}_acc"] = float(np.mean(y == pred))
        result[f"{split}_f1"] = float(macro_f1(y, pred, num_classes))
        rows[split] = (datamodule.example_ids(split), y, probs)
    write_predictions(out / "predictions.csv", rows)
    result.update(
        status="ok", attention=NAME, data=datamodule.name, max_length=None, seed=int(seed),
        parameters=int(model.coef_.size + model.intercept_.size), run_dir=str(out),
        wall_time_s=round(time.time() - start, 3), kind="baseline", tokenizer="words 1-2-grams",
        notes=[note, f"vocabulary {len(vectorizer.vocabulary_):,} terms (train split)"],
    )
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# Hydra app
# --------------------------------------------------------------------------------------------

def fit(cfg: DictConfig) -> dict[str, Any]:
    """The baseline for one composed config (a job of :func:`attention_arena.train.run_job`)."""
    c = (cfg.get("baseline") or {}).get("C")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    return run_baseline(datamodule, str(cfg.output_dir), int(cfg.seed),
                        c=None if c is None else float(c))


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    identity = {"attention": NAME, "max_length": None, "kind": "baseline"}
    return run_job(cfg, work=fit, identity=identity).get("val_acc")


def main() -> None:
    """Entry point: the Hydra app, with ``arena-train``'s exit statuses (1 if a job failed)."""
    train.main(hydra_main)


if __name__ == "__main__":
    main()
