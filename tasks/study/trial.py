"""One hpo trial: a claimed Optuna trial trained through the tracked-run recipe, its outcome told to Optuna.

`run_trial(handle, number)` reads the claim the study loop made (the architecture and the three
hyperparameters the sampler drew, kept on the Optuna trial), trains it in a child process as one
MLflow run (`tasks.study.tracked_run`), and records the outcome: Optuna first (the source of truth
for progress), then MLflow; `store.reconcile_runs` repairs a crash between the two.

- Pruning (opt-in): every trial reports each epoch's val AUC to its Optuna trial; a trial the
  pruner gives up on is stopped within one epoch (its process is terminated), told PRUNED, and its
  MLflow run ends KILLED with state=pruned and its last epoch. The forced extremes report (they
  are the pruner's yardstick) but are never pruned.
- The trial runs in a child process (tasks.study.trial_process): diverged, OOM, crashed and hung
  trials are failed with their reason in Optuna and MLflow, and the study goes on.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from models.arch_grid import Architecture
from schemas import tracking as T
from schemas.trial import TrialRequest
from tasks.study import checkpoints, space
from tasks.study.progress import TrialProgress, current_progress
from tasks.study.space import ATTR_EXTREME
from tasks.study.store import (
    ATTR_ARCHITECTURE,
    ATTR_FAILURE_KIND,
    ATTR_FAILURE_REASON,
    ATTR_MLFLOW_RUN,
    ATTR_REQUEUED_FROM,
    INTERRUPTED,
    WORKER_STOPPED,
    StudyHandle,
)
from tasks.study.trial_process import TrialOutcome
from tasks.study.warm_start import ATTR_WARM_START, ATTR_WARM_START_PREDICTION
from tasks.study.tracked_run import RunTarget, TrackedRun, run_tracked, trial_params
from tasks.tracking.predictions import log_scores_file, scores_path

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class Claim:
    """A trial this worker claimed: its number and what the sampler drew for it."""

    number: int
    arch: Architecture
    hparams: dict[str, float]


@dataclass(frozen=True)
class TrialResult:
    """What a study loop learns from one trial (a failed trial is a result, not an exception)."""

    state: str  # complete | pruned | failed
    val_auc: float | None = None
    failure: str | None = None


def claimed(handle: StudyHandle, number: int) -> Claim:
    """The claim of a running trial as its claimer recorded it: the architecture (kept on the trial
    when it was claimed, with its grid version) and the drawn hyperparameters; a trial claimed by an
    older version without the attribute is read from its params."""
    frozen = handle.storage.get_trial(handle.storage.get_trial_id_from_study_id_trial_number(handle.study._study_id, number))
    recorded = frozen.user_attrs.get(ATTR_ARCHITECTURE)
    if recorded:
        arch = Architecture(**{k: v for k, v in recorded.items() if k != "grid_version"})
    else:
        arch = space.trial_architecture(handle.arch_space, handle.grid, frozen.params)
    return Claim(number, arch, {k: float(frozen.params[k]) for k in T.HPARAMS})


def trial_description(number: int, arch: Architecture, hp: dict) -> str:
    """The trial-start log line; n_heads is always in it (the legacy recovery reads these)."""
    return (
        f"Trial {number}: arch_idx={arch.arch_idx}, d_model={arch.d_model}, n_layers={arch.n_layers}, "
        f"n_heads={arch.n_heads}, params={arch.params:,}, lr={hp['learning_rate']:g}, dropout={hp['dropout']:g}, "
        f"weight_decay={hp['weight_decay']:g}, d_ff_ratio={arch.d_ff_ratio}"
    )


def run_trial(handle: StudyHandle, number: int, progress: TrialProgress | None = None) -> TrialResult:
    """Train one claimed trial in a child process, tracked as one MLflow run; never raises for
    the trial's own failures."""
    progress = progress or current_progress()
    trial = handle.live_trial(number)
    claim = claimed(handle, number)
    arch, hp = claim.arch, claim.hparams
    extreme = trial.user_attrs.get(ATTR_EXTREME, "none")
    retry_of = handle.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial", trial.user_attrs.get(ATTR_REQUEUED_FROM))
    train_config = handle.config.train.model_copy(update={"seed": handle.config.train.seed + (retry_of if retry_of is not None else number)})
    warm = " [warm start: transfer]" if trial.user_attrs.get(ATTR_WARM_START) else ""
    log.info(trial_description(number, arch, hp) + (f" [forced extreme: {extreme}]" if extreme != "none" else "") + warm)
    progress.trial_started(handle.name, number, f"d={arch.d_model} L={arch.n_layers} h={arch.n_heads} lr={hp['learning_rate']:g}")
    prune = _PruningCheck(trial, may_prune=handle.pruner != "none" and extreme == "none")

    def on_event(event: dict) -> None:
        prune.on_event(event)
        progress.on_event(handle.name, number, event)

    request = TrialRequest(
        trial_number=number, dataset_path=handle.dataset_path, window=handle.config.data.window, arch=arch,
        **hp, train=train_config, checkpoint_path=checkpoints.checkpoint_path(handle.checkpoint_dir, number),
        # trials in several slots share the CPU cores (data prep, CPU training) instead of fighting over them
        threads=max(1, (os.cpu_count() or 1) // handle.config.study.slots),
    )
    try:
        tracked = _run(handle, trial, request, arch, hp, extreme, retry_of, train_config, prune, on_event)
    except Exception:  # a store past its outage budget, or our own machinery: the worker stops, the trial is not lost
        give_back(handle, trial)
        raise
    outcome = tracked.outcome
    _log_outcome(number, outcome)
    if outcome.complete:
        discard_weights(handle)
    else:  # a pruned or failed trial saved none (or none worth keeping)
        request.checkpoint_path.unlink(missing_ok=True)
    progress.trial_finished(handle.name, number, _summary(outcome))
    progress.study(handle.name, handle.config.study.n_trials, handle.counts()["done"])
    return TrialResult(outcome.state, outcome.result.get("val_auc"), outcome.failure_kind)


def _run(handle: StudyHandle, trial: optuna.Trial, request: TrialRequest, arch: Architecture, hp: dict, extreme: str,
         retry_of: int | None, train_config, prune: _PruningCheck, on_event) -> TrackedRun:
    return run_tracked(
        handle.client, _target(handle, trial, arch, hp, extreme, retry_of, train_config), request, handle.config.data,
        stall_timeout_s=handle.config.study.stall_timeout_s,
        on_started=lambda run_id: trial.set_user_attr(ATTR_MLFLOW_RUN, run_id),
        on_event=on_event,
        heartbeat=lambda: handle.storage.record_heartbeat(trial._trial_id),
        heartbeat_interval_s=handle.config.study.heartbeat_interval_s,
        should_stop=prune.should_stop,
        before_end=lambda run_id, outcome: tell_optuna(handle, trial, run_id, request, outcome),
        discard_checkpoint=False,  # the best trial's weights stay for the study's test evaluation
    )


def give_back(handle: StudyHandle, trial: optuna.Trial) -> None:
    """The worker stops mid-trial: its trial goes back to the queue now if the Optuna storage
    answers, else the heartbeat check re-queues it once the storage is back."""
    try:
        requeue(handle, trial, WORKER_STOPPED)
        log.warning("Trial %d queued again: its worker stopped", trial.number)
    except Exception as exc:  # noqa: BLE001 - best effort: the heartbeat check is the fallback
        log.warning("Trial %d left to the heartbeat check (%s)", trial.number, type(exc).__name__)


def _target(handle: StudyHandle, trial: optuna.Trial, arch: Architecture, hp: dict, extreme: str,
            retry_of: int | None, train_config) -> RunTarget:
    tags = {
        T.TAG_STUDY_VERSION: handle.version,
        T.TAG_BUDGET: handle.spec.budget,
        T.TAG_HORIZON: handle.spec.horizon,
        T.TAG_TRIAL_NUMBER: trial.number,
        T.TAG_EXTREME_TYPE: extreme,
        T.TAG_OPTUNA_TRIAL_ID: trial._trial_id,
        **({T.TAG_RETRY_OF: retry_of} if retry_of is not None else {}),
    }
    # the warm-start trial (tasks.study.warm_start): its tag, and the prediction it came from as params
    warm = trial.user_attrs.get(ATTR_WARM_START)
    if warm:
        tags[T.TAG_WARM_START] = warm
    return RunTarget(
        experiment_id=handle.experiment_id, parent_run_id=handle.parent_run_id, study=handle.name, run_kind="trial",
        source="hpo", name=T.trial_run_label(trial.number, arch, hp), tags=tags,
        params={**trial_params(handle.spec.budget, handle.spec.horizon, handle.grid_version, arch, hp,
                               train_config.batch_size, train_config.seed),
                **(trial.user_attrs.get(ATTR_WARM_START_PREDICTION, {}) if warm else {})},
    )


class _PruningCheck:
    """Reports each epoch's val AUC to the trial (every trial: the extremes' values are the
    pruner's yardstick) and, where the trial may be pruned, asks the pruner once per epoch."""

    def __init__(self, trial: optuna.Trial, may_prune: bool):
        self.trial, self.may_prune, self.stop = trial, may_prune, False

    def on_event(self, event: dict) -> None:
        if event["event"] != "epoch" or not math.isfinite(event.get("val/auc", math.nan)):
            return
        self.trial.report(float(event["val/auc"]), step=int(event["epoch"]))
        if self.may_prune and not self.stop:
            self.stop = self.trial.should_prune()

    def should_stop(self) -> bool:
        return self.stop


def tell_optuna(handle: StudyHandle, trial: optuna.Trial, run_id: str, request: TrialRequest, outcome: TrialOutcome) -> None:
    """The outcome to Optuna, before the MLflow run ends. A complete trial's best weights and its
    val scores go to MLflow first: whoever finds the study complete must find them there."""
    if outcome.complete:
        result = outcome.result
        trial.set_user_attr("result", {k: result[k] for k in ("epochs", "best_epoch", "pred_range")})
        kept = handle.config.study.weights_kept
        checkpoints.store_if_best(handle.client, run_id, request.checkpoint_path, result["val_auc"],
                                  checkpoints.best_value_so_far(handle.study, kept))
        log_scores_file(handle.client, run_id, scores_path(request.checkpoint_path, "val"))
        handle.study.tell(trial, result["val_auc"])
    elif outcome.pruned:
        handle.study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps the last reported val AUC as its value
    elif outcome.interrupted:  # not the trial's failure: the same parameters go back to the queue
        requeue(handle, trial, INTERRUPTED)
    else:
        trial.set_user_attr(ATTR_FAILURE_KIND, outcome.failure_kind)
        trial.set_user_attr(ATTR_FAILURE_REASON, (outcome.reason or "")[:2000])
        handle.study.tell(trial, state=TrialState.FAIL)


def requeue(handle: StudyHandle, trial: optuna.Trial, kind: str) -> None:
    """Fail the trial with `kind` (not counted as a failure) and enqueue its parameters again, its
    forced-extreme type (or warm start) and its seed's origin with them, so the study still gets
    every extreme and its warm start."""
    frozen = handle.storage.get_trial(trial._trial_id)
    origin = frozen.user_attrs.get(ATTR_REQUEUED_FROM, handle.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial", trial.number))
    carried = (ATTR_EXTREME, ATTR_WARM_START, ATTR_WARM_START_PREDICTION)  # what the trial is, beyond its params
    attrs = {ATTR_REQUEUED_FROM: origin, **{k: frozen.user_attrs[k] for k in carried if k in frozen.user_attrs}}
    trial.set_user_attr(ATTR_FAILURE_KIND, kind)
    trial.set_user_attr(ATTR_FAILURE_REASON, "the worker was stopped; its parameters are queued again")
    handle.study.tell(trial, state=TrialState.FAIL)
    handle.study.enqueue_trial(frozen.params, user_attrs=attrs, skip_if_exists=False)


def _log_outcome(number: int, outcome: TrialOutcome) -> None:
    if outcome.complete:
        result = outcome.result
        log.info(
            "Trial %d finished: val_auc=%.4f, pred_min=%.4f, pred_max=%.4f, recall=%.4f, epochs=%d, seconds=%.1f",
            number, result["val_auc"], result["pred_min"], result["pred_max"], result["recall"],
            result["epochs"], result["train_seconds"],
        )
    elif outcome.interrupted:
        log.warning("Trial %d interrupted after epoch %d: queued again", number, outcome.last_epoch)
    elif outcome.pruned:
        last = outcome.epochs[-1] if outcome.epochs else {}
        log.info("Trial %d pruned after epoch %d: val_auc=%.4f", number, outcome.last_epoch, last.get("val/auc", math.nan))
    else:
        log.warning("Trial %d failed: %s: %s", number, outcome.failure_kind, outcome.reason)


def _summary(outcome: TrialOutcome) -> str:
    if outcome.complete:
        return f"val_auc={outcome.result['val_auc']:.4f}"
    if outcome.interrupted:
        return "interrupted: queued again"
    return f"pruned after epoch {outcome.last_epoch}" if outcome.pruned else f"failed ({outcome.failure_kind})"


def discard_weights(handle: StudyHandle) -> None:
    """Keep only the weights of the best finished trials (the best, or the top configurations a
    seed-confirmed selection may pick), on this worker and in MLflow (a 2B checkpoint is gigabytes;
    see tasks.study.checkpoints)."""
    checkpoints.discard_weights(handle.client, handle.experiment_id, handle.checkpoint_dir, handle.study,
                                keep=handle.config.study.weights_kept)
