"""The `campaign` flow: the user's plan, stage by stage, resumable.

1. 20M_h5 to its 50 trials;
2. 200M_h1/h3/h5 and 2B_h1/h3/h5;
3. fresh re-runs of 20M_h1 and 20M_h3 (version 2; the old partial studies are kept), optionally
   20M_h5 version 2 for L=160/180 coverage;
4. supplemental plans, if asked for;
5. the cross-budget report.

Versions are explicit (`20M_h1_v2`), so running the campaign again resumes the same studies and
skips the complete ones instead of starting new ones. A stage starts only when the one before it
completed; a failed stage stops the campaign with the stage named in the error.

How a stage's studies run (`dispatch`):
- `work-pool`: each study is its own flow run of the `study/one` deployment, taken by whichever
  worker of the pool is free (one worker per GPU, `--limit 1`: one study per GPU), on any machine;
  the campaign waits for them and reads their outcome from the stores.
- `threads`: the studies run inside the campaign's own flow run, one thread per visible GPU (the
  embedded default: one machine, no server).
- `auto` (default): `work-pool` when the campaign itself runs from a deployment (so a server and
  workers exist) and `study/one` is deployed; `threads` otherwise.
"""

from __future__ import annotations

import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from prefect import flow

from flows.hpo import publish_outcome, study_flow
from flows.watch import watched_run
from schemas.config import HpoConfig, StudySpec
from tasks.plan.tasks import publish_plan_task
from tasks.study.tasks import read_study_summary_task

log = logging.getLogger("hpo")
STUDY_DEPLOYMENT = "study/one"  # prefect.yaml: one study, handed to the work pool by the campaign
Dispatch = Literal["auto", "work-pool", "threads"]


def campaign_stages(rerun_20m_h5: bool = False) -> list[tuple[str, list[str]]]:
    reruns = ["20M_h1_v2", "20M_h3_v2"] + (["20M_h5_v2"] if rerun_20m_h5 else [])
    return [
        ("20M_h5", ["20M_h5"]),
        ("200M and 2B", ["200M_h1", "200M_h3", "200M_h5", "2B_h1", "2B_h3", "2B_h5"]),
        ("20M re-runs", reruns),
    ]


def assign_devices(studies: list[str], devices: list[str]) -> dict[str, list[str]]:
    """Round-robin studies over devices; each device runs its studies one after another."""
    lanes: dict[str, list[str]] = {device: [] for device in devices}
    for i, name in enumerate(studies):
        lanes[devices[i % len(devices)]].append(name)
    return {device: names for device, names in lanes.items() if names}


def available_devices(config: HpoConfig) -> list[str]:
    """One lane per visible GPU when training on CUDA with device 'auto'; otherwise one lane."""
    if config.train.device != "auto":
        return [config.train.device]
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count > 1 else ["auto"]


def run_lane(specs: list[StudySpec], config: HpoConfig, device: str) -> list[dict]:
    """The studies assigned to one GPU, in order, each its own `study` subflow run."""
    on_device = config.model_copy(update={"train": config.train.model_copy(update={"device": device})})
    return [study_flow(spec, on_device) for spec in specs]


def run_stage(label: str, names: list[str], config: HpoConfig, dispatch: Dispatch = "threads") -> list[dict]:
    specs = [StudySpec.parse(name) for name in names]
    if config.smoke_switch:
        specs = [spec.as_smoke() for spec in specs]
    if dispatch == "work-pool":
        return run_stage_on_work_pool(specs, config)
    devices = available_devices(config)
    if len(devices) == 1:
        return [study_flow(spec, config) for spec in specs]
    by_name = {spec.name(spec.version or 1): spec for spec in specs}
    lanes = assign_devices(list(by_name), devices)
    # one thread per GPU lane; each sees the campaign's flow run as its subflows' parent
    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, run_lane, [by_name[n] for n in names], config, device)
            for device, names in lanes.items()
        ]
        return [summary for future in futures for summary in future.result()]


def run_stage_on_work_pool(specs: list[StudySpec], config: HpoConfig, poll_s: float = 5.0) -> list[dict]:
    """Each study as a flow run of `study/one` on the work pool (a child of this flow run), all
    submitted at once; wait until every one has ended, then read each study's outcome from the
    stores (a worker's return value stays on its machine). A flow run that did not complete
    stops the stage, named with its state."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

    names = [spec.name(spec.version or 1) for spec in specs]
    if config.stores.optuna_storage is None or not config.stores.mlflow_uri.startswith(("http://", "https://")):
        log.warning("embedded stores (%s, %s): studies run by workers on other machines would not share them; "
                    "set HPO_OPTUNA_STORAGE and HPO_MLFLOW_TRACKING_URI (README, Scaling out)",
                    config.stores.optuna_url, config.stores.mlflow_uri)
    submitted = [
        run_deployment(
            STUDY_DEPLOYMENT,
            parameters={"spec": spec.model_dump(mode="json"), "config": config.model_dump(mode="json")},
            flow_run_name=name,
            timeout=0,  # submit only; waited for below, all together
            # a retried campaign run finds its studies' flow runs instead of starting them twice
            idempotency_key=f"{flow_run.get_id()}:{name}",
        )
        for spec, name in zip(specs, names)
    ]
    log.info("%s handed to the work pool: %s", ", ".join(names), ", ".join(str(run.id) for run in submitted))
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run.id) for run in submitted]
            if all(run.state is not None and run.state.is_final() for run in runs):
                break
            time.sleep(poll_s)
    failed = [f"{run.name} ({run.state.name}: {run.state.message or 'no message'})" for run in runs if not run.state.is_completed()]
    if failed:
        raise RuntimeError(f"study flow runs did not complete: {'; '.join(failed)}; see their logs in the Prefect UI")
    return [read_study_summary_task(name, config) for name in names]


def resolve_dispatch(dispatch: Dispatch) -> Literal["work-pool", "threads"]:
    """`auto`: the work pool when this campaign runs from a deployment and `study/one` exists."""
    if dispatch != "auto":
        return dispatch
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import deployment

    if not deployment.id:
        return "threads"
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(STUDY_DEPLOYMENT)
    except ObjectNotFound:
        log.warning("deployment %s not found: studies run in this flow run's threads; run `prefect deploy --all`", STUDY_DEPLOYMENT)
        return "threads"
    return "work-pool"


def publish_plan(config: HpoConfig, stages: list[tuple[str, list[str]]], mode: str) -> None:
    """The cost forecast of the campaign's studies (`hpo plan`) as the `plan` artifact, before they
    run; a view, so the campaign goes on without it. Wall time for the GPUs this flow run sees
    (threads) or for one (work pool: its workers are not counted)."""
    gpus = len(available_devices(config)) if mode == "threads" else 1
    try:
        publish_plan_task(config, stages, gpus)
    except Exception as exc:  # noqa: BLE001 - a view; the campaign's result stands without it
        log.warning("plan artifact not published: %s", exc)


def campaign_run_name() -> str:
    """`campaign smoke` / `campaign full` (the deployment's name, when run from one)."""
    from prefect.runtime import deployment, flow_run

    return f"campaign {deployment.name or 'local'}" + (" smoke" if flow_run.parameters.get("smoke") else "")


@flow(name="campaign", flow_run_name=campaign_run_name)
def campaign_flow(
    config: HpoConfig = HpoConfig(),
    smoke: bool = False,
    rerun_20m_h5: bool = False,
    supplemental: list[str] = [],  # noqa: B006 - Prefect parameters must be JSON defaults
    report: bool = True,
    report_dir: Path = Path("reports"),
    dispatch: Dispatch = "auto",
) -> dict:
    """Run the campaign's stages in order; rerun it to resume."""
    from flows.supplemental import supplemental_flow

    if smoke:
        config = config.smoke()
    mode = resolve_dispatch(dispatch)
    publish_plan(config, campaign_stages(rerun_20m_h5), mode)
    summaries: dict[str, list[dict]] = {}
    for label, names in campaign_stages(rerun_20m_h5):
        try:
            with watched_run():  # its studies' trial lines in the campaign run's logs too (`--watch`)
                summaries[label] = run_stage(label, names, config, mode)
        except Exception as exc:
            raise RuntimeError(f"campaign stopped in stage '{label}': {exc}; fix the cause and run the campaign again to resume") from exc
        unfinished = [s["study"] for s in summaries[label] if s.get("state") != "complete"]
        if unfinished:
            raise RuntimeError(
                f"campaign stopped after stage '{label}': {', '.join(unfinished)} not complete "
                "(timeout or stopped); run the campaign again to resume"
            )
    for plan in supplemental:
        summaries[f"supplemental {plan}"] = supplemental_flow(plan=plan, config=config)  # the smoke switch travels in the config
    if report:
        from flows.report import report as report_flow

        files = report_flow(stores=config.stores, search=config.search, out=report_dir)
        summaries["report"] = {"markdown": str(files.markdown), "html": str(files.html)} if files else None
        if files:
            log.info("report written: %s and %s", files.markdown, files.html)
    publish_outcome([s for label, stage in summaries.items() if label != "report" and isinstance(stage, list)
                     for s in stage if "study" in s and "n_trials" in s])
    return summaries
