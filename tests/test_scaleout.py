"""Scaling out without a shared disk: two workers in separate working directories that share no
file, PostgreSQL for Optuna and MLflow, and a real `mlflow server` serving artifacts on loopback.

Both workers run the study's loop at once; then the worker that did NOT train the best trial
finishes the study: it fetches the best trial's weights from the MLflow artifact store,
evaluates them on test, logs the test AUC and registers the model. Every worker's local
leftovers are pruned, and only the best trial's weights are left in MLflow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from helpers import free_port, postgres_database, wait_until_healthy
from schemas import tracking as T
from schemas.config import DataConfig, HpoConfig, StudyConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STUDY = "smoke_h1"
N_TRIALS = 2

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

# What a worker runs: the study's loop only (`hpo run` would finish the study too), with its
# stores from the environment (HPO_*), like a worker started on another machine.
LOOP = """
import sys
from schemas.config import HpoConfig, StudySpec
from tasks.study.loop import run_trials
from tasks.study.store import open_study
run_trials(open_study(StudySpec.parse(sys.argv[1]), HpoConfig.model_validate_json(sys.argv[2])))
"""
FINISH = """
import sys
from schemas.config import HpoConfig, StudySpec
from tasks.study.finish import finish_study
from tasks.study.store import open_study
print(finish_study(open_study(StudySpec.parse(sys.argv[1]), HpoConfig.model_validate_json(sys.argv[2]))))
"""


@pytest.fixture
def stores(tmp_path: Path):
    """Fresh PostgreSQL databases for Optuna and MLflow, and `mlflow server` in its own folder
    with its own artifact store; yields (optuna URL, tracking URI)."""
    suffix = uuid.uuid4().hex[:8]
    optuna_url = postgres_database(f"scaleout_optuna_{suffix}")
    if optuna_url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    mlflow_db = postgres_database(f"scaleout_mlflow_{suffix}")
    (server_dir := tmp_path / "mlflow-server").mkdir()
    port = free_port()
    log = open(server_dir / "server.log", "wb")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", mlflow_db, "--artifacts-destination",
         str(server_dir / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=server_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy("mlflow server", uri, server, lambda: (server_dir / "server.log").read_text()[-3000:])
        optuna.storages.RDBStorage(optuna_url)  # its schema once, so the workers race on the study only
        yield optuna_url, uri
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (gunicorn/uvicorn workers included), SIGKILL after 3 s (a throwaway server)."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _worker_env(workdir: Path, optuna_url: str, tracking_uri: str) -> dict[str, str]:
    return dict(
        os.environ,
        HPO_ROOT=str(workdir / "mlruns"),  # stores' local side (dataset cache, checkpoints) in its own folder
        HPO_OPTUNA_STORAGE=optuna_url,
        HPO_MLFLOW_TRACKING_URI=tracking_uri,
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )


def test_two_workers_without_a_shared_disk_and_the_other_worker_finishes(stores, tmp_path: Path):
    optuna_url, tracking_uri = stores
    config = HpoConfig(  # without stores: each worker takes them from its environment
        data=DataConfig(window=20),
        train=TrainConfig(max_epochs=1, max_batches_per_epoch=4, batch_size=64, max_warmup_steps=2, device="cpu"),
        # selection on one seed here: this test is about whose disk the weights are on (confirmation: test_confirm)
        study=StudyConfig(n_trials=N_TRIALS, heartbeat_interval_s=1, heartbeat_grace_s=10, baselines=False, confirm_seeds=0),
    ).model_dump_json(exclude={"stores"})
    workdirs = [tmp_path / "worker-a", tmp_path / "worker-b"]
    for workdir in workdirs:
        workdir.mkdir()

    def start(code: str, workdir: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code, STUDY, config], cwd=workdir,
                                env=_worker_env(workdir, optuna_url, tracking_uri),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    started = time.monotonic()
    loops = [start(LOOP, workdir) for workdir in workdirs]
    outputs = [loop.communicate(timeout=400)[0] for loop in loops]
    assert [loop.returncode for loop in loops] == [0, 0], "\n".join(out[-3000:] for out in outputs)

    study = optuna.load_study(study_name=STUDY, storage=optuna_url)
    trials = study.get_trials(deepcopy=False)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == N_TRIALS
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    best = study.best_trial
    client = MlflowClient(tracking_uri)
    best_run = client.get_run(best.user_attrs["mlflow_run_id"])
    trainer = next(i for i, loop in enumerate(loops) if best_run.data.tags[T.TAG_WORKER].endswith(f":{loop.pid}"))
    other = workdirs[1 - trainer]
    assert not list(other.rglob(f"trial_{best.number}.pt")), "the other worker never had the best weights"
    assert list(workdirs[trainer].rglob(f"trial_{best.number}.pt"))

    finisher = start(FINISH, other)
    output = finisher.communicate(timeout=300)[0]
    assert finisher.returncode == 0, output[-4000:]
    print(f"two workers and a finish on the other worker: {time.monotonic() - started:.0f} s")

    experiment = client.get_experiment_by_name(STUDY)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), "artifacts live on the server, not on a worker"
    study_run = client.get_run(best_run.data.tags[T.TAG_PARENT_RUN])
    assert study_run.info.status == "FINISHED" and study_run.data.tags[T.TAG_STUDY_STATE] == "complete"
    assert study_run.data.tags[T.TAG_EVALUATED_ON].endswith(f":{finisher.pid}")
    test_auc = study_run.data.metrics["best_test_auc"]
    assert 0.0 <= test_auc <= 1.0
    assert client.list_artifacts(best_run.info.run_id, "predictions"), "the test scores are on the best trial's run"

    # Only the best trial's weights are left in MLflow; the finisher's folder is empty.
    stored = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_CHECKPOINT} = 'stored'")
    assert [r.info.run_id for r in stored] == [best_run.info.run_id]
    for run in client.search_runs([experiment.experiment_id], f"tags.{T.TAG_CHECKPOINT} = 'deleted'"):
        assert not client.list_artifacts(run.info.run_id, T.CHECKPOINT_DIR)
    assert not list(other.rglob("*.pt"))

    # The registered model: a version of the model named after the study, loadable anywhere.
    (version,) = client.search_model_versions(f"name = '{STUDY}'")
    assert float(version.tags["test_auc"]) == pytest.approx(test_auc)
    assert version.tags["best_trial"] == str(best.number)
    import mlflow.pytorch
    import torch

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pytorch.load_model(f"models:/{STUDY}/{version.version}")
    finally:
        mlflow.set_tracking_uri(previous)
    windows = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 20, 25)).astype("float32"))
    probabilities = model(windows)
    assert probabilities.shape == (3,) and bool(((probabilities >= 0) & (probabilities <= 1)).all())
