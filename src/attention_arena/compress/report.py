"""The ``arena-compress`` table: one row per variant, written as Markdown, CSV and JSON, and a
plot of test accuracy against CPU latency."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: the columns of ``compress.csv`` / the keys of each row of ``compress.json``
COLUMNS = [
    "variant", "dtype", "heads_kept", "test_acc", "acc_low", "acc_high", "test_f1", "f1_low",
    "f1_high", "diff_vs_fp32", "diff_low", "diff_high", "mcnemar_p", "agree_with_fp32",
    "params", "nonzero_params", "sparsity", "size_bytes", "size_vs_fp32", "ms_b1", "ms_batch",
    "speedup_b1", "speedup_batch", "ms_b1_long", "ms_batch_long", "attn_ms_batch",
    "attn_speedup", "peak_mb", "finetune_epochs", "notes",
]


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _ci(row: Mapping[str, Any], key: str, low: str, high: str) -> str:
    if row.get(key) is None:
        return "–"
    if row.get(low) is None:
        return _pct(row[key])
    return f"{_pct(row[key])} [{_pct(row[low])}, {_pct(row[high])}]"


def _diff(row: Mapping[str, Any]) -> str:
    if row.get("diff_low") is None:
        return "(reference)"
    d = f"{100 * row['diff_vs_fp32']:+.1f} [{100 * row['diff_low']:+.1f}, " \
        f"{100 * row['diff_high']:+.1f}]"
    return f"{d}, p={row['mcnemar_p']:.2g}"


def _times(row: Mapping[str, Any], key: str, ratio: str | None) -> str:
    cell = _num(row.get(key), ".2f")
    if ratio and row.get(ratio) is not None and row.get(key) is not None:
        cell += f" ({row[ratio]:.2f}×)"
    return cell


def markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """The table with its legend and the settings it was measured with."""
    L, B, long = meta["max_length"], meta["batch"], meta["long_length"]
    head = ["variant", "test acc % [95% CI]", "macro-F1 %", "Δacc vs fp32 (pts) [95% CI], "
            "McNemar p", "params (non-zero)", "size MB (× fp32)", f"ms/doc B=1 @{L} (speed-up)",
            f"ms/doc B={B} @{L} (speed-up)", f"ms/doc B=1 / B={B} @{long}",
            f"attention ms/doc B={B} @{L} (speed-up)", f"peak MB B={B} @{L}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = f"{r['params']:,}" if r.get("params") is not None else "–"
        if r.get("nonzero_params") is not None and r["nonzero_params"] != r.get("params"):
            params += f" ({r['nonzero_params']:,})"
        size = f"{r['size_bytes'] / 2**20:.2f} ({r['size_vs_fp32']:.2f}×)"
        long_cell = f"{_num(r.get('ms_b1_long'), '.2f')} / {_num(r.get('ms_batch_long'), '.2f')}"
        lines.append("| " + " | ".join([
            f"`{r['variant']}`", _ci(r, "test_acc", "acc_low", "acc_high"),
            _ci(r, "test_f1", "f1_low", "f1_high"), _diff(r), params, size,
            _times(r, "ms_b1", "speedup_b1"), _times(r, "ms_batch", "speedup_batch"), long_cell,
            _times(r, "attn_ms_batch", "attn_speedup"), _num(r.get("peak_mb"), ".0f"),
        ]) + " |")
    notes = [f"- `{r['variant']}`: {note}" for r in rows for note in r.get("notes") or []]
    legend = [
        f"Run `{meta['run_dir']}` ({meta['attention']}, {meta['model']}), checkpoint "
        f"`{meta['checkpoint']}`; {meta['test_docs']} test documents at {L} tokens.",
        f"CPU: {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}; load average "
        f"{meta['load_before']} before, {meta['load_after']} after; {meta['repeats']} timed "
        f"calls (median) after {meta['warmup']} warm-up per cell.",
        "Accuracy and macro-F1: percentile bootstrap over test documents; Δacc: paired "
        "bootstrap against fp32 on the same documents, with the exact McNemar p-value. "
        "Latency: whole model per document on random tokens of exactly that length; "
        "attention: the attention modules of all blocks alone (projections and core). Size: "
        "the saved file (state dict and recipe). Peak: weights plus the rise of the process's "
        "peak RSS during one forward.",
    ]
    if meta.get("finetune"):
        legend.append(meta["finetune"])
    return "\n".join([*lines, "", *legend, *(["", "Notes:", *notes] if notes else [])]) + "\n"


def write_report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], out: str | Path
                 ) -> dict[str, Path]:
    """``compress.md``, ``compress.csv``, ``compress.json`` and ``compress.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "compress.md", "csv": out / "compress.csv",
             "json": out / "compress.json", "png": out / "compress.png"}
    paths["md"].write_text(markdown(rows, meta))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                             for k, v in r.items()})
    table = [{k: v for k, v in r.items() if k != "preds"} for r in rows]
    paths["json"].write_text(json.dumps({"meta": dict(meta), "rows": table}, indent=2) + "\n")
    plot(rows, meta, paths["png"])
    return paths


def plot(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], path: Path) -> Path:
    """Test accuracy (with its interval) against ms/document at batch ``meta['batch']``."""
    from ..plotting import save_figure, subplots

    fig, (ax,) = subplots(1, width=6.5, height=4.5)
    for r in rows:
        if r.get("ms_batch") is None or r.get("test_acc") is None:
            continue
        acc = 100 * r["test_acc"]
        err = None
        if r.get("acc_low") is not None:
            err = [[acc - 100 * r["acc_low"]], [100 * r["acc_high"] - acc]]
        ax.errorbar(r["ms_batch"], acc, yerr=err, fmt="o", capsize=3)
        ax.annotate(r["variant"], (r["ms_batch"], acc), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"CPU ms per document (batch {meta['batch']}, {meta['max_length']} tokens, "
                  f"{meta['threads']} threads)")
    ax.set_ylabel("test accuracy % (95% CI)")
    ax.set_title(f"{meta['attention']}: accuracy vs CPU latency")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
