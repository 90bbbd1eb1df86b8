"""The jobs a sweep was meant to run, read from the ``multirun.yaml`` Hydra writes at its start.

The grid is the Cartesian product of ``hydra.sweeper.params`` followed by the command-line task
overrides (``hydra.overrides.task``), as :func:`attention_arena.utils.sweep_grid` expands it, so
jobs come in Hydra's order and ``jobs[i]`` is job number ``i``. A job's backend, data, length and
seed are its overrides, else the sweep's composed config; a job that swaps the ``data`` group
without setting ``data.max_length`` gets length None (unknown without composing its config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .load import BASELINE_JOBS, _read_yaml, as_int, override_values, plain


@dataclass(frozen=True)
class Job:
    """One job of a sweep grid: its number, task overrides and the settings they give."""

    num: int
    overrides: tuple[str, ...]
    attention: str | None
    data: str | None
    max_length: int | None
    seed: int | None
    kind: str = "model"
    sweep_dir: str = field(default="", compare=False)

    @property
    def settings(self) -> tuple:
        return (self.data, self.attention, self.max_length, self.seed)


def _job_settings(overrides: list[str], config: dict, baseline: str | None) -> dict:
    """attention / data / max_length / seed (and kind) of a job: its overrides, else the sweep's
    config; a baseline job (``baseline`` = the name its runs record) has no length."""
    given = override_values(overrides)
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    att_cfg = config.get("attention") if isinstance(config.get("attention"), dict) else {}
    out = {"data": given.get("data.name") or given.get("data") or plain(data_cfg.get("name")),
           "seed": as_int(given.get("seed", plain(config.get("seed"))))}
    if baseline is not None:
        return out | {"attention": baseline, "max_length": None, "kind": "baseline"}
    length = given.get("data.max_length")
    if length is None and "data" not in given:  # another data group brings its own length
        length = plain(data_cfg.get("max_length"))
    attention = given.get("attention") or given.get("attention.name") \
        or plain(att_cfg.get("name"))
    return out | {"attention": attention, "max_length": as_int(length)}


def sweep_grid(sweep_dir: str | Path) -> list[Job]:
    """The jobs of the sweep whose ``multirun.yaml`` is in ``sweep_dir`` (expanded by
    :func:`attention_arena.utils.sweep_grid`, as Hydra's basic sweeper expands them).

    Raises FileNotFoundError without a multirun.yaml and ValueError when it cannot be read or
    its sweeper is not Hydra's basic sweeper (other sweepers choose their jobs as they run).
    """
    from ..utils import sweep_grid as job_overrides

    jobs = job_overrides(sweep_dir)
    config = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    hydra = config.get("hydra") if isinstance(config, dict) else {}
    baseline = BASELINE_JOBS.get((hydra.get("job") or {}).get("name"))
    return [Job(num=i, overrides=tuple(o), sweep_dir=str(Path(sweep_dir)),
                **_job_settings(o, config, baseline)) for i, o in enumerate(jobs)]


def _owner(run_dir: Path, sweeps: list[Path]) -> Path | None:
    """The deepest sweep directory holding ``run_dir``."""
    return next((s for s in sweeps if s == run_dir or s in run_dir.parents), None)


def _match(job: Job, candidates: list[dict]) -> dict | None:
    """The run of ``job``: same task overrides, else (e.g. a rerun with extra overrides) the
    same data, backend, length and seed."""
    wanted = set(job.overrides)
    for same in (lambda r: set(r.get("overrides") or ()) == wanted,
                 lambda r: (r["data"], r["attention"], r["max_length"], r["seed"])
                 == job.settings):
        found = next((r for r in candidates if same(r)), None)
        if found is not None:
            return found
    return None


def jobs_not_started(runs: list[dict], root: str | Path) -> tuple[list[dict], dict]:
    """Runs (status ``not_run``) for the grid jobs of every ``multirun.yaml`` under ``root``
    that left no run directory, and ``{"jobs": total, "sweeps": [...], "notes": [...]}``.

    A run belongs to the deepest sweep directory holding it; each run stands for one job.
    """
    from .load import blank_run, normalize

    root = Path(root)
    sweeps = sorted((p.parent for p in root.rglob("multirun.yaml")),
                    key=lambda p: len(p.parts), reverse=True)
    owners = {id(r): _owner(Path(r["run_dir"]), sweeps) for r in runs}
    missing, info = [], {"jobs": 0, "sweeps": [], "notes": []}
    for sweep in sweeps:
        rel = str(sweep.relative_to(root)) if sweep != root else "."
        try:
            jobs = sweep_grid(sweep)
        except (FileNotFoundError, ValueError) as err:
            info["notes"].append(f"grid of {rel} not read, jobs that never started cannot be "
                                 f"listed: {err}")
            continue
        info["jobs"] += len(jobs)
        info["sweeps"].append({"dir": rel, "jobs": len(jobs)})
        candidates = [r for r in runs if owners[id(r)] == sweep]
        for job in jobs:
            run = _match(job, candidates)
            if run is not None:
                candidates.remove(run)
                continue
            run = blank_run()
            run.update(attention=job.attention, data=job.data, max_length=job.max_length,
                       seed=job.seed, kind=job.kind, overrides=list(job.overrides),
                       job={"num": job.num, "total": len(jobs)}, status="not_run",
                       error="never started", run_dir=str(sweep), source="multirun.yaml",
                       run=f"{rel}: job {job.num}" if rel != "." else f"job {job.num}")
            missing.append(normalize(run))
    return missing, info
