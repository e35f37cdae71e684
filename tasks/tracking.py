"""MLflow at the edge: clients, experiments and runs, shared by trials, legacy import, baselines
and the report. Names of params, metrics and tags come from `schemas.tracking`."""

from __future__ import annotations

import logging
import math
import os
import subprocess
from functools import cache
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from schemas.config import StoreConfig

# MLflow logs a line per database migration on first use of a store; keep the terminal readable.
logging.getLogger("alembic").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def mlflow_client(stores: StoreConfig) -> MlflowClient:
    stores.root.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=stores.mlflow_uri)


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path) -> str:
    """Experiment id by name; created with artifacts under `artifact_root/name`. Safe when two
    workers race to create it: the loser finds the winner's."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        location = (artifact_root / name).resolve().as_uri() if "://" not in str(artifact_root) else f"{artifact_root}/{name}"
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def log_batch(client: MlflowClient, run_id: str, params: dict | None = None, metrics: dict | None = None,
              tags: dict | None = None, step: int = 0) -> None:
    """One round trip for params, metrics and tags; non-finite metrics are skipped, not fatal."""
    from mlflow.entities import Metric, Param, RunTag
    import time

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, step)
            for k, v in (metrics or {}).items()
            if v is not None and math.isfinite(float(v))
        ],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    """Every run matching the filter, following pagination (thousands of runs stay cheap)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


@cache
def code_version() -> str:
    """The git commit of the code that ran (with '-dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
