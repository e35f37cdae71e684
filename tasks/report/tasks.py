"""Prefect tasks of the report: query MLflow, analyse, write, log and publish. A task that wraps a
plain function of the same name is that name with `_task` (`query_runs_task` runs
`mlflow_io.query_runs`); its Prefect name stays the plain one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import SearchSpace, StoreConfig
from tasks.refusals import retry_unless_refused
from tasks.report import analysis, mlflow_io, render, rows

MARKDOWN_KEY = "cross-budget-report"
TABLE_KEY = "best-per-budget"


class NothingToReport(ValueError):
    """The store holds no study: a report would be all FAIL rows (and would create the store)."""


@task(cache_policy=NO_CACHE)  # no Prefect retries: a refusal is no outage (MLflow's client retries those)
def refuse_empty_store(stores: StoreConfig) -> None:
    """NothingToReport, saying what to run, when MLflow holds no study; nothing is created."""
    refusal = mlflow_io.no_studies(stores)
    if refusal:
        raise NothingToReport(refusal)


@task(name="query_runs", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused, cache_policy=NO_CACHE)
def query_runs_task(stores: StoreConfig) -> pd.DataFrame:
    """Every study, trial and baseline run in MLflow, one row per run."""
    return mlflow_io.query_runs(stores)


@task(cache_policy=NO_CACHE)
def analyse_runs(runs: pd.DataFrame, search: SearchSpace) -> analysis.CampaignAnalysis:
    """The numbers of the report."""
    return analysis.analyse_campaign(runs, search)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused, cache_policy=NO_CACHE)
def add_test_verdicts(stores: StoreConfig, result: analysis.CampaignAnalysis) -> analysis.CampaignAnalysis:
    """Each horizon's test verdict, from the selected runs' logged test scores (only those are read)."""
    return analysis.with_predictions(result, mlflow_io.load_predictions(stores, result))


@task(name="write_report", cache_policy=NO_CACHE)
def write_report_task(result: analysis.CampaignAnalysis, out: Path, source: str) -> render.ReportFiles:
    """report.md, report.html, runs.csv and the figures under `out`."""
    return render.write_report(result, out, source)


@task(name="log_report", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused, cache_policy=NO_CACHE)
def log_report_task(stores: StoreConfig, files: render.ReportFiles) -> str:
    """The report's files as artifacts of a run in the MLflow experiment `reports`."""
    return mlflow_io.log_report(stores, files.out)


@task(cache_policy=NO_CACHE)
def publish_artifacts(result: analysis.CampaignAnalysis, source: str) -> None:
    """The report (without images) and the best-per-budget table as Prefect artifacts."""
    create_markdown_artifact(markdown=render.render_markdown(result, source), key=MARKDOWN_KEY, description="Cross-budget HPO report")
    create_table_artifact(table=rows.best_per_budget_rows(result), key=TABLE_KEY, description="Best trial per budget and horizon")
