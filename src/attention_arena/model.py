"""A small pre-LayerNorm Transformer encoder for sequence classification.

Read top to bottom: positional encodings, one Transformer block, the classifier. The attention of
every block comes from the registry (``attention_arena.attention``), so the same model trains with
any backend: ``TransformerClassifier(..., attention={"name": "longformer", "window": 256})``.

Shapes: B = batch, N = sequence length, D = ``embed_dim``, C = ``num_classes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .attention import build_attention
from .attention.base import zero_padding

POSITIONS = ("learned", "sinusoidal")
POOLINGS = ("cls", "mean")
# Scale of the fixed sin/cos table relative to its natural RMS (0.71): at full scale it drowns the
# token embeddings (initialised with std 0.02) and training stalls at chance level.
SINUSOIDAL_SCALE = 0.02 / 0.5**0.5


def sinusoidal_positions(length: int, dim: int, device=None) -> Tensor:
    """The fixed sin/cos table of Vaswani et al. (2017): (length, dim)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (N, 1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / dim))  # (ceil(D/2),)
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class FeedForward(nn.Module):
    """Position-wise MLP: D -> ff_dim -> D with GELU."""

    def __init__(self, embed_dim: int, ff_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ff_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(ff_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        return self.fc2(self.drop(self.act(self.fc1(x))))


class EmbeddingConv(nn.Module):
    """x + depthwise_conv(x) along the sequence: one kernel of odd length per channel, so every
    token sees its neighbours before the first attention layer. Padded positions are zeros to
    the convolution: outputs at real tokens do not depend on padding. Zero-initialised, so it
    starts as the identity (the model without it) and learns what to mix."""

    def __init__(self, embed_dim: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2,
                              groups=embed_dim)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:  # (B, N, D)
        h = zero_padding(x, padding_mask)
        return x + self.conv(h.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + FF(LN(x)); dropout on both branches."""

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float,
                 attention: Mapping[str, Any], attention_dropout: float = 0.0):
        super().__init__()
        attention = dict(attention)
        name = attention.pop("name")
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = build_attention(name, embed_dim=embed_dim, num_heads=num_heads,
                                    dropout=attention_dropout, **attention)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.ff = FeedForward(embed_dim, ff_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None, global_mask: Tensor | None) -> Tensor:
        # x: (B, N, D); padding_mask / global_mask: bool (B, N)
        x = x + self.drop(self.attn(self.ln1(x), key_padding_mask=padding_mask,
                                    global_mask=global_mask))
        x = x + self.drop(self.ff(self.ln2(x)))
        return x


class TransformerClassifier(nn.Module):
    """Token embedding + positions -> ``num_layers`` blocks -> LayerNorm -> pooling -> linear head.

    Args:
        vocab_size: number of token ids (id 0 is padding by convention of the data module).
        num_classes: number of output classes C.
        embed_dim, num_heads, ff_dim, num_layers, dropout: the usual Transformer sizes
            (``dropout`` on embeddings and on both residual branches).
        attention_dropout: dropout on the attention probabilities. Default 0: where it is
            > 0, SDPA leaves its fused kernels for the O(N²) math path (4x slower on CPU at
            N=512), and Performer has no attention matrix to drop from.
        max_length: longest sequence the model accepts (size of the learned position table).
        positions: ``"learned"`` (a table of ``max_length`` rows) or ``"sinusoidal"`` (fixed).
        pooling: ``"cls"`` (the token at position 0, which the data module sets to CLS) or
            ``"mean"`` (average over the non-padding tokens).
        attention: ``{"name": backend, **backend_kwargs}`` passed to ``build_attention``.
        cls_global: mark position 0 as a global token (``global_mask``) for every block, so
            sparse backends such as ``longformer`` let the CLS token see the whole document.
        embedding_conv: odd kernel length of an :class:`EmbeddingConv` on the embeddings
            (positions included), before the first block; None or 0 = off. Absolute positions
            alone are slow to teach a small model which bytes are neighbours (README "Making
            models cheaper"); the convolution hands it them. Attention rollout
            (``arena-explain``) does not see the convolution's mixing.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 256,
        num_heads: int = 4,
        ff_dim: int = 1024,
        num_layers: int = 4,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        max_length: int = 4096,
        positions: str = "learned",
        pooling: str = "cls",
        attention: Mapping[str, Any] | None = None,
        cls_global: bool = True,
        embedding_conv: int | None = None,
    ):
        super().__init__()
        attention = dict(attention or {"name": "full"})
        if "name" not in attention:
            raise ValueError(f"attention config needs a 'name' (a backend), got {attention}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for key, value in (("vocab_size", vocab_size), ("num_classes", num_classes),
                           ("ff_dim", ff_dim), ("num_layers", num_layers),
                           ("max_length", max_length)):
            if int(value) <= 0:
                raise ValueError(f"{key} must be positive, got {value}")
        self.max_length, self.positions, self.pooling = max_length, positions, pooling
        self.cls_global = cls_global
        self.attention_name = attention["name"]

        self.tok_emb = nn.Embedding(vocab_size, embed_dim)
        if positions == "learned":
            self.pos_emb = nn.Embedding(max_length, embed_dim)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(max_length, embed_dim),
                                 persistent=False)
        embedding_conv = embedding_conv or None
        if embedding_conv is not None and (not isinstance(embedding_conv, int)
                                           or embedding_conv < 0 or embedding_conv % 2 == 0):
            raise ValueError(f"model.embedding_conv must be an odd positive kernel length (e.g. "
                             f"5) or null/0 for none, got {embedding_conv!r}")
        self.embed_conv = EmbeddingConv(embed_dim, embedding_conv) if embedding_conv else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, ff_dim, dropout, attention, attention_dropout)
            for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        # the fixed sinusoidal table (RMS 0.71) is scaled to the embeddings' 0.02 in forward

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``input_ids`` Long (B, N), ``padding_mask`` bool (B, N) True = pad -> logits (B, C)."""
        x = self.encode(input_ids, padding_mask)  # (B, N, D)

        # Pooling: (B, N, D) -> (B, D)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            if padding_mask is None:
                pooled = x.mean(dim=1)
            else:
                keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, N, 1)
                pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)  # (B, C)

    def encode(self, input_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The encoder without pooling and head: token states after ``ln_f``, (B, N, D)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got {tuple(input_ids.shape)}")
        B, N = input_ids.shape
        if N > self.max_length:
            raise ValueError(
                f"sequence length {N} exceeds the model's max_length={self.max_length}; "
                f"raise model.max_length (and data.max_length) or truncate the input"
            )
        if padding_mask is not None and padding_mask.shape != input_ids.shape:
            raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)} but input_ids "
                             f"is {tuple(input_ids.shape)}")

        # Embeddings: (B, N) -> (B, N, D)
        x = self.tok_emb(input_ids)
        if self.positions == "learned":
            x = x + self.pos_emb(torch.arange(N, device=input_ids.device))  # (N, D) broadcast
        else:
            x = x + SINUSOIDAL_SCALE * self.pos_table[:N].to(x.dtype)
        if self.embed_conv is not None:
            x = self.embed_conv(x, padding_mask)  # each token mixed with its neighbours
        x = self.drop(x)

        # The CLS token at position 0 is global: (B, N) bool, True only at column 0.
        global_mask = None
        if self.cls_global:
            global_mask = torch.zeros(B, N, dtype=torch.bool, device=input_ids.device)
            global_mask[:, 0] = True

        for block in self.blocks:
            x = block(x, padding_mask, global_mask)  # (B, N, D)
        return self.ln_f(x)
