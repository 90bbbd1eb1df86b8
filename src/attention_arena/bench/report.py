"""Reports of a sweep: the console table, ours / peer ratios, and bench.csv / .json / .png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .peers import PEERS

NOISY_SPREAD = 1.25  # max/min of the repeats above this: the measurement is flagged as noisy
CSV_COLUMNS = [
    "backend", "kind", "N", "status", "ms_median", "ms_min", "ms_max", "peak_mb",
    "speedup_vs_full", "gflops", "pct_gemm_peak", "useful_gflop", "params", "mem_method",
    "options", "error",
]


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(report: dict) -> str:
    cols = ["backend", "N", "ms (median)", "peak MB", "speed-up vs full", "GFLOP/s",
            "% GEMM peak"]
    rows = []
    for r in report["results"]:
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok":
            rows.append([r["backend"], str(r["N"]), f"FAILED: {r['error'][:80]}"])
            continue
        noisy = r.get("ms_min") and r["ms_max"] / r["ms_min"] > NOISY_SPREAD
        ms = _fmt(r["ms_median"], ".1f") + (" ~" if noisy else "")
        rows.append([r["backend"], str(r["N"]), ms,
                     _fmt(r["peak_mb"], ".1f"), _fmt(r.get("speedup_vs_full"), ".2f"),
                     _fmt(r.get("gflops"), ".1f"), _fmt(r.get("pct_gemm_peak"), ".1f")])
    full_rows = [row for row in rows if len(row) == len(cols)]
    widths = [max([len(c)] + [len(row[i]) for row in full_rows]) for i, c in enumerate(cols)]
    widths[0] = max([widths[0]] + [len(row[0]) for row in rows])
    widths[1] = max([widths[1]] + [len(row[1]) for row in rows])

    def fmt(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(widths[i + 1]) if len(cells) == len(cols) or i == 0 else c
                  for i, c in enumerate(cells[1:])]
        return "  ".join(parts)

    line = fmt(cols)
    out = [line, "-" * len(line)] + [fmt(row) for row in rows]
    if any(row[2].endswith(" ~") for row in rows if len(row) == len(cols)):
        out.append(f"~ = the repeats spread by more than {NOISY_SPREAD - 1:.0%} (max/min): "
                   "was the machine busy? re-run on a quiet one")
    return "\n".join(out)


def peer_ratios(report: dict) -> list[dict]:
    """ours / peer time and memory ratios per method and N (< 1: ours is faster / smaller)."""
    ok = {(r["backend"], r["N"]): r for r in report["results"] if r["status"] == "ok"}
    out = []
    for (name, N), peer in ok.items():
        if name not in PEERS:
            continue
        method = PEERS[name].method
        ours = ok.get((method, N))
        if ours is None:
            continue
        out.append({"method": method, "peer": name, "N": N,
                    "time_ratio": ours["ms_median"] / peer["ms_median"],
                    "mem_ratio": (ours["peak_mb"] / peer["peak_mb"]
                                  if peer["peak_mb"] and peer["peak_mb"] > 0 else None)})
    return out


def format_peer_ratios(ratios: list[dict]) -> str:
    if not ratios:
        return ""
    lines = ["ours / peer (time ratio < 1 = ours faster; memory ratio < 1 = ours smaller):",
             f"{'method':<11} {'peer':<22} {'N':>6} {'time ours/peer':>15} {'mem ours/peer':>14}"]
    for r in sorted(ratios, key=lambda r: (r["method"], r["peer"], r["N"])):
        lines.append(f"{r['method']:<11} {r['peer']:<22} {r['N']:>6} "
                     f"{r['time_ratio']:>15.2f} {_fmt(r['mem_ratio'], '.2f'):>14}")
    return "\n".join(lines)


def write_outputs(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """``bench.csv`` (:data:`CSV_COLUMNS`), ``bench.json`` (meta, results, peer ratios) and
    ``bench.png`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json", "png": out / "bench.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in report["results"]:
            row = {k: r.get(k) for k in CSV_COLUMNS}
            row["options"] = json.dumps(r.get("options", {}), sort_keys=True)
            w.writerow(row)
    report = {**report, "peer_ratios": peer_ratios(report)}
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    plot_bench(report, paths["png"])
    return paths


def line_style_of(name: str) -> dict:
    """Plot style of a backend, or of a peer: its method's colour, dashed, its own marker."""
    from attention_arena.plotting import line_style

    peer = PEERS.get(name)
    if peer is None:
        return line_style(name)
    siblings = [p for p in PEERS.values() if p.method == peer.method]
    return line_style(peer.method, peer=siblings.index(peer) + 1)


def plot_bench(report: dict, path: str | Path) -> Path:
    """Time and peak memory vs N (log-log), one line per backend and peer."""
    from attention_arena.plotting import plain_log_y, save_figure, setup_length_axis, subplots

    meta = report["meta"]
    ok = [r for r in report["results"] if r["status"] == "ok"]
    fig, (ax_t, ax_m) = subplots(2)
    names = list(dict.fromkeys(r["backend"] for r in ok))
    for name in names:
        rs = sorted((r for r in ok if r["backend"] == name), key=lambda r: r["N"])
        ns = [r["N"] for r in rs]
        ax_t.plot(ns, [r["ms_median"] for r in rs], label=name, **line_style_of(name))
        mem = [(r["N"], r["peak_mb"]) for r in rs if r["peak_mb"] and r["peak_mb"] > 0]
        if mem:
            ax_m.plot([m[0] for m in mem], [m[1] for m in mem], label=name, **line_style_of(name))
    failed = sorted({r["backend"] for r in report["results"] if r["status"] == "failed"})
    lengths = meta.get("lengths") or [r["N"] for r in ok]
    for ax, ylabel, title in ((ax_t, "fwd+bwd time (ms, median)", "time vs N"),
                              (ax_m, "peak extra memory (MB)", "memory vs N")):
        setup_length_axis(ax, lengths)
        plain_log_y(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    note = (f"{meta['device']} {meta['dtype']}, {meta['threads']} threads, B={meta['batch']}, "
            f"{meta['heads']}x{meta['head_dim']} heads; GEMM peak "
            f"{meta['gemm']['gflops']:.0f} GFLOP/s")
    if failed:
        note += f"; failed (some N): {', '.join(failed)}"
    fig.suptitle(f"attention fwd+bwd — {note}", fontsize=9)
    return save_figure(fig, path)
