"""Shared test helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A model / data size that trains in seconds on 2 CPU cores.
TINY = [
    "model.embed_dim=32", "model.num_heads=2", "model.ff_dim=64", "model.num_layers=1",
    "data.max_length=256", "data.limit_examples=64", "data.batch_size=8",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "logger=csv",
]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("ARENA_RAISE", None)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    env.update(extra)
    return env


def run_train(args: list[str], cwd: Path, timeout: float = 300, **env: str):
    """Run ``python -m attention_arena.train *args`` in ``cwd``; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "attention_arena.train", *args], cwd=cwd,
                          env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def compose_train(*overrides: str):
    """conf/train.yaml composed with ``overrides``, as ``arena-train`` composes it (no Hydra
    runtime: set ``output_dir`` to run it in-process)."""
    from hydra import compose, initialize_config_dir

    from attention_arena.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def train_in_process(run_dir: Path, *overrides: str) -> dict:
    """One ``arena-train`` job run in this process (TINY model, CSV logger); its metrics."""
    from attention_arena.train import run_job

    return run_job(compose_train(*TINY, *overrides, f"output_dir={run_dir}"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n" \
           f"--- stderr ---\n{proc.stderr[-6000:]}"


@pytest.fixture
def train_cli():
    return run_train
