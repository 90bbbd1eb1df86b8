"""Attention maps from every backend through one API, built only while recording.

    with record_attention(model) as maps:
        model(input_ids, padding_mask)
    maps[0]  # layer 0: (B, H, N, N), row i = the weights query i puts on each key

While the ``with`` block is active, a forward hook on every attention module recomputes
``q, k`` from the module's input and asks the backend for its map
(:meth:`~attention_arena.attention.SelfAttention.attention_weights`: exact probabilities for
``full``, ``longformer``, ``bigbird`` and ``reformer``, the implied N × N map of ``linformer``,
``performer``, ``nystrom`` and ``linear``). Outside it no hook exists, so a model that is not
recording does no extra work. Rows of padded queries are zero (their outputs are discarded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..attention import SelfAttention

MAX_MAP_LENGTH = 4096
"""Longest sequence for which maps are built: an N × N map per head and document
(at 4096 tokens, 64 MiB per head in fp32)."""


def attention_modules(model: nn.Module) -> list[SelfAttention]:
    """The attention modules of ``model`` in definition order (``model`` itself if it is one)."""
    return [m for m in model.modules() if isinstance(m, SelfAttention)]


@contextlib.contextmanager
def record_attention(model: nn.Module, max_length: int = MAX_MAP_LENGTH
                     ) -> Iterator[list[Tensor]]:
    """Record the attention map of every attention module of ``model`` while active.

    Yields a list that each forward pass of an attention module appends its map to,
    (B, H, N, N) detached, in call order (for a :class:`TransformerClassifier`: one per layer
    and forward pass). The model must be in eval mode (training draws new random features or
    hashes, and dropout, so no map describes it). Sequences longer than ``max_length`` are an
    error rather than a huge allocation.
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention module "
                         "(attention_arena.attention.SelfAttention) to record")
    maps: list[Tensor] = []

    def hook(module: SelfAttention, args: tuple, kwargs: dict, output: Tensor) -> None:
        if module.training:
            raise RuntimeError("record_attention needs the model in eval mode; call "
                               "model.eval() first (training mode redraws random features "
                               "and applies dropout, so no single map describes it)")
        x = args[0]
        pad = kwargs.get("key_padding_mask", args[1] if len(args) > 1 else None)
        glob = kwargs.get("global_mask", args[2] if len(args) > 2 else None)
        if x.shape[1] > max_length:
            raise ValueError(f"attention maps are N x N: sequence length {x.shape[1]} exceeds "
                             f"max_length={max_length}; explain a shorter input or raise "
                             "record_attention(..., max_length=...)")
        with torch.no_grad():
            q, k, _ = module.project_qkv(x)
            weights = module.attention_weights(q, k, key_padding_mask=pad, global_mask=glob)
            if pad is not None:  # padded queries: their outputs are discarded
                weights = weights.masked_fill(pad[:, None, :, None], 0.0)
        maps.append(weights.detach())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_rollout(maps: list[Tensor], padding_mask: Tensor | None = None,
                      pooling: str = "cls") -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) from the pooled output to the input tokens.

    Each layer's map, averaged over heads, gets the residual connection (0.5 A + 0.5 I) and
    is renormalised row-wise (absolute values first: the implied maps of linformer and
    nystrom may have negative entries); the product over layers, read at the CLS row
    (``pooling="cls"``) or averaged over the real rows (``"mean"``), gives (B, N) weights
    summing to 1 over real tokens.
    """
    B, _, N, _ = maps[0].shape
    eye = torch.eye(N, dtype=maps[0].dtype, device=maps[0].device)
    rollout = eye.expand(B, N, N)
    for layer in maps:
        a = 0.5 * layer.abs().mean(1) + 0.5 * eye  # (B, N, N)
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    if pooling == "cls":
        out = rollout[:, 0]
    else:
        keep = torch.ones(B, N, dtype=rollout.dtype, device=rollout.device)
        if padding_mask is not None:
            keep = (~padding_mask).to(rollout.dtype)
        out = (keep[:, :, None] * rollout).sum(1) / keep.sum(1, keepdim=True)
    if padding_mask is not None:
        out = out.masked_fill(padding_mask, 0.0)
    return out / out.sum(-1, keepdim=True)
