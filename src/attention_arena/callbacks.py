"""Training callbacks: a NaN/inf guard, process-group cleanup, the per-epoch shuffle seed, a
progress line per epoch, a stop at the next batch after a lost interrupt, and fault injectors
for tests (a NaN, a SIGKILL, ruined weights).

The ones every run uses are listed in ``conf/callbacks/default.yaml`` (one YAML file each, with
its ``_target_``), and Hydra instantiates them; :class:`StopWhenInterrupted` and
:class:`DestroyProcessGroup` are not optional and are added by the training script.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from .utils import (
    FINISHED,
    JobPosition,
    format_duration,
    job_position,
    raise_if_interrupted,
    read_metrics,
    sweep_jobs,
)


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


class RuinWeights(pl.Callback):
    """Fault injection (for testing that metrics come from the best checkpoint, not the last):
    zero every parameter just before the validation of epoch ``at_epoch``, so that validation (and
    ``last.ckpt``) sees a model that predicts one class for every input.

        +callbacks.ruin._target_=attention_arena.callbacks.RuinWeights +callbacks.ruin.at_epoch=2
    """

    def __init__(self, at_epoch: int):
        self.at_epoch = int(at_epoch)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking \
                and trainer.current_epoch == self.at_epoch:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.zero_()


class StopWhenInterrupted(pl.Callback):
    """Raise :class:`~attention_arena.utils.Interrupted` at the next batch after a SIGINT /
    SIGTERM whose exception got lost (see :class:`~attention_arena.utils.InterruptHandler`)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise_if_interrupted()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx,
                                  dataloader_idx=0) -> None:
        raise_if_interrupted()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx,
                            dataloader_idx=0) -> None:
        raise_if_interrupted()


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


class ProgressLog(pl.Callback):
    """A line a person can follow after every validation (at least once per epoch)::

        [3/25] epoch 2/3: val_acc 0.8123, 0:45 elapsed, ~0:22 left for the job, ~8:10 for the sweep

    ``[3/25]`` is the job's place in its sweep (:func:`~attention_arena.utils.job_position`;
    ``[arena]`` outside a sweep). Time left for the job extrapolates the elapsed fit time over the
    share of epochs (or steps, whichever is further along) done; for the sweep it adds the mean
    wall time of its finished jobs (read from their ``metrics.json``; this job's own estimate
    while none has finished) times the jobs still to run. Printed on global rank 0 only.
    """

    def __init__(self) -> None:
        self.position: JobPosition | None = None
        self.start = 0.0
        self.printed_step = -1

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.position = job_position()
        self.start = time.monotonic()
        self.printed_step = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._report(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer)  # epochs without validation (check_val_every_n_epoch > 1)

    def _report(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or trainer.global_step == self.printed_step:
            return
        self.printed_step = trainer.global_step
        where = f"epoch {trainer.current_epoch + 1}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            where += f"/{trainer.max_epochs}"
        else:
            where += f" (step {trainer.global_step}/{trainer.max_steps})"
        details = []
        if (val_acc := trainer.callback_metrics.get("val/acc")) is not None:
            details.append(f"val_acc {float(val_acc):.4f}")
        elapsed = time.monotonic() - self.start
        details.append(f"{format_duration(elapsed)} elapsed")
        if (done := fraction_done(trainer)) > 0:
            job_left = elapsed * (1 - done) / done
            details.append(f"~{format_duration(job_left)} left for the job")
            if (sweep_left := self._sweep_left(job_left, elapsed / done)) is not None:
                details.append(f"~{format_duration(sweep_left)} for the sweep")
        print(f"{self.position or '[arena]'} {where}: {', '.join(details)}", flush=True)

    def _sweep_left(self, job_left: float, job_estimate: float) -> float | None:
        """Seconds left for the sweep: this job's rest + the jobs not finished after it."""
        if self.position is None or self.position.total is None:
            return None
        try:
            jobs = sweep_jobs(self.position.sweep_dir)
        except (OSError, ValueError):
            return None
        finished = [j for j in jobs if j.status in FINISHED and j.num != self.position.num]
        times = [float((read_metrics(j.run_dir) or {}).get("wall_time_s") or 0.0)
                 for j in finished]
        per_job = sum(times) / len(times) if times else job_estimate
        still_to_run = len(jobs) - len(finished) - 1
        return job_left + max(0, still_to_run) * per_job


def fraction_done(trainer: pl.Trainer) -> float:
    """Share of the fit done, in (0, 1]: epochs done / max_epochs or steps / max_steps."""
    shares = []
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        batches = trainer.num_training_batches
        within = 0.0
        if isinstance(batches, int) and batches > 0:
            within = trainer.fit_loop.epoch_loop.batch_progress.current.completed / batches
        shares.append((trainer.current_epoch + min(1.0, within)) / trainer.max_epochs)
    if trainer.max_steps is not None and trainer.max_steps > 0:
        shares.append(trainer.global_step / trainer.max_steps)
    return min(1.0, max(shares, default=0.0))
