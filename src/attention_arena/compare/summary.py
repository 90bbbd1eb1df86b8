"""The numbers of the comparison: one row per (data, backend, length) with 95% intervals, and
the paired difference of every backend (and the baseline) to ``full`` on the same documents.

Intervals of test accuracy and macro-F1 (``interval`` of a row):

- ``t``: two or more seeds, Student-t interval over the seeds' values;
- ``bootstrap``: one seed with a ``predictions.csv``, percentile bootstrap over its test
  documents (:data:`~attention_arena.stats.N_RESAMPLES` resamples, fixed seed);
- ``none``: one seed without per-document predictions.

The other columns get a t-interval over seeds where there are two or more.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from .. import stats
from .load import Predictions, read_predictions, sort_val

REFERENCE = "full"
ALPHA = 0.05  # a paired difference with p < ALPHA is marked significant
# summary column -> (run key, scale, better: "max" | "min")
COLUMNS = {
    "test_acc": ("test_acc", 100.0, "max"),
    "test_f1": ("test_f1", 100.0, "max"),
    "val_acc": ("val_acc", 100.0, "max"),
    "train_tokens_per_s": ("train_tokens_per_s", 1.0, "max"),
    "peak_memory_mb": ("peak_memory_mb", 1.0, "min"),
    "parameters": ("parameters", 1.0, "min"),
    "wall_time_s": ("wall_time_s", 1.0, "min"),
}
PER_DOCUMENT = {"test_acc": "acc", "test_f1": "f1"}  # columns a bootstrap over documents covers
MARKED = ["train_tokens_per_s", "peak_memory_mb", "parameters", "wall_time_s"]
NO_PREDICTIONS = "no per-document predictions"


class PredictionStore:
    """Test-split predictions of runs, read once; read errors are kept as notes."""

    def __init__(self) -> None:
        self._cache: dict[str, Predictions | None] = {}
        self.notes: list[str] = []

    def __call__(self, run: dict) -> Predictions | None:
        path = run.get("predictions")
        if not path:
            return None
        if path not in self._cache:
            try:
                self._cache[path] = read_predictions(path)
            except (OSError, ValueError) as err:
                self._cache[path] = None
                self.notes.append(f"ignored {err}")
        return self._cache[path]


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _interval(values: list[float], pred: Predictions | None, metric: str | None,
              n_resamples: int) -> stats.Interval | None:
    """t over seeds; for one seed a bootstrap over its documents when ``pred`` allows."""
    if not values:
        return None
    if len(values) == 1 and metric is not None and pred is not None:
        boot = stats.bootstrap_interval(pred.labels, pred.preds, metric, pred.num_classes,
                                        n_resamples=n_resamples)
        return stats.Interval(values[0], boot.low, boot.high, boot.n, "bootstrap")
    return stats.t_interval(values)


def _interval_note(kind: str, n_ok: int, n_docs: int | None) -> str:
    if kind == "t":
        return f"t, {n_ok} seeds"
    if kind == "bootstrap":
        return f"bootstrap, {n_docs} test docs"
    return f"none: 1 seed, {NO_PREDICTIONS}" if n_ok == 1 else "none"


def _row(key: tuple, members: list[dict], preds: PredictionStore, n_resamples: int) -> dict:
    data, attention, length = key
    ok = [r for r in members if r["status"] == "ok"]
    counts = {s: sum(r["status"] == s for r in members) for s in ("failed", "not_run")}
    row = {"data": data, "attention": attention, "max_length": length,
           "kind": "baseline" if any(r.get("kind") == "baseline" for r in members) else "model",
           "n_ok": len(ok), "n_failed": counts["failed"], "n_not_run": counts["not_run"],
           "n_seeds": len(ok), "seeds": sorted((r.get("seed") for r in ok), key=sort_val),
           "errors": list(dict.fromkeys(str(r.get("error")) for r in members
                                        if r["status"] == "failed"))}
    row["status"] = ("ok" if len(ok) == len(members) else "partial" if ok
                     else "failed" if counts["failed"] else "not_run")
    pred = preds(ok[0]) if len(ok) == 1 else None
    row["interval"], row["interval_n"] = "none", 0
    row["interval_note"] = _interval_note("none", len(ok), None)
    for col, (run_key, scale, _) in COLUMNS.items():
        values = _finite(r.get(run_key) for r in ok)
        ci = _interval(values, pred, PER_DOCUMENT.get(col), n_resamples)
        row[f"{col}_mean"] = None if ci is None else ci.mean * scale
        row[f"{col}_std"] = statistics.stdev(values) * scale if len(values) > 1 else None
        row[f"{col}_ci_low"] = None if ci is None or ci.low is None else ci.low * scale
        row[f"{col}_ci_high"] = None if ci is None or ci.high is None else ci.high * scale
        if col == "test_acc" and ci is not None:
            row["interval"], row["interval_n"] = ci.kind, ci.n
            row["interval_note"] = _interval_note(ci.kind, len(ok), ci.n)
    row["vs_full"] = None
    row["best"] = []
    return row


# --------------------------------------------------------------------------------------------
# Paired differences to the reference backend
# --------------------------------------------------------------------------------------------

def _first_ok_by_seed(members: list[dict]) -> dict:
    out: dict = {}
    for r in members:
        if r["status"] == "ok":
            out.setdefault(r.get("seed"), r)
    return out


def paired_difference(reference: list[dict], other: list[dict],
                      preds: Callable[[dict], Predictions | None],
                      n_resamples: int = stats.N_RESAMPLES) -> dict:
    """Test accuracy of ``other`` minus ``reference`` in points, paired by seed and document.

    Seeds where both have an ok run with predictions on the same test documents (matched by id,
    same labels) are pooled (:func:`attention_arena.stats.paired_bootstrap`). Returns ``diff``,
    ``ci_low``, ``ci_high``, ``p_value`` (bootstrap), ``mcnemar_p``, ``significant``
    (p < :data:`ALPHA`), ``seeds``, ``n_docs``, ``method`` and ``note`` (seeds left out and
    why); ``diff`` is None, with a short ``reason``, when no seed can be paired.
    """
    ref, oth = _first_ok_by_seed(reference), _first_ok_by_seed(other)
    common = sorted(set(ref) & set(oth), key=sort_val)
    groups, seeds, skipped = [], [], []
    for seed in common:
        a, b = preds(ref[seed]), preds(oth[seed])
        if a is None or b is None:
            skipped.append((seed, NO_PREDICTIONS))
            continue
        where = {doc: i for i, doc in enumerate(b.ids)}
        if set(a.ids) != set(where):
            skipped.append((seed, "different test documents"))
            continue
        order = [where[doc] for doc in a.ids]
        if (a.labels != b.labels[order]).any():
            skipped.append((seed, "different labels for the same documents"))
            continue
        groups.append((a.correct, b.correct[order]))
        seeds.append(seed)
    out = {"diff": None, "ci_low": None, "ci_high": None, "p_value": None, "mcnemar_p": None,
           "significant": False, "seeds": seeds, "n_docs": 0, "method": None,
           "note": "; ".join(f"seed {s}: {why}" for s, why in skipped)}
    if not common:
        return out | {"reason": "no seed run by both",
                      "note": f"no seed with an ok run of both (the {REFERENCE} runs' seeds: "
                              f"{sorted(ref, key=sort_val) or 'none'})"}
    if not groups:
        return out | {"reason": "; ".join(dict.fromkeys(why for _, why in skipped))}
    res = stats.paired_bootstrap(groups, n_resamples=n_resamples)
    return out | {
        "diff": 100 * res.diff, "ci_low": 100 * res.low, "ci_high": 100 * res.high,
        "p_value": res.p_value, "mcnemar_p": res.mcnemar_p,
        "significant": res.p_value < ALPHA, "n_docs": res.n_docs,
        "method": f"paired bootstrap over test documents ({n_resamples:,} resamples), "
                  f"pooled over {len(seeds)} seed(s)",
        "reason": None, "note": out["note"] + (" (left out)" if skipped else ""),
    }


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

def summarize(runs: list[dict], n_resamples: int = stats.N_RESAMPLES) -> dict:
    """``{"rows", "comparisons", "notes"}`` of ``runs`` (as :func:`load_runs` gives them, plus
    any not-run jobs).

    rows: one per (data, attention, max_length); ``n_ok`` / ``n_failed`` / ``n_not_run``;
    per column ``<col>_mean``, ``_std`` (sample std over seeds), ``_ci_low``, ``_ci_high``
    (accuracies in %); ``interval`` (t / bootstrap / none) and ``interval_note`` for test
    accuracy and F1; ``vs_full`` (the paired difference to ``full`` at the same data and length,
    None for ``full`` and the baseline); ``best`` (resource columns where the row is best among
    the backends at its data and length).
    comparisons: every paired difference, the baseline's once per length of ``full``.
    """
    preds = PredictionStore()
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run.get("data"), run.get("attention"), run.get("max_length")),
                          []).append(run)
    rows = [_row(key, members, preds, n_resamples) for key, members in groups.items()]
    rows.sort(key=lambda r: (str(r["data"] or ""), r["kind"] == "baseline",
                             sort_val(r["max_length"]), str(r["attention"] or "")))
    comparisons = []
    for (data, attention, length), reference in groups.items():
        if attention != REFERENCE:
            continue
        for row in rows:  # the backends at this length and the baseline
            if row["data"] != data or row["attention"] == REFERENCE or (
                    row["kind"] == "model" and row["max_length"] != length):
                continue
            other = groups[(row["data"], row["attention"], row["max_length"])]
            cmp = {"data": data, "attention": row["attention"], "max_length": length,
                   "kind": row["kind"], "reference": REFERENCE}
            cmp |= paired_difference(reference, other, preds, n_resamples)
            comparisons.append(cmp)
            if row["kind"] == "model":
                row["vs_full"] = cmp
    for row in rows:
        if row["kind"] == "model" and row["attention"] != REFERENCE and row["vs_full"] is None:
            row["vs_full"] = {"diff": None, "significant": False,
                              "reason": f"no {REFERENCE} run at this length", "note": ""}
    _mark_best(rows)
    notes = list(preds.notes)
    no_pred = [f"{r['attention']} L{r['max_length']}" for r in rows
               if r["interval"] == "none" and r["n_ok"] == 1]
    if no_pred:
        notes.append(f"single seed and {NO_PREDICTIONS} (no interval): {', '.join(no_pred)}")
    return {"rows": rows, "comparisons": comparisons, "notes": notes,
            "n_resamples": n_resamples}


def _mark_best(rows: list[dict]) -> None:
    by_setting: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["kind"] == "model":
            by_setting.setdefault((row["data"], row["max_length"]), []).append(row)
    for members in by_setting.values():
        for col in MARKED:
            better = COLUMNS[col][2]
            vals = [r[f"{col}_mean"] for r in members if r[f"{col}_mean"] is not None]
            if len(vals) < 2:
                continue  # a lone backend is not "best" at anything
            target = max(vals) if better == "max" else min(vals)
            for r in members:
                if r[f"{col}_mean"] is not None and math.isclose(r[f"{col}_mean"], target,
                                                                 rel_tol=1e-12, abs_tol=1e-12):
                    r["best"].append(col)
