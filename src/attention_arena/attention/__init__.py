"""Pluggable self-attention backends with one shared API.

    >>> from attention_arena.attention import build_attention, available_attentions
    >>> attn = build_attention("longformer", embed_dim=256, num_heads=4, window=256)
    >>> y = attn(x, key_padding_mask=pad, global_mask=glob)  # (B, N, D) -> (B, N, D)

A new backend is one module in this package with ``@register_attention("name")`` on a
:class:`SelfAttention` subclass; it is discovered automatically.
"""

from .base import SelfAttention
from .full import FullAttention, full_attention, reference_attention
from .registry import available_attentions, build_attention, get_attention_class, register_attention

__all__ = [
    "FullAttention",
    "SelfAttention",
    "available_attentions",
    "build_attention",
    "full_attention",
    "get_attention_class",
    "reference_attention",
    "register_attention",
]
