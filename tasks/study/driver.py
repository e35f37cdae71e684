"""One (budget, horizon) study: Optuna decides what runs next, MLflow records what happened.

The study's life, in the order a caller uses it (the Prefect flow, the CLI, the tests and the
benchmark all go through these same functions):
- `open_study(spec, config)`: create or resume; the creator enqueues the forced extremes.
- `run_trials(handle, execute)`: the one study loop. It claims trials (ask + sample here, in one
  sampler) and hands each trial's number to `execute`, up to `slots` at once, until the study has
  `n_trials` done trials (complete, plus pruned when a pruner is on), times out, or fails too often. `execute` defaults to `run_trial` in
  this process; the flow passes a Prefect task that takes only (study name, config, number).
- `run_trial(handle, number)`: one trial in a child process, tracked as one MLflow run.
- `finish_study(handle)`: evaluate the best trial on test and close the study run.

Optuna's storage answers "how far is this study" (it is shared by every worker and survives
restarts); each Optuna trial keeps the id of its one MLflow run (`mlflow_run_id` user attr).

A study keeps what it was created with (study user attrs): its grid version, its architecture
space (`tasks.study.space`) and its pruner; a study made before those attrs existed searched the
categorical space without a pruner, and resumes that way.

Guarantees, and how:
- `n_trials` counts done trials across all workers and restarts: COMPLETE ones, plus PRUNED ones
  when the study has a pruner (without one there are none). A worker only starts a trial while
  done + running < n_trials, and after `ask()` it checks its claim: ordered by trial number, the
  done and running trials beyond the first n_trials are surplus and are failed at once (reason
  "surplus"), so two workers racing for the last slot never overshoot.
- Pruning (opt-in): every trial reports each epoch's val AUC to its Optuna trial; a trial the
  pruner gives up on is stopped within one epoch (its process is terminated), told PRUNED, and
  its MLflow run ends KILLED with state=pruned and its last epoch. The forced extremes report
  (they are the pruner's yardstick) but are never pruned.
- Forced extremes are enqueued by the one worker whose `create_study` succeeded (the storage
  refuses a duplicate name), so they exist exactly once however many workers start.
- A killed worker's trial stops heart-beating; after `heartbeat_grace_s` any worker fails it,
  marks its MLflow run FAILED (reason worker_lost) and re-enqueues its parameters (at most
  `max_retries` times).
- The trial itself runs in a child process (tasks.study.trial_process): diverged, OOM, crashed and hung
  trials are failed with their reason in Optuna and MLflow, and the study goes on.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_any
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from models.arch_grid import Architecture, get_architectures_for_budget
from schemas.config import HpoConfig, PrunerKind, StoreConfig, StudyConfig, StudySpec
from schemas import tracking as T
from schemas.trial import TrialRequest
from tasks.data.dataset import cached_dataset
from tasks.study import checkpoints, space
from tasks.study.progress import current_progress
from tasks.study.space import ATTR_EXTREME, ArchSpaceKind
from tasks.tracking.datasets import log_dataset_input, prepared_dataset_entity
from tasks.tracking.predictions import log_scores_file, scores_path
from tasks.study.trial_process import TrialOutcome, run_trial_process
from tasks.tracking.runs import (
    end_run,
    ensure_study_run,
    get_or_create_experiment,
    log_batch,
    mlflow_client,
    set_tag,
    sqlite_first_use,
    start_run,
    worker_name,
)

log = logging.getLogger("hpo")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# We drive trials with ask/tell and record heartbeats ourselves; Optuna warns that heartbeats
# are "supposed to be used with Study.optimize", which is not true of this driver.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
# Heartbeats and their retry callback are marked experimental since Optuna 2.8; they are the
# documented way to recover from dead workers and we test that path ourselves.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ATTR_MLFLOW_RUN = "mlflow_run_id"
ATTR_PRUNER = "pruner"  # study user attr: the pruner the study was created with
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
            end_run(client, run_id, "failed", {T.TAG_FAILURE_KIND: "worker_lost", T.TAG_FAILURE_REASON: reason})
        log.warning("Trial %d failed: worker lost (heartbeat stale); re-enqueued", trial.number)
        retry(optuna_study, trial)

    url = stores.optuna_url
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with sqlite_first_use(url):  # Optuna creates a new SQLite store's tables here
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
    """A study opened by this process: its stores, grid and MLflow ids. It holds no per-run
    state, so one handle per process serves every trial thread."""

    name: str
    version: int
    spec: StudySpec
    config: HpoConfig
    study: optuna.Study
    storage: RDBStorage
    grid: list[Architecture]
    grid_version: int
    arch_space: ArchSpaceKind
    pruner: PrunerKind
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    dataset_path: Path

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.stores.checkpoint_dir(self.name)

    def counts(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        complete, pruned = states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED)
        return {
            "complete": complete,
            "pruned": pruned,
            "done": complete + pruned,  # what n_trials counts
            "running": states.count(TrialState.RUNNING),
            "waiting": states.count(TrialState.WAITING),
            "failed": sum(1 for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_FAILURE_KIND) != SURPLUS),
        }

    def live_trial(self, number: int) -> optuna.Trial:
        """The running trial with this number, as a live Optuna trial (for suggest and tell)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        return optuna.Trial(self.study, trial_id)


def sampler_seed(name: str, config: HpoConfig) -> int:
    # seeded per study: reproducible, and two studies (or versions) do not sample in lockstep
    return config.study.sampler_seed + zlib.crc32(name.encode()) % 100_000


def make_pruner(kind: PrunerKind, study: StudyConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner of this kind, stepping in epochs; every trial trains `prune_after_epochs`
    epochs first. Median: stop a trial whose val AUC is below the median of the complete trials'
    at the same epoch (once 5 have completed: the forced extremes give it that yardstick).
    Hyperband: successive halving over brackets from prune_after_epochs to max_epochs epochs."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=study.prune_after_epochs)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, study.prune_after_epochs), max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, config: HpoConfig) -> StudyHandle:
    """Create or resume a study; the creating worker enqueues the extremes and the study run."""
    client = mlflow_client(config.stores)
    storage = optuna_storage(config.stores, config, client)
    name, version = resolve_study_name(spec, storage)
    # the sampler and pruner are set by _handle from what the study was created with
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    experiment_id = get_or_create_experiment(client, name, config.stores.artifact_root)

    if created:
        grid_version = config.study.grid_version
        attrs = {"budget": spec.budget, "horizon": spec.horizon, "version": version, "grid_version": grid_version,
                 space.ATTR_ARCH_SPACE: config.study.arch_space, ATTR_PRUNER: config.study.pruner}
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        grid = get_architectures_for_budget(spec.budget, grid_version=grid_version)
        parent_run_id = ensure_study_run(
            client, experiment_id, study=name, budget=spec.budget, horizon=spec.horizon, version=version,
            source="hpo", smoke_of=spec.smoke_of,
        )
        log_batch(client, parent_run_id, params={"grid_version": grid_version, "grid_size": len(grid)})
        study.set_user_attr("mlflow_parent_run_id", parent_run_id)
        space.enqueue_extremes(study, config.study.arch_space, grid, config.search)
        study.set_user_attr("extremes_enqueued", True)
    else:
        _wait_for_creator(study)

    handle = _handle(study, storage, client, experiment_id, config)
    _warn_if_kept(handle, config)
    if handle.counts()["done"] < config.study.n_trials:  # work to do: the study run is running again
        client.update_run(handle.parent_run_id, status="RUNNING")
        set_tag(client, handle.parent_run_id, T.TAG_STUDY_STATE, "running")
    reconcile_runs(handle)
    return handle


def _handle(study: optuna.Study, storage: RDBStorage, client: MlflowClient, experiment_id: str,
            config: HpoConfig) -> StudyHandle:
    attrs = study.user_attrs
    grid_version = int(attrs["grid_version"])
    spec = StudySpec.parse(study.study_name)
    grid = get_architectures_for_budget(attrs["budget"], grid_version=grid_version)
    arch_space = space.study_arch_space(attrs)
    pruner = attrs.get(ATTR_PRUNER, "none")
    study.sampler = space.make_sampler(arch_space, grid, sampler_seed(study.study_name, config))
    study.pruner = make_pruner(pruner, config.study, config.train.max_epochs)
    _, dataset_path = cached_dataset(config.data, int(attrs["horizon"]), config.stores.cache_dir)
    return StudyHandle(
        name=study.study_name,
        version=int(attrs.get("version", spec.version or 1)),
        spec=spec,
        config=config,
        study=study,
        storage=storage,
        grid=grid,
        grid_version=grid_version,
        arch_space=arch_space,
        pruner=pruner,
        client=client,
        experiment_id=experiment_id,
        parent_run_id=attrs["mlflow_parent_run_id"],
        dataset_path=dataset_path,
    )


_ATTACHED: dict[tuple[str, str], StudyHandle] = {}
_ATTACH_LOCK = threading.Lock()


def attach_study(name: str, config: HpoConfig) -> StudyHandle:
    """An existing study by name, opened once per process and config (what a trial task uses:
    it gets values, not a handle, and opens the stores itself)."""
    key = (name, config.model_dump_json())
    with _ATTACH_LOCK:
        if key not in _ATTACHED:
            client = mlflow_client(config.stores)
            storage = optuna_storage(config.stores, config, client)
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                raise LookupError(f"no study {name!r} in {config.stores.optuna_url}; open it first (`hpo run ...`)") from None
            experiment_id = get_or_create_experiment(client, name, config.stores.artifact_root)
            _ATTACHED[key] = _handle(study, storage, client, experiment_id, config)
        return _ATTACHED[key]


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


def _warn_if_kept(handle: StudyHandle, config: HpoConfig) -> None:
    """A resumed study keeps its space and pruner (so its trials and its count stay comparable);
    say so when this run asked for others."""
    for what, kept, asked in (("arch_space", handle.arch_space, config.study.arch_space),
                              ("pruner", handle.pruner, config.study.pruner)):
        if kept != asked:
            log.warning("%s was created with %s=%s and keeps it (this run asked for %s); "
                        "use --fresh for a new version with %s", handle.name, what, kept, asked, asked)


def reconcile_runs(handle: StudyHandle) -> None:
    """A worker killed between Optuna's tell and MLflow's end leaves a RUNNING MLflow run for a
    finished trial: end it with the trial's real state."""
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in handle.study.get_trials(deepcopy=False, states=finished):
        run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
        if not run_id or handle.client.get_run(run_id).info.status != "RUNNING":
            continue
        if trial.state == TrialState.COMPLETE:
            end_run(handle.client, run_id, "complete")
        elif trial.state == TrialState.PRUNED:
            end_run(handle.client, run_id, "pruned", {T.TAG_LAST_EPOCH: trial.last_step or 0})
        else:
            end_run(handle.client, run_id, "failed", {
                T.TAG_FAILURE_KIND: trial.user_attrs.get(ATTR_FAILURE_KIND, "worker_lost"),
                T.TAG_FAILURE_REASON: trial.user_attrs.get(ATTR_FAILURE_REASON, "worker lost before recording"),
            })


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
    """Close a trial's MLflow run with its outcome: final metrics, where it was pruned, or the
    failure and its reason. A pruned run logs no final val_auc: it is no complete trial."""
    if outcome.complete:
        final = {k: outcome.result[k] for k in T.FINAL_METRICS if k in outcome.result}
        end_run(client, run_id, "complete", {T.TAG_DEVICE: outcome.result.get("device", "unknown")}, metrics=final)
    elif outcome.pruned:
        end_run(client, run_id, "pruned", {T.TAG_LAST_EPOCH: outcome.last_epoch},
                metrics={"epochs": outcome.last_epoch, "train_seconds": outcome.seconds})
    else:
        reason = (outcome.reason or "")[:4000]
        end_run(client, run_id, "failed", {T.TAG_FAILURE_KIND: outcome.failure_kind or "error", T.TAG_FAILURE_REASON: reason})


# ---------------------------------------------------------------- the study loop


TrialExecutor = Callable[[int], dict]  # trial number -> {"state", "val_auc", "failure"}


def run_trials(handle: StudyHandle, execute: TrialExecutor | None = None, poll_s: float = 2.0) -> str | None:
    """The study loop: run trials, up to `slots` at once on this worker, until the study has
    `n_trials` done trials; returns why it stopped early (a timeout), or None.

    Claims follow `next_trial`'s rules, so n_trials stays exact with any number of workers and
    slots. Raises StudyStopped after `failure_limit` failed trials of this run (the running ones
    finish first). An exception from `execute` (not a failed trial: those are results) stops the
    loop and is raised once the running trials have ended.
    """
    cfg = handle.config.study
    progress = current_progress()
    if execute is None:
        def execute(number: int) -> dict:
            return run_trial(handle, number, progress)
    if progress is not None:
        progress.study(handle.name, cfg.n_trials, handle.counts()["done"])
    loop = _LoopState(started=time.monotonic())
    running: set[Future] = set()
    with ThreadPoolExecutor(max_workers=cfg.slots, thread_name_prefix=f"{handle.name}-slot") as slots:
        while True:
            for future in [f for f in running if f.done()]:
                running.discard(future)
                if future.result()["state"] == "failed":  # a pruned trial is a result, not a failure
                    loop.failures += 1
            number = next_trial(handle, loop, block=False) if len(running) < cfg.slots else WAIT
            if number is None and not running:
                return loop.stop_reason
            if number is None or number == WAIT:
                if running:
                    wait_for_any(running, timeout=poll_s, return_when=FIRST_COMPLETED)
                else:
                    time.sleep(poll_s)
                continue
            # each trial thread sees the caller's context (Prefect's flow run, the progress bars)
            running.add(slots.submit(contextvars.copy_context().run, execute, number))


@dataclass
class _LoopState:
    """What one run of the loop remembers: when it started, its failures, why it stopped."""

    started: float
    failures: int = 0
    stop_reason: str | None = None


WAIT = "wait"  # next_trial(block=False): the remaining slots are taken by running trials


def next_trial(handle: StudyHandle, loop: _LoopState, poll_s: float = 2.0, block: bool = True) -> int | str | None:
    """Claim the next trial for this worker and draw its parameters; its number, or None when
    the study (or this run) is done. With block=False it returns WAIT instead of sleeping while
    running trials (this worker's own or other workers') may still complete the study."""
    cfg = handle.config.study
    while True:
        optuna.storages.fail_stale_trials(handle.study)
        counts = handle.counts()
        if counts["done"] >= cfg.n_trials:
            return None
        if cfg.timeout_hours is not None and time.monotonic() - loop.started > cfg.timeout_hours * 3600:
            if loop.stop_reason is None:  # said once, though slots may poll until their trials end
                loop.stop_reason = f"timeout after {cfg.timeout_hours:g} h at {counts['done']}/{cfg.n_trials} trials"
                log.warning("Timeout after %g h: stopping at %d/%d trials", cfg.timeout_hours, counts["done"], cfg.n_trials)
            return None
        if loop.failures >= cfg.failure_limit:
            raise StudyStopped(
                f"{handle.name}: {loop.failures} trials failed in this run (limit {cfg.failure_limit}); "
                "see the failure_reason of the failed runs in MLflow, fix the cause, and run again to resume"
            )
        if counts["done"] + counts["running"] >= cfg.n_trials:
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
        space.suggest(trial, handle.arch_space, handle.grid, handle.config.search)  # the one sampler draws here
        return trial.number


def _is_surplus(handle: StudyHandle, trial: optuna.Trial) -> bool:
    claimed = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
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


def run_trial(handle: StudyHandle, number: int, progress=None) -> dict:
    """Train one claimed trial in a child process, tracked as one MLflow run; never raises for
    the trial's own failures. Returns {"state", "val_auc", "failure"}."""
    trial_started = time.monotonic()
    trial = handle.live_trial(number)
    arch, hp = space.suggest(trial, handle.arch_space, handle.grid, handle.config.search)  # drawn when claimed
    extreme = trial.user_attrs.get(ATTR_EXTREME, "none")
    retry_of = handle.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    seed = handle.config.train.seed + (retry_of if retry_of is not None else number)
    train_config = handle.config.train.model_copy(update={"seed": seed})
    # one write (each attribute is a commit): arch_idx and grid version whatever the space drew
    trial.set_user_attr("architecture", {**arch.as_dict(), "grid_version": handle.grid_version})
    run_id = _start_trial_run(handle, trial, arch, hp, extreme, retry_of, train_config)
    log.info(trial_description(number, arch, hp) + (f" [forced extreme: {extreme}]" if extreme != "none" else ""))
    if progress is not None:
        progress.trial_started(handle.name, number, f"d={arch.d_model} L={arch.n_layers} h={arch.n_heads} lr={hp['learning_rate']:g}")

    prune = _PruningCheck(trial, may_prune=handle.pruner != "none" and extreme == "none")

    def on_event(event: dict) -> None:
        log_epoch(handle.client, run_id, event)
        prune.on_event(event)
        if progress is not None:
            progress.on_event(handle.name, number, event)

    request = TrialRequest(
        trial_number=number,
        dataset_path=handle.dataset_path,
        window=handle.config.data.window,
        arch=arch,
        learning_rate=hp["learning_rate"],
        dropout=hp["dropout"],
        weight_decay=hp["weight_decay"],
        train=train_config,
        checkpoint_path=checkpoints.checkpoint_path(handle.checkpoint_dir, number),
        # trials in several slots share the CPU cores (data prep, CPU training) instead of fighting over them
        threads=max(1, (os.cpu_count() or 1) // handle.config.study.slots),
    )
    outcome = run_trial_process(
        request,
        on_event=on_event,
        heartbeat=lambda: handle.storage.record_heartbeat(trial._trial_id),
        heartbeat_interval_s=handle.config.study.heartbeat_interval_s,
        stall_timeout_s=handle.config.study.stall_timeout_s,
        should_stop=prune.should_stop,
    )
    record_outcome(handle, trial, run_id, outcome)
    if outcome.complete:
        log_scores_file(handle.client, run_id, scores_path(request.checkpoint_path, "val"))
    log_batch(handle.client, run_id, metrics=outcome.time_split(time.monotonic() - trial_started))
    if progress is not None:
        if outcome.complete:
            done = f"val_auc={outcome.result['val_auc']:.4f}"
        else:
            done = f"pruned after epoch {outcome.last_epoch}" if outcome.pruned else f"failed ({outcome.failure_kind})"
        progress.trial_finished(handle.name, number, done)
        progress.study(handle.name, handle.config.study.n_trials, handle.counts()["done"])
    return {"state": outcome.state, "val_auc": outcome.result.get("val_auc"), "failure": outcome.failure_kind}


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


def _start_trial_run(handle: StudyHandle, trial: optuna.Trial, arch: Architecture, hp: dict, extreme: str,
                     retry_of: int | None, train_config) -> str:
    tags = {
        T.TAG_STUDY_VERSION: handle.version,
        T.TAG_BUDGET: handle.spec.budget,
        T.TAG_HORIZON: handle.spec.horizon,
        T.TAG_TRIAL_NUMBER: trial.number,
        T.TAG_EXTREME_TYPE: extreme,
        T.TAG_STATE: "running",
        T.TAG_OPTUNA_TRIAL_ID: trial._trial_id,
    }
    if retry_of is not None:
        tags[T.TAG_RETRY_OF] = retry_of
    run_id = start_run(
        handle.client, handle.experiment_id, run_kind="trial", source="hpo", study=handle.name,
        name=T.trial_run_name(handle.name, trial.number), parent_run_id=handle.parent_run_id, tags=tags,
        params=trial_params(handle.spec.budget, handle.spec.horizon, handle.grid_version, arch, hp,
                            train_config.batch_size, train_config.seed),
    )
    trial.set_user_attr(ATTR_MLFLOW_RUN, run_id)
    log_dataset_input(handle.client, run_id, prepared_dataset_entity(handle.dataset_path, handle.config.data))
    return run_id


def record_outcome(handle: StudyHandle, trial: optuna.Trial, run_id: str, outcome: TrialOutcome) -> None:
    """Optuna first (the source of truth for progress), then MLflow; `reconcile_runs` repairs a
    crash between the two."""
    if outcome.complete:
        result = outcome.result
        trial.set_user_attr("result", {k: result[k] for k in ("epochs", "best_epoch", "pred_range")})
        # before the tell: whoever finds the study complete must find its best weights in MLflow
        checkpoints.store_if_best(handle.client, run_id, checkpoints.checkpoint_path(handle.checkpoint_dir, trial.number),
                                  result["val_auc"], checkpoints.best_value_so_far(handle.study))
        handle.study.tell(trial, result["val_auc"])
        end_trial_run(handle.client, run_id, outcome)
        log.info(
            "Trial %d finished: val_auc=%.4f, pred_min=%.4f, pred_max=%.4f, recall=%.4f, epochs=%d, seconds=%.1f",
            trial.number, result["val_auc"], result["pred_min"], result["pred_max"], result["recall"],
            result["epochs"], result["train_seconds"],
        )
        prune_checkpoints(handle)
    elif outcome.pruned:
        handle.study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps the last reported val AUC as its value
        end_trial_run(handle.client, run_id, outcome)
        last = outcome.epochs[-1] if outcome.epochs else {}
        log.info("Trial %d pruned after epoch %d: val_auc=%.4f", trial.number, outcome.last_epoch, last.get("val/auc", math.nan))
        checkpoints.checkpoint_path(handle.checkpoint_dir, trial.number).unlink(missing_ok=True)  # a pruned trial saved none
    else:
        trial.set_user_attr(ATTR_FAILURE_KIND, outcome.failure_kind)
        trial.set_user_attr(ATTR_FAILURE_REASON, (outcome.reason or "")[:2000])
        handle.study.tell(trial, state=TrialState.FAIL)
        end_trial_run(handle.client, run_id, outcome)
        log.warning("Trial %d failed: %s: %s", trial.number, outcome.failure_kind, outcome.reason)


def prune_checkpoints(handle: StudyHandle) -> None:
    """Keep the best finished trial's weights only, on this worker and in MLflow (a 2B checkpoint
    is gigabytes; see tasks.study.checkpoints)."""
    checkpoints.prune(handle.client, handle.experiment_id, handle.checkpoint_dir, handle.study)


# ---------------------------------------------------------------- finishing


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

    best = handle.study.best_trial
    summary.update(state="complete", best_trial=best.number, best_val_auc=best.value)
    recorded = client.get_run(parent).data
    if (recorded.tags.get(T.TAG_STUDY_STATE) == "complete" and recorded.tags.get(T.TAG_BEST_TRIAL) == str(best.number)
            and _has_test_scores(client, best)):  # fmt: skip
        # finished before (a campaign resuming, or a second worker): nothing new to evaluate. A study
        # finished by a version that logged no test scores is evaluated again: the report needs them.
        summary["best_test_auc"] = recorded.metrics.get("best_test_auc")
        checkpoints.remove_local(handle.checkpoint_dir)
        return summary
    try:
        test_auc, version = evaluate_on_test(handle, best)
    except Exception as exc:  # a missing checkpoint, a failed evaluation, a store that broke: retried by a rerun
        reason = f"{type(exc).__name__}: {exc}"[:4000]
        end_run(client, parent, "failed", {T.TAG_STUDY_STATE: "evaluation_failed", T.TAG_FAILURE_REASON: reason})
        raise
    summary.update(best_test_auc=test_auc, model_version=version)
    metrics = dict(zip(T.STUDY_METRICS, (best.value, test_auc, counts["complete"], counts["failed"], counts["pruned"])))
    end_run(client, parent, "complete", metrics=metrics, tags={
        T.TAG_BEST_TRIAL: str(best.number),
        T.TAG_BEST_RUN_ID: best.user_attrs.get(ATTR_MLFLOW_RUN, ""),
        T.TAG_STUDY_STATE: "complete",
        T.TAG_EVALUATED_ON: worker_name(),
        T.TAG_FAILURE_REASON: "",
    })
    checkpoints.remove_local(handle.checkpoint_dir)
    return summary


def _has_test_scores(client: MlflowClient, best: FrozenTrial) -> bool:
    run_id = best.user_attrs.get(ATTR_MLFLOW_RUN)
    return bool(run_id) and bool(client.get_run(run_id).data.tags.get(T.predictions_tag("test")))


def evaluate_on_test(handle: StudyHandle, best: FrozenTrial) -> tuple[float, str]:
    """The selected trial's test AUC (the only time a study touches the test split) and the
    version of its registered model. Raises CheckpointMissing or EvaluationFailed."""
    run_id = best.user_attrs.get(ATTR_MLFLOW_RUN)
    checkpoint = checkpoints.fetch(handle.client, run_id, best.number, handle.checkpoint_dir)
    arch = space.trial_architecture(handle.arch_space, handle.grid, best.params)
    outcome = run_trial_process(
        TrialRequest(
            mode="evaluate",
            trial_number=best.number,
            dataset_path=handle.dataset_path,
            window=handle.config.data.window,
            arch=arch,
            train=handle.config.train,
            checkpoint_path=checkpoint,
            split="test",
        ),
        stall_timeout_s=handle.config.study.stall_timeout_s,
    )
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
        tags={k: entry[k] for k in T.MODEL_VERSION_TAGS},
    )
    return test_auc, version


def study_summary(handle: StudyHandle) -> dict[str, object]:
    """The study as the stores hold it, read only (`finish_study`'s summary, for a caller that did
    not run it): counts, state, best trial, val and test AUC."""
    recorded = handle.client.get_run(handle.parent_run_id).data
    summary: dict[str, object] = {"study": handle.name, **handle.counts(), "n_trials": handle.config.study.n_trials,
                                  "state": recorded.tags.get(T.TAG_STUDY_STATE, "running")}
    if T.TAG_BEST_TRIAL in recorded.tags:
        summary.update(best_trial=int(recorded.tags[T.TAG_BEST_TRIAL]), best_val_auc=recorded.metrics.get("best_val_auc"),
                       best_test_auc=recorded.metrics.get("best_test_auc"))
    return summary


def run_study(spec: StudySpec, config: HpoConfig, execute: TrialExecutor | None = None) -> dict[str, object]:
    """A whole study without Prefect: the same three steps the study flow runs as tasks."""
    handle = open_study(spec, config)
    stop_reason = run_trials(handle, execute)
    return finish_study(handle, stop_reason)
