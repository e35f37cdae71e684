"""Across budgets, per horizon: each budget's selected trial on validation (its study's pick on the
seed mean where the study confirmed its top configurations with more seeds, else the best trial),
its seeds, its interval, how it compares with the best baseline and with the other budgets, and
whether the best parameters agree. The headline verdict on the test split is
`tasks.report.verdicts`'; this module selects what it tests.

- Confidence interval of an AUC (`auc_interval`): AUC +- 1.96 SE. SE is Hanley and McNeil's (1982)
  from the evaluation set's class counts `val_n_pos` / `val_n_neg` when a run logged them (or
  another run at the same horizon, whose split is the same). Without them, SE is the sample
  standard deviation of the `TOP_K` best complete trials of the same budget and horizon: it misses
  the evaluation-set noise and is a lower bound, and the report says which method each row used.
- Comparing two AUCs (`compare_aucs`): difference +- 1.96 sqrt(SE_a^2 + SE_b^2). Both are measured
  on the same windows, so the errors correlate positively and this interval is conservative.
  "higher" / "lower" when the interval excludes 0, "not distinguishable" otherwise.
- Validation comparison (`scaling_verdict`), per horizon, over budgets with complete trials in
  size order, on the best-of-N val AUCs (biased upward by the search, so descriptive only: the
  report's headline is the test verdict of `tasks.report.verdicts`): "violated" when some smaller
  budget's best is higher than some larger budget's best; "holds" when every larger budget's best
  is higher than the next smaller one's; "not distinguishable" otherwise; "undetermined" when an
  interval is not Hanley-McNeil's or the budgets were trained on different datasets (as on test,
  `verdicts.dataset_check`); "not assessable" with fewer than two budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from schemas.tracking import HPARAMS, TAG_BEST_RUN_ID, TAG_BEST_TRIAL, TAG_CONFIRM_OF, TAG_SEED_INDEX, TAG_SELECTED_BY, predictions_tag
from tasks.report.stats import DifferenceInterval
from tasks.report.study import CollapseSummary, StudyDataset, best_trial, collapse_summary, study_dataset, value_table
from tasks.report.table import baselines_of, trials_of
from tasks.report.verdicts import HorizonVerdict, dataset_check, horizon_verdict
from tasks.tracking.predictions import Predictions

TOP_K = 5
Z95 = 1.959963984540054

Verdict = Literal["higher", "lower", "not distinguishable"]


def hanley_mcneil_se(auc: float, n_pos: float, n_neg: float) -> float:
    """Standard error of an AUC from the class counts (Hanley & McNeil 1982, eq. 2)."""
    if not (n_pos >= 1 and n_neg >= 1) or not 0 <= auc <= 1:
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(max(variance, 0.0))


@dataclass(frozen=True)
class Interval:
    auc: float
    se: float
    method: str  # "Hanley-McNeil" | "top-k spread" | "none"

    @property
    def low(self) -> float:
        return self.auc - Z95 * self.se

    @property
    def high(self) -> float:
        return self.auc + Z95 * self.se


def class_counts(frame: pd.DataFrame, horizon: float) -> tuple[float, float]:
    """The validation split's (n_pos, n_neg) at a horizon, from any run that logged them (the split
    is shared by every trial and baseline at that horizon); NaN when none did."""
    at = frame[(frame["horizon"] == horizon) & frame["val_n_pos"].notna() & frame["val_n_neg"].notna()]
    if at.empty:
        return math.nan, math.nan
    return float(at["val_n_pos"].median()), float(at["val_n_neg"].median())


def auc_interval(run: pd.Series, pool: pd.DataFrame, counts: tuple[float, float]) -> Interval:
    """The 95% interval of `run`'s val AUC: Hanley-McNeil with the run's own class counts, else the
    horizon's; else the spread (std, ddof 1) of the TOP_K best complete trials in `pool`."""
    auc = float(run["val_auc"])
    n_pos, n_neg = run.get("val_n_pos", math.nan), run.get("val_n_neg", math.nan)
    if not (n_pos >= 1 and n_neg >= 1):
        n_pos, n_neg = counts
    se = hanley_mcneil_se(auc, n_pos, n_neg)
    if not math.isnan(se):
        return Interval(auc, se, "Hanley-McNeil")
    top = pool.loc[pool["complete"], "val_auc"].nlargest(TOP_K)
    if len(top) >= 2:
        return Interval(auc, float(top.std(ddof=1)), f"top-{len(top)} spread")
    return Interval(auc, math.nan, "none")


@dataclass(frozen=True)
class Comparison(DifferenceInterval):
    diff: float
    se: float
    verdict: Verdict


def compare_aucs(a: Interval, b: Interval) -> Comparison:
    """a - b with its 95% interval; the verdict says whether a is higher, lower or not
    distinguishable from b. An AUC without an interval is never distinguishable."""
    diff = a.auc - b.auc
    se = math.sqrt(a.se**2 + b.se**2)
    if math.isnan(se):
        verdict: Verdict = "not distinguishable"
    elif diff - Z95 * se > 0:
        verdict = "higher"
    elif diff + Z95 * se < 0:
        verdict = "lower"
    else:
        verdict = "not distinguishable"
    return Comparison(diff, se, verdict)


@dataclass(frozen=True)
class BudgetBest:
    budget: str
    horizon: int
    complete: int
    trials: int
    best: pd.Series | None
    interval: Interval | None
    baseline: pd.Series | None  # the best baseline at this horizon
    baseline_interval: Interval | None
    vs_baseline: Comparison | None
    seeds: tuple[pd.Series, ...] = ()  # the runs whose test scores are seeds of `best` (`seed_runs`)
    dataset: StudyDataset | None = None  # what the study of `best` pinned (None without a best)

    @property
    def has_runs(self) -> bool:
        return self.best is not None


def budget_bests(frame: pd.DataFrame, horizon: int, budgets: list[str]) -> list[BudgetBest]:
    """Per budget at a horizon: the best complete trial over all its studies (every version and
    source), its interval, and how it compares with the best baseline at that horizon."""
    at = frame[frame["horizon"] == horizon]
    counts = class_counts(frame, horizon)
    base = baselines_of(at)
    top_base = base.sort_values(["val_auc", "run_id"], ascending=[False, True]).iloc[0] if len(base) else None
    rows = []
    for budget in budgets:
        trials = trials_of(at[at["budget_group"] == budget])
        best, seeds = with_seed_runs(selected_trial(trials, at), at)
        interval = None if best is None else auc_interval(best, trials, counts)
        base_interval = comparison = None
        if top_base is not None:
            base_interval = auc_interval(top_base, trials, counts)
            if interval is not None:
                if base_interval.method != "Hanley-McNeil":  # one model has no spread: borrow the trials'
                    base_interval = Interval(base_interval.auc, interval.se, f"{interval.method} (borrowed)")
                comparison = compare_aucs(interval, base_interval)
        rows.append(BudgetBest(budget, horizon, int(trials["complete"].sum()), len(trials), best, interval,
                               top_base, base_interval, comparison, seeds, _dataset_of(best, at)))  # fmt: skip
    return rows


def _dataset_of(best: pd.Series | None, at: pd.DataFrame) -> StudyDataset | None:
    """The dataset pinned by the study run of `best`'s study."""
    if best is None:
        return None
    runs = at[(at["run_kind"] == "study") & (at["study"] == best["study"])]
    return study_dataset(str(best["study"]), runs.iloc[0] if len(runs) else None)


def selected_trial(trials: pd.DataFrame, at: pd.DataFrame) -> pd.Series | None:
    """A budget's selected configuration at a horizon. Where a study of the budget selected on the
    seed mean (its study run tagged `selected_by=seed_mean`), its `best_trial`; of several such
    studies, the one with the highest `seed_mean_val_auc`. A single-run best elsewhere in the budget
    (an older version, legacy trials) does not outrank it: a best-of-N single val AUC carries the
    luck of its seed, a seed mean much less. Otherwise the complete trial with the highest val AUC
    over all the budget's studies (`study.best_trial`)."""
    studies = at[(at["run_kind"] == "study") & (at[TAG_SELECTED_BY] == "seed_mean")]
    picks = []
    for _, study in studies.iterrows():
        done = trials[trials["complete"] & (trials["study"] == study["study"])]
        by_id = done[done["run_id"] == study[TAG_BEST_RUN_ID]]
        found = by_id if len(by_id) else done[done["trial_number"] == study[TAG_BEST_TRIAL]]
        if len(found):
            mean = study["seed_mean_val_auc"]
            picks.append((-mean if not math.isnan(mean) else math.inf, found.iloc[0]["run_id"], found.iloc[0], mean))
    if not picks:
        return best_trial(trials)
    _, _, best, mean = min(picks, key=lambda p: p[:2])
    best = best.copy()
    best[TAG_SELECTED_BY], best["seed_mean_val_auc"] = "seed_mean", mean
    return best


def _one_per_seed(runs: pd.DataFrame) -> list[pd.Series]:
    """One run per `seed_index` (whatever a race left: the lowest run id), by seed index."""
    runs = runs.assign(_seed=runs[TAG_SEED_INDEX].fillna(0)).sort_values(["_seed", "run_id"])
    return [r.drop("_seed") for _, r in runs.drop_duplicates("_seed").iterrows()]


def seed_runs(best: pd.Series, frame: pd.DataFrame) -> list[pd.Series]:
    """The runs whose test scores are seeds of the selected configuration, on the windows it was
    scored on: the trial itself when it logged test scores (seed 0, the seed the study picked), its
    confirmation seeds (`run_kind=confirm`, `confirm_of`) and its re-trainings (`hpo retrain
    [--seeds N]`, `run_kind=retrain`, `retrain_of`), FINISHED with test scores tagged, one run per
    seed index."""
    tag = predictions_tag("test")
    scored = frame[(frame["status"] == "FINISHED") & frame[tag].notna() & (frame["state"] != "failed")]
    own = [best] if isinstance(best.get(tag), str) and best[tag] else []
    confirms = scored[(scored["run_kind"] == "confirm") & (scored[TAG_CONFIRM_OF] == best["run_id"])]
    retrains = scored[(scored["run_kind"] == "retrain") & (scored["retrain_of"] == best["run_id"])]
    return own + _one_per_seed(confirms) + _one_per_seed(retrains)


def with_seed_runs(best: pd.Series | None, frame: pd.DataFrame) -> tuple[pd.Series | None, tuple[pd.Series, ...]]:
    """The selected trial and its seeds (`seed_runs`). `scores_run_id` on the trial is the run whose
    `predictions/test.npz` stands for it as one run: its own, or (legacy and supplemental trials,
    which have none) its first re-training's, and `scores_note` says so. Selection stays on the
    trial's own val AUC (or its study's seed mean)."""
    if best is None:
        return None, ()
    best = best.copy()
    best["scores_run_id"], best["scores_note"] = best["run_id"], ""
    seeds = seed_runs(best, frame)
    tag = predictions_tag("test")
    if seeds and seeds[0]["run_id"] != best["run_id"]:
        found = seeds[0]
        best["scores_run_id"], best[tag] = found["run_id"], found[tag]
        best["scores_note"] = f"re-trained (run {found['run_id'][:8]}, val AUC {found['val_auc']:.4f})"
    return best, tuple(seeds)


@dataclass(frozen=True)
class ScalingVerdict:
    verdict: str  # holds | violated | not distinguishable | undetermined | not assessable
    reason: str
    pairs: pd.DataFrame  # smaller, larger, diff (larger - smaller), low, high, verdict, adjacent


def scaling_verdict(bests: list[BudgetBest]) -> ScalingVerdict:
    ranked = [b for b in bests if b.has_runs]  # already in size order
    columns = ["smaller", "larger", "diff", "low", "high", "verdict", "adjacent"]
    if len(ranked) < 2:
        have = ", ".join(b.budget for b in ranked) or "none"
        return ScalingVerdict("not assessable", f"fewer than two budgets with complete trials ({have})", pd.DataFrame(columns=columns))
    rows = []
    for i, small in enumerate(ranked):
        for j in range(i + 1, len(ranked)):
            large = ranked[j]
            c = compare_aucs(large.interval, small.interval)
            rows.append({"smaller": small.budget, "larger": large.budget, "diff": c.diff, "low": c.low, "high": c.high,
                         "verdict": c.verdict, "adjacent": j == i + 1})  # fmt: skip
    pairs = pd.DataFrame(rows, columns=columns)
    spread = sorted({b.budget for b in ranked if b.interval.method != "Hanley-McNeil"})
    if spread:  # an interval without the evaluation-set noise decides nothing
        pairs["verdict"] = "undetermined"
        return ScalingVerdict("undetermined", f"no validation class counts for {', '.join(spread)}: their intervals "
                              "miss the evaluation-set noise", pairs)  # fmt: skip
    lower = pairs[pairs["verdict"] == "lower"]
    adjacent = pairs[pairs["adjacent"]]
    if len(lower):
        first = lower.iloc[0]
        return ScalingVerdict("violated", f"{first['smaller']} is higher than {first['larger']} beyond the 95% interval", pairs)
    if (adjacent["verdict"] == "higher").all():
        return ScalingVerdict("holds", "each larger budget is higher than the next smaller one beyond the 95% interval", pairs)
    undecided = adjacent[adjacent["verdict"] != "higher"].iloc[0]
    return ScalingVerdict(
        "not distinguishable",
        f"{undecided['smaller']} and {undecided['larger']} differ by less than the 95% interval allows", pairs,
    )  # fmt: skip


def parameter_consistency(frame: pd.DataFrame, horizon: int, budgets: list[str],
                          params: tuple[str, ...] = HPARAMS + ("d_ff_ratio",)) -> pd.DataFrame:
    """Per parameter: the best trial's value and the best-mean value (the value whose trials have
    the highest mean AUC) per budget; "consistent" when the best-mean values agree across budgets."""
    at = trials_of(frame[frame["horizon"] == horizon])
    rows = []
    for p in params:
        best_values, mean_values = {}, {}
        for budget in budgets:
            trials = at[at["budget_group"] == budget]
            best = best_trial(trials)
            if best is None:
                continue
            best_values[budget] = best[p]
            table = value_table(trials, p)
            mean_values[budget] = table.loc[table["mean"].idxmax(), "value"] if len(table) else math.nan
        known = [v for v in mean_values.values() if not math.isnan(v)]
        verdict = "n/a" if len(known) < 2 else ("consistent" if len(set(known)) == 1 else "inconsistent")
        rows.append({"param": p, "verdict": verdict, "best_trial": best_values, "best_mean": mean_values})
    return pd.DataFrame(rows, columns=["param", "verdict", "best_trial", "best_mean"])


@dataclass
class HorizonAnalysis:
    horizon: int
    bests: list[BudgetBest]
    scaling: ScalingVerdict
    consistency: pd.DataFrame
    collapse: dict[str, CollapseSummary]
    baselines: pd.DataFrame  # best run per baseline model at this horizon
    test: HorizonVerdict  # the headline: paired verdicts on the test split (tasks.report.verdicts)
    hparams: object = None  # tasks.report.hparam_scaling.HparamScaling, filled by analysis.analyse_campaign


def analyse_horizon(frame: pd.DataFrame, horizon: int, budgets: list[str],
                    predictions: dict[str, Predictions | str] | None = None) -> HorizonAnalysis:  # fmt: skip
    at = frame[frame["horizon"] == horizon]
    bests = budget_bests(frame, horizon, budgets)
    scaling = scaling_verdict(bests)
    datasets = dataset_check(bests)
    if datasets.differ:  # no validation comparison across datasets either
        scaling = ScalingVerdict("undetermined", datasets.reason, scaling.pairs.assign(verdict="undetermined"))
    base = baselines_of(at).sort_values(["val_auc", "run_id"], ascending=[False, True])
    return HorizonAnalysis(
        horizon=horizon,
        bests=bests,
        scaling=scaling,
        consistency=parameter_consistency(frame, horizon, budgets),
        collapse={b: collapse_summary(trials_of(at[at["budget_group"] == b])) for b in budgets},
        baselines=base.drop_duplicates("baseline_model"),
        test=horizon_verdict(horizon, bests, predictions or {}),
    )
