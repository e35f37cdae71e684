"""The `hpo` flow: studies in order, each a `study` subflow whose trials are task runs."""

from __future__ import annotations

import logging

from prefect import flow
from prefect.artifacts import create_markdown_artifact

import flows  # noqa: F401 - see flows/__init__: runs it when Prefect loads this file as a script
from flows.watch import watched_run
from schemas.config import HpoConfig, StudySpec
from tasks.study.tasks import finish_study_task, open_study_task, run_trials_as_tasks
from tasks.training.tasks import fit_baselines

log = logging.getLogger("hpo")


def study_run_name() -> str:
    """`smoke-20M_h1_v2`: the study's own name where its spec names the version; a spec without
    one (the latest version) is named after its budget and horizon until the study is open."""
    from prefect.runtime import flow_run

    spec = flow_run.parameters["spec"]
    spec = spec if isinstance(spec, StudySpec) else StudySpec.model_validate(spec)
    return spec.name(spec.version) if spec.version else spec.base_name


def hpo_run_name() -> str:
    """`20M-rerun: 20M_h1_v2+20M_h3_v2 smoke` (the deployment, when run from one, and the studies)."""
    from prefect.runtime import deployment, flow_run

    parameters = flow_run.parameters
    return f"{deployment.name or 'hpo'}: {'+'.join(parameters['studies'])}" + (" smoke" if parameters.get("smoke") else "")


def rename_flow_run(name: str) -> None:
    """Give this flow run the study's real name once it is known (best effort: only a label)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id or flow_run.name == name:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
    except Exception as exc:  # noqa: BLE001 - the study never fails for its label
        log.warning("flow run not renamed to %s: %s", name, exc)


@flow(name="study", flow_run_name=study_run_name)
def study_flow(spec: StudySpec, config: HpoConfig) -> dict:
    """One (budget, horizon) study until it has `n_trials` done trials (complete, plus pruned with a
    pruner), or this run stops."""
    with watched_run():  # run alone (`study/one` from a campaign): its lines in the campaign run's logs too
        study = open_study_task(spec, config)
        rename_flow_run(study)
        if config.study.baselines:
            fit_baselines(config, study, spec.horizon)
        stop_reason = run_trials_as_tasks(study, config)  # the study loop; each trial is a task run
        return finish_study_task(study, config, stop_reason)


def outcome_markdown(summaries: list[dict]) -> str:
    """Each study's state, best, test AUC, model version and MLflow runs, as a markdown table."""
    rows = ["| study | state | done | best trial | best val AUC | test AUC | model version | MLflow |",
            "|---|---|---|---|---|---|---|---|"]
    figure = lambda value: f"{value:.4f}" if isinstance(value, float) else "–"  # noqa: E731
    stores = sorted({s["mlflow_store"] for s in summaries if s.get("mlflow_store")})
    for s in summaries:
        where = (f"[trials]({s['mlflow_url']})" if s.get("mlflow_url")
                 else f"experiment {s['mlflow_experiment']}" if s.get("mlflow_experiment") else "–")
        rows.append(f"| {s['study']} | {s.get('state', '?')} | {s.get('done', '?')}/{s.get('n_trials', '?')} | "
                    f"{s.get('best_trial', '–')} | {figure(s.get('best_val_auc'))} | {figure(s.get('best_test_auc'))} | "
                    f"{s.get('model_version') or '–'} | {where} |")
    for uri in stores:  # an embedded store has no UI of its own: say how to open one on it
        rows.append(f"\nMLflow store `{uri}`: open it with `mlflow ui --backend-store-uri {uri}`.")
    return "\n".join(rows)


def publish_outcome(summaries: list[dict], key: str = "studies") -> None:
    """The studies' outcome as one markdown card on the parent flow run (outcome_markdown)."""
    try:
        create_markdown_artifact(outcome_markdown(summaries), key=key,
                                 description="each study's outcome (val AUC selects, test AUC judges)")
    except Exception as exc:  # noqa: BLE001 - a view; the flow's result stands without it
        log.warning("outcome artifact not published: %s", exc)


@flow(name="hpo", flow_run_name=hpo_run_name)
def hpo_flow(studies: list[str], config: HpoConfig = HpoConfig(), smoke: bool = False) -> list[dict]:
    """Run studies in the given order, e.g. ["20M_h1_v2", "20M_h3_v2"]; each must finish (or stop
    cleanly on its timeout) before the next starts."""
    specs = [StudySpec.parse(name) for name in studies]
    if smoke:
        config, specs = config.smoke(), [spec.as_smoke() for spec in specs]
    with watched_run():  # the studies' trial lines in this run's logs too (`--watch`)
        summaries = [study_flow(spec, config) for spec in specs]
    publish_outcome(summaries)
    return summaries
