"""A study's stores and its handle: where it lives, which version, how a process opens it.

- `optuna_storage`: the RDB storage with heartbeats; a stale trial is failed in MLflow too and retried.
- `open_study(spec, config)`: create or resume; the creating worker enqueues the forced extremes,
  the warm start (trial 6, from the smaller budgets' finished studies: `tasks.study.warm_start`)
  and makes the study run. `attach_study(name, config)`: an existing study, once per process.
- `StudyHandle`: what every other step of a study takes (stores, grid, space, MLflow ids).

A study keeps what it was created with (study user attrs): its grid version, its architecture
space (`tasks.study.space`) and its pruner; a study made before those attrs existed searched the
categorical space without a pruner, and resumes that way. Forced extremes are enqueued by the one
worker whose `create_study` succeeded (the storage refuses a duplicate name), so they exist
exactly once however many workers start.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from models.arch_grid import Architecture, get_architectures_for_budget
from schemas import tracking as T
from schemas.config import HpoConfig, PrunerKind, StoreConfig, StudyConfig, StudySpec
from tasks.data.dataset import cached_dataset, dataset_record
from tasks.data.prepared import PreparedData
from tasks.study import space
from tasks.study.patience import PatientRDBStorage, patiently
from tasks.study.space import ArchSpaceKind
from tasks.tracking.runs import (
    end_run,
    ensure_study_run,
    get_or_create_experiment,
    log_batch,
    mlflow_client,
    set_tag,
    sqlite_first_use,
)
from tasks.tracking.datasets import features_param, pin_dataset
from tasks.study.warm_start import enqueue_warm_start

log = logging.getLogger("hpo")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# We drive trials with ask/tell and record heartbeats ourselves; Optuna warns that heartbeats
# are "supposed to be used with Study.optimize", which is not true of this driver.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
# Heartbeats and their retry callback are marked experimental since Optuna 2.8; they are the
# documented way to recover from dead workers and we test that path ourselves.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ATTR_MLFLOW_RUN = "mlflow_run_id"
ATTR_ARCHITECTURE = "architecture"  # trial user attr: the claimed architecture and its grid version
ATTR_PRUNER = "pruner"  # study user attr: the pruner the study was created with
ATTR_FAILURE_KIND = "failure_kind"
ATTR_FAILURE_REASON = "failure_reason"
SURPLUS = "surplus"
INTERRUPTED = "interrupted"  # failure_kind of a trial its worker stopped (Ctrl-C, SIGTERM): requeued, not a failure
ATTR_REQUEUED_FROM = "requeued_from"  # trial user attr: the trial whose parameters (and seed) this one repeats
WORKER_STOPPED = "worker_stopped"  # failure_kind of a trial whose worker stopped on a store outage: requeued
NOT_FAILURES = (SURPLUS, INTERRUPTED, WORKER_STOPPED)


class StudyStopped(RuntimeError):
    """This run of the study gave up (too many failed trials); the study can be resumed."""



OBJECTIVE_NAME = "val_auc"  # the study's objective: the best epoch's validation ROC AUC


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
        return patiently(
            PatientRDBStorage, "the Optuna storage", stores.outage_budget_s,
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=cfg.heartbeat_interval_s,
            grace_period=cfg.heartbeat_grace_s,
            heartbeat_stale_trial_callback=on_stale,
            outage_budget_s=stores.outage_budget_s,
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
            "failed": sum(1 for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_FAILURE_KIND) not in NOT_FAILURES),
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
    """Create or resume a study; the creating worker enqueues the extremes and the study run.
    The data is prepared (and validated) first: bad input writes nothing to either store."""
    prepared = cached_dataset(config.data, spec.horizon, config.stores.cache_dir)
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
        # optuna-dashboard and trials_dataframe() name the objective after this, not "Objective 0"
        study.set_metric_names([OBJECTIVE_NAME])
        grid_version = config.study.grid_version
        attrs = {"budget": spec.budget, "horizon": spec.horizon, "version": version, "grid_version": grid_version,
                 space.ATTR_ARCH_SPACE: config.study.arch_space, ATTR_PRUNER: config.study.pruner}
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        grid = get_architectures_for_budget(spec.budget, config.data.num_features, grid_version)
        parent_run_id = ensure_study_run(
            client, experiment_id, study=name, budget=spec.budget, horizon=spec.horizon, version=version,
            source="hpo", smoke_of=spec.smoke_of,
        )
        record = dataset_record(config.data, prepared[0])
        pin_dataset(client, parent_run_id, name, record)
        log_batch(client, parent_run_id, params={"grid_version": grid_version, "grid_size": len(grid),
                                                 T.PARAM_NUM_FEATURES: config.data.num_features,
                                                 T.PARAM_FEATURES: features_param(prepared[0].feature_names),
                                                 T.PARAM_TRAIN_WINDOWS: len(prepared[0].labels["train"]),
                                                 T.PARAM_TRAIN_TICKER_DAYS: prepared[0].ticker_days("train")})
        study.set_user_attr("mlflow_parent_run_id", parent_run_id)
        space.enqueue_extremes(study, config.study.arch_space, grid, config.search)
        # trial 6, before a joining worker may ask (it waits for extremes_enqueued): once, like the extremes
        enqueue_warm_start(study, spec, config.study, config.search, grid, config.study.arch_space, client,
                           str(record["fingerprint"]))  # fmt: skip
        study.set_user_attr("extremes_enqueued", True)
    else:
        _wait_for_creator(study)

    handle = _handle(study, storage, client, experiment_id, config, prepared)
    _warn_if_kept(handle, config)
    if handle.counts()["done"] < config.study.n_trials:  # work to do: the study run is running again
        client.update_run(handle.parent_run_id, status="RUNNING")
        set_tag(client, handle.parent_run_id, T.TAG_STUDY_STATE, "running")
    reconcile_runs(handle)
    return handle


def _handle(study: optuna.Study, storage: RDBStorage, client: MlflowClient, experiment_id: str,
            config: HpoConfig, prepared: tuple[PreparedData, Path] | None = None) -> StudyHandle:
    """The handle, once the study's pinned dataset is this config's (else DatasetMismatch): its grid
    counts the data's F features per day."""
    attrs = study.user_attrs
    data, dataset_path = prepared or cached_dataset(config.data, int(attrs["horizon"]), config.stores.cache_dir)
    # a study made before datasets were pinned records this one now; any other is refused
    pin_dataset(client, attrs["mlflow_parent_run_id"], study.study_name, dataset_record(config.data, data))
    grid_version = int(attrs["grid_version"])
    spec = StudySpec.parse(study.study_name)
    grid = get_architectures_for_budget(attrs["budget"], data.num_features, grid_version)
    arch_space = space.study_arch_space(attrs)
    pruner = attrs.get(ATTR_PRUNER, "none")
    study.sampler = space.make_sampler(arch_space, grid, sampler_seed(study.study_name, config))
    study.pruner = make_pruner(pruner, config.study, config.train.max_epochs)
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
