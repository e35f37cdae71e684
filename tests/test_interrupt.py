"""Ctrl-C stops a worker without losing its trial (issue 22, case 3).

A real SIGINT to the worker's process group, as a terminal's Ctrl-C sends it. Before: the trial
process died of the SIGINT too, the trial was recorded FAIL "crashed" and never retried, so a
forced extreme could be lost for good. Now the trial goes back to the queue with its parameters
and its extreme type, its MLflow run ends KILLED (state interrupted), nothing is left RUNNING,
and a rerun completes the study with all six extremes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from schemas import tracking as T
from schemas.config import HpoConfig, StudySpec
from tasks.study.space import ATTR_EXTREME
from tasks.tracking.runs import mlflow_client

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKER = """
import sys
from schemas.config import HpoConfig, StudySpec
from tasks.study.loop import run_study
print("summary", run_study(StudySpec.parse("smoke_h1"), HpoConfig.model_validate_json(sys.argv[1])), flush=True)
"""


def _running_trial_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("smoke_h1")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'trial' and attributes.status = 'RUNNING'")


def test_ctrl_c_puts_the_running_trial_back_in_the_queue_and_a_rerun_completes(smoke_config: HpoConfig):
    train = smoke_config.train.model_copy(update={"max_epochs": 6, "max_batches_per_epoch": 20, "patience": 6})
    config = smoke_config.model_copy(update={"train": train, "study": smoke_config.study.model_copy(update={"n_trials": 6})})
    client = mlflow_client(config.stores)  # the store made (and migrated) before the worker opens it
    worker = subprocess.Popen([sys.executable, "-c", WORKER, config.model_dump_json()], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while not _running_trial_runs(client):  # a trial is training
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[0][-3000:]
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(worker.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0, output[-3000:]
    assert "'state': 'stopped'" in output and "go back to the queue" in output, output[-3000:]

    study = optuna.load_study(study_name="smoke_h1", storage=config.stores.optuna_url)
    interrupted = [t for t in study.trials if t.user_attrs.get("failure_kind") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    (queued,) = [t for t in study.trials if t.state == TrialState.WAITING and t.user_attrs.get("requeued_from") == interrupted[0].number]
    assert queued.system_attrs["fixed_params"] == interrupted[0].params  # a waiting trial keeps them there
    assert queued.user_attrs.get(ATTR_EXTREME) == interrupted[0].user_attrs.get(ATTR_EXTREME)
    assert not _running_trial_runs(client)
    run = client.get_run(interrupted[0].user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags[T.TAG_STATE]) == ("KILLED", "interrupted")

    from tasks.study.loop import run_study

    summary = run_study(StudySpec.parse("smoke_h1"), config)
    assert summary["state"] == "complete" and summary["complete"] == 6 and summary["failed"] == 0
    done = optuna.load_study(study_name="smoke_h1", storage=config.stores.optuna_url).trials
    extremes = {t.user_attrs.get(ATTR_EXTREME) for t in done if t.state == TrialState.COMPLETE}
    assert len(extremes - {None}) == 6
