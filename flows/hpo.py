"""The `hpo` flow: studies in order, each a `study` subflow whose trials are task runs."""

from __future__ import annotations

from prefect import flow

from schemas.config import HpoConfig, StudySpec
from tasks.study.tasks import finish_study_task, open_study_task, run_trials_as_tasks
from tasks.training.tasks import fit_baselines


@flow(name="study", flow_run_name="{spec.budget}_h{spec.horizon}")
def study_flow(spec: StudySpec, config: HpoConfig) -> dict:
    """One (budget, horizon) study until it has `n_trials` done trials (complete, plus pruned with a
    pruner), or this run stops."""
    study = open_study_task(spec, config)
    if config.study.baselines:
        fit_baselines(config, study, spec.horizon)
    stop_reason = run_trials_as_tasks(study, config)  # the study loop; each trial is a task run
    return finish_study_task(study, config, stop_reason)


@flow(name="hpo")
def hpo_flow(studies: list[str], config: HpoConfig = HpoConfig(), smoke: bool = False) -> list[dict]:
    """Run studies in the given order, e.g. ["20M_h1_v2", "20M_h3_v2"]; each must finish (or stop
    cleanly on its timeout) before the next starts."""
    specs = [StudySpec.parse(name) for name in studies]
    if smoke:
        config, specs = config.smoke(), [spec.as_smoke() for spec in specs]
    return [study_flow.with_options(flow_run_name=spec.base_name)(spec, config) for spec in specs]
