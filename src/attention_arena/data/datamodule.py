"""Lightning data module: tokenized splits -> padded batches.

Batches are dicts with ``input_ids`` (LongTensor B x N), ``padding_mask`` (BoolTensor B x N,
True = padding) and ``labels`` (LongTensor B). N is the batch's longest sequence rounded up to
``pad_to_multiple_of``.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError, DataWarning
from .processing import stratified_subsample
from .sources import ProcessedData, SourceOptions, TokenizedSplit, get_source, load_processed
from .tokenizer import PAD_ID, TOKENIZERS

log = logging.getLogger(__name__)


def _shrink(sizes: list[int], limit: int) -> list[int]:
    """Scale split sizes to about ``limit`` in total, keeping every non-empty split non-empty."""
    total = sum(sizes)
    return [max(1, round(limit * n / total)) if n else 0 for n in sizes]


class TokenizedDataset(Dataset):
    """Map-style dataset over a :class:`TokenizedSplit`; items are ``(ids, label)``."""

    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        s = self.split
        return s.ids[s.offsets[i] : s.offsets[i + 1]], int(s.labels[i])


class PadCollate:
    """Pad ``(ids, label)`` items to the longest in the batch, rounded up to a multiple."""

    def __init__(self, pad_id: int = PAD_ID, pad_to_multiple_of: int = 1) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _ in items)
        n = math.ceil(longest / self.multiple) * self.multiple
        input_ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        padding_mask = torch.ones((len(items), n), dtype=torch.bool)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
            padding_mask[row, : len(ids)] = False
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"input_ids": input_ids, "padding_mask": padding_mask, "labels": labels}


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
        path, val_path, test_path, text_column, label_column: ``files`` inputs.
        num_classes: declared number of classes (``files``/hub): labels must lie in 0..K-1.
        hub_id: override the hub id (or local path) of a hub data set.
        listops_*: ListOps generation (LRA used lengths 500-2000 and 96k/2k/2k examples).
        cache_dir: processed-data cache; default ``$ATTENTION_ARENA_CACHE`` or
            ``~/.cache/attention_arena``.

    ``num_classes``, ``vocab_size``, ``pad_id`` and ``class_names`` are available right after
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
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        num_classes: int | None = None,
        hub_id: str | None = None,
        listops_min_length: int = 100,
        listops_max_length: int = 500,
        listops_num_train: int = 5_000,
        listops_num_val: int = 500,
        listops_num_test: int = 500,
        listops_seed: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        get_source(name)  # fail early on an unknown name (the source itself is looked up
        # when needed: it holds lambdas, and the module must pickle for ddp_spawn)
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
        if num_classes is not None and num_classes < 2:
            raise DataError(f"data.num_classes must be >= 2 or null, got {num_classes}.")
        if max_length % pad_to_multiple_of:
            warnings.warn(
                f"data.max_length={max_length} is not a multiple of data.pad_to_multiple_of="
                f"{pad_to_multiple_of}: the longest batches will be padded past max_length.",
                DataWarning,
                stacklevel=2,
            )
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.pad_to_multiple_of = pad_to_multiple_of
        self.limit_examples = limit_examples
        counts = [listops_num_train, listops_num_val, listops_num_test]
        self._limit_in_source = name == "listops" and limit_examples is not None
        if self._limit_in_source and limit_examples < sum(counts):
            # Generate only what is kept instead of subsampling a large generated set.
            counts = _shrink(counts, limit_examples)
        self.options = SourceOptions(
            path=None if path is None else str(path),
            val_path=None if val_path is None else str(val_path),
            test_path=None if test_path is None else str(test_path),
            text_column=text_column,
            label_column=label_column,
            num_classes=num_classes,
            hub_id=hub_id,
            listops_min_length=listops_min_length,
            listops_max_length=listops_max_length,
            listops_num_train=counts[0],
            listops_num_val=counts[1],
            listops_num_test=counts[2],
            listops_seed=listops_seed,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
        self.tokenizer = TOKENIZERS[get_source(self.name).tokenizer]()
        self.pad_id = PAD_ID
        self.vocab_size = self.tokenizer.vocab_size
        self.data: ProcessedData | None = None
        self._prepared: ProcessedData | None = None
        self.datasets: dict[str, TokenizedDataset] = {}
        self.splits: dict[str, TokenizedSplit] = {}

    def _load(self) -> ProcessedData:
        return load_processed(
            self.name,
            self.options,
            self.max_length,
            self.seed,
            self.val_fraction,
            self.test_fraction,
        )

    def prepare_data(self) -> None:
        """Build the cache file if needed (Lightning runs this on one process per node)."""
        if self.data is None and self._prepared is None:
            self._prepared = self._load()  # kept for setup() in this process

    def setup(self, stage: str | None = None) -> None:
        """Load the processed splits (once; later calls return at once)."""
        if self.data is not None:
            return
        data, self._prepared = self._prepared or self._load(), None
        splits = dict(data.splits)
        self._kept = {name: None for name in splits}  # indices kept by limit_examples
        total = sum(len(s) for s in splits.values())
        limit = self.limit_examples
        if limit is not None and limit < total and not self._limit_in_source:
            sizes = _shrink([len(s) for s in splits.values()], limit)
            for (name, split), k in zip(list(splits.items()), sizes, strict=True):
                self._kept[name] = stratified_subsample(split.labels.tolist(), k, self.seed)
                splits[name] = split.subset(self._kept[name])
        self.data = data
        self.splits = splits
        self.datasets = {name: TokenizedDataset(split) for name, split in splits.items()}
        log.info(
            "data=%s: %s examples (train/val/test), %d classes, vocab %d",
            self.name,
            "/".join(str(len(s)) for s in splits.values()),
            self.num_classes,
            self.vocab_size,
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (loads the data on first use)."""
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (loads the data on first use)."""
        self.setup()
        assert self.data is not None
        return list(self.data.class_names)

    @property
    def split_sizes(self) -> dict[str, int]:
        """Examples per split after ``limit_examples``."""
        self.setup()
        return {name: len(ds) for name, ds in self.datasets.items()}

    def example_ids(self, split: str) -> list[str]:
        """A stable id per example of ``split`` in loader order: SHA-1 of its text, 16 hex chars."""
        self.setup()
        return [f"{h:016x}" for h in self.splits[split].hashes.tolist()]

    def split_texts(self, split: str) -> tuple[list[str], list[int]]:
        """Full (untruncated) texts and labels of ``split``, the same examples in loader order."""
        self.setup()
        # interim: texts are re-read from the source (the data branch stores them in the cache)
        from .sources import load_text_splits

        splits, _, _ = load_text_splits(
            self.name, self.options, self.seed, self.val_fraction, self.test_fraction
        )
        texts, labels = splits[split]
        kept = self._kept[split]
        if kept is not None:
            texts, labels = [texts[i] for i in kept], [labels[i] for i in kept]
        return list(texts), list(labels)

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
            collate_fn=PadCollate(self.pad_id, self.pad_to_multiple_of),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def describe(self) -> dict[str, Any]:
        """A small summary for logging: name, sizes, classes, vocabulary."""
        return {
            "name": self.name,
            "split_sizes": self.split_sizes,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
        }
