"""Seed confirmation: a complete study's best configurations trained again with new seeds.

A configuration's val AUC from one trial carries the luck of the seed that trained it (on the
demo's smoke-20M h1 pick, six seeds ranged 0.70-0.78 on val). When a study has its `n_trials`,
the worker that finishes it trains each of the `confirm_top_k` best configurations (by val AUC,
distinct configurations) `confirm_seeds` more times, each a tracked run in the study's experiment
(tag `run_kind=confirm`, `confirm_of=<the trial's run>`, `seed_index` 1..n, param `seed`), scored on
val and test like a re-training. The study then selects the configuration with the best **mean**
val AUC over its seeds (the trial itself is seed 0).

These runs are not Optuna trials and never count toward `n_trials`. Each seed is claimed in the
study's store (tasks.study.claims): two finishing workers never train the same seed, a killed
worker's seed is taken over once its claim goes stale, Ctrl-C gives it back, and a rerun trains
only what is missing.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from schemas import tracking as T
from schemas.trial import TrialRequest
from tasks.study.claims import Claims
from tasks.study.store import ATTR_MLFLOW_RUN, StudyHandle
from tasks.study.tracked_run import RunTarget, TestScoring, run_tracked, trial_params
from tasks.study.trial import claimed
from tasks.tracking.runs import end_run, search_all_runs

log = logging.getLogger("hpo")

SEED_STRIDE = 1_000_003  # confirmation seed i of a trial: its seed + i * stride (never another trial's seed)


@dataclass
class ConfirmedConfiguration:
    """One configuration's runs over seeds: the trial (seed 0) and its confirmation seeds."""

    trial_number: int
    trial_run_id: str
    val_aucs: list[float] = field(default_factory=list)  # seed 0 first, then each complete seed
    test_aucs: list[float] = field(default_factory=list)  # the confirmation seeds' (seed 0's is the study's test evaluation)

    @property
    def seeds(self) -> int:
        return len(self.val_aucs)

    @property
    def mean_val_auc(self) -> float:
        return statistics.fmean(self.val_aucs)


def candidates(trials: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The k best complete trials by val AUC, one per configuration (a configuration drawn twice
    is confirmed once, by its better trial)."""
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                      key=lambda t: (-t.value, t.number))  # fmt: skip
    chosen, seen = [], set()
    for trial in complete:
        key = tuple(sorted(trial.params.items()))
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == k:
            break
    return chosen


def select_on_seed_mean(configurations: list[ConfirmedConfiguration]) -> ConfirmedConfiguration:
    """The configuration with the best mean val AUC over its seeds (ties: the better single trial,
    which comes first)."""
    return max(configurations, key=lambda c: c.mean_val_auc)


def seed_key(trial_number: int, seed_index: int) -> str:
    return f"confirm/{trial_number}/{seed_index}"


def confirm_study(handle: StudyHandle, poll_s: float = 2.0) -> list[ConfirmedConfiguration]:
    """Train the missing confirmation seeds of the study's top configurations (waiting for the
    ones other workers are on), then every candidate's figures over its seeds."""
    cfg = handle.config.study
    chosen = candidates(handle.study.get_trials(deepcopy=False), cfg.confirm_top_k)
    claims = Claims(handle.storage, handle.name, stale_after_s=cfg.heartbeat_grace_s)
    keys = {seed_key(t.number, i): (t, i) for t in chosen for i in range(1, cfg.confirm_seeds + 1)}
    while True:
        done = claims.done(list(keys))
        todo = [key for key in keys if key not in done]
        if not todo:
            break
        took_one = False
        for key in todo:
            if claims.claim(key):
                took_one = True
                trial, index = keys[key]
                _end_orphans(handle, trial, index)
                with claims.held(key):
                    _train_seed(handle, claims, key, trial, index)
        if not took_one:
            if not claims.pending(todo):
                continue  # their holders went stale or gave them back: claim them next round
            time.sleep(poll_s)  # another worker is on them
    return [_figures(handle, trial) for trial in chosen]


def _confirm_runs(handle: StudyHandle, trial_run_id: str, status: str | None = None) -> list:
    where = f"tags.{T.TAG_RUN_KIND} = 'confirm' and tags.{T.TAG_CONFIRM_OF} = '{trial_run_id}'"
    if status:
        where += f" and attributes.status = '{status}'"
    return search_all_runs(handle.client, [handle.experiment_id], where)


def _end_orphans(handle: StudyHandle, trial: FrozenTrial, index: int) -> None:
    """A seed whose worker died mid-run left its MLflow run RUNNING: fail it before training it again."""
    for run in _confirm_runs(handle, trial.user_attrs.get(ATTR_MLFLOW_RUN, ""), "RUNNING"):
        if run.data.tags.get(T.TAG_SEED_INDEX) == str(index):
            end_run(handle.client, run.info.run_id, "failed", {T.TAG_FAILURE_KIND: "worker_lost",
                                                               T.TAG_FAILURE_REASON: "worker lost during seed confirmation"})


def _train_seed(handle: StudyHandle, claims: Claims, key: str, trial: FrozenTrial, index: int) -> None:
    claim = claimed(handle, trial.number)
    trial_run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN, "")
    original_seed = int(handle.client.get_run(trial_run_id).data.params.get("seed", handle.config.train.seed + trial.number))
    train = handle.config.train.model_copy(update={"seed": original_seed + index * SEED_STRIDE})
    request = TrialRequest(
        trial_number=trial.number, dataset_path=handle.dataset_path, window=handle.config.data.window, arch=claim.arch,
        **claim.hparams, train=train, checkpoint_path=handle.checkpoint_dir / f"confirm_{trial.number}_s{index}.pt",
    )
    target = RunTarget(
        experiment_id=handle.experiment_id, parent_run_id=handle.parent_run_id, study=handle.name, run_kind="confirm",
        source="hpo", name=T.trial_run_label(trial.number, claim.arch, claim.hparams, suffix=f" seed {index}"),
        tags={T.TAG_CONFIRM_OF: trial_run_id, T.TAG_SEED_INDEX: index, T.TAG_TRIAL_NUMBER: trial.number,
              T.TAG_STUDY_VERSION: handle.version, T.TAG_BUDGET: handle.spec.budget, T.TAG_HORIZON: handle.spec.horizon},
        params=trial_params(handle.spec.budget, handle.spec.horizon, handle.grid_version, claim.arch, claim.hparams,
                            train.batch_size, train.seed),
    )  # fmt: skip
    log.info("Confirming %s #%d with seed %d of %d (seed %d)", handle.name, trial.number, index,
             handle.config.study.confirm_seeds, train.seed)
    tracked = run_tracked(
        handle.client, target, request, handle.config.data, stall_timeout_s=handle.config.study.stall_timeout_s,
        heartbeat=lambda: claims.renew(key), heartbeat_interval_s=handle.config.study.heartbeat_interval_s,
        before_end=TestScoring(handle.client, request, handle.config.study.stall_timeout_s),
    )
    if not tracked.outcome.complete:
        log.warning("Confirmation seed %d of %s #%d failed: %s: %s", index, handle.name, trial.number,
                    tracked.outcome.failure_kind, tracked.outcome.reason)


def _figures(handle: StudyHandle, trial: FrozenTrial) -> ConfirmedConfiguration:
    run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN, "")
    figures = ConfirmedConfiguration(trial.number, run_id, val_aucs=[float(trial.value)])
    by_index = {}
    for run in _confirm_runs(handle, run_id, "FINISHED"):
        if run.data.tags.get(T.TAG_STATE) == "complete" and "val_auc" in run.data.metrics:
            by_index.setdefault(run.data.tags.get(T.TAG_SEED_INDEX), run)  # one per seed, whatever a race left
    for index in sorted(by_index):
        metrics = by_index[index].data.metrics
        figures.val_aucs.append(float(metrics["val_auc"]))
        if "test_auc" in metrics and math.isfinite(metrics["test_auc"]):
            figures.test_aucs.append(float(metrics["test_auc"]))
    return figures
