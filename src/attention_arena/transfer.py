"""Reuse a trained run: find its checkpoint, check its tokenizer, copy its encoder weights.

Used by distillation (``distill.teacher=<run>``: a whole trained classifier) and by
``init_from=<run>`` (the encoder of a pretraining run, or of any trained classifier, under a new
classifier head). A *run* is a run directory (``checkpoints/`` plus the ``tokenizer.json`` the
data module saved) or a ``.ckpt`` file (its run directory is then ``<file>/../..``).

Encoder transfer (:func:`load_encoder`): every entry of the target model's state dict except its
classifier ``head`` is copied from the source when the source has it under the same name. The
names are backend-independent for what every backend shares (``tok_emb``, ``pos_emb``,
``blocks.<i>.{ln1,ln2,ff}``, ``blocks.<i>.attn.{q,k,v,out}_proj``, ``ln_f``), so an encoder
pretrained with ``full`` initialises a ``linformer`` or ``performer`` classifier; what only the
target backend has (Linformer's ``E``/``F``, Nyströmformer's ``conv``...) keeps its fresh
initialisation and is reported. Two shapes may differ on purpose: a source embedding table with
more rows (the pretraining model's extra ``[MASK]`` row, dropped) and a longer learned position
table (its first ``max_length`` rows are copied). Any other shape difference is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import runs
from .data.tokenizer import TOKENIZER_FILE, Tokenizer, tokenizer_to_json
from .runs import RunError


class TransferError(RunError):
    """A run that cannot be used as a teacher or as initial weights (wrong path, other vocabulary,
    other width...)."""


@dataclass
class SavedRun:
    """A checkpoint read from disk: its hyperparameters, weights and the run's tokenizer file."""

    checkpoint: Path
    run_dir: Path
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer_json: str | None  # the run's tokenizer.json text (None: not found)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The weights of its ``model`` (the LightningModule's ``model.`` prefix removed)."""
        return {k.removeprefix("model."): v for k, v in self.state_dict.items()
                if k.startswith("model.")}


def find_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """The checkpoint of a run (:func:`attention_arena.runs.find_checkpoint`): ``path`` itself
    if it is a file; in a run directory (or its ``checkpoints/``) the best one when
    ``prefer="best"`` and there is one, else ``last.ckpt``."""
    try:
        return runs.find_checkpoint(path, prefer)[0]
    except RunError as err:
        raise TransferError(str(err)) from None


def read_run(path: str | Path, prefer: str = "best") -> SavedRun:
    """Load the checkpoint of a run (see :func:`find_checkpoint`) on the CPU."""
    ckpt = find_checkpoint(path, prefer)
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise TransferError(f"cannot read checkpoint {ckpt}: {err}") from err
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise TransferError(f"{ckpt} is not a Lightning checkpoint of attention-arena (no "
                            f"state_dict)")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    tok_file = run_dir / TOKENIZER_FILE
    return SavedRun(ckpt, run_dir, dict(saved.get("hyper_parameters") or {}),
                    saved["state_dict"], tok_file.read_text() if tok_file.is_file() else None)


def check_same_tokenizer(run: SavedRun, tokenizer: Tokenizer, vocab_size: int, role: str) -> None:
    """Raise :class:`TransferError` unless ``run`` encodes text as ``tokenizer`` does (same
    tokenizer file, or at least the same name and vocabulary size when the run has no file)."""
    saved_vocab = run.hparams.get("vocab_size")
    if saved_vocab is not None and int(saved_vocab) != int(vocab_size):
        raise TransferError(
            f"the {role} {run.checkpoint} has a vocabulary of {saved_vocab} ids, this run "
            f"{vocab_size}: it was trained with another tokenizer; use the {role}'s tokenizer "
            f"settings (tokenizer=..., tokenizer.vocab_size=...)")
    if run.tokenizer_json is None:
        return
    theirs = json.loads(run.tokenizer_json)
    ours = json.loads(tokenizer_to_json(tokenizer))
    if theirs != ours:
        raise TransferError(
            f"the {role} {run.checkpoint} used another tokenizer ({theirs.get('name')}, "
            f"{run.run_dir / TOKENIZER_FILE}) than this run ({ours.get('name')}"
            f"{', trained on other texts' if theirs.get('name') == ours.get('name') else ''}); "
            f"use the same data, tokenizer and seed as the {role}")


@dataclass
class TransferReport:
    """What :func:`load_encoder` did, by state-dict name."""

    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)      # target entries the source lacks
    ignored: list[str] = field(default_factory=list)    # source entries the target lacks
    adapted: list[str] = field(default_factory=list)    # copied in part (rows), with why

    def lines(self) -> list[str]:
        out = [f"loaded {len(self.loaded)} tensors"]
        if self.adapted:
            out.append("adapted: " + "; ".join(self.adapted))
        if self.fresh:
            out.append(f"fresh (not in the source): {', '.join(self.fresh)}")
        if self.ignored:
            out.append(f"not used (not in this model): {', '.join(self.ignored)}")
        return out


def _is_head(name: str) -> bool:
    return name.split(".", 1)[0] in ("head", "lm_transform")


def load_encoder(model: nn.Module, source: Mapping[str, torch.Tensor],
                 where: str = "source") -> TransferReport:
    """Copy the encoder entries of ``source`` (a model state dict) into ``model`` (a
    :class:`~attention_arena.model.TransformerClassifier`), leaving its ``head`` fresh; see the
    module doc for the rules. Raises :class:`TransferError` on a width or shape mismatch."""
    target = model.state_dict()
    report = TransferReport()
    new_state = {}
    for name, value in target.items():
        if _is_head(name):
            continue
        if name not in source:
            report.fresh.append(name)
            continue
        src = source[name]
        if not isinstance(value, torch.Tensor) or not isinstance(src, torch.Tensor):
            pass  # a backend's extra state (e.g. Performer's feature seed): taken as it is
        elif src.shape != value.shape:
            rows_only = src.dim() == value.dim() and src.shape[1:] == value.shape[1:]
            if name in ("tok_emb.weight", "pos_emb.weight") and rows_only \
                    and src.shape[0] > value.shape[0]:
                report.adapted.append(f"{name}: first {value.shape[0]} of {src.shape[0]} rows")
                src = src[: value.shape[0]]
            else:
                raise TransferError(
                    f"{where}: {name} has shape {tuple(src.shape)}, this model "
                    f"{tuple(value.shape)}; the encoder must have the same width (model."
                    f"embed_dim, num_heads, ff_dim), vocabulary and at least this max_length")
        new_state[name] = src
        report.loaded.append(name)
    report.ignored = sorted(n for n in source if n not in target and not _is_head(n))
    if not report.loaded:
        raise TransferError(f"{where} has none of this model's encoder weights (is it an "
                            f"attention-arena checkpoint?)")
    model.load_state_dict(new_state, strict=False)
    return report


def check_encoder_shape(run: SavedRun, model_cfg: Mapping[str, Any], role: str) -> None:
    """A clear error before any tensor is touched if ``run``'s width or embedding convolution
    differs from ``model_cfg``."""
    saved, this = dict(run.hparams.get("model") or {}), dict(model_cfg)
    for cfg in (saved, this):  # absent (runs from before the option) or 0: no convolution
        cfg["embedding_conv"] = cfg.get("embedding_conv") or None
    diffs = [f"model.{k}: {saved[k]} (source) vs {this[k]} (this run)"
             for k in ("embed_dim", "num_heads", "ff_dim", "embedding_conv")
             if k in saved and k in this and saved[k] != this[k]]
    if diffs:
        raise TransferError(f"the {role} {run.checkpoint} has another encoder shape "
                            f"({'; '.join(diffs)}); use the same model sizes and options "
                            f"(model=..., model.embedding_conv=... as when it was trained)")
