"""The registry of data sources: one class per data set, owning its options.

A source is a dataclass whose fields are its ``data.*`` config keys (``files``: ``path``,
``text_column``, ...). It loads raw texts and labels (:meth:`Source.load`) and says what
identifies their content (:meth:`Source.fingerprint`); splitting, de-duplication, tokenizing and
caching are the same for every source (:mod:`.pipeline`). Register a new one with
``@register_source("name")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import DataError
from .processing import RawData


class Source:
    """Base class of data sources (subclasses are dataclasses; see :func:`register_source`)."""

    name: ClassVar[str] = ""
    tokenizers: ClassVar[tuple[str, ...]] = ("bpe", "bytes")
    """Tokenizers this source supports; the first is its default."""
    warn_duplicates: ClassVar[bool] = True
    """Warn about merged duplicates (else only log a note: for corpora known to hold some)."""
    generated: ClassVar[bool] = False
    """Synthetic data: a class missing from a small training sample is a warning, not an error."""

    def load(self, seed: int, limit: int | None, cache_dir: Path) -> RawData:
        """Raw texts and labels. ``limit`` is a hint for generated sources (make only that many)."""
        raise NotImplementedError

    def fingerprint(self, seed: int) -> Any:
        """JSON-serialisable value that changes whenever :meth:`load` would return other data."""
        raise NotImplementedError

    def describe(self) -> str:
        """How messages name this source, e.g. ``data=files (train.csv)``."""
        return f"data={self.name}"

    def options(self) -> dict[str, Any]:
        """This source's options as configured."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def check_num_classes(num_classes: int | None) -> None:
    """``data.num_classes`` is null or at least 2."""
    if num_classes is not None and num_classes < 2:
        raise DataError(f"data.num_classes must be >= 2 or null, got {num_classes}.")


S = TypeVar("S", bound=type[Source])
SOURCES: dict[str, type[Source]] = {}


def register_source(name: str) -> Callable[[S], S]:
    """Class decorator: register a :class:`Source` dataclass under ``data.name=<name>``."""

    def wrap(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Source)):
            raise TypeError(f"{cls!r} must subclass Source")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass (its fields are its options)")
        cls.name = name
        SOURCES[name] = cls
        return cls

    return wrap


def available_datasets() -> list[str]:
    """Names accepted as ``data.name``."""
    return sorted(SOURCES)


def get_source(name: str) -> type[Source]:
    """The source class registered as ``name``, or a :class:`DataError` listing the valid ones."""
    if name not in SOURCES:
        raise DataError(
            f"unknown data set {name!r}; valid names: {', '.join(available_datasets())}; "
            "fix: set data.name (or data=...) to one of them."
        )
    return SOURCES[name]


def make_source(name: str, options: Mapping[str, Any] | None = None) -> Source:
    """An instance of source ``name`` with ``options``; an unknown option names the valid ones."""
    cls = get_source(name)
    options = dict(options or {})
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        owners = sorted(
            n for n, c in SOURCES.items() if set(unknown) <= {f.name for f in dataclasses.fields(c)}
        )
        hint = f" (option(s) of data={'/'.join(owners)})" if owners else ""
        raise DataError(
            f"data={name} has no option {', '.join(map(repr, unknown))}{hint}; its options: "
            f"{', '.join(valid) or '(none)'}; fix: remove {', '.join('data.' + k for k in unknown)}"
            " or pick the data set it belongs to."
        )
    return cls(**options)
