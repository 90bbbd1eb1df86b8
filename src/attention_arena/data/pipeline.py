"""From a source to cached, tokenized splits: the same steps for every data set.

1. texts: ``source.load`` -> de-duplicate (case and whitespace folded) -> carve missing val/test
   -> ``limit_examples`` -> check that every val/test class has training examples (an error;
   a warning for generated or limited data, where a small sample may miss a class);
2. tokenizer: ``bytes``/``listops`` are fixed; ``bpe`` is trained on the training split only and
   saved under ``<cache>/tokenizers/``, keyed by the texts' fingerprint and the vocabulary size;
3. tokenize -> truncate to ``max_length`` -> ``<cache>/<name>-<tokenizer>-<key>.npz``, keyed by the
   texts' fingerprint, the tokenizer file's content and ``max_length``.

Steps 1-2 run only on a cache miss. Data warnings raised while building are stored and repeated
on cache hits; notes (duplicates merged, inputs identical to a training input) are logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import CACHE_VERSION, cache_root, digest, load_arrays, save_arrays, write_atomic
from .errors import DataError, DataWarning
from .processing import (
    SPLITS,
    check_train_covers_classes,
    deduplicate,
    finalize_splits,
    limit_splits,
    text_hash,
)
from .sources import Source
from .tokenizer import Tokenizer, TokenizerSpec, tokenizer_from_json, tokenizer_to_json

log = logging.getLogger(__name__)


@contextlib.contextmanager
def recording_warnings(into: list[str]) -> Iterator[None]:
    """Let warnings through as usual; append the messages of :class:`DataWarning` to ``into``."""
    recorder = warnings.catch_warnings(record=True)
    caught = recorder.__enter__()
    warnings.simplefilter("always")
    try:
        yield
    finally:  # also when the block raises: a warning before an error still reaches the user
        recorder.__exit__(None, None, None)
        for w in caught:
            if issubclass(w.category, DataWarning):
                into.append(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@dataclass
class TextSplits:
    """De-duplicated, split texts and labels, plus what happened on the way."""

    splits: dict[str, tuple[list[str], list[int]]]
    class_names: list[str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitSpec:
    """How a source's texts become splits: the seed, the shares carved off for missing val/test
    splits and ``limit`` (``data.limit_examples``: keep about this many examples in total)."""

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    limit: int | None = None


def load_text_splits(
    source: Source, split: SplitSpec = SplitSpec(), cache_dir: str | Path | None = None
) -> TextSplits:
    """Step 1 (not cached): de-duplicated train/val/test texts of ``source``, in dataset order."""
    caught: list[str] = []
    seed, limit = split.seed, split.limit
    with recording_warnings(caught):
        raw = source.load(seed, limit, cache_root(cache_dir))
        raw = deduplicate(raw, source.describe(), warn=source.warn_duplicates)
        carved = finalize_splits(raw, split.val_fraction, split.test_fraction, seed)
        splits = limit_splits(carved, limit, seed)
        strict = limit is None and not source.generated  # else a sample may just miss a class
        check_train_covers_classes(splits, raw.class_names, source.describe(), strict)
    return TextSplits(splits, raw.class_names, raw.notes, caught)


@dataclass
class TokenizedSplit:
    """One split as a flat id array with offsets: example ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    ``lengths`` are the untruncated token counts (CLS included); ``hashes`` the first 8 bytes of
    each text's SHA-1 (its id; also used to check that splits do not overlap).
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    hashes: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def example(self, i: int) -> np.ndarray:
        """The (truncated) ids of example ``i``."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def stats(self, max_length: int) -> dict[str, float]:
        """Tokens per document before truncation (mean, p90) and the share truncated."""
        n = len(self.lengths)
        lengths = self.lengths.astype(np.float64)
        return {
            "tokens_mean": float(lengths.mean()) if n else 0.0,
            "tokens_p90": float(np.percentile(lengths, 90)) if n else 0.0,
            "truncated_share": float((lengths > max_length).mean()) if n else 0.0,
            "n": n,
        }


def tokenize_split(
    texts: list[str], labels: list[int], tokenizer: Tokenizer, max_length: int
) -> TokenizedSplit:
    """Encode, truncate to ``max_length`` and pack one split."""
    full = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(a) for a in full), dtype=np.int64, count=len(full))
    kept = np.minimum(lengths, max_length)
    ids = np.concatenate([a[:max_length] for a in full]) if full else np.zeros(0, np.uint16)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    hashes = np.fromiter(
        (int.from_bytes(text_hash(t)[:8], "big") for t in texts), dtype=np.uint64, count=len(texts)
    )
    return TokenizedSplit(ids, offsets, np.asarray(labels, dtype=np.int64), hashes, lengths)


@dataclass
class ProcessedData:
    """Tokenized splits, their full texts and what a model needs to know about them."""

    splits: dict[str, TokenizedSplit]
    texts: dict[str, list[str]]
    class_names: list[str]
    tokenizer: Tokenizer
    max_length: int
    warnings: list[str]
    notes: list[str]
    path: Path

    def stats(self) -> dict[str, dict[str, float]]:
        """Per split: ``tokens_mean``, ``tokens_p90``, ``truncated_share``, ``n``."""
        return {name: s.stats(self.max_length) for name, s in self.splits.items()}


def identical_to_train_note(splits: dict[str, TokenizedSplit], max_length: int) -> str | None:
    """A note counting val/test inputs whose (truncated) ids equal a training input's, if any."""
    train = {splits["train"].example(i).tobytes() for i in range(len(splits["train"]))}
    same = {
        name: sum(splits[name].example(i).tobytes() in train for i in range(len(splits[name])))
        for name in ("val", "test")
    }
    if not any(same.values()):
        return None
    counts = " and ".join(f"{same[n]} of {len(splits[n])} {n}" for n in ("val", "test"))
    return (
        f"after truncation to max_length={max_length} tokens, {counts} inputs are identical to a "
        "training input (different documents that share their first tokens)."
    )


def _pack_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    data = [t.encode("utf-8") for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in data], dtype=np.int64)])
    return np.frombuffer(b"".join(data), dtype=np.uint8), offsets.astype(np.int64)


def _unpack_texts(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _save(data: ProcessedData) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, split in data.splits.items():
        for key in ("ids", "offsets", "labels", "hashes", "lengths"):
            arrays[f"{name}.{key}"] = getattr(split, key)
        arrays[f"{name}.text"], arrays[f"{name}.text_offsets"] = _pack_texts(data.texts[name])
    meta = {
        "class_names": data.class_names,
        "tokenizer": tokenizer_to_json(data.tokenizer),
        "max_length": data.max_length,
        "warnings": data.warnings,
        "notes": data.notes,
    }
    save_arrays(data.path, arrays, meta)


def _load(path: Path) -> ProcessedData:
    arrays, meta = load_arrays(path)
    fields = ("ids", "offsets", "labels", "hashes", "lengths")
    return ProcessedData(
        splits={s: TokenizedSplit(*(arrays[f"{s}.{f}"] for f in fields)) for s in SPLITS},
        texts={s: _unpack_texts(arrays[f"{s}.text"], arrays[f"{s}.text_offsets"]) for s in SPLITS},
        class_names=meta["class_names"],
        tokenizer=tokenizer_from_json(meta["tokenizer"], str(path)),
        max_length=meta["max_length"],
        warnings=meta["warnings"],
        notes=meta["notes"],
        path=path,
    )


def build_tokenizer(
    spec: TokenizerSpec, texts: Callable[[], TextSplits], path: Path
) -> Tokenizer:
    """Step 2: a fixed tokenizer, or BPE from ``path`` (else trained on the train texts, saved)."""
    if not spec.trained:
        return spec.build()
    if path.exists():
        try:
            return tokenizer_from_json(path.read_text(encoding="utf-8"), str(path))
        except (OSError, ValueError, DataError) as exc:
            log.warning("ignoring unreadable tokenizer %s (%s); retraining", path, exc)
    train_texts = texts().splits["train"][0]  # the training split only: never val or test
    tokenizer = spec.build(train_texts)
    write_atomic(path, tokenizer_to_json(tokenizer).encode())
    short = (
        f" of {spec.vocab_size} asked: the training text has no more merges"
        if tokenizer.vocab_size < spec.vocab_size
        else ""
    )
    log.info("trained %s (vocabulary %d%s) on %d training texts -> %s", spec.name,
             tokenizer.vocab_size, short, len(train_texts), path)
    return tokenizer


def load_processed(
    source: Source,
    tokenizer: TokenizerSpec,
    max_length: int = 4096,
    split: SplitSpec = SplitSpec(),
    cache_dir: str | Path | None = None,
) -> ProcessedData:
    """Tokenized splits of ``source``, from the cache when every fingerprint matches."""
    root = cache_root(cache_dir)
    text_key = digest(
        {
            "version": CACHE_VERSION,
            "source": source.name,
            "fingerprint": source.fingerprint(split.seed),
            "split": dataclasses.asdict(split),
        }
    )
    # loaded at most once, and only on a cache miss
    texts = functools.cache(lambda: load_text_splits(source, split, cache_dir))
    tok_key = digest({"texts": text_key, "tokenizer": tokenizer.key()})[:24]
    tok = build_tokenizer(
        tokenizer, texts, root / "tokenizers" / f"{source.name}-{tokenizer.name}-{tok_key}.json"
    )
    tok_digest = hashlib.sha256(tokenizer_to_json(tok).encode()).hexdigest()
    key = digest({"texts": text_key, "tokenizer": tok_digest, "max_length": max_length})
    path = root / f"{source.name}-{tokenizer.name}-{key[:24]}.npz"
    if path.exists():
        try:
            data = _load(path)
        except (OSError, ValueError, KeyError, DataError) as exc:
            log.warning("ignoring unreadable cache file %s (%s); rebuilding", path, exc)
        else:
            log.info("loaded %s from cache %s", source.name, path)
            for msg in data.warnings:
                warnings.warn(msg, DataWarning, stacklevel=2)
            for note in data.notes:
                log.info(note)
            return data
    data = _build(source, texts, tok, max_length, path)
    for note in data.notes:
        log.info(note)
    return data


def _build(
    source: Source,
    texts: Callable[[], TextSplits],
    tokenizer: Tokenizer,
    max_length: int,
    path: Path,
) -> ProcessedData:
    """Step 3: tokenize and truncate every split, note what changed, write the cache file."""
    ts = texts()
    caught = list(ts.warnings)
    notes = list(ts.notes)
    with recording_warnings(caught):
        splits = {
            name: tokenize_split(t, y, tokenizer, max_length) for name, (t, y) in ts.splits.items()
        }
        where = source.describe()
        if tokenizer.name == "listops":
            cut = {n: int((s.lengths > max_length).sum()) for n, s in splits.items()}
            if any(cut.values()):
                warnings.warn(
                    f"{where}: {'/'.join(map(str, cut.values()))} train/val/test expressions are "
                    f"longer than max_length={max_length} tokens and were truncated (their labels "
                    "may no longer be computable; fix: raise data.max_length above "
                    "data.listops_max_length).",
                    DataWarning,
                    stacklevel=2,
                )
        same = identical_to_train_note(splits, max_length)
        if same:
            notes.append(f"{where}: {same}")
    data = ProcessedData(
        splits,
        {name: t for name, (t, _) in ts.splits.items()},
        ts.class_names,
        tokenizer,
        max_length,
        caught,
        notes,
        path,
    )
    _save(data)
    return data

