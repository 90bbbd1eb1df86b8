"""``arena-compare SWEEP_DIR``: one table and three plots from a sweep of ``arena-train`` runs.

    arena-compare multirun/2025-01-01/12-00-00            # writes SWEEP_DIR/comparison/
    arena-compare multirun/2025-01-01/12-00-00 --out report/

Every ``metrics.json`` under SWEEP_DIR is one run (``status`` ok / failed; ``running`` = it did
not finish); a run directory with a ``.hydra/`` folder but no ``metrics.json`` did not finish
either (its backend, length and seed are read back from ``.hydra/``). Every ``multirun.yaml``
under SWEEP_DIR (Hydra writes one when a sweep starts) gives the sweep's grid: a job of the grid
without a run directory never started. Both are reported as "not run".

Outputs (in ``--out``, default ``SWEEP_DIR/comparison/``):

- ``comparison.md``: one row per data × backend × length: test accuracy and macro-F1 with a 95%
  interval (t over seeds; a bootstrap over test documents for a single seed; the kind is shown),
  the paired difference in accuracy to ``full`` at the same data, length and seeds (points, 95%
  interval, p-value; significant ones marked), train tokens/s, peak memory, parameters, wall
  time and ok / failed / not-run counts. The TF-IDF baseline (``kind: baseline`` runs) is a row
  under every length. Then every paired test (with an exact McNemar p-value too), the jobs not
  run, the failed runs and notes (e.g. runs without per-document predictions).
- ``accuracy_vs_length.png``, ``throughput_vs_length.png``, ``memory_vs_length.png``: one line
  per backend, error bars = 95% intervals; the baseline as a horizontal line.
- ``runs.csv``: every run, ok, failed and not run, one row each; ``summary.json``: the rows,
  the paired comparisons, the grid and the runs.

Python API: :func:`load_runs`, :func:`load_sweep`, :func:`summarize`, :func:`write_report`.
"""

from __future__ import annotations

import argparse
import sys

from .. import stats
from .grid import Job, sweep_grid
from .load import NOT_FINISHED, STILL_RUNNING, load_runs, read_predictions
from .report import build_report, load_sweep, markdown_report, terminal_report, write_report
from .summary import paired_difference, summarize

__all__ = [
    "NOT_FINISHED", "STILL_RUNNING", "Job", "build_report", "load_runs", "load_sweep", "main",
    "markdown_report", "paired_difference", "read_predictions", "summarize", "sweep_grid",
    "terminal_report", "write_report",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="arena-compare",
        description="Table + plots comparing the runs of a Hydra multirun (arena-train).")
    p.add_argument("sweep_dir", help="the multirun directory (searched recursively)")
    p.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/comparison)")
    p.add_argument("--resamples", type=int, default=stats.N_RESAMPLES,
                   help=f"bootstrap resamples (default {stats.N_RESAMPLES:,})")
    args = p.parse_args(argv)
    if args.resamples < 100:
        p.error(f"--resamples must be at least 100, got {args.resamples}")
    try:
        report = build_report(args.sweep_dir, args.resamples)
        paths = write_report(args.sweep_dir, args.out, args.resamples, report=report)
    except (FileNotFoundError, ValueError) as err:
        print(f"arena-compare: error: {err}", file=sys.stderr)
        return 2
    print(terminal_report(report.summary, report.runs, report.grid))
    print()
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
