"""A fresh embedded store opened by several processes at once (two study flow runs a worker starts
together): MLflow migrates, and Optuna creates, a new SQLite store's tables on first use, which
collides when done twice at the same moment. `sqlite_first_use` lets one process at a time."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from schemas.config import HpoConfig, StoreConfig


def _open_both(root: str, barrier) -> str:
    from tasks.study.store import optuna_storage
    from tasks.tracking.runs import get_or_create_experiment, mlflow_client

    stores = StoreConfig(root=Path(root))
    barrier.wait(timeout=120)  # every process imported, then all open the stores at once
    client = mlflow_client(stores)
    get_or_create_experiment(client, "race", stores.artifact_root)
    storage = optuna_storage(stores, HpoConfig())
    return f"{len(client.search_experiments())} {len(storage.get_all_studies())}"


def test_processes_opening_a_fresh_store_together_all_succeed(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    n = 4
    with context.Manager() as manager:
        barrier = manager.Barrier(n)
        with context.Pool(n) as pool:
            results = pool.starmap(_open_both, [(str(tmp_path / "mlruns"), barrier)] * n)
    assert results == ["2 0"] * n  # Default and "race"; no Optuna study yet; no process failed


class _RacingClient:
    """Loses the first write to another worker writing the same tag, as MLflow's SQL store does."""

    def __init__(self, error: str) -> None:
        self.error, self.calls = error, 0

    def set_tag(self, run_id, key, value) -> None:
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self.error)


def test_a_tag_written_by_two_workers_at_once_is_written_once_more() -> None:
    import pytest
    from mlflow.exceptions import MlflowException

    from tasks.tracking.runs import set_tag

    raced = _RacingClient('BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "tag_pk"')
    set_tag(raced, "run", "study_state", "running")
    assert raced.calls == 2
    broken = _RacingClient("RESOURCE_DOES_NOT_EXIST: run not found")
    with pytest.raises(MlflowException, match="not found"):
        set_tag(broken, "run", "study_state", "running")
    assert broken.calls == 1
