"""The verdicts' statistics against hand-worked numbers, the O(mn) definition and a bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from tasks.report.stats import delong, holm, paired_delong, scaling_fit, seed_paired_delong, weighted_aucs


def delong_by_definition(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong and Clarke-Pearson (1988) as written: psi over every (positive, negative)."""
    x, y = scores[:, labels == 1], scores[:, labels == 0]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # (k, m, n)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / x.shape[1] + np.cov(v01) / y.shape[1]


def test_hand_worked_example():
    """Positives (0.8, 0.4), negatives (0.6, 0.2, 0.1) for classifier a; (0.7, 0.3) and
    (0.5, 0.6, 0.1) for b. By hand: AUC a = 5/6, b = 2/3; V10_a = (1, 2/3), V01_a = (1/2, 1, 1),
    V10_b = (1, 1/3), V01_b = (1/2, 1/2, 1); var a = (1/18)/2 + (1/12)/3 = 1/18,
    var b = (2/9)/2 + (1/12)/3 = 5/36, cov = (1/9)/2 + (1/24)/3 = 5/72; var(a - b) = 1/18."""
    labels = np.array([1, 1, 0, 0, 0])
    a = np.array([0.8, 0.4, 0.6, 0.2, 0.1])
    b = np.array([0.7, 0.3, 0.5, 0.6, 0.1])
    aucs, cov = delong(np.vstack([a, b]), labels)
    assert aucs == pytest.approx([5 / 6, 2 / 3], abs=1e-12)
    assert cov == pytest.approx(np.array([[1 / 18, 5 / 72], [5 / 72, 5 / 36]]), abs=1e-12)
    test = paired_delong(a, b, labels)
    assert test.diff == pytest.approx(1 / 6, abs=1e-12)
    assert test.se == pytest.approx(math.sqrt(1 / 18), abs=1e-12)
    assert test.p_value == pytest.approx(2 * scipy_stats.norm.sf((1 / 6) / math.sqrt(1 / 18)), abs=1e-12)
    assert test.p_value == pytest.approx(0.4795, abs=1e-4)
    assert (test.n_pos, test.n_neg) == (2, 3)


def test_fast_algorithm_equals_the_definition_with_ties():
    rng = np.random.default_rng(1)
    labels = (rng.random(120) < 0.3).astype(int)
    scores = np.round(rng.random((3, 120)) + 0.5 * labels, 1)  # rounded: many ties
    fast_aucs, fast_cov = delong(scores, labels)
    slow_aucs, slow_cov = delong_by_definition(scores, labels)
    assert fast_aucs == pytest.approx(slow_aucs, abs=1e-12)
    assert fast_cov == pytest.approx(slow_cov, abs=1e-12)
    assert fast_aucs == pytest.approx([roc_auc_score(labels, s) for s in scores], abs=1e-12)


def mann_whitney_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC as the Mann-Whitney U of the positives over m * n (what roc_auc_score computes)."""
    ranks, m = scipy_stats.rankdata(scores), int(labels.sum())
    return (ranks[labels == 1].sum() - m * (m + 1) / 2) / (m * (len(labels) - m))


def correlated_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two models sharing most of their signal (a shared latent term), as two budgets would."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(int)
    shared = rng.normal(size=n)
    a = 0.7 * labels + shared + 0.5 * rng.normal(size=n)
    b = 0.6 * labels + shared + 0.5 * rng.normal(size=n)
    return a, b, labels


def test_standard_errors_agree_with_a_paired_bootstrap():
    a, b, labels = correlated_scores(2000, seed=2)
    test = paired_delong(a, b, labels)
    aucs, cov = delong(np.vstack([a, b]), labels)
    rng = np.random.default_rng(3)
    boot = []
    for _ in range(1000):
        i = rng.integers(0, len(labels), len(labels))
        boot.append((mann_whitney_auc(labels[i], a[i]), mann_whitney_auc(labels[i], b[i])))
    boot = np.array(boot)
    assert math.sqrt(cov[0, 0]) == pytest.approx(boot[:, 0].std(ddof=1), rel=0.10)
    assert math.sqrt(cov[1, 1]) == pytest.approx(boot[:, 1].std(ddof=1), rel=0.10)
    assert test.se == pytest.approx((boot[:, 0] - boot[:, 1]).std(ddof=1), rel=0.10)
    # pairing is what makes the test tight: the paired SE is far below the unpaired one
    assert test.se < 0.6 * math.sqrt(cov[0, 0] + cov[1, 1])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert len(holm([])) == 0


def test_weighted_auc_is_the_auc_of_the_resample():
    rng = np.random.default_rng(4)
    labels = (rng.random(300) < 0.4).astype(int)
    scores = np.round(rng.random(300) + 0.3 * labels, 2)
    index = rng.integers(0, 300, 300)
    counts = np.bincount(index, minlength=300)[None, :].astype(float)
    assert weighted_aucs(scores, labels, counts)[0] == pytest.approx(roc_auc_score(labels[index], scores[index]), abs=1e-12)


def test_scaling_fit_slope_and_band():
    rng = np.random.default_rng(5)
    n = 3000
    labels = (rng.random(n) < 0.3).astype(int)
    shared = rng.normal(size=n)
    signal = (0.3, 0.45, 0.6)  # AUC rises with size
    scores = np.vstack([s * labels + shared + 0.5 * rng.normal(size=n) for s in signal])
    x = np.log10([2e6, 2e7, 2e8])
    fit = scaling_fit(x, scores, labels, resamples=400)
    aucs = [roc_auc_score(labels, s) for s in scores]
    assert fit.aucs == pytest.approx(aucs, abs=1e-12)
    assert fit.slope == pytest.approx(np.polyfit(x, aucs, 1)[0], abs=1e-12)
    assert 0 < fit.slope_low < fit.slope < fit.slope_high
    assert (fit.band_low <= fit.intercept + fit.slope * fit.band_x + 1e-9).all()
    assert (fit.band_high >= fit.intercept + fit.slope * fit.band_x - 1e-9).all()
    # two indistinguishable budgets: the interval straddles 0
    flat = scaling_fit(x[:2], np.vstack([scores[0], scores[0] + 1e-3 * rng.normal(size=n)]), labels, resamples=300)
    assert flat.slope_low < 0 < flat.slope_high


def test_refuses_what_it_cannot_test():
    with pytest.raises(ValueError, match="two windows of each class"):
        delong(np.array([[0.1, 0.2, 0.3]]), np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="aligned"):
        paired_delong(np.zeros(4), np.zeros(5), np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="two budgets"):
        scaling_fit(np.array([7.0]), np.zeros((1, 4)), np.array([1, 0, 1, 0]))


def _seeded(signals: tuple[float, ...], labels: np.ndarray, offset: int) -> np.ndarray:
    shared = np.random.default_rng(99).normal(size=len(labels))
    return np.vstack([s * labels + shared + np.random.default_rng(offset + i).normal(size=len(labels)) for i, s in enumerate(signals)])


def test_seed_paired_delong_with_one_seed_a_side_is_paired_delong():
    rng = np.random.default_rng(3)
    labels = (rng.random(400) < 0.4).astype(int)
    a, b = _seeded((0.8,), labels, 0), _seeded((0.6,), labels, 10)
    seeded, single = seed_paired_delong(a, b, labels), paired_delong(a[0], b[0], labels)
    assert (seeded.diff, seeded.se, seeded.p_value) == pytest.approx((single.diff, single.se, single.p_value), abs=1e-15)
    assert (seeded.low, seeded.high) == pytest.approx((single.low, single.high), abs=1e-15)
    assert math.isinf(seeded.df) and math.isnan(seeded.sd_a) and not seeded.seed_measured
    assert seed_paired_delong(a, b, labels, b_deterministic=True).sd_b == 0


def test_seed_paired_delong_adds_seed_variance_to_the_window_variance_of_the_means():
    rng = np.random.default_rng(4)
    labels = (rng.random(300) < 0.4).astype(int)
    a, b = _seeded((0.9, 0.7, 1.1), labels, 0), _seeded((0.6, 0.65), labels, 10)
    test = seed_paired_delong(a, b, labels)
    aucs, cov = delong_by_definition(np.vstack([a, b]), labels)  # the O(mn) definition, not the fast algorithm
    c = np.array([1 / 3, 1 / 3, 1 / 3, -1 / 2, -1 / 2])
    va, vb = aucs[:3].var(ddof=1) / 3, aucs[3:].var(ddof=1) / 2
    df = (c @ cov @ c + va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    assert test.diff == pytest.approx(aucs[:3].mean() - aucs[3:].mean(), abs=1e-12)
    assert test.window_se**2 == pytest.approx(c @ cov @ c, abs=1e-12) and test.seed_se**2 == pytest.approx(va + vb, abs=1e-12)
    assert test.df == pytest.approx(df, rel=1e-9)
    assert test.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(test.diff) / test.se, df), rel=1e-9)
    assert test.high - test.diff == pytest.approx(scipy_stats.t.ppf(0.975, df) * test.se, rel=1e-9)
    # a deterministic b adds no seed variance of its own
    assert seed_paired_delong(a, b[:1], labels, b_deterministic=True).seed_se ** 2 == pytest.approx(va, abs=1e-12)


def test_scaling_fit_with_one_seed_a_budget_is_the_window_bootstrap_and_seeds_widen_it():
    rng = np.random.default_rng(5)
    labels = (rng.random(500) < 0.3).astype(int)
    one = np.vstack([_seeded((s,), labels, 20 + k)[0] for k, s in enumerate((0.4, 0.8, 1.2))])
    x = np.log10([2e6, 2e7, 2e8])
    plain, listed = scaling_fit(x, one, labels, resamples=200), scaling_fit(x, [row[None, :] for row in one], labels, resamples=200)
    assert (plain.slope, plain.slope_low, plain.slope_high) == (listed.slope, listed.slope_low, listed.slope_high)
    seeded = [np.vstack([row, _seeded((s + 0.3, s - 0.3), labels, 40 + 2 * k)]) for k, (row, s) in enumerate(zip(one, (0.4, 0.8, 1.2)))]
    fit = scaling_fit(x, seeded, labels, resamples=200)
    means = [np.mean([roc_auc_score(labels, s) for s in seeds]) for seeds in seeded]
    assert fit.aucs == pytest.approx(means, abs=1e-12)
    assert fit.slope_high - fit.slope_low > plain.slope_high - plain.slope_low
