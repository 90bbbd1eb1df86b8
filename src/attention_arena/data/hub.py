"""Data sets from the Hugging Face hub (``imdb``, ``hyperpartisan``, ``arxiv``) or a local copy.

The cache key holds the hub commit the data resolves to (``data.revision`` when it is a commit
hash, else asked from the hub, else the ref in the local Hugging Face cache) or, for a local copy
(``data.hub_id=<path>``), a hash of its files' content.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .cache import content_fingerprint
from .errors import DataError
from .processing import RawData, check_texts, encode_labels
from .sources import Source, check_num_classes, register_source


@dataclass(frozen=True)
class HubSpec:
    """Where a hub data set lives and which of its columns and splits we use."""

    hub_id: str
    config: str | None
    text_column: str
    label_column: str
    splits: dict[str, str]  # our split -> hub split
    note: str = ""



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


def hub_revision(hub_id: str, revision: str | None) -> str | None:
    """The commit hash ``revision`` (default branch if None) of a hub data set resolves to.

    A 40-hex ``revision`` is returned as is; otherwise the hub is asked (unless offline), then the
    local Hugging Face cache's ref; ``None`` when neither knows.
    """
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import HfApi, constants

    ref = revision or "main"
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in (
        "1", "ON", "YES", "TRUE"
    )
    if not offline:
        try:
            return HfApi().dataset_info(hub_id, revision=ref, timeout=5).sha
        except Exception:  # noqa: BLE001 - unreachable or unknown: fall back to the local cache
            pass
    cached = Path(constants.HF_HUB_CACHE) / f"datasets--{hub_id.replace('/', '--')}" / "refs" / ref
    return cached.read_text().strip() if cached.is_file() else None


def _load_hub_dataset(
    name: str, hub_id: str, config: str | None, revision: str | None, local_cache: Path | None
) -> Any:
    import datasets

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if local_cache is not None:  # a local copy: our key is its content, so never reuse HF's build
        kwargs = {"cache_dir": str(local_cache), "download_mode": "force_redownload"}
    try:
        return datasets.load_dataset(hub_id, config, **kwargs)
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


def load_hub(
    name: str,
    spec: HubSpec,
    hub_id: str,
    revision: str | None = None,
    num_classes: int | None = None,
    local_cache: Path | None = None,
) -> RawData:
    """Load hub data set ``name`` described by ``spec`` from ``hub_id`` (a hub id or local copy).

    ``local_cache`` (for local copies) is where ``datasets`` may build, always afresh. Labels use
    the hub's class names when the column is a ``ClassLabel``.
    """
    dsets = _load_hub_dataset(name, hub_id, spec.config, revision, local_cache)
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
    return RawData({s: (texts[s], encoded[s]) for s in texts}, class_names or names)


@dataclass(frozen=True)
class HubSource(Source):
    """A hub data set. ``hub_id``: another hub id or a local copy (a directory or file) instead
    of the default; ``revision``: a hub branch, tag or commit; ``num_classes``: declared classes.
    """

    hub_id: str | None = None
    revision: str | None = None
    num_classes: int | None = None

    spec: ClassVar[HubSpec]

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)

    def _id(self) -> str:
        return str(self.hub_id or self.spec.hub_id)

    def _local(self) -> Path | None:
        path = Path(self._id()).expanduser()
        return path if path.exists() else None

    def load(self, seed: int, limit: int | None, cache_dir: Path) -> RawData:
        local = self._local()
        revision = None if local else (hub_revision(self._id(), self.revision) or self.revision)
        return load_hub(
            self.name,
            self.spec,
            self._id(),
            revision,
            self.num_classes,
            local_cache=cache_dir / "hf_datasets" if local else None,
        )

    def fingerprint(self, seed: int) -> Any:
        local = self._local()
        where = (
            {"local": content_fingerprint(local)}
            if local
            else {"hub_id": self._id(), "revision": hub_revision(self._id(), self.revision)}
        )
        return {**where, "config": self.spec.config, "num_classes": self.num_classes}


@register_source("imdb")
@dataclass(frozen=True)
class IMDB(HubSource):
    """LRA Text's data: IMDB reviews (25k train / 25k test; 'unsupervised' has no labels)."""

    spec = HubSpec("stanfordnlp/imdb", None, "text", "label", {"train": "train", "test": "test"})


@register_source("hyperpartisan")
@dataclass(frozen=True)
class Hyperpartisan(HubSource):
    """SemEval-2019 Task 4, 'byarticle' part: 645 crowd-labelled articles, one split."""

    spec = HubSpec(
        "SemEvalWorkshop/hyperpartisan_news_detection",
        "byarticle",
        "text",
        "hyperpartisan",
        {"train": "train"},
        note="its text is HTML-like markup",
    )


@register_source("arxiv")
@dataclass(frozen=True)
class Arxiv(HubSource):
    """Long arXiv papers, 11 subject classes, with train/validation/test splits."""

    spec = HubSpec(
        "ccdv/arxiv-classification",
        None,
        "text",
        "label",
        {"train": "train", "val": "validation", "test": "test"},
    )


HUB_DATASETS: dict[str, HubSpec] = {c.name: c.spec for c in (IMDB, Hyperpartisan, Arxiv)}
