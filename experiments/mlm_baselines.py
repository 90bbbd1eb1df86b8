"""What a masked-byte model can score without long context: count-based predictors of a byte
from its neighbours, trained on the BBC News training text and scored on the validation text
(the split arena-pretrain uses), in nats per byte, next to a pretraining run's val mlm_loss.

    python experiments/mlm_baselines.py [--seed 0] [--run results/pretrain/pretrain10_full_L512_s0]

Predictors (add-0.1 smoothing over the 256 byte values): the unigram frequencies, the byte before
(left bigram), and the bytes before and after (both neighbours: what a masked-token model sees
when only its two neighbours are visible; 15% masking hides one of them 15% of the time, so this
is slightly optimistic). Every byte of every document, not only the first 512.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from attention_arena.data import TextClassificationDataModule


def cross_entropy(train: list[bytes], test: list[bytes], context: Callable, alpha: float = 0.1
                  ) -> float:
    """Mean -log p(byte | context) over the interior bytes of ``test``."""
    joint, marginal = Counter(), Counter()
    for doc in train:
        for i in range(1, len(doc) - 1):
            c = context(doc, i)
            joint[c, doc[i]] += 1
            marginal[c] += 1
    total, n = 0.0, 0
    for doc in test:
        for i in range(1, len(doc) - 1):
            c = context(doc, i)
            total -= math.log((joint[c, doc[i]] + alpha) / (marginal[c] + 256 * alpha))
            n += 1
    return total / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", type=Path, default=None, help="a pretraining run to compare with")
    args = p.parse_args()
    dm = TextClassificationDataModule(name="bbc_news", max_length=512, tokenizer="bytes",
                                      seed=args.seed)
    dm.setup()
    train, val = ([t.encode() for t in dm.split_texts(s)[0]] for s in ("train", "val"))
    rows = {
        "unigram": cross_entropy(train, val, lambda d, i: 0),
        "left byte": cross_entropy(train, val, lambda d, i: d[i - 1]),
        "both neighbours": cross_entropy(train, val, lambda d, i: (d[i - 1], d[i + 1])),
    }
    if args.run is not None:
        notes = json.loads((args.run / "metrics.json").read_text()).get("notes", [])
        for note in notes:
            if "val mlm_loss" in note:
                rows[f"{args.run.name} (val mlm_loss)"] = float(note.rsplit(" ", 1)[1])
    for name, nats in rows.items():
        print(f"{name:<45} {nats:.3f} nats/byte")


if __name__ == "__main__":
    main()
