"""Faithfulness by deletion: do the words a method ranks highest matter to the model?

For each of ``n`` test documents and each method, the top ``k`` % of its words (at least one)
are deleted (their tokens become PAD and are masked) and the drop of the predicted class's
probability is recorded; ``random`` deletes as many words drawn at random (the mean of
``random_draws`` draws). A faithful method's drop is larger than random's. Reported per method:
the mean drop with its 95% t-interval over documents, the mean paired difference to random
(with its interval) and the share of documents where the method beat random.

    python -m attention_arena.explain --faithfulness RUN_DIR --n 100 --k 10
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data.tokenizer import PAD_ID
from ..stats import t_interval
from .attributions import METHODS, explain
from .run import Document, Run


def delete_words(doc: Document, words: torch.Tensor) -> torch.Tensor:
    """The document's ids (L,) with the tokens of ``words`` (indices) set to PAD."""
    drop = torch.zeros(doc.num_words, dtype=torch.bool)
    drop[words] = True
    return doc.ids.masked_fill(drop[doc.word_of], PAD_ID)


def top_words(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores (ties: the earlier word)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(order[:count], dtype=torch.long)


def faithfulness(run: Run, n: int = 100, k: float = 10.0, methods: tuple[str, ...] = METHODS,
                 ig_steps: int = 50, n_samples: int = 200, random_draws: int = 5,
                 seed: int = 0, split: str = "test", log=print) -> dict:
    """Deletion drops on the first ``n`` documents of ``split``: a dict with the per-document
    drops (``drops``: method -> list) and the summary (``summary``: method -> numbers)."""
    texts, _ = run.datamodule.split_texts(split)
    n = min(n, len(texts))
    rng = np.random.default_rng(seed)
    drops: dict[str, list[float]] = {m: [] for m in (*methods, "random")}
    ig_errors: list[float] = []
    start = time.perf_counter()
    for index in range(n):
        doc = run.test_document(index, split)
        ex = explain(run, doc, methods, ig_steps=ig_steps, n_samples=n_samples, seed=seed)
        if ex.ig_delta is not None and ex.ig_gap:
            ig_errors.append(abs(ex.ig_delta) / abs(ex.ig_gap))
        count = max(1, math.ceil(k / 100 * doc.num_words))
        variants = [delete_words(doc, top_words(ex.words[m], count)) for m in methods]
        variants += [delete_words(doc, torch.from_numpy(rng.choice(doc.num_words, count,
                                                                   replace=False)))
                     for _ in range(random_draws)]
        with torch.no_grad():
            probs = run.probabilities(torch.stack(variants))[:, ex.target]
        base = float(ex.probabilities[ex.target])
        for m, p in zip(methods, probs[:len(methods)].tolist(), strict=True):
            drops[m].append(base - p)
        drops["random"].append(base - float(probs[len(methods):].mean()))
        if log and (index + 1) % 10 == 0:
            log(f"[faithfulness] {run.name}: {index + 1}/{n} documents, "
                f"{time.perf_counter() - start:.0f} s")
    summary = {}
    for m, values in drops.items():
        mean = t_interval(values)
        entry = {"drop": mean.mean, "drop_low": mean.low, "drop_high": mean.high}
        if m != "random":
            diff = np.asarray(values) - np.asarray(drops["random"])
            gain = t_interval(diff.tolist())
            entry.update({"vs_random": gain.mean, "vs_random_low": gain.low,
                          "vs_random_high": gain.high,
                          "beats_random_share": float((diff > 0).mean())})
        summary[m] = entry
    return {"run": str(run.directory), "backend": run.backend, "n": n, "k": k,
            "ig_steps": ig_steps, "n_samples": n_samples, "random_draws": random_draws,
            "seed": seed, "seconds": time.perf_counter() - start,
            "ig_completeness_max_rel_error": max(ig_errors) if ig_errors else None,
            "summary": summary, "drops": drops}


def write_faithfulness(results: list[dict], out_dir: str | Path) -> Path:
    """``faithfulness.json`` (everything) and ``faithfulness.md`` (the table) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "faithfulness.md").write_text(faithfulness_table(results) + "\n")
    return out / "faithfulness.md"


def faithfulness_table(results: list[dict]) -> str:
    """A Markdown table: one row per backend and method."""
    def ci(mean, low, high):
        if low is None:
            return f"{mean:+.3f}"
        return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"

    rows = ["| backend | method | drop of p(predicted) | minus random | beats random |",
            "|---|---|---|---|---|"]
    for r in results:
        for m, s in r["summary"].items():
            vs = ("—" if m == "random" else
                  ci(s["vs_random"], s["vs_random_low"], s["vs_random_high"]))
            share = "—" if m == "random" else f"{100 * s['beats_random_share']:.0f}%"
            rows.append(f"| {r['backend']} | {m} | {ci(s['drop'], s['drop_low'], s['drop_high'])}"
                        f" | {vs} | {share} |")
    return "\n".join(rows)
