"""Public implementations timed against ours (``arena-bench --peers``): the ONE peer ↔ method map.

Each peer is wrapped to map x (B, N, D) -> (B, N, D) with the same sizes as our module, and
declares the backend of ours it implements, its import name, its pip requirement and which of our
method's options it mirrors (like with like: the same k / num_features / window). A peer counts
the FLOPs of its method and is drawn in its method's colour (dashed).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .options import default_options


@dataclass(frozen=True)
class Peer:
    """A public implementation of one of our methods, and how to build and configure it."""

    name: str  # "peer:<something>"
    method: str  # our backend it implements
    module: str  # import name (installed or not)
    requirement: str  # what to pip install
    build: Callable[..., nn.Module]  # (D, H, N, **options) -> module x (B, N, D) -> (B, N, D)
    mirrors: tuple[str, ...]  # our method's options it takes

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def valid_options(self) -> list[str]:
        params = list(inspect.signature(self.build).parameters)
        return params[3:]  # after D, H, N

    def options(self, seq_len: int, method_changes: dict | None = None,
                own_changes: dict | None = None) -> dict[str, Any]:
        """Our method's settings for the mirrored keys (defaults + ``method_changes``), then
        ``own_changes`` (``--opt peer:….KEY=VALUE``)."""
        ours = {**default_options(self.method, seq_len), **(method_changes or {})}
        return {key: ours[key] for key in self.mirrors if key in ours} | (own_changes or {})


# --------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------

class _PeerLinformer(nn.Module):
    def __init__(self, D, H, N, k):
        super().__init__()
        from linformer import LinformerSelfAttention

        self.attn = LinformerSelfAttention(dim=D, seq_len=N, k=k, heads=H, dim_head=D // H)

    def forward(self, x):
        return self.attn(x)


class _PeerPerformer(nn.Module):
    def __init__(self, D, H, N, num_features):
        super().__init__()
        from performer_pytorch import SelfAttention

        self.attn = SelfAttention(dim=D, heads=H, dim_head=D // H, nb_features=num_features,
                                  causal=False)

    def forward(self, x):
        return self.attn(x)


class _PeerLocalAttention(nn.Module):
    """lucidrains ``LocalAttention`` (exact ±window/2) inside q/k/v/out Linear layers like ours."""

    def __init__(self, D, H, N, window):
        super().__init__()
        from local_attention import LocalAttention

        self.H = H
        self.q, self.k, self.v, self.out = (nn.Linear(D, D) for _ in range(4))
        self.attn = LocalAttention(window_size=window // 2, look_backward=1, look_forward=1,
                                   exact_windowsize=True, autopad=True, causal=False)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (lin(x).view(B, N, self.H, D // self.H).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        o = self.attn(q, k, v)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class _PeerLongformerHF(nn.Module):
    """HF ``LongformerSelfAttention`` (q/k/v inside) + an out Linear, N padded to the window."""

    def __init__(self, D, H, N, window):
        super().__init__()
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        cfg = LongformerConfig(hidden_size=D, num_attention_heads=H, attention_window=[window],
                               attention_probs_dropout_prob=0.0, num_hidden_layers=1)
        self.window = window
        self.attn = LongformerSelfAttention(cfg, layer_id=0)
        self.out = nn.Linear(D, D)

    def forward(self, x):
        B, N, D = x.shape
        pad = (-N) % self.window
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        mask = torch.zeros(B, N + pad, device=x.device, dtype=x.dtype)
        mask[:, N:] = -10000.0  # HF convention: <0 no attention, 0 local, >0 global
        out = self.attn(x, attention_mask=mask, is_index_masked=mask < 0,
                        is_index_global_attn=mask > 0, is_global_attn=False)[0]
        return self.out(out[:, :N])


class _PeerBigBirdHF(nn.Module):
    """HF ``BigBirdBlockSparseAttention`` (q/k/v inside) + an out Linear, N padded to whole
    blocks (masked). HF fixes the window at 3 blocks and makes the first and last blocks global;
    like HF's model, inputs of at most (5 + 2r) blocks fall back to full attention."""

    def __init__(self, D, H, N, block_size, num_random_blocks):
        super().__init__()
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import (
            BigBirdBlockSparseAttention,
            BigBirdModel,
        )

        cfg = BigBirdConfig(hidden_size=D, num_attention_heads=H, block_size=block_size,
                            num_random_blocks=num_random_blocks, attention_type="block_sparse",
                            attention_probs_dropout_prob=0.0, num_hidden_layers=1,
                            max_position_embeddings=max(4096, N + block_size))
        self.block, self.H = block_size, H
        self.sparse = math.ceil(N / block_size) > 5 + 2 * num_random_blocks
        self.masks = BigBirdModel.create_masks_for_block_sparse_attn
        self.attn = BigBirdBlockSparseAttention(cfg, seed=0)
        self.out = nn.Linear(D, D)

    def forward(self, x):
        B, N, D = x.shape
        pad = (-N) % self.block
        if not self.sparse:  # HF's model switches to full attention here
            q, k, v = (lin(x).view(B, N, self.H, -1).transpose(1, 2)
                       for lin in (self.attn.query, self.attn.key, self.attn.value))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.out(out.transpose(1, 2).reshape(B, N, D))
        mask = torch.ones(B, N + pad, device=x.device, dtype=x.dtype)
        mask[:, N:] = 0.0
        blocked, band, from_mask, to_mask = self.masks(mask, self.block)
        out = self.attn(torch.nn.functional.pad(x, (0, 0, 0, pad)), band, from_mask, to_mask,
                        blocked, blocked)[0]
        return self.out(out[:, :N])


PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer("peer:linformer", "linformer", "linformer", "linformer==0.2.3", _PeerLinformer,
         ("k",)),
    Peer("peer:performer", "performer", "performer_pytorch", "performer-pytorch",
         _PeerPerformer, ("num_features",)),
    Peer("peer:local-attention", "longformer", "local_attention", "local-attention",
         _PeerLocalAttention, ("window",)),
    Peer("peer:longformer-hf", "longformer", "transformers", "transformers", _PeerLongformerHF,
         ("window",)),
    Peer("peer:bigbird-hf", "bigbird", "transformers", "transformers", _PeerBigBirdHF,
         ("block_size", "num_random_blocks")),
]}
