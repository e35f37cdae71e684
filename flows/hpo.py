"""The `hpo` flow: studies in order, each a `study` subflow whose trials are task runs."""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.config import HpoConfig, StudySpec
from tasks import study as studies
from tasks.baselines import baselines_task
from tasks.progress import current_progress


@task(name="open-study", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def open_study(spec: StudySpec, config: HpoConfig) -> studies.StudyHandle:
    """Create or resume the study (retried: it only talks to the stores)."""
    return studies.open_study(spec, config)


@task(name="trial", cache_policy=NONE)
def run_trial(handle: studies.StudyHandle, trial) -> dict:
    """Train one trial in its own process; failures are recorded, not raised."""
    outcome = studies.run_trial(handle, trial, current_progress())
    return {"state": outcome.state, "val_auc": outcome.result.get("val_auc"), "failure": outcome.failure_kind}


@task(name="finish-study", cache_policy=NONE)
def finish_study(handle: studies.StudyHandle) -> dict:
    """Evaluate the best trial on test and log it on the study run, once the study is complete."""
    return studies.finish_study(handle)


@flow(name="study", flow_run_name="{spec.budget}_h{spec.horizon}", task_runner=ThreadPoolTaskRunner(max_workers=64))
def study_flow(spec: StudySpec, config: HpoConfig) -> dict:
    """One (budget, horizon) study until it has `n_trials` complete trials (or this run stops)."""
    handle = open_study(spec, config)
    if config.study.baselines:
        baselines_task(config, handle.name, spec.horizon)
    progress = current_progress()
    if progress is not None:
        progress.study(handle.name, config.study.n_trials, handle.counts()["complete"])
    if config.study.slots == 1:
        while (trial := studies.next_trial(handle)) is not None:
            run_trial.with_options(task_run_name=f"{handle.name} #{trial.number}")(handle, trial)
    else:
        run_in_slots(handle, config.study.slots)
    return finish_study(handle)


def run_in_slots(handle: studies.StudyHandle, slots: int, poll_s: float = 2.0) -> None:
    """Keep up to `slots` trial processes running on this worker's device: small models cannot
    fill a GPU alone. The claim rules of next_trial still hold, so n_trials stays exact."""
    running: list[PrefectFuture] = []
    while True:
        running = [future for future in running if not future.state.is_final()]
        trial = studies.next_trial(handle, block=False) if len(running) < slots else studies.WAIT
        if trial is None and not running:
            return
        if trial is None or trial == studies.WAIT:
            wait(running, timeout=poll_s) if running else time.sleep(poll_s)
            continue
        running.append(run_trial.with_options(task_run_name=f"{handle.name} #{trial.number}").submit(handle, trial))


@flow(name="hpo")
def hpo_flow(studies: list[str], config: HpoConfig = HpoConfig(), smoke: bool = False) -> list[dict]:
    """Run studies in the given order, e.g. ["20M_h1_v2", "20M_h3_v2"]; each must finish (or stop
    cleanly on its timeout) before the next starts."""
    specs = [StudySpec.parse(name) for name in studies]
    if smoke:
        config, specs = config.smoke(), [spec.as_smoke() for spec in specs]
    return [study_flow.with_options(flow_run_name=spec.base_name)(spec, config) for spec in specs]
