"""How the optimal hyperparameters move with the parameter budget, at one horizon, and the
configuration they predict for the next budget. Pure: the runs table in (`tasks.report.table`),
dataclasses out. `tasks.study.warm_start` turns it into a new study's first transferred trial.

- Sources: per budget, the finished study (study run `study_state=complete`; an imported legacy
  study once its import FINISHED) holding the budget's selected configuration
  (`budgets.selected_trial`). A legacy study (every complete trial `source=legacy`) has no dataset
  fingerprint: it counts only with `include_legacy` and is marked. Budgets whose studies pinned
  different dataset fingerprints are never fitted together (`refused` says which and what differs).
- Near-optimal band of a study: its complete trials whose val AUC is within
  Z95 * sqrt(2) * sd of its best, i.e. not distinguishable from the best at 95%. sd is one run's
  noise: the pooled seed sd of the val AUCs of the configurations trained again with other seeds
  (`run_kind=confirm` / `retrain` runs of the study's trials) where there are any, else the best
  trial's Hanley-McNeil SE (or the top-k spread, `budgets.auc_interval`).
- The optimum of a budget is the mean over its near-optimal configurations (`configurations`:
  distinct (learning_rate, dropout, weight_decay) triples, each once, so the six forced extremes,
  which all train at the central values, count once) of log10(value) for learning_rate and
  weight_decay (a weight decay of 0 counts as a decade below the smallest positive value
  searched), of the value for dropout. Fit: least squares of the optimum on log10(parameters)
  over budgets, a budget's parameters being the mean log10 count of those configurations. Band:
  2.5% and 97.5% over bootstrap resamples of the near-optimal configurations within each budget
  (each resample redraws every budget's optimum and parameters, then refits).
- Leave-one-budget-out: each budget's optimum predicted by the line through the others (needs
  three budgets), with how far off it was and whether the prediction's band meets the budget's.
- Reading: "trend" when the slope's band excludes 0; "consistent" when it includes 0, every
  budget's band shares a value and the slope's band allows less than one step of the searched
  values across the budgets' range; "no evidence" otherwise (fewer than two budgets, a budget with
  fewer than MIN_NEAR near-optimal configurations, or a band too wide to tell).
- Data regime: training windows and unique ticker-days per parameter (study run params
  `train_windows`, `train_ticker_days`); a budget is deep in the data-limited regime when its
  ticker-days per parameter are DATA_LIMITED_FACTOR times below the ~20 tokens per parameter of
  compute-optimal language models (Hoffmann et al. 2022), one ticker-day counted as one token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from models.arch_grid import BUDGET_BANDS, REAL_BUDGETS
from schemas.tracking import (
    ARCH_PARAMS,
    HPARAMS,
    PARAM_TRAIN_TICKER_DAYS,
    PARAM_TRAIN_WINDOWS,
    TAG_CONFIRM_OF,
    TAG_RETRAIN_OF,
    TAG_STUDY_STATE,
    TAG_WARM_START,
    WARM_START_TRANSFER,
)
from tasks.data.dataset import dataset_differences
from tasks.report.budgets import auc_interval, class_counts, selected_trial
from tasks.report.study import StudyDataset, study_dataset
from tasks.report.table import trials_of

Z95 = 1.959963984540054
RESAMPLES = 1000
MIN_NEAR = 2  # near-optimal configurations a budget needs for its band to have a measured spread
LOG_SCALED = ("learning_rate", "weight_decay")  # fitted as log10(value); dropout as its value
TOKENS_PER_PARAM = 20  # compute-optimal language models (Chinchilla)
DATA_LIMITED_FACTOR = 100


# ----------------------------------------------------------------------------- scales and sources


@dataclass(frozen=True)
class Scale:
    """Where a parameter is fitted: log10 (a 0 at `floor`) or its value."""

    log: bool
    floor: float = math.nan

    def units(self, values: object) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        return np.log10(np.where(v > 0, v, self.floor)) if self.log else v

    def value(self, unit: float) -> float:
        return float(10**unit) if self.log else float(unit)

    def snap(self, unit: float, candidates: tuple[float, ...]) -> float:
        """The searched value nearest to `unit` (in fit units)."""
        return float(candidates[int(np.argmin(np.abs(self.units(candidates) - unit)))])

    def step(self, candidates: tuple[float, ...]) -> float:
        """The median gap between neighbouring searched values, in fit units (NaN with one value)."""
        units = np.unique(self.units(candidates))
        return float(np.median(np.diff(units))) if len(units) > 1 else math.nan


def scale_of(param: str, candidates: tuple[float, ...]) -> Scale:
    if param not in LOG_SCALED and param not in ARCH_PARAMS:
        return Scale(False)
    positive = [c for c in candidates if c > 0]
    return Scale(True, min(positive) / 10 if positive else 1e-12)


def smaller_budgets(budget: str) -> list[str]:
    """The budgets below `budget` on its own ladder, smallest first: the real budgets below a real
    one, the smoke ladder's stand-ins below a stand-in (`smoke-200M` -> smoke-2M, smoke-20M); none
    for `smoke`, whose band spans the whole ladder."""
    ladder = list(REAL_BUDGETS) if budget in REAL_BUDGETS else [f"smoke-{b}" for b in REAL_BUDGETS]
    if budget not in ladder:
        return []
    return [b for b in ladder if BUDGET_BANDS[b][1] < BUDGET_BANDS[budget][0]]


def finished_studies(at: pd.DataFrame) -> set[str]:
    """Studies whose study run says they are finished: `study_state=complete` (hpo), or an imported
    legacy study's run FINISHED."""
    runs = at[at["run_kind"] == "study"]
    state = runs[TAG_STUDY_STATE] if TAG_STUDY_STATE in runs.columns else pd.Series(None, index=runs.index, dtype=object)
    done = (state == "complete") | ((runs["source"] == "legacy") & (runs["status"] == "FINISHED"))
    return set(runs.loc[done, "study"].dropna())


# ----------------------------------------------------------------------------- one budget's band


@dataclass(frozen=True)
class Noise:
    sd: float  # one run's val AUC noise
    method: str  # "seed sd of k configurations, n runs", "Hanley-McNeil", "top-k spread", "none"


def study_noise(at: pd.DataFrame, trials: pd.DataFrame, counts: tuple[float, float]) -> Noise:
    """The pooled seed sd of the study's configurations trained with more seeds, else the best
    complete trial's val AUC SE (`budgets.auc_interval`)."""
    done = trials[trials["complete"]]
    seeds = at[at["run_kind"].isin(["confirm", "retrain"]) & (at["status"] == "FINISHED")
               & np.isfinite(at["val_auc"]) & (at["state"] != "failed")]  # fmt: skip
    of = seeds[TAG_CONFIRM_OF].where(seeds["run_kind"] == "confirm", seeds[TAG_RETRAIN_OF])
    squares, dof, configurations = 0.0, 0, 0
    for run_id, group in seeds.groupby(of):
        trial = done[done["run_id"] == run_id]
        if trial.empty:
            continue
        values = np.r_[trial["val_auc"].iloc[0], group["val_auc"].to_numpy(dtype=float)]
        squares += float(((values - values.mean()) ** 2).sum())
        dof += len(values) - 1
        configurations += 1
    if dof:
        return Noise(math.sqrt(squares / dof), f"seed sd of {configurations} configurations, {dof + configurations} runs")
    best = done.loc[done["val_auc"].idxmax()]
    interval = auc_interval(best, done, counts)
    return Noise(interval.se, interval.method)


@dataclass(frozen=True)
class BudgetBand:
    """A budget's near-optimal trials: its source study's complete trials within the noise of its best."""

    budget: str
    study: str
    legacy: bool  # from imported legacy trials: no dataset fingerprint
    complete: int
    best_auc: float
    threshold: float  # the band's lower edge in val AUC
    noise: Noise
    near: pd.DataFrame  # the near-optimal trials
    dataset: StudyDataset

    @property
    def log_params(self) -> float:
        return float(np.log10(self.near["params"].to_numpy(dtype=float)).mean())


def budget_band(at: pd.DataFrame, budget: str, study: str, counts: tuple[float, float], include_legacy: bool = True) -> BudgetBand:
    trials = trials_of(at[at["study"] == study])
    done = trials[trials["complete"] & trials["params"].notna()]
    legacy = bool((done["source"] == "legacy").all())
    done = done if include_legacy else done[done["source"] != "legacy"]
    noise = study_noise(at, done, counts)
    best = float(done["val_auc"].max())
    threshold = best - Z95 * math.sqrt(2) * noise.sd if not math.isnan(noise.sd) else best
    runs = at[(at["run_kind"] == "study") & (at["study"] == study)]
    dataset = study_dataset(study, runs.iloc[0] if len(runs) else None)
    near = done[done["val_auc"] >= threshold - 1e-12]
    return BudgetBand(budget, study, legacy, len(done), best, threshold, noise, near, dataset)


# ----------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class LeaveOneOut:
    budget: str
    predicted: float  # fit units (decades for a log-scaled parameter)
    low: float
    high: float
    observed: float
    observed_low: float
    observed_high: float

    @property
    def error(self) -> float:
        return self.predicted - self.observed

    @property
    def within(self) -> bool:
        """Whether the prediction's band meets the budget's own band."""
        return self.low <= self.observed_high and self.observed_low <= self.high


@dataclass(frozen=True)
class ParamFit:
    """One parameter's optimum per budget and its line against log10(parameters)."""

    param: str
    scale: Scale
    budgets: tuple[str, ...]
    x: np.ndarray  # (k,) log10 parameters
    y: np.ndarray  # (k,) optimum in fit units
    y_low: np.ndarray  # (k,) bootstrap 2.5% / 97.5%
    y_high: np.ndarray
    near: tuple[int, ...]  # near-optimal configurations per budget
    slope: float = math.nan  # fit units per tenfold parameters
    intercept: float = math.nan
    slope_low: float = math.nan
    slope_high: float = math.nan
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))  # (B, 2) bootstrap slopes, intercepts
    boot_y: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # (B, k) bootstrap optima
    step: float = math.nan  # one step of the searched values, fit units
    loo: tuple[LeaveOneOut, ...] = ()
    reading: str = "no evidence"  # consistent | trend | no evidence
    why: str = ""

    def predict(self, x: float, trend: bool = True) -> tuple[float, float, float]:
        """(value, 2.5%, 97.5%) in fit units at log10 parameters x: on the line, or (trend=False)
        the mean of the budgets' optima, which is the better guess when no slope is in evidence."""
        if not trend or math.isnan(self.slope):
            draws = self.boot_y.mean(axis=1) if self.boot_y.size else np.array([self.y.mean()])
            return float(self.y.mean()), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))
        lines = self.draws[:, 1] + self.draws[:, 0] * x
        return self.intercept + self.slope * x, float(np.percentile(lines, 2.5)), float(np.percentile(lines, 97.5))


def _ols_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of each row of y (B, k) on the same row of x (B, k)."""
    xc = x - x.mean(axis=1, keepdims=True)
    slope = (xc * (y - y.mean(axis=1, keepdims=True))).sum(axis=1) / (xc**2).sum(axis=1)
    return slope, y.mean(axis=1) - slope * x.mean(axis=1)


def configurations(near: pd.DataFrame, param: str) -> pd.DataFrame:
    """The near-optimal trials as distinct configurations, each counted once: of the three
    hyperparameters for a hyperparameter, of the architecture for an architecture dimension. The
    six forced extremes share one hyperparameter configuration (the central one): counted as six
    trials they would pull every small study's optimum to the centre by design, not by evidence.
    A configuration's parameters: the mean log10 count of its trials."""
    keys = list(ARCH_PARAMS if param in ARCH_PARAMS else HPARAMS)
    frame = near.assign(log_params=np.log10(near["params"].to_numpy(dtype=float)))
    return frame.groupby(keys, dropna=False, sort=True).agg(log_params=("log_params", "mean")).reset_index()


def fit_param(bands: list[BudgetBand], param: str, candidates: tuple[float, ...],
              resamples: int = RESAMPLES, seed: int = 0) -> ParamFit:  # fmt: skip
    """The optimum of `param` per budget, its line, bootstrap band, leave-one-out and reading."""
    scale = scale_of(param, candidates)
    rng = np.random.default_rng(seed)  # the same seed for every parameter: the same resamples of trials
    k = len(bands)
    configs = [configurations(b.near, param) for b in bands]
    units = [scale.units(c[param].to_numpy(dtype=float)) for c in configs]
    logs = [c["log_params"].to_numpy(dtype=float) for c in configs]
    boot_x, boot_y = np.empty((resamples, k)), np.empty((resamples, k))
    for j, (u, lx) in enumerate(zip(units, logs)):
        idx = rng.integers(0, len(u), (resamples, len(u)))
        boot_x[:, j], boot_y[:, j] = lx[idx].mean(axis=1), u[idx].mean(axis=1)
    x, y = np.array([lx.mean() for lx in logs]), np.array([u.mean() for u in units])
    base = dict(param=param, scale=scale, budgets=tuple(b.budget for b in bands), x=x, y=y,
                y_low=np.percentile(boot_y, 2.5, axis=0), y_high=np.percentile(boot_y, 97.5, axis=0),
                near=tuple(len(u) for u in units), boot_y=boot_y, step=scale.step(candidates))  # fmt: skip
    if k < 2:
        return ParamFit(**base, why=f"{k} budget{'s' if k != 1 else ''} with a finished study: a fit needs at least 2")
    slope, intercept = _ols_rows(x[None, :], y[None, :])
    slopes, intercepts = _ols_rows(boot_x, boot_y)
    fitted = ParamFit(**base, slope=float(slope[0]), intercept=float(intercept[0]),
                      slope_low=float(np.percentile(slopes, 2.5)), slope_high=float(np.percentile(slopes, 97.5)),
                      draws=np.stack([slopes, intercepts], axis=1), loo=_leave_one_out(x, y, boot_x, boot_y, base))  # fmt: skip
    reading, why = _reading(fitted)
    return replace(fitted, reading=reading, why=why)


def _leave_one_out(x, y, boot_x, boot_y, base) -> tuple[LeaveOneOut, ...]:
    if len(x) < 3:
        return ()
    found = []
    for j in range(len(x)):
        keep = np.arange(len(x)) != j
        slope, intercept = _ols_rows(x[None, keep], y[None, keep])
        slopes, intercepts = _ols_rows(boot_x[:, keep], boot_y[:, keep])
        lines = intercepts + slopes * x[j]
        found.append(LeaveOneOut(base["budgets"][j], float(intercept[0] + slope[0] * x[j]), float(np.percentile(lines, 2.5)),
                                 float(np.percentile(lines, 97.5)), float(y[j]), float(base["y_low"][j]),
                                 float(base["y_high"][j])))  # fmt: skip
    return tuple(found)


def _reading(fit: ParamFit) -> tuple[str, str]:
    thin = [b for b, n in zip(fit.budgets, fit.near) if n < MIN_NEAR]
    band = f"slope {fit.slope:+.3g} per tenfold parameters, 95% band [{fit.slope_low:+.3g}, {fit.slope_high:+.3g}]"
    if thin:
        return "no evidence", f"{', '.join(thin)}: fewer than {MIN_NEAR} near-optimal configurations, so its band is not measured"
    if fit.slope_low > 0 or fit.slope_high < 0:
        return "trend", f"{band} excludes 0"
    span = float(fit.x.max() - fit.x.min())
    allowed = max(abs(fit.slope_low), abs(fit.slope_high)) * span
    common = float(fit.y_low.max()) <= float(fit.y_high.min())
    if common and (math.isnan(fit.step) or allowed <= fit.step):
        return "consistent", f"{band} includes 0 and the budgets' bands share a value"
    if not common:
        return "no evidence", f"{band} includes 0, yet the budgets' bands share no value"
    return "no evidence", (f"{band} includes 0 but allows a change of {allowed:.2g} across the budgets, more than one "
                           f"step of the searched values ({fit.step:.2g})")  # fmt: skip


# ----------------------------------------------------------------------------- the horizon


@dataclass(frozen=True)
class DataRegime:
    budget: str
    study: str
    params: float  # the median parameter count of the budget's complete trials
    train_windows: float  # NaN: not recorded (a study made before the count was logged, legacy)
    ticker_days: float

    @property
    def days_per_param(self) -> float:
        return self.ticker_days / self.params

    @property
    def data_limited(self) -> bool:
        return self.days_per_param * DATA_LIMITED_FACTOR < TOKENS_PER_PARAM


@dataclass(frozen=True)
class WarmStartRank:
    """Where a warm-start trial (`warm_start=transfer`) ranked among its study's complete trials."""

    study: str
    trial: int
    state: str
    val_auc: float
    rank: int  # 1 = best; 0 when not complete
    complete: int
    near_optimal: bool | None  # within its study's near-optimal band (None: the study is no source here)
    values: dict[str, float]  # learning_rate, dropout, weight_decay it trained with
    predicted: dict[str, tuple[float, float, float]]  # param -> (value, 2.5%, 97.5%) before snapping (its run's params)


@dataclass
class HparamScaling:
    horizon: int
    bands: list[BudgetBand]
    fits: list[ParamFit]  # learning_rate, dropout, weight_decay
    arch_fits: list[ParamFit]  # d_model, n_layers, n_heads, d_ff_ratio (the warm start's architecture)
    skipped: list[str]  # "BUDGET: why it is not a source"
    refused: str  # why no fit: budgets on different datasets ("" when fitted)
    regime: list[DataRegime]
    warm_starts: list[WarmStartRank]


def _dataset_refusal(bands: list[BudgetBand]) -> str:
    recorded = [b for b in bands if b.dataset.recorded]
    if len({b.dataset.fingerprint for b in recorded}) < 2:
        return ""
    first = recorded[0].dataset
    what = [f"{b.study} vs {first.study}: " + ("; ".join(dataset_differences(first.record, b.dataset.record))
                                               if first.record and b.dataset.record else "no dataset record to compare")
            for b in recorded[1:] if b.dataset.fingerprint != first.fingerprint]  # fmt: skip
    named = ", ".join(f"{b.study} ({b.budget}) on {b.dataset.fingerprint}" for b in recorded)
    return f"not fitted across budgets trained on different datasets: {named} ({'; '.join(what)})"


def hparam_scaling(frame: pd.DataFrame, horizon: int, budgets: list[str], values: dict[str, tuple[float, ...]] | None = None,
                   include_legacy: bool = True, fingerprint: str | None = None,
                   resamples: int = RESAMPLES, seed: int = 0) -> HparamScaling:  # fmt: skip
    """The scaling of the optimal hyperparameters over `budgets` (smallest first) at a horizon.
    `values`: the searched values per parameter (default: those the trials used), for the weight
    decay's 0, the step a reading is judged against and the warm start's snapping. `fingerprint`:
    only studies on this dataset are sources (the warm start's: the new study's dataset)."""
    at = frame[frame["horizon"] == horizon]
    finished = finished_studies(at)
    counts = class_counts(frame, horizon)
    bands, skipped = [], []
    for budget in budgets:
        trials = trials_of(at[at["budget_group"] == budget])
        done = trials[trials["complete"] & trials["params"].notna()]
        if done.empty:
            continue
        pool = done[done["study"].isin(finished)]
        if pool.empty:
            unfinished = ", ".join(sorted(set(done["study"])))
            skipped.append(f"{budget}: no finished study at h{horizon} ({unfinished} not finished)")
            continue
        if not include_legacy and (pool["source"] == "legacy").all():
            skipped.append(f"{budget}: imported legacy trials only, whose dataset is not recorded "
                           "(transfer_from_legacy=True counts them)")  # fmt: skip
            continue
        pick = selected_trial(pool if include_legacy else pool[pool["source"] != "legacy"], at)
        band = budget_band(at, budget, str(pick["study"]), counts, include_legacy)
        if fingerprint and band.dataset.recorded and band.dataset.fingerprint != fingerprint:
            skipped.append(f"{budget}: {band.study} was trained on dataset {band.dataset.fingerprint}, not {fingerprint}")
            continue
        bands.append(band)
    refused = _dataset_refusal(bands)
    used = [] if refused else bands
    seen = trials_of(at)
    candidates = {p: tuple((values or {}).get(p) or sorted(set(seen[p].dropna()))) for p in HPARAMS + ARCH_PARAMS}
    fits = [fit_param(used, p, candidates[p] or (0.0,), resamples, seed) for p in HPARAMS] if used else []
    arch = [fit_param(used, p, candidates[p] or (1.0,), resamples, seed) for p in ARCH_PARAMS] if used else []
    return HparamScaling(horizon, bands, fits, arch, skipped, refused, data_regime(at, budgets), warm_start_ranks(at, bands))


def data_regime(at: pd.DataFrame, budgets: list[str]) -> list[DataRegime]:
    """Per budget with complete trials: its parameters and its latest study's training data."""
    found = []
    for budget in budgets:
        done = trials_of(at[at["budget_group"] == budget])
        done = done[done["complete"] & done["params"].notna()]
        if done.empty:
            continue
        runs = at[(at["run_kind"] == "study") & (at["budget_group"] == budget)].sort_values("study_version")
        recorded = runs[runs[PARAM_TRAIN_WINDOWS].notna()] if PARAM_TRAIN_WINDOWS in runs.columns else runs.iloc[:0]
        study = recorded.iloc[-1] if len(recorded) else None
        found.append(DataRegime(
            budget, str(study["study"]) if study is not None else str(done["study"].iloc[0]), float(done["params"].median()),
            float(study[PARAM_TRAIN_WINDOWS]) if study is not None else math.nan,
            float(study[PARAM_TRAIN_TICKER_DAYS]) if study is not None else math.nan,
        ))  # fmt: skip
    return found


def warm_start_ranks(at: pd.DataFrame, bands: list[BudgetBand]) -> list[WarmStartRank]:
    if TAG_WARM_START not in at.columns:
        return []
    tagged = trials_of(at[at[TAG_WARM_START] == WARM_START_TRANSFER]).sort_values(["study", "trial_number"])
    by_study = {b.study: b for b in bands}
    found = []
    for _, t in tagged.iterrows():
        done = trials_of(at[at["study"] == t["study"]])
        done = done[done["complete"]]
        rank = int((done["val_auc"] > t["val_auc"]).sum()) + 1 if t["complete"] else 0
        band = by_study.get(t["study"])
        near = None if band is None or not t["complete"] else bool(t["val_auc"] >= band.threshold - 1e-12)
        predicted = {p: tuple(_number(t.get(f"warm_start_{p}{end}")) for end in ("", "_low", "_high")) for p in HPARAMS}
        found.append(WarmStartRank(str(t["study"]), int(t["trial_number"]), str(t["state"]), float(t["val_auc"]), rank,
                                   len(done), near, {p: float(t[p]) for p in HPARAMS}, predicted))  # fmt: skip
    return found


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
