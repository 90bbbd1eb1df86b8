"""The main job: train every backend over a grid of lengths, then print the comparison.

    arena-compare-run                                  # experiment=quick_compare (CPU, < 10 min)
    arena-compare-run --experiment compare_bbc         # backends x lengths x 3 seeds
    arena-compare-run --experiment compare_bbc_gpu trainer=gpu   # extra args go to arena-train

It runs ``arena-train -m experiment=<name> [overrides]`` into one sweep directory (one job per
backend x length x seed; a failing job is recorded, the others go on) and then
``arena-compare <sweep dir>``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from . import compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="arena-compare-run",
        description="Train all attention backends on a grid of lengths and compare them.",
        epilog="Any further arguments are Hydra overrides passed to arena-train -m.")
    parser.add_argument("--experiment", default="quick_compare",
                        help="a preset in conf/experiment/ (default: quick_compare)")
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="where the runs go (default: multirun/<experiment>_<timestamp>)")
    args, overrides = parser.parse_known_args(argv)
    sweep_dir = args.sweep_dir or Path("multirun") / (
        f"{args.experiment}_{time.strftime('%Y-%m-%d_%H-%M-%S')}")

    command = [sys.executable, "-m", "attention_arena.train", "-m",
               f"experiment={args.experiment}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    print("+", " ".join(command), flush=True)
    start = time.time()
    code = subprocess.call(command)
    print(f"sweep finished in {time.time() - start:.0f} s (exit status {code})", flush=True)
    if not sweep_dir.exists():
        print(f"error: the sweep wrote nothing to {sweep_dir}; see the messages above",
              file=sys.stderr)
        return code or 1
    report = compare.main([str(sweep_dir)])
    print(f"(rerun the report alone: arena-compare {sweep_dir})")
    return code or report


if __name__ == "__main__":
    sys.exit(main())
