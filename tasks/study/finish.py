"""Finishing a study: once it has all its trials, the selected trial on the test split, its model registered.

Selection on validation, verdict on test: the study's best trial by val AUC is the only one that
touches the test split. Any worker can finish a study: the best weights come from MLflow when
another worker trained them (tasks.study.checkpoints).
"""

from __future__ import annotations

import logging
import math
import statistics

from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from schemas import tracking as T
from schemas.trial import TrialRequest
from tasks.study import checkpoints, space
from tasks.study.claims import Claims
from tasks.study.confirm import ConfirmedConfiguration, confirm_study, select_on_seed_mean
from tasks.study.store import ATTR_MLFLOW_RUN, StudyHandle
from tasks.study.tracked_run import evaluate_in_process
from tasks.tracking.predictions import log_scores_file, scores_path
from tasks.tracking.runs import end_run, worker_name

log = logging.getLogger("hpo")
FINISH_CLAIM = "finish"  # once per study: the test evaluation, the registered model, the closed study run


class EvaluationFailed(RuntimeError):
    """The best trial's test evaluation failed: the study stays unfinished, a rerun retries it."""


def finish_study(handle: StudyHandle, stop_reason: str | None = None) -> dict[str, object]:
    """Summarise; when the study has all its trials, evaluate the best on test, log and register
    its model. Any worker can: the best weights come from MLflow when another worker trained them.
    A failed evaluation raises, and leaves the study run `evaluation_failed` (not complete)."""
    counts = handle.counts()
    summary: dict[str, object] = {"study": handle.name, **counts, "n_trials": handle.config.study.n_trials}
    client, parent = handle.client, handle.parent_run_id
    if counts["done"] < handle.config.study.n_trials or not counts["complete"]:
        if counts["done"] >= handle.config.study.n_trials:  # every done trial was pruned: nothing to select
            stop_reason = "no complete trial to select (every trial that ran to the end failed or was pruned)"
        summary.update(state="stopped", reason=stop_reason)
        end_run(client, parent, "stopped", {T.TAG_STUDY_STATE: "stopped"})
        return summary

    best, confirmed = _select(handle)
    summary.update(state="complete", best_trial=best.number, best_val_auc=best.value,
                   selected_by="seed_mean" if confirmed else "single_run")
    recorded = client.get_run(parent).data
    if (recorded.tags.get(T.TAG_STUDY_STATE) == "complete" and recorded.tags.get(T.TAG_BEST_TRIAL) == str(best.number)
            and _has_test_scores(client, best)):  # fmt: skip
        # finished before (a campaign resuming, or a second worker): nothing new to evaluate. A study
        # finished by a version that logged no test scores is evaluated again: the report needs them.
        summary["best_test_auc"] = recorded.metrics.get("best_test_auc")
        summary["model_version"] = checkpoints.registered_version(client, handle.name, parent, best.number)
        checkpoints.remove_local(handle.checkpoint_dir)
        return summary
    claims = Claims(handle.storage, handle.name, stale_after_s=handle.config.study.heartbeat_grace_s)
    claims.reopen(FINISH_CLAIM)  # finished before, yet without its test scores now: evaluate again
    if not claims.claim_or_wait(FINISH_CLAIM):  # another worker finished it: evaluation and registration happen once
        checkpoints.remove_local(handle.checkpoint_dir)
        return {**study_summary(handle), "selected_by": summary["selected_by"]}
    with claims.held(FINISH_CLAIM):
        return _evaluate_and_close(handle, best, confirmed, summary, counts)


def _evaluate_and_close(handle: StudyHandle, best: FrozenTrial, confirmed: ConfirmedConfiguration | None,
                        summary: dict[str, object], counts: dict[str, int]) -> dict[str, object]:
    """The claimed part of finishing: the selected trial on test, its model registered, the study run closed."""
    client, parent = handle.client, handle.parent_run_id
    try:
        test_auc, version = evaluate_on_test(handle, best, summary["selected_by"])
    except Exception as exc:  # a missing checkpoint, a failed evaluation, a store that broke: retried by a rerun
        reason = f"{type(exc).__name__}: {exc}"[:4000]
        end_run(client, parent, "failed", {T.TAG_STUDY_STATE: "evaluation_failed", T.TAG_FAILURE_REASON: reason})
        raise
    summary.update(best_test_auc=test_auc, model_version=version)
    metrics = dict(zip(T.STUDY_METRICS, (best.value, test_auc, counts["complete"], counts["failed"], counts["pruned"])))
    if confirmed:
        seed_figures = _seed_figures(confirmed, test_auc)
        summary.update(seed_figures)
        metrics.update(seed_figures)
    end_run(client, parent, "complete", metrics=metrics, tags={
        T.TAG_SELECTED_BY: summary["selected_by"],
        T.TAG_BEST_TRIAL: str(best.number),
        T.TAG_BEST_RUN_ID: best.user_attrs.get(ATTR_MLFLOW_RUN, ""),
        T.TAG_STUDY_STATE: "complete",
        T.TAG_EVALUATED_ON: worker_name(),
        T.TAG_FAILURE_REASON: "",
    })
    # the study is finished: only the registered trial's weights stay in MLflow
    checkpoints.discard_weights(client, handle.experiment_id, handle.checkpoint_dir, handle.study, selected=best.number)
    checkpoints.remove_local(handle.checkpoint_dir)
    return summary


def _select(handle: StudyHandle) -> tuple[FrozenTrial, ConfirmedConfiguration | None]:
    """The selected trial: with seed confirmation on, the trial of the configuration with the best
    mean val AUC over its seeds (and those figures); otherwise the best single trial."""
    if not handle.config.study.confirming:
        return handle.study.best_trial, None
    selected = select_on_seed_mean(confirm_study(handle))
    trial = next(t for t in handle.study.get_trials(deepcopy=False) if t.number == selected.trial_number)
    log.info("%s: selected #%d on its mean val AUC %.4f over %d seeds (best single trial #%d, %.4f)", handle.name,
             trial.number, selected.mean_val_auc, selected.seeds, handle.study.best_trial.number, handle.study.best_value)
    return trial, selected


def _seed_figures(confirmed: ConfirmedConfiguration, trial_test_auc: float) -> dict[str, float]:
    """The selected configuration over its seeds (schemas.tracking.SEED_METRICS): the trial's test
    AUC is seed 0's; a seed whose run failed is missing from both means."""
    tests = [trial_test_auc, *confirmed.test_aucs]
    spread = lambda values: statistics.stdev(values) if len(values) > 1 else math.nan  # noqa: E731
    return dict(zip(T.SEED_METRICS, (float(confirmed.seeds), confirmed.mean_val_auc, spread(confirmed.val_aucs),
                                     statistics.fmean(tests), spread(tests))))  # fmt: skip


def _has_test_scores(client: MlflowClient, best: FrozenTrial) -> bool:
    run_id = best.user_attrs.get(ATTR_MLFLOW_RUN)
    return bool(run_id) and bool(client.get_run(run_id).data.tags.get(T.predictions_tag("test")))


def evaluate_on_test(handle: StudyHandle, best: FrozenTrial, selected_by: str = "single_run") -> tuple[float, str]:
    """The selected trial's test AUC (the only time a study touches the test split) and the
    version of its registered model. Raises CheckpointMissing or EvaluationFailed."""
    run_id = best.user_attrs.get(ATTR_MLFLOW_RUN)
    checkpoint = checkpoints.fetch(handle.client, run_id, best.number, handle.checkpoint_dir)
    arch = space.trial_architecture(handle.arch_space, handle.grid, best.params)
    request = TrialRequest(trial_number=best.number, dataset_path=handle.dataset_path, window=handle.config.data.window,
                           arch=arch, train=handle.config.train, checkpoint_path=checkpoint)  # fmt: skip
    outcome = evaluate_in_process(request, "test", handle.config.study.stall_timeout_s)
    if not outcome.complete:
        raise EvaluationFailed(
            f"{handle.name}: the test evaluation of trial {best.number} failed ({outcome.failure_kind}): "
            f"{outcome.reason}; fix the cause and run the study again to retry it"
        )
    test_auc = outcome.result["auc"]
    if not log_scores_file(handle.client, run_id, scores_path(checkpoint, "test")):
        raise EvaluationFailed(
            f"{handle.name}: the test scores of trial {best.number} could not be logged on run {run_id} (see the "
            "warning above); the report's test verdict needs them: run the study again to retry"
        )
    entry = {"val_auc": best.value, "test_auc": test_auc, "best_trial": best.number, "trial_run_id": run_id,
             "budget": handle.spec.budget, "horizon": handle.spec.horizon, "grid_version": handle.grid_version,
             **arch.as_dict()}
    version = checkpoints.log_best_model(
        handle.client, handle.parent_run_id, handle.name, checkpoint, handle.dataset_path, handle.config.train,
        tags={**{k: entry[k] for k in T.MODEL_VERSION_TAGS}, T.TAG_SELECTED_BY: selected_by},
    )
    return test_auc, version


def study_summary(handle: StudyHandle) -> dict[str, object]:
    """The study as the stores hold it, read only (`finish_study`'s summary, for a caller that did
    not run it): counts, state, best trial, val and test AUC."""
    recorded = handle.client.get_run(handle.parent_run_id).data
    summary: dict[str, object] = {"study": handle.name, **handle.counts(), "n_trials": handle.config.study.n_trials,
                                  "state": recorded.tags.get(T.TAG_STUDY_STATE, "running")}
    if T.TAG_BEST_TRIAL in recorded.tags:
        best_trial = int(recorded.tags[T.TAG_BEST_TRIAL])
        summary.update(best_trial=best_trial, best_val_auc=recorded.metrics.get("best_val_auc"),
                       best_test_auc=recorded.metrics.get("best_test_auc"),
                       model_version=checkpoints.registered_version(handle.client, handle.name, handle.parent_run_id, best_trial))
    return summary
