"""Self-pretraining: masked-token denoising on the task's own training text, then fine-tuning.

``arena-pretrain`` (``python -m attention_arena.pretrain``) takes the same config groups as
``arena-train`` (``attention``, ``model``, ``data``, ``tokenizer``, ``trainer``...) and trains the
encoder of a :class:`~attention_arena.model.TransformerClassifier` to restore masked tokens
(BERT-style; Amos, Berant & Gupta, "Never Train from Scratch", ICLR 2024, pretrain on the
downstream task's own data). Then ``arena-train init_from=<pretrain run dir>`` fine-tunes on the
labels: the encoder weights load (:mod:`attention_arena.transfer`), the classifier head is fresh,
and the backend may change (pretrain ``full``, fine-tune ``linformer``).

* text: the **training split only** (never val/test text: val text only measures the masked-token
  loss and accuracy), every document cut into windows of ``data.max_length`` tokens (CLS first),
  so the whole text is used, not only the prefix a classifier reads
  (``pretrain.whole_documents=false``: the prefix only).
* masking (:func:`mask_tokens`): each ordinary token (never PAD or CLS) is selected with
  probability ``pretrain.mask_prob`` (0.15); a selected token becomes ``[MASK]`` (80%), a random
  ordinary token (10%) or stays (10%); the loss is cross-entropy on the selected tokens only.
  ``[MASK]`` is ``tokenizer.mask_id`` = the vocabulary size, so the pretraining model has one
  more embedding row than the classifier (dropped by ``init_from``).
* LM head (:class:`MaskedLanguageModel`): BERT's transform (Linear, GELU, LayerNorm) then a
  decoder over the vocabulary whose weight is tied to the token embedding
  (``pretrain.tie_weights=false``: a separate matrix).
* a run directory holds ``checkpoints/last.ckpt``, ``tokenizer.json`` and ``metrics.json``
  (``val_acc``: masked-token accuracy on the val text; ``notes``: the MLM losses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .data.datamodule import PadCollate
from .lit_module import AdamWCosine
from .model import TransformerClassifier
from .train import (
    CONF_DIR,
    _float,
    _quiet_lightning_logs,
    build_trainer,
    fit_attention_to_length,
    run_job,
)
from .train import (
    main as train_main,
)

IGNORE = -100  # label of an unselected position (F.cross_entropy's ignore_index)


def mask_tokens(input_ids: Tensor, padding_mask: Tensor | None, mask_id: int, vocab_size: int,
                first_regular_id: int = 2, mask_prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT masking of a batch (B, N) -> ``(inputs, labels)``, both (B, N).

    Each ordinary token (id >= ``first_regular_id``, not padding: never PAD or CLS) is selected
    with probability ``mask_prob``; of the selected, 80% become ``mask_id``, 10% a random id in
    ``[first_regular_id, vocab_size)`` and 10% stay. ``labels`` holds the original id at selected
    positions and :data:`IGNORE` elsewhere. At least one token per batch is selected.
    """
    eligible = input_ids >= first_regular_id
    if padding_mask is not None:
        eligible &= ~padding_mask
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    selected = eligible & (draw < mask_prob)
    if not selected.any() and eligible.any():  # a tiny batch: still learn something
        selected.view(-1)[eligible.view(-1).nonzero()[0]] = True
    how = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    random_ids = torch.randint(first_regular_id, vocab_size, input_ids.shape,
                               generator=generator, device=input_ids.device)
    inputs = torch.where(selected & (how < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return inputs, labels


class MaskedLanguageModel(TransformerClassifier):
    """The classifier's encoder (same parameter names: ``tok_emb``, ``pos_emb``, ``blocks``,
    ``ln_f``) with an LM head instead of the classifier: ``lm_transform`` (Linear, GELU,
    LayerNorm) and ``head``, a decoder over ``vocab_size + 1`` ids ([MASK] included) tied to
    ``tok_emb`` unless ``tie_weights=False``. ``model_kwargs``: as for the classifier."""

    def __init__(self, vocab_size: int, tie_weights: bool = True, **model_kwargs: Any):
        model_kwargs.pop("pooling", None)
        super().__init__(vocab_size + 1, vocab_size + 1, **model_kwargs)
        dim = self.tok_emb.embedding_dim
        self.lm_transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        if tie_weights:
            self.head.weight = self.tok_emb.weight  # (V + 1, D), one tensor

    def forward(self, input_ids: Tensor, padding_mask: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:
        """Logits over the vocabulary: (M, V + 1) at the M True entries of ``positions`` (B, N)
        (all tokens, (B, N, V + 1), when ``positions`` is None)."""
        h = self.encode(input_ids, padding_mask)  # (B, N, D)
        if positions is not None:
            h = h[positions]  # (M, D): only the selected tokens pay for the decoder
        return self.head(self.lm_transform(h))


class ArenaPretrainer(AdamWCosine, pl.LightningModule):
    """Masked-token pretraining of the encoder (module doc); optimizer and schedule as
    :class:`~attention_arena.lit_module.ArenaClassifier`. Logs ``train/mlm_loss``,
    ``train/mlm_acc``, ``val/mlm_loss``, ``val/mlm_acc`` (accuracy on the selected tokens).

    Args:
        vocab_size: the tokenizer's vocabulary (the model adds the [MASK] row).
        model, attention: as for ArenaClassifier. mask_prob, tie_weights: module doc.
        first_regular_id: smallest ordinary token id (below: PAD, CLS).
        tokenizer_name, data_name, max_length: for the record.
    """

    def __init__(self, vocab_size: int, model: Mapping[str, Any] | None = None,
                 attention: Mapping[str, Any] | None = None, mask_prob: float = 0.15,
                 tie_weights: bool = True, first_regular_id: int = 2, lr: float = 1e-3,
                 weight_decay: float = 0.01, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, warmup_steps: int | None = None,
                 warmup_fraction: float = 0.1, min_lr_ratio: float = 0.1,
                 tokenizer_name: str | None = None, data_name: str | None = None,
                 max_length: int | None = None):
        super().__init__()
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"pretrain.mask_prob must be in (0, 1), got {mask_prob}")
        model, attention = dict(model or {}), dict(attention or {"name": "full"})
        self.save_hyperparameters({
            "vocab_size": vocab_size, "mask_id": vocab_size, "model": model,
            "attention": attention, "attention_name": attention["name"], "mask_prob": mask_prob,
            "tie_weights": tie_weights, "first_regular_id": first_regular_id, "lr": lr,
            "weight_decay": weight_decay, "betas": list(betas), "eps": eps,
            "warmup_steps": warmup_steps, "warmup_fraction": warmup_fraction,
            "min_lr_ratio": min_lr_ratio, "tokenizer_name": tokenizer_name,
            "data_name": data_name, "max_length": max_length, "objective": "masked_lm",
        })
        self.model = MaskedLanguageModel(vocab_size, tie_weights=tie_weights,
                                         attention=attention, **model)
        self._val_generator: torch.Generator | None = None

    def _step(self, batch: Mapping[str, Tensor], stage: str,
              generator: torch.Generator | None = None) -> Tensor:
        hp = self.hparams
        inputs, labels = mask_tokens(batch["input_ids"], batch["padding_mask"], hp.mask_id,
                                     hp.vocab_size, hp.first_regular_id, hp.mask_prob, generator)
        selected = labels != IGNORE
        logits = self.model(inputs, batch["padding_mask"], selected).float()  # (M, V + 1)
        target = labels[selected]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        n = int(selected.sum())
        self.log(f"{stage}/mlm_loss", loss, on_step=stage == "train", on_epoch=True,
                 prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/mlm_acc", acc, on_step=False, on_epoch=True, batch_size=n,
                 sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        # the same masks at every validation: comparable numbers across epochs
        self._val_generator = torch.Generator(device=self.device).manual_seed(0)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self._val_generator)


class TextWindows(Dataset):
    """Token windows of at most ``max_length`` ids (CLS first) from encoded documents; items are
    ``(ids, 0)`` so :class:`~attention_arena.data.datamodule.PadCollate` batches them.
    ``whole_documents=False``: one window per document (its first ``max_length`` ids)."""

    def __init__(self, docs: Sequence[np.ndarray], max_length: int, cls_id: int,
                 whole_documents: bool = True):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 for pretraining windows, got {max_length}")
        body = max_length - 1
        self.windows: list[np.ndarray] = []
        for ids in docs:
            tokens = ids[1:]  # without CLS
            starts = range(0, max(len(tokens), 1), body) if whole_documents else [0]
            for start in starts:
                chunk = tokens[start:start + body]
                self.windows.append(np.concatenate([[cls_id], chunk]).astype(np.uint16))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.windows[i], 0


def text_loaders(datamodule, max_length: int, whole_documents: bool,
                 seed: int) -> tuple[DataLoader, DataLoader]:
    """Train (training split text only) and val (val split text) loaders of token windows."""
    tok = datamodule.tokenizer
    loaders = []
    for split in ("train", "val"):
        texts, _ = datamodule.split_texts(split)
        windows = TextWindows(tok.encode_batch(texts), max_length, tok.cls_id, whole_documents)
        shuffle = split == "train"
        loaders.append(DataLoader(
            windows, batch_size=datamodule.batch_size, shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed) if shuffle else None,
            num_workers=datamodule.num_workers, persistent_workers=datamodule.num_workers > 0,
            collate_fn=PadCollate(tok.pad_id, datamodule.pad_to_multiple_of)))
    return loaders[0], loaders[1]


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain one configuration (``cfg`` composed from conf/pretrain.yaml); its metrics."""
    run_dir = Path(str(cfg.output_dir)).resolve()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    attention_cfg, notes = fit_attention_to_length(
        OmegaConf.to_container(cfg.attention, resolve=True), int(model_cfg["max_length"]))
    opts = OmegaConf.to_container(cfg.pretrain, resolve=True)
    unknown = sorted(set(opts) - {"mask_prob", "tie_weights", "whole_documents"})
    if unknown:
        raise ValueError(f"unknown pretrain option(s) {unknown}; valid: mask_prob, tie_weights, "
                         f"whole_documents")
    tok = datamodule.tokenizer
    module = ArenaPretrainer(
        datamodule.vocab_size, model=model_cfg, attention=attention_cfg,
        mask_prob=float(opts.get("mask_prob", 0.15)), tie_weights=bool(opts.get("tie_weights",
                                                                               True)),
        first_regular_id=tok.first_regular_id, tokenizer_name=tok.name,
        data_name=cfg.data.name, max_length=int(cfg.data.max_length),
        **OmegaConf.to_container(cfg.optim, resolve=True))
    train_loader, val_loader = text_loaders(datamodule, int(cfg.data.max_length),
                                            bool(opts.get("whole_documents", True)), int(cfg.seed))
    trainer = build_trainer(cfg, run_dir)
    if trainer.is_global_zero:
        datamodule.save_tokenizer(run_dir)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    m = dict(trainer.callback_metrics)
    notes.append(f"masked-token pretraining on {len(train_loader.dataset)} windows of the "
                 f"training text; val_acc/val_f1 = masked-token accuracy (f1: none); "
                 f"train mlm_loss {_float(m, 'train/mlm_loss_epoch')}, val mlm_loss "
                 f"{_float(m, 'val/mlm_loss')}")
    return {"parameters": module.model.num_parameters(), "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step), "val_acc": _float(m, "val/mlm_acc"),
            "notes": notes, "tokenizer": tok.name, "data_stats": datamodule.data_stats()}


@hydra.main(config_path=str(CONF_DIR), config_name="pretrain", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    _quiet_lightning_logs()
    identity = {"kind": "pretrain"}
    return run_job(cfg, work=pretrain, identity=identity).get("val_acc")


def main() -> None:
    """Console entry point (``arena-pretrain``); exit statuses as ``arena-train``."""
    train_main(hydra_main)


if __name__ == "__main__":
    main()
