"""BigBird block-sparse attention (Zaheer et al. 2020): window, random and global blocks.

The sequence is cut into blocks of ``block_size`` tokens (the last one zero-padded, masked).
Query block i attends to

- its window: key blocks i - w ... i + w (``num_window_blocks`` = 2w + 1),
- ``num_random_blocks`` further key blocks, fixed per layer and head by a seed,
- the global tokens (``global_mask``, e.g. the CLS token), which attend to every real token.

The three parts are disjoint key sets merged exactly by log-sum-exp
(:func:`~._sparse.block_sparse_attention`): no N × N matrix and no copy of the window keys, so
time and memory are O(N · (2w + 1 + r) · block_size).

Random blocks: every (head h, query block i, key block j) gets a pseudo-random rank, a hash of
(seed, h, i, j) that does not depend on N. Query block i takes the ``num_random_blocks``
lowest-ranked key blocks outside its window that hold at least one real, non-global key (fewer
if there are not that many). The pattern is therefore deterministic, the same in training and
evaluation, unchanged when padding is appended, and never spent on padding. Choosing it forms an
nb × nb table of ranks per head (nb = N / block_size), not N × N.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ._sparse import (
    KeySet,
    block_sparse_attention,
    key_windows,
    mask_windows,
    pad_keys,
    per_head,
)
from .base import SelfAttention, check_heads, masked_softmax
from .registry import register_attention

_MASK32 = 0xFFFFFFFF
_NO_RANK = 1 << 62  # rank of a key block that may not be drawn


def _mul32(x: Tensor, c: int) -> Tensor:
    """x · c mod 2³² for int64 x < 2³², without overflowing int64."""
    low, high = c & 0xFFFF, c >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche) on int64 x < 2³²."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


@functools.lru_cache(maxsize=32)
def block_ranks(seed: int, heads: int | tuple[int, ...], num_blocks: int,
                device: torch.device | str | None = None) -> Tensor:
    """Pseudo-random ranks (heads, nb, nb), int64, distinct within a row: entry (h, i, j) is a
    hash of (seed, h, i, j) (high bits) and j (low 20 bits), independent of ``num_blocks``.
    ``heads``: the number of heads (ids 0..heads-1), or the ids of the heads (what is left
    after head pruning). Cached (one table per layer and length): do not modify the result."""
    h = (torch.arange(heads, device=device) if isinstance(heads, int)
         else torch.tensor(heads, dtype=torch.long, device=device))
    i, j = (torch.arange(num_blocks, device=device) for _ in range(2))
    x = _mix32(torch.tensor(seed & _MASK32, device=device))
    x = _mix32(x ^ h)[:, None, None]
    x = _mix32(x ^ i[:, None])
    x = _mix32(x ^ j)
    return (x << 20) | j


def random_blocks(seed: int, heads: int | tuple[int, ...], num_blocks: int, num_random: int,
                  window: int, eligible: Tensor) -> tuple[Tensor, Tensor]:
    """The random key blocks of every query block: (idx, ok), both (B, H, nb, num_random).

    ``heads``: H, or the ids of the H heads (see :func:`block_ranks`). ``window``: blocks a
    side that query block i already sees (never drawn); ``eligible`` (B, nb) bool: key blocks
    that may be drawn. ``ok`` is False for the filler slots of a query
    block with fewer than ``num_random`` eligible blocks (their ``idx`` is 0).
    """
    B, H = eligible.shape[0], heads if isinstance(heads, int) else len(heads)
    i = torch.arange(num_blocks, device=eligible.device)
    far = (i[:, None] - i[None, :]).abs() > window  # (nb, nb)
    ranks = block_ranks(seed, heads, num_blocks, eligible.device)  # (H, nb, nb)
    ranks = ranks.masked_fill(~(far & eligible[:, None, None, :]), _NO_RANK)  # (B, H, nb, nb)
    top, idx = ranks.topk(min(num_random, num_blocks), dim=-1, largest=False)
    ok = top < _NO_RANK
    missing = num_random - idx.shape[-1]
    if missing:  # fewer blocks than slots
        idx = torch.cat([idx, idx.new_zeros(B, H, num_blocks, missing)], dim=-1)
        ok = torch.cat([ok, ok.new_zeros(B, H, num_blocks, missing)], dim=-1)
    return idx.masked_fill(~ok, 0), ok


def _gather_blocks(tp: Tensor, idx: Tensor, block: int, halo: int) -> Tensor:
    """Key blocks ``idx`` (B, H, nb, r) of padded keys tp (B, H, (nb + 2·halo)·block, d) ->
    (B·H, nb, r·block, d) (a copy)."""
    B, H, L, d = tp.shape
    blocks = tp.reshape(B * H * (L // block), block, d)
    first = torch.arange(B * H, device=tp.device).view(B, H, 1, 1) * (L // block) + halo
    picked = blocks.index_select(0, (first + idx).flatten())  # (B·H·nb·r, block, d)
    return picked.view(B * H, idx.shape[2], -1, d)


def bigbird_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_size: int = 64,
    num_window_blocks: int = 3,
    num_random_blocks: int = 3,
    seed: int = 0,
    key_padding_mask: Tensor | None = None,
    global_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    head_ids: tuple[int, ...] | None = None,
) -> Tensor:
    """Block-sparse attention: q, k, v (B, H, N, d) -> (B, H, N, d).

    Args:
        block_size: tokens per block (any N: the last block is padded and masked).
        num_window_blocks: odd; a query block sees its neighbours (num_window_blocks - 1) / 2
            a side and itself.
        num_random_blocks: further key blocks per query block, from :func:`random_blocks`.
        seed: seed of the random blocks (one per layer).
        key_padding_mask: bool (B, N), True = padding; padded keys get zero weight.
        global_mask: bool (B, N), True = global token (attends to all, attended by all); a
            global token at a padded position is padding.
        head_ids: the id of each of the H heads in the random-block hash (default 0..H-1); a
            head keeps its pattern when other heads are pruned.

    Outputs at padded positions are unspecified (finite); the caller discards them.
    """
    B, H, N, d = q.shape
    if head_ids is not None and len(head_ids) != H:
        raise ValueError(f"bigbird head_ids has {len(head_ids)} entries for {H} heads")
    w = (num_window_blocks - 1) // 2
    nb = math.ceil(N / block_size)
    keep = (torch.ones(B, N, dtype=torch.bool, device=q.device) if key_padding_mask is None
            else ~key_padding_mask)  # (B, N): True = real token
    if global_mask is not None:
        global_mask = global_mask & keep  # only real tokens are global
    # Keys of the window and random sets: real and not global (globals are their own set).
    key_ok = keep if global_mask is None else keep & ~global_mask

    kp, vp = pad_keys(k, block_size, w), pad_keys(v, block_size, w)
    window_ok = mask_windows(key_ok, block_size, w, nb)[:, :, None, :]  # (B, nb, 1, S)
    key_sets: list[KeySet] = [(key_windows(kp, block_size, w), key_windows(vp, block_size, w),
                               per_head(window_ok, H))]
    if num_random_blocks:
        block_ok = mask_windows(key_ok, block_size, 0, nb)  # (B, nb, block): blocks of keys
        heads = H if head_ids is None else tuple(head_ids)
        idx, ok = random_blocks(seed, heads, nb, num_random_blocks, w, block_ok.any(-1))
        if ok.any():
            batch = torch.arange(B, device=q.device).view(B, 1, 1, 1)
            random_ok = block_ok[batch, idx] & ok[..., None]  # (B, H, nb, r, block)
            key_sets.append((_gather_blocks(kp, idx, block_size, w),
                             _gather_blocks(vp, idx, block_size, w),
                             random_ok.flatten(3)[:, :, :, None].flatten(0, 1)))
    return block_sparse_attention(q, kp, vp, key_sets, block_size, w, keep, global_mask,
                                  dropout_p)


def bigbird_pattern(n: int, heads: int | tuple[int, ...], block_size: int = 64,
                    num_window_blocks: int = 3, num_random_blocks: int = 3, seed: int = 0,
                    key_padding_mask: Tensor | None = None, global_mask: Tensor | None = None,
                    device=None) -> Tensor:
    """Which keys each query of :func:`bigbird_attention` sees, bool (B, H, N, N) (B = 1
    without masks); padded keys are left to the caller. For tests and attention maps: O(N²).
    ``heads``: H, or the ids of the H heads (a pruned layer's ``head_ids``)."""
    B = 1 if key_padding_mask is None else key_padding_mask.shape[0]
    H = heads if isinstance(heads, int) else len(heads)
    w = (num_window_blocks - 1) // 2
    nb = math.ceil(n / block_size)
    keep = (torch.ones(B, n, dtype=torch.bool, device=device) if key_padding_mask is None
            else ~key_padding_mask)
    if global_mask is not None:
        global_mask = global_mask & keep
    key_ok = keep if global_mask is None else keep & ~global_mask
    i = torch.arange(nb, device=device)
    blocks = ((i[:, None] - i[None, :]).abs() <= w).expand(B, H, nb, nb)  # the window
    if num_random_blocks:
        block_ok = mask_windows(key_ok, block_size, 0, nb)  # (B, nb, block)
        idx, ok = random_blocks(seed, heads, nb, num_random_blocks, w, block_ok.any(-1))
        drawn = torch.zeros(B, H, nb, nb, dtype=torch.long, device=device)
        blocks = blocks | drawn.scatter_add_(-1, idx, ok.long()).bool()
    of = torch.arange(n, device=device) // block_size  # block of every position
    allowed = blocks[:, :, of][:, :, :, of] & key_ok[:, None, None, :]  # (B, H, N, N)
    if global_mask is not None:  # global keys for everyone, every real key for global queries
        allowed = allowed | global_mask[:, None, None, :] | global_mask[:, None, :, None]
    return allowed


@register_attention("bigbird")
class BigBirdAttention(SelfAttention):
    """Block-sparse attention with window, random and global blocks (BigBird).

    Args:
        block_size: tokens per block.
        num_window_blocks: blocks of the sliding window, odd (3: the own block ± 1).
        num_random_blocks: random key blocks per query block (fixed per layer and head).
        seed: seed of the random blocks, saved with the model (``get_extra_state``). None takes
            a seed from torch's global RNG, so ``torch.manual_seed`` fixes it and stacked layers
            get different patterns.
    """

    def __init__(self, embed_dim: int, num_heads: int, block_size: int = 64,
                 num_window_blocks: int = 3, num_random_blocks: int = 3, seed: int | None = None,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"bigbird block_size must be a positive integer, got {block_size!r}")
        if not isinstance(num_window_blocks, int) or num_window_blocks < 1 \
                or num_window_blocks % 2 == 0:
            raise ValueError(f"bigbird num_window_blocks must be odd and >= 1 (the own block "
                             f"± (n - 1) / 2), got {num_window_blocks!r}")
        if not isinstance(num_random_blocks, int) or num_random_blocks < 0:
            raise ValueError(f"bigbird num_random_blocks must be an integer >= 0, "
                             f"got {num_random_blocks!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.block_size, self.num_window_blocks = block_size, num_window_blocks
        self.num_random_blocks, self.seed = num_random_blocks, int(seed)
        self.head_ids: tuple[int, ...] | None = None  # None = 0..H-1; set by prune_heads

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "head_ids": self.head_ids}

    def set_extra_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        head_ids = state.get("head_ids")
        self.head_ids = None if head_ids is None else tuple(int(h) for h in head_ids)

    def prune_heads(self, keep) -> None:
        """As :meth:`SelfAttention.prune_heads`; the kept heads keep their random blocks
        (their original ids stay in the hash, saved with the model)."""
        keep = check_heads(keep, self.num_heads)
        ids = self.head_ids or tuple(range(self.num_heads))
        super().prune_heads(keep)
        self.head_ids = tuple(ids[h] for h in keep)

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return bigbird_attention(q, k, v, self.block_size, self.num_window_blocks,
                                 self.num_random_blocks, self.seed, key_padding_mask,
                                 global_mask, dropout_p=p, head_ids=self.head_ids)

    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The exact probabilities (B, H, N, N) over this layer's pattern: window blocks, the
        random blocks of every head, the columns of the global tokens, and full rows for them."""
        allowed = bigbird_pattern(q.shape[2], self.head_ids or q.shape[1], self.block_size,
                                  self.num_window_blocks, self.num_random_blocks, self.seed,
                                  key_padding_mask, global_mask, q.device)
        return masked_softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, key_padding_mask,
                              allowed)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, block_size={self.block_size}, "
                f"num_window_blocks={self.num_window_blocks}, "
                f"num_random_blocks={self.num_random_blocks}")

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """Each query sees ``min((num_window_blocks + num_random_blocks)·block_size, N)`` keys:
        ``2 · 2·B·H·N·keys·d`` (global tokens not counted)."""
        keys = min((self.num_window_blocks + self.num_random_blocks) * self.block_size, seq_len)
        return 2 * 2 * batch * self.num_heads * seq_len * keys * self.head_dim
