"""Tables (Markdown and terminal), plots and files of the comparison report."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .. import stats
from .grid import jobs_not_started
from .load import CSV_COLUMNS, load_runs, run_sort_key
from .summary import ALPHA, PER_DOCUMENT, REFERENCE, summarize

# columns of the printed / Markdown table after data / length / attention: (key, header)
TABLE = [("test_acc", "test acc %"), ("test_f1", "test F1 %"), ("interval", "95% CI"),
         ("diff", f"Δ acc vs {REFERENCE}, points [95% CI]"), ("p", "p"),
         ("train_tokens_per_s", "train tok/s"), ("peak_memory_mb", "peak MB"),
         ("parameters", "params"), ("wall_time_s", "wall s"),
         ("runs", "runs ok/failed/not run"), ("errors", "errors")]
FORMATS = {"test_acc": ".2f", "test_f1": ".2f", "train_tokens_per_s": ",.0f",
           "peak_memory_mb": ",.0f", "parameters": ",.0f", "wall_time_s": ",.1f"}
LEFT = {"data", "attention", "95% CI", "errors"}  # left-aligned columns (by header)


def legend(n_resamples: int) -> str:
    """What the Markdown table's columns and marks mean."""
    return (
        "Test accuracy and macro-F1 in %. With several seeds: mean ± half-width of the 95% "
        "t-interval over seeds (95% CI column `t`). With one seed: the value and its 95% "
        f"percentile bootstrap interval [low, high] over the test documents ({n_resamples:,} "
        "resamples; `bootstrap`); `none` = one seed without per-document predictions. "
        f"Δ acc vs {REFERENCE}: test accuracy minus {REFERENCE}'s at the same data and length, "
        "in points, with its 95% interval and p-value from a paired bootstrap over test "
        "documents (the same resample for both models, pooled over the seeds both ran); "
        f"**bold** = significant (p < {ALPHA}). The baseline row (TF-IDF + logistic regression "
        "on the full texts, same splits and seeds) repeats under every length with its "
        f"difference to that length's {REFERENCE}. tok/s, peak MB, params, wall s: means over "
        "seeds; **bold** = best among the backends at the same data and length (no test). "
        "runs: ok / failed / not run (never started or did not finish)."
    )


@dataclass
class Report:
    """What the report shows: runs (not-run jobs included), grid info and the summary."""

    runs: list[dict]
    grid: dict
    summary: dict


def load_sweep(sweep_dir: str | Path) -> tuple[list[dict], dict]:
    """Runs under ``sweep_dir`` plus a ``not_run`` run for every job of the sweep grid
    (``multirun.yaml``) that left no run directory; and the grid info."""
    runs = load_runs(sweep_dir)
    missing, grid = jobs_not_started(runs, sweep_dir)
    return sorted(runs + missing, key=run_sort_key), grid


def build_report(sweep_dir: str | Path, n_resamples: int = stats.N_RESAMPLES) -> Report:
    runs, grid = load_sweep(sweep_dir)
    return Report(runs, grid, summarize(runs, n_resamples))


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------

def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _length(run: dict) -> str:
    return "full text" if run.get("kind") == "baseline" else str(run["max_length"])


def _metric_cell(row: dict, col: str) -> str:
    mean, fmt = row[f"{col}_mean"], FORMATS[col]
    if mean is None:
        return {"failed": "failed", "not_run": "not run"}.get(row["status"], "-")
    low, high = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
    if col not in PER_DOCUMENT or low is None:
        return format(mean, fmt)
    if row["interval"] == "t":
        return f"{format(mean, fmt)} ± {format(high - mean, fmt)}"
    return f"{format(mean, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def _diff_cells(row: dict, cmp: dict | None) -> tuple[str, str, bool]:
    """(Δ cell, p cell, significant)."""
    if row["attention"] == REFERENCE and row["kind"] == "model":
        return "reference", "", False
    if cmp is None:
        return "-", "", False
    if cmp.get("diff") is None:
        return ("-" if row["n_ok"] == 0 else cmp.get("reason") or "-"), "", False
    diff = f"{cmp['diff']:+.2f} [{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}]"
    return diff, _p(cmp["p_value"]), bool(cmp["significant"])


def display_rows(summary: dict) -> list[tuple[dict, dict | None, str]]:
    """(row, its comparison to the reference, length cell) in table order: per data and length
    the backends (reference first), then the baseline with its difference at that length."""
    rows = summary["rows"]
    comps = {(c["data"], c["attention"], c["max_length"]): c for c in summary["comparisons"]}
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        models = [r for r in rows if r["data"] == data and r["kind"] == "model"]
        baselines = [r for r in rows if r["data"] == data and r["kind"] == "baseline"]
        lengths = list(dict.fromkeys(r["max_length"] for r in models))
        for length in lengths:
            at = sorted((r for r in models if r["max_length"] == length),
                        key=lambda r: (r["attention"] != REFERENCE, str(r["attention"])))
            out += [(r, r["vs_full"], str(length)) for r in at]
            out += [(b, comps.get((data, b["attention"], length)), "full text")
                    for b in baselines]
        if not lengths:
            out += [(b, None, "full text") for b in baselines]
    return out


def _table_cells(summary: dict, mark: str) -> tuple[list[str], list[list[str]]]:
    """Header and body; ``mark`` turns a marked cell ``X`` into e.g. ``**X**``."""
    shown = display_rows(summary)
    several_data = len({r["data"] for r, _, _ in shown}) > 1
    header = (["data"] if several_data else []) + ["length", "attention"] + [h for _, h in TABLE]
    body = []
    for row, cmp, length in shown:
        diff, p, significant = _diff_cells(row, cmp)
        name = str(row["attention"]) + (" (baseline)" if row["kind"] == "baseline" else "")
        cells = ([str(row["data"])] if several_data else []) + [length, name]
        for key, _ in TABLE:
            if key in FORMATS:
                text = _metric_cell(row, key)
                marked = key in row["best"]
            elif key in ("diff", "p"):
                text, marked = (diff if key == "diff" else p), significant
            elif key == "interval":
                text, marked = (row["interval_note"] if row["n_ok"] else "-"), False
            elif key == "runs":
                text, marked = f"{row['n_ok']}/{row['n_failed']}/{row['n_not_run']}", False
            else:
                text, marked = "; ".join(e[:120] for e in row["errors"]), False
            cells.append(mark.replace("X", text) if marked and text else text)
        body.append(cells)
    return header, body


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], body: list[list[str]], left: set[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if h in left else "---:" for h in header) + "|"]
    return lines + ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in body]


def _counts(runs: list[dict], grid: dict) -> str:
    n = {s: sum(r["status"] == s for r in runs) for s in ("ok", "failed", "not_run")}
    text = f"{n['ok']} ok, {n['failed']} failed, {n['not_run']} not run"
    if grid.get("jobs"):
        text += f" (the sweep grid in multirun.yaml has {grid['jobs']} jobs)"
    return text


def markdown_report(summary: dict, runs: list[dict], sweep_dir: str | Path = "",
                    grid: dict | None = None) -> str:
    """The whole ``comparison.md``: table, legend, paired tests, not-run and failed runs, notes."""
    grid = grid or {}
    header, body = _table_cells(summary, "**X**")
    lines = [f"# Sweep comparison: `{sweep_dir}`", "", _counts(runs, grid) + ".", "",
             *_md_table(header, body, LEFT), "", legend(summary["n_resamples"])]
    if summary["comparisons"]:
        lines += ["", f"## Paired differences to {REFERENCE}", "",
                  "| data | length | attention | Δ acc, points | 95% CI | p (bootstrap) | "
                  "p (exact McNemar) | seeds | test docs | note |",
                  "|:---|---:|:---|---:|:---|---:|---:|:---|---:|:---|"]
        for c in summary["comparisons"]:
            ok = c["diff"] is not None
            lines.append(
                f"| {c['data']} | {c['max_length']} | {c['attention']} | "
                + (f"{c['diff']:+.2f} | [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | "
                   f"{_p(c['p_value'])} | {_p(c['mcnemar_p'])} | " if ok else "- | - | - | - | ")
                + f"{', '.join(map(str, c['seeds'])) or '-'} | {c['n_docs']} | "
                + _md_escape(c.get("note") or c.get("reason") or "") + " |")
    not_run = [r for r in runs if r["status"] == "not_run"]
    if not_run:
        lines += ["", f"## Not run ({len(not_run)})", "",
                  "| attention | length | seed | run | reason | overrides |",
                  "|:---|---:|---:|:---|:---|:---|"]
        for r in not_run:
            lines.append(f"| {r['attention']} | {_length(r)} | {r['seed']} | `{r['run']}` "
                         f"| {r['error']} | {_md_escape(' '.join(r.get('overrides') or []))} |")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", "", "| attention | length | seed | run | error |",
                  "|:---|---:|---:|:---|:---|"]
        for r in failed:
            lines.append(f"| {r['attention']} | {_length(r)} | {r['seed']} | "
                         f"`{r['run']}` | {_md_escape(str(r['error']))} |")
    notes = [*grid.get("notes", []), *summary["notes"]]
    if notes:
        lines += ["", "## Notes", "", *(f"- {_md_escape(n)}" for n in notes)]
    return "\n".join(lines) + "\n"


def terminal_report(summary: dict, runs: list[dict], grid: dict | None = None) -> str:
    grid = grid or {}
    header, body = _table_cells(summary, "X*")
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # errors column: never pad

    def fmt(cells):
        return "  ".join(c.ljust(w) if h in LEFT else c.rjust(w)
                         for c, w, h in zip(cells, widths, header, strict=True)).rstrip()

    out = [fmt(header), "-" * len(fmt(header))] + [fmt(b) for b in body]
    out.append(f"{_counts(runs, grid)}. * on Δ and p: significant (p < {ALPHA}); * on tok/s, "
               "MB, params, wall s: best among backends at this length. Accuracy: mean ± 95% t "
               "over seeds, or [95% bootstrap over test documents] for one seed.")
    for status, title in (("not_run", "not run"), ("failed", "failed runs")):
        listed = [r for r in runs if r["status"] == status]
        if listed:
            out += ["", f"{title} ({len(listed)}):"]
            out += [f"  {r['attention']} N={_length(r)} seed={r['seed']} [{r['run']}]: "
                    f"{r['error']}" for r in listed]
    notes = [*grid.get("notes", []), *summary["notes"]]
    if notes:
        out += ["", "notes:", *(f"  {n}" for n in notes)]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Plots and files
# --------------------------------------------------------------------------------------------

PLOTS = {
    "accuracy_png": ("accuracy_vs_length.png", "test_acc", "test accuracy (%)", False),
    "throughput_png": ("throughput_vs_length.png", "train_tokens_per_s",
                       "train throughput (tokens/s)", True),
    "memory_png": ("memory_vs_length.png", "peak_memory_mb", "peak memory (MB)", True),
}


def _error_bar(row: dict, col: str) -> tuple[float, float]:
    """(below, above) the mean: the 95% interval, within [0, 100] for accuracy and F1."""
    mean, low, high = row[f"{col}_mean"], row[f"{col}_ci_low"], row[f"{col}_ci_high"]
    if low is None:
        return 0.0, 0.0
    if col in PER_DOCUMENT:
        low, high = max(low, 0.0), min(high, 100.0)
    return mean - low, high - mean


def plot_metric(rows: list[dict], col: str, ylabel: str, log_y: bool, path: Path) -> Path:
    """One line per (data, backend) over lengths, error bars = the rows' 95% intervals; the
    baseline rows as horizontal lines with their interval shaded."""
    from attention_arena.plotting import (
        line_style,
        plain_log_y,
        save_figure,
        setup_length_axis,
        subplots,
    )

    fig, (ax,) = subplots(1, width=6.5, height=4.5)
    several_data = len({r["data"] for r in rows}) > 1
    models = [r for r in rows if r["kind"] == "model" and isinstance(r["max_length"], int)]
    for data, attention in dict.fromkeys((r["data"], r["attention"]) for r in models):
        members = [r for r in models if (r["data"], r["attention"]) == (data, attention)]
        pts = sorted((r["max_length"], r[f"{col}_mean"], *_error_bar(r, col))
                     for r in members if r[f"{col}_mean"] is not None)
        failed = sorted(r["max_length"] for r in members if r["n_ok"] == 0)
        label = str(attention) + (f" ({data})" if several_data else "")
        if failed:
            label += f" — no result at N={', '.join(map(str, failed))}"
        style = line_style(str(attention))
        if pts:
            xs, ys, lo, hi = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=[lo, hi], label=label, capsize=3, **style)
        else:
            ax.plot([], [], label=label, **style)
    for row in rows:
        if row["kind"] == "baseline" and row[f"{col}_mean"] is not None:
            label = f"{row['attention']} baseline (full text)" + (
                f" ({row['data']})" if several_data else "")
            line = ax.axhline(row[f"{col}_mean"], color="black", linestyle=":", label=label)
            low, high = _error_bar(row, col)
            ax.axhspan(row[f"{col}_mean"] - low, row[f"{col}_mean"] + high, alpha=0.12,
                       color=line.get_color())
    setup_length_axis(ax, [r["max_length"] for r in models])
    if log_y:
        plain_log_y(ax)
    ax.set_ylabel(ylabel)
    clipped = " within 0-100" if col in PER_DOCUMENT else ""
    ax.set_title(f"{ylabel} vs sequence length (error bars: 95% CI{clipped})", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_runs_csv(runs: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for run in runs:
            w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                        for k, v in run.items()})
    return path


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 n_resamples: int = stats.N_RESAMPLES, report: Report | None = None
                 ) -> dict[str, Path]:
    """Build (unless ``report`` is given) and write everything into ``out_dir`` (default
    ``SWEEP_DIR/comparison``); returns ``{name: path}`` (markdown, csv, json, three PNGs)."""
    report = report or build_report(sweep_dir, n_resamples)
    runs, grid, summary = report.runs, report.grid, report.summary
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "comparison.md", "csv": out / "runs.csv",
             "json": out / "summary.json"}
    paths["markdown"].write_text(markdown_report(summary, runs, sweep_dir, grid))
    write_runs_csv(runs, paths["csv"])
    paths["json"].write_text(json.dumps(
        {**summary, "grid": grid, "runs": runs,
         "statistics": {"confidence": stats.CONFIDENCE, "alpha": ALPHA,
                        "bootstrap_resamples": n_resamples,
                        "bootstrap_seed": stats.BOOTSTRAP_SEED}},
        indent=2, default=str))
    for key, (name, col, ylabel, log_y) in PLOTS.items():
        paths[key] = plot_metric(summary["rows"], col, ylabel, log_y, out / name)
    return paths
