"""Confidence intervals and paired tests for comparing classifiers.

- :func:`t_interval`: mean and Student-t interval over independent repeats (seeds).
- :func:`bootstrap_interval`: percentile bootstrap over test documents of one run (accuracy or
  macro-F1), the fallback when there is a single seed.
- :func:`paired_bootstrap`: difference in accuracy of two models scored on the same documents;
  documents are resampled with the same draw for both models, within each seed's test set, and
  the differences are pooled over seeds.
- :func:`mcnemar_exact`: exact (binomial) McNemar test on the discordant pairs.

All resampling uses ``numpy.random.default_rng(seed)``: the same inputs give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (bounds memory on large test sets)


@dataclass(frozen=True)
class Interval:
    """``mean`` with a two-sided interval ``[low, high]`` (None when none can be given).

    ``kind``: ``"t"`` (over ``n`` seeds), ``"bootstrap"`` (over ``n`` documents) or ``"none"``.
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    kind: str


@dataclass(frozen=True)
class PairedTest:
    """``diff`` = mean(b correct) − mean(a correct) over ``n_docs`` paired documents, with its
    percentile-bootstrap interval and two-sided bootstrap p-value, and the exact McNemar p-value
    on the discordant pairs (``b_only`` = b right and a wrong, ``a_only`` the reverse)."""

    diff: float
    low: float
    high: float
    p_value: float
    mcnemar_p: float
    n_docs: int
    a_only: int
    b_only: int


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t(1 − α/2, n − 1) · s / √n over ``values`` (sample std s); no interval for n = 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"t_interval needs a non-empty 1-d sequence, got shape {x.shape}")
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, None, None, 1, "none")
    half = float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x), "t")


def _resample_chunks(n_docs: int, n_resamples: int, rng: np.random.Generator
                     ) -> Iterator[np.ndarray]:
    """Index matrices (chunk × n_docs) drawn with replacement, ``n_resamples`` rows in all."""
    chunk = max(1, _CHUNK_ELEMENTS // max(n_docs, 1))
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n_docs, size=(min(chunk, n_resamples - start), n_docs))


def accuracy(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Accuracy along the last axis: (..., D) -> (...)."""
    return (labels == preds).mean(axis=-1)


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 along the last axis: (..., D) -> (...).

    As torchmetrics' ``MulticlassF1Score(average="macro")``: a class with no true, predicted or
    missed document (tp + fp + fn = 0) is left out of the average.
    """
    total = np.zeros(labels.shape[:-1])
    counted = np.zeros(labels.shape[:-1])
    for c in range(num_classes):
        is_label, is_pred = labels == c, preds == c
        tp = (is_label & is_pred).sum(axis=-1)
        denom = is_label.sum(axis=-1) + is_pred.sum(axis=-1)  # 2tp + fp + fn
        total += np.divide(2 * tp, denom, out=np.zeros(denom.shape), where=denom > 0)
        counted += denom > 0
    return np.divide(total, counted, out=np.zeros(total.shape), where=counted > 0)


def bootstrap_interval(labels: Sequence[int], preds: Sequence[int], metric: str = "acc",
                       num_classes: int | None = None, n_resamples: int = N_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Interval:
    """Percentile bootstrap interval over documents of ``metric`` ("acc" or "f1") of one run;
    ``mean`` is the metric on all documents."""
    y, p = np.asarray(labels), np.asarray(preds)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels and preds must be equal-length non-empty 1-d sequences, got "
                         f"shapes {y.shape} and {p.shape}")
    if metric == "acc":
        score = accuracy
    elif metric == "f1":
        k = int(max(y.max(), p.max()) + 1) if num_classes is None else num_classes
        def score(a, b):
            return macro_f1(a, b, k)
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'acc' or 'f1'")
    rng = np.random.default_rng(seed)
    draws = np.concatenate([score(y[idx], p[idx]) for idx in _resample_chunks(len(y),
                                                                               n_resamples, rng)])
    alpha = 1 - confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Interval(float(score(y, p)), float(low), float(high), len(y), "bootstrap")


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of ``b_only`` successes in
    ``a_only + b_only`` discordant pairs at probability 1/2 (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(sps.binomtest(b_only, n, 0.5).pvalue)


def paired_bootstrap(groups: Sequence[tuple[Sequence[bool], Sequence[bool]]],
                     n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     confidence: float = CONFIDENCE) -> PairedTest:
    """Paired comparison of models a and b from per-document correctness.

    ``groups``: one ``(a_correct, b_correct)`` pair of equal-length boolean sequences per seed
    (position i = the same document for both). Each resample redraws every group's documents
    with replacement (the same draw for a and b) and pools the differences over all groups.
    p-value: twice the smaller bootstrap tail at 0, ``(count + 1) / (n_resamples + 1)``, capped
    at 1, so p < 1 − confidence exactly when the percentile interval excludes 0 (up to ties).
    """
    diffs, a_only, b_only = [], 0, 0
    for a, b in groups:
        a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
        if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
            raise ValueError(f"each group needs two equal-length non-empty 1-d sequences, got "
                             f"shapes {a.shape} and {b.shape}")
        diffs.append(b.astype(np.int8) - a.astype(np.int8))  # (D_g,) in {-1, 0, 1}
        a_only += int((a & ~b).sum())
        b_only += int((b & ~a).sum())
    if not diffs:
        raise ValueError("paired_bootstrap needs at least one group of paired documents")
    n_docs = sum(len(d) for d in diffs)
    rng = np.random.default_rng(seed)
    sums = np.zeros(n_resamples)
    for d in diffs:  # the same doc draw for a and b is a draw of their difference
        done = 0
        for idx in _resample_chunks(len(d), n_resamples, rng):
            sums[done:done + len(idx)] += d[idx].sum(axis=1)
            done += len(idx)
    draws = sums / n_docs
    alpha = 1 - confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    tail = min((draws <= 0).sum(), (draws >= 0).sum())
    p_value = min(1.0, 2 * (tail + 1) / (n_resamples + 1))
    diff = float(sum(int(d.sum()) for d in diffs) / n_docs)
    return PairedTest(diff, float(low), float(high), p_value, mcnemar_exact(a_only, b_only),
                      n_docs, a_only, b_only)
