"""Source-independent steps: decoding, label encoding, de-duplication and stratified splits.

Every function here is deterministic: order comes from text hashes and explicit seeds, never from
the file system or ``hash()``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataError, DataWarning

SPLITS = ("train", "val", "test")


@dataclass
class RawData:
    """Texts and integer labels per split, as a source delivers them.

    ``splits`` always has ``"train"``; a missing ``"val"`` or ``"test"`` is carved from train.
    """

    splits: dict[str, tuple[list[str], list[int]]]
    class_names: list[str]
    notes: list[str] = field(default_factory=list)


def text_hash(text: str) -> bytes:
    """A stable 20-byte key of a text (SHA-1 of its UTF-8 bytes)."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).digest()


def decode_texts(values: Sequence[bytes], where: str) -> list[str]:
    """Decode UTF-8 bytes with ``errors="replace"``; warn once with the count of bad documents."""
    texts, bad = [], 0
    for raw in values:
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(raw.decode("utf-8", errors="replace"))
            bad += 1
    warn_bad_utf8(bad, len(values), where)
    return texts


def warn_bad_utf8(bad: int, total: int, where: str) -> None:
    """Warn that ``bad`` of ``total`` documents held bytes that are not valid UTF-8."""
    if bad:
        warnings.warn(
            f"{where}: {bad} of {total} documents contain bytes that are not valid UTF-8; "
            "they were decoded with errors='replace' (U+FFFD).",
            DataWarning,
            stacklevel=2,
        )


def _rows(indices: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return f"rows {shown}{', ...' if len(indices) > limit else ''}"


def check_texts(values: Sequence[Any], where: str, column: str) -> list[str]:
    """Return the texts of ``column``; bytes are decoded, empty or missing texts are an error."""
    texts: list[str] = []
    bad = 0
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value = value.decode("utf-8", errors="replace")
                bad += 1
        elif value is not None and not isinstance(value, str):
            raise DataError(
                f"{where}: column {column!r} must hold text, but row {i} holds "
                f"{type(value).__name__} {value!r}; fix: set data.text_column to the text column."
            )
        texts.append(value)
    warn_bad_utf8(bad, len(values), where)
    empty = [i for i, t in enumerate(texts) if t is None or not t.strip()]
    if empty:
        raise DataError(
            f"{where}: {len(empty)} of {len(texts)} rows have an empty text in column {column!r} "
            f"({_rows(empty)}, counted from 0 after the header); fix: drop those rows or fill them."
        )
    return texts


def _label_kind(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "int" if float(value).is_integer() else "float"
    if isinstance(value, str):
        if not value.strip():
            return "missing"
        return "int" if _int_like(value) else "str"
    return type(value).__name__


def _int_like(value: str) -> bool:
    try:
        int(value.strip())
    except ValueError:
        return False
    return True


def encode_labels(
    columns: dict[str, tuple[Sequence[Any], str]], num_classes: int | None, column: str
) -> tuple[dict[str, list[int]], list[str]]:
    """Map raw labels of several splits to ``0..K-1`` with one shared vocabulary.

    ``columns`` maps a split to ``(raw labels, where)`` (``where`` names the file in messages).
    Integer labels must lie in ``[0, num_classes)`` (``num_classes`` defaults to max + 1) and are
    named ``"0"``, ``"1"``, ...; string labels map to their sorted names; booleans to
    ``false``/``true``. Missing, fractional or mixed-type labels are a :class:`DataError`.
    """
    kinds: dict[str, str] = {}  # kind -> first file holding it
    for values, where in columns.values():
        split_kinds: dict[str, list[int]] = {}
        for i, value in enumerate(values):
            split_kinds.setdefault(_label_kind(value), []).append(i)
        if "missing" in split_kinds:
            rows = split_kinds["missing"]
            raise DataError(
                f"{where}: {len(rows)} rows have no label in column {column!r} ({_rows(rows)}); "
                "fix: drop those rows or fill in their labels."
            )
        for kind, rows in split_kinds.items():
            if kind not in ("int", "str", "bool"):
                raise DataError(
                    f"{where}: labels in column {column!r} must be integers or strings, but row "
                    f"{rows[0]} holds {values[rows[0]]!r} ({kind}); fix: use class ids 0..K-1 "
                    "or class names."
                )
        if len(split_kinds) > 1:
            found = ", ".join(
                f"{len(rows)} {kind} (e.g. row {rows[0]}: {values[rows[0]]!r})"
                for kind, rows in sorted(split_kinds.items())
            )
            raise DataError(
                f"{where}: labels in column {column!r} mix types: {found}; "
                "fix: use only class ids (0..K-1) or only class names."
            )
        for kind in split_kinds:
            kinds.setdefault(kind, where)
    if len(kinds) > 1:
        found = ", ".join(f"{kind} in {where}" for kind, where in kinds.items())
        raise DataError(
            f"labels in column {column!r} mix types across files: {found}; "
            "fix: use only class ids (0..K-1) or only class names in every file."
        )
    kind = next(iter(kinds), "int")
    out: dict[str, list[int]] = {}
    if kind == "str":
        names = sorted({str(v).strip() for values, _ in columns.values() for v in values})
        if num_classes is not None and num_classes != len(names):
            raise DataError(
                f"found {len(names)} class names {names[:10]} in column {column!r} but "
                f"num_classes={num_classes}; fix: set data.num_classes={len(names)} or null."
            )
        index = {name: i for i, name in enumerate(names)}
        for split, (values, _) in columns.items():
            out[split] = [index[str(v).strip()] for v in values]
        return out, names
    if kind == "bool":
        names = ["false", "true"]
        for split, (values, _) in columns.items():
            out[split] = [int(bool(v)) for v in values]
        return out, names
    for split, (values, _) in columns.items():
        out[split] = [int(str(v).strip()) if isinstance(v, str) else int(v) for v in values]
    top = max((max(v, default=0) for v in out.values()), default=0)
    k = num_classes if num_classes is not None else top + 1
    for split, (_, where) in columns.items():
        bad = [i for i, y in enumerate(out[split]) if not 0 <= y < k]
        if bad:
            found = sorted({out[split][i] for i in bad})[:10]
            limit = f"num_classes={num_classes}" if num_classes is not None else "labels >= 0"
            raise DataError(
                f"{where}: {len(bad)} labels in column {column!r} are outside 0..{k - 1} "
                f"({limit}): values {found} at {_rows(bad)}; fix: map labels to 0..K-1"
                + (" or raise data.num_classes." if num_classes is not None else ".")
            )
    return out, [str(i) for i in range(k)]


def dedup_key(text: str) -> bytes:
    """Key under which texts count as copies: case folded, whitespace runs collapsed to a space."""
    return text_hash(" ".join(text.casefold().split()))


def deduplicate(raw: RawData, where: str, warn: bool = True) -> RawData:
    """Drop repeated texts: first copy wins, in the order test > val > train.

    Texts are compared after case folding and collapsing whitespace (:func:`dedup_key`), so
    copies that differ only in case or spacing are merged too; stored texts are stripped. Warns
    with the counts when ``warn`` is set, otherwise adds a note to ``raw.notes``.
    """
    seen: dict[bytes, tuple[int, bytes]] = {}  # dedup key -> (label, hash of the kept text)
    exact = near = conflicts = 0
    out: dict[str, tuple[list[str], list[int]]] = {}
    for split in ("test", "val", "train"):
        if split not in raw.splits:
            continue
        texts, labels = raw.splits[split]
        keep_t, keep_l = [], []
        for text, label in zip(texts, labels, strict=True):
            text = text.strip()
            key, exact_key = dedup_key(text), text_hash(text)
            if key in seen:
                kept_label, kept_hash = seen[key]
                exact += kept_hash == exact_key
                near += kept_hash != exact_key
                conflicts += kept_label != label
                continue
            seen[key] = (label, exact_key)
            keep_t.append(text)
            keep_l.append(label)
        out[split] = (keep_t, keep_l)
    result = RawData({s: out[s] for s in SPLITS if s in out}, raw.class_names, list(raw.notes))
    if exact or near:
        msg = (
            f"{where}: dropped {exact + near} duplicate documents ({exact} exact copies after "
            f"stripping, {near} differing only in case or whitespace; one copy kept, test > val "
            f"> train), {len(seen)} unique remain"
        )
        msg += f"; {conflicts} of the copies had a different label." if conflicts else "."
        if warn:
            warnings.warn(msg, DataWarning, stacklevel=2)
        else:
            result.notes.append(msg)
    return result


def _by_class(keys: Sequence[bytes], labels: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(keys)), key=keys.__getitem__):
        groups.setdefault(labels[i], []).append(i)
    return dict(sorted(groups.items()))


def stratified_split(
    texts: Sequence[str], labels: Sequence[int], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Split indices into ``train`` plus the named parts, stratified by label.

    Each class's examples are ordered by text hash, shuffled by ``numpy.random.default_rng(seed)``
    and cut by ``fractions`` (shares of this input). Results depend only on the texts, labels,
    fractions and seed, not on input order or machine.
    """
    rng = np.random.default_rng(seed)
    keys = [text_hash(t) for t in texts]
    parts: dict[str, list[int]] = {name: [] for name in ("train", *fractions)}
    for _, members in _by_class(keys, labels).items():
        members = [members[j] for j in rng.permutation(len(members))]
        start = 0
        left = len(members)
        for name, frac in fractions.items():
            take = min(int(math.floor(len(members) * frac + 0.5)), max(left - 1, 0))
            parts[name].extend(members[start : start + take])
            start += take
            left -= take
        parts["train"].extend(members[start:])
    return {name: [idx[j] for j in rng.permutation(len(idx))] for name, idx in parts.items()}


def stratified_subsample(labels: Sequence[int], k: int, seed: int) -> list[int]:
    """Pick ``k`` indices with class proportions kept (largest remainder), in input order."""
    n = len(labels)
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        groups.setdefault(y, []).append(i)
    exact = {c: k * len(m) / n for c, m in sorted(groups.items())}
    quota = {c: int(v) for c, v in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))
    for c in by_remainder[: k - sum(quota.values())]:
        quota[c] += 1
    keep: list[int] = []
    for c, members in sorted(groups.items()):
        keep.extend(members[j] for j in rng.permutation(len(members))[: quota[c]])
    return sorted(keep)


def finalize_splits(
    raw: RawData, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[list[str], list[int]]]:
    """Carve missing ``val``/``test`` splits from train (fractions of the train split given)."""
    train_t, train_l = raw.splits["train"]
    wanted = {
        name: frac
        for name, frac in (("test", test_fraction), ("val", val_fraction))
        if name not in raw.splits
    }
    parts = stratified_split(train_t, train_l, wanted, seed) if wanted else None
    out = {}
    for name in SPLITS:
        if name in raw.splits and not (name == "train" and parts):
            out[name] = raw.splits[name]
        else:
            idx = parts[name]
            out[name] = ([train_t[i] for i in idx], [train_l[i] for i in idx])
        if not out[name][0] and name != "train":  # a train split is never empty here
            frac = wanted.get(name)
            fix = ("add examples to it" if frac is None else
                   f"set data.{name}_fraction > 0 (default 0.1)" if frac == 0 else
                   f"raise data.{name}_fraction (now {frac}; it rounds to no example of any "
                   f"class) or add examples")
            consequence = ("no checkpoint is picked on val, the final weights are tested"
                           if name == "val" else "a run has nothing to be tested on")
            warnings.warn(f"the {name} split is empty ({len(train_t)} training examples to carve "
                          f"it from): {consequence}; fix: {fix}.", DataWarning, stacklevel=2)
    return out


def shrink_sizes(sizes: Sequence[int], limit: int) -> list[int]:
    """Split sizes scaled to ``limit`` in total (largest remainder; ties go to smaller splits).

    Every non-empty split keeps at least one example; sizes already within ``limit`` are kept.
    """
    total = sum(sizes)
    if total <= limit:
        return list(sizes)
    # integer arithmetic: the share of split i is limit * n_i / total exactly
    out = [max(1, limit * n // total) if n else 0 for n in sizes]
    while sum(out) > limit:  # only when the minimum of one pushed the total over
        out[out.index(max(out))] -= 1
    behind = [limit * n - out[i] * total for i, n in enumerate(sizes)]  # remainder x total
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-behind[i], sizes[i]))
    for i in by_remainder[: limit - sum(out)]:
        out[i] += 1
    return out


def limit_splits(
    splits: dict[str, tuple[list[str], list[int]]], limit: int | None, seed: int
) -> dict[str, tuple[list[str], list[int]]]:
    """Keep about ``limit`` examples in total: each split shrunk in proportion, classes stratified.

    Kept examples stay in their input order; ``limit=None`` keeps everything.
    """
    if limit is None:
        return splits
    sizes = shrink_sizes([len(labels) for _, labels in splits.values()], limit)
    out = {}
    for (name, (texts, labels)), k in zip(splits.items(), sizes, strict=True):
        idx = stratified_subsample(labels, k, seed)
        out[name] = ([texts[i] for i in idx], [labels[i] for i in idx])
    return out


def check_train_covers_classes(
    splits: dict[str, tuple[list[str], list[int]]],
    class_names: Sequence[str],
    where: str,
    strict: bool = True,
) -> None:
    """Name every class that has val/test examples but no training one: a :class:`DataError`, or
    a :class:`DataWarning` when not ``strict`` (a sample of a generated or limited data set)."""
    in_train = set(splits["train"][1])
    orphans: dict[int, int] = {}
    for split in ("val", "test"):
        for y in splits.get(split, ([], []))[1]:
            if y not in in_train:
                orphans[y] = orphans.get(y, 0) + 1
    if not orphans:
        return
    found = ", ".join(
        f"{class_names[c]!r} ({n} example{'s' if n > 1 else ''})"
        for c, n in sorted(orphans.items())
    )
    msg = f"{where}: class(es) {found} occur in val/test but not in the training split, so the " \
        "model never sees them"
    if strict:
        raise DataError(
            f"{msg}; fix: add training examples of these classes, or drop their val/test rows."
        )
    warnings.warn(
        f"{msg} (a small sample; fix: raise data.limit_examples or the number of examples).",
        DataWarning,
        stacklevel=2,
    )
