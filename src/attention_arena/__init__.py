"""attention-arena: train and compare efficient attention backends on long documents.

The stable public API (everything else is internal and may change between releases):

- attention: :func:`build_attention`, :func:`register_attention`, :func:`available_attentions`,
  :class:`SelfAttention` and the functional cores :func:`full_attention`,
  :func:`linformer_attention`, :func:`sliding_window_attention`, :func:`favor_attention`
  (all in :mod:`attention_arena.attention`);
- the model :class:`TransformerClassifier`, the LightningModule :class:`ArenaClassifier` and the
  data module :class:`TextClassificationDataModule`.

The command-line tools are ``arena-train``, ``arena-bench``, ``arena-compare`` and
``arena-compare-run``. Importing this package is cheap: the model, Lightning and data pieces
load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .attention import (
    SelfAttention,
    available_attentions,
    build_attention,
    favor_attention,
    full_attention,
    linformer_attention,
    register_attention,
    sliding_window_attention,
)

if TYPE_CHECKING:
    from .data import TextClassificationDataModule
    from .lit_module import ArenaClassifier
    from .model import TransformerClassifier

__version__ = "0.1.0"

_LAZY = {
    "TransformerClassifier": "attention_arena.model",
    "ArenaClassifier": "attention_arena.lit_module",
    "TextClassificationDataModule": "attention_arena.data",
}

__all__ = [
    "ArenaClassifier",
    "SelfAttention",
    "TextClassificationDataModule",
    "TransformerClassifier",
    "__version__",
    "available_attentions",
    "build_attention",
    "favor_attention",
    "full_attention",
    "linformer_attention",
    "register_attention",
    "sliding_window_attention",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attention_arena' has no attribute {name!r}")
