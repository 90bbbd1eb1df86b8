"""Data sets loaded with Hugging Face ``datasets``: hub sets and the user's own files."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, DataWarning
from .processing import RawData, check_texts, deduplicate, encode_labels, warn_bad_utf8


@dataclass(frozen=True)
class HubSpec:
    """Where a hub data set lives and which of its columns and splits we use."""

    hub_id: str
    config: str | None
    text_column: str
    label_column: str
    splits: dict[str, str]  # our split -> hub split
    note: str = ""


HUB_DATASETS: dict[str, HubSpec] = {
    # LRA Text: byte-level IMDB (25k train / 25k test; the 'unsupervised' split has no labels).
    "imdb": HubSpec("stanfordnlp/imdb", None, "text", "label", {"train": "train", "test": "test"}),
    # SemEval-2019 Task 4, 'byarticle' part: 645 crowd-labelled articles, one split.
    "hyperpartisan": HubSpec(
        "SemEvalWorkshop/hyperpartisan_news_detection",
        "byarticle",
        "text",
        "hyperpartisan",
        {"train": "train"},
        note="its text is HTML-like markup",
    ),
    # Long arXiv papers, 11 subject classes, with train/validation/test splits.
    "arxiv": HubSpec(
        "ccdv/arxiv-classification",
        None,
        "text",
        "label",
        {"train": "train", "val": "validation", "test": "test"},
    ),
}

_OFFLINE_ERRORS = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "MaxRetryError",
    "NameResolutionError",
}


def _is_offline_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it was raised from) says the hub could not be reached."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _OFFLINE_ERRORS for cls in type(exc).__mro__):
            return True
        if "couldn't reach" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _load_hub_dataset(name: str, hub_id: str, config: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(hub_id, config)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        if _is_offline_error(exc):
            raise DataError(
                f"data={name} needs the Hugging Face hub, which is unreachable ({detail}). "
                f"Download it on a machine with network (datasets.load_dataset({hub_id!r}"
                f"{', ' + repr(config) if config else ''})), copy ~/.cache/huggingface here and "
                "set HF_DATASETS_OFFLINE=1, or pass data.hub_id=<local copy>, or use data=files "
                "data.path=<your .csv/.jsonl/.parquet>."
            ) from exc
        raise DataError(
            f"data={name}: loading {hub_id!r} with datasets.load_dataset failed ({detail}); "
            "fix: check data.hub_id, or export the data to a file and use data=files data.path=..."
        ) from exc


def load_hub(name: str, hub_id: str | None = None, num_classes: int | None = None) -> RawData:
    """Load hub data set ``name`` (a key of :data:`HUB_DATASETS`), optionally from ``hub_id``.

    Labels use the hub's class names when the column is a ``ClassLabel``. Texts that occur in
    more than one split keep only the copy in the later split (test > val > train), with a warning.
    """
    spec = HUB_DATASETS[name]
    hub_id = hub_id or spec.hub_id
    dsets = _load_hub_dataset(name, hub_id, spec.config)
    texts: dict[str, list[str]] = {}
    labels: dict[str, tuple[list[Any], str]] = {}
    class_names: list[str] | None = None
    for split, hub_split in spec.splits.items():
        if hub_split not in dsets:
            raise DataError(
                f"data={name}: {hub_id!r} has no split {hub_split!r} (it has {list(dsets)}); "
                "fix: check data.hub_id."
            )
        ds = dsets[hub_split]
        where = f"{hub_id}[{hub_split}]"
        missing = {spec.text_column, spec.label_column} - set(ds.column_names)
        if missing:
            raise DataError(
                f"{where} lacks column(s) {sorted(missing)}; columns present: {ds.column_names}; "
                "fix: check data.hub_id."
            )
        texts[split] = check_texts(ds[spec.text_column], where, spec.text_column)
        labels[split] = (ds[spec.label_column], where)
        feature = ds.features[spec.label_column]
        class_names = list(getattr(feature, "names", None) or []) or class_names
    encoded, names = encode_labels(
        labels, num_classes or (len(class_names or []) or None), spec.label_column
    )
    raw = RawData({s: (texts[s], encoded[s]) for s in texts}, class_names or names)
    return deduplicate(raw, f"data={name}")


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

    Labels are encoded with one vocabulary across the files; duplicate texts are dropped with a
    warning (within and across files).
    """
    from .sources import cache_root

    root = Path(cache_dir) if cache_dir is not None else cache_root()
    files = {"train": path, "val": val_path, "test": test_path}
    texts: dict[str, list[str]] = {}
    labels: dict[str, tuple[list[Any], str]] = {}
    for split, file in files.items():
        if file is not None:
            texts[split], raw_labels = read_table(file, text_column, label_column, root)
            labels[split] = (raw_labels, str(Path(file).expanduser()))
    encoded, names = encode_labels(labels, num_classes, label_column)
    raw = RawData({s: (texts[s], encoded[s]) for s in texts}, names)
    return deduplicate(raw, f"data=files ({Path(path).name})")
