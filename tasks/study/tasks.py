"""Prefect tasks of a study. Each takes values (a study name, the config, a trial number) and
opens the stores it needs itself, so the Prefect UI shows its inputs and any worker could run it.

A task is named after its plain function with `_task` (`open_study_task` runs
`store.open_study`); the Prefect names (`open-study`, `trial`, ...) are what the UI shows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import HpoConfig, StudySpec
from tasks.study import finish, loop, retrain, store, supplemental
from tasks.study.progress import current_progress, trials_table
from tasks.study.trial import TrialResult, run_trial

log = logging.getLogger("hpo")


@task(name="open-study", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def open_study_task(spec: StudySpec, config: HpoConfig) -> str:
    """Create or resume the study; its name (retried: it only talks to the stores)."""
    return store.open_study(spec, config).name


@task(name="trial", cache_policy=NO_CACHE)
def train_trial_task(study: str, config: HpoConfig, trial_number: int) -> TrialResult:
    """Train one claimed trial in its own process; failures are recorded, not raised."""
    return run_trial(store.attach_study(study, config), trial_number, current_progress())


def run_trials_as_tasks(study: str, config: HpoConfig) -> str | None:
    """The study loop (tasks.study.loop) with each trial as a `trial` task run named `STUDY #N`;
    the flow run's table artifact `trials-<study>` follows the trials as they finish."""

    def execute(number: int) -> TrialResult:
        outcome = train_trial_task.with_options(task_run_name=f"{study} #{number}")(study, config, number)
        publish_trials_table(study, config)
        return outcome

    publish_trials_table(study, config)
    try:
        return loop.run_trials(store.attach_study(study, config), execute)
    finally:
        publish_trials_table(study, config)


def trials_artifact_key(study: str) -> str:
    """`trials-smoke-20m-h5`: Prefect artifact keys take lowercase letters, digits and dashes."""
    return "trials-" + re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-")


def publish_trials_table(study: str, config: HpoConfig) -> None:
    """The study's trials (every worker's) as a new version of the table artifact
    `trials-<study>`, which the Prefect UI shows on the flow run and under Artifacts."""
    handle = store.attach_study(study, config)
    trials = [t for t in handle.study.get_trials(deepcopy=False) if t.user_attrs.get(store.ATTR_FAILURE_KIND) != store.SURPLUS]
    try:
        create_table_artifact(
            table=trials_table(trials, handle.grid),
            key=trials_artifact_key(study),
            description=f"Trials of study **{study}** on every worker, updated as they finish (val AUC: higher is better).",
        )
    except Exception as exc:  # noqa: BLE001 - a view of the study; the study never fails for it
        log.warning("trials table of %s not published: %s", study, exc)


@task(name="finish-study", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def finish_study_task(study: str, config: HpoConfig, stop_reason: str | None = None) -> dict:
    """Evaluate the best trial on test and close the study run, once the study is complete."""
    return finish.finish_study(store.attach_study(study, config), stop_reason)


@task(name="study-summary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_study_summary_task(study: str, config: HpoConfig) -> dict:
    """A study's outcome as the stores hold it (read only): what a worker elsewhere left."""
    return finish.study_summary(store.attach_study(study, config))


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
