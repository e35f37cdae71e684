"""`report`: the cross-budget report from what MLflow holds, one command away.

refuse an empty store (no study: nothing is created) -> query MLflow -> analyse -> read the test scores the verdicts need -> write Markdown, HTML and figures -> log them to MLflow -> show them in
Prefect (a markdown artifact `cross-budget-report` and a table artifact `best-per-budget`).
"""

from __future__ import annotations

import socket
from pathlib import Path

from prefect import flow

import flows  # noqa: F401 - see flows/__init__: runs it when Prefect loads this file as a script
from flows.run_names import report_run_name
from schemas.config import SearchSpace, StoreConfig
from tasks.report.render import ReportFiles
from tasks.report.tasks import (
    add_test_verdicts,
    analyse_runs,
    log_report_task,
    publish_artifacts,
    query_runs_task,
    refuse_empty_store,
    write_report_task,
)


@flow(name="report", flow_run_name=report_run_name, log_prints=True)
def report(stores: StoreConfig = StoreConfig(), out: Path = Path("reports"), search: SearchSpace = SearchSpace(),
           log_to_mlflow: bool = True) -> ReportFiles:  # fmt: skip
    """Write the cross-budget report of every study in MLflow to `out` and publish it."""
    source = stores.mlflow_uri
    refuse_empty_store(stores)
    runs = query_runs_task(stores)
    analysis = add_test_verdicts(stores, analyse_runs(runs, search))
    files = write_report_task(analysis, out, source)
    if log_to_mlflow:
        files.mlflow_run_id = log_report_task(stores, files)
    publish_artifacts(analysis, source)
    # printed into the flow run's logs (log_prints): from a deployment the files are on the worker's
    # machine, so the line says which machine and the absolute paths; MLflow holds a copy too
    print(f"report of {len(runs)} runs on {socket.gethostname()}: {files.html.resolve()} and "
          f"{files.markdown.resolve()} (a copy in MLflow experiment 'reports', run {files.mlflow_run_id})")
    return files
