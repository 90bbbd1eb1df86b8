"""Pluggable self-attention backends with one shared API.

    >>> from attention_arena.attention import build_attention, available_attentions
    >>> attn = build_attention("longformer", embed_dim=256, num_heads=4, window=256)
    >>> y = attn(x, key_padding_mask=pad, global_mask=glob)  # (B, N, D) -> (B, N, D)

A new backend is one module with ``@register_attention("name")`` on a :class:`SelfAttention`
subclass: in this package it is discovered automatically; in your own package, declare it as an
``attention_arena.backends`` entry point (see :mod:`attention_arena.attention.registry`).
"""

from .base import SelfAttention
from .bigbird import BigBirdAttention, bigbird_attention
from .full import FullAttention, full_attention, reference_attention
from .linear import LinearAttention, linear_attention
from .linformer import LinformerAttention, linformer_attention
from .longformer import LongformerAttention, sliding_window_attention
from .nystrom import NystromAttention, nystrom_attention
from .performer import PerformerAttention, favor_attention
from .reformer import ReformerAttention, lsh_attention
from .registry import (
    available_attentions,
    build_attention,
    get_attention_class,
    import_modules,
    register_attention,
)

__all__ = [
    "BigBirdAttention",
    "FullAttention",
    "LinearAttention",
    "LinformerAttention",
    "LongformerAttention",
    "NystromAttention",
    "PerformerAttention",
    "ReformerAttention",
    "SelfAttention",
    "available_attentions",
    "bigbird_attention",
    "build_attention",
    "favor_attention",
    "full_attention",
    "get_attention_class",
    "import_modules",
    "linear_attention",
    "linformer_attention",
    "lsh_attention",
    "nystrom_attention",
    "reference_attention",
    "register_attention",
    "sliding_window_attention",
]
