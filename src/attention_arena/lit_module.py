"""The one LightningModule: ``ArenaClassifier`` trains a :class:`TransformerClassifier`.

* loss: cross-entropy; metrics: accuracy and macro-F1 (torchmetrics objects, synced under DDP).
  With a teacher attached (:meth:`ArenaClassifier.set_teacher`, ``distill.teacher=<run>`` on the
  command line), the training loss is knowledge distillation (Hinton et al. 2015; DistilBERT):
  ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``, see
  :func:`attention_arena.distill.distillation_loss`; validation and test keep the plain CE. The
  teacher is not a submodule: it is not in ``parameters()`` (so not in the optimizer), not in the
  checkpoint's state dict, and ``.train()`` does not reach it (it stays in eval mode).
* optimizer: AdamW. Weight decay applies to matrices of Linear layers (and any other parameter with
  ``dim >= 2`` such as Linformer's projections) but NOT to biases, LayerNorm weights or embedding
  tables (token and learned positions): the usual GPT/BERT choice.
* schedule: per-step linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the last step
  (``trainer.estimated_stepping_batches``).
* logged per step: ``train/loss`` (and ``train/kd_loss``, ``train/ce_loss`` when distilling),
  ``lr``, ``train/tokens_per_s`` (real, non-padding tokens per second of
  forward+backward+optimizer time, times the world size); per epoch: ``train/acc``,
  ``val/{loss,acc,f1}``, ``test/{loss,acc,f1}``, ``train/tokens_per_s_epoch`` and
  ``sys/peak_memory_mb``: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak
  resident set size (VmHWM, reset when fitting starts so each multirun job has its own; it also
  counts the Python interpreter, libraries and data, so it is an upper bound of what the model
  needs).
"""

from __future__ import annotations

import math
import resource
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .distill import distillation_loss
from .model import TransformerClassifier
from .utils import proc_status_kb, reset_peak_rss


class _Frozen:
    """Holds a module without registering it (not a submodule: no parameters, state dict or
    train/eval switching through the owner)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


class CheckpointMismatchError(ValueError):
    """A checkpoint trained with another attention backend or model shape."""


def reset_peak_memory(device: torch.device | None = None) -> None:
    """Start a new peak, so the jobs of one multirun process do not inherit each other's."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
    elif not reset_peak_rss():
        warnings.warn("cannot reset the peak RSS (the kernel refuses or ignores "
                      "/proc/self/clear_refs): on CPU, "
                      "sys/peak_memory_mb is the peak of the whole process, including earlier "
                      "jobs of a multirun", stacklevel=2)


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory in MiB: CUDA max_memory_allocated on GPU, peak RSS of the process on CPU."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    if peak_kb := proc_status_kb("VmHWM"):
        return peak_kb / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset: an upper bound
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def warmup_cosine(step: int, warmup: int, total: float, min_ratio: float) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if not math.isfinite(total) or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class AdamWCosine:
    """Mixin of the optimizer and schedule shared by every LightningModule of the project
    (module doc); it reads ``lr, weight_decay, betas, eps, warmup_steps, warmup_fraction,
    min_lr_ratio`` from ``self.hparams``."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: decay for matrices (dim >= 2) outside embedding tables, none elsewhere."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        hp = self.hparams
        fused = {"fused": True} if self.device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hp.lr, betas=tuple(hp.betas),
                                      eps=hp.eps, **fused)
        total = float(self.trainer.estimated_stepping_batches)
        if hp.warmup_steps is not None:
            warmup = int(hp.warmup_steps)
        else:
            warmup = int(hp.warmup_fraction * total) if math.isfinite(total) else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, hp.min_lr_ratio))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        self.log("lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)


class ArenaClassifier(AdamWCosine, pl.LightningModule):
    """Train / evaluate a Transformer classifier with a pluggable attention backend.

    Args:
        vocab_size, num_classes: from the data module.
        model: keyword arguments of :class:`TransformerClassifier` (embed_dim, num_heads, ...).
        attention: ``{"name": backend, **kwargs}``.
        lr: peak learning rate. weight_decay: AdamW decay (matrices only, see module doc).
        betas, eps: AdamW.
        warmup_steps: warmup length in optimizer steps; if None, ``warmup_fraction`` of all steps.
        min_lr_ratio: final LR as a fraction of ``lr`` at the end of the cosine.
        data_name, max_length, class_names: recorded in the checkpoint for bookkeeping (and
            checked when this run becomes a teacher).
        distill: ``{"alpha", "temperature", "teacher"}`` of knowledge distillation (``teacher``:
            the teacher's path, for the record); it applies once :meth:`set_teacher` attaches
            the teacher model. ``None``: plain cross-entropy.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        model: Mapping[str, Any] | None = None,
        attention: Mapping[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.1,
        min_lr_ratio: float = 0.1,
        data_name: str | None = None,
        max_length: int | None = None,
        class_names: Sequence[str] | None = None,
        distill: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        model = dict(model or {})
        attention = dict(attention or {"name": "full"})
        if "name" not in attention:
            raise ValueError(f"attention config needs a 'name', got {attention}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.save_hyperparameters({
            "vocab_size": vocab_size, "num_classes": num_classes, "model": model,
            "attention": attention, "attention_name": attention["name"], "lr": lr,
            "weight_decay": weight_decay, "betas": list(betas), "eps": eps,
            "warmup_steps": warmup_steps, "warmup_fraction": warmup_fraction,
            "min_lr_ratio": min_lr_ratio, "data_name": data_name, "max_length": max_length,
            "class_names": None if class_names is None else list(class_names),
            "distill": None if distill is None else dict(distill),
        })
        if distill is not None:
            alpha, temperature = float(distill["alpha"]), float(distill["temperature"])
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"distill.alpha must be in [0, 1], got {alpha}")
            if temperature <= 0:
                raise ValueError(f"distill.temperature must be > 0, got {temperature}")
        self._teacher: _Frozen | None = None
        self.model = TransformerClassifier(vocab_size, num_classes, attention=attention, **model)

        metrics = {}
        for stage in ("train", "val", "test"):
            metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes=num_classes, average="micro")
            metrics[f"{stage}_f1"] = MulticlassF1Score(num_classes=num_classes, average="macro")
        self.metrics = nn.ModuleDict(metrics)
        self._step_start: float | None = None
        self._epoch_tokens = 0
        self._epoch_time = 0.0

    # ------------------------------------------------------------------ forward / steps
    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None):
        return self.model(input_ids, padding_mask)

    # ------------------------------------------------------------------ distillation
    def set_teacher(self, teacher: nn.Module) -> None:
        """Attach a trained classifier (same tokenizer and classes) as the distillation teacher:
        frozen (``requires_grad=False``), in eval mode, moved to this module's device when
        training starts; kept outside the module tree (see the module doc)."""
        if self.hparams.distill is None:
            raise ValueError("set_teacher needs distill={'alpha': ..., 'temperature': ...} in the "
                             "constructor")
        teacher.eval()
        teacher.requires_grad_(False)
        self._teacher = _Frozen(teacher)

    @property
    def teacher(self) -> nn.Module | None:
        """The distillation teacher (``None`` without one)."""
        return None if self._teacher is None else self._teacher.module

    def _teacher_logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits (B, C) on its own view of the batch (``teacher_input_ids`` when
        the data module made one: the teacher reads another length)."""
        teacher = self._teacher.module
        if next(teacher.parameters()).device != self.device:
            teacher.to(self.device)
        teacher.eval()  # even if someone called .train() on it
        ids = batch.get("teacher_input_ids", batch["input_ids"])
        pad = batch.get("teacher_padding_mask", batch.get("padding_mask"))
        with torch.no_grad():
            return teacher(ids, pad).float()

    def _shared_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["input_ids"], batch.get("padding_mask"))  # (B, C)
        labels = batch["labels"]
        bs = labels.shape[0]
        if stage == "train" and self._teacher is not None:
            d = self.hparams.distill
            loss, kd, ce = distillation_loss(logits.float(), self._teacher_logits(batch), labels,
                                             float(d["alpha"]), float(d["temperature"]))
            self.log("train/kd_loss", kd, on_step=True, on_epoch=True, batch_size=bs,
                     sync_dist=True)
            self.log("train/ce_loss", ce, on_step=True, on_epoch=True, batch_size=bs,
                     sync_dist=True)
        else:
            loss = F.cross_entropy(logits.float(), labels)
        preds = logits.argmax(dim=-1)
        acc, f1 = self.metrics[f"{stage}_acc"], self.metrics[f"{stage}_f1"]
        acc(preds, labels)
        f1(preds, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=bs, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train",
                 batch_size=bs)
        self.log(f"{stage}/f1", f1, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    @torch.no_grad()
    def predict_logits(self, loader: Iterable[Mapping[str, torch.Tensor]]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and labels (N,) of every batch of ``loader``, in its order (eval mode,
        on this module's device; float32 on the CPU)."""
        was_training = self.training
        self.eval()
        logits, labels = [], []
        for batch in loader:
            out = self(batch["input_ids"].to(self.device), batch["padding_mask"].to(self.device))
            logits.append(out.float().cpu())
            labels.append(batch["labels"])
        self.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    # ------------------------------------------------------------------ throughput / memory
    def on_train_epoch_start(self) -> None:
        self._epoch_tokens, self._epoch_time = 0, 0.0

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._step_start is None:
            return
        elapsed = time.perf_counter() - self._step_start
        self._step_start = None
        pad = batch.get("padding_mask")
        tokens = int(pad.numel() - pad.sum()) if pad is not None else batch["input_ids"].numel()
        tokens *= self.trainer.world_size if self._trainer is not None else 1
        # the first step of a run pays for warm-up (allocations, kernel selection): skip it
        if self.global_step > 1 or batch_idx > 0:
            self._epoch_tokens += tokens
            self._epoch_time += elapsed
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        if self._epoch_time > 0:
            self.log("train/tokens_per_s_epoch", self._epoch_tokens / self._epoch_time,
                     on_epoch=True, sync_dist=True, reduce_fx="mean")
        self._log_memory()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self._log_memory()

    def on_test_epoch_end(self) -> None:
        self._log_memory()

    def on_fit_start(self) -> None:
        reset_peak_memory(self.device)
        if self.hparams.distill is not None and self._teacher is None:
            warnings.warn("distill is configured but no teacher is attached (set_teacher): "
                          "training with cross-entropy only", stacklevel=2)
        if self._teacher is not None:
            self._teacher.module.to(self.device)

    def _log_memory(self) -> None:
        self.log("sys/peak_memory_mb", peak_memory_mb(self.device), on_epoch=True,
                 sync_dist=True, reduce_fx="max")

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_compatible(checkpoint.get("hyper_parameters", {}), self.hparams)


def check_checkpoint_compatible(saved: Mapping[str, Any], current: Mapping[str, Any],
                                path: str | None = None) -> None:
    """Raise :class:`CheckpointMismatchError` if ``saved`` hparams cannot load into ``current``."""
    where = f" ({path})" if path else ""
    old = (saved.get("attention") or {}).get("name", saved.get("attention_name"))
    new = (current.get("attention") or {}).get("name")
    if old is not None and new is not None and old != new:
        raise CheckpointMismatchError(
            f"checkpoint{where} was trained with attention={old}, but this run uses "
            f"attention={new}; resume with attention={old}, or start a new run (another "
            f"hydra.run.dir, or ckpt_path=null)"
        )
    diffs = []
    old_model, new_model = dict(saved.get("model") or {}), dict(current.get("model") or {})
    for key in sorted(set(old_model) | set(new_model)):
        if key not in ("dropout", "attention_dropout") and old_model.get(key) != new_model.get(key):
            diffs.append(f"model.{key}: {old_model.get(key)} -> {new_model.get(key)}")
    for key in ("vocab_size", "num_classes"):
        if key in saved and saved.get(key) != current.get(key):
            diffs.append(f"{key}: {saved.get(key)} -> {current.get(key)}")
    old_att, new_att = dict(saved.get("attention") or {}), dict(current.get("attention") or {})
    for key in sorted(set(old_att) | set(new_att)):
        if old_att.get(key) != new_att.get(key):
            diffs.append(f"attention.{key}: {old_att.get(key)} -> {new_att.get(key)}")
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint{where} does not match this run's model ({'; '.join(diffs)}); use the "
            f"checkpoint's settings or start a new run"
        )
