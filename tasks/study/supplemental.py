"""Supplemental trials: fixed architectures that fill coverage gaps of a finished main study.

They run with the best learning rate, dropout and weight decay of the main study of the same
budget and horizon (read from MLflow, so imported legacy studies count as main studies), land in
that study's MLflow experiment tagged source=supplemental, and are not Optuna trials: they never
count toward the study's n_trials. Each is validated against the budget band first; one outside
it is refused with its exact count and the band.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from models.arch_grid import (
    CURRENT_GRID_VERSION,
    ArchitectureOutOfBudget,
    explicit_architecture,
    validate_architecture,
)
from schemas import tracking as T
from schemas.config import HpoConfig, StudySpec
from schemas.trial import TrialRequest
from tasks.data.dataset import cached_dataset, dataset_record
from tasks.study.tracked_run import RunTarget, run_tracked, trial_params
from tasks.tracking.datasets import pin_dataset
from tasks.tracking.runs import ensure_study_run, get_or_create_experiment, mlflow_client, search_all_runs, study_experiments

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class SupplementalEntry:
    id: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int


@dataclass(frozen=True)
class SupplementalPlan:
    budget: str
    horizons: tuple[int, ...]
    entries: tuple[SupplementalEntry, ...]


# The user's supplemental test plan (shared/seeds: "HPO Supplemental Test Plan", 2025-12-13).
PLANS: dict[str, SupplementalPlan] = {
    "2M-L64": SupplementalPlan(
        budget="2M",
        horizons=(1, 3, 5),
        entries=(
            SupplementalEntry("S1", 64, 64, 8, 128),
            SupplementalEntry("S2", 64, 64, 4, 128),
            SupplementalEntry("S3", 64, 64, 2, 128),
        ),
    ),
    "20M-h5-L160-180": SupplementalPlan(
        budget="20M",
        horizons=(5,),
        entries=(
            SupplementalEntry("S1", 128, 160, 8, 256),
            SupplementalEntry("S2", 128, 160, 4, 256),
            SupplementalEntry("S3", 128, 160, 8, 512),  # the plan expected ~25M; it has 31.7M: refused
            SupplementalEntry("S4", 128, 180, 8, 256),
            SupplementalEntry("S5", 128, 180, 4, 256),
        ),
    ),
}

# Under the smoke switch each plan keeps its shape on its budget's smoke-ladder band: the
# deepest, narrowest stand-ins the band holds, the same spread of n_heads, and for 20M one entry
# deliberately outside the band, like S3 (d_ff 128: 22,033 parameters against smoke-20M's 13,000).
SMOKE_PLANS: dict[str, SupplementalPlan] = {
    "2M-L64": SupplementalPlan(
        budget="smoke-2M",
        horizons=(1, 3, 5),
        entries=(
            SupplementalEntry("S1", 8, 6, 4, 16),
            SupplementalEntry("S2", 8, 6, 2, 16),
            SupplementalEntry("S3", 8, 6, 1, 16),
        ),
    ),
    "20M-h5-L160-180": SupplementalPlan(
        budget="smoke-20M",
        horizons=(5,),
        entries=(
            SupplementalEntry("S1", 16, 4, 2, 32),
            SupplementalEntry("S2", 16, 4, 1, 32),
            SupplementalEntry("S3", 16, 4, 2, 128),
            SupplementalEntry("S4", 16, 5, 2, 32),
            SupplementalEntry("S5", 16, 5, 1, 32),
        ),
    ),
}


def plan_for(name: str, smoke: bool = False) -> SupplementalPlan:
    plans = SMOKE_PLANS if smoke else PLANS
    if name not in plans:
        raise ValueError(f"unknown supplemental plan {name!r}; choose one of {', '.join(plans)}")
    return plans[name]


def main_study_spec(plan: SupplementalPlan, horizon: int, smoke_of: str | None) -> StudySpec:
    return StudySpec(budget=plan.budget, horizon=horizon, smoke_of=smoke_of)


def latest_experiment(client: MlflowClient, spec: StudySpec):
    """The newest version's experiment of a study (`20M_h5_v2` over `20M_h5`), or None."""
    candidates = [(found.version or 1, experiment) for found, experiment in study_experiments(client)
                  if found.base_name == spec.base_name]
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def best_hyperparameters(client: MlflowClient, experiment_id: str) -> tuple[dict[str, float], str]:
    """lr, dropout, weight decay of the best complete trial (hpo or legacy) and its run id."""
    runs = search_all_runs(
        client,
        [experiment_id],
        f"tags.{T.TAG_RUN_KIND} = 'trial' and tags.{T.TAG_STATE} = 'complete' and attributes.status = 'FINISHED'",
    )
    runs = [r for r in runs if r.data.tags.get(T.TAG_SOURCE) in ("hpo", "legacy") and "val_auc" in r.data.metrics]
    if not runs:
        raise LookupError("no complete trial")
    best = max(runs, key=lambda r: r.data.metrics["val_auc"])
    return {k: float(best.data.params[k]) for k in T.HPARAMS}, best.info.run_id


@dataclass
class SupplementalResult:
    study: str
    id: str
    state: str  # complete | failed | refused | skipped
    detail: str
    val_auc: float | None = None


def run_plan(plan: SupplementalPlan, config: HpoConfig, smoke_of: str | None = None) -> list[SupplementalResult]:
    """Every entry of the plan for every horizon; entries already complete are skipped."""
    client = mlflow_client(config.stores)
    results = []
    for horizon in plan.horizons:
        spec = main_study_spec(plan, horizon, smoke_of)
        experiment = latest_experiment(client, spec)
        if experiment is None:
            raise LookupError(
                f"no main study {spec.base_name} in MLflow ({config.stores.mlflow_uri}); run it first "
                f"(`hpo run {spec.budget} h{horizon}`) or import its legacy log (`hpo recover ... --import-mlflow`)"
            )
        try:
            hparams, best_run = best_hyperparameters(client, experiment.experiment_id)
        except LookupError:
            raise LookupError(f"main study {experiment.name} has no complete trial yet; let it finish first") from None
        for entry in plan.entries:
            results.append(_run_entry(client, config, spec, experiment.name, entry, hparams, best_run))
    return results


def _existing(client: MlflowClient, experiment_id: str, entry_id: str) -> bool:
    runs = search_all_runs(
        client,
        [experiment_id],
        f"tags.{T.TAG_SOURCE} = 'supplemental' and tags.{T.TAG_SUPPLEMENTAL_ID} = '{entry_id}' and attributes.status = 'FINISHED'",
    )
    return bool(runs)


def _run_entry(client, config, spec, study, entry, hparams, best_run) -> SupplementalResult:
    try:
        params = validate_architecture(spec.budget, entry.d_model, entry.n_layers, entry.n_heads, entry.d_ff,
                                       config.data.num_features)
    except ArchitectureOutOfBudget as refusal:
        log.warning("Supplemental %s %s refused: %s", study, entry.id, refusal)
        return SupplementalResult(study, entry.id, "refused", str(refusal))
    experiment_id = get_or_create_experiment(client, study, config.stores.artifact_root)
    if _existing(client, experiment_id, entry.id):
        return SupplementalResult(study, entry.id, "skipped", "already complete")

    arch = explicit_architecture(spec.budget, entry.d_model, entry.n_layers, entry.n_heads, entry.d_ff,
                                 config.data.num_features)
    data, dataset_path = cached_dataset(config.data, spec.horizon, config.stores.cache_dir)  # bad input: nothing written
    parent = ensure_study_run(
        client, experiment_id, study=study, budget=spec.budget, horizon=spec.horizon,
        version=StudySpec.parse(study).version or 1, source="supplemental", smoke_of=spec.smoke_of,
    )
    pin_dataset(client, parent, study, dataset_record(config.data, data))  # the main study's data, or refused
    target = RunTarget(
        experiment_id=experiment_id, parent_run_id=parent, study=study, run_kind="trial", source="supplemental",
        name=T.trial_run_label(entry.id, arch, hparams),
        tags={
            T.TAG_SUPPLEMENTAL_ID: entry.id,
            T.TAG_BUDGET: spec.budget,
            T.TAG_HORIZON: spec.horizon,
            T.TAG_TRIAL_NUMBER: entry.id,
            T.TAG_EXTREME_TYPE: "none",
            T.TAG_HPARAMS_FROM_RUN: best_run,
        },
        params=trial_params(spec.budget, spec.horizon, CURRENT_GRID_VERSION, arch, hparams, config.train.batch_size,
                            config.train.seed),
    )
    log.info(
        "Supplemental %s %s: d_model=%d, n_layers=%d, n_heads=%d, d_ff=%d, params=%s, lr=%g, dropout=%g, weight_decay=%g",
        study, entry.id, arch.d_model, arch.n_layers, arch.n_heads, arch.d_ff, f"{params:,}",
        hparams["learning_rate"], hparams["dropout"], hparams["weight_decay"],
    )
    request = TrialRequest(
        trial_number=-1, dataset_path=dataset_path, window=config.data.window, arch=arch, train=config.train,
        checkpoint_path=config.stores.checkpoint_dir(study) / f"supplemental_{entry.id}.pt", **hparams,
    )
    outcome = run_tracked(client, target, request, config.data, stall_timeout_s=config.study.stall_timeout_s).outcome
    if outcome.complete:
        return SupplementalResult(study, entry.id, "complete", f"{params:,} parameters", outcome.result["val_auc"])
    return SupplementalResult(study, entry.id, "failed", f"{outcome.failure_kind}: {outcome.reason}")
