"""Data layer: a source's texts -> de-duplicated splits -> tokens (bpe, bytes, ListOps) -> batches.

Entry point: :class:`TextClassificationDataModule`; data set names: :func:`available_datasets`;
a run's tokenizer: :func:`load_tokenizer`.
"""

# Importing the source modules registers them (bbc_news, listops, files, imdb, hyperpartisan,
# arxiv).
from . import bbc_news, files, hub, listops  # noqa: F401
from .datamodule import PadCollate, TextClassificationDataModule
from .errors import DataError, DataWarning
from .listops import evaluate as evaluate_listops
from .pipeline import load_processed, load_text_splits
from .sources import Source, available_datasets, make_source, register_source
from .tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    ListOpsTokenizer,
    Tokenizer,
    TokenizerSpec,
    load_tokenizer,
    save_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "DataError",
    "DataWarning",
    "ListOpsTokenizer",
    "PadCollate",
    "Source",
    "TextClassificationDataModule",
    "Tokenizer",
    "TokenizerSpec",
    "available_datasets",
    "evaluate_listops",
    "load_processed",
    "load_text_splits",
    "load_tokenizer",
    "make_source",
    "register_source",
    "save_tokenizer",
]
