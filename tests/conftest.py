"""Shared fixtures: a tiny CPU configuration with every store under tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from schemas.config import DataConfig, HpoConfig, StoreConfig, StudyConfig, TrainConfig

# Two cores on CI: keep torch from oversubscribing them when tests spawn trial processes.
torch.set_num_threads(int(os.environ.get("HPO_TEST_THREADS", "2")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for the whole session (starting one is slow)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def smoke_config(tmp_path: Path) -> HpoConfig:
    """The smoke path: real data, real stores (SQLite under tmp_path), a few short epochs."""
    return HpoConfig(
        data=DataConfig(),
        train=TrainConfig(max_epochs=1, max_batches_per_epoch=4, batch_size=64, max_warmup_steps=2, device="cpu"),
        # seed confirmation off: the tests of the search stay about the search (tests/test_confirm.py has it on)
        study=StudyConfig(n_trials=8, heartbeat_interval_s=1, heartbeat_grace_s=4, baselines=False, confirm_seeds=0),
        stores=StoreConfig(root=tmp_path / "mlruns"),
    )


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, migrated once: migrating a fresh one takes seconds each time."""
    from tasks.tracking.runs import mlflow_client

    root = tmp_path_factory.mktemp("mlflow-template")
    mlflow_client(StoreConfig(root=root)).search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def stores(tmp_path: Path, migrated_mlflow_db: Path) -> StoreConfig:
    """Stores under tmp_path, starting from a copy of the migrated empty MLflow database."""
    root = tmp_path / "mlruns"
    root.mkdir()
    shutil.copy(migrated_mlflow_db, root / "mlflow.db")
    return StoreConfig(root=root)
