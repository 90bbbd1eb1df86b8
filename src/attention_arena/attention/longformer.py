"""Longformer-style attention: a sliding window plus global tokens (Beltagy et al. 2020).

Token i attends to every j with |i - j| <= window / 2, and to every global token; a global token
attends to (and is attended by) all tokens. The window part runs in blocks of ``block`` queries
against their ``2r + 1`` neighbouring key blocks through PyTorch's fused SDPA kernel, so time and
memory are O(N · window): no N × N matrix is ever formed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SelfAttention
from .full import full_attention
from .registry import register_attention


def _key_windows(t: Tensor, block: int, r: int, nb: int) -> Tensor:
    """Zero-copy windows of keys: (B, H, N, d) -> (B·H, nb, (2r+1)·block, d).

    Window i holds positions (i - r)·block ... (i + r + 1)·block - 1 (zeros outside [0, N)).
    """
    B, H, N, d = t.shape
    t = F.pad(t, (0, 0, r * block, (nb + r) * block - N))
    return t.unfold(2, (2 * r + 1) * block, block).transpose(-1, -2).flatten(0, 1)


def _mask_windows(m: Tensor, block: int, r: int, nb: int) -> Tensor:
    """The same windows for a bool (B, N) mask: -> (B, nb, (2r+1)·block), False outside."""
    m = F.pad(m, (r * block, (nb + r) * block - m.shape[1]), value=False)
    return m.unfold(1, (2 * r + 1) * block, block)


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


def _blocked_band_attention(q: Tensor, k: Tensor, v: Tensor, half: int, keep: Tensor,
                            global_mask: Tensor | None, dropout_p: float, block: int) -> Tensor:
    """The band in blocks of ``block`` queries against their 2r + 1 neighbouring key blocks.

    O(N · window) time and memory; global keys are concatenated to every window and global
    queries attend to all real keys. Arguments as for :func:`_dense_band_attention`.
    """
    B, H, N, d = q.shape
    r = math.ceil(half / block)  # neighbour blocks a side
    nb = math.ceil(N / block)
    S = (2 * r + 1) * block  # keys seen by one block of queries

    # Which keys the band may use: real and not global (globals are added separately).
    key_ok = keep if global_mask is None else keep & ~global_mask
    key_ok = _mask_windows(key_ok, block, r, nb)  # (B, nb, S)

    # Query s of block i sits at i·block + s, key t of its window at (i - r)·block + t, so
    # |p_q - p_k| <= half  <=>  |s + r·block - t| <= half.
    s = torch.arange(block, device=q.device)[:, None]
    t = torch.arange(S, device=q.device)[None, :]
    mask = ((s + r * block - t).abs() <= half) & key_ok[:, :, None, :]  # (B, nb, block, S)
    # A query with no allowed key (padding far from real tokens) keeps its diagonal so the
    # softmax stays finite; the caller discards padded outputs.
    diag = t == s + r * block
    mask = mask | (diag & ~mask.any(-1, keepdim=True))

    qb = F.pad(q, (0, 0, 0, nb * block - N)).reshape(B * H, nb, block, d)
    kb = _key_windows(k, block, r, nb)  # (B·H, nb, S, d), a view
    vb = _key_windows(v, block, r, nb)

    glob_idx = glob_ok = None
    if global_mask is not None and global_mask.any():
        G = int(global_mask.sum(-1).max())
        # each row's global positions first (in order), then the rest
        glob_idx = torch.argsort((~global_mask).to(torch.int8), dim=1, stable=True)[:, :G]
        glob_ok = global_mask.gather(1, glob_idx)  # (B, G): False marks filler slots
        gather = glob_idx[:, None, :, None].expand(B, H, G, d)
        kg = k.gather(2, gather).flatten(0, 1)[:, None].expand(B * H, nb, G, d)
        vg = v.gather(2, gather).flatten(0, 1)[:, None].expand(B * H, nb, G, d)
        kb, vb = torch.cat([kg, kb], dim=2), torch.cat([vg, vb], dim=2)
        mask = torch.cat([glob_ok[:, None, None, :].expand(B, nb, block, G), mask], dim=-1)

    if B > 1:  # one mask per (batch, head) pair
        mask = mask[:, None].expand(B, H, *mask.shape[1:]).flatten(0, 1)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p)
    out = out.reshape(B, H, nb * block, d)

    if glob_idx is not None:  # global queries attend to every real key
        G = glob_idx.shape[1]
        q_glob = q.gather(2, glob_idx[:, None, :, None].expand(B, H, G, d))
        out_glob = full_attention(q_glob, k, v, ~keep, dropout_p=dropout_p)
        # filler slots write into an extra, discarded position
        target = torch.where(glob_ok, glob_idx, nb * block)[:, None, :, None].expand(B, H, G, d)
        out = F.pad(out, (0, 0, 0, 1)).scatter(2, target, out_glob)
    return out[:, :, :N]


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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """Each query sees ``min(window + 1, N)`` keys: ``2 · 2·B·H·N·min(window+1, N)·d``
        (global tokens not counted)."""
        keys = min(self.window + 1, seq_len)
        return 2 * 2 * batch * self.num_heads * seq_len * keys * self.head_dim
