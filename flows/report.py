"""`report`: the cross-budget report from what MLflow holds, one command away.

query MLflow -> analyse -> write Markdown, HTML and figures -> log them to MLflow -> show them in
Prefect (a markdown artifact `cross-budget-report` and a table artifact `best-per-budget`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import SearchSpace, StoreConfig
from tasks import analysis as analysis_tasks
from tasks import report as report_tasks

MARKDOWN_KEY = "cross-budget-report"
TABLE_KEY = "best-per-budget"


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def query_runs(stores: StoreConfig) -> pd.DataFrame:
    """Every study, trial and baseline run in MLflow, one row per run."""
    return report_tasks.query_runs(stores)


@task(cache_policy=NO_CACHE)
def analyse_runs(runs: pd.DataFrame, search: SearchSpace) -> analysis_tasks.CampaignAnalysis:
    """The numbers of the report."""
    return analysis_tasks.analyse_campaign(runs, search)


@task(cache_policy=NO_CACHE)
def write_report(analysis: analysis_tasks.CampaignAnalysis, out: Path, source: str) -> report_tasks.ReportFiles:
    """report.md, report.html, runs.csv and the figures under `out`."""
    return report_tasks.write_report(analysis, out, source)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_report(stores: StoreConfig, files: report_tasks.ReportFiles) -> str:
    """The report's files as artifacts of a run in the MLflow experiment `reports`."""
    return report_tasks.log_report(stores, files)


@task(cache_policy=NO_CACHE)
def publish_artifacts(analysis: analysis_tasks.CampaignAnalysis, source: str) -> None:
    """The report (without images) and the best-per-budget table as Prefect artifacts."""
    create_markdown_artifact(
        markdown=report_tasks.render_markdown(analysis, source), key=MARKDOWN_KEY, description="Cross-budget HPO report"
    )
    create_table_artifact(
        table=report_tasks.best_per_budget_rows(analysis), key=TABLE_KEY, description="Best trial per budget and horizon"
    )


@flow(name="report", log_prints=True)
def report(stores: StoreConfig = StoreConfig(), out: Path = Path("reports"), search: SearchSpace = SearchSpace(),
           log_to_mlflow: bool = True) -> report_tasks.ReportFiles:  # fmt: skip
    """Write the cross-budget report of every study in MLflow to `out` and publish it."""
    source = stores.mlflow_uri
    runs = query_runs(stores)
    analysis = analyse_runs(runs, search)
    files = write_report(analysis, out, source)
    if log_to_mlflow:
        files.mlflow_run_id = log_report(stores, files)
    publish_artifacts(analysis, source)
    print(f"report of {len(runs)} runs: {files.html} (MLflow run {files.mlflow_run_id})")
    return files
