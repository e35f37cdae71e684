"""What a campaign's runs say: pure functions over a DataFrame of MLflow runs, one row per run.

No MLflow, no files, no figures here (`tasks/report/render.py` queries and renders); every function takes
a frame normalised by `normalise_runs` and returns numbers, frames or small dataclasses.

The rules, each in one place (the report prints them in its "Methods" section):

- Complete trial: a `run_kind=trial` run tagged `state=complete` (or, untagged, FINISHED) with a
  finite `val_auc`. Every statistic below is over complete trials; failed, pruned (`state=pruned`:
  stopped early by the study's pruner) and incomplete trials are counted, never averaged, so a
  pruned trial is never in a best-per-budget table. Baselines (`run_kind=baseline`) are never trials.
- Probability collapse (`collapse_flags`): a complete trial collapsed when its validation
  predictions span less than `COLLAPSE_PRED_RANGE` (`pred_range < 0.05`: the output is nearly a
  constant). A trial whose predictions all fall on one side of 0.5 (`recall` 0 or 1, "one class")
  is counted and shown, but not called collapsed: the targets are imbalanced (18% of validation
  windows positive at h1, 54% at h5, with a different share in the training years), so a model
  that ranks well can keep every prediction on one side of 0.5.
- Parameter importance (`parameter_importance`): eta squared of `val_auc` grouped by the
  parameter's value, SS_between / SS_total, each parameter on its own (so the values need not
  sum to 1). A parameter with many values over few trials gets some eta squared by chance alone.
- Trend (`parameter_trend`): Spearman's rank correlation rho between the parameter's value and
  `val_auc` over complete trials; "increasing" when rho > 0 with p < `TREND_ALPHA`, "decreasing"
  when rho < 0 with p < `TREND_ALPHA`, "flat" otherwise; "n/a" with fewer than two distinct values
  or fewer than `MIN_TREND_TRIALS` trials.
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
  interval is not Hanley-McNeil's; "not assessable" with fewer than two budgets.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from models.arch_grid import (
    BUDGETS,
    CURRENT_GRID_VERSION,
    EXTREME_TYPES,
    GRID_VERSIONS,
    REAL_BUDGETS,
    get_architectures_for_budget,
    forced_extremes,
)
from schemas.config import SearchSpace, StudySpec
from schemas.tracking import ARCH_PARAMS, HPARAMS, PREDICTION_SPLITS, TRIAL_PARAMS, predictions_tag
from tasks.report.stats import DifferenceInterval
from tasks.report.verdicts import HorizonVerdict, horizon_verdict

COLLAPSE_PRED_RANGE = 0.05
TREND_ALPHA = 0.05
MIN_TREND_TRIALS = 4
TOP_K = 5
Z95 = 1.959963984540054
RERUN_TRIALS = 50

TUNED_PARAMS: tuple[str, ...] = ARCH_PARAMS + HPARAMS
COVERAGE_PAIRS: tuple[tuple[str, str], ...] = (("d_model", "n_layers"), ("d_model", "n_heads"), ("learning_rate", "dropout"))

_NUMERIC = tuple(p for p in TRIAL_PARAMS if p not in ("budget", "horizon")) + (
    "val_auc", "test_auc", "val_loss", "best_epoch", "pred_min", "pred_max", "pred_range", "recall",
    "epochs", "train_seconds", "samples_per_s", "peak_memory_mb",
    "best_val_auc", "best_test_auc", "n_complete", "n_failed", "n_pruned",
    "val_n_pos", "val_n_neg", "test_n_pos", "test_n_neg",
    "trial_number", "retry_of",
)  # fmt: skip
_TEXT = (
    "run_id", "experiment", "run_name", "status", "run_kind", "source", "study", "budget",
    "extreme_type", "state", "failure_reason", "failure_kind", "n_heads_source", "baseline_model", "supplemental_id",
    "retrain_of", *(predictions_tag(split) for split in PREDICTION_SPLITS),
)  # fmt: skip

Verdict = Literal["higher", "lower", "not distinguishable"]


# ----------------------------------------------------------------------------- the runs frame


def _parse_study(name: object) -> tuple[str, str, int, int] | None:
    """(budget, budget group, horizon, version) of a study name; the group of a smoke stand-in
    (`smoke-20M_h5`) is `smoke-20M`, of any other study its budget."""
    try:
        spec = StudySpec.parse(str(name))
    except ValueError:
        return None
    group = f"smoke-{spec.smoke_of}" if spec.smoke_of else spec.budget
    return spec.budget, group, spec.horizon, spec.version or 1


def _parse_horizon(value: object) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    try:
        return float(int(str(value).strip().lower().removeprefix("h")))
    except ValueError:
        return math.nan


def normalise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Typed columns (numbers as float, text as object), every expected column present, and the
    study identity (`study`, `budget`, `horizon`, `study_version`) filled from the experiment name
    where a tag is missing; adds `complete` (bool). Idempotent."""
    frame = runs.reset_index(drop=True)
    for column in _NUMERIC + _TEXT + ("horizon", "study_version"):
        if column not in frame.columns:
            frame[column] = np.nan
    for column in _NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in _TEXT:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["study"] = [s if s else e for s, e in zip(frame["study"], frame["experiment"])]
    parsed = [_parse_study(s) for s in frame["study"]]
    frame["budget"] = [b if b else (p[0] if p else None) for b, p in zip(frame["budget"], parsed)]
    frame["budget_group"] = [p[1] if p else b for b, p in zip(frame["budget"], parsed)]
    horizons = [_parse_horizon(h) for h in frame["horizon"]]
    frame["horizon"] = [h if not math.isnan(h) else (float(p[2]) if p else math.nan) for h, p in zip(horizons, parsed)]
    versions = pd.to_numeric(frame["study_version"], errors="coerce")
    frame["study_version"] = [v if not math.isnan(v) else (float(p[3]) if p else 1.0) for v, p in zip(versions, parsed)]
    is_trial = frame["run_kind"] == "trial"
    untagged = is_trial & frame["state"].isna()
    inferred = np.where(
        (frame["status"] == "FINISHED") & frame["val_auc"].notna(),
        "complete",
        np.where(frame["status"].isin(["RUNNING", "SCHEDULED"]), "incomplete", "failed"),
    )
    frame.loc[untagged, "state"] = inferred[untagged.to_numpy()]
    frame["complete"] = is_trial & (frame["state"] == "complete") & np.isfinite(frame["val_auc"])
    return frame


def trials_of(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["run_kind"] == "trial"]


def baselines_of(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["run_kind"] == "baseline") & np.isfinite(frame["val_auc"])]


def _budget_rank(name: str) -> tuple[int, int, str]:
    base = name.removeprefix("smoke-")
    return (name != base, BUDGETS.index(base) if base in BUDGETS else len(BUDGETS), name)


def budget_order(budgets: object) -> list[str]:
    """Budget groups by size, smallest first: the real budgets, then smoke stand-ins by the size
    of what they stand in for, then unknown names."""
    return sorted({str(b) for b in budgets if b}, key=_budget_rank)


def studies_in_order(frame: pd.DataFrame) -> list[str]:
    """Study names by budget size, horizon, version."""
    keys = frame.dropna(subset=["study"]).groupby("study")[["budget_group", "horizon", "study_version"]].first()
    ordered = sorted(keys.itertuples(), key=lambda r: (_budget_rank(str(r.budget_group)), r.horizon, r.study_version, r.Index))
    return [r.Index for r in ordered]


def fmt_value(value: object) -> str:
    """Parameter values as people write them: 64, 0.1, 1e-05."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return str(int(value))
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


# ----------------------------------------------------------------------------- one study


def summary_statistics(trials: pd.DataFrame) -> dict[str, object]:
    """Counts by state and source, AUC statistics over complete trials, n_heads provenance."""
    done = trials[trials["complete"]]
    auc = done["val_auc"]
    heads_source = trials["n_heads_source"].fillna("logged").where(trials["n_heads"].notna(), "missing")
    heads_source = heads_source.where(trials["n_heads_source"] != "unrecoverable", "unrecoverable")
    return {
        "trials": len(trials),
        "complete": len(done),
        "pruned": int((trials["state"] == "pruned").sum()),
        "failed": int((trials["state"] == "failed").sum()),
        "incomplete": int(trials["state"].isin(["incomplete", "running"]).sum()),
        "by_source": trials["source"].fillna("unknown").value_counts().sort_index().to_dict(),
        "complete_by_source": done["source"].fillna("unknown").value_counts().sort_index().to_dict(),
        "n_heads_source": heads_source.value_counts().sort_index().to_dict(),
        "best_auc": float(auc.max()) if len(auc) else math.nan,
        "mean_auc": float(auc.mean()) if len(auc) else math.nan,
        "median_auc": float(auc.median()) if len(auc) else math.nan,
        "std_auc": float(auc.std(ddof=1)) if len(auc) > 1 else math.nan,
        "train_hours": float(done["train_seconds"].sum() / 3600),
        "failure_kinds": _failure_kinds(trials[trials["state"] == "failed"]),
    }


def _failure_kinds(failed: pd.DataFrame) -> dict[str, int]:
    """Failed trials by `failure_kind`, else by their reason's first line (cut at 60 characters)."""
    reasons = failed["failure_reason"].fillna("unknown").map(lambda r: str(r).strip().splitlines()[0][:60] if str(r).strip() else "unknown")
    return failed["failure_kind"].where(failed["failure_kind"].notna(), reasons).value_counts().to_dict()


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The complete trial with the highest val AUC; ties go to the lowest trial number."""
    done = trials[trials["complete"]]
    if done.empty:
        return None
    top = done[done["val_auc"] == done["val_auc"].max()]
    if len(top) > 1:
        top = top.sort_values(["trial_number", "run_id"], na_position="last")
    return top.iloc[0]


def collapse_flags(trials: pd.DataFrame) -> pd.DataFrame:
    """Per complete trial: `narrow` (pred_range < 0.05, which is `collapsed`) and `one_class`
    (recall 0 or 1 at the 0.5 threshold: shown, not a collapse), each None where not logged."""
    done = trials[trials["complete"]]
    narrow = (done["pred_range"] < COLLAPSE_PRED_RANGE).astype(object).where(done["pred_range"].notna(), None)
    one_class = done["recall"].isin([0.0, 1.0]).astype(object).where(done["recall"].notna(), None)
    collapsed = narrow
    return pd.DataFrame({"narrow": narrow, "one_class": one_class, "collapsed": collapsed}, index=done.index)


@dataclass(frozen=True)
class CollapseSummary:
    checked: int  # complete trials with pred_range or recall logged
    collapsed: int
    narrow: int
    one_class: int
    mean_pred_range: float
    mean_recall: float
    best_collapsed: bool | None
    trials: pd.DataFrame  # the collapsed trials

    @property
    def detected(self) -> bool:
        return self.collapsed > 0


def collapse_summary(trials: pd.DataFrame) -> CollapseSummary:
    flags = collapse_flags(trials)
    done = trials.loc[flags.index]
    checked = flags["collapsed"].notna()
    is_collapsed = flags["collapsed"].fillna(False).astype(bool)
    best = best_trial(trials)
    best_flag = None if best is None else flags.loc[best.name, "collapsed"]
    return CollapseSummary(
        checked=int(checked.sum()),
        collapsed=int(is_collapsed.sum()),
        narrow=int(flags["narrow"].fillna(False).astype(bool).sum()),
        one_class=int(flags["one_class"].fillna(False).astype(bool).sum()),
        mean_pred_range=float(done["pred_range"].mean()) if done["pred_range"].notna().any() else math.nan,
        mean_recall=float(done["recall"].mean()) if done["recall"].notna().any() else math.nan,
        best_collapsed=None if best_flag is None else bool(best_flag),
        trials=done[is_collapsed],
    )


def eta_squared(values: pd.Series, groups: pd.Series) -> float:
    """SS_between / SS_total of `values` grouped by `groups` (rows with a missing group dropped);
    NaN with fewer than two values or no variance."""
    keep = groups.notna() & values.notna()
    y, g = values[keep].to_numpy(dtype=float), groups[keep].to_numpy()
    if len(y) < 2:
        return math.nan
    total = float(((y - y.mean()) ** 2).sum())
    if total <= 0:
        return math.nan
    between = sum(len(y[g == v]) * (y[g == v].mean() - y.mean()) ** 2 for v in np.unique(g))
    return float(between) / total


def parameter_importance(trials: pd.DataFrame, params: tuple[str, ...] = TUNED_PARAMS) -> pd.DataFrame:
    """Per parameter: eta squared of val AUC by its value, its number of values and of trials;
    most important first."""
    done = trials[trials["complete"]]
    rows = [
        {
            "param": p,
            "eta_squared": eta_squared(done["val_auc"], done[p]),
            "values": int(done[p].nunique()),
            "trials": int(done[p].notna().sum()),
        }
        for p in params
    ]
    table = pd.DataFrame(rows, columns=["param", "eta_squared", "values", "trials"])
    return table.sort_values("eta_squared", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Trend:
    param: str
    label: str  # increasing | decreasing | flat | n/a
    rho: float
    p_value: float
    table: pd.DataFrame  # value, mean, std, count (by value, ascending)

    @property
    def best(self) -> pd.Series | None:
        return None if self.table.empty else self.table.loc[self.table["mean"].idxmax()]

    @property
    def worst(self) -> pd.Series | None:
        return None if self.table.empty else self.table.loc[self.table["mean"].idxmin()]


def value_table(trials: pd.DataFrame, param: str) -> pd.DataFrame:
    """Mean, std (ddof 1; NaN for one trial) and count of val AUC per value of `param`."""
    done = trials[trials["complete"] & trials[param].notna()]
    values, auc = done[param].to_numpy(dtype=float), done["val_auc"].to_numpy(dtype=float)
    rows = []
    for value in np.unique(values):
        group = auc[values == value]
        rows.append((value, group.mean(), group.std(ddof=1) if len(group) > 1 else math.nan, len(group)))
    return pd.DataFrame(rows, columns=["value", "mean", "std", "count"])


def parameter_trend(trials: pd.DataFrame, param: str) -> Trend:
    done = trials[trials["complete"] & trials[param].notna()]
    table = value_table(trials, param)
    if len(table) < 2 or len(done) < MIN_TREND_TRIALS or done["val_auc"].nunique() < 2:
        return Trend(param, "n/a", math.nan, math.nan, table)
    result = stats.spearmanr(done[param], done["val_auc"])
    rho, p_value = float(result.statistic), float(result.pvalue)
    if p_value < TREND_ALPHA and rho > 0:
        label = "increasing"
    elif p_value < TREND_ALPHA and rho < 0:
        label = "decreasing"
    else:
        label = "flat"
    return Trend(param, label, rho, p_value, table)


def grid_values(budget: str, grid_version: int = CURRENT_GRID_VERSION) -> dict[str, list[float]]:
    """The distinct architecture values of a budget's grid (empty for an unknown budget)."""
    if budget not in BUDGETS or grid_version not in GRID_VERSIONS:
        return {}
    archs = get_architectures_for_budget(budget, grid_version=grid_version)
    return {dim: sorted({float(getattr(a, dim)) for a in archs}) for dim in ARCH_PARAMS}


def search_values(search: SearchSpace = SearchSpace()) -> dict[str, list[float]]:
    return {
        "learning_rate": list(search.learning_rates),
        "dropout": list(search.dropouts),
        "weight_decay": list(search.weight_decays),
    }


@dataclass(frozen=True)
class Coverage:
    row: str
    col: str
    counts: pd.DataFrame  # complete trials per (row value, col value); index rows, columns cols
    feasible: pd.DataFrame | None  # bool: whether the grid has an architecture in the cell

    def untried(self) -> list[tuple[float, float]]:
        counts = self.counts.to_numpy()
        feasible = np.ones_like(counts, dtype=bool) if self.feasible is None else self.feasible.to_numpy(dtype=bool)
        rows, cols = np.nonzero((counts == 0) & feasible)
        return [(float(self.counts.index[i]), float(self.counts.columns[j])) for i, j in zip(rows, cols)]


def coverage(trials: pd.DataFrame, row: str, col: str, budget: str | None = None,
             search: SearchSpace = SearchSpace()) -> Coverage:
    """Count of complete trials per combination; the axes are the budget's current grid values (or
    the search space's) together with any value a trial used outside them."""
    done = trials[trials["complete"] & trials[row].notna() & trials[col].notna()]
    known = {**search_values(search), **(grid_values(budget) if budget else {})}
    rows = sorted(set(known.get(row, [])) | set(done[row]))
    cols = sorted(set(known.get(col, [])) | set(done[col]))
    seen = Counter(zip(done[row].to_numpy(dtype=float), done[col].to_numpy(dtype=float)))
    counts = pd.DataFrame([[seen.get((r, c), 0) for c in cols] for r in rows], index=rows, columns=cols, dtype=int)
    counts.index.name, counts.columns.name = row, col
    feasible = None
    if budget in BUDGETS and row in ARCH_PARAMS and col in ARCH_PARAMS:
        cells = {(float(getattr(a, row)), float(getattr(a, col))) for a in get_architectures_for_budget(budget)}
        feasible = pd.DataFrame([[(r, c) in cells for c in cols] for r in rows], index=rows, columns=cols)
    return Coverage(row, col, counts, feasible)


def extreme_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials tagged with a forced-extreme type, by trial number, with whether the architecture is
    the one the grid's rule (models.arch_grid.forced_extremes) picks for that type."""
    tagged = trials[trials["extreme_type"].isin(EXTREME_TYPES)].sort_values(["trial_number", "run_id"])
    rows = []
    for _, t in tagged.iterrows():
        planned = _planned_extreme(t["budget"], t["grid_version"], t["extreme_type"])
        actual = (t["d_model"], t["n_layers"], t["n_heads"], t["d_ff_ratio"])
        rows.append({
            "trial": t["trial_number"], "extreme_type": t["extreme_type"], "source": t["source"], "state": t["state"],
            "val_auc": t["val_auc"], "d_model": t["d_model"], "n_layers": t["n_layers"], "n_heads": t["n_heads"],
            "d_ff_ratio": t["d_ff_ratio"],
            "as_planned": None if planned is None else all(
                a == p for a, p in zip(actual, planned) if not (isinstance(a, float) and math.isnan(a))
            ),
        })  # fmt: skip
    columns = ["trial", "extreme_type", "source", "state", "val_auc", "d_model", "n_layers", "n_heads", "d_ff_ratio", "as_planned"]
    return pd.DataFrame(rows, columns=columns)


def _planned_extreme(budget: object, grid_version: float, extreme: str) -> tuple[float, ...] | None:
    version = int(grid_version) if not math.isnan(grid_version) else CURRENT_GRID_VERSION
    if budget not in BUDGETS or version not in GRID_VERSIONS:
        return None
    arch = dict(forced_extremes(get_architectures_for_budget(budget, grid_version=version)))[extreme]
    return (float(arch.d_model), float(arch.n_layers), float(arch.n_heads), float(arch.d_ff_ratio))


@dataclass(frozen=True)
class Gaps:
    """What a study never completed, against the budget's current grid and the search space."""

    grid_version: int
    untried_values: dict[str, list[float]]  # per parameter, grid/search values with no complete trial
    archs_total: int
    archs_tried: int
    untried_archs: list[int]  # arch_idx of the grid's architectures without a complete trial
    untried_cells: list[tuple[float, float, list[int]]]  # (d_model, n_layers, arch_idx in that cell)
    untried_hparam_cells: list[tuple[float, float]]  # (learning_rate, dropout)
    hparam_cells: int


def gaps(trials: pd.DataFrame, budget: str, search: SearchSpace = SearchSpace()) -> Gaps:
    done = trials[trials["complete"]]
    known = {**grid_values(budget), **search_values(search)}
    untried_values = {
        p: [v for v in known.get(p, []) if v not in set(done[p].dropna())] for p in TUNED_PARAMS if known.get(p)
    }
    archs = get_architectures_for_budget(budget) if budget in BUDGETS else []
    shapes = {tuple(r) for r in done[list(ARCH_PARAMS)].itertuples(index=False)}
    tried = [a for a in archs if (a.d_model, a.n_layers, a.n_heads, a.d_ff_ratio) in shapes]
    cells: dict[tuple[float, float], list[int]] = {}
    for a in archs:
        cells.setdefault((float(a.d_model), float(a.n_layers)), []).append(a.arch_idx)
    layer_cov = coverage(trials, "d_model", "n_layers", budget, search)
    untried_cells = [(r, c, cells[(r, c)]) for r, c in layer_cov.untried() if (r, c) in cells]
    hparam_cov = coverage(trials, "learning_rate", "dropout", None, search)
    untried_archs = [a.arch_idx for a in archs if a not in tried]
    return Gaps(CURRENT_GRID_VERSION, untried_values, len(archs), len(tried), untried_archs, untried_cells,
                hparam_cov.untried(), hparam_cov.counts.size)  # fmt: skip


@dataclass
class StudyAnalysis:
    name: str
    budget: str  # the grid's budget (`smoke` for a smoke stand-in)
    group: str  # the budget it is compared as (`smoke-20M` for a smoke stand-in of 20M)
    horizon: int
    version: int
    summary: dict[str, object]
    best: pd.Series | None
    study_run: pd.Series | None
    collapse: CollapseSummary
    importance: pd.DataFrame
    trends: list[Trend]
    coverage: list[Coverage]
    extremes: pd.DataFrame
    gaps: Gaps
    baselines: pd.DataFrame


def analyse_study(frame: pd.DataFrame, study: str, search: SearchSpace = SearchSpace()) -> StudyAnalysis:
    runs = frame[frame["study"] == study]
    trials = trials_of(runs)
    parent = runs[runs["run_kind"] == "study"]
    first = runs.iloc[0]
    budget = str(first["budget"])
    return StudyAnalysis(
        name=study,
        budget=budget,
        group=str(first["budget_group"]),
        horizon=int(first["horizon"]) if not math.isnan(first["horizon"]) else -1,
        version=int(first["study_version"]),
        summary=summary_statistics(trials),
        best=best_trial(trials),
        study_run=parent.iloc[0] if len(parent) else None,
        collapse=collapse_summary(trials),
        importance=parameter_importance(trials),
        trends=[parameter_trend(trials, p) for p in TUNED_PARAMS],
        coverage=[coverage(trials, r, c, budget, search) for r, c in COVERAGE_PAIRS],
        extremes=extreme_table(trials),
        gaps=gaps(trials, budget, search),
        baselines=baselines_of(runs).sort_values("val_auc", ascending=False),
    )


# ----------------------------------------------------------------------------- across budgets


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
        best = with_retrained_scores(best_trial(trials), at)
        interval = None if best is None else auc_interval(best, trials, counts)
        base_interval = comparison = None
        if top_base is not None:
            base_interval = auc_interval(top_base, trials, counts)
            if interval is not None:
                if base_interval.method != "Hanley-McNeil":  # one model has no spread: borrow the trials'
                    base_interval = Interval(base_interval.auc, interval.se, f"{interval.method} (borrowed)")
                comparison = compare_aucs(interval, base_interval)
        rows.append(BudgetBest(budget, horizon, int(trials["complete"].sum()), len(trials), best, interval,
                               top_base, base_interval, comparison))  # fmt: skip
    return rows


def with_retrained_scores(best: pd.Series | None, frame: pd.DataFrame) -> pd.Series | None:
    """The selected trial, pointing at a re-training's test scores (`hpo retrain`) when it has none
    of its own: `scores_run_id` is the run whose `predictions/test.npz` the verdict reads (the trial
    itself by default), `scores_note` says where they came from. Selection stays on the trial's own
    val AUC."""
    if best is None:
        return None
    best = best.copy()
    best["scores_run_id"], best["scores_note"] = best["run_id"], ""
    tag = predictions_tag("test")
    if isinstance(best.get(tag), str) and best[tag]:
        return best
    retrained = frame[(frame["run_kind"] == "retrain") & (frame["retrain_of"] == best["run_id"])
                      & (frame["status"] == "FINISHED") & frame[tag].notna()]  # fmt: skip
    if len(retrained):
        found = retrained.sort_values("run_id").iloc[0]
        best["scores_run_id"], best[tag] = found["run_id"], found[tag]
        best["scores_note"] = f"re-trained (run {found['run_id'][:8]}, val AUC {found['val_auc']:.4f})"
    return best


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


def analyse_horizon(frame: pd.DataFrame, horizon: int, budgets: list[str], predictions: dict | None = None) -> HorizonAnalysis:
    at = frame[frame["horizon"] == horizon]
    bests = budget_bests(frame, horizon, budgets)
    base = baselines_of(at).sort_values(["val_auc", "run_id"], ascending=[False, True])
    return HorizonAnalysis(
        horizon=horizon,
        bests=bests,
        scaling=scaling_verdict(bests),
        consistency=parameter_consistency(frame, horizon, budgets),
        collapse={b: collapse_summary(trials_of(at[at["budget_group"] == b])) for b in budgets},
        baselines=base.drop_duplicates("baseline_model"),
        test=horizon_verdict(horizon, bests, predictions or {}),
    )


# ----------------------------------------------------------------------------- the plan's checklist


@dataclass(frozen=True)
class Check:
    item: str
    status: Literal["pass", "fail", "n/a"]
    evidence: str
    details: tuple[str, ...] = field(default=())


def _trial_label(t: pd.Series) -> str:
    number = fmt_value(t["trial_number"]) if not math.isnan(t["trial_number"]) else t["run_id"][:8]
    return f"{t['study']} #{number}"


def check_n_heads(frame: pd.DataFrame) -> Check:
    trials = trials_of(frame)
    item = "All trials have n_heads (logged or recovered)"
    if trials.empty:
        return Check(item, "fail", "no trial runs in MLflow")
    missing = trials[trials["n_heads"].isna() | (trials["n_heads_source"] == "unrecoverable")]
    details = []
    for study in studies_in_order(trials):
        s = summary_statistics(trials[trials["study"] == study])["n_heads_source"]
        details.append(f"{study}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    details += [f"missing: {_trial_label(t)} ({t['source']}, {t['state']})" for _, t in missing.head(20).iterrows()]
    sources = summary_statistics(trials)["n_heads_source"]
    evidence = f"{len(trials) - len(missing)} of {len(trials)} trial runs have n_heads (" + ", ".join(
        f"{k} {v}" for k, v in sources.items()) + ")"
    return Check(item, "pass" if missing.empty else "fail", evidence, tuple(details))


def _layers_check(frame: pd.DataFrame, budget: str, layers: tuple[int, ...], item: str) -> Check:
    trials = trials_of(frame[frame["budget_group"] == budget])
    horizons = sorted(int(h) for h in trials["horizon"].dropna().unique())
    if not horizons:
        return Check(item, "fail", f"no {budget} trial runs in MLflow")
    details, ok = [], True
    for h in horizons:
        at = trials[trials["horizon"] == h]
        parts = []
        for n in layers:
            done = at[at["complete"] & (at["n_layers"] == n)]
            attempted = at[at["n_layers"] == n]
            ok &= len(done) > 0
            parts.append(f"L={n}: {len(done)} complete" + (f" ({len(attempted) - len(done)} not complete)" if len(attempted) > len(done) else "")
                         + (" in " + ", ".join(sorted(set(done["study"]))) if len(done) else ""))  # fmt: skip
        details.append(f"{budget}_h{h}: " + "; ".join(parts))
    evidence = "; ".join(details)
    return Check(item, "pass" if ok else "fail", evidence, tuple(details))


def check_reruns(frame: pd.DataFrame, target: int = RERUN_TRIALS) -> Check:
    item = f"20M_h1/h3 re-runs have {target} complete trials each"
    trials = trials_of(frame[frame["budget_group"] == "20M"])
    details, ok = [], True
    for h in (1, 3):
        at = trials[trials["horizon"] == h]
        if at.empty:
            details.append(f"20M_h{h}: no study in MLflow")
            ok = False
            continue
        best = 0
        for study in studies_in_order(at):
            s = at[at["study"] == study]
            new = int((s["complete"] & (s["source"] == "hpo")).sum())
            best = max(best, new)
            stats_ = summary_statistics(s)
            pruned = f"; {stats_['pruned']} pruned, not counted" if stats_["pruned"] else ""
            details.append(f"{study}: {int(s['complete'].sum())} complete ("
                           + ", ".join(f"{k} {v}" for k, v in stats_["complete_by_source"].items()) + ")" + pruned)
        ok &= best >= target
    return Check(item, "pass" if ok else "fail", "; ".join(details), tuple(details))


def check_extremes(frame: pd.DataFrame) -> Check:
    """Each study with search trials (hpo or legacy) has the six extreme types among trial
    numbers 0-5 (a retried trial counts for the number it re-runs)."""
    item = "Every study ran its extremes in its first 6 trials"
    trials = trials_of(frame)
    searched = trials[trials["source"].isin(["hpo", "legacy"])]
    if searched.empty:
        return Check(item, "fail", "no hpo or legacy trial runs in MLflow")
    details, failing = [], []
    for study in studies_in_order(searched):
        s = searched[searched["study"] == study]
        first = s[(s["trial_number"] < 6) | (s["retry_of"] < 6)]
        found = {e for e in first["extreme_type"].dropna() if e in EXTREME_TYPES}
        missing = [e for e in EXTREME_TYPES if e not in found]
        if missing:
            failing.append(study)
            details.append(f"{study}: trials 0-5 lack {', '.join(missing)}")
        else:
            details.append(f"{study}: all six extremes in trials 0-5")
    evidence = (f"{len(details) - len(failing)} of {len(details)} studies" +
                (f"; failing: {', '.join(failing)}" if failing else ""))  # fmt: skip
    return Check(item, "pass" if not failing else "fail", evidence, tuple(details))


def verification_checklist(frame: pd.DataFrame, rerun_target: int = RERUN_TRIALS) -> list[Check]:
    """The supplemental plan's checklist, computed from the runs, with the evidence for each. In a
    store of smoke studies only (the demo), the items about real budgets are "n/a": the smoke
    ladder's small grids have no L=64 or L=160 entries, and a FAIL there would say nothing."""
    real = [
        _layers_check(frame, "2M", (64,), "2M studies tested L=64"),
        check_reruns(frame, rerun_target),
        _layers_check(frame, "20M", (160, 180), "20M studies tested L=160 and L=180"),
    ]
    if not trials_of(frame)["budget_group"].isin(REAL_BUDGETS).any() and len(trials_of(frame)):
        real = [Check(c.item, "n/a", "smoke stand-ins only: this item checks the real budgets' studies") for c in real]
    return [
        check_n_heads(frame),
        *real,
        check_extremes(frame),
        Check(
            "Trial-start log lines include n_heads",
            "n/a",
            "log lines are not in MLflow; every new trial logs n_heads as a param (see the first item)",
        ),
    ]


# ----------------------------------------------------------------------------- the campaign


@dataclass
class CampaignAnalysis:
    runs: pd.DataFrame
    studies: list[StudyAnalysis]
    horizons: list[HorizonAnalysis]
    checklist: list[Check]
    budgets: list[str]  # the budgets every cross-budget table lists, smallest first
    budgets_without_runs: list[str]


def analyse_campaign(runs: pd.DataFrame, search: SearchSpace = SearchSpace(), rerun_target: int = RERUN_TRIALS,
                     predictions: dict | None = None) -> CampaignAnalysis:  # fmt: skip
    """Everything the report shows. The cross-budget tables list every real budget (2M to 2B), so a
    budget without runs shows up as such, plus any other budget group with runs (`smoke`, smoke
    stand-ins like `smoke-20M`); a store of smoke studies only lists just those. `predictions`
    (run id -> test scores, see `with_predictions`) feed the test verdicts; without them every
    verdict is "undetermined"."""
    frame = normalise_runs(runs)
    frame = frame[frame["run_kind"].isin(["study", "trial", "baseline", "retrain"])]
    with_trials = set(trials_of(frame)["budget_group"].dropna())
    present = set(frame["budget_group"].dropna())
    real = list(REAL_BUDGETS)  # the smoke budget and the smoke ladder are listed only when they have runs
    real = real if present & set(real) or not present else []
    budgets = budget_order(real + sorted(present))
    horizons = sorted(int(h) for h in frame.loc[frame["run_kind"] != "study", "horizon"].dropna().unique())
    study_names = [s for s in studies_in_order(frame) if (trials_of(frame)["study"] == s).any()]
    return CampaignAnalysis(
        runs=frame,
        studies=[analyse_study(frame, s, search) for s in study_names],
        horizons=[analyse_horizon(frame, h, budgets, predictions) for h in horizons],
        checklist=verification_checklist(frame, rerun_target),
        budgets=budgets,
        budgets_without_runs=[b for b in budgets if b not in with_trials],
    )


def with_predictions(analysis: CampaignAnalysis, predictions: dict) -> CampaignAnalysis:
    """The test verdicts recomputed from the scores read for `verdicts.needed_predictions`."""
    for h in analysis.horizons:
        h.test = horizon_verdict(h.horizon, h.bests, predictions)
    return analysis
