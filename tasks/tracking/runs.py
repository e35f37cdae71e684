"""MLflow at the edge: the one place where experiments and runs are created.

Every run of the system (hpo trial, supplemental trial, legacy trial, baseline, study, report) is
made by `start_run` with one rule for names, tags and parents (see `schemas.tracking`): a run in a
study's experiment is a child of that study's run, which `ensure_study_run` makes on first need;
runs in other experiments (`baselines_h1`, `reports`) have no parent. Names of params, metrics and
tags come from `schemas.tracking`."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import mlflow
from mlflow.entities import Experiment, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from schemas import tracking as T
from schemas.config import StoreConfig, StudySpec
from tasks.store_waits import notice_mlflow_retries

# MLflow logs a line per database migration on first use of a store; keep the terminal readable.
logging.getLogger("alembic").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


_READY_SQLITE: set[str] = set()


def embedded_store_missing(uri: str) -> bool:
    """True for an embedded SQLite store whose file is not there (or empty): a caller that only
    reads asks this before opening it, since opening an SQLite store creates and migrates it."""
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(uri.removeprefix("sqlite:///"))
    return not path.is_file() or path.stat().st_size == 0


@contextmanager
def sqlite_first_use(url: str):
    """Serialise the first use of a SQLite store across processes on this machine. MLflow and
    Optuna create (MLflow also migrates) a SQLite store's tables on first use; two processes doing
    it at once, as two study flow runs a worker starts together on a fresh store do, collide
    ("table _alembic_tmp_tags already exists"). Other URLs, and later uses, pass straight through."""
    if not url.startswith("sqlite:///") or url in _READY_SQLITE:
        yield
        return
    database = Path(url.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
            _READY_SQLITE.add(url)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mlflow_retry_env(budget_s: float) -> dict[str, str]:
    """MLflow's HTTP retry settings that wait out `budget_s`. urllib3 waits 0 s before the first
    retry and factor * 2^(n-1) s before retry n, at most 120 s each: MLflow's defaults (7 retries,
    factor 2) give up after ~4 minutes, and it allows 10 retries unless its limit is raised too."""
    factor, cap, total, retries = 2, 120.0, 0.0, 0  # MLflow reads the factor as an int
    while total < budget_s:
        retries += 1
        total += 0.0 if retries == 1 else min(cap, factor * 2 ** (retries - 1))
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(factor),
            "_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT": str(max(10, retries))}


_RETRY_ENV_SET: dict[str, str] = {}  # what mlflow_client put in the environment (not the user)


def mlflow_client(stores: StoreConfig) -> MlflowClient:
    """The tracking client; a tracking server's HTTP calls are retried with backoff for up to
    `outage_budget_s` (MLflow's own retries, sized by mlflow_retry_env;
    settings a user put in the environment are kept)."""
    for key, value in mlflow_retry_env(stores.outage_budget_s).items():
        if os.environ.get(key) in (None, _RETRY_ENV_SET.get(key)):  # a user's own setting is kept
            os.environ[key] = _RETRY_ENV_SET[key] = value
    notice_mlflow_retries()  # "waiting for the MLflow server (n s)" once a minute while it retries
    stores.root.mkdir(parents=True, exist_ok=True)
    if stores.mlflow_uri in _READY_SQLITE:
        return MlflowClient(tracking_uri=stores.mlflow_uri)
    with sqlite_first_use(stores.mlflow_uri):  # a new store is created and migrated here, one process at a time
        client = MlflowClient(tracking_uri=stores.mlflow_uri)
        client.search_experiments(max_results=1)
    return client


def serves_artifacts(client: MlflowClient) -> bool:
    """True when the tracking URI is an MLflow server, which then stores every artifact itself."""
    return client.tracking_uri.startswith(("http://", "https://"))


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path) -> str:
    """Experiment id by name; created with artifacts under `artifact_root/name`, or where the
    MLflow server keeps artifacts when the tracking URI is a server (a folder on the creating
    worker would be out of every other worker's reach). Safe when two workers race to create it:
    the loser finds the winner's."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if found.tags.get(T.TAG_EXPERIMENT_KIND) != T.EXPERIMENT_KIND:  # made by an older version
            client.set_experiment_tag(found.experiment_id, T.TAG_EXPERIMENT_KIND, T.EXPERIMENT_KIND)
        if T.TAG_SHARED_VIEW not in found.tags:  # made by an older version
            client.set_experiment_tag(found.experiment_id, T.TAG_SHARED_VIEW, json.dumps(T.trials_view_state()))
        return found.experiment_id
    try:
        if serves_artifacts(client):
            location = None
        elif "://" in str(artifact_root):
            location = f"{artifact_root}/{name}"
        else:
            location = (artifact_root / name).resolve().as_uri()
        # The model-training kind, for MLflow's own code; the UI needs more (schemas.tracking).
        return client.create_experiment(name, artifact_location=location, tags={
            T.TAG_EXPERIMENT_KIND: T.EXPERIMENT_KIND, T.TAG_SHARED_VIEW: json.dumps(T.trials_view_state())})
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _is_duplicate_key(exc: MlflowException) -> bool:
    text = str(exc)
    return "UniqueViolation" in text or "UNIQUE constraint failed" in text or "Duplicate entry" in text


def once_more_on_an_insert_race(call):
    """Run `call`, and once more when it lost a race with another worker inserting the same row:
    MLflow's SQL store looks a tag (or a dataset) up, then inserts it, without a lock, so the
    second of two simultaneous writers gets a unique-key violation (seen with two workers opening
    one study on PostgreSQL, and two logging one new dataset); the row exists by then and the
    retry updates or links it."""
    try:
        return call()
    except MlflowException as exc:
        if not _is_duplicate_key(exc):
            raise
        return call()


def set_tag(client: MlflowClient, run_id: str, key: str, value: object) -> None:
    """`client.set_tag`, safe when another worker sets the same tag at the same moment."""
    once_more_on_an_insert_race(lambda: client.set_tag(run_id, key, str(value)))


def log_batch(client: MlflowClient, run_id: str, params: dict | None = None, metrics: dict | None = None,
              tags: dict | None = None, step: int = 0) -> None:
    """One round trip for params, metrics and tags; non-finite metrics are skipped, not fatal;
    safe when another worker writes the same tag at the same moment."""
    now = int(time.time() * 1000)
    once_more_on_an_insert_race(lambda: client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, step)
            for k, v in (metrics or {}).items()
            if v is not None and math.isfinite(float(v))
        ],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    ))


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    """Every run matching the filter, following pagination (thousands of runs stay cheap)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def search_all_experiments(client: MlflowClient) -> list[Experiment]:
    """Every active experiment, following pagination."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


def study_experiments(client: MlflowClient) -> list[tuple[StudySpec, Experiment]]:
    """Every experiment named as a study (`20M_h5`, `20M_h1_v2`, `smoke-20M_h5`), with its name read."""
    found = []
    for experiment in search_all_experiments(client):
        try:
            found.append((StudySpec.parse(experiment.name), experiment))
        except ValueError:
            continue
    return found


@cache
def code_version() -> str:
    """The git commit of the code that ran (with '-dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def worker_name() -> str:
    """`host:pid` of this process: which worker made a run, trained a trial or evaluated a study."""
    return f"{socket.gethostname()}:{os.getpid()}"


def standard_tags() -> dict[str, str]:
    """MLflow's own source tags, so the UI shows what code produced a run, and the worker."""
    commit = code_version()
    tags = {
        T.TAG_CODE_VERSION: commit,
        T.TAG_WORKER: worker_name(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "scaling-hpo",
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def find_study_run(client: MlflowClient, experiment_id: str, study: str) -> str | None:
    """The study's run in its experiment (the oldest, should two workers have raced)."""
    runs = search_all_runs(client, [experiment_id], f"tags.{T.TAG_RUN_KIND} = 'study' and tags.{T.TAG_STUDY} = '{study}'")
    return min(runs, key=lambda run: run.info.start_time or 0).info.run_id if runs else None


def ensure_study_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    study: str,
    budget: str,
    horizon: int,
    version: int,
    source: str,
    smoke_of: str | None = None,
) -> str:
    """The study's parent run, created on first need by whichever source comes first (an hpo
    study, a legacy import, supplemental trials or baselines)."""
    found = find_study_run(client, experiment_id, study)
    if found is not None:
        return found
    run = client.create_run(
        experiment_id,
        run_name=study,
        tags={
            T.TAG_RUN_KIND: "study",
            T.TAG_SOURCE: source,
            T.TAG_STUDY: study,
            T.TAG_STUDY_VERSION: str(version),
            T.TAG_BUDGET: budget,
            T.TAG_HORIZON: str(horizon),
            T.TAG_SMOKE_OF: smoke_of or "",
            **standard_tags(),
        },
    )
    return run.info.run_id


def start_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    run_kind: str,
    source: str,
    name: str,
    study: str | None,
    parent_run_id: str | None,
    tags: dict[str, object] | None = None,
    params: dict[str, object] | None = None,
    start_time: int | None = None,
) -> str:
    """Create a trial, baseline or report run: kind, source, study, parent and standard tags set
    the same way for every source; `tags` adds the source's own (trial number, state, ...)."""
    all_tags: dict[str, object] = {T.TAG_RUN_KIND: run_kind, T.TAG_SOURCE: source, **standard_tags(), **(tags or {})}
    if study is not None:
        all_tags[T.TAG_STUDY] = study
    if parent_run_id is not None:
        all_tags[T.TAG_PARENT_RUN] = parent_run_id
    run = client.create_run(
        experiment_id, run_name=name, start_time=start_time, tags={k: str(v) for k, v in all_tags.items()}
    )
    if params:
        log_batch(client, run.info.run_id, params=params)
    return run.info.run_id


def end_run(client: MlflowClient, run_id: str, state: str, tags: dict[str, str] | None = None,
            metrics: dict | None = None, end_time: int | None = None) -> None:
    """Close a run with its state tag (complete | failed | pruned | stopped | interrupted) and MLflow status."""
    log_batch(client, run_id, metrics=metrics, tags={T.TAG_STATE: state, **(tags or {})})
    status = {"complete": "FINISHED", "pruned": "KILLED", "stopped": "KILLED", "interrupted": "KILLED"}.get(state, "FAILED")
    client.set_terminated(run_id, status, end_time=end_time)


# MLflow's fluent API (`mlflow.<flavor>.log_model` logs to "the active run" only) keeps its
# tracking URI process-wide: one caller at a time.
_FLUENT = threading.Lock()


@contextmanager
def active_run(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Make an existing run the fluent API's active run, on this client's stores, for the
    duration of the block. The run's status is left for the caller to set (`end_run`)."""
    with _FLUENT:
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(client.tracking_uri)  # the model registry follows it (no registry URI is set)
        try:
            mlflow.start_run(run_id=run_id)
            try:
                yield
            finally:
                mlflow.end_run(status=client.get_run(run_id).info.status)
        finally:
            mlflow.set_tracking_uri(previous)


def experiment_url(ui: str, experiment_id: str, trials_view: bool = True) -> str:
    """The experiment's runs in the MLflow UI at `ui` (http://host:port), in the model-training
    view (schemas.tracking.UI_WORKFLOW), opened on the saved trials view (schemas.tracking
    TRIALS_VIEW_KEY: trials flat, best first, val AUC and the architecture shown)."""
    view = f"&viewStateShareKey={T.TRIALS_VIEW_KEY}" if trials_view else ""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{T.UI_WORKFLOW}{view}"
