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


class _PeerNystrom(nn.Module):
    """lucidrains ``NystromAttention`` (q/k/v and out projections inside)."""

    def __init__(self, D, H, N, num_landmarks, pinv_iterations, conv_kernel):
        super().__init__()
        from nystrom_attention import NystromAttention

        if pinv_iterations is None:
            raise ValueError("peer:nystrom-attention has no exact pseudo-inverse; give "
                             "pinv_iterations a number")
        self.attn = NystromAttention(dim=D, dim_head=D // H, heads=H, num_landmarks=num_landmarks,
                                     pinv_iterations=pinv_iterations, residual=bool(conv_kernel),
                                     residual_conv_kernel=conv_kernel or 33)

    def forward(self, x):
        return self.attn(x)


class _PeerReformer(nn.Module):
    """lucidrains ``LSHSelfAttention`` (same-bucket keys only, like ours), N padded with masked
    positions to the multiple of ``2 · bucket_size`` it requires."""

    def __init__(self, D, H, N, bucket_size, n_hashes):
        super().__init__()
        from reformer_pytorch import LSHSelfAttention

        self.multiple = 2 * bucket_size
        self.attn = LSHSelfAttention(dim=D, heads=H, dim_head=D // H, bucket_size=bucket_size,
                                     n_hashes=n_hashes, attend_across_buckets=False)

    def forward(self, x):
        B, N, D = x.shape
        pad = (-N) % self.multiple
        if not pad:
            return self.attn(x)
        keep = torch.arange(N + pad, device=x.device).expand(B, -1) < N
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return self.attn(x, input_mask=keep)[:, :N]


class _PeerLinearEinsum(nn.Module):
    """fast-transformers' ``LinearAttention`` forward (elu + 1, three einsums, eps 1e-6) inside
    q/k/v/out Linear layers like ours: ``pytorch-fast-transformers`` only builds with CUDA, so
    its forward is copied here (it needs nothing but torch)."""

    def __init__(self, D, H, N):
        super().__init__()
        self.H, self.eps = H, 1e-6
        self.q, self.k, self.v, self.out = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (lin(x).view(B, N, self.H, D // self.H) for lin in (self.q, self.k, self.v))
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        kv = torch.einsum("nshd,nshm->nhmd", k, v)
        z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + self.eps)
        out = torch.einsum("nlhd,nhmd,nlh->nlhm", q, kv, z)
        return self.out(out.reshape(B, N, D))


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
    Peer("peer:nystrom-attention", "nystrom", "nystrom_attention", "nystrom-attention",
         _PeerNystrom, ("num_landmarks", "pinv_iterations", "conv_kernel")),
    Peer("peer:reformer-pytorch", "reformer", "reformer_pytorch", "reformer-pytorch",
         _PeerReformer, ("bucket_size", "n_hashes")),
    Peer("peer:linear-einsum", "linear", "torch", "torch", _PeerLinearEinsum, ()),
    Peer("peer:bigbird-hf", "bigbird", "transformers", "transformers", _PeerBigBirdHF,
         ("block_size", "num_random_blocks")),
]}
