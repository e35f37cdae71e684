"""Re-training one recorded configuration, to score it on the test split.

A budget's selected configuration sometimes has no test scores: it was recovered from legacy logs
(which hold an AUC, not scores), or it is a supplemental trial (no study evaluates those on test).
The report's verdict for that horizon is then "undetermined", and it names this command as the
fill: train the same architecture with the same learning rate, dropout and weight decay on the
same prepared data, score the validation and test splits, and log both as predictions on a new
run tagged `retrain_of=<the selected run>`.

The selected run itself is left as it was recorded (its val AUC is what selected it); the report
reads the retrained run's test scores in its place and says so. Selection stays on the original
validation figure, so re-training cannot change which configuration a budget is judged by; a
retrained model differs from the original by its seed, which the report's Methods section states.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from models.arch_grid import CURRENT_GRID_VERSION, Architecture, explicit_architecture
from schemas import tracking as T
from schemas.config import HpoConfig, StudySpec
from schemas.trial import TrialRequest
from tasks.data.dataset import cached_dataset, dataset_record
from tasks.study.confirm import SEED_STRIDE
from tasks.study.tracked_run import RunTarget, TestScoring, run_tracked, trial_params
from tasks.tracking.datasets import pin_dataset
from tasks.tracking.runs import embedded_store_missing, ensure_study_run, mlflow_client, search_all_runs

log = logging.getLogger("hpo")


RETRAIN_SEED_OFFSET = 500_009


class RetrainRefused(ValueError):
    """The run cannot be re-trained as asked (unknown study or trial, missing parameters)."""


@dataclass
class RetrainResult:
    study: str
    trial: str
    state: str  # complete | failed | skipped
    detail: str
    run_id: str | None = None
    val_auc: float | None = None
    test_auc: float | None = None
    seed_index: int = 0


def find_trial_run(client: MlflowClient, study: str, trial: str) -> Run:
    """The finished, complete trial run `study #trial` (an Optuna or legacy trial number, or a
    supplemental id such as S2)."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise RetrainRefused(f"no MLflow experiment {study!r}; the report's 'Test scores' table names the study and trial to re-train")
    runs = search_all_runs(
        client, [experiment.experiment_id],
        f"tags.{T.TAG_RUN_KIND} = 'trial' and tags.{T.TAG_TRIAL_NUMBER} = '{trial}' and attributes.status = 'FINISHED'",
    )  # fmt: skip
    complete = [r for r in runs if r.data.tags.get(T.TAG_STATE, "complete") == "complete" and "val_auc" in r.data.metrics]
    unverified = [r for r in runs if r.data.tags.get(T.TAG_STATE) == T.STATE_UNVERIFIED]
    if not complete and unverified:
        reason = unverified[0].data.tags.get(T.TAG_UNVERIFIED_REASON)
        raise RetrainRefused(f"{study} #{trial} is an unverified legacy trial ({reason}), never a candidate; recover it "
                             "again with the grid its arch_idx refer to (hpo recover --grid or --grid-version)")
    if not complete:
        raise RetrainRefused(f"{study} has no complete trial #{trial}; check the trial number in the report")
    return max(complete, key=lambda r: r.info.start_time or 0)  # a retried trial: its last attempt


def recorded_architecture(run: Run, num_features: int) -> tuple[str, Architecture, dict[str, float]]:
    """(budget, architecture for F = `num_features`, lr/dropout/wd) as the run's params record them;
    refused when the run records another F (it read other features than this data's)."""
    params = run.data.params
    missing = [k for k in ("budget", "d_model", "n_layers", "n_heads", "d_ff", *T.HPARAMS) if params.get(k) in (None, "", "None")]
    if missing:
        raise RetrainRefused(
            f"run {run.info.run_id} does not record {', '.join(missing)}: its configuration cannot be re-trained "
            "(a legacy trial whose n_heads was unrecoverable stays without test scores)"
        )
    recorded_f = params.get(T.PARAM_NUM_FEATURES)
    if recorded_f not in (None, "") and int(recorded_f) != num_features:
        raise RetrainRefused(
            f"run {run.info.run_id} was trained on {recorded_f} features per day, this data has {num_features}; "
            "re-train it on its study's data (the same --data, --features, --label)"
        )
    budget = params["budget"]
    d_model, n_layers, n_heads, d_ff = (int(float(params[k])) for k in ("d_model", "n_layers", "n_heads", "d_ff"))
    arch = explicit_architecture(budget, d_model, n_layers, n_heads, d_ff, num_features)
    return budget, arch, {k: float(params[k]) for k in T.HPARAMS}


def existing_retrain(client: MlflowClient, experiment_id: str, run_id: str, seed_index: int = 0) -> Run | None:
    """A finished re-training of `run_id` with this seed index that logged its test scores (a run
    from before seed indices counts as seed 0)."""
    runs = search_all_runs(
        client, [experiment_id],
        f"tags.{T.TAG_RETRAIN_OF} = '{run_id}' and attributes.status = 'FINISHED'",
    )  # fmt: skip
    done = [r for r in runs if r.data.tags.get(T.predictions_tag("test"))
            and int(r.data.tags.get(T.TAG_SEED_INDEX, "0")) == seed_index]
    return done[0] if done else None


def refuse_a_missing_store(uri: str) -> None:
    """An embedded store that is not there holds no trial to re-train: refused before opening it
    (opening an SQLite store creates it, and a mistyped --root would leave an empty one behind)."""
    if embedded_store_missing(uri):
        raise RetrainRefused(f"no MLflow store at {uri}, so no trial to re-train; give the --root (or --tracking-uri) "
                             "the study ran with")  # fmt: skip


def retrain(config: HpoConfig, study: str, trial: str, seed_index: int = 0) -> RetrainResult:
    """Re-train `study #trial`'s configuration on the configured data, log its val and test scores
    on a new `retrain` run; skipped when a finished re-training with test scores exists. A smoke
    stand-in study is re-trained with the smoke settings it was trained with. Seed index i trains
    with the configured seed + RETRAIN_SEED_OFFSET + i * SEED_STRIDE (no study trial's seed), so `retrain_seeds` gives a recorded configuration
    several seeds, like a study's confirmation."""
    refuse_a_missing_store(config.stores.mlflow_uri)
    client = mlflow_client(config.stores)
    selected = find_trial_run(client, study, trial)
    experiment_id = selected.info.experiment_id
    done = existing_retrain(client, experiment_id, selected.info.run_id, seed_index)
    if done is not None:
        return RetrainResult(study, trial, "skipped", "already re-trained", done.info.run_id,
                             done.data.metrics.get("val_auc"), done.data.metrics.get("test_auc"))  # fmt: skip
    try:
        spec = StudySpec.parse(study)
    except ValueError as exc:
        raise RetrainRefused(f"{study!r} is not a study name (BUDGET_hH[_vN]): {exc}") from None
    if spec.smoke_of or spec.budget == "smoke":
        config = config.smoke()
    budget, arch, hparams = recorded_architecture(selected, config.data.num_features)
    # never a seed a study trial (base + number) or a confirmation (+ i * stride) trained with
    seed = config.train.seed + RETRAIN_SEED_OFFSET + seed_index * SEED_STRIDE
    config = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
    data, dataset_path = cached_dataset(config.data, spec.horizon, config.stores.cache_dir)  # bad input: nothing written
    parent = ensure_study_run(client, experiment_id, study=study, budget=spec.budget, horizon=spec.horizon,
                              version=spec.version or 1, source="retrain", smoke_of=spec.smoke_of)  # fmt: skip
    pin_dataset(client, parent, study, dataset_record(config.data, data))  # the study's data, or refused
    target = RunTarget(
        experiment_id=experiment_id, parent_run_id=parent, study=study, run_kind="retrain", source="retrain",
        name=T.trial_run_label(trial, arch, hparams, suffix=" retrained" + (f" seed {seed_index}" if seed_index else "")),
        tags={T.TAG_RETRAIN_OF: selected.info.run_id, T.TAG_BUDGET: budget, T.TAG_HORIZON: spec.horizon,
              T.TAG_TRIAL_NUMBER: trial, T.TAG_SEED_INDEX: seed_index},
        params=trial_params(budget, spec.horizon, CURRENT_GRID_VERSION, arch, hparams, config.train.batch_size, seed),
    )  # fmt: skip
    request = TrialRequest(trial_number=-1, dataset_path=dataset_path, window=config.data.window, arch=arch,
                           train=config.train, checkpoint_path=config.stores.checkpoint_dir(study) / f"retrain_{trial}.pt",
                           **hparams)  # fmt: skip
    scoring = TestScoring(client, request, config.study.stall_timeout_s)
    tracked = run_tracked(client, target, request, config.data, stall_timeout_s=config.study.stall_timeout_s,
                          on_started=lambda run_id: log.info("Re-training %s #%s (%s parameters) as run %s", study, trial,
                                                             f"{arch.params:,}", run_id),
                          before_end=scoring)  # fmt: skip
    run_id, outcome = tracked.run_id, tracked.outcome
    if not outcome.complete and scoring.val_auc is not None:  # trained, then the test evaluation failed
        return RetrainResult(study, trial, "failed", outcome.reason or "test evaluation failed", run_id, scoring.val_auc)
    if not outcome.complete:
        return RetrainResult(study, trial, "failed", f"{outcome.failure_kind}: {outcome.reason}", run_id)
    val_auc, test_auc = float(outcome.result["val_auc"]), scoring.test_auc
    recorded = selected.data.metrics["val_auc"]
    detail = f"val AUC {val_auc:.4f} (recorded {recorded:.4f}), test AUC {test_auc:.4f}"
    if not math.isclose(val_auc, recorded, abs_tol=0.02):
        log.warning("Re-trained %s #%s scores val AUC %.4f against the recorded %.4f: the seed (or data) differs", study, trial, val_auc, recorded)
    return RetrainResult(study, trial, "complete", detail, run_id, val_auc, test_auc)


def retrain_seeds(config: HpoConfig, study: str, trial: str, seeds: int = 1) -> list[RetrainResult]:
    """`hpo retrain STUDY TRIAL --seeds N`: the recorded configuration trained with N seeds (seed
    indices 0..N-1; those already re-trained are skipped), so a legacy budget's verdict can carry
    seed noise like a confirmed study's."""
    if seeds < 1:
        raise RetrainRefused(f"--seeds {seeds}: give 1 or more seeds")
    return [replace(retrain(config, study, trial, seed_index), seed_index=seed_index) for seed_index in range(seeds)]
