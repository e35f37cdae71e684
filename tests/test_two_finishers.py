"""Two workers on one study, started together, each fitting the baselines, running the loop and
finishing the study (what two `hpo run` on one study do): the once-per-study work happens once.

Issue 22, case 4: before the claims, both registered the best model (versions 1 and 2 of one
trial), both fitted the baselines, and one worker's finish failed because the other had deleted
the shared checkpoint folder.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import postgres_database
from schemas import tracking as T
from schemas.config import DataConfig, HpoConfig, StoreConfig, StudyConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(900)]

WORKER = """
import sys
from schemas.config import HpoConfig, StudySpec
from tasks.study.loop import run_study
from tasks.training.baselines import run_baselines
config = HpoConfig.model_validate_json(sys.argv[1])
print("baselines", run_baselines(config, "smoke_h1", 1), flush=True)
print("summary", run_study(StudySpec.parse("smoke_h1"), config), flush=True)
"""


def test_two_workers_finishing_one_study_register_one_model_and_fit_the_baselines_once(tmp_path: Path):
    optuna_url = postgres_database(f"finishers_{uuid.uuid4().hex[:8]}")
    if optuna_url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    config = HpoConfig(
        data=DataConfig(),
        train=TrainConfig(max_epochs=1, max_batches_per_epoch=4, batch_size=64, max_warmup_steps=2, device="cpu"),
        study=StudyConfig(n_trials=6, heartbeat_interval_s=1, heartbeat_grace_s=10, confirm_top_k=2, confirm_seeds=1),
        stores=StoreConfig(root=tmp_path / "mlruns", optuna_storage=optuna_url),
    )
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, config.model_dump_json()], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [worker.communicate(timeout=800)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]
        assert "'state': 'complete'" in output, output[-4000:]

    client = MlflowClient(config.stores.mlflow_uri)
    versions = client.search_model_versions("name = 'smoke_h1'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    experiment = client.get_experiment_by_name("smoke_h1")
    baselines = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'baseline'")
    models = [r.data.tags[T.TAG_BASELINE_MODEL] for r in baselines]
    assert sorted(models) == sorted(set(models)) and len(models) == 4
    confirms = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'confirm'")
    assert len({(r.data.tags[T.TAG_CONFIRM_OF], r.data.tags[T.TAG_SEED_INDEX]) for r in confirms}) == len(confirms) == 2
    trials = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'trial' and attributes.status = 'FINISHED'")
    assert len(trials) == 6
