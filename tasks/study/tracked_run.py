"""The one recipe for a run that trains: an MLflow run, its dataset input, the trial process, the outcome.

Every kind of training run goes through `run_tracked`: an hpo trial (tasks.study.trial), a
supplemental entry (tasks.study.supplemental), a re-training (tasks.study.retrain), and any kind
to come. What differs between them is an argument, not a copy:
- `RunTarget`: which experiment and study run it belongs to, its kind, source, name, tags and params;
- `on_started(run_id)`: an hpo trial keeps the run id on its Optuna trial;
- `on_event`, `heartbeat`, `should_stop`: an hpo trial reports epochs to Optuna, beats its
  heartbeat and may be pruned;
- `before_end(run_id, outcome)`: what happens between the process's end and the run's end (an hpo
  trial tells Optuna first; a re-training scores the test split). It may return another outcome to
  end the run with (a re-training whose test evaluation failed ends failed);
- `discard_checkpoint`: the weights are dropped afterwards, unless the caller keeps them (an hpo
  trial's best weights are kept for the study's test evaluation).

Trial processes are started here only (tests/test_layout.py): `run_tracked` to train, and
`evaluate_in_process` to score saved weights on a split (a study's test evaluation, a re-training's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from models.arch_grid import Architecture
from schemas import tracking as T
from schemas.config import DataConfig
from schemas.trial import TrialRequest
from tasks.study.trial_process import TrialOutcome, run_trial_process
from tasks.tracking.datasets import log_dataset_input, prepared_dataset_entity
from tasks.tracking.predictions import log_scores_file, scores_path
from tasks.tracking.runs import end_run, log_batch, start_run


@dataclass(frozen=True)
class RunTarget:
    """Where a tracked run goes and what it says about itself."""

    experiment_id: str
    parent_run_id: str
    study: str
    run_kind: str  # trial | retrain (schemas.tracking.TAG_RUN_KIND)
    source: str  # hpo | supplemental | retrain (schemas.tracking.TAG_SOURCE)
    name: str
    tags: dict[str, object] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackedRun:
    """The run a recipe made and what its trial process did (the outcome it ended with)."""

    run_id: str
    outcome: TrialOutcome


def trial_params(budget: str, horizon: int, grid_version: int, arch: Architecture, hparams: dict,
                 batch_size: int | str, seed: int) -> dict:
    """The params of every training run (schemas.tracking.TRIAL_PARAMS), whatever its kind."""
    return {
        "budget": budget,
        "horizon": horizon,
        "grid_version": grid_version,
        **arch.as_dict(),
        **{k: hparams[k] for k in T.HPARAMS},
        "batch_size": batch_size,
        "seed": seed,
    }


def log_epoch(client: MlflowClient, run_id: str, event: dict) -> None:
    """Per-epoch metrics of a trial process's `epoch` event (step = epoch)."""
    if event["event"] == "epoch":
        metrics = {T.EPOCH_METRIC_NAMES[k]: v for k, v in event.items() if k in T.EPOCH_METRIC_NAMES}
        log_batch(client, run_id, metrics=metrics, step=int(event["epoch"]))


def end_trial_run(client: MlflowClient, run_id: str, outcome: TrialOutcome) -> None:
    """Close a training run with its outcome: final metrics, where it was pruned, or the failure
    and its reason. A pruned run logs no final val_auc: it is no complete trial."""
    if outcome.complete:
        final = {k: outcome.result[k] for k in T.FINAL_METRICS if k in outcome.result}
        end_run(client, run_id, "complete", {T.TAG_DEVICE: outcome.result.get("device", "unknown")}, metrics=final)
    elif outcome.pruned:
        end_run(client, run_id, "pruned", {T.TAG_LAST_EPOCH: outcome.last_epoch},
                metrics={"epochs": outcome.last_epoch, "train_seconds": outcome.seconds})
    elif outcome.interrupted:
        end_run(client, run_id, "interrupted", {T.TAG_LAST_EPOCH: outcome.last_epoch, T.TAG_FAILURE_REASON: outcome.reason or ""})
    else:
        reason = (outcome.reason or "")[:4000]
        end_run(client, run_id, "failed", {T.TAG_FAILURE_KIND: outcome.failure_kind or "error", T.TAG_FAILURE_REASON: reason})


def start_tracked_run(client: MlflowClient, target: RunTarget, data: DataConfig, request: TrialRequest) -> str:
    """The MLflow run of a training run, state running, with its params and its dataset input."""
    run_id = start_run(
        client, target.experiment_id, run_kind=target.run_kind, source=target.source, name=target.name,
        study=target.study, parent_run_id=target.parent_run_id, tags={**target.tags, T.TAG_STATE: "running"},
        params=target.params,
    )
    log_dataset_input(client, run_id, prepared_dataset_entity(request.dataset_path, data))
    return run_id


def run_tracked(
    client: MlflowClient,
    target: RunTarget,
    request: TrialRequest,
    data: DataConfig,
    *,
    stall_timeout_s: float | None,
    on_started: Callable[[str], None] | None = None,
    on_event: Callable[[dict], None] | None = None,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_interval_s: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
    before_end: Callable[[str, TrialOutcome], TrialOutcome | None] | None = None,
    discard_checkpoint: bool = True,
) -> TrackedRun:
    """Start the run, train in a trial process, end the run with its outcome; never raises for
    the trial's own failures (they are the outcome)."""
    started = time.monotonic()
    run_id = start_tracked_run(client, target, data, request)
    if on_started is not None:
        on_started(run_id)

    def forward(event: dict) -> None:
        log_epoch(client, run_id, event)
        if on_event is not None:
            on_event(event)

    try:
        outcome = run_trial_process(
            request, on_event=forward, heartbeat=heartbeat, heartbeat_interval_s=heartbeat_interval_s,
            stall_timeout_s=stall_timeout_s, should_stop=should_stop,
        )
        ended_with = (before_end(run_id, outcome) if before_end is not None else None) or outcome
        end_trial_run(client, run_id, ended_with)
        log_batch(client, run_id, metrics=outcome.time_split(time.monotonic() - started))
    finally:
        if discard_checkpoint:
            for leftover in (request.checkpoint_path, scores_path(request.checkpoint_path, "val"),
                             scores_path(request.checkpoint_path, "test")):
                leftover.unlink(missing_ok=True)
    return TrackedRun(run_id, ended_with)


def evaluate_in_process(request: TrialRequest, split: str, stall_timeout_s: float | None) -> TrialOutcome:
    """Score saved weights on a split in a trial process (it trains nothing, so no run of its own):
    the weights at `request.checkpoint_path`, the scores written beside them."""
    return run_trial_process(request.model_copy(update={"mode": "evaluate", "split": split}), stall_timeout_s=stall_timeout_s)


class TestScoring:
    """A `before_end` for runs scored on test too (a re-training, a confirmation seed): once the
    run has trained, its val scores are logged, its weights scored on the test split and those
    scores logged; a failure there ends the run failed ("test evaluation: ...")."""

    def __init__(self, client: MlflowClient, request: TrialRequest, stall_timeout_s: float | None):
        self.client, self.request, self.stall_timeout_s = client, request, stall_timeout_s
        self.val_auc: float | None = None
        self.test_auc: float | None = None

    def __call__(self, run_id: str, trained: TrialOutcome) -> TrialOutcome | None:
        if not trained.complete:
            return None
        self.val_auc = float(trained.result["val_auc"])
        log_scores_file(self.client, run_id, scores_path(self.request.checkpoint_path, "val"))
        evaluation = evaluate_in_process(self.request, "test", self.stall_timeout_s)
        if not evaluation.complete or not log_scores_file(self.client, run_id, scores_path(self.request.checkpoint_path, "test")):
            reason = evaluation.reason if not evaluation.complete else "the test scores could not be logged"
            return TrialOutcome("failed", failure_kind=evaluation.failure_kind or "error", reason=f"test evaluation: {reason}")
        self.test_auc = float(evaluation.result["auc"])
        log_batch(self.client, run_id, metrics={"test_auc": self.test_auc})
        return None
