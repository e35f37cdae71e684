"""Prefect tasks of legacy recovery: read a file or an Optuna storage, write an experiment, import
it into MLflow. They take the grid as its spec (a value) and load it themselves."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import StoreConfig
from schemas.legacy import ImportCounts, LegacyExperiment
from tasks.legacy.grids import load_grid
from tasks.legacy.importer import import_experiment
from tasks.legacy.records import Recovered
from tasks.legacy.recover import recover_file, recover_storage, write_experiment
from tasks.refusals import retry_unless_refused


@task(name="recover-legacy-file", cache_policy=NO_CACHE)
def recover_input(path: Path, grid_version: int | None = None, grid: str | None = None) -> Recovered:
    """Read one legacy log, trial JSON or trials CSV file into validated experiments and problems."""
    return recover_file(path, grid_version, load_grid(grid) if grid else None)


@task(name="recover-optuna-storage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused)
def recover_optuna_storage(storage: str, studies: list[str], grid_version: int | None = None,
                           grid: str | None = None) -> list[Recovered]:
    """Read the studies of an Optuna storage (all, or those named) into validated experiments."""
    return recover_storage(storage, studies, grid_version, load_grid(grid) if grid else None)


@task(name="write-legacy-experiment", cache_policy=NO_CACHE)
def write_experiment_file(experiment: LegacyExperiment, out_dir: Path) -> Path:
    """Write one recovered experiment as `<out_dir>/<experiment>.json`."""
    return write_experiment(experiment, out_dir)


@task(name="import-legacy-experiment", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused)
def import_legacy_experiment(experiment: LegacyExperiment, stores: StoreConfig, artifact: Path | None = None) -> ImportCounts:
    """Import one recovered legacy experiment into MLflow (idempotent)."""
    return import_experiment(experiment, stores, artifact)
