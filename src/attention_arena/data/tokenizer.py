"""Tokenizers: UTF-8 bytes (LRA Text), byte-level BPE (Hugging Face ``tokenizers``) and ListOps.

All reserve ``PAD = 0`` and ``CLS = 1`` and put CLS first in every encoded sequence; truncation to
``max_length`` counts the CLS token. ``mask_id`` (= ``vocab_size``) is the ``[MASK]`` id of
masked-token pretraining (``attention_arena.pretrain``): it lies just past the vocabulary, so
encoded text never contains it, classifiers keep ``vocab_size`` embedding rows (their checkpoints
and seeded initialisation are unchanged) and only the pretraining model has the one extra row.

:class:`TokenizerSpec` is the ``tokenizer`` config group (``tokenizer=bytes|bpe|listops``);
:func:`save_tokenizer` / :func:`load_tokenizer` store any of them in one JSON file, so a trained
model can encode new text without its training data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .cache import write_atomic
from .errors import DataError

PAD_ID = 0
CLS_ID = 1
TOKENIZER_FILE = "tokenizer.json"


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and max_length <= 0:
        raise DataError(
            f"max_length must be a positive number of tokens, got {max_length}; "
            "fix: set data.max_length to e.g. 1024 (it counts the CLS token)."
        )


class Tokenizer:
    """Base class: subclasses map a text to its ids without CLS (:meth:`_ids`)."""

    name: ClassVar[str]
    pad_id = PAD_ID
    cls_id = CLS_ID
    vocab_size: int

    @property
    def mask_id(self) -> int:
        """The ``[MASK]`` id of masked-token pretraining: ``vocab_size``, one past the last id that
        encoded text can contain (a pretraining model has ``vocab_size + 1`` embedding rows)."""
        return self.vocab_size

    @property
    def first_regular_id(self) -> int:
        """The smallest id of an ordinary token (ids below it are PAD and CLS)."""
        return CLS_ID + 1

    def _ids(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def _with_cls(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty(len(ids) + 1, dtype=np.uint16)
        out[0] = self.cls_id
        out[1:] = ids
        return out

    def encode_array(self, text: str, max_length: int | None = None) -> np.ndarray:
        """Encode ``text`` to a uint16 array ``[CLS, ...]`` of at most ``max_length`` ids."""
        _check_max_length(max_length)
        return self._with_cls(self._ids(text))[:max_length]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Untruncated encodings (CLS first) of many texts."""
        return [self._with_cls(self._ids(t)) for t in texts]

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Encode ``text`` to a list of ids starting with CLS, truncated to ``max_length`` ids."""
        return self.encode_array(text, max_length).tolist()

    def num_tokens(self, text: str) -> int:
        """Length of the untruncated encoding (CLS included)."""
        return len(self._ids(text)) + 1

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        raise NotImplementedError

    def char_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets into ``text`` of every id of its encoding after CLS
        (pieces of one character share its span); for grouping tokens into words."""
        raise NotImplementedError(f"the {self.name} tokenizer does not report character spans")

    def to_dict(self) -> dict[str, Any]:
        """What :func:`save_tokenizer` writes (``name`` plus any trained state)."""
        return {"name": self.name}


class ByteTokenizer(Tokenizer):
    """Byte-level tokenizer: id = byte + 2, so the vocabulary has 258 ids (PAD, CLS, 256 bytes)."""

    name = "bytes"
    offset = 2
    vocab_size = 258

    def _ids(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16) + self.offset

    def num_tokens(self, text: str) -> int:
        return len(text.encode("utf-8")) + 1

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decode ids to text, skipping special ids (PAD, CLS, [MASK]); a cut multi-byte character
        becomes U+FFFD."""
        data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def char_spans(self, text: str) -> list[tuple[int, int]]:
        """One span per byte: the character the byte belongs to."""
        return [(i, i + 1) for i, ch in enumerate(text) for _ in ch.encode("utf-8")]


LISTOPS_TOKENS = ("[PAD]", "[CLS]", *map(str, range(10)), "[MIN", "[MAX", "[MED", "[SM", "]")
"""ListOps vocabulary in id order: PAD=0, CLS=1, digits 0-9 = 2..11, operators, closing bracket."""


class ListOpsTokenizer(Tokenizer):
    """Whitespace tokenizer over :data:`LISTOPS_TOKENS` (17 ids); LRA's ``(``/``)`` are ignored."""

    name = "listops"
    vocab_size = len(LISTOPS_TOKENS)
    token_to_id = {tok: i for i, tok in enumerate(LISTOPS_TOKENS)}

    def _ids(self, text: str) -> np.ndarray:
        ids = []
        for tok in text.split():
            if tok in ("(", ")"):
                continue
            try:
                ids.append(self.token_to_id[tok])
            except KeyError:
                raise DataError(
                    f"unknown ListOps token {tok!r}; valid tokens: {' '.join(LISTOPS_TOKENS[2:])}"
                ) from None
        return np.asarray(ids, dtype=np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decode ids back to a space-separated expression, skipping PAD, CLS and [MASK]."""
        return " ".join(LISTOPS_TOKENS[int(i)] for i in ids if CLS_ID < int(i) < self.vocab_size)

    def char_spans(self, text: str) -> list[tuple[int, int]]:
        import re

        return [m.span() for m in re.finditer(r"\S+", text) if m.group() not in ("(", ")")]


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) from Hugging Face ``tokenizers``; every text is encodable.

    Build one with :meth:`train`; ids 0 and 1 are the ``[PAD]`` and ``[CLS]`` special tokens.
    """

    name = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer  # a tokenizers.Tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        if (tokenizer.token_to_id("[PAD]"), tokenizer.token_to_id("[CLS]")) != (PAD_ID, CLS_ID):
            raise DataError("a BPE tokenizer must have [PAD] = 0 and [CLS] = 1; retrain it.")

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from ``texts`` (give it the training split only) up to ``vocab_size``."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["[PAD]", "[CLS]"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer, length=len(texts))
        return cls(hf)

    @classmethod
    def from_str(cls, serialized: str) -> BPETokenizer:
        """Rebuild from ``tokenizers.Tokenizer.to_str()`` output."""
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(serialized))

    def _ids(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.uint16)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self.hf.encode_batch(list(texts), add_special_tokens=False)
        return [self._with_cls(np.asarray(e.ids, dtype=np.uint16)) for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decode ids to text, skipping PAD, CLS and [MASK]."""
        return self.hf.decode([int(i) for i in ids if int(i) < self.vocab_size],
                              skip_special_tokens=True)

    def char_spans(self, text: str) -> list[tuple[int, int]]:
        """The offsets ``tokenizers`` reports (a token's leading space included)."""
        return list(self.hf.encode(text, add_special_tokens=False).offsets)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hf": json.loads(self.hf.to_str())}


@dataclass(frozen=True)
class TokenizerSpec:
    """The ``tokenizer`` config: ``name`` (bytes, bpe, listops) and, for bpe, ``vocab_size``."""

    name: str
    vocab_size: int = 8000

    NAMES: ClassVar[tuple[str, ...]] = ("bpe", "bytes", "listops")

    def __post_init__(self) -> None:
        if self.name not in self.NAMES:
            raise DataError(
                f"unknown tokenizer {self.name!r}; valid: {', '.join(self.NAMES)}; "
                "fix: tokenizer=bpe (or bytes, listops)."
            )
        if self.name == "bpe" and not 259 <= self.vocab_size <= 65536:
            raise DataError(
                f"tokenizer.vocab_size must be in 259..65536 (256 bytes + PAD + CLS + merges, "
                f"uint16 ids), got {self.vocab_size}; fix: tokenizer.vocab_size=8000."
            )

    @classmethod
    def parse(
        cls, config: str | Mapping[str, Any] | TokenizerSpec | None, default: str
    ) -> TokenizerSpec:
        """A spec from a name, a config mapping or ``None`` (then ``default``)."""
        if isinstance(config, TokenizerSpec):
            return config
        if config is None or isinstance(config, str):
            return cls(config or default)
        options = dict(config)
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise DataError(
                f"unknown tokenizer option(s) {unknown}; valid: {', '.join(valid)}; "
                "fix: remove them (e.g. tokenizer.vocab_size applies to tokenizer=bpe)."
            )
        options["name"] = options.get("name") or default
        return cls(**options)

    @property
    def trained(self) -> bool:
        """Whether this tokenizer is learned from the training split."""
        return self.name == "bpe"

    def key(self) -> dict[str, Any]:
        """What identifies this tokenizer's output (for cache keys)."""
        return {"name": self.name, **({"vocab_size": self.vocab_size} if self.trained else {})}

    def build(self, train_texts: Sequence[str] | None = None) -> Tokenizer:
        """The tokenizer; ``bpe`` is trained on ``train_texts`` (the training split only)."""
        if self.name == "bytes":
            return ByteTokenizer()
        if self.name == "listops":
            return ListOpsTokenizer()
        if train_texts is None:
            raise DataError("tokenizer=bpe needs the training texts to learn its merges.")
        return BPETokenizer.train(train_texts, self.vocab_size)


def tokenizer_to_json(tokenizer: Tokenizer) -> str:
    """The JSON text that :func:`tokenizer_from_json` reads back."""
    return json.dumps({"attention_arena_tokenizer": 1, **tokenizer.to_dict()}, sort_keys=True)


def tokenizer_from_json(text: str, where: str = "tokenizer") -> Tokenizer:
    """A tokenizer from :func:`tokenizer_to_json` output."""
    try:
        state = json.loads(text)
        name = state["name"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{where} is not an attention-arena tokenizer file ({exc}).") from exc
    if name == "bpe":
        return BPETokenizer.from_str(json.dumps(state["hf"]))
    if name in ("bytes", "listops"):
        return TokenizerSpec(name).build()
    raise DataError(f"{where}: unknown tokenizer {name!r}; valid: {', '.join(TokenizerSpec.NAMES)}")


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer`` to ``path`` (a directory gets ``tokenizer.json``); returns the file."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / TOKENIZER_FILE
    write_atomic(p, tokenizer_to_json(tokenizer).encode())
    return p


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer saved by :func:`save_tokenizer` (a file, or a run directory)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise DataError(
            f"no tokenizer file at {p}; fix: pass the run directory that holds {TOKENIZER_FILE} "
            "(written by dm.save_tokenizer)."
        )
    return tokenizer_from_json(p.read_text(encoding="utf-8"), str(p))
