"""Offline ListOps generator after google-research ``lra_benchmarks/data/listops.py``.

A node is an operator with probability 0.25 (below ``max_depth``), else a digit 0-9; an operator
takes ``randint(2, max_args)`` arguments. Operators: ``[MIN``, ``[MAX``, ``[MED`` (``int`` of the
median), ``[SM`` (sum mod 10). Expressions are written without LRA's ``(``/``)`` grouping tokens,
e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` (value 9); the length is the number of such tokens.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .processing import RawData, shrink_sizes
from .sources import Source, register_source

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUES = tuple(range(10))
OPERATOR_P = 0.25
LRA_DEFAULTS = {"min_length": 500, "max_length": 2000, "train": 96_000, "val": 2_000, "test": 2_000}


def apply_operator(op: str, args: list[int]) -> int:
    """Value of one operator applied to its digit arguments."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise DataError(f"unknown ListOps operator {op!r}; valid: {', '.join(OPERATORS)}")


def evaluate(expression: str) -> int:
    """Evaluate a space-separated ListOps expression with a stack (independent of the generator)."""
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for tok in expression.split():
        if tok in ("(", ")"):
            continue
        if tok in OPERATORS:
            stack.append((tok, []))
        elif tok == END:
            op, args = stack.pop()
            value = apply_operator(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            value = int(tok)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
    if stack or result is None:
        raise DataError(f"unbalanced ListOps expression: {expression[:80]!r}")
    return result


class _TooLong(Exception):
    pass


def _tree(
    rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[str], limit: int
) -> int:
    """Append one random subtree's tokens to ``out`` and return its value (LRA's draw order)."""
    r = rng.random() if depth < max_depth else 1.0
    if r > OPERATOR_P:
        value = rng.choice(VALUES)
        out.append(str(value))
    else:
        slot = len(out)
        out.append("")
        args = [
            _tree(rng, depth + 1, max_depth, max_args, out, limit)
            for _ in range(rng.randint(2, max_args))
        ]
        op = rng.choice(OPERATORS)
        out[slot] = op
        out.append(END)
        value = apply_operator(op, args)
    if len(out) >= limit:
        raise _TooLong
    return value


def generate_expression(
    rng: random.Random, max_length: int, max_depth: int = 10, max_args: int = 10
) -> tuple[str, int] | None:
    """One random expression and its value, or ``None`` once it reaches ``max_length`` tokens."""
    out: list[str] = []
    try:
        value = _tree(rng, 1, max_depth, max_args, out, max_length)
    except _TooLong:
        return None
    return " ".join(out), value


def generate_listops(
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int = 500,
    max_length: int = 2000,
    seed: int = 0,
    max_depth: int = 10,
    max_args: int = 10,
    max_attempts: int | None = None,
) -> RawData:
    """Distinct expressions with ``min_length < tokens < max_length``, split train/val/test.

    Deterministic from ``seed``. Gives up with a :class:`DataError` after ``max_attempts`` draws
    (default ``1000 * total + 100_000``; LRA's 500-2000 tokens accept about 8% of draws).
    """
    total = num_train + num_val + num_test
    if min(num_train, num_val, num_test) < 0 or num_train == 0:
        raise DataError(
            f"listops needs num_train > 0 and num_val, num_test >= 0, got {num_train}/{num_val}/"
            f"{num_test}; fix: set data.listops_num_train/val/test."
        )
    if min_length < 0 or max_length - min_length < 2:
        raise DataError(
            f"listops keeps expressions with min_length < tokens < max_length, which is empty for "
            f"min_length={min_length}, max_length={max_length}; fix: set "
            "data.listops_max_length >= data.listops_min_length + 2."
        )
    attempts = max_attempts if max_attempts is not None else 1000 * total + 100_000
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    for _ in range(attempts):
        found = generate_expression(rng, max_length, max_depth, max_args)
        if found is not None and found[0].count(" ") + 1 > min_length:
            seen.setdefault(found[0], found[1])
            if len(seen) == total:
                break
    else:
        raise DataError(
            f"listops: only {len(seen)} of {total} expressions with {min_length} < tokens < "
            f"{max_length} after {attempts} draws (max_depth={max_depth}, max_args={max_args}); "
            "fix: widen data.listops_min_length/listops_max_length or ask for fewer examples."
        )
    items = list(seen.items())
    cuts = {
        "train": (0, num_train),
        "val": (num_train, num_train + num_val),
        "test": (num_train + num_val, total),
    }
    splits = {
        name: ([t for t, _ in items[a:b]], [v for _, v in items[a:b]])
        for name, (a, b) in cuts.items()
    }
    return RawData(splits, [str(v) for v in VALUES])


@register_source("listops")
@dataclass(frozen=True)
class ListOps(Source):
    """Generated ListOps; lengths count expression tokens (``data.max_length`` truncates ids).

    ``listops_seed=None`` uses the run's seed. With ``data.limit_examples`` only that many
    expressions are generated (the split sizes scaled down in proportion).
    """

    listops_min_length: int = 100
    listops_max_length: int = 500
    listops_num_train: int = 5_000
    listops_num_val: int = 500
    listops_num_test: int = 500
    listops_seed: int | None = None

    tokenizers = ("listops",)
    generated = True

    def _seed(self, seed: int) -> int:
        return seed if self.listops_seed is None else self.listops_seed

    def load(self, seed: int, limit: int | None, cache_dir: Path) -> RawData:
        counts = [self.listops_num_train, self.listops_num_val, self.listops_num_test]
        if limit is not None:
            counts = shrink_sizes(counts, limit)
        return generate_listops(
            *counts, self.listops_min_length, self.listops_max_length, seed=self._seed(seed)
        )

    def fingerprint(self, seed: int) -> Any:
        return {**self.options(), "listops_seed": self._seed(seed)}
