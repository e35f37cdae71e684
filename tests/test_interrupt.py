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


def _children(pid: int) -> dict[int, str]:
    """The live child processes of `pid` and their command lines (from /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # it exited while being read
    return children


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_hpo_with_its_temporary_server(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`hpo run smoke h1 --smoke` with no PREFECT_API_URL, in a session of its own as a terminal
    would start it; returns it and its temporary server's pid once a trial is training."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["HPO_ROOT"] = str(tmp_path / "mlruns")
    hpo = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "smoke", "h1", "--smoke", "--trials", "3"], cwd=REPO,
                           env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while True:
        children = _children(hpo.pid)
        servers = [pid for pid, cmd in children.items() if "uvicorn" in cmd]
        if servers and any("trial_worker" in cmd for cmd in children.values()):
            return hpo, servers[0]
        assert hpo.poll() is None and time.monotonic() < deadline, hpo.communicate()[0][-3000:]
        time.sleep(0.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_in_a_terminal_leaves_the_temporary_prefect_server_running_until_hpo_stops_it(tmp_path: Path):
    """Before: the terminal's SIGINT killed the temporary server too and hpo stopped its trial blind
    ('Unable to connect', 'Error logging to API'). Now the server is out of the terminal's group,
    serves the graceful stop, and exits with hpo."""
    hpo, server = _start_hpo_with_its_temporary_server(tmp_path)
    assert os.getpgid(server) != os.getpgid(hpo.pid)
    os.killpg(hpo.pid, signal.SIGINT)  # the terminal's Ctrl-C: the foreground group
    time.sleep(1)
    assert _alive(server)  # the Ctrl-C did not reach it
    output = hpo.communicate(timeout=120)[0]
    assert hpo.returncode == 0, output[-3000:]
    assert "smoke_h1 stopped" in output and "Unable to connect" not in output and "Error logging to API" not in output, output[-3000:]
    deadline = time.monotonic() + 15
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server), "the temporary server outlived hpo"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl death signal")
def test_a_killed_hpo_takes_its_temporary_prefect_server_with_it(tmp_path: Path):
    hpo, server = _start_hpo_with_its_temporary_server(tmp_path)
    hpo.kill()  # SIGKILL: no atexit, no cleanup
    hpo.communicate(timeout=60)
    deadline = time.monotonic() + 15
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server), "an orphaned temporary server kept listening"
