"""The report's MLflow edge: every run in (one paginated search), the selected runs' test scores in,
the written report out as a run of the `reports` experiment.

Reads MLflow only through the search API: one `search_experiments` and one `search_runs` over every
study experiment (pages of 5,000 runs), never a call per run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from schemas.config import StoreConfig
from tasks.report.analysis import CampaignAnalysis
from tasks.report.verdicts import needed_predictions
from tasks.tracking.predictions import Predictions, download_predictions
from tasks.tracking.runs import embedded_store_missing, get_or_create_experiment, mlflow_client, search_all_runs, start_run

REPORT_EXPERIMENT = "reports"
TAG_KIND_REPORT = "report"


def runs_frame(runs: list[Run], experiment_names: dict[str, str]) -> pd.DataFrame:
    """One row per run: its params, latest metrics and tags (MLflow's own `mlflow.*` tags left
    out) as columns, beside run_id, experiment, run_name, status and start_time."""
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row: dict[str, object] = dict(data.params)
        row.update({k: v for k, v in data.tags.items() if not k.startswith("mlflow.")})
        row.update(data.metrics)
        row.update(
            run_id=info.run_id,
            experiment=experiment_names.get(info.experiment_id, info.experiment_id),
            run_name=info.run_name,
            status=info.status,
            start_time=info.start_time,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _experiments(client: MlflowClient) -> dict[str, str]:
    """Id -> name of every active experiment but the reports'."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            break
    return {e.experiment_id: e.name for e in experiments if e.name != REPORT_EXPERIMENT}


def no_studies(stores: StoreConfig) -> str:
    """Why there is nothing to report ("" when some study run exists), found without creating
    anything: an embedded SQLite store that is not there is not opened (opening makes it), and no
    folder, experiment or run is made."""
    uri = stores.mlflow_uri
    refusal = (f"no studies in {uri}: run a study first (hpo run ...) or import legacy logs "
               "(hpo recover ... --import-mlflow)")  # fmt: skip
    if embedded_store_missing(uri):
        return refusal
    client = MlflowClient(tracking_uri=uri)  # not mlflow_client: that one makes the store's folder
    ids = list(_experiments(client))
    for kind in ("study", "trial"):  # every trial has a study run; a half-made store may lack it
        if ids and client.search_runs(ids, f"tags.run_kind = '{kind}'", max_results=1):
            return ""
    return refusal


def query_runs(stores: StoreConfig) -> pd.DataFrame:
    """Every run of every experiment but the reports', as a frame (one search over them all)."""
    client = mlflow_client(stores)
    names = _experiments(client)
    if not names:
        return pd.DataFrame()
    return runs_frame(search_all_runs(client, list(names)), names)


def load_predictions(stores: StoreConfig, analysis: CampaignAnalysis) -> dict[str, Predictions | str]:
    """The test scores the verdicts need (each budget's selected trial and the best baseline per
    horizon, where tagged as logged): run id -> Predictions, or why they could not be read."""
    client = mlflow_client(stores)
    found: dict[str, Predictions | str] = {}
    for run_id in needed_predictions(analysis.horizons):
        try:
            found[run_id] = download_predictions(client, run_id, "test")
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt file makes its verdict undetermined, says why
            found[run_id] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return found


def log_report(stores: StoreConfig, folder: Path) -> str:
    """The report folder as the artifacts of a run in the `reports` experiment; the run id."""
    client = mlflow_client(stores)
    experiment_id = get_or_create_experiment(client, REPORT_EXPERIMENT, stores.artifact_root)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    run_id = start_run(client, experiment_id, run_kind=TAG_KIND_REPORT, source="report",
                       name=f"cross-budget report {stamp}", study=None, parent_run_id=None)
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id, "FINISHED")
    return run_id
