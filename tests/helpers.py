"""Builders shared by test modules, so that no test module imports another: crafted legacy log
lines and old trial JSON (from the real version-1 grid the legacy runs used), and a store's
legacy runs. Fixtures live in conftest.py."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sqlalchemy import event
from sqlalchemy.engine import Engine

from models.arch_grid import LEGACY_GRID_VERSION, Architecture, get_architectures_for_budget
from schemas.config import StoreConfig
from tasks.tracking.runs import get_or_create_experiment, log_batch, mlflow_client

GRID = get_architectures_for_budget("2M", grid_version=LEGACY_GRID_VERSION)
TS = "2025-11-02 14:03:12,001"


def line(message: str, level: str = "INFO", ts: str = TS) -> str:
    return f"{ts} - hpo - {level} - {message}\n"


def header(name: str = "2M_h1", budget: str = "2M", horizon: str = "h1", n_trials: int = 50) -> str:
    return line(f"=== HPO {name} | budget={budget} horizon={horizon} n_trials={n_trials} timeout_hours=4 ===")


def start(number: int, arch: Architecture, heads: bool = False, lr: str = "1e-05", **override: object) -> str:
    """A trial-start line for a real grid entry; `heads` writes the newer format (with n_heads)."""
    fields = {"arch_idx": arch.arch_idx, "d_model": arch.d_model, "n_layers": arch.n_layers}
    if heads:
        fields["n_heads"] = arch.n_heads
    fields |= {"params": f"{arch.params:,}", "lr": lr, "dropout": 0.1, "weight_decay": "1e-05", "d_ff_ratio": arch.d_ff_ratio}
    fields |= override
    return line(f"Trial {number}: " + ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None))


def finished(number: int, auc: float = 0.7094, **more: object) -> str:
    fields = {"val_auc": auc, "pred_min": 0.3112, "pred_max": 0.7741, "recall": 0.5521, "epochs": 18, "seconds": 388.1} | more
    return line(f"Trial {number} finished: " + ", ".join(f"{k}={v}" for k, v in fields.items()))


def failed(number: int, reason: str = "CUDA out of memory") -> str:
    return line(f"Trial {number} failed: {reason}", level="WARNING")


def write_log(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes("".join(lines).replace("\n", newline).encode())
    return path


def old_json_trials() -> list[dict]:
    """The old recovery script's output: n_heads null, Optuna-ish keys."""
    def trial(number, arch, **more):
        return {"trial_number": number, "arch_idx": arch.arch_idx, "d_model": arch.d_model, "n_layers": arch.n_layers,
                "n_heads": None, "params": arch.params, "lr": 1e-4, "dropout": 0.3, "weight_decay": 0.0,
                "d_ff_ratio": arch.d_ff_ratio, "val_auc": 0.7, "status": "COMPLETE", "user_attrs": {"gpu": "A100"}} | more
    return [trial(0, GRID[0]), trial(1, GRID[11], status="FAIL", val_auc=None), trial(2, GRID[12], d_model=96)]


def legacy_runs(stores: StoreConfig, experiment: str = "2M_h1"):
    from tasks.tracking.runs import mlflow_client, search_all_runs

    client = mlflow_client(stores)
    found = client.get_experiment_by_name(experiment)
    return client, search_all_runs(client, [found.experiment_id], "tags.source = 'legacy' and tags.run_kind = 'trial'")


# --- MLflow stores for the report tests ---------------------------------------------------

CENTRAL = {"learning_rate": 5e-5, "dropout": 0.3, "weight_decay": 1e-5}


def trial(study: str, number: int, arch: Architecture, *, source: str = "hpo", state: str = "complete",
          auc: float | None = None, extreme: str = "none", grid_version: int = 2, hp: dict | None = None,
          n_heads_source: str | None = None, pred_range: float = 0.3, recall: float = 0.5,
          failure_reason: str = "", extra_metrics: dict | None = None) -> dict:  # fmt: skip
    """One trial run as the trainer, the legacy importer or the supplemental flow logs it."""
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    params = {"budget": budget, "horizon": horizon, "grid_version": grid_version, "batch_size": 256, "seed": 0,
              **arch.as_dict(), **(hp or CENTRAL)}  # fmt: skip
    if n_heads_source == "unrecoverable":
        del params["n_heads"]
    tags = {"run_kind": "trial", "source": source, "study": study, "budget": budget, "horizon": horizon,
            "trial_number": number, "extreme_type": extreme, "state": state}  # fmt: skip
    if n_heads_source:
        tags["n_heads_source"] = n_heads_source
    if failure_reason:
        tags["failure_reason"] = failure_reason
    metrics = {}
    if state == "complete":
        metrics = {"val_auc": auc, "pred_min": 0.5 - pred_range / 2, "pred_max": 0.5 + pred_range / 2,
                   "pred_range": pred_range, "recall": recall, "epochs": 10, "train_seconds": 36.0,
                   "samples_per_s": 1000.0, **(extra_metrics or {})}  # fmt: skip
    return {"study": study, "params": params, "metrics": metrics, "tags": tags,
            "status": "FINISHED" if state == "complete" else "FAILED"}  # fmt: skip


def baseline(study: str, model: str, val_auc: float, test_auc: float, **metrics: float) -> dict:
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    return {"study": study, "params": {"horizon": horizon},
            "metrics": {"val_auc": val_auc, "test_auc": test_auc, "pred_range": 0.4, "recall": 0.5, **metrics},
            "tags": {"run_kind": "baseline", "source": "baseline", "baseline_model": model, "study": study,
                     "budget": budget, "horizon": horizon},
            "status": "FINISHED"}  # fmt: skip


def study_run(study: str, version: int, tags: dict | None = None, **metrics: float) -> dict:
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    return {"study": study, "params": {}, "metrics": metrics, "status": "FINISHED",
            "tags": {"run_kind": "study", "study": study, "study_version": version, "budget": budget, "horizon": horizon,
                     **(tags or {})}}  # fmt: skip


def seed_run(study: str, of_trial: int, seed_index: int, val_auc: float | None, *, kind: str = "confirm",
             test_auc: float | None = None, status: str = "FINISHED") -> dict:  # fmt: skip
    """A confirmation seed (`run_kind=confirm`, `confirm_of`) or a re-training (`run_kind=retrain`,
    `retrain_of`) of trial `of_trial` of `study`: `fill_store` fills in that trial's run id."""
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    tags = {"run_kind": kind, "source": "hpo" if kind == "confirm" else "retrain", "study": study, "budget": budget,
            "horizon": horizon, "trial_number": of_trial, "seed_index": seed_index,
            "state": "complete" if status == "FINISHED" else "failed"}  # fmt: skip
    metrics = {k: v for k, v in (("val_auc", val_auc), ("test_auc", test_auc)) if v is not None}
    return {"study": study, "params": {"budget": budget, "horizon": horizon, "seed": 1000 + seed_index},
            "metrics": metrics, "tags": tags, "status": status, "of_trial": of_trial}  # fmt: skip


def fill_store(stores: StoreConfig, specs: list[dict]) -> list[str]:
    """Log the runs through the public MLflow API, trials as children of their study's run; a
    `seed_run` spec gets its trial's run id as `confirm_of` / `retrain_of`. The run ids, in the
    order of `specs`."""
    client = mlflow_client(stores)
    parents: dict[str, str] = {}
    trials: dict[tuple[str, str], str] = {}  # (study, trial number) -> run id
    run_ids: dict[int, str] = {}
    order = sorted(range(len(specs)), key=lambda i: (specs[i]["tags"]["run_kind"] != "study", "of_trial" in specs[i]))
    for i in order:
        spec = specs[i]
        experiment = get_or_create_experiment(client, spec["study"], stores.artifact_root)
        tags = {k: str(v) for k, v in spec["tags"].items()}
        if spec["study"] in parents:
            tags["mlflow.parentRunId"] = parents[spec["study"]]
        if "of_trial" in spec:
            link = "confirm_of" if spec["tags"]["run_kind"] == "confirm" else "retrain_of"
            tags[link] = trials[spec["study"], str(spec["of_trial"])]
        run = client.create_run(experiment, tags=tags)
        run_ids[i] = run.info.run_id
        if spec["tags"]["run_kind"] == "study":
            parents[spec["study"]] = run.info.run_id
        if spec["tags"]["run_kind"] == "trial":
            trials[spec["study"], tags["trial_number"]] = run.info.run_id
        log_batch(client, run.info.run_id, params=spec["params"], metrics=spec["metrics"])
        client.set_terminated(run.info.run_id, spec["status"])
    return [run_ids[i] for i in range(len(specs))]


@contextmanager
def no_fsync():
    """A throwaway store needs no durability: SQLite skips its fsyncs while the store is filled
    (2-3x faster on a busy disk). Only connections opened inside the block are affected."""

    def pragma(connection, _record) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", pragma)
    try:
        yield
    finally:
        event.remove(Engine, "connect", pragma)




def postgres_database(name: str) -> str | None:
    """A fresh, empty database `name` on the PostgreSQL at 127.0.0.1:5432 (dropped first if it
    exists), as a SQLAlchemy URL; None when that server is not reachable."""
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    except Exception:  # noqa: BLE001 - any failure to connect means "not here"
        return None
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


BENCH = Path(__file__).resolve().parent.parent / "bench"


@contextmanager
def bench_module(name: str):
    """A bench/ script imported as a module (bench/ is scripts, not a package: it goes on sys.path
    for the import and comes off again)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(what: str, url: str, server: subprocess.Popen, log_tail: Callable[[], str],
                       timeout: float = 180) -> None:
    """Poll `url`/health until it answers 200; fail the test with the server's log when the
    server exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{what} exited with {server.returncode}:\n{log_tail()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not healthy after {timeout:.0f} s:\n{log_tail()}")


class OwnPostgres:
    """A PostgreSQL server of a test's own (initdb in a temporary folder, a port of its own, run as
    the `postgres` user since initdb refuses root), which the test may stop and start: never the
    one on 5432."""

    def __init__(self) -> None:
        import glob
        import pwd
        import shutil
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found or shutil.which("runuser") is None:
            pytest.skip("no PostgreSQL server binaries (initdb) or runuser on this machine")
        self.bin = Path(found[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="hpo-own-pg-", dir="/tmp"))
        self.folder.chmod(0o755)
        account = pwd.getpwnam("postgres")
        os_chown(self.folder, account.pw_uid, account.pw_gid)
        self.data, self.port = self.folder / "data", free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        self.start()

    def _as_postgres(self, *command: object) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, command)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.folder / "server.log", "-w", "start")

    def stop(self) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        import shutil

        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


def os_chown(path: Path, uid: int, gid: int) -> None:
    import os

    os.chown(path, uid, gid)
