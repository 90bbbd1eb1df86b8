"""Registry of data sets and the cached path from a source to tokenized splits.

``load_processed`` is the single entry point: it fingerprints the source and the preprocessing
parameters, returns the cached ``.npz`` when one matches, and otherwise loads, de-duplicates,
splits and tokenizes the data and writes the cache atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bbc_news import bbc_news_fingerprint, load_bbc_news
from .errors import DataError, DataWarning
from .hub import HUB_DATASETS, load_files, load_hub
from .listops import generate_listops
from .processing import SPLITS, RawData, finalize_splits, text_hash
from .tokenizer import TOKENIZERS

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when processing changes so that old cache files are not reused."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$ATTENTION_ARENA_CACHE``, else ``~/.cache/attention_arena``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ATTENTION_ARENA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attention_arena"


@dataclass
class SourceOptions:
    """Source-specific settings (the ``data`` config keys other than batching and splitting)."""

    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    num_classes: int | None = None
    hub_id: str | None = None
    listops_min_length: int = 100
    listops_max_length: int = 500
    listops_num_train: int = 5_000
    listops_num_val: int = 500
    listops_num_test: int = 500
    listops_seed: int | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class Source:
    """How to load one data set (``load``) and what identifies its content (``fingerprint``)."""

    tokenizer: str
    load: Callable[[SourceOptions, int], RawData]
    fingerprint: Callable[[SourceOptions, int], Any]


def _file_fingerprint(path: str | None) -> Any:
    if path is None:
        return None
    from .hub import check_file

    p = check_file(path)
    digest = hashlib.blake2b(digest_size=16)
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return [str(p.resolve()), p.stat().st_size, digest.hexdigest()]


def _files_fingerprint(o: SourceOptions, seed: int) -> Any:
    if o.path is None:
        raise DataError(
            "data=files needs a file: set data.path=<train .csv/.tsv/.json/.jsonl/.parquet> "
            "(and optionally data.val_path / data.test_path)."
        )
    return {
        "files": [_file_fingerprint(p) for p in (o.path, o.val_path, o.test_path)],
        "columns": [o.text_column, o.label_column],
        "num_classes": o.num_classes,
    }


def _listops_args(o: SourceOptions, seed: int) -> dict[str, Any]:
    return {
        "num_train": o.listops_num_train,
        "num_val": o.listops_num_val,
        "num_test": o.listops_num_test,
        "min_length": o.listops_min_length,
        "max_length": o.listops_max_length,
        "seed": seed if o.listops_seed is None else o.listops_seed,
    }


def _hub_source(name: str) -> Source:
    spec = HUB_DATASETS[name]
    return Source(
        "bytes",
        lambda o, seed: load_hub(name, o.hub_id, o.num_classes),
        lambda o, seed: [o.hub_id or spec.hub_id, spec.config, o.num_classes],
    )


SOURCES: dict[str, Source] = {
    "bbc_news": Source(
        "bytes", lambda o, seed: load_bbc_news(), lambda o, s: bbc_news_fingerprint()
    ),
    "listops": Source(
        "listops", lambda o, seed: generate_listops(**_listops_args(o, seed)), _listops_args
    ),
    "files": Source(
        "bytes",
        lambda o, seed: load_files(
            o.path,
            o.val_path,
            o.test_path,
            o.text_column,
            o.label_column,
            o.num_classes,
            cache_root(o.cache_dir),
        ),
        _files_fingerprint,
    ),
    **{name: _hub_source(name) for name in HUB_DATASETS},
}


def available_datasets() -> list[str]:
    """Names accepted as ``data.name``."""
    return sorted(SOURCES)


def get_source(name: str) -> Source:
    """The registered source ``name``, or a :class:`DataError` listing the valid names."""
    if name not in SOURCES:
        raise DataError(
            f"unknown data set {name!r}; valid names: {', '.join(available_datasets())}; "
            "fix: set data.name (or data=...) to one of them."
        )
    return SOURCES[name]


def load_text_splits(
    name: str, options: SourceOptions, seed: int, val_fraction: float, test_fraction: float
) -> tuple[dict[str, tuple[list[str], list[int]]], list[str], list[str]]:
    """De-duplicated, split texts and labels: ``(splits, class_names, notes)``; not cached."""
    raw = get_source(name).load(options, seed)
    return finalize_splits(raw, val_fraction, test_fraction, seed), raw.class_names, raw.notes


@dataclass
class TokenizedSplit:
    """One split as a flat id array with offsets: example ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    ``hashes`` holds the first 8 bytes of each source text's SHA-1 (to check split overlap).
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        """Token count of each example (CLS included)."""
        return np.diff(self.offsets)

    def subset(self, indices: list[int] | np.ndarray) -> TokenizedSplit:
        """A copy holding only ``indices``, in the given order."""
        idx = np.asarray(indices, dtype=np.int64)
        parts = [self.ids[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        ids = np.concatenate(parts) if parts else self.ids[:0]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        return TokenizedSplit(ids, offsets.astype(np.int64), self.labels[idx], self.hashes[idx])


@dataclass
class ProcessedData:
    """Tokenized train/val/test splits plus what a model needs to know about them."""

    splits: dict[str, TokenizedSplit]
    class_names: list[str]
    tokenizer: str
    vocab_size: int
    warnings: list[str]
    notes: list[str]
    path: Path


def _tokenize(texts: list[str], labels: list[int], tokenizer: Any, max_length: int):
    arrays = [tokenizer.encode_array(t, max_length) for t in texts]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint16)
    hashes = np.fromiter(
        (int.from_bytes(text_hash(t)[:8], "big") for t in texts), dtype=np.uint64, count=len(texts)
    )
    split = TokenizedSplit(ids, offsets, np.asarray(labels, dtype=np.int64), hashes)
    truncated = sum(tokenizer.num_tokens(t) > max_length for t in texts)
    return split, truncated


def cache_key(
    name: str,
    options: SourceOptions,
    max_length: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> str:
    """Hex digest of the source fingerprint and every parameter that shapes the processed data."""
    source = get_source(name)
    payload = {
        "version": CACHE_VERSION,
        "name": name,
        "source": source.fingerprint(options, seed),
        "tokenizer": source.tokenizer,
        "max_length": max_length,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save(path: Path, data: ProcessedData) -> None:
    arrays: dict[str, np.ndarray] = {}
    for split, part in data.splits.items():
        for field, value in asdict(part).items():
            arrays[f"{split}.{field}"] = value
    meta = {
        k: getattr(data, k) for k in ("class_names", "tokenizer", "vocab_size", "warnings", "notes")
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> ProcessedData:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        splits = {
            s: TokenizedSplit(*(z[f"{s}.{f}"] for f in ("ids", "offsets", "labels", "hashes")))
            for s in SPLITS
        }
    return ProcessedData(splits=splits, path=path, **meta)


def _build(
    name: str,
    options: SourceOptions,
    max_length: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    path: Path,
) -> ProcessedData:
    source = get_source(name)
    tokenizer = TOKENIZERS[source.tokenizer]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits, class_names, notes = load_text_splits(
            name, options, seed, val_fraction, test_fraction
        )
        tokenized = {}
        for split, (texts, labels) in splits.items():
            tokenized[split], truncated = _tokenize(texts, labels, tokenizer, max_length)
            if truncated:
                msg = (
                    f"{name}: {truncated} of {len(texts)} {split} examples are longer than "
                    f"max_length={max_length} tokens and were truncated"
                )
                if source.tokenizer == "listops":
                    warnings.warn(
                        msg + " (their labels may no longer be computable; fix: raise "
                        "data.max_length above data.listops_max_length).",
                        DataWarning,
                        stacklevel=2,
                    )
                else:
                    notes.append(msg + ".")
    kept: list[str] = []
    for w in caught:
        if issubclass(w.category, DataWarning):
            kept.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    data = ProcessedData(
        tokenized, class_names, tokenizer.name, tokenizer.vocab_size, kept, notes, path
    )
    _save(path, data)
    return data


def load_processed(
    name: str,
    options: SourceOptions | None = None,
    max_length: int = 4096,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> ProcessedData:
    """Tokenized splits of data set ``name``, from the cache when its fingerprint matches.

    Warnings raised while building (duplicates, bad bytes) are stored and repeated on cache hits.
    """
    options = options or SourceOptions()
    key = cache_key(name, options, max_length, seed, val_fraction, test_fraction)
    path = cache_root(options.cache_dir) / f"{name}-{key[:24]}.npz"
    data = None
    if path.exists():
        try:
            data = _load(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cache file %s (%s); rebuilding", path, exc)
        else:
            log.info("loaded %s from cache %s", name, path)
            for msg in data.warnings:
                warnings.warn(msg, DataWarning, stacklevel=2)
    if data is None:
        data = _build(name, options, max_length, seed, val_fraction, test_fraction, path)
    for note in data.notes:
        log.info(note)
    return data
