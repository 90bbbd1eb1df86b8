"""Small helpers shared by the training script, the comparison and tests: OmegaConf resolvers,
formatting, the SIGINT / SIGTERM handling of a job, and reading a sweep back (its grid, its
jobs' directories and status)."""

from __future__ import annotations

import contextlib
import json
import math
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: The keys of every run's ``metrics.json`` (``arena-train`` writes them, ``arena-compare`` reads).
METRIC_KEYS = (
    "status", "error", "attention", "data", "max_length", "seed", "parameters", "val_acc",
    "val_f1", "test_acc", "test_f1", "train_tokens_per_s", "peak_memory_mb", "wall_time_s",
    "epochs", "steps", "run_dir", "overrides",
)


#: Where the process reads its own memory figures (a test points it at a fake folder).
PROC_SELF = Path("/proc/self")
#: How far VmHWM may sit above VmRSS just after a reset that worked (memory freed meanwhile).
RESET_SLACK_KB = 8 * 1024


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``); 0 where there is none."""
    try:
        with open(PROC_SELF / "status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS. False where Linux does not
    allow it, or where the kernel accepts the request and keeps the old peak (seen in sandboxed
    CI): the peak is then checked against the current RSS right after the reset."""
    try:
        with open(PROC_SELF / "clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    peak, now = proc_status_kb("VmHWM"), proc_status_kb("VmRSS")
    return 0 < peak <= now + RESET_SLACK_KB


def round_up(value: int, multiple: int | None = 1) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (``None``/0/1: unchanged)."""
    value = int(value)
    multiple = int(multiple or 1)
    return value if multiple <= 1 else math.ceil(value / multiple) * multiple


def auto_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` when training will run on a CUDA GPU with bf16, else ``32-true``."""
    import torch

    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available() \
            and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def register_resolvers() -> None:
    """Register the ``arena.*`` resolvers used in ``conf/`` (idempotent)."""
    for name, fn in (("arena.round_up", round_up), ("arena.auto_precision", auto_precision)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def format_table(rows: Mapping[str, Any]) -> str:
    """A two-column text table of ``rows``; floats with 4 decimals."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "-" if v is None else str(v)

    width = max(len(k) for k in rows)
    return "\n".join(f"  {k:<{width}}  {fmt(v)}" for k, v in rows.items())


# --------------------------------------------------------------------------------------------
# Interruptions: SIGINT / SIGTERM stop a job and its sweep
# --------------------------------------------------------------------------------------------

class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. Not an ``Exception``: a job records it and re-raises it, and
    Hydra does not treat it as one failed job to continue after, so the sweep stops."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(signum).name)


class InterruptHandler:
    """The SIGINT / SIGTERM handler of ``arena-train``: every such signal raises
    :class:`Interrupted` in the main thread, and the first is remembered (``signum``). An
    exception raised while Python runs a ``__del__`` (a signal landing in a garbage collection)
    is only printed, so the job asks again (:func:`raise_if_interrupted`): before it starts and
    at every batch (:class:`StopWhenInterrupted`). Lightning keeps this handler: during ``fit``
    it calls it after its own."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[InterruptHandler]:
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if the installed :class:`InterruptHandler` saw a signal (the
    state is the handler's: signals, like handlers, belong to the whole process)."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, InterruptHandler) and handler.signum is not None:
        raise Interrupted(handler.signum)


# --------------------------------------------------------------------------------------------
# Sweeps: the grid of a Hydra multirun and where each of its jobs stands
# --------------------------------------------------------------------------------------------

#: Structured run information written after :data:`METRIC_KEYS` in ``metrics.json``.
RUN_KEYS = ("kind", "job", "notes", "tokenizer", "data_stats")

#: A job of a sweep that has a directory but no final status was killed (or is still running).
FINISHED = ("ok", "failed")


def sweep_grid(sweep_dir: str | Path) -> list[list[str]]:
    """Every job's task overrides (``key=value`` strings), in Hydra's job order (job num = index).

    Read from ``SWEEP_DIR/multirun.yaml`` (written by Hydra's basic sweeper when a sweep starts):
    the sweeper's ``params`` followed by the command line's task overrides, expanded exactly as
    the basic sweeper expands them (a cartesian product, later keys varying fastest). Raises
    FileNotFoundError without a multirun.yaml, ValueError for another sweeper or a grid that
    cannot be expanded.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {sweep_dir} is not the directory of a "
                                f"Hydra sweep (arena-train -m / arena-compare-run)")
    hydra_cfg = OmegaConf.load(path).get("hydra")
    if hydra_cfg is None:
        raise ValueError(f"{path} is not a Hydra multirun config (no hydra: section)")
    sweeper = str((hydra_cfg.get("sweeper") or {}).get("_target_", "BasicSweeper"))
    if not sweeper.endswith("BasicSweeper"):
        raise ValueError(f"{path}: the sweep used {sweeper or 'an unknown sweeper'}; only the "
                         f"basic sweeper's grid can be read back")
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += [str(o) for o in (hydra_cfg.get("overrides") or {}).get("task") or []]
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception as err:  # noqa: BLE001 - Hydra's parser raises several types
        raise ValueError(f"{path}: cannot expand the sweep's grid ({err})") from err
    return [job for batch in batches for job in batch]


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's ``metrics.json`` as a dict; None if it is missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def job_dirs(sweep_dir: str | Path) -> dict[int, Path]:
    """Job num -> run directory, for every job of the sweep that started (has a directory).

    The num comes from the run's ``metrics.json`` (``job.num``), else from the job's Hydra config
    (``.hydra/hydra.yaml``: ``hydra.job.num``), so any ``hydra.sweep.subdir`` pattern works.
    """
    found: dict[int, Path] = {}
    for run_dir in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        num = ((read_metrics(run_dir) or {}).get("job") or {}).get("num")
        if num is None and (run_dir / ".hydra" / "hydra.yaml").is_file():
            num = OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml"),
                                   "hydra.job.num", default=None)
        if isinstance(num, int):
            found[num] = run_dir
    return found


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep's grid.

    ``status``: ``ok`` | ``failed`` (from its metrics.json) | ``running`` (started, no final
    status: still running, or killed) | ``not run`` (no directory).
    """

    num: int
    overrides: list[str]
    run_dir: Path | None
    status: str


def sweep_jobs(sweep_dir: str | Path) -> list[SweepJob]:
    """Every job of the sweep's grid (:func:`sweep_grid`) with its directory and status."""
    dirs = job_dirs(sweep_dir)
    jobs = []
    for num, overrides in enumerate(sweep_grid(sweep_dir)):
        run_dir = dirs.get(num)
        status = "not run"
        if run_dir is not None:
            status = (read_metrics(run_dir) or {}).get("status")
            status = status if status in FINISHED else "running"
        jobs.append(SweepJob(num, overrides, run_dir, status))
    return jobs


@dataclass(frozen=True)
class JobPosition:
    """Where a job stands in its sweep: ``num`` (0-based), ``total`` jobs, the sweep directory."""

    num: int
    total: int | None
    sweep_dir: Path

    def __str__(self) -> str:
        return f"[{self.num + 1}/{self.total or '?'}]"


def job_position() -> JobPosition | None:
    """This Hydra job's place in its sweep; None outside a sweep (or outside Hydra).

    A job is in a sweep when Hydra gave it a job num: every job of ``arena-train -m``, and the
    jobs that ``arena-compare-run --resume`` reruns (it passes ``hydra.job.num`` and
    ``hydra.sweep.dir``). The total is the size of the grid in ``multirun.yaml``.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    num = OmegaConf.select(hc, "job.num", default=None)
    if num is None:
        return None
    sweep_dir = Path(str(hc.sweep.dir))
    try:
        total: int | None = len(sweep_grid(sweep_dir))
    except (OSError, ValueError):  # another sweeper (e.g. optuna): no grid to count
        total = None
    return JobPosition(int(num), total, sweep_dir)


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` (minutes:seconds under an hour)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
