"""The processed-data cache: where it lives, content fingerprints, atomic save and load.

A leaf module (it imports nothing else from the data layer but its errors), so that every source
can fingerprint its inputs without import cycles.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

CACHE_VERSION = 2
"""Bump when processing changes so that old cache files are not reused (2: normalised
de-duplication, tokenizer choice, texts and untruncated lengths stored)."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$ATTENTION_ARENA_CACHE``, else ``~/.cache/attention_arena``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ATTENTION_ARENA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attention_arena"


def digest(payload: Any) -> str:
    """SHA-256 hex digest of a JSON-serialisable ``payload`` (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _hash_files(files: Iterable[Path], root: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def content_fingerprint(path: str | os.PathLike[str]) -> list[Any]:
    """``[resolved path, bytes, content hash]`` of a file, or of every file under a directory.

    Hidden entries (``.git``, ``.cache``) are skipped; the hash covers names and contents, so
    editing, adding, removing or renaming a file changes it.
    """
    p = Path(path).expanduser()
    if p.is_file():
        files, root = [p], p.parent
    elif p.is_dir():
        root = p
        files = sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
    else:
        raise DataError(f"{p} does not exist; fix: check the path.")
    return [str(p.resolve()), sum(f.stat().st_size for f in files), _hash_files(files, root)]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Store named arrays and a JSON ``meta`` dict in one ``.npz``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and ``meta`` written by :func:`save_arrays` (raises on a damaged file)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return arrays, meta
