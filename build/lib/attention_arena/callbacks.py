"""Training callbacks: a NaN/inf guard, process-group cleanup, the per-epoch shuffle seed, and
fault injectors for tests (a NaN, a SIGKILL)."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class NaNGuard(pl.Callback):
    """Stop training on the first non-finite loss, before its backward pass touches the weights.

    All ranks agree on the decision (one boolean all-reduce per step under DDP), so they stop
    together. The error names the global step, the attention backend and the last good
    checkpoint (``checkpoints/last.ckpt`` is never overwritten after the failure).
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        value = float(loss.detach().float().mean()) if loss.numel() else math.nan
        backend = pl_module.hparams.get("attention", {}).get("name", "?")
        ckpt = last_good_checkpoint(trainer)
        where = f"last good checkpoint: {ckpt}" if ckpt else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"non-finite loss ({value}) at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}) with attention={backend}; training stopped, {where}. "
            f"Try a lower optim.lr, trainer.gradient_clip_val, or trainer.precision=32-true"
        )


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint on disk (last, else best), or None."""
    for cb in trainer.checkpoint_callbacks:
        for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
            if path and Path(path).exists():
                return str(path)
    return None


class DestroyProcessGroup(pl.Callback):
    """Destroy the process group in spawned workers (``ddp_spawn``) when their stage ends.

    Without it ~25% of CPU DDP runs abort at exit. For ``strategy=ddp`` the training script
    destroys it once at the very end (fit and test share one group).
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

        launcher = getattr(trainer.strategy, "launcher", None)
        if isinstance(launcher, _MultiProcessingLauncher) and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class InjectNaN(pl.Callback):
    """Fault injection (for testing the guard): poison the weights at global step ``at_step``.

    Enable from the command line with ::

        +callbacks.nan._target_=attention_arena.callbacks.InjectNaN +callbacks.nan.at_step=5
    """

    def __init__(self, at_step: int):
        self.at_step = int(at_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class KillAtStep(pl.Callback):
    """Fault injection (for testing resume): SIGKILL this process at global step ``at_step``.

        +callbacks.kill._target_=attention_arena.callbacks.KillAtStep +callbacks.kill.at_step=60
    """

    def __init__(self, at_step: int):
        self.at_step = int(at_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)


class EpochSeededShuffle(pl.Callback):
    """Make the training order of epoch ``e`` a function of ``(seed, e)`` only.

    A DataLoader shuffling with one ``torch.Generator`` draws epoch ``e``'s order from the
    generator's state after ``e`` epochs, so a run resumed at epoch ``e`` would replay epoch 0's
    order. Reseeding the generator at every epoch start makes resumed runs see exactly the
    batches an uninterrupted run sees (``DistributedSampler`` already does this via
    ``set_epoch``; it is left alone).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = trainer.train_dataloader
        if loaders is None:
            return
        if not isinstance(loaders, list | tuple):
            loaders = list(loaders.values()) if isinstance(loaders, dict) else [loaders]
        for loader in loaders:
            for sampler in (getattr(loader, "sampler", None),
                            getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
                generator = getattr(sampler, "generator", None)
                if isinstance(generator, torch.Generator) and not hasattr(sampler, "set_epoch"):
                    # a fresh generator: the DataLoader also draws worker seeds from the old
                    # one when it creates an iterator, at a point that differs after a resume
                    sampler.generator = torch.Generator().manual_seed(
                        self.seed * 1_000_003 + trainer.current_epoch)
