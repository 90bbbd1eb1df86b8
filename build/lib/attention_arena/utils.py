"""Small helpers shared by the training script and tests: OmegaConf resolvers, formatting."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

#: The keys of every run's ``metrics.json`` (``arena-train`` writes them, ``arena-compare`` reads).
METRIC_KEYS = (
    "status", "error", "attention", "data", "max_length", "seed", "parameters", "val_acc",
    "val_f1", "test_acc", "test_f1", "train_tokens_per_s", "peak_memory_mb", "wall_time_s",
    "epochs", "steps", "run_dir", "overrides",
)


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``); 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where Linux does not allow."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
