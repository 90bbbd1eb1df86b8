"""Exact softmax attention through PyTorch's fused ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SelfAttention
from .registry import register_attention


def full_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax attention: q, k, v (B, H, N, d) -> (B, H, N, d).

    Padded keys (``key_padding_mask`` True) get zero weight. A row whose keys are all padding
    returns zeros (SDPA alone would return NaN there).
    """
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    keep = ~key_padding_mask  # (B, N): True = real key
    empty = ~keep.any(dim=-1)  # (B,): sequences with no real key at all
    if empty.any():
        keep = keep | empty[:, None]  # let them attend somewhere finite, zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :],
                                         dropout_p=dropout_p)
    if empty.any():
        out = out.masked_fill(empty[:, None, None, None], 0.0)
    return out


@register_attention("full")
class FullAttention(SelfAttention):
    """Exact O(N²) softmax attention (SDPA picks flash / memory-efficient kernels).

    Every token already attends to every other, so ``global_mask`` is accepted and ignored.
    """

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return full_attention(q, k, v, key_padding_mask, dropout_p=p)

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """``QKᵀ`` and ``AV``: ``2 · 2·B·H·N²·d``."""
        return 2 * 2 * batch * self.num_heads * seq_len**2 * self.head_dim


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None
) -> Tensor:
    """Naive dense softmax attention for tests: ``allowed`` (B, [H,] N, N) bool, True = may attend.

    Rows with no allowed key give zeros.
    """
    dt = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(dt) @ k.to(dt).transpose(-1, -2)) * q.shape[-1] ** -0.5
    if allowed is not None:
        if allowed.dim() == 3:
            allowed = allowed[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (weights @ v.to(dt)).to(q.dtype)
