"""Longformer-style attention: a sliding window plus global tokens (Beltagy et al. 2020).

Token i attends to every j with |i - j| <= window / 2, and to every global token; a global token
attends to (and is attended by) all tokens. The window part runs in blocks of ``block`` queries
against their ``2r + 1`` neighbouring key blocks (PyTorch's CPU flash kernel; explicit per-block
scores with dropout or off the CPU), so time and memory are O(N · window): no N × N matrix is
ever formed. The global keys are computed once
for all queries, as their own key set, and merged with the band exactly by log-sum-exp
(:mod:`._sparse`, shared with ``bigbird``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._sparse import block_sparse_attention, key_windows, mask_windows, pad_keys, per_head
from .base import SelfAttention, masked_softmax
from .full import full_attention
from .registry import register_attention


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    key_padding_mask: Tensor | None = None,
    global_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    block: int | None = None,
) -> Tensor:
    """Banded + global attention: q, k, v (B, H, N, d) -> (B, H, N, d).

    Args:
        window: total width; each token sees |i - j| <= window // 2 (must be even and > 0).
        key_padding_mask: bool (B, N), True = padding; padded keys get zero weight.
        global_mask: bool (B, N), True = global token (attends to all, attended by all); a
            global token at a padded position is padding.
        block: queries per block (default: max(window // 2, 64)); only affects speed.

    Outputs at padded positions are unspecified (finite); the caller discards them.
    """
    if window <= 0 or window % 2:
        raise ValueError(f"window must be a positive even number (total width, window/2 a side), "
                         f"got {window}; use e.g. window={max(2, window + window % 2)}")
    B, H, N, d = q.shape
    half = window // 2
    if half >= N - 1:  # the window covers everything: exact full attention
        return full_attention(q, k, v, key_padding_mask, dropout_p=dropout_p)

    keep = (torch.ones(B, N, dtype=torch.bool, device=q.device) if key_padding_mask is None
            else ~key_padding_mask)  # (B, N): True = real token
    if global_mask is not None:
        global_mask = global_mask & keep  # only real tokens are global
    block = block or max(half, 64)
    S = (2 * math.ceil(half / block) + 1) * block  # keys seen by one block of queries
    if N <= S:  # short input: one dense masked call does less work than the blocks would
        return _dense_band_attention(q, k, v, half, keep, global_mask, dropout_p)
    return _blocked_band_attention(q, k, v, half, keep, global_mask, dropout_p, block)


def _dense_band_attention(q: Tensor, k: Tensor, v: Tensor, half: int, keep: Tensor,
                          global_mask: Tensor | None, dropout_p: float) -> Tensor:
    """The band with an explicit (B, 1, N, N) mask: O(N²), for inputs shorter than 3 blocks.

    ``keep`` (B, N): True = real token; ``global_mask`` (B, N): global real tokens, or None.
    """
    B, _, N, _ = q.shape
    i = torch.arange(N, device=q.device)
    allowed = ((i[:, None] - i[None, :]).abs() <= half).expand(B, N, N)
    if global_mask is not None:
        allowed = allowed | global_mask[:, None, :] | global_mask[:, :, None]
    allowed = allowed & keep[:, None, :]  # padded keys get no weight
    allowed = allowed | (torch.eye(N, dtype=torch.bool, device=q.device)
                         & ~allowed.any(-1, keepdim=True))  # rows without keys stay finite
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],
                                          dropout_p=dropout_p)


def band_pattern(n: int, half: int, global_mask: Tensor | None = None,
                 key_padding_mask: Tensor | None = None, device=None) -> Tensor:
    """Which keys each query sees, bool (B, N, N) (B = 1 without masks): the band
    |i - j| <= ``half``, plus every row and column of a real global token."""
    i = torch.arange(n, device=device)
    allowed = ((i[:, None] - i[None, :]).abs() <= half)[None]  # (1, N, N)
    if global_mask is not None:
        if key_padding_mask is not None:
            global_mask = global_mask & ~key_padding_mask  # only real tokens are global
        allowed = allowed | global_mask[:, None, :] | global_mask[:, :, None]
    return allowed


def _blocked_band_attention(q: Tensor, k: Tensor, v: Tensor, half: int, keep: Tensor,
                            global_mask: Tensor | None, dropout_p: float, block: int) -> Tensor:
    """The band in blocks of ``block`` queries against their 2r + 1 neighbouring key blocks.

    O(N · window) time and memory. The global keys are one more key set, seen by every query and
    merged with the band by log-sum-exp (:func:`~._sparse.block_sparse_attention`); global
    queries attend to all real keys. Arguments as for :func:`_dense_band_attention`.
    """
    B, H, N, d = q.shape
    r = math.ceil(half / block)  # neighbour blocks a side
    nb = math.ceil(N / block)
    S = (2 * r + 1) * block  # keys seen by one block of queries

    # Which keys the band may use: real and not global (globals are their own key set).
    key_ok = keep if global_mask is None else keep & ~global_mask
    key_ok = mask_windows(key_ok, block, r, nb)  # (B, nb, S)

    # Query s of block i sits at i·block + s, key t of its window at (i - r)·block + t, so
    # |p_q - p_k| <= half  <=>  |s + r·block - t| <= half.
    s = torch.arange(block, device=q.device)[:, None]
    t = torch.arange(S, device=q.device)[None, :]
    band = ((s + r * block - t).abs() <= half) & key_ok[:, :, None, :]  # (B, nb, block, S)
    kp, vp = pad_keys(k, block, r), pad_keys(v, block, r)
    key_sets = [(key_windows(kp, block, r), key_windows(vp, block, r), per_head(band, H))]
    return block_sparse_attention(q, kp, vp, key_sets, block, r, keep, global_mask, dropout_p)


@register_attention("longformer")
class LongformerAttention(SelfAttention):
    """Sliding-window attention with global tokens, O(N · window) time and memory.

    Args:
        window: total window width (even); each token sees ``window // 2`` tokens a side.
        block: queries per block of the kernel (speed only; default ``max(window // 2, 64)``).
    """

    def __init__(self, embed_dim: int, num_heads: int, window: int = 256, dropout: float = 0.0,
                 bias: bool = True, block: int | None = None):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        if not isinstance(window, int) or window <= 0 or window % 2:
            raise ValueError(f"longformer window must be a positive even integer (total width, "
                             f"window/2 tokens a side), got {window!r}")
        if block is not None and block <= 0:
            raise ValueError(f"longformer block must be positive, got {block}")
        self.window, self.block = window, block

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return sliding_window_attention(q, k, v, self.window, key_padding_mask, global_mask,
                                        dropout_p=p, block=self.block)

    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The exact probabilities (B, H, N, N): zero outside the band |i - j| <= window / 2,
        except in the rows and columns of the (real) global tokens."""
        return masked_softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, key_padding_mask,
                              allowed=band_pattern(q.shape[2], self.window // 2, global_mask,
                                                   key_padding_mask, q.device)[:, None])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """Each query sees ``min(window + 1, N)`` keys: ``2 · 2·B·H·N·min(window+1, N)·d``
        (global tokens not counted)."""
        keys = min(self.window + 1, seq_len)
        return 2 * 2 * batch * self.num_heads * seq_len * keys * self.head_dim
