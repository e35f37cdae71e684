"""The deployments end to end, as a user runs them: a real `prefect server start`, in a clean copy
of the checkout (what a fresh clone holds) `prefect work-pool create hpo --type process` and
`prefect deploy --all` (prefect.yaml), a process worker started elsewhere, and
`prefect deployment run hpo/20M-rerun` with the smoke switch, watched to completion; then a
campaign stage handing its studies to that worker as flow runs of `study/one`.

Every process started here gets its own session and is killed with its whole process group (and
every descendant that left the group, such as the flow run the worker starts) at teardown, so no
server or worker outlives the test, even when it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from helpers import free_port, wait_until_healthy
from schemas import tracking as T

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the virtualenv's `prefect` and `python`
POOL = "hpo"  # prefect.yaml's pool
N_TRIALS = 2

# The list: every deployment a user can start, and the one the campaign hands studies to.
DECLARED = {
    "study/one",
    "hpo/20M-h5",
    "hpo/200M",
    "hpo/2B",
    "hpo/20M-rerun",
    "campaign/full",
    "supplemental/2M-L64",
    "supplemental/20M-h5-L160-180",
    "recover/legacy",
    "report/cross-budget",
}

# Server start, a full deploy and two smoke studies take minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class PrefectStack:
    """A local Prefect server and a process worker, with the deployments registered."""

    api_url: str
    env: dict[str, str]
    root: Path
    logs: Path
    deploy_output: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def cli(self, *args: str, timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
        """Run a command of the virtualenv (`prefect ...`, `python ...`) the way a user would."""
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout, start_new_session=True,
        )

    def start(self, name: str, *args: str, cwd: Path) -> subprocess.Popen:
        """Start a long-running command in its own session, its output in logs/NAME.log."""
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""




def _environment(home: Path, api_url: str, checkout: Path) -> dict[str, str]:
    """The caller's environment without its Prefect settings, pointed at this server, importing
    our packages from `checkout` (an editable install may point at another one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PYTHONPATH=str(checkout),
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",  # pick the run up in seconds, not the default 10
        # what README's profile sets: the server streams logs, so `--watch` shows them
        PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED="true",
        PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED="true",
        PREFECT_CLIENT_MAX_RETRIES="9",  # and its workers wait out a server restart (the outage budget)
        COLUMNS="200",  # rich wraps CLI output at 80 columns otherwise
        PYTHONUNBUFFERED="1",
    )
    return env




def _descendants(pids: list[int]) -> list[int]:
    """Every live descendant of `pids`, read from /proc (children that started their own session
    are not in the parent's process group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing paren
            pid, rest = stat.read_text().split(" (", 1)
            ppid = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def _stop(processes: list[subprocess.Popen], grace: float = 20) -> list[int]:
    """SIGTERM every process group and descendant, then SIGKILL whatever is left after `grace`;
    returns the pids still alive after that (none, unless a process cannot be killed)."""
    pids = [p.pid for p in processes] + _descendants([p.pid for p in processes if p.poll() is None])

    def signal_all(sig: int) -> None:
        for pid in pids:
            for kill in (lambda: os.killpg(os.getpgid(pid), sig), lambda: os.kill(pid, sig)):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (any(p.poll() is None for p in processes) or any(map(_alive, pids))):
        time.sleep(0.5)
    signal_all(signal.SIGKILL)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(map(_alive, pids)):
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


def clean_copy(destination: Path) -> Path:
    """The checkout's files as a fresh clone of it holds them (tracked, and new files git does not
    ignore): no stores, caches, reports or virtualenv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)  # prefect.yaml stays a link
    return destination


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory):
    """`prefect server start`; in a clean copy `prefect work-pool create hpo --type process` and
    `prefect deploy --all`; `prefect worker start --pool hpo --type process` from elsewhere."""
    root = tmp_path_factory.mktemp("deployments")
    (logs := root / "logs").mkdir()
    checkout = clean_copy(root / "checkout")
    port = str(free_port())
    api_url = f"http://127.0.0.1:{port}/api"
    stack = PrefectStack(api_url, _environment(root / "prefect-home", api_url, checkout), root, logs, deploy_output="")
    try:
        server = stack.start("server", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port, cwd=root)
        wait_until_healthy("prefect server", stack.api_url, server, lambda: stack.log_tail("server"))

        pool = stack.cli("prefect", "work-pool", "create", POOL, "--type", "process", cwd=checkout, timeout=300)
        assert pool.returncode == 0, f"work pool not created:\n{pool.stdout}\n{pool.stderr[-4000:]}"
        deploy = stack.cli("prefect", "--no-prompt", "deploy", "--all", cwd=checkout, timeout=600)
        assert deploy.returncode == 0, f"prefect deploy --all failed:\n{deploy.stdout[-4000:]}\n{deploy.stderr[-4000:]}"
        stack.deploy_output = deploy.stdout

        # The worker runs from elsewhere: the deployments must not depend on the worker's directory.
        (worker_dir := root / "worker").mkdir()
        worker = ("prefect", "worker", "start", "--pool", POOL, "--type", "process", "--name", "w0")
        stack.start("worker", *worker, cwd=worker_dir)
        yield stack
    finally:
        survivors = _stop(stack.processes)
        assert not survivors, f"processes {survivors} of the server or worker survived teardown"


def _client(stack: PrefectStack):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(stack.api_url)


def test_deploy_all_registers_every_declared_deployment_on_the_process_pool(prefect_stack: PrefectStack):
    from prefect.client.schemas.sorting import DeploymentSort

    with _client(prefect_stack) as client:
        pool = client.read_work_pool(POOL)
        deployments = client.read_deployments(limit=100, sort=DeploymentSort.NAME_ASC)
        flow_names = {d.flow_id: client.read_flow(d.flow_id).name for d in deployments}
    assert pool.type == "process"
    by_name = {f"{flow_names[d.flow_id]}/{d.name}": d for d in deployments}
    assert set(by_name) == DECLARED
    assert {d.work_pool_name for d in deployments} == {POOL}
    assert by_name["hpo/20M-rerun"].parameters == {"studies": ["20M_h1_v2", "20M_h3_v2"]}
    # no pull step in prefect.yaml: the worker runs the flows from the folder deployed from
    checkout = str(prefect_stack.root / "checkout")
    assert by_name["hpo/20M-rerun"].pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": checkout}}]
    assert "smoke" in by_name["hpo/20M-rerun"].parameter_openapi_schema["properties"]


def test_20M_rerun_with_the_smoke_switch_completes_with_its_trials_in_mlflow(prefect_stack: PrefectStack):
    stores = prefect_stack.root / "mlruns"
    params = {
        "smoke": True,
        "config": {
            "study": {"n_trials": N_TRIALS, "heartbeat_interval_s": 2, "heartbeat_grace_s": 10},
            "train": {"device": "cpu", "max_batches_per_epoch": 4, "batch_size": 64},
            "stores": {"root": str(stores)},
        },
    }

    started = time.monotonic()
    command = ("prefect", "deployment", "run", "hpo/20M-rerun", "--params", json.dumps(params), "--watch")
    run = prefect_stack.cli(*command, timeout=1200)
    output = run.stdout + run.stderr
    context = f"{output[-4000:]}\n--- worker log ---\n{prefect_stack.log_tail('worker', 8000)}"
    assert run.returncode == 0, context
    assert "Flow run finished successfully in 'Completed'" in output, context
    print(f"hpo/20M-rerun (smoke, {N_TRIALS} trials per study) finished in {time.monotonic() - started:.0f} s")

    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output)[1]
    with _client(prefect_stack) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state.type.value == "COMPLETED"
    assert flow_run.parameters["studies"] == ["20M_h1_v2", "20M_h3_v2"], "the deployment's studies, merged"
    assert flow_run.parameters["smoke"] is True

    mlflow = MlflowClient(f"sqlite:///{stores / 'mlflow.db'}")
    for study in ("smoke-20M_h1_v2", "smoke-20M_h3_v2"):
        experiment = mlflow.get_experiment_by_name(study)
        assert experiment is not None, f"no MLflow experiment {study}"
        runs = mlflow.search_runs([experiment.experiment_id], max_results=1000)
        trials = [r for r in runs if r.data.tags.get(T.TAG_RUN_KIND) == "trial"]
        assert len(trials) == N_TRIALS and {r.info.status for r in trials} == {"FINISHED"}
        for trial in trials:
            assert set(T.TRIAL_PARAMS) <= set(trial.data.params), "every param is logged, n_heads included"
            assert int(trial.data.params["n_heads"]) >= 1
            assert "val_auc" in trial.data.metrics
        [study_run] = [r for r in runs if r.data.tags.get(T.TAG_RUN_KIND) == "study"]
        assert study_run.info.status == "FINISHED"
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {study_run.info.run_id}

        # Optuna agrees: exactly these runs are the study's complete trials.
        optuna_trials = optuna.load_study(study_name=study, storage=f"sqlite:///{stores / 'optuna.db'}").get_trials()
        complete = [t for t in optuna_trials if t.state == TrialState.COMPLETE]
        assert sorted(t.user_attrs["mlflow_run_id"] for t in complete) == sorted(r.info.run_id for r in trials)

    # What the user sees (issue 23): `--watch` streams the parent run's logs, which hold the
    # studies' trial lines (flows/watch.py), their progress and their MLflow links.
    for line in ("smoke-20M_h1_v2 #0 complete: val AUC 0.", "smoke-20M_h3_v2 #1 complete: val AUC 0.",
                 f"smoke-20M_h1_v2: {N_TRIALS}/{N_TRIALS} trials done, best val AUC", "; MLflow run "):
        assert line in output, f"`--watch` does not show {line!r}:\n{output[-6000:]}"
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter, LogFilterFlowRunId,
    )

    def logs_of(client, run_id) -> str:
        return "\n".join(e.message for e in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200))

    with _client(prefect_stack) as client:
        assert flow_run.name == "20M-rerun: 20M_h1_v2+20M_h3_v2 smoke"
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
        assert sorted(child.name for child in children) == ["smoke-20M_h1_v2", "smoke-20M_h3_v2"]
        child_logs = {child.name: logs_of(client, child.id) for child in children}
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        child_artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[child.id for child in children])))
    h1 = child_logs["smoke-20M_h1_v2"]
    assert "smoke-20M_h1_v2 #0 complete: val AUC 0." in h1 and "MLflow experiment smoke-20M_h1_v2 in sqlite:" in h1, h1
    assert f"smoke-20M_h1_v2 complete: {N_TRIALS}/{N_TRIALS} trials" in h1, h1
    assert "registered model smoke-20M_h1_v2 version 1" in h1, h1
    [studies] = [a for a in artifacts if a.key == "studies"]
    assert "| smoke-20M_h1_v2 | complete |" in studies.data and "| smoke-20M_h3_v2 | complete |" in studies.data, studies.data
    # one trials table and one progress bar per study run, not one card per update
    assert sorted(a.key for a in child_artifacts) == ["progress-smoke-20m-h1-v2", "progress-smoke-20m-h3-v2",
                                                      "trials-smoke-20m-h1-v2", "trials-smoke-20m-h3-v2"]

    # a second run has nothing to do, and says so where the user looks
    again = prefect_stack.cli(*command, timeout=600)
    again_output = again.stdout + again.stderr
    assert again.returncode == 0, again_output[-4000:]
    assert again_output.count("already complete") == 2 and "nothing to run" in again_output, again_output[-4000:]
    assert "registered model smoke-20M_h1_v2 version 1" in again_output, again_output[-4000:]  # named again, not registered again


def test_a_campaign_stage_hands_each_study_to_the_work_pool_and_waits_for_them(prefect_stack: PrefectStack, tmp_path):
    """`run_stage(..., dispatch="work-pool")`, as the deployed campaign runs it: each study is a
    flow run of `study/one` (a child of the stage's flow run) that the worker runs in its own
    process; the stage returns once both ended, with their outcome read from the stores."""
    from prefect import flow
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.runtime import flow_run
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.campaign import run_stage
    from schemas.config import DataConfig, HpoConfig, StoreConfig, StudyConfig, TrainConfig

    config = HpoConfig(
        data=DataConfig(window=20),
        train=TrainConfig(max_epochs=1, max_batches_per_epoch=4, batch_size=64, max_warmup_steps=2, device="cpu"),
        study=StudyConfig(n_trials=1, heartbeat_interval_s=2, heartbeat_grace_s=10, baselines=False),
        stores=StoreConfig(root=tmp_path / "mlruns"),
    )

    @flow(name="stage-under-test")
    def stage() -> tuple[str, list[dict]]:
        return flow_run.get_id(), run_stage("test", ["smoke_h1", "smoke_h3"], config, dispatch="work-pool")

    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        parent_id, summaries = stage()
        # Prefect's log and event workers outlive the flow, bound to this stack's server; flushed
        # now, while it is up (left, the session's end drained them into a stopped server for
        # 4-15 minutes of client retries)
        APILogWorker.drain_all()
        EventsWorker.drain_all()
    print(f"a stage of two smoke studies on the work pool took {time.monotonic() - started:.0f} s")

    assert [(s["study"], s["state"], s["complete"]) for s in summaries] == [("smoke_h1", "complete", 1), ("smoke_h3", "complete", 1)]
    assert all(0.0 <= s["best_test_auc"] <= 1.0 for s in summaries)
    with _client(prefect_stack) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
        study_deployment = client.read_deployment_by_name("study/one")
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        stage_logs = "\n".join(e.message for e in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent_id])), limit=200))
    assert sorted(run.name for run in children) == ["smoke_h1", "smoke_h3"]
    assert {run.deployment_id for run in children} == {study_deployment.id}
    assert {run.state.type.value for run in children} == {"COMPLETED"}
    # the studies ran in the worker's processes, yet their lines are in the stage's logs (`--watch`)
    for study in ("smoke_h1", "smoke_h3"):
        assert f"{study} #0 complete: val AUC 0." in stage_logs and f"{study} complete: 1/1 trials" in stage_logs, stage_logs[-4000:]
    # trained by the worker's flow-run processes, not by this one
    mlflow = MlflowClient(config.stores.mlflow_uri)
    for study in ("smoke_h1", "smoke_h3"):
        (trial,) = mlflow.search_runs([mlflow.get_experiment_by_name(study).experiment_id], f"tags.{T.TAG_RUN_KIND} = 'trial'")
        assert not trial.data.tags[T.TAG_WORKER].endswith(f":{os.getpid()}")
