"""A new study's warm start: the configuration the finished studies of its smaller budgets predict,
enqueued once as trial 6, right after the six forced extremes.

`enqueue_warm_start` runs in `store.open_study`'s creating worker only (the one whose
`create_study` succeeded, exactly like the extremes), before the study says its extremes are
enqueued, so a joining worker never asks for a trial before it is in. It reads the study
experiments of the smaller budgets at the same horizon from MLflow, predicts with
`tasks.report.hparam_scaling` (`plan_warm_start`, pure) and enqueues one trial with the Optuna user
attrs `warm_start=transfer` and `warm_start_prediction` (the prediction and its band), which
`tasks.study.trial` logs as the MLflow tag and params of the trial's run. Too few finished smaller
studies, other data or `StudyConfig.transfer=False`: a log line says why, nothing is enqueued, and
trial 6 is the sampler's as before.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient

from models.arch_grid import Architecture
from schemas.config import SearchSpace, StudyConfig, StudySpec
from schemas.tracking import ARCH_PARAMS, TAG_WARM_START, WARM_START_TRANSFER
from tasks.report.hparam_scaling import hparam_scaling, smaller_budgets
from tasks.report.mlflow_io import runs_frame
from tasks.report.study import search_values
from tasks.report.table import normalise_runs
from tasks.study.space import FactoredGrid, arch_params
from tasks.tracking.runs import search_all_runs, study_experiments

log = logging.getLogger("hpo")

ATTR_WARM_START = TAG_WARM_START  # trial user attr: "transfer" on the warm-start trial
ATTR_WARM_START_PREDICTION = "warm_start_prediction"  # trial user attr: the params its MLflow run logs


@dataclass(frozen=True)
class WarmStartPlan:
    """The configuration the smaller budgets predict for a new study: its grid entry, the three
    hyperparameters snapped to the searched values, and what was predicted before snapping."""

    arch: Architecture
    arch_from: str  # "trend": nearest grid entry to the fitted architecture trend; "central": the grid's centre
    hparams: dict[str, float]
    predicted: dict[str, tuple[float, float, float]]  # param -> (value, 2.5%, 97.5%), natural units
    readings: dict[str, str]
    sources: tuple[str, ...]  # the source studies, smallest budget first

    def mlflow_params(self) -> dict[str, str]:
        """The prediction and its band, as the params of the trial's MLflow run."""
        params = {"warm_start_sources": ",".join(self.sources), "warm_start_arch": self.arch_from}
        for p, (value, low, high) in self.predicted.items():
            params.update({f"warm_start_{p}": f"{value:.4g}", f"warm_start_{p}_low": f"{low:.4g}",
                           f"warm_start_{p}_high": f"{high:.4g}"})  # fmt: skip
            if p in self.readings:
                params[f"warm_start_{p}_reading"] = self.readings[p]
        return params


def central_architecture(grid: list[Architecture]) -> Architecture:
    """The grid entry nearest the log-midpoint of every dimension."""
    factored = FactoredGrid(grid)
    return factored.nearest({d: math.sqrt(factored.distributions[d].low * factored.distributions[d].high) for d in factored.free})


def plan_warm_start(frame: pd.DataFrame, budget: str, horizon: int, grid: list[Architecture],
                    search: dict[str, tuple[float, ...]], include_legacy: bool = False,
                    fingerprint: str | None = None) -> WarmStartPlan | str:  # fmt: skip
    """What the finished studies of the budgets below `budget` at `horizon` predict for it, or why
    nothing is predicted (no smaller budget, fewer than two finished studies, other datasets).

    The architecture: each dimension's line of log10(value) against log10(parameters) over the
    sources' near-optimal trials, at the grid's median parameter count, moved to the nearest grid
    entry (`FactoredGrid.nearest`); the grid's central entry when a line cannot be fitted. The
    hyperparameters at that entry's parameter count: on the line where the reading is "trend",
    else the mean of the budgets' optima (a slope the data do not support would add only its
    noise), then snapped to the nearest searched value."""
    smaller = smaller_budgets(budget)
    if len(smaller) < 2:
        below = f"only {smaller[0]} below it" if smaller else "no smaller budget"
        return f"{budget} has {below} on its ladder; a warm start needs finished studies of two smaller budgets"
    scaling = hparam_scaling(frame, horizon, smaller, search, include_legacy, fingerprint)
    if scaling.refused:
        return scaling.refused
    if len(scaling.bands) < 2:
        used = {b.budget for b in scaling.bands}
        found = ", ".join(f"{b.budget} ({b.study})" for b in scaling.bands) or "none"
        notes = f" ({'; '.join(scaling.skipped)})" if scaling.skipped else ""
        return (f"needs finished studies of at least two smaller budgets at h{horizon}; found {found}; "
                f"missing {', '.join(b for b in smaller if b not in used)}{notes}")  # fmt: skip
    factored = FactoredGrid(grid)
    target = float(np.log10(np.median([a.params for a in grid])))
    arch_fits = {f.param: f for f in scaling.arch_fits}
    if all(d in arch_fits and not math.isnan(arch_fits[d].slope) for d in factored.free):
        arch, arch_from = factored.nearest({d: 10 ** arch_fits[d].predict(target)[0] for d in factored.free}), "trend"
    else:
        arch, arch_from = central_architecture(grid), "central"
    at = float(np.log10(arch.params))
    hparams, predicted, readings = {}, {}, {}
    for fit in scaling.fits:
        unit, low, high = fit.predict(at, trend=fit.reading == "trend")
        hparams[fit.param] = fit.scale.snap(unit, tuple(search[fit.param]))
        predicted[fit.param] = (fit.scale.value(unit), fit.scale.value(low), fit.scale.value(high))
        readings[fit.param] = fit.reading
    return WarmStartPlan(arch, arch_from, hparams, predicted, readings, tuple(b.study for b in scaling.bands))


def source_runs(client: MlflowClient, budgets: list[str], horizon: int) -> pd.DataFrame:
    """The runs of the study experiments of `budgets` at `horizon`, as the report's runs table."""
    experiments = {e.experiment_id: e.name for spec, e in study_experiments(client)
                   if spec.budget in budgets and spec.horizon == horizon}  # fmt: skip
    if not experiments:
        return normalise_runs(pd.DataFrame({"run_kind": pd.Series(dtype=object)}))
    return normalise_runs(runs_frame(search_all_runs(client, list(experiments)), experiments))


def enqueue_warm_start(study: optuna.Study, spec: StudySpec, config: StudyConfig, search: SearchSpace,
                       grid: list[Architecture], arch_space: str, client: MlflowClient, fingerprint: str) -> bool:  # fmt: skip
    """Enqueue the predicted configuration as the study's next trial (6, after the extremes); False
    (and a log line saying why) when there is nothing to predict from or transfer is off."""
    name = study.study_name
    if not config.transfer:
        log.info("%s: no warm start (transfer=False)", name)
        return False
    if not smaller_budgets(spec.budget):  # the smallest budget of its ladder, or `smoke`: nothing to say
        return False
    try:
        values = {p: tuple(v) for p, v in search_values(search).items()}
        runs = source_runs(client, smaller_budgets(spec.budget), spec.horizon)
        plan = plan_warm_start(runs, spec.budget, spec.horizon, grid, values, config.transfer_from_legacy, fingerprint)
    except Exception as exc:  # noqa: BLE001 - a warm start is an extra trial; the study goes on without it
        log.warning("%s: no warm start: the smaller budgets' studies could not be read (%s: %s)", name, type(exc).__name__, exc)
        return False
    if isinstance(plan, str):
        log.info("%s: no warm start: %s", name, plan)
        return False
    study.enqueue_trial({**arch_params(arch_space, plan.arch), **plan.hparams},
                        user_attrs={ATTR_WARM_START: WARM_START_TRANSFER, ATTR_WARM_START_PREDICTION: plan.mlflow_params()})
    arch = ", ".join(f"{d}={getattr(plan.arch, d)}" for d in ARCH_PARAMS)
    hp = ", ".join(f"{k}={v:g}" for k, v in plan.hparams.items())
    log.info("%s: warm start from %s: %s (%s, %s params), %s", name, ", ".join(plan.sources), arch, plan.arch_from,
             f"{plan.arch.params:,}", hp)  # fmt: skip
    return True
