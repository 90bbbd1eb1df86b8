"""Statistics against hand-computed values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score

from attention_arena.stats import (
    bootstrap_interval,
    macro_f1,
    mcnemar_exact,
    paired_bootstrap,
    t_interval,
)


def test_t_interval_by_hand():
    ci = t_interval([0.90, 0.92, 0.94])
    # s = 0.02 (deviations -0.02, 0, 0.02; 0.0008 / 2 = 0.0004); t(0.975, df=2) = 4.302653
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert ci.kind == "t" and ci.n == 3
    assert ci.mean == pytest.approx(0.92)
    assert ci.low == pytest.approx(0.92 - half, abs=1e-7)
    assert ci.high == pytest.approx(0.92 + half, abs=1e-7)
    assert ci.high - ci.mean == pytest.approx(0.0496828, abs=1e-7)


def test_t_interval_two_values_and_single():
    # n = 2: s = |a − b| / √2, t(0.975, 1) = 12.706205
    ci = t_interval([1.0, 3.0])
    assert ci.high - ci.mean == pytest.approx(12.706205, abs=1e-5)
    one = t_interval([0.5])
    assert (one.mean, one.low, one.high, one.kind) == (0.5, None, None, "none")
    with pytest.raises(ValueError, match="non-empty"):
        t_interval([])


def test_mcnemar_exact_by_hand():
    # 1 vs 9 discordant pairs: P(X <= 1 | n=10, 1/2) = (1 + 10) / 1024; two-sided doubles it
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    # 2 vs 8: (1 + 10 + 45) / 1024 doubled
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_identical_models():
    rng = np.random.default_rng(1)
    groups = [(c, c) for c in (rng.random(50) < 0.8, rng.random(70) < 0.6)]
    res = paired_bootstrap(groups, n_resamples=2000)
    assert res.diff == 0 and res.low == 0 and res.high == 0
    assert res.p_value == 1.0 and res.mcnemar_p == 1.0
    assert (res.n_docs, res.a_only, res.b_only) == (120, 0, 0)


def test_paired_bootstrap_one_model_right_where_the_other_is_wrong():
    a = np.arange(40) % 2 == 0           # right on half the documents
    b = np.ones(40, dtype=bool)          # right everywhere, so also where a is wrong
    res = paired_bootstrap([(a, b)], n_resamples=2000)
    assert res.diff == pytest.approx(0.5)
    assert res.low > 0 and res.p_value == pytest.approx(2 / 2001)
    assert res.b_only == 20 and res.a_only == 0
    assert res.mcnemar_p == pytest.approx(2 * 0.5**20)
    flipped = paired_bootstrap([(b, a)], n_resamples=2000)
    assert flipped.diff == pytest.approx(-0.5) and flipped.high < 0


def test_paired_bootstrap_pools_seeds_and_matches_normal_approximation():
    # seed 1: 10 docs, b gains 3; seed 2: 30 docs, b gains 3 -> pooled (3 + 3) / 40
    a1, b1 = np.zeros(10, bool), np.r_[np.ones(3), np.zeros(7)].astype(bool)
    a2, b2 = np.zeros(30, bool), np.r_[np.ones(3), np.zeros(27)].astype(bool)
    res = paired_bootstrap([(a1, b1), (a2, b2)])
    assert res.diff == pytest.approx(0.15)
    # large sample: the percentile interval is close to diff ± 1.96 · SE (resampling within
    # seeds: SE² = Σ_g D_g · var_g(d) / D²)
    d = np.r_[np.ones(120), np.zeros(280)] - np.r_[np.zeros(340), np.ones(60)]  # diff 0.15
    a, b = d < 0, d > 0
    res = paired_bootstrap([(a, b)], n_resamples=20_000)
    se = d.std() / math.sqrt(len(d))
    assert res.diff == pytest.approx(0.15)
    assert res.low == pytest.approx(0.15 - 1.96 * se, abs=0.006)
    assert res.high == pytest.approx(0.15 + 1.96 * se, abs=0.006)
    assert res.p_value < 0.05


def test_paired_bootstrap_is_deterministic_and_checks_shapes():
    rng = np.random.default_rng(0)
    a, b = rng.random(30) < 0.7, rng.random(30) < 0.7
    assert paired_bootstrap([(a, b)], n_resamples=500) == paired_bootstrap([(a, b)],
                                                                           n_resamples=500)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([(a, b[:-1])])
    with pytest.raises(ValueError, match="at least one group"):
        paired_bootstrap([])


def test_bootstrap_accuracy_interval_matches_wald():
    labels = np.zeros(400, dtype=int)
    preds = np.r_[np.zeros(320), np.ones(80)].astype(int)  # accuracy 0.8
    ci = bootstrap_interval(labels, preds, "acc", n_resamples=20_000)
    se = math.sqrt(0.8 * 0.2 / 400)
    assert ci.kind == "bootstrap" and ci.n == 400 and ci.mean == pytest.approx(0.8)
    assert ci.low == pytest.approx(0.8 - 1.96 * se, abs=0.004)
    assert ci.high == pytest.approx(0.8 + 1.96 * se, abs=0.004)


def test_bootstrap_perfect_run_has_a_point_interval():
    ci = bootstrap_interval([0, 1, 2, 1], [0, 1, 2, 1], "f1", n_resamples=100)
    assert (ci.mean, ci.low, ci.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_interval([0], [0], "auc")


def test_macro_f1_matches_torchmetrics():
    rng = np.random.default_rng(3)
    for k in (2, 5):
        labels = rng.integers(0, k, size=(6, 37))
        preds = np.where(rng.random((6, 37)) < 0.6, labels, rng.integers(0, k, size=(6, 37)))
        labels[0] = preds[0] = 0  # one row where only class 0 occurs
        labels[1, :] = 1          # one row with a class that is never predicted nor present
        ours = macro_f1(labels, preds, k)
        for row in range(6):
            ref = MulticlassF1Score(num_classes=k, average="macro")(
                torch.as_tensor(preds[row]), torch.as_tensor(labels[row]))
            assert ours[row] == pytest.approx(float(ref), abs=1e-6), (k, row)
