"""Linformer attention: keys and values projected along the sequence to k rows (Wang et al. 2020).

K′ = Eᵀ K and V′ = Fᵀ V with learned E, F of shape (max_len, k), shared across heads; queries
attend to the k projected rows: O(N · k) time and memory. Sequences shorter than ``max_len`` use
E[:N]; longer ones are an error. Padded keys and values are zeroed before the projection, so the
result at real positions does not depend on how much padding follows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SelfAttention, linear_bias
from .registry import register_attention


def segment_means(n: int, k: int) -> Tensor:
    """E (n, k): column j averages the j-th of k near-equal segments of the sequence."""
    e = F.one_hot(torch.arange(n) * k // n, k).float()
    return e / e.sum(0, keepdim=True)


def linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    proj_k: Tensor,
    proj_v: Tensor,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """q, k, v (B, H, N, d), proj_k / proj_v (>= N, k) -> (B, H, N, d)."""
    N = k.shape[2]
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, :, None]
        k, v = k * keep, v * keep
    k = torch.einsum("bhnd,nk->bhkd", k, proj_k[:N].to(k.dtype))  # (B, H, k, d)
    v = torch.einsum("bhnd,nk->bhkd", v, proj_v[:N].to(v.dtype))
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


@register_attention("linformer")
class LinformerAttention(SelfAttention):
    """Low-rank attention with sequence projections E, F of shape (max_len, k).

    Args:
        k: projected length (rank).
        max_len: longest sequence accepted (rows of E and F).
        share_kv: use one projection for keys and values (E = F).
        init: ``"pool"`` (default) starts E and F as segment means (column j averages the j-th
            of k equal stretches of the sequence) plus 10% noise; ``"uniform"`` is the reference
            implementations' U(-1/√k, 1/√k), with which the position-specific E can memorise
            training documents (the README has the measurement).

    Every token attends to the projected summary of all tokens, so ``global_mask`` is accepted
    and ignored.

    The module computes Eᵀ(X W_kᵀ + b_k) as (Eᵀ X) W_kᵀ + (Eᵀ 1) b_k: projecting along the
    sequence first makes the key and value Linear layers act on k rows instead of N
    (mathematically identical to :func:`linformer_attention`, with less work).
    """

    stochastic_map = False  # the implied map: see attention_weights

    def __init__(self, embed_dim: int, num_heads: int, k: int = 256, max_len: int = 4096,
                 share_kv: bool = False, init: str = "pool", dropout: float = 0.0,
                 bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        if k <= 0 or max_len <= 0:
            raise ValueError(f"linformer k ({k}) and max_len ({max_len}) must be positive")
        if k > max_len:
            raise ValueError(f"linformer k={k} is larger than max_len={max_len}; a projection "
                             f"to more rows than the sequence has is not low-rank: use k <= "
                             f"{max_len} (or raise max_len)")
        self.k, self.max_len, self.share_kv, self.init = k, max_len, share_kv, init
        if init not in ("pool", "uniform"):
            raise ValueError(f"linformer init must be 'pool' or 'uniform', got {init!r}")
        self.proj_k = nn.Parameter(self._init_projection(max_len, k, init))
        self.proj_v = None if share_kv else nn.Parameter(self._init_projection(max_len, k, init))

    @staticmethod
    def _init_projection(max_len: int, k: int, init: str) -> Tensor:
        if init == "uniform":  # lucidrains' / fairseq's: U(-1/√k, 1/√k)
            return torch.empty(max_len, k).uniform_(-(k**-0.5), k**-0.5)
        e = segment_means(max_len, k)  # "pool": segment means plus 10% uniform noise
        return e + torch.empty(max_len, k).uniform_(-0.1, 0.1) * e.max()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None,
                global_mask: Tensor | None = None) -> Tensor:
        self.check_input(x, key_padding_mask, global_mask)
        B, N, D = x.shape
        if N > self.max_len:
            raise ValueError(f"sequence length {N} exceeds linformer max_len={self.max_len}; "
                             f"build it with max_len >= {N} (attention.max_len) or truncate "
                             "the input")
        real = x.new_ones(B, N)  # 1 = real token
        if key_padding_mask is not None:  # zero padded rows before projecting
            real = (~key_padding_mask).to(x.dtype)
            x = x * real[..., None]
        e = self.proj_k[:N].to(x.dtype)
        f = e if self.proj_v is None else self.proj_v[:N].to(x.dtype)
        x_e = e.T @ x  # (B, k, D): Eᵀ X
        x_f = x_e if self.proj_v is None else f.T @ x
        q = self.split_heads(self.q_proj(x))  # (B, H, N, d)
        k = self.split_heads(self._linear(x_e, real @ e, self.k_proj))  # (B, H, k, d)
        v = self.split_heads(self._linear(x_f, real @ f, self.v_proj))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.finish(out, key_padding_mask)

    def projected_attention_weights(self, q: Tensor, k: Tensor,
                                    key_padding_mask: Tensor | None = None) -> Tensor:
        """softmax(Q (Eᵀ K)ᵀ / √d): the weights (B, H, N, k) over the k projected keys, from
        ``q``, ``k`` (B, H, N, d) as :meth:`project_qkv` returns them (padded keys zeroed)."""
        N = k.shape[2]
        if key_padding_mask is not None:
            k = k * ~key_padding_mask[:, None, :, None]
        k = torch.einsum("bhnd,nk->bhkd", k, self.proj_k[:N].to(k.dtype))  # (B, H, k, d)
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)

    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The implied map P Fᵀ (B, H, N, N) through the value projection F (E if
        ``share_kv``), P = :meth:`projected_attention_weights`; padded keys' columns are 0.

        Exact (map @ V is the output), but F is learned: its columns need not sum to 1 or be
        positive, so neither need the rows of this map (they sum to P Fᵀ 1)."""
        N = k.shape[2]
        f = self.proj_k if self.proj_v is None else self.proj_v
        implied = self.projected_attention_weights(q, k, key_padding_mask) @ f[:N].T.to(q.dtype)
        if key_padding_mask is not None:
            implied = implied.masked_fill(key_padding_mask[:, None, None, :], 0.0)
        return implied

    @staticmethod
    def _linear(pooled: Tensor, counts: Tensor, linear: nn.Module) -> Tensor:
        """Eᵀ (X Wᵀ + b) from pooled = Eᵀ X (B, k, D) and counts = Eᵀ 1 (B, k).

        The layer is called as a module (so a quantized one runs its own kernel); it adds b
        once, and the other ``counts - 1`` times are added here."""
        out = linear(pooled)  # Eᵀ X Wᵀ + b
        bias = linear_bias(linear)
        if bias is not None:
            out = out + (counts - 1)[..., None] * bias.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, k={self.k}, max_len={self.max_len}, "
                f"share_kv={self.share_kv}")

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """K and V projected along the sequence ``2 · 2·B·k·N·D``, then attention to k keys
        ``2 · 2·B·H·N·k·d``."""
        B, N, k = batch, seq_len, self.k
        projections = 2 * 2 * B * k * N * self.embed_dim
        return projections + 2 * 2 * B * self.num_heads * N * k * self.head_dim

    @classmethod
    def fit_to_length(cls, options: dict, max_len: int) -> tuple[dict, list[str]]:
        """Cap ``k`` at the sequence length (and at the ``max_len`` option, if given)."""
        import inspect

        options = dict(options)
        limit = min(int(max_len), int(options.get("max_len", max_len)))
        k = int(options.get("k", inspect.signature(cls).parameters["k"].default))
        if k <= limit:
            return options, []
        options["k"] = limit
        return options, [f"linformer k capped from {k} to {limit} = max_len"]
