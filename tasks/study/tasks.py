"""Prefect tasks of a study. Each takes values (a study name, the config, a trial number) and
opens the stores it needs itself, so the Prefect UI shows its inputs and any worker could run it."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import HpoConfig, StudySpec
from tasks.study import driver, retrain, supplemental
from tasks.study.progress import current_progress


@task(name="open-study", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def open_study(spec: StudySpec, config: HpoConfig) -> str:
    """Create or resume the study; its name (retried: it only talks to the stores)."""
    return driver.open_study(spec, config).name


@task(name="trial", cache_policy=NO_CACHE)
def train_trial(study: str, config: HpoConfig, trial_number: int) -> dict:
    """Train one claimed trial in its own process; failures are recorded, not raised."""
    return driver.run_trial(driver.attach_study(study, config), trial_number, current_progress())


def run_trials(study: str, config: HpoConfig) -> str | None:
    """The driver's study loop with each trial as a `trial` task run named `STUDY #N`."""

    def execute(number: int) -> dict:
        return train_trial.with_options(task_run_name=f"{study} #{number}")(study, config, number)

    return driver.run_trials(driver.attach_study(study, config), execute)


@task(name="finish-study", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def finish_study(study: str, config: HpoConfig, stop_reason: str | None = None) -> dict:
    """Evaluate the best trial on test and close the study run, once the study is complete."""
    return driver.finish_study(driver.attach_study(study, config), stop_reason)


@task(name="supplemental-trials", cache_policy=NO_CACHE)
def run_supplemental_plan(plan_name: str, config: HpoConfig, smoke: bool) -> list[dict]:
    """Validate each entry against the band, then train the valid ones with the main study's best hyperparameters."""
    plan = supplemental.plan_for(plan_name, smoke)
    smoke_of = supplemental.PLANS[plan_name].budget if smoke else None
    return [asdict(r) for r in supplemental.run_plan(plan, config, smoke_of)]


@task(name="retrain", cache_policy=NO_CACHE)
def retrain_trial(study: str, trial: str, config: HpoConfig) -> dict:
    """Re-train one recorded configuration and log its val and test scores (`hpo retrain`)."""
    return asdict(retrain.retrain(config, study, trial))
