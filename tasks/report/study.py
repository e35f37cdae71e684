"""One study's numbers: counts, the best trial, collapse, parameter importance and trends, coverage
of the grid and the search space, the forced extremes and what was never tried. Pure functions
over the trials of one study in the runs table (`tasks.report.table`).

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
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from models.arch_grid import (
    BUDGETS,
    CURRENT_GRID_VERSION,
    EXTREME_TYPES,
    GRID_VERSIONS,
    forced_extremes,
    get_architectures_for_budget,
)
from schemas.config import SearchSpace
from schemas.tracking import (
    ARCH_PARAMS,
    HPARAMS,
    STATE_UNVERIFIED,
    TAG_DATASET,
    TAG_DATASET_FINGERPRINT,
    TAG_UNVERIFIED_REASON,
    trial_run_name,
)
from tasks.report.table import baselines_of, fmt_value, trials_of

COLLAPSE_PRED_RANGE = 0.05
TREND_ALPHA = 0.05
MIN_TREND_TRIALS = 4

TUNED_PARAMS: tuple[str, ...] = ARCH_PARAMS + HPARAMS
COVERAGE_PAIRS: tuple[tuple[str, str], ...] = (("d_model", "n_layers"), ("d_model", "n_heads"), ("learning_rate", "dropout"))


@dataclass(frozen=True)
class StudySummary:
    """Counts by state and source, AUC statistics over complete trials, n_heads provenance."""

    trials: int
    complete: int
    pruned: int
    failed: int
    unverified: int  # legacy trials their grid contradicts: never complete, never selected
    incomplete: int  # incomplete or still running
    by_source: dict[str, int]
    complete_by_source: dict[str, int]
    n_heads_source: dict[str, int]  # logged | recovered | unrecoverable | missing
    best_auc: float
    mean_auc: float
    median_auc: float
    std_auc: float
    train_hours: float  # of the complete trials
    failure_kinds: dict[str, int]
    unverified_trials: tuple[str, ...] = ()  # `20M_h5 #12: <unverified_reason>`, by trial number


def summary_statistics(trials: pd.DataFrame) -> StudySummary:
    done = trials[trials["complete"]]
    auc = done["val_auc"]
    heads_source = trials["n_heads_source"].fillna("logged").where(trials["n_heads"].notna(), "missing")
    heads_source = heads_source.where(trials["n_heads_source"] != "unrecoverable", "unrecoverable")
    return StudySummary(
        trials=len(trials),
        complete=len(done),
        pruned=int((trials["state"] == "pruned").sum()),
        failed=int((trials["state"] == "failed").sum()),
        unverified=int((trials["state"] == STATE_UNVERIFIED).sum()),
        incomplete=int(trials["state"].isin(["incomplete", "running"]).sum()),
        by_source=trials["source"].fillna("unknown").value_counts().sort_index().to_dict(),
        complete_by_source=done["source"].fillna("unknown").value_counts().sort_index().to_dict(),
        n_heads_source=heads_source.value_counts().sort_index().to_dict(),
        best_auc=float(auc.max()) if len(auc) else math.nan,
        mean_auc=float(auc.mean()) if len(auc) else math.nan,
        median_auc=float(auc.median()) if len(auc) else math.nan,
        std_auc=float(auc.std(ddof=1)) if len(auc) > 1 else math.nan,
        train_hours=float(done["train_seconds"].sum() / 3600),
        failure_kinds=_failure_kinds(trials[trials["state"] == "failed"]),
        unverified_trials=unverified_trials(trials),
    )


def unverified_trials(trials: pd.DataFrame) -> tuple[str, ...]:
    """`STUDY #N: <reason>` per unverified trial (`state=unverified`), by trial number."""
    found = trials[trials["state"] == STATE_UNVERIFIED].sort_values(["trial_number", "run_id"], na_position="last")
    return tuple(f"{trial_run_name(t['study'], fmt_value(t['trial_number']))}: {t[TAG_UNVERIFIED_REASON] or 'no reason recorded'}"
                 for _, t in found.iterrows())  # fmt: skip


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


@dataclass(frozen=True)
class StudyDataset:
    """The dataset a study pinned on its run (tags `dataset_fingerprint` and `dataset`); a study
    without them (legacy-only, or made before datasets were pinned) has `fingerprint` None."""

    study: str
    fingerprint: str | None
    record: dict | None  # the `dataset` tag's JSON record; None when absent or unreadable

    @property
    def recorded(self) -> bool:
        return self.fingerprint is not None

    def describe(self) -> str:
        """`fingerprint 3f2a... (file ..., F 25, label ..., window 60, h1, splits ...)`, or "dataset not recorded"."""
        if not self.recorded:
            return "dataset not recorded"
        r = self.record or {}
        features = r.get("features")
        count = len(features) if isinstance(features, list) else r.get("num_features")
        parts = [f"file {r['source']}" if "source" in r else "",
                 f"F {count}" if count is not None else "",
                 f"label {r['label']}" if "label" in r else "",
                 f"window {r['window']}" if "window" in r else "",
                 f"h{r['horizon']}" if "horizon" in r else "",
                 ", ".join(f"{k} {v}" for k, v in r["split_dates"].items()) if isinstance(r.get("split_dates"), dict) else ""]
        parts = [p for p in parts if p]
        return f"fingerprint {self.fingerprint}" + (f" ({'; '.join(parts)})" if parts else " (no dataset record)")


def study_dataset(study: str, study_run: pd.Series | None) -> StudyDataset:
    """The dataset pinned on `study_run` (None: no study run, so not recorded)."""
    fingerprint = None if study_run is None else study_run.get(TAG_DATASET_FINGERPRINT)
    if not isinstance(fingerprint, str) or not fingerprint:
        return StudyDataset(study, None, None)
    try:
        record = json.loads(study_run.get(TAG_DATASET) or "")
    except ValueError:
        record = None
    return StudyDataset(study, fingerprint, record if isinstance(record, dict) else None)


@dataclass
class StudyAnalysis:
    name: str
    budget: str  # the grid's budget (`smoke` for a smoke stand-in)
    group: str  # the budget it is compared as (`smoke-20M` for a smoke stand-in of 20M)
    horizon: int
    version: int
    summary: StudySummary
    best: pd.Series | None
    study_run: pd.Series | None
    collapse: CollapseSummary
    importance: pd.DataFrame
    trends: list[Trend]
    coverage: list[Coverage]
    extremes: pd.DataFrame
    gaps: Gaps
    baselines: pd.DataFrame
    dataset: StudyDataset


def analyse_study(frame: pd.DataFrame, study: str, search: SearchSpace = SearchSpace()) -> StudyAnalysis:
    runs = frame[frame["study"] == study]
    trials = trials_of(runs)
    parent = runs[runs["run_kind"] == "study"]
    first = runs.iloc[0]
    budget = str(first["budget"])
    study_run = parent.iloc[0] if len(parent) else None
    return StudyAnalysis(
        name=study,
        budget=budget,
        group=str(first["budget_group"]),
        horizon=int(first["horizon"]) if not math.isnan(first["horizon"]) else -1,
        version=int(first["study_version"]),
        summary=summary_statistics(trials),
        best=best_trial(trials),
        study_run=study_run,
        collapse=collapse_summary(trials),
        importance=parameter_importance(trials),
        trends=[parameter_trend(trials, p) for p in TUNED_PARAMS],
        coverage=[coverage(trials, r, c, budget, search) for r, c in COVERAGE_PAIRS],
        extremes=extreme_table(trials),
        gaps=gaps(trials, budget, search),
        baselines=baselines_of(runs).sort_values("val_auc", ascending=False),
        dataset=study_dataset(study, study_run),
    )

