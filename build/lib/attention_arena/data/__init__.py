"""Data layer: text -> UTF-8 bytes (or ListOps tokens) -> padded batches.

Entry point: :class:`TextClassificationDataModule`; data set names: :func:`available_datasets`.
"""

from .datamodule import PadCollate, TextClassificationDataModule
from .errors import DataError, DataWarning
from .listops import evaluate as evaluate_listops
from .sources import available_datasets, load_processed
from .tokenizer import ByteTokenizer, ListOpsTokenizer

__all__ = [
    "ByteTokenizer",
    "DataError",
    "DataWarning",
    "ListOpsTokenizer",
    "PadCollate",
    "TextClassificationDataModule",
    "available_datasets",
    "evaluate_listops",
    "load_processed",
]
