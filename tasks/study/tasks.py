"""Prefect tasks of a study. Each takes values (a study name, the config, a trial number) and
opens the stores it needs itself, so the Prefect UI shows its inputs and any worker could run it.

A task is named after its plain function with `_task` (`open_study_task` runs
`store.open_study`); the Prefect names (`open-study`, `trial`, ...) are what the UI shows.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    TableArtifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from schemas.config import HpoConfig, StudySpec
from tasks.refusals import retry_unless_refused
from tasks.study import finish, loop, retrain, store, supplemental
from tasks.study.progress import current_progress, progress_line, trials_table
from tasks.study.trial import TrialResult, run_trial
from tasks.tracking.runs import experiment_url, serves_artifacts

log = logging.getLogger("hpo")


@task(name="open-study", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused)
def open_study_task(spec: StudySpec, config: HpoConfig) -> str:
    """Create or resume the study; its name (retried: it only talks to the stores)."""
    handle = store.open_study(spec, config)
    counts = handle.counts()
    log.info("%s: %d/%d trials done, %d running; %s", handle.name, counts["done"], config.study.n_trials, counts["running"], mlflow_link(handle))
    return handle.name


@task(name="trial", cache_policy=NO_CACHE)
def train_trial_task(study: str, config: HpoConfig, trial_number: int) -> TrialResult:
    """Train one claimed trial in its own process; failures are recorded, not raised."""
    handle = store.attach_study(study, config)
    result = run_trial(handle, trial_number, current_progress())
    log.info("%s #%d %s%s; %s", study, trial_number, result.state,
             f": val AUC {result.val_auc:.4f}" if result.val_auc is not None else (f" ({result.failure})" if result.failure else ""),
             mlflow_link(handle, _trial_run_id(handle, trial_number)))
    return result


def _trial_run_id(handle: store.StudyHandle, number: int) -> str | None:
    trial = handle.storage.get_trial(handle.storage.get_trial_id_from_study_id_trial_number(handle.study._study_id, number))
    return trial.user_attrs.get(store.ATTR_MLFLOW_RUN)


def mlflow_link(handle: store.StudyHandle, run_id: str | None = None) -> str:
    """The study's runs (or one run) in the MLflow UI of a tracking server; with an embedded store
    (no UI of its own), the run id and the store, for `mlflow ui` (README, Prefect and MLflow UIs)."""
    uri = handle.client.tracking_uri
    if not serves_artifacts(handle.client):
        return f"MLflow run {run_id} in {uri}" if run_id else f"MLflow experiment {handle.name} in {uri}"
    if run_id:
        return f"MLflow run {uri.rstrip('/')}/#/experiments/{handle.experiment_id}/runs/{run_id}"
    return f"MLflow runs {experiment_url(uri, handle.experiment_id)}"


def run_trials_as_tasks(study: str, config: HpoConfig) -> str | None:
    """The study loop (tasks.study.loop) with each trial as a `trial` task run named `STUDY #N`;
    the flow run's artifacts `trials-<study>` (table) and `progress-<study>` follow the trials as
    they finish, and a progress line (k/n, best so far, ETA) goes to the logs after each."""
    view = StudyView(study, config)

    def execute(number: int) -> TrialResult:
        outcome = train_trial_task.with_options(task_run_name=f"{study} #{number}")(study, config, number)
        view.publish(log_progress=True)
        return outcome

    view.publish()
    try:
        return loop.run_trials(store.attach_study(study, config), execute)
    finally:
        view.publish()
        view.flush(VIEW_FLUSH_S)


def trials_artifact_key(study: str, kind: str = "trials") -> str:
    """`trials-smoke-20m-h5`: Prefect artifact keys take lowercase letters, digits and dashes."""
    return f"{kind}-" + re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-")


VIEW_FLUSH_S = 10.0  # how long a study's end waits for its last table update to reach the Prefect API (it is quick when the API answers)


class LatestOnly:
    """Runs the newest call handed to it on a thread of its own and drops the ones it superseded.

    A study's Prefect view goes through it so that the study never waits on the Prefect API: in an
    outage Prefect's client retries each call for minutes (PREFECT_CLIENT_MAX_RETRIES, sized to
    the outage budget in flows/__init__), which, in the study's own thread, held up every trial
    by a minute (seen: a 5-minute outage made 7 s trials take 74-83 s). Once the API is back the
    view shows the study as it is then, not the updates it missed. Each call runs in the Prefect
    context (flow run) of the thread that handed it over."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._pending: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, call: Callable[[], None]) -> None:
        context = contextvars.copy_context()
        with self._lock:
            self._pending = lambda: context.run(call)
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name=self.name, daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                call, self._pending = self._pending, None
                if call is None:
                    self._thread = None
                    self._idle.set()
                    return
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - a view of the study; the study never fails for it
                log.warning("%s not published: %s", self.name, exc)

    def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the calls handed over so far; False if they are still running."""
        return self._idle.wait(timeout_s)


class StudyView:
    """The study as this flow run shows it in Prefect: ONE table artifact `trials-<study>` (every
    worker's trials) and ONE progress artifact `progress-<study>` (done / n_trials), each created
    once and then updated in place, so the run's Artifacts tab holds one card of each, current.
    The progress line is logged here, in the study's thread; the artifacts are written by a
    `LatestOnly` thread, so an unreachable Prefect API delays the cards, never the trials."""

    def __init__(self, study: str, config: HpoConfig):
        self.study, self.config = study, config
        self.table_id: UUID | None = None
        self.progress_id: UUID | None = None
        self.started, self.done_at_start = time.monotonic(), None
        self.writer = LatestOnly(f"trials table of {study}")

    def publish(self, log_progress: bool = False) -> None:
        try:
            self._publish(log_progress)
        except Exception as exc:  # noqa: BLE001 - a view of the study; the study never fails for it
            log.warning("trials table of %s not published: %s", self.study, exc)

    def flush(self, timeout_s: float) -> None:
        if not self.writer.flush(timeout_s):
            log.warning("trials table of %s: the Prefect API has not answered for %.0f s; the study goes on without it",
                        self.study, timeout_s)  # fmt: skip

    def _publish(self, log_progress: bool) -> None:
        handle = store.attach_study(self.study, self.config)
        trials = [t for t in handle.study.get_trials(deepcopy=False) if t.user_attrs.get(store.ATTR_FAILURE_KIND) != store.SURPLUS]
        table, done, n_trials = trials_table(trials, handle.grid), handle.counts()["done"], self.config.study.n_trials
        if self.done_at_start is None:
            self.done_at_start = done
            if done >= n_trials:
                log.info("%s already complete: %s, nothing to run", self.study, progress_line(self.study, trials, done, n_trials, 0, 0).split(": ", 1)[1])
        line = progress_line(self.study, trials, done, n_trials, time.monotonic() - self.started, done - self.done_at_start)
        if log_progress:
            log.info(line)
        if not in_a_run():
            return
        description = (f"Trials of study **{self.study}** on every worker, updated in place as they finish (val AUC: higher "
                       f"is better). {line}")  # the progress line: k/n, best so far, ETA from this run's pace
        percent = 100.0 * min(done, n_trials) / max(n_trials, 1)
        self.writer.submit(lambda: self._write(table, description, percent, line))

    def _write(self, table: list[dict], description: str, percent: float, line: str) -> None:
        """Runs on the writer's thread, one call at a time: the first that gets through creates each card."""
        if self.table_id is None:
            self.table_id = create_table_artifact(table=table, key=trials_artifact_key(self.study), description=description)
        else:
            with get_client(sync_client=True) as client:
                client.update_artifact(self.table_id, ArtifactUpdate(data=TableArtifact(table=table).format(), description=description))
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(percent, key=trials_artifact_key(self.study, "progress"), description=line)
        else:
            update_progress_artifact(self.progress_id, percent, description=line)


def in_a_run() -> bool:
    """Prefect artifacts belong to a flow or task run; a plain call (a test, `task.fn`) has none."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


@task(name="finish-study", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused)
def finish_study_task(study: str, config: HpoConfig, stop_reason: str | None = None) -> dict:
    """Evaluate the best trial on test and close the study run, once the study is complete."""
    handle = store.attach_study(study, config)
    summary = finish.finish_study(handle, stop_reason)
    log.info(finish_line(summary) + "; " + mlflow_link(handle))
    return {**summary, **mlflow_location(handle)}


def mlflow_location(handle: store.StudyHandle) -> dict[str, str]:
    """Where the study's runs are, for the outcome card: the experiment's URL on a tracking
    server (the saved trials view), else the embedded store and the experiment's id."""
    uri = handle.client.tracking_uri
    if serves_artifacts(handle.client):
        return {"mlflow_url": experiment_url(uri, handle.experiment_id)}
    return {"mlflow_store": uri, "mlflow_experiment": str(handle.experiment_id)}


def finish_line(summary: dict) -> str:
    """`smoke-20M_h1_v2 complete: 10/10 trials, best val AUC 0.7760 (#4), test AUC 0.7612, registered
    model smoke-20M_h1_v2 version 1`, or why the study stopped."""
    line = f"{summary['study']} {summary.get('state', 'running')}: {summary.get('done', 0)}/{summary['n_trials']} trials"
    if summary.get("best_val_auc") is not None:
        line += f", best val AUC {summary['best_val_auc']:.4f} (#{summary['best_trial']})"
    if summary.get("best_test_auc") is not None:
        line += f", test AUC {summary['best_test_auc']:.4f}"
    if summary.get("model_version"):
        line += f", registered model {summary['study']} version {summary['model_version']}"
    return line + (f" ({summary['reason']})" if summary.get("reason") else "")


@task(name="study-summary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused)
def read_study_summary_task(study: str, config: HpoConfig) -> dict:
    """A study's outcome as the stores hold it (read only): what a worker elsewhere left."""
    handle = store.attach_study(study, config)
    return {**finish.study_summary(handle), **mlflow_location(handle)}


@task(name="supplemental-trials", cache_policy=NO_CACHE)
def run_supplemental_plan_task(plan_name: str, config: HpoConfig) -> list[dict]:
    """Validate each entry against the band, then train the valid ones with the main study's best hyperparameters."""
    plan = supplemental.plan_for(plan_name, config.smoke_switch)
    smoke_of = supplemental.PLANS[plan_name].budget if config.smoke_switch else None
    return [asdict(r) for r in supplemental.run_plan(plan, config, smoke_of)]


@task(name="retrain", cache_policy=NO_CACHE)
def retrain_trial_task(study: str, trial: str, config: HpoConfig, seeds: int = 1) -> list[dict]:
    """Re-train one recorded configuration with `seeds` seeds and log each one's val and test scores (`hpo retrain`)."""
    return [asdict(result) for result in retrain.retrain_seeds(config, study, trial, seeds)]
