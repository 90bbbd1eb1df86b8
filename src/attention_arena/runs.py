"""What a finished ``arena-train`` run left on disk: its checkpoint and its config.

One place for the rules that ``init_from`` and distillation teachers
(:mod:`attention_arena.transfer`), ``arena-compress`` and ``arena-explain`` all follow.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PREFER = ("best", "last")


class RunError(ValueError):
    """A path that is not (or not yet) a usable ``arena-train`` run."""


def find_checkpoint(path: str | Path, prefer: str = "best") -> tuple[Path, list[str]]:
    """The checkpoint of a run, and a note for each fallback taken.

    ``path``: a ``.ckpt`` file (returned as it is), a run directory or its ``checkpoints/``.
    ``prefer="best"``: the newest ``best*.ckpt`` (the best validation accuracy), else
    ``last.ckpt``; ``prefer="last"``: ``last.ckpt``, else the best one.
    """
    if prefer not in PREFER:
        raise ValueError(f"prefer must be one of {PREFER}, got {prefer!r}")
    p = Path(path).expanduser()
    if p.is_file():
        return p, []
    if not p.is_dir():
        raise RunError(f"{path} does not exist; pass a run directory written by arena-train "
                       "(it holds checkpoints/) or a .ckpt file")
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    best = sorted(folder.glob("best*.ckpt"), key=lambda f: f.stat().st_mtime)
    last = folder / "last.ckpt"
    if prefer == "best" and best:
        return best[-1], []
    if last.is_file():
        return last, [] if prefer == "last" else [f"no best*.ckpt in {folder}: using last.ckpt"]
    if best:
        return best[-1], [f"no last.ckpt in {folder}: using {best[-1].name}"]
    raise RunError(f"no checkpoint in {folder} (looked for best*.ckpt and last.ckpt); pass a run "
                   "directory written by arena-train with checkpointing on (the folders in "
                   "results/ keep only metrics and predictions), or a .ckpt file")


def read_config(run_dir: str | Path) -> DictConfig:
    """The run's composed config: ``config_resolved.yaml`` (written by ``arena-train``), else
    ``.hydra/config.yaml`` resolved with ``output_dir`` = the run directory."""
    from .utils import register_resolvers

    run_dir = Path(run_dir)
    resolved = run_dir / "config_resolved.yaml"
    if resolved.is_file():
        return OmegaConf.load(resolved)
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if not hydra_cfg.is_file():
        raise RunError(f"{run_dir} has neither config_resolved.yaml nor .hydra/config.yaml: "
                       "pass the directory of an arena-train run")
    register_resolvers()
    cfg = OmegaConf.load(hydra_cfg)
    cfg.output_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    return cfg
