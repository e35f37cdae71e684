"""One (budget, horizon) study: Optuna decides what runs next, MLflow records what happened.

Optuna's storage answers "how far is this study" (it is shared by every worker and survives
restarts); each Optuna trial keeps the id of its one MLflow run (`mlflow_run_id` user attr).

Guarantees, and how:
- `n_trials` counts COMPLETE trials across all workers and restarts. A worker only starts a
  trial while complete + running < n_trials, and after `ask()` it checks its claim: ordered by
  trial number, the complete and running trials beyond the first n_trials are surplus and are
  failed at once (reason "surplus"), so two workers racing for the last slot never overshoot.
- Forced extremes are enqueued by the one worker whose `create_study` succeeded (the storage
  refuses a duplicate name), so they exist exactly once however many workers start.
- A killed worker's trial stops heart-beating; after `heartbeat_grace_s` any worker fails it,
  marks its MLflow run FAILED (reason worker_lost) and re-enqueues its parameters (at most
  `max_retries` times).
- The trial itself runs in a child process (tasks.trial_runner): diverged, OOM, crashed and hung
  trials are failed with their reason in Optuna and MLflow, and the study goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from models.arch_grid import Architecture, forced_extremes, get_architectures_for_budget
from schemas.config import HpoConfig, SearchSpace, StoreConfig, StudySpec
from schemas import tracking as T
from schemas.trial import TrialRequest
from tasks.data import cached_dataset
from tasks.tracking import code_version, get_or_create_experiment, log_batch, mlflow_client
from tasks.trial_runner import TrialOutcome, run_trial_process

log = logging.getLogger("hpo")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# We drive trials with ask/tell and record heartbeats ourselves; Optuna warns that heartbeats
# are "supposed to be used with Study.optimize", which is not true of this driver.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
# Heartbeats and their retry callback are marked experimental since Optuna 2.8; they are the
# documented way to recover from dead workers and we test that path ourselves.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ATTR_MLFLOW_RUN = "mlflow_run_id"
ATTR_EXTREME = "extreme_type"
ATTR_FAILURE_KIND = "failure_kind"
ATTR_FAILURE_REASON = "failure_reason"
SURPLUS = "surplus"


class StudyStopped(RuntimeError):
    """This run of the study gave up (too many failed trials); the study can be resumed."""


# ---------------------------------------------------------------- storage and naming


def optuna_storage(stores: StoreConfig, study: HpoConfig | None = None, client: MlflowClient | None = None) -> RDBStorage:
    """The study storage with heartbeats; stale trials are failed in MLflow too, then retried."""
    cfg = (study or HpoConfig()).study
    stores.root.mkdir(parents=True, exist_ok=True)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retries)

    def on_stale(optuna_study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
        if client is not None and run_id:
            reason = f"worker lost: no heartbeat for {cfg.heartbeat_grace_s} s (process killed or machine lost)"
            _end_run(client, run_id, "failed", {T.TAG_FAILURE_KIND: "worker_lost", T.TAG_FAILURE_REASON: reason})
        log.warning("Trial %d failed: worker lost (heartbeat stale); re-enqueued", trial.number)
        retry(optuna_study, trial)

    url = stores.optuna_url
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=cfg.heartbeat_interval_s,
        grace_period=cfg.heartbeat_grace_s,
        heartbeat_stale_trial_callback=on_stale,
    )


def existing_versions(storage: RDBStorage, spec: StudySpec) -> list[int]:
    versions = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        try:
            found = StudySpec.parse(summary.study_name)
        except ValueError:
            continue
        if found.base_name == spec.base_name:
            versions.append(found.version or 1)
    return sorted(versions)


def resolve_study_name(spec: StudySpec, storage: RDBStorage) -> tuple[str, int]:
    """Explicit version as given; `fresh`: one past the latest; otherwise the latest, or 1."""
    versions = existing_versions(storage, spec)
    if spec.version is not None:
        version = spec.version
    elif spec.fresh:
        version = (versions[-1] if versions else 0) + 1
    else:
        version = versions[-1] if versions else 1
    return spec.name(version), version


# ---------------------------------------------------------------- the handle


@dataclass
class StudyHandle:
    """A study opened by this worker, with the per-run state (start time, failures)."""

    name: str
    version: int
    spec: StudySpec
    config: HpoConfig
    study: optuna.Study
    storage: RDBStorage
    grid: list[Architecture]
    grid_version: int
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    dataset_path: Path
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0  # only changed under `lock`: trials of several slots finish in threads
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_reason: str | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.stores.root.resolve() / "checkpoints" / self.name

    def counts(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        return {
            "complete": states.count(TrialState.COMPLETE),
            "running": states.count(TrialState.RUNNING),
            "waiting": states.count(TrialState.WAITING),
            "failed": sum(1 for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_FAILURE_KIND) != SURPLUS),
        }


def suggest(trial: optuna.Trial, n_archs: int, search: SearchSpace) -> dict[str, float | int]:
    """The search space, in one place: arch_idx over the grid plus three hyperparameters."""
    return {
        "arch_idx": trial.suggest_categorical("arch_idx", list(range(n_archs))),
        "learning_rate": trial.suggest_categorical("learning_rate", list(search.learning_rates)),
        "dropout": trial.suggest_categorical("dropout", list(search.dropouts)),
        "weight_decay": trial.suggest_categorical("weight_decay", list(search.weight_decays)),
    }


def open_study(spec: StudySpec, config: HpoConfig) -> StudyHandle:
    """Create or resume a study; the creating worker enqueues the extremes and the parent run."""
    client = mlflow_client(config.stores)
    storage = optuna_storage(config.stores, config, client)
    name, version = resolve_study_name(spec, storage)
    # seeded per study: reproducible, and two studies (or versions) do not sample in lockstep
    sampler = optuna.samplers.TPESampler(seed=config.study.sampler_seed + zlib.crc32(name.encode()) % 100_000)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        created = False
    experiment_id = get_or_create_experiment(client, name, config.stores.artifact_root)

    if created:
        grid_version = config.study.grid_version
        for key, value in {"budget": spec.budget, "horizon": spec.horizon, "version": version, "grid_version": grid_version}.items():
            study.set_user_attr(key, value)
        grid = get_architectures_for_budget(spec.budget, grid_version=grid_version)
        parent = client.create_run(
            experiment_id,
            run_name=name,
            tags={
                T.TAG_RUN_KIND: "study",
                T.TAG_STUDY: name,
                T.TAG_STUDY_VERSION: str(version),
                T.TAG_BUDGET: spec.budget,
                T.TAG_HORIZON: str(spec.horizon),
                T.TAG_CODE_VERSION: code_version(),
                "smoke_of": spec.smoke_of or "",
            },
        )
        log_batch(client, parent.info.run_id, params={"grid_version": grid_version, "grid_size": len(grid)})
        study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        enqueue_extremes(study, grid, config.search)
        study.set_user_attr("extremes_enqueued", True)
    else:
        _wait_for_creator(study)
        grid_version = int(study.user_attrs["grid_version"])
        grid = get_architectures_for_budget(spec.budget, grid_version=grid_version)

    parent_run_id = study.user_attrs["mlflow_parent_run_id"]
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < config.study.n_trials:  # work to do: the study run is running again
        client.update_run(parent_run_id, status="RUNNING")
        client.set_tag(parent_run_id, "study_state", "running")
    _, dataset_path = cached_dataset(config.data, spec.horizon, config.stores.cache_dir)
    handle = StudyHandle(
        name=name,
        version=version,
        spec=spec,
        config=config,
        study=study,
        storage=storage,
        grid=grid,
        grid_version=grid_version,
        client=client,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        dataset_path=dataset_path,
    )
    reconcile_runs(handle)
    return handle


def _wait_for_creator(study: optuna.Study, timeout_s: float = 120.0) -> None:
    """Another worker created the study a moment ago: wait until it has enqueued the extremes."""
    deadline = time.monotonic() + timeout_s
    while not study.user_attrs.get("extremes_enqueued"):
        if time.monotonic() > deadline:
            raise StudyStopped(
                f"study {study.study_name} exists but its creator never finished setting it up "
                "(no extremes enqueued); delete the study with `optuna delete-study` and run again"
            )
        time.sleep(0.5)


def enqueue_extremes(study: optuna.Study, grid: list[Architecture], search: SearchSpace) -> None:
    """Trials 0-5: min/max d_model, n_layers, n_heads, with central hyperparameters."""
    central = search.central()
    for extreme_type, arch in forced_extremes(grid):
        study.enqueue_trial({"arch_idx": arch.arch_idx, **central}, user_attrs={ATTR_EXTREME: extreme_type})


def reconcile_runs(handle: StudyHandle) -> None:
    """A worker killed between Optuna's tell and MLflow's end leaves a RUNNING MLflow run for a
    finished trial: end it with the trial's real state."""
    for trial in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
        if not run_id:
            continue
        run = handle.client.get_run(run_id)
        if run.info.status != "RUNNING":
            continue
        if trial.state == TrialState.COMPLETE:
            _end_run(handle.client, run_id, "complete", {})
        else:
            _end_run(
                handle.client,
                run_id,
                "failed",
                {
                    T.TAG_FAILURE_KIND: trial.user_attrs.get(ATTR_FAILURE_KIND, "worker_lost"),
                    T.TAG_FAILURE_REASON: trial.user_attrs.get(ATTR_FAILURE_REASON, "worker lost before recording"),
                },
            )


def _end_run(client: MlflowClient, run_id: str, state: str, tags: dict[str, str], metrics: dict | None = None) -> None:
    log_batch(client, run_id, metrics=metrics, tags={T.TAG_STATE: state, **tags})
    client.set_terminated(run_id, "FINISHED" if state == "complete" else "FAILED")


def trial_params(budget: str, horizon: int, grid_version: int, arch: Architecture, hparams: dict,
                 batch_size: int | str, seed: int) -> dict:
    """The params of every trial run (schemas.tracking.TRIAL_PARAMS), hpo and supplemental alike."""
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
        log_batch(client, run_id, metrics={k: v for k, v in event.items() if k in T.EPOCH_METRICS}, step=int(event["epoch"]))


def end_trial_run(client: MlflowClient, run_id: str, outcome: TrialOutcome) -> None:
    """Close a trial's MLflow run with its outcome: final metrics, or the failure and its reason."""
    if outcome.complete:
        final = {k: outcome.result[k] for k in T.FINAL_METRICS if k in outcome.result}
        _end_run(client, run_id, "complete", {T.TAG_DEVICE: outcome.result.get("device", "unknown")}, metrics=final)
    else:
        reason = (outcome.reason or "")[:4000]
        _end_run(client, run_id, "failed", {T.TAG_FAILURE_KIND: outcome.failure_kind or "error", T.TAG_FAILURE_REASON: reason})


# ---------------------------------------------------------------- choosing the next trial


WAIT = "wait"  # next_trial(block=False): the remaining slots are taken by running trials


def next_trial(handle: StudyHandle, poll_s: float = 2.0, block: bool = True) -> optuna.Trial | None | str:
    """The next trial this worker should run, or None when the study (or this run) is done.

    With block=False it returns WAIT instead of sleeping while running trials (this worker's
    own, in other slots, or other workers') may still complete the study.
    """
    cfg = handle.config.study
    while True:
        optuna.storages.fail_stale_trials(handle.study)
        counts = handle.counts()
        if counts["complete"] >= cfg.n_trials:
            return None
        if cfg.timeout_hours is not None and time.monotonic() - handle.started_at > cfg.timeout_hours * 3600:
            if handle.stop_reason is None:  # said once, though slots may poll until their trials end
                handle.stop_reason = f"timeout after {cfg.timeout_hours:g} h at {counts['complete']}/{cfg.n_trials} trials"
                log.warning("Timeout after %g h: stopping at %d/%d trials", cfg.timeout_hours, counts["complete"], cfg.n_trials)
            return None
        if handle.failures >= cfg.failure_limit:
            raise StudyStopped(
                f"{handle.name}: {handle.failures} trials failed in this run (limit {cfg.failure_limit}); "
                "see the failure_reason of the failed runs in MLflow, fix the cause, and run again to resume"
            )
        if counts["complete"] + counts["running"] >= cfg.n_trials:
            if not block:
                return WAIT
            time.sleep(poll_s)  # the last trials are running elsewhere; take over if their worker dies
            continue
        trial = handle.study.ask()
        handle.storage.record_heartbeat(trial._trial_id)
        if _is_surplus(handle, trial):
            trial.set_user_attr(ATTR_FAILURE_KIND, SURPLUS)
            trial.set_user_attr(ATTR_FAILURE_REASON, "another worker took the last slot first")
            handle.study.tell(trial, state=TrialState.FAIL)
            continue
        return trial


def _is_surplus(handle: StudyHandle, trial: optuna.Trial) -> bool:
    claimed = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    order = sorted(t.number for t in claimed)
    return order.index(trial.number) >= handle.config.study.n_trials


# ---------------------------------------------------------------- running a trial


def trial_description(number: int, arch: Architecture, hp: dict) -> str:
    """The trial-start log line; n_heads is always in it (the legacy recovery reads these)."""
    return (
        f"Trial {number}: arch_idx={arch.arch_idx}, d_model={arch.d_model}, n_layers={arch.n_layers}, "
        f"n_heads={arch.n_heads}, params={arch.params:,}, lr={hp['learning_rate']:g}, dropout={hp['dropout']:g}, "
        f"weight_decay={hp['weight_decay']:g}, d_ff_ratio={arch.d_ff_ratio}"
    )


def run_trial(handle: StudyHandle, trial: optuna.Trial, progress=None) -> TrialOutcome:
    """Train one trial in a child process, tracked as one MLflow run; never raises for the trial."""
    hp = suggest(trial, len(handle.grid), handle.config.search)
    arch = handle.grid[hp["arch_idx"]]
    extreme = trial.user_attrs.get(ATTR_EXTREME, "none")
    retry_of = handle.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    seed = handle.config.train.seed + (retry_of if retry_of is not None else trial.number)
    train_config = handle.config.train.model_copy(update={"seed": seed})
    trial.set_user_attr("architecture", arch.as_dict())  # one write: each attribute is a commit

    params = trial_params(handle.spec.budget, handle.spec.horizon, handle.grid_version, arch, hp, train_config.batch_size, seed)
    tags = {
        T.TAG_RUN_KIND: "trial",
        T.TAG_SOURCE: "hpo",
        T.TAG_STUDY: handle.name,
        T.TAG_STUDY_VERSION: str(handle.version),
        T.TAG_BUDGET: handle.spec.budget,
        T.TAG_HORIZON: str(handle.spec.horizon),
        T.TAG_TRIAL_NUMBER: str(trial.number),
        T.TAG_EXTREME_TYPE: extreme,
        T.TAG_STATE: "running",
        T.TAG_CODE_VERSION: code_version(),
        "mlflow.parentRunId": handle.parent_run_id,
        "optuna_trial_id": str(trial._trial_id),
    }
    if retry_of is not None:
        tags[T.TAG_RETRY_OF] = str(retry_of)
    run = handle.client.create_run(handle.experiment_id, run_name=T.trial_run_name(handle.name, trial.number), tags=tags)
    run_id = run.info.run_id
    trial.set_user_attr(ATTR_MLFLOW_RUN, run_id)
    log_batch(handle.client, run_id, params=params)
    log.info(trial_description(trial.number, arch, hp) + (f" [forced extreme: {extreme}]" if extreme != "none" else ""))
    if progress is not None:
        progress.trial_started(
            handle.name, trial.number, f"d={arch.d_model} L={arch.n_layers} h={arch.n_heads} lr={hp['learning_rate']:g}"
        )

    def on_event(event: dict) -> None:
        log_epoch(handle.client, run_id, event)
        if progress is not None:
            progress.on_event(handle.name, trial.number, event)

    request = TrialRequest(
        trial_number=trial.number,
        dataset_path=handle.dataset_path,
        window=handle.config.data.window,
        arch=arch,
        learning_rate=hp["learning_rate"],
        dropout=hp["dropout"],
        weight_decay=hp["weight_decay"],
        train=train_config,
        checkpoint_path=handle.checkpoint_dir / f"trial_{trial.number}.pt",
        # trials in several slots share the CPU cores (data prep, CPU training) instead of fighting over them
        threads=max(1, (os.cpu_count() or 1) // handle.config.study.slots),
    )
    outcome = run_trial_process(
        request,
        on_event=on_event,
        heartbeat=lambda: handle.storage.record_heartbeat(trial._trial_id),
        heartbeat_interval_s=handle.config.study.heartbeat_interval_s,
        stall_timeout_s=handle.config.study.stall_timeout_s,
    )
    record_outcome(handle, trial, run_id, outcome)
    if progress is not None:
        done = f"val_auc={outcome.result['val_auc']:.4f}" if outcome.complete else f"failed ({outcome.failure_kind})"
        progress.trial_finished(handle.name, trial.number, done)
        progress.study(handle.name, handle.config.study.n_trials, handle.counts()["complete"])
    return outcome


def record_outcome(handle: StudyHandle, trial: optuna.Trial, run_id: str, outcome: TrialOutcome) -> None:
    """Optuna first (the source of truth for progress), then MLflow; `reconcile_runs` repairs a
    crash between the two."""
    client = handle.client
    if outcome.complete:
        result = outcome.result
        trial.set_user_attr("result", {k: result[k] for k in ("epochs", "best_epoch", "pred_range")})
        handle.study.tell(trial, result["val_auc"])
        end_trial_run(client, run_id, outcome)
        log.info(
            "Trial %d finished: val_auc=%.4f, pred_min=%.4f, pred_max=%.4f, recall=%.4f, epochs=%d, seconds=%.1f",
            trial.number, result["val_auc"], result["pred_min"], result["pred_max"], result["recall"],
            result["epochs"], result["train_seconds"],
        )
        prune_checkpoints(handle)
    else:
        with handle.lock:
            handle.failures += 1
        trial.set_user_attr(ATTR_FAILURE_KIND, outcome.failure_kind)
        trial.set_user_attr(ATTR_FAILURE_REASON, (outcome.reason or "")[:2000])
        handle.study.tell(trial, state=TrialState.FAIL)
        end_trial_run(client, run_id, outcome)
        log.warning("Trial %d failed: %s: %s", trial.number, outcome.failure_kind, outcome.reason)


def prune_checkpoints(handle: StudyHandle) -> None:
    """Keep the best complete trial's weights only (a 2B checkpoint is gigabytes)."""
    complete = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    best = max(complete, key=lambda t: t.value)
    for trial in complete:
        if trial.number != best.number:
            (handle.checkpoint_dir / f"trial_{trial.number}.pt").unlink(missing_ok=True)


# ---------------------------------------------------------------- finishing


def finish_study(handle: StudyHandle) -> dict[str, object]:
    """Summarise; when the study has all its trials, evaluate the best on test and log it."""
    counts = handle.counts()
    summary: dict[str, object] = {"study": handle.name, **counts, "n_trials": handle.config.study.n_trials}
    client, parent = handle.client, handle.parent_run_id
    if counts["complete"] < handle.config.study.n_trials:
        summary["state"] = "stopped"
        summary["reason"] = handle.stop_reason
        client.set_tag(parent, "study_state", "stopped")
        client.set_terminated(parent, "KILLED")
        return summary

    best = handle.study.best_trial
    summary.update(state="complete", best_trial=best.number, best_val_auc=best.value)
    recorded = client.get_run(parent).data
    if recorded.tags.get("study_state") == "complete" and recorded.tags.get("best_trial") == str(best.number):
        # finished before (a campaign resuming, or a second worker): nothing new to evaluate
        summary["best_test_auc"] = recorded.metrics.get("best_test_auc")
        return summary
    checkpoint = handle.checkpoint_dir / f"trial_{best.number}.pt"
    test_auc = None
    if checkpoint.exists():
        outcome = run_trial_process(
            TrialRequest(
                mode="evaluate",
                trial_number=best.number,
                dataset_path=handle.dataset_path,
                window=handle.config.data.window,
                arch=handle.grid[best.params["arch_idx"]],
                train=handle.config.train,
                checkpoint_path=checkpoint,
                split="test",
            ),
            stall_timeout_s=handle.config.study.stall_timeout_s,
        )
        if outcome.complete:
            test_auc = outcome.result["auc"]
            client.log_artifact(parent, str(checkpoint), artifact_path="best_model")
        else:
            log.warning("Test evaluation of trial %d failed: %s", best.number, outcome.reason)
    summary["best_test_auc"] = test_auc
    log_batch(
        client,
        parent,
        metrics={"best_val_auc": best.value, "best_test_auc": test_auc, "n_complete": counts["complete"], "n_failed": counts["failed"]},
        tags={"best_trial": str(best.number), "best_run_id": best.user_attrs.get(ATTR_MLFLOW_RUN, ""), "study_state": "complete"},
    )
    client.set_terminated(parent, "FINISHED")
    return summary


def run_study(spec: StudySpec, config: HpoConfig, progress=None) -> dict[str, object]:
    """The whole study loop without Prefect (the flow does the same with tasks)."""
    handle = open_study(spec, config)
    while (trial := next_trial(handle)) is not None:
        run_trial(handle, trial, progress)
    return finish_study(handle)
