"""A trained run, ready to explain: its best checkpoint, its tokenizer and its classes.

    run = load_run("multirun/.../0_full_L512_s0")
    doc = run.document("Shares rose after the bank's results ...")
    run.probabilities(doc.ids[None])  # (1, C)
"""

from __future__ import annotations

import bisect
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ..data import load_tokenizer
from ..data.errors import DataError
from ..data.tokenizer import CLS_ID, PAD_ID, Tokenizer
from ..model import TransformerClassifier
from ..runs import RunError, find_checkpoint, read_config

WORD = re.compile(r"\w+|[^\w\s]+")
"""A word: a run of letters and digits, or a run of punctuation."""


SPLITS = ("train", "val", "test")


@dataclass
class Document:
    """One text as the model sees it, with its words.

    ``ids`` (L,) are the token ids after CLS (the model gets ``[CLS, *ids]``, truncated to its
    length); ``word_of`` (L,) the word each token belongs to (0 .. W-1); ``words`` the (start,
    end) character spans of the W words the model sees; ``text`` the whole text (words past
    the truncation are not features)."""

    text: str
    ids: Tensor
    word_of: Tensor
    words: list[tuple[int, int]]
    label: int | None = None
    source: str = "text"

    @property
    def num_words(self) -> int:
        return len(self.words)

    def word(self, i: int) -> str:
        start, end = self.words[i]
        return self.text[start:end]

    @property
    def seen_chars(self) -> int:
        """Characters up to the end of the last word the model sees."""
        return self.words[-1][1] if self.words else 0


def group_into_words(text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple]]:
    """Assign every token (character span) to a word of ``text`` (:data:`WORD`).

    A token goes to the word it overlaps most (its first on ties); a token that overlaps none
    (a space, a line break) goes to the next word, or the previous one at the end. Returns the
    word index of every token and the spans of the words that received a token (renumbered
    0 .. W-1 in text order)."""
    words = [m.span() for m in WORD.finditer(text)]
    if not words:
        raise RunError("the text has no words (only spaces or nothing); give a text with words")
    starts = [w[0] for w in words]
    assigned = []
    for start, end in spans:
        best, overlap = None, 0
        i = max(bisect.bisect_right(starts, start) - 1, 0)
        while i < len(words) and words[i][0] < max(end, start + 1):
            o = min(end, words[i][1]) - max(start, words[i][0])
            if o > overlap:
                best, overlap = i, o
            i += 1
        if best is None:  # between words: the next one (or the last)
            best = min(bisect.bisect_left(starts, end), len(words) - 1)
        assigned.append(best)
    used = sorted(set(assigned))
    index = {w: n for n, w in enumerate(used)}
    return [index[w] for w in assigned], [words[w] for w in used]


@dataclass
class Run:
    """A trained run: ``model`` (eval mode, CPU), ``tokenizer``, ``config`` and ``checkpoint``."""

    directory: Path
    model: TransformerClassifier
    tokenizer: Tokenizer
    config: dict
    checkpoint: Path
    notes: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return self.model.attention_name

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def max_tokens(self) -> int:
        """Tokens after CLS that the model sees."""
        data_max = (self.config.get("data") or {}).get("max_length") or self.model.max_length
        return min(int(data_max), self.model.max_length) - 1

    @cached_property
    def datamodule(self):
        """The run's data module (loaded on first use: the test split, the class names)."""
        import hydra

        dm = hydra.utils.instantiate(self.config["data"], _convert_="all")
        dm.setup()
        return dm

    @cached_property
    def class_names(self) -> list[str]:
        """Class names from the run's data; ``class 0`` ... when the data cannot be loaded."""
        num = self.model.head.out_features
        try:
            names = list(self.datamodule.class_names)
        except Exception as err:  # the data is not here: the model still works
            warnings.warn(f"cannot load the run's data for its class names ({err}); "
                          "showing class numbers", stacklevel=2)
            return [f"class {c}" for c in range(num)]
        if len(names) != num:
            raise RunError(f"{self.directory}: the data has {len(names)} classes but the model "
                           f"{num}; the run directory's config does not match its checkpoint")
        return names

    def document(self, text: str, label: int | None = None, source: str = "text") -> Document:
        """Tokenize ``text`` with the run's tokenizer and group its tokens into words."""
        if not text or not text.strip():
            raise RunError("the text is empty; give a non-empty --text, --file or test document")
        ids = self.tokenizer.encode(text)[1:1 + self.max_tokens]  # without CLS
        spans = self.tokenizer.char_spans(text)[:len(ids)]
        if len(spans) != len(ids):
            raise RunError(f"the {self.tokenizer.name} tokenizer gave {len(ids)} ids but "
                           f"{len(spans)} character spans")
        word_of, words = group_into_words(text, spans)
        return Document(text, torch.tensor(ids, dtype=torch.long),
                        torch.tensor(word_of, dtype=torch.long), words, label, source)

    def test_document(self, index: int, split: str = "test") -> Document:
        """Document ``index`` of a split of the run's data, with its label."""
        if split not in SPLITS:
            raise RunError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        texts, labels = self.datamodule.split_texts(split)
        if not 0 <= index < len(texts):
            raise RunError(f"--index {index} is out of range: the {split} split has "
                           f"{len(texts)} documents (0 .. {len(texts) - 1})")
        return self.document(texts[index], labels[index], source=f"{split}[{index}]")

    def logits(self, ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) of documents ``ids`` (B, L) without CLS (CLS is prepended here);
        ``padding_mask`` (B, L) True = padding (default: where ids == PAD)."""
        if padding_mask is None:
            padding_mask = ids == PAD_ID
        cls = torch.full_like(ids[:, :1], CLS_ID)
        pad = torch.cat([torch.zeros_like(padding_mask[:, :1]), padding_mask], dim=1)
        return self.model(torch.cat([cls, ids], dim=1), pad)

    def probabilities(self, ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Class probabilities (B, C); see :meth:`logits`."""
        return self.logits(ids, padding_mask).softmax(-1)


def load_config(directory: Path) -> dict:
    """The run's config, resolved (:func:`attention_arena.runs.read_config`); ``{}`` without
    one (``--text`` and ``--file`` need none, ``--split`` rebuilds the data from it)."""
    try:
        return OmegaConf.to_container(read_config(directory), resolve=True)
    except RunError:
        return {}


def load_run(directory: str | Path) -> Run:
    """The run at ``directory``: its best checkpoint in eval mode and its saved tokenizer."""
    from ..lit_module import ArenaClassifier

    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise RunError(f"run directory {directory} does not exist; pass the folder of a run "
                       "made by arena-train (it holds checkpoints/ and tokenizer.json)")
    checkpoint, notes = find_checkpoint(directory)
    try:
        tokenizer = load_tokenizer(directory)
    except DataError as err:
        raise RunError(f"{directory}: {err}") from err
    module = ArenaClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    model = module.model.eval()
    if model.tok_emb.num_embeddings != tokenizer.vocab_size:
        raise RunError(f"{directory}: tokenizer.json has {tokenizer.vocab_size} ids but the "
                       f"checkpoint's model {model.tok_emb.num_embeddings}; the tokenizer "
                       "belongs to another run")
    return Run(directory, model, tokenizer, load_config(directory), checkpoint, notes)
