"""The runs table every report module reads: one row per MLflow run, typed and with each run's
study identity filled in, plus the orders the report lists studies and budgets in.

- Complete trial: a `run_kind=trial` run tagged `state=complete` (or, untagged, FINISHED) with a
  finite `val_auc`. Every statistic of the report is over complete trials; failed, pruned
  (`state=pruned`: stopped early by the study's pruner), unverified (`state=unverified`: a legacy
  trial its grid contradicts, tagged `verified=false` with its `unverified_reason`) and incomplete
  trials are counted, never averaged, so neither a pruned nor an unverified trial is ever in a
  best-per-budget table. A trial tagged `verified=false` is unverified whatever its state tag says
  (FINISHED with a val AUC is not enough). Baselines
  (`run_kind=baseline`) are never trials, nor are the seeds a configuration was trained again with
  (`run_kind=confirm`, `run_kind=retrain`): those are read as seeds of their trial (`budgets.seed_runs`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from models.arch_grid import BUDGETS
from schemas.config import StudySpec
from schemas.names import horizon_or_none
from schemas.tracking import (
    PARAM_TRAIN_TICKER_DAYS,
    PARAM_TRAIN_WINDOWS,
    PREDICTION_SPLITS,
    SEED_METRICS,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    STATE_UNVERIFIED,
    TAG_CONFIRM_OF,
    TAG_DATASET,
    TAG_DATASET_FINGERPRINT,
    TAG_SEED_INDEX,
    TAG_SELECTED_BY,
    TAG_STUDY_STATE,
    TAG_UNVERIFIED_REASON,
    TAG_WARM_START,
    TAG_VERIFIED,
    TRIAL_PARAMS,
    predictions_tag,
)

_NUMERIC = tuple(p for p in TRIAL_PARAMS if p not in ("budget", "horizon")) + (
    "val_auc", "test_auc", "val_loss", "best_epoch", "pred_min", "pred_max", "pred_range", "recall",
    "epochs", "train_seconds", "samples_per_s", "peak_memory_mb",
    "best_val_auc", "best_test_auc", "n_complete", "n_failed", "n_pruned",
    "val_n_pos", "val_n_neg", "test_n_pos", "test_n_neg",
    "trial_number", "retry_of", TAG_SEED_INDEX, TAG_BEST_TRIAL, *SEED_METRICS,
    PARAM_TRAIN_WINDOWS, PARAM_TRAIN_TICKER_DAYS,
)  # fmt: skip
_TEXT = (
    "run_id", "experiment", "run_name", "status", "run_kind", "source", "study", "budget",
    "extreme_type", "state", "failure_reason", "failure_kind", "n_heads_source", "baseline_model", "supplemental_id",
    "retrain_of", TAG_CONFIRM_OF, TAG_BEST_RUN_ID, TAG_SELECTED_BY, *(predictions_tag(split) for split in PREDICTION_SPLITS),
    TAG_VERIFIED, TAG_UNVERIFIED_REASON, TAG_DATASET_FINGERPRINT, TAG_DATASET, TAG_STUDY_STATE, TAG_WARM_START,
)  # fmt: skip
# Every state a trial row ends with (`state`): complete | failed | pruned | unverified | incomplete.
STATES: tuple[str, ...] = ("complete", "failed", "pruned", STATE_UNVERIFIED, "incomplete")


def _parse_study(name: object) -> tuple[str, str, int, int] | None:
    """(budget, budget group, horizon, version) of a study name; the group of a smoke stand-in
    (`smoke-20M_h5`) is `smoke-20M`, of any other study its budget."""
    try:
        spec = StudySpec.parse(str(name))
    except ValueError:
        return None
    group = f"smoke-{spec.smoke_of}" if spec.smoke_of else spec.budget
    return spec.budget, group, spec.horizon, spec.version or 1


def _horizon(tagged: object, parsed: tuple[str, str, int, int] | None) -> float:
    """The run's horizon tag (`h1`, `1`), else its study name's; NaN (the column is float) without either."""
    horizon = horizon_or_none(tagged)
    if horizon is None and parsed:
        horizon = parsed[2]
    return math.nan if horizon is None else float(horizon)


def normalise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Typed columns (numbers as float, text as object), every expected column present, and the
    study identity (`study`, `budget`, `horizon`, `study_version`) filled from the experiment name
    where a tag is missing; adds `complete` (bool). A trial without a state tag gets one from its
    status (FINISHED with a val AUC: complete); one tagged `verified=false` is `unverified`. Idempotent."""
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
    frame["horizon"] = [_horizon(h, p) for h, p in zip(frame["horizon"], parsed)]
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
    contradicted = is_trial & (frame[TAG_VERIFIED].astype(str).str.lower() == "false")
    frame.loc[contradicted, "state"] = STATE_UNVERIFIED
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
