"""Lightning data module: tokenized splits -> padded batches.

Batches are dicts with ``input_ids`` (LongTensor B x N), ``padding_mask`` (BoolTensor B x N,
True = padding) and ``labels`` (LongTensor B). N is the batch's longest sequence rounded up to
``pad_to_multiple_of``.

Distillation from a teacher that reads another length (``teacher_max_length``): documents are
encoded once at the longer of the two lengths; ``input_ids`` / ``padding_mask`` are the student's
view (the first ``max_length`` ids, CLS first) and training batches also carry the teacher's view
of the same documents, ``teacher_input_ids`` / ``teacher_padding_mask`` (its first
``teacher_max_length`` ids). Statistics (``data_stats``) stay those of the student's length.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError, DataWarning
from .pipeline import ProcessedData, SplitSpec, TokenizedSplit, load_processed
from .sources import make_source
from .tokenizer import PAD_ID, Tokenizer, TokenizerSpec, save_tokenizer

log = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """Map-style dataset over a :class:`TokenizedSplit`; items are ``(ids, label)``."""

    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.split.example(i), int(self.split.labels[i])


class PadCollate:
    """Pad ``(ids, label)`` items to the longest in the batch, rounded up to a multiple.

    ``max_length``: cut every item to its first ``max_length`` ids first (None: as they come).
    ``teacher_length``: also return the teacher's view, ``teacher_input_ids`` /
    ``teacher_padding_mask``, cut at ``teacher_length`` (None: no teacher view).
    """

    def __init__(self, pad_id: int = PAD_ID, pad_to_multiple_of: int = 1,
                 max_length: int | None = None, teacher_length: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.max_length = max_length
        self.teacher_length = teacher_length

    def _pad(self, seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(ids) for ids in seqs)
        n = math.ceil(longest / self.multiple) * self.multiple
        input_ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        padding_mask = torch.ones((len(seqs), n), dtype=torch.bool)
        for row, ids in enumerate(seqs):
            input_ids[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
            padding_mask[row, : len(ids)] = False
        return input_ids, padding_mask

    def __call__(self, items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        input_ids, padding_mask = self._pad([ids[: self.max_length] for ids, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        batch = {"input_ids": input_ids, "padding_mask": padding_mask, "labels": labels}
        if self.teacher_length is not None:
            batch["teacher_input_ids"], batch["teacher_padding_mask"] = self._pad(
                [ids[: self.teacher_length] for ids, _ in items])
        return batch


class TextClassificationDataModule(L.LightningDataModule):
    """Train/val/test loaders for one classification data set (see :func:`available_datasets`).

    Args:
        name: data set: ``bbc_news`` (embedded), ``listops`` (generated), ``files`` (your
            CSV/TSV/JSON/JSONL/Parquet), or hub sets ``imdb``, ``hyperpartisan``, ``arxiv``.
        max_length: tokens per example after truncation, CLS included.
        batch_size, num_workers: DataLoader settings (``persistent_workers`` when workers > 0).
        seed: split seed and train-shuffle seed (also the ListOps seed unless
            ``listops_seed`` is set).
        val_fraction, test_fraction: shares of the train split carved off for missing val/test
            splits (stratified, de-duplicated, fixed by ``seed``).
        pad_to_multiple_of: batch length is rounded up to a multiple of this.
        limit_examples: keep about this many examples in total (each split shrunk in proportion,
            classes stratified), for smoke tests; ListOps then generates only that many.
        tokenizer: ``"bytes"``, ``"bpe"``, ``"listops"`` or a mapping such as
            ``{"name": "bpe", "vocab_size": 8000}`` (the ``tokenizer`` config group); ``None``:
            the data set's default (bpe for text, listops for ListOps).
        cache_dir: processed-data cache; default ``$ATTENTION_ARENA_CACHE`` or
            ``~/.cache/attention_arena``.
        teacher_max_length: a distillation teacher's length when it differs from
            ``max_length``: training batches then carry the teacher's view too (module doc).
        **options: the data set's own options (e.g. ``path``, ``text_column`` for ``files``;
            ``hub_id``, ``revision`` for hub sets; ``listops_*`` for ListOps); an unknown one is an
            error that lists the valid ones.

    ``num_classes``, ``vocab_size``, ``tokenizer`` and ``class_names`` are available right after
    construction (reading them loads the data once; ``setup`` is idempotent).
    """

    def __init__(
        self,
        name: str = "bbc_news",
        max_length: int = 4096,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        pad_to_multiple_of: int = 1,
        limit_examples: int | None = None,
        tokenizer: str | Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        teacher_max_length: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.name = name
        self.source = make_source(name, options)
        self.tokenizer_spec = TokenizerSpec.parse(tokenizer, default=self.source.tokenizers[0])
        if self.tokenizer_spec.name not in self.source.tokenizers:
            supported = "/".join(self.source.tokenizers)
            raise DataError(
                f"data={name} does not support tokenizer={self.tokenizer_spec.name} (it supports "
                f"tokenizer={supported}); fix: tokenizer={self.source.tokenizers[0]}, or leave "
                f"tokenizer unset: data={name} picks it."
            )
        for key, value, low in (
            ("max_length", max_length, 1),
            ("batch_size", batch_size, 1),
            ("pad_to_multiple_of", pad_to_multiple_of, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise DataError(
                    f"data.{key} must be >= {low}, got {value}; fix: set data.{key}="
                    f"{ {'max_length': 1024, 'num_workers': 0}.get(key, 1) }."
                )
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise DataError(f"data.{key} must be in [0, 1), got {value}.")
        if val_fraction + test_fraction >= 1:
            raise DataError(
                f"data.val_fraction + data.test_fraction must be < 1, got "
                f"{val_fraction} + {test_fraction}; fix: lower them (defaults 0.1 each)."
            )
        if limit_examples is not None and limit_examples < 3:
            raise DataError(f"data.limit_examples must be >= 3 or null, got {limit_examples}.")
        if max_length % pad_to_multiple_of:
            warnings.warn(
                f"data.max_length={max_length} is not a multiple of data.pad_to_multiple_of="
                f"{pad_to_multiple_of}: the longest batches will be padded past max_length.",
                DataWarning,
                stacklevel=2,
            )
        if teacher_max_length is not None and teacher_max_length < 1:
            raise DataError(f"teacher_max_length must be >= 1, got {teacher_max_length}.")
        self.max_length = max_length
        self.teacher_max_length = (None if teacher_max_length in (None, max_length)
                                   else int(teacher_max_length))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.split_spec = SplitSpec(seed, val_fraction, test_fraction, limit_examples)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.pad_id = PAD_ID
        self.data: ProcessedData | None = None
        self._prepared: ProcessedData | None = None
        self.datasets: dict[str, TokenizedDataset] = {}
        self.splits: dict[str, TokenizedSplit] = {}

    def _load(self) -> ProcessedData:
        length = max(self.max_length, self.teacher_max_length or 0)  # the longer view
        return load_processed(
            self.source, self.tokenizer_spec, length, self.split_spec, self.cache_dir
        )

    def prepare_data(self) -> None:
        """Build the cache file if needed (Lightning runs this on one process per node)."""
        if self.data is None and self._prepared is None:
            self._prepared = self._load()  # kept for setup() in this process

    def setup(self, stage: str | None = None) -> None:
        """Load the processed splits (once; later calls return at once)."""
        if self.data is not None:
            return
        self.data, self._prepared = self._prepared or self._load(), None
        self.splits = dict(self.data.splits)
        self.datasets = {name: TokenizedDataset(split) for name, split in self.splits.items()}
        log.info(
            "data=%s: %s examples (train/val/test), %d classes, tokenizer %s (vocabulary %d)",
            self.name,
            "/".join(str(len(s)) for s in self.splits.values()),
            self.num_classes,
            self.tokenizer.name,
            self.vocab_size,
        )
        for split, st in self.data_stats().items():
            log.info(
                "data=%s %s: %.1f tokens/document (p90 %.0f), %.1f%% truncated at max_length=%d",
                self.name,
                split,
                st["tokens_mean"],
                st["tokens_p90"],
                100 * st["truncated_share"],
                self.max_length,
            )

    def _data(self) -> ProcessedData:
        self.setup()
        assert self.data is not None
        return self.data

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer (trained on the training split for bpe; loads the data on first use)."""
        return self._data().tokenizer

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer, PAD and CLS included."""
        return self.tokenizer.vocab_size

    @property
    def num_classes(self) -> int:
        """Number of classes (loads the data on first use)."""
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (loads the data on first use)."""
        return list(self._data().class_names)

    @property
    def notes(self) -> list[str]:
        """What processing changed, in words (duplicates merged, inputs identical to train)."""
        return list(self._data().notes)

    @property
    def split_sizes(self) -> dict[str, int]:
        """Examples per split after ``limit_examples``."""
        return {name: len(split) for name, split in self._data().splits.items()}

    def example_ids(self, split: str) -> list[str]:
        """A stable id per example of ``split`` in loader order: SHA-1 of its text, 16 hex chars."""
        return [f"{h:016x}" for h in self._data().splits[split].hashes.tolist()]

    def split_texts(self, split: str) -> tuple[list[str], list[int]]:
        """Full (untruncated) texts and labels of ``split``, the same examples in loader order."""
        data = self._data()
        return list(data.texts[split]), data.splits[split].labels.tolist()

    def data_stats(self) -> dict[str, dict[str, float]]:
        """Per split: ``tokens_mean``, ``tokens_p90`` (per document before truncation, CLS
        included), ``truncated_share`` (longer than ``max_length``) and ``n`` (documents)."""
        return {name: split.stats(self.max_length) for name, split in self._data().splits.items()}

    def save_tokenizer(self, directory: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to ``directory/tokenizer.json`` (read it with ``load_tokenizer``)."""
        return save_tokenizer(self.tokenizer, Path(directory))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=PadCollate(self.pad_id, self.pad_to_multiple_of, self.max_length,
                                  self.teacher_max_length if split == "train" else None),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def describe(self) -> dict[str, Any]:
        """A small summary for logging: name, sizes, classes, tokenizer, vocabulary."""
        return {
            "name": self.name,
            "split_sizes": self.split_sizes,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
        }
