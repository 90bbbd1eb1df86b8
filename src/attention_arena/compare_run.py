"""The main job: train every backend over a grid of lengths, then print the comparison.

    arena-compare-run                                  # experiment=quick_compare (CPU, < 10 min)
    arena-compare-run --experiment compare_bbc         # backends x lengths x 3 seeds
    arena-compare-run --experiment compare_bbc_gpu trainer=gpu   # extra args go to arena-train
    arena-compare-run --resume multirun/quick_compare_<time>     # finish an interrupted sweep

It runs ``arena-train -m experiment=<name> [overrides]`` into one sweep directory (one job per
backend x length x seed; a failing job is recorded, the others go on), then the TF-IDF +
logistic-regression baseline (:mod:`attention_arena.baseline`) on the same data for every seed of
the sweep into ``<sweep dir>/baseline/`` (``--no-baseline`` skips it), then
``arena-compare <sweep dir>``.

Interruptions: SIGINT and SIGTERM are passed on to the sweep, which records the job in progress
as failed and stops; the report covers what is there, and the exit status is 128 + the signal
number. ``--resume SWEEP_DIR`` reads the sweep's grid back from ``SWEEP_DIR/multirun.yaml`` and
runs exactly its jobs that did not finish ``ok`` (never started, failed, or killed: a failed or
killed job's directory is replaced), each as one ``arena-train`` process with its original job
number and directory; the finished jobs' directories are left untouched. A sweep started with
``--no-baseline`` remembers it (``SWEEP_DIR/arena-compare-run.json``). Then it reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from . import compare
from .utils import SweepJob, sweep_grid, sweep_jobs

TRAIN = [sys.executable, "-m", "attention_arena.train"]
BASELINE = [sys.executable, "-m", "attention_arena.baseline"]
# Hydra overrides of the original sweep that a rerun of one of its jobs must not repeat
NOT_REPEATED = ("hydra.mode", "hydra.sweep.dir", "hydra.run.dir", "hydra.job.num")
#: what ``--resume`` must know of the original call (written into the sweep directory)
SETTINGS = "arena-compare-run.json"


class SignalForwarder:
    """While active, SIGINT and SIGTERM go to the running child process (which stops cleanly)
    instead of ending this one; ``received`` is the first such signal, or None."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalForwarder:
        self._previous = {sig: signal.signal(sig, self._forward)
                          for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _forward(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def call(self, command: list[str]) -> int:
        """Run ``command`` to the end; its exit status (128 + N if signal N killed it)."""
        print("+", " ".join(command), flush=True)
        self.child = subprocess.Popen(command)
        try:
            status = self.child.wait()
        finally:
            self.child = None
        return 128 - status if status < 0 else status


def rerun_command(job: SweepJob, sweep_dir: Path) -> list[str]:
    """``arena-train`` for one job of a sweep, as a single run with the job's number, into the
    directory the sweep gives that job (``hydra.sweep.subdir``)."""
    hydra_overrides = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.hydra
    kept = [str(o) for o in hydra_overrides if str(o).split("=", 1)[0] not in NOT_REPEATED]
    return [*TRAIN, *job.overrides, *kept, f"hydra.job.num={job.num}",
            f"hydra.sweep.dir={sweep_dir}", f"hydra.run.dir={sweep_dir}/${{hydra.sweep.subdir}}"]


def resume(sweep_dir: Path, runner: SignalForwarder) -> int:
    """Run the jobs of ``sweep_dir``'s grid that are not ``ok``; 1 if one of them failed."""
    jobs = sweep_jobs(sweep_dir)
    todo = [job for job in jobs if job.status != "ok"]
    print(f"resuming {sweep_dir}: {len(jobs) - len(todo)} of {len(jobs)} jobs finished ok; "
          f"running {len(todo)}: {', '.join(f'{j.num} ({j.status})' for j in todo) or '-'}",
          flush=True)
    code = 0
    for job in todo:
        if job.run_dir is not None:
            print(f"job {job.num} ({job.status}): replacing {job.run_dir}", flush=True)
            shutil.rmtree(job.run_dir)
        status = runner.call(rerun_command(job, sweep_dir))
        if runner.received:
            break
        code = code or status
    return code


def baseline_command(sweep_dir: Path) -> list[str]:
    """The baseline on the sweep's data for each of its seeds, into ``sweep_dir/baseline``: the
    sweep's single-valued overrides (data options, the experiment) without its grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = OmegaConf.load(sweep_dir / "multirun.yaml")
    seeds = sorted({o.split("=", 1)[1] for job in sweep_grid(sweep_dir) for o in job
                    if o.startswith("seed=")}, key=int) or [str(config.seed)]
    task = [str(o) for o in config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(task)
    kept = [text for text, o in zip(task, parsed, strict=True)
            if not o.is_sweep_override() and o.key_or_group != "seed"]
    return [*BASELINE, "-m", *kept, "hydra.sweeper.params=null", f"seed={','.join(seeds)}",
            f"hydra.sweep.dir={sweep_dir / 'baseline'}", "hydra.sweep.subdir=s${seed}"]


def wants_baseline(sweep_dir: Path) -> bool:
    """Whether the sweep was started with its baseline (not ``--no-baseline``)."""
    try:
        return bool(json.loads((sweep_dir / SETTINGS).read_text()).get("baseline", True))
    except (OSError, ValueError):
        return True


def baseline_done(sweep_dir: Path) -> bool:
    """Whether every job of the sweep's baseline finished ok."""
    try:
        return all(job.status == "ok" for job in sweep_jobs(sweep_dir / "baseline"))
    except (OSError, ValueError):
        return False


def unfinished(sweep_dir: Path) -> tuple[str, bool]:
    """(``8 jobs: 6 ok, 1 failed, 1 not run``, whether a job is not ok); ("", False) if the
    grid cannot be read."""
    try:
        jobs = sweep_jobs(sweep_dir)
    except (OSError, ValueError):
        return "", False
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    text = f"{len(jobs)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    return text, set(counts) != {"ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="arena-compare-run",
        description="Train all attention backends on a grid of lengths and compare them.",
        epilog="Any further arguments are Hydra overrides passed to arena-train -m.")
    parser.add_argument("--experiment", default="quick_compare",
                        help="a preset in conf/experiment/ (default: quick_compare)")
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="where the runs go (default: multirun/<experiment>_<timestamp>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="SWEEP_DIR",
                        help="run the jobs of an earlier sweep that did not finish, then report")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", default=None,
                        help="skip the TF-IDF + logistic regression baseline row (--resume "
                             "remembers it)")
    args, overrides = parser.parse_known_args(argv)
    if args.resume is not None and (overrides or args.sweep_dir):
        parser.error("--resume takes no overrides or --sweep-dir: the jobs are read from "
                     "SWEEP_DIR/multirun.yaml")

    start = time.time()
    with SignalForwarder() as runner:
        if args.resume is not None:
            sweep_dir = args.resume.resolve()
            baseline = wants_baseline(sweep_dir) if args.baseline is None else args.baseline
            code = resume(sweep_dir, runner)
        else:
            sweep_dir = args.sweep_dir or Path("multirun") / (
                f"{args.experiment}_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
            baseline = args.baseline is None
            sweep_dir.mkdir(parents=True, exist_ok=True)
            (sweep_dir / SETTINGS).write_text(json.dumps({"baseline": baseline}) + "\n")
            code = runner.call([*TRAIN, "-m", f"experiment={args.experiment}",
                                f"hydra.sweep.dir={sweep_dir}", *overrides])
        if baseline and not runner.received and (sweep_dir / "multirun.yaml").is_file() \
                and not baseline_done(sweep_dir):
            shutil.rmtree(sweep_dir / "baseline", ignore_errors=True)
            code = runner.call(baseline_command(sweep_dir)) or code
    counts, incomplete = unfinished(sweep_dir)
    print(f"sweep {'interrupted' if runner.received else 'ended'} after "
          f"{time.time() - start:.0f} s (exit status {code}); {counts}", flush=True)
    if not any(p.name != SETTINGS for p in sweep_dir.glob("*")):
        print(f"error: the sweep wrote nothing to {sweep_dir}; see the messages above",
              file=sys.stderr)
        return code or 1
    report = compare.main([str(sweep_dir)])
    print(f"(rerun the report alone: arena-compare {sweep_dir})")
    if incomplete:
        print(f"run the jobs that did not finish ok with: arena-compare-run --resume "
              f"{sweep_dir}", file=sys.stderr)
    if runner.received:
        return 128 + runner.received
    return code or report


if __name__ == "__main__":
    sys.exit(main())
