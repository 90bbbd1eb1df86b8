"""Tokenizers: UTF-8 bytes (LRA Text style) and the small ListOps vocabulary.

Both reserve ``PAD = 0`` and ``CLS = 1`` and put CLS first in every encoded sequence; truncation
to ``max_length`` counts the CLS token.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

PAD_ID = 0
CLS_ID = 1


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and max_length <= 0:
        raise DataError(
            f"max_length must be a positive number of tokens, got {max_length}; "
            "fix: set data.max_length to e.g. 1024 (it counts the CLS token)."
        )


class ByteTokenizer:
    """Byte-level tokenizer: id = byte + 2, so the vocabulary has 258 ids (PAD, CLS, 256 bytes)."""

    name = "bytes"
    pad_id = PAD_ID
    cls_id = CLS_ID
    offset = 2
    vocab_size = 258

    def encode_array(self, text: str, max_length: int | None = None) -> np.ndarray:
        """Encode ``text`` to a uint16 array ``[CLS, byte + 2, ...]`` of at most ``max_length``."""
        _check_max_length(max_length)
        data = text.encode("utf-8")
        if max_length is not None:
            data = data[: max_length - 1]
        out = np.empty(len(data) + 1, dtype=np.uint16)
        out[0] = self.cls_id
        out[1:] = np.frombuffer(data, dtype=np.uint8)
        out[1:] += self.offset
        return out

    def num_tokens(self, text: str) -> int:
        """Length of the untruncated encoding (CLS included)."""
        return len(text.encode("utf-8")) + 1

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Encode ``text`` to a list of ids starting with CLS, truncated to ``max_length`` ids."""
        return self.encode_array(text, max_length).tolist()

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Decode ids to text, skipping special ids; a cut multi-byte character becomes U+FFFD."""
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


LISTOPS_TOKENS = ("[PAD]", "[CLS]", *map(str, range(10)), "[MIN", "[MAX", "[MED", "[SM", "]")
"""ListOps vocabulary in id order: PAD=0, CLS=1, digits 0-9 = 2..11, operators, closing bracket."""


class ListOpsTokenizer:
    """Whitespace tokenizer over :data:`LISTOPS_TOKENS` (17 ids); LRA's ``(``/``)`` are ignored."""

    name = "listops"
    pad_id = PAD_ID
    cls_id = CLS_ID
    vocab_size = len(LISTOPS_TOKENS)
    token_to_id = {tok: i for i, tok in enumerate(LISTOPS_TOKENS)}

    def encode_array(self, text: str, max_length: int | None = None) -> np.ndarray:
        """Encode a space-separated expression to ``[CLS, ...]`` of at most ``max_length`` ids."""
        _check_max_length(max_length)
        ids = [self.cls_id]
        for tok in text.split():
            if tok in ("(", ")"):
                continue
            try:
                ids.append(self.token_to_id[tok])
            except KeyError:
                raise DataError(
                    f"unknown ListOps token {tok!r}; valid tokens: {' '.join(LISTOPS_TOKENS[2:])}"
                ) from None
        if max_length is not None:
            ids = ids[:max_length]
        return np.asarray(ids, dtype=np.uint16)

    def num_tokens(self, text: str) -> int:
        """Length of the untruncated encoding (CLS included)."""
        return sum(tok not in ("(", ")") for tok in text.split()) + 1

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Encode to a list of ids starting with CLS."""
        return self.encode_array(text, max_length).tolist()

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Decode ids back to a space-separated expression, skipping PAD and CLS."""
        return " ".join(LISTOPS_TOKENS[int(i)] for i in ids if int(i) > CLS_ID)


TOKENIZERS: dict[str, type[ByteTokenizer] | type[ListOpsTokenizer]] = {
    "bytes": ByteTokenizer,
    "listops": ListOpsTokenizer,
}
