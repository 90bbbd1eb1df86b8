"""Knowledge distillation: a trained classifier (the teacher) teaches a new one (the student).

``arena-train distill.teacher=<run dir or .ckpt> distill.alpha=0.5 distill.temperature=2.0
attention=<student backend> [model.* student sizes] [data.max_length=<student length>]``

The loss (Hinton et al. 2015, as in DistilBERT), per batch of B documents::

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

with the KL a batch mean (``KLDivLoss(reduction="batchmean")`` on ``log_softmax(s / T)`` and
``softmax(t / T)``); ``T^2`` keeps the soft-target gradients on the scale of the hard ones.

The teacher is any finished ``arena-train`` run on the same data: same tokenizer (file compared),
vocabulary and class names, any backend, depth, width and ``data.max_length``. When its length
differs from the student's, the data module encodes every document at the longer of the two and
each training batch carries both views of the same documents: the student's ``input_ids`` (the
prefix, CLS first, with its padding mask) and the teacher's ``teacher_input_ids`` /
``teacher_padding_mask`` (see :class:`attention_arena.data.datamodule.PadCollate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .model import TransformerClassifier
from .transfer import SavedRun, TransferError, check_same_tokenizer, read_run


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, kd, ce)`` for student and teacher logits (B, C) and labels (B,):
    ``loss = alpha * kd + (1 - alpha) * ce`` with ``kd = T^2 * KL(teacher_T || student_T)``."""
    t = float(temperature)
    kd = F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1),
                  reduction="batchmean") * t * t
    ce = F.cross_entropy(student, labels)
    return alpha * kd + (1.0 - alpha) * ce, kd, ce


@dataclass
class Teacher:
    """A loaded teacher: the frozen model and what it was trained on."""

    model: TransformerClassifier
    max_length: int
    run: SavedRun

    @property
    def description(self) -> str:
        hp = self.run.hparams
        m = hp.get("model") or {}
        return (f"{hp.get('attention_name')} L{self.max_length} {m.get('num_layers')}x"
                f"{m.get('embed_dim')} ({self.run.checkpoint})")


def teacher_length(run: SavedRun) -> int:
    """The ``data.max_length`` a teacher run was trained with (what it reads)."""
    hp = run.hparams
    length = hp.get("max_length") or (hp.get("model") or {}).get("max_length")
    if length is None:
        raise TransferError(f"{run.checkpoint} does not record its max_length; is it an "
                            f"arena-train checkpoint?")
    return int(length)


def load_teacher(path: str | Path | SavedRun, tokenizer, vocab_size: int,
                 class_names: Sequence[str], data_name: str | None = None) -> Teacher:
    """Load the best checkpoint of a trained run (a run directory, a .ckpt file, or a
    :class:`SavedRun` already read) as a frozen teacher (eval mode, on the CPU), after checking
    that it reads the same tokens and predicts the same classes."""
    run = path if isinstance(path, SavedRun) else read_run(path, prefer="best")
    hp = run.hparams
    if "num_classes" not in hp or "model" not in hp:
        raise TransferError(f"{run.checkpoint} is not a trained classifier (no num_classes/model "
                            f"hyperparameters; a pretraining run cannot be a teacher)")
    check_same_tokenizer(run, tokenizer, vocab_size, "teacher")
    if int(hp["num_classes"]) != len(class_names):
        raise TransferError(f"the teacher {run.checkpoint} predicts {hp['num_classes']} classes, "
                            f"this data set has {len(class_names)}; distil on the teacher's data")
    saved_names = hp.get("class_names")
    if saved_names is not None and list(saved_names) != list(class_names):
        raise TransferError(f"the teacher {run.checkpoint} has the classes {list(saved_names)}, "
                            f"this data set {list(class_names)}; distil on the teacher's data")
    if saved_names is None and data_name and hp.get("data_name") not in (None, data_name):
        raise TransferError(f"the teacher {run.checkpoint} was trained on data="
                            f"{hp.get('data_name')}, this run uses data={data_name}")
    model_cfg: dict[str, Any] = dict(hp["model"])
    model = TransformerClassifier(int(hp["vocab_size"]), int(hp["num_classes"]),
                                  attention=dict(hp["attention"]), **model_cfg)
    model.load_state_dict(run.model_state())
    model.eval().requires_grad_(False)
    return Teacher(model, teacher_length(run), run)


def distill_options(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``distill`` config node as the LightningModule's ``distill`` argument, or ``None``
    when ``distill.teacher`` is unset."""
    if not cfg or not cfg.get("teacher"):
        return None
    unknown = sorted(set(cfg) - {"teacher", "alpha", "temperature"})
    if unknown:
        raise ValueError(f"unknown distill option(s) {unknown}; valid: teacher, alpha, "
                         f"temperature")
    return {"teacher": str(cfg["teacher"]), "alpha": float(cfg.get("alpha", 0.5)),
            "temperature": float(cfg.get("temperature", 2.0))}
