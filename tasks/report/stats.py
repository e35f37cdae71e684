"""Statistics of the report's verdicts: pure numpy/scipy, no MLflow, no pandas.

- `delong`: the AUCs of k score vectors on the same windows and their covariance, by the fast
  algorithm of Sun and Xu (2014, IEEE Signal Processing Letters 21(11)), which computes DeLong,
  DeLong and Clarke-Pearson's (1988) structural components from midranks in O(k n log n).
- `paired_delong`: the difference of two AUCs on the same windows, its 95% interval and p-value.
- `seed_paired_delong`: the difference of two configurations' seed-mean AUCs on the same windows,
  its variance the DeLong variance of that contrast (window noise) plus each side's seed variance
  over its number of seeds, a t interval with Welch-Satterthwaite degrees of freedom.
- `holm`: Holm's (1979) step-down adjustment of p-values for a family of comparisons.
- `scaling_fit`: the least-squares line of (seed-mean) AUC against log10(parameters) over budgets,
  with a 95% band from a paired bootstrap over windows (every budget and seed resampled on the same
  windows) plus, for budgets with seeds, a draw of their seed-mean's seed noise in each resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

Z95 = 1.959963984540054


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their mean rank."""
    return stats.rankdata(x, axis=-1)


def delong(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(aucs (k,), covariance (k, k)) of k score vectors (k, n) against binary labels (n,).

    Sun and Xu's algorithm: with m positives and n negatives, the midranks of each classifier's
    scores among the positives (tx), the negatives (ty) and all windows (tz) give the AUC
    (sum(tz over positives)/m - (m+1)/2) / n and the structural components
    V10 = (tz - tx)/n over positives and V01 = 1 - (tz - ty)/m over negatives; the covariance is
    cov(V10)/m + cov(V01)/n."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(labels).astype(bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two windows of each class, got {m} positive and {n} negative")
    x, y = scores[:, positive], scores[:, ~positive]
    tx, ty = _midranks(x), _midranks(y)
    tz = _midranks(np.concatenate([x, y], axis=1))
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # (k, m): share of negatives each positive outranks
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (k, n): share of positives outranking each negative
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


class DifferenceInterval:
    """The 95% interval of a difference `diff` with standard error `se` (a dataclass mixin)."""

    diff: float
    se: float

    @property
    def low(self) -> float:
        return self.diff - Z95 * self.se

    @property
    def high(self) -> float:
        return self.diff + Z95 * self.se


@dataclass(frozen=True)
class PairedAUC(DifferenceInterval):
    """AUC(a) - AUC(b) on the same windows."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    p_value: float  # two-sided, H0: equal AUCs
    n_pos: int
    n_neg: int


def paired_delong(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> PairedAUC:
    """DeLong's paired test of two classifiers scored on the same windows."""
    if len(a) != len(b) or len(a) != len(labels):
        raise ValueError(f"paired scores must be aligned: {len(a)}, {len(b)} scores for {len(labels)} labels")
    aucs, cov = delong(np.vstack([a, b]), labels)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se > 0:
        p_value = float(2 * stats.norm.sf(abs(diff) / se))
    else:  # identical rankings: no difference and no uncertainty about it
        p_value = 1.0 if diff == 0 else 0.0
    positive = np.asarray(labels).astype(bool)
    return PairedAUC(float(aucs[0]), float(aucs[1]), diff, se, p_value, int(positive.sum()), int((~positive).sum()))


@dataclass(frozen=True)
class SeedPairedAUC(DifferenceInterval):
    """mean over a's seeds of AUC - mean over b's seeds of AUC, on the same windows. With one seed a
    side and no seed variance this is `paired_delong` exactly (df infinite, a normal interval)."""

    auc_a: float  # seed means
    auc_b: float
    diff: float
    se: float  # sqrt(window_se^2 + seed_se^2)
    p_value: float  # two-sided, t with `df` degrees of freedom
    n_pos: int
    n_neg: int
    seeds_a: int
    seeds_b: int
    sd_a: float  # sd (ddof 1) of a's per-seed AUCs; NaN with one seed; 0 for a deterministic side
    sd_b: float
    window_se: float  # DeLong: the test windows' noise of the seed-mean difference
    seed_se: float  # sqrt(sd_a^2/seeds_a + sd_b^2/seeds_b) over the sides whose seed noise is measured
    df: float  # Welch-Satterthwaite; inf when no seed noise is in the interval

    @property
    def quantile(self) -> float:
        return Z95 if math.isinf(self.df) else float(stats.t.ppf(0.975, self.df))

    @property
    def low(self) -> float:
        return self.diff - self.quantile * self.se

    @property
    def high(self) -> float:
        return self.diff + self.quantile * self.se

    @property
    def seed_measured(self) -> bool:
        """True when both sides' seed noise is in the interval (measured, or a deterministic side)."""
        return not (math.isnan(self.sd_a) or math.isnan(self.sd_b))

    @property
    def seed_sd(self) -> float:
        """The larger measured seed sd of the two sides (NaN when neither is measured)."""
        known = [s for s in (self.sd_a, self.sd_b) if not math.isnan(s)]
        return max(known) if known else math.nan


def seed_paired_delong(a: np.ndarray, b: np.ndarray, labels: np.ndarray, b_deterministic: bool = False) -> SeedPairedAUC:
    """Two configurations, each scored by its seeds on the same windows: `a` (seeds_a, n), `b`
    (seeds_b, n). The estimate is the difference of seed-mean AUCs. Its variance has two parts:
    - windows: DeLong's covariance of all seeds_a + seeds_b AUCs (they share the windows), applied
      to the contrast (1/seeds_a, ..., -1/seeds_b, ...): the paired window noise of the difference;
    - seeds: each side's sample variance of its per-seed AUCs over its number of seeds (a side
      with one seed is not measured and adds nothing; `b_deterministic`, a baseline, adds 0).
    The seed variances are estimated from few seeds, so the interval and p-value use Student's t
    with Welch-Satterthwaite degrees of freedom (the window part counted as known)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or a.shape[1] != len(labels):
        raise ValueError(f"paired scores must be aligned: {a.shape[1]}, {b.shape[1]} scores for {len(labels)} labels")
    na, nb = len(a), len(b)
    aucs, cov = delong(np.vstack([a, b]), labels)
    contrast = np.r_[np.full(na, 1 / na), np.full(nb, -1 / nb)]
    window_var = max(float(contrast @ cov @ contrast), 0.0)
    auc_a, auc_b = float(aucs[:na].mean()), float(aucs[na:].mean())

    def spread(values: np.ndarray, deterministic: bool) -> float:
        return 0.0 if deterministic else float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

    sd_a, sd_b = spread(aucs[:na], False), spread(aucs[na:], b_deterministic)
    parts = [(sd**2 / n, n) for sd, n in ((sd_a, na), (sd_b, nb)) if not math.isnan(sd) and n > 1]
    seed_var = sum(v for v, _ in parts)
    denominator = sum(v**2 / (n - 1) for v, n in parts)
    df = (window_var + seed_var) ** 2 / denominator if denominator > 0 else math.inf
    se = math.sqrt(window_var + seed_var)
    diff = auc_a - auc_b
    if se > 0:
        p_value = float(2 * (stats.norm.sf(abs(diff) / se) if math.isinf(df) else stats.t.sf(abs(diff) / se, df)))
    else:
        p_value = 1.0 if diff == 0 else 0.0
    positive = np.asarray(labels).astype(bool)
    return SeedPairedAUC(auc_a, auc_b, diff, se, p_value, int(positive.sum()), int((~positive).sum()), na, nb, sd_a, sd_b,
                         math.sqrt(window_var), math.sqrt(seed_var), df)  # fmt: skip


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    (m - i + 1), made non-decreasing in that order, capped at 1. NaNs stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    m, running = len(order), 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted


def weighted_aucs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one score vector (n,) under each row of window weights (B, n) (bootstrap counts):
    sum over positives of w * (negative weight below + half the tied) / (W+ * W-)."""
    order = np.argsort(scores, kind="mergesort")
    s, positive, w = scores[order], np.asarray(labels)[order].astype(bool), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    ends = np.r_[starts[1:], len(s)]
    negatives = np.where(positive, 0.0, w)
    cumulative = np.concatenate([np.zeros((len(w), 1)), np.cumsum(negatives, axis=1)], axis=1)  # (B, n+1)
    below = cumulative[:, starts][:, group]
    tied = (cumulative[:, ends] - cumulative[:, starts])[:, group]
    pos_w = np.where(positive, w, 0.0)
    numerator = (pos_w * (below + 0.5 * tied)).sum(axis=1)
    return numerator / (pos_w.sum(axis=1) * negatives.sum(axis=1))


@dataclass(frozen=True)
class ScalingFit:
    """AUC = intercept + slope * log10(parameters), fitted over budgets on the same windows."""

    log_params: np.ndarray  # (k,) log10 of each budget's selected parameter count
    aucs: np.ndarray  # (k,) each budget's AUC on the full split
    slope: float  # AUC per tenfold increase in parameters
    intercept: float
    slope_low: float  # 95% percentile interval of the slope over bootstrap resamples
    slope_high: float
    band_x: np.ndarray  # (g,) log10 parameters where the band is evaluated
    band_low: np.ndarray  # (g,) 2.5% and 97.5% of the fitted line over resamples
    band_high: np.ndarray
    resamples: int


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of y (B, k) on x (k,)."""
    xc = x - x.mean()
    slope = (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)
    return slope, y.mean(axis=-1) - slope * x.mean()


def scaling_fit(log_params: np.ndarray, scores: np.ndarray | list[np.ndarray], labels: np.ndarray,
                resamples: int = 1000, seed: int = 0, chunk: int = 200) -> ScalingFit:  # fmt: skip
    """The line of AUC against log10(parameters) through k >= 2 budgets' scores on the same windows,
    with a 95% band from `resamples` paired bootstrap resamples of the windows.

    `scores` is (k, n), one score vector a budget, or a list of k arrays (seeds_j, n): then a
    budget's AUC is its seed mean, each resample draws the same windows for every budget and seed,
    and a budget with seeds_j >= 2 adds a draw of its seed-mean's seed noise,
    sd_j / sqrt(seeds_j) * t(seeds_j - 1) (sd_j of its per-seed AUCs: the t carries the uncertainty
    of an sd from few seeds, as `seed_paired_delong` does)."""
    x = np.asarray(log_params, dtype=float)
    if isinstance(scores, np.ndarray):
        scores = list(np.atleast_2d(np.asarray(scores, dtype=np.float64))[:, None, :])
    per_budget = [np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in scores]
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError("a scaling curve needs at least two budgets of different sizes")
    n = per_budget[0].shape[1]
    seed_aucs = [np.array([weighted_aucs(s, labels, np.ones((1, n)))[0] for s in seeds]) for seeds in per_budget]
    full = np.array([a.mean() for a in seed_aucs])
    seed_se = np.array([a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0 for a in seed_aucs])
    slope, intercept = _ols(x, full[None, :])
    rng = np.random.default_rng(seed)
    boot = np.empty((resamples, len(x)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(size)]).astype(float)
        for j, seeds in enumerate(per_budget):
            boot[start : start + size, j] = np.mean([weighted_aucs(s, labels, counts) for s in seeds], axis=0)
    for j, seeds in enumerate(per_budget):  # after the windows, so one seed a budget draws as before
        if len(seeds) > 1:
            boot[:, j] += seed_se[j] * rng.standard_t(len(seeds) - 1, size=resamples)
    slopes, intercepts = _ols(x, boot)
    band_x = np.linspace(x.min(), x.max(), 50)
    lines = intercepts[:, None] + slopes[:, None] * band_x[None, :]  # (B, g)
    return ScalingFit(
        log_params=x, aucs=full, slope=float(slope[0]), intercept=float(intercept[0]),
        slope_low=float(np.percentile(slopes, 2.5)), slope_high=float(np.percentile(slopes, 97.5)),
        band_x=band_x, band_low=np.percentile(lines, 2.5, axis=0), band_high=np.percentile(lines, 97.5, axis=0),
        resamples=resamples,
    )  # fmt: skip
