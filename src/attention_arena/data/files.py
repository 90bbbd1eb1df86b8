"""The user's own data files (CSV, TSV, JSON, JSON Lines, Parquet): ``data=files``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import cache_root, content_fingerprint
from .errors import DataError, DataWarning
from .processing import RawData, check_texts, encode_labels, warn_bad_utf8
from .sources import Source, check_num_classes, register_source

FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def file_format(path: Path) -> str:
    """The ``datasets`` builder for ``path``, from its extension."""
    builder = FILE_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(none)'!r}; fix: use one of "
            f"{', '.join(FILE_FORMATS)} (rename the file if its content is one of these)."
        )
    return builder


def check_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` after checking that it is an existing, non-empty file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"data file {p} does not exist; fix: check data.path / val_path / test_path."
        )
    if not p.is_file():
        raise DataError(f"data file {p} is not a file; fix: point data.path at a file.")
    if p.stat().st_size == 0:
        raise DataError(f"data file {p} is empty (0 bytes); fix: write data to it or pick another.")
    file_format(p)
    return p


def _utf8_copy(path: Path, cache_dir: Path) -> Path:
    """``path`` if it is valid UTF-8, else a copy decoded with replacement under ``cache_dir``."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return path
    except UnicodeDecodeError:
        pass
    fixed = data.decode("utf-8", errors="replace")
    out = cache_dir / "utf8" / f"{os.getpid()}-{path.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(fixed, encoding="utf-8")
    return out


def read_table(
    path: str | os.PathLike[str], text_column: str, label_column: str, cache_dir: Path
) -> tuple[list[str], list[Any]]:
    """Texts and raw labels of one CSV/TSV/JSON(L)/Parquet file, validated."""
    import datasets

    p = check_file(path)
    builder = file_format(p)
    source = _utf8_copy(p, cache_dir) if builder in ("csv", "json") else p
    kwargs: dict[str, Any] = {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # Our own cache is keyed by content; rebuild HF's so it can never serve a stale copy.
        ds = datasets.load_dataset(
            builder,
            data_files=str(source),
            split="train",
            cache_dir=str(cache_dir / "hf_datasets"),
            download_mode="force_redownload",
            **kwargs,
        )
    except Exception as exc:
        if "corresponds to no data" in str(exc):
            raise DataError(f"{p} has a header but no rows; fix: add data rows.") from exc
        cause = exc.__cause__ or exc
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise DataError(
            f"{p} is not valid {builder.upper()} ({type(cause).__name__}: {detail}); fix: check "
            f"the file's content, or give it the extension of its real format "
            f"({', '.join(FILE_FORMATS)})."
        ) from exc
    finally:
        if source != p:
            source.unlink(missing_ok=True)
        if was_enabled:
            datasets.enable_progress_bars()
    if len(ds) == 0:
        raise DataError(f"{p} has no rows; fix: add data rows.")
    missing = [c for c in (text_column, label_column) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{p} has no column {' or '.join(map(repr, missing))}; columns present: "
            f"{ds.column_names}; fix: set data.text_column / data.label_column."
        )
    texts = check_texts(ds[text_column], str(p), text_column)
    if source != p:
        bad = sum("\ufffd" in t for t in texts)
        if bad:
            warn_bad_utf8(bad, len(texts), str(p))
        else:
            warnings.warn(
                f"{p}: bytes that are not valid UTF-8 (outside the text column) were decoded "
                "with errors='replace'.",
                DataWarning,
                stacklevel=2,
            )
    return texts, ds[label_column]


def load_files(
    path: str | os.PathLike[str],
    val_path: str | os.PathLike[str] | None = None,
    test_path: str | os.PathLike[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    num_classes: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> RawData:
    """The user's own files: ``path`` is train (or everything), optional val/test files.

    Labels are encoded with one vocabulary across the files.
    """
    root = cache_root(cache_dir)
    files = {"train": path, "val": val_path, "test": test_path}
    texts: dict[str, list[str]] = {}
    labels: dict[str, tuple[list[Any], str]] = {}
    for split, file in files.items():
        if file is not None:
            texts[split], raw_labels = read_table(file, text_column, label_column, root)
            labels[split] = (raw_labels, str(Path(file).expanduser()))
    encoded, names = encode_labels(labels, num_classes, label_column)
    return RawData({s: (texts[s], encoded[s]) for s in texts}, names)


@register_source("files")
@dataclass(frozen=True)
class Files(Source):
    """``path`` is the training file (or everything); ``val_path``/``test_path`` are optional.

    ``num_classes=None`` infers the classes from the labels. The cache key holds a hash of each
    file's content, so an edited file is always re-read.
    """

    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    num_classes: int | None = None

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)

    def _paths(self) -> tuple[str, str | None, str | None]:
        if self.path is None:
            raise DataError(
                "data=files needs a file: set data.path=<train .csv/.tsv/.json/.jsonl/.parquet> "
                "(and optionally data.val_path / data.test_path)."
            )
        return str(self.path), self.val_path, self.test_path

    def load(self, seed: int, limit: int | None, cache_dir: Path) -> RawData:
        path, val_path, test_path = self._paths()
        return load_files(
            path,
            val_path,
            test_path,
            self.text_column,
            self.label_column,
            self.num_classes,
            cache_dir,
        )

    def fingerprint(self, seed: int) -> Any:
        return {
            "files": [
                None if p is None else content_fingerprint(check_file(p)) for p in self._paths()
            ],
            "columns": [self.text_column, self.label_column],
            "num_classes": self.num_classes,
        }

    def describe(self) -> str:
        return f"data=files ({Path(self._paths()[0]).name})"
