"""``arena-compare SWEEP_DIR``: one table and three plots from a Hydra multirun of ``arena-train``.

    arena-compare multirun/2025-01-01/12-00-00            # writes SWEEP_DIR/comparison/
    arena-compare multirun/2025-01-01/12-00-00 --out report/

Every ``metrics.json`` under SWEEP_DIR is one run; a run directory with a ``.hydra/`` folder but no
``metrics.json`` is a run that crashed or was killed, listed as failed (its backend, length and
seed are read back from ``.hydra/overrides.yaml``, ``hydra.yaml`` and ``config.yaml``).

Outputs (in ``--out``, default ``SWEEP_DIR/comparison/``):

- ``comparison.md``: one row per data × backend × length: mean ± std over seeds (sample std,
  n − 1; blank for a single seed) of test accuracy and macro-F1 (%), train tokens/s, peak memory,
  parameters, wall time, and the number of ok / failed runs with their errors. **Bold** (``*`` in
  the terminal) = best among the backends at the same data and length (highest accuracy, F1 and
  throughput; lowest memory, parameters and wall time). Then every failed run with its error.
- ``accuracy_vs_length.png``, ``throughput_vs_length.png``, ``memory_vs_length.png``: one line
  per backend, error bars = std over seeds.
- ``runs.csv``: every run, ok and failed, one row each; ``summary.json``: the table's numbers.

Python API: :func:`load_runs`, :func:`summarize`, :func:`write_report`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from .utils import METRIC_KEYS

CSV_COLUMNS = ["run", *METRIC_KEYS, "source"]
CRASHED_ERROR = "no metrics.json (run crashed or was killed)"

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
# columns of the printed / Markdown table: (summary column, header, number format)
TABLE = [
    ("test_acc", "test acc %", ".2f"),
    ("test_f1", "test F1 %", ".2f"),
    ("train_tokens_per_s", "train tok/s", ",.0f"),
    ("peak_memory_mb", "peak MB", ",.0f"),
    ("parameters", "params", ",.0f"),
    ("wall_time_s", "wall s", ",.1f"),
]
MARKED = ["test_acc", "test_f1", "train_tokens_per_s", "peak_memory_mb", "parameters",
          "wall_time_s"]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _read_yaml(path: Path):
    try:
        import yaml

        with open(path) as f:
            return yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - a broken file just yields no information
        return None


def _find_key(node, key: str):
    """Breadth-first search for ``key`` in nested dicts/lists; the first value found."""
    queue = [node]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            if key in cur and not isinstance(cur[key], dict | list):
                return cur[key]
            queue.extend(cur.values())
        elif isinstance(cur, list):
            queue.extend(cur)
    return None


def _as_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def _plain(v):
    """A usable scalar from a saved config (unresolved ``${...}`` interpolations are not)."""
    if isinstance(v, str) and "${" in v:
        return None
    return v if isinstance(v, str | int | float) and not isinstance(v, bool) else None


def _hydra_info(run_dir: Path) -> dict:
    """attention / data / max_length / seed / overrides of a run, from its ``.hydra`` folder.

    Priority (the same values ``arena-train`` writes to metrics.json first): ``config.yaml``
    (``attention.name``, ``data.name``, ``data.max_length``, ``seed``), then the group choices in
    ``hydra.yaml``, then ``overrides.yaml``, then any ``max_length`` / ``seed`` key in the config.
    """
    hydra = run_dir / ".hydra"
    found: dict[str, list] = {k: [] for k in ("attention", "data", "max_length", "seed")}
    overrides = _read_yaml(hydra / "overrides.yaml")
    config = _read_yaml(hydra / "config.yaml")
    hydra_cfg = _read_yaml(hydra / "hydra.yaml")
    if isinstance(config, dict):
        for group in ("attention", "data"):
            node = config.get(group)
            if isinstance(node, dict):
                found[group].append(_plain(node.get("name")))
                if group == "data":
                    found["max_length"].append(_plain(node.get("max_length")))
            else:
                found[group].append(_plain(node))
        found["seed"].append(_plain(config.get("seed")))
    if isinstance(hydra_cfg, dict):
        choices = (((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices")) or {}
        for group in ("attention", "data"):
            found[group].append(_plain(choices.get(group)))
    info: dict = {}
    if isinstance(overrides, list):
        info["overrides"] = overrides
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                continue
            key, value = item.split("=", 1)
            key = key.lstrip("+~")
            last = key.split(".")[-1]
            if last in ("max_length", "seed") or (last in ("attention", "data") and key == last):
                found[last].append(value)  # attention.window=…: an option, not the choice
    if isinstance(config, dict):
        for key in ("max_length", "seed"):
            found[key].append(_plain(_find_key(config, key)))
    for key, values in found.items():
        info[key] = next((v for v in values if v is not None), None)
    for key in ("max_length", "seed"):
        info[key] = _as_int(info.get(key))
    return info


def _blank_run() -> dict:
    return dict.fromkeys(CSV_COLUMNS)


def load_runs(sweep_dir: str | Path) -> list[dict]:
    """Every run under ``sweep_dir``: one dict per ``metrics.json`` (status as recorded) plus one
    ``failed`` dict per ``.hydra/`` run directory without a ``metrics.json``.

    Each dict has every key of :data:`CSV_COLUMNS`; ``run`` is the directory relative to
    ``sweep_dir`` and ``run_dir`` the directory as found. Raises FileNotFoundError when
    ``sweep_dir`` is missing, ValueError when it holds no runs.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {str(root)!r} does not exist (or is not a "
                                f"directory); pass the multirun folder, e.g. multirun/DATE/TIME")
    runs = []
    metric_dirs = set()
    for path in sorted(root.rglob("metrics.json")):
        run = _blank_run()
        run_dir = path.parent
        metric_dirs.add(run_dir)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            data = {"status": "failed", "error": f"unreadable metrics.json: {err}"}
            data.update({k: v for k, v in _hydra_info(run_dir).items() if v is not None})
        for key in METRIC_KEYS:
            run[key] = data.get(key)
        run["status"] = "ok" if data.get("status", "ok") == "ok" else "failed"
        if run["status"] == "failed" and not run["error"]:
            run["error"] = "status failed (no error message recorded)"
        if any(run[k] is None for k in ("attention", "max_length", "seed")) \
                and (run_dir / ".hydra").is_dir():
            for k, v in _hydra_info(run_dir).items():
                if run.get(k) is None:
                    run[k] = v
        run["run_dir"] = str(run_dir)
        run["source"] = "metrics.json"
        runs.append(run)

    for hydra in sorted(root.rglob(".hydra")):
        run_dir = hydra.parent
        if not hydra.is_dir() or any(run_dir == d or run_dir in d.parents for d in metric_dirs):
            continue
        run = _blank_run()
        run.update({k: v for k, v in _hydra_info(run_dir).items() if k in run})
        run.update(status="failed", error=CRASHED_ERROR, run_dir=str(run_dir),
                   source=".hydra only")
        runs.append(run)

    if not runs:
        raise ValueError(f"no runs found under {str(root)!r}: looked for metrics.json files and "
                         f"run directories with a .hydra/ folder")
    for run in runs:
        rel = Path(run["run_dir"]).relative_to(root)
        run["run"] = str(rel) if str(rel) != "." else root.name
        for key in ("attention", "data"):
            if run[key] is not None:
                run[key] = str(run[key])
        run["max_length"] = _as_int(run["max_length"])
        run["seed"] = _as_int(run["seed"])
    runs.sort(key=_run_sort_key)
    return runs


def _sort_val(v):
    return (0, v, "") if isinstance(v, int | float) else (1, 0, str(v))


def _run_sort_key(run: dict):
    return (str(run.get("data") or ""), _sort_val(run.get("max_length")),
            str(run.get("attention") or ""), _sort_val(run.get("seed")), run.get("run") or "")


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals:
        return None, None
    mean = statistics.fmean(vals)
    return mean, (statistics.stdev(vals) if len(vals) > 1 else None)


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (data, attention, max_length): ``n_ok``, ``n_failed``, ``<col>_mean`` and
    ``<col>_std`` (accuracies in %, sample std over the ok runs, None for fewer than 2),
    ``errors`` (distinct error messages of the failed runs), ``status`` (ok / partial / failed)
    and ``best`` (the columns where this row is best at its data and length)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run.get("data"), run.get("attention"), run.get("max_length"))
        groups.setdefault(key, []).append(run)
    rows = []
    for (data, attention, length), members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        failed = [r for r in members if r["status"] != "ok"]
        row = {"data": data, "attention": attention, "max_length": length,
               "n_ok": len(ok), "n_failed": len(failed),
               "seeds": sorted((r.get("seed") for r in ok), key=_sort_val),
               "errors": list(dict.fromkeys(str(r.get("error")) for r in failed)),
               "status": "ok" if not failed else ("partial" if ok else "failed")}
        for col, (key, scale, _) in COLUMNS.items():
            mean, std = _mean_std([r.get(key) for r in ok])
            row[f"{col}_mean"] = None if mean is None else mean * scale
            row[f"{col}_std"] = None if std is None else std * scale
        row["best"] = []
        rows.append(row)
    rows.sort(key=lambda r: (str(r["data"] or ""), _sort_val(r["max_length"]),
                             str(r["attention"] or "")))
    _mark_best(rows)
    return rows


def _mark_best(rows: list[dict]) -> None:
    by_setting: dict[tuple, list[dict]] = {}
    for row in rows:
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


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def _cell(row: dict, col: str, fmt: str) -> str:
    mean, std = row[f"{col}_mean"], row[f"{col}_std"]
    if mean is None:
        return "failed" if row["n_ok"] == 0 else "-"
    text = format(mean, fmt)
    if std is not None and col != "parameters":
        text += f" ± {format(std, fmt)}"
    return text


def _table_cells(rows: list[dict], marker: str) -> tuple[list[str], list[list[str]]]:
    several_data = len({r["data"] for r in rows}) > 1
    header = (["data"] if several_data else []) + ["attention", "length"]
    header += [h for _, h, _ in TABLE] + ["n ok/failed", "errors"]
    body = []
    for row in rows:
        cells = ([str(row["data"])] if several_data else [])
        cells += [str(row["attention"]), str(row["max_length"])]
        for col, _, fmt in TABLE:
            text = _cell(row, col, fmt)
            if col in row["best"]:
                text = marker.replace("X", text)
            cells.append(text)
        cells.append(f"{row['n_ok']}/{row['n_failed']}")
        cells.append("; ".join(e[:120] for e in row["errors"]))
        body.append(cells)
    return header, body


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], runs: list[dict], sweep_dir: str | Path = "") -> str:
    header, body = _table_cells(rows, "**X**")
    lines = [f"# Sweep comparison: `{sweep_dir}`", "",
             f"{sum(r['status'] == 'ok' for r in runs)} ok runs, "
             f"{sum(r['status'] != 'ok' for r in runs)} failed. Mean ± std over seeds (sample "
             "std; none for a single seed); **bold** = best among the backends at the same "
             "data and length (accuracy, F1, tokens/s: highest; memory, parameters, wall "
             "time: lowest). Accuracy and F1 in %.", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if h in ("data", "attention", "errors") else "---:"
                            for h in header) + "|"]
    for cells in body:
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed runs", "", "| attention | length | seed | run | error |",
                  "|:---|---:|---:|:---|:---|"]
        for r in failed:
            lines.append(f"| {r['attention']} | {r['max_length']} | {r['seed']} | "
                         f"`{r['run']}` | {_md_escape(str(r['error']))} |")
    return "\n".join(lines) + "\n"


def terminal_table(rows: list[dict], runs: list[dict]) -> str:
    header, body = _table_cells(rows, "X*")
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # errors column: never pad
    left = {"data", "attention", "errors"}

    def fmt(cells):
        return "  ".join(c.ljust(w) if h in left else c.rjust(w)
                         for c, w, h in zip(cells, widths, header, strict=True)).rstrip()

    out = [fmt(header), "-" * len(fmt(header))] + [fmt(b) for b in body]
    out.append("* = best among backends at the same data and length; mean ± std over seeds")
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        out += ["", f"failed runs ({len(failed)}):"]
        for r in failed:
            out.append(f"  {r['attention']} N={r['max_length']} seed={r['seed']} "
                       f"[{r['run']}]: {r['error']}")
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


def plot_metric(rows: list[dict], col: str, ylabel: str, log_y: bool, path: Path) -> Path:
    from attention_arena.plotting import (
        line_style,
        plain_log_y,
        save_figure,
        setup_length_axis,
        subplots,
    )

    fig, (ax,) = subplots(1, width=6.5, height=4.5)
    several_data = len({r["data"] for r in rows}) > 1
    lines = list(dict.fromkeys((r["data"], r["attention"]) for r in rows))
    lengths = [r["max_length"] for r in rows if isinstance(r["max_length"], int)]
    for data, attention in lines:
        members = [r for r in rows if (r["data"], r["attention"]) == (data, attention)
                   and isinstance(r["max_length"], int)]
        pts = sorted((r["max_length"], r[f"{col}_mean"], r[f"{col}_std"] or 0.0)
                     for r in members if r[f"{col}_mean"] is not None)
        failed = sorted(r["max_length"] for r in members if r["n_ok"] == 0)
        label = str(attention) + (f" ({data})" if several_data else "")
        if failed:
            label += f" — failed at N={', '.join(map(str, failed))}"
        style = line_style(str(attention))
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, label=label, capsize=3, **style)
        else:
            ax.plot([], [], label=label, **style)
    setup_length_axis(ax, lengths)
    if log_y:
        plain_log_y(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs sequence length (mean ± std over seeds)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_runs_csv(runs: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for run in runs:
            row = dict(run)
            if row.get("overrides") is not None and not isinstance(row["overrides"], str):
                row["overrides"] = json.dumps(row["overrides"])
            w.writerow(row)
    return path


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 runs: list[dict] | None = None) -> dict[str, Path]:
    """Load (unless ``runs`` is given), summarise and write everything; returns
    ``{name: path}`` (markdown, csv, json and the three PNGs)."""
    runs = load_runs(sweep_dir) if runs is None else runs
    rows = summarize(runs)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "comparison.md", "csv": out / "runs.csv",
             "json": out / "summary.json"}
    paths["markdown"].write_text(markdown_table(rows, runs, sweep_dir))
    write_runs_csv(runs, paths["csv"])
    paths["json"].write_text(json.dumps({"rows": rows, "runs": runs}, indent=2, default=str))
    for key, (name, col, ylabel, log_y) in PLOTS.items():
        paths[key] = plot_metric(rows, col, ylabel, log_y, out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="arena-compare",
        description="Table + plots comparing the runs of a Hydra multirun (arena-train).")
    p.add_argument("sweep_dir", help="the multirun directory (searched recursively)")
    p.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/comparison)")
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.sweep_dir)
        paths = write_report(args.sweep_dir, args.out, runs=runs)
    except (FileNotFoundError, ValueError) as err:
        print(f"arena-compare: error: {err}", file=sys.stderr)
        return 2
    print(terminal_table(summarize(runs), runs))
    print()
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
