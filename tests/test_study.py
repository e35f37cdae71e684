"""Studies end to end on the smoke budget: real data, real stores, real trial processes.

Faults are real too: a SIGKILL of the whole worker process group, a NaN loss, a crashing or hung
trial process, and two workers racing on one study through PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from models.arch_grid import forced_extremes, get_architectures_for_budget
from schemas import tracking as T
from schemas.config import HpoConfig, StoreConfig, StudyConfig, StudySpec
from schemas.trial import FAULT_ENV
from tasks.study.loop import run_study
from tasks.study.store import open_study, optuna_storage
from helpers import postgres_database

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def trial_runs(stores: StoreConfig, study: str, status: str | None = None):
    client = MlflowClient(stores.mlflow_uri)
    experiment = client.get_experiment_by_name(study)
    query = f"tags.{T.TAG_RUN_KIND} = 'trial'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([experiment.experiment_id], query, max_results=1000)


def load_trials(stores: StoreConfig, study: str):
    return optuna.load_study(study_name=study, storage=stores.optuna_url).get_trials(deepcopy=False)


def assert_exactly_complete(stores: StoreConfig, study: str, n_trials: int) -> None:
    """Exactly n done trials (complete, plus pruned with a pruner), each complete one with exactly
    one FINISHED MLflow run and each pruned one with one KILLED run tagged state=pruned, and no
    other such run in the experiment."""
    trials = load_trials(stores, study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) + len(pruned) == n_trials
    finished = trial_runs(stores, study, "FINISHED")
    assert sorted(r.info.run_id for r in finished) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
    killed = [r for r in trial_runs(stores, study, "KILLED") if r.data.tags[T.TAG_STATE] == "pruned"]
    assert sorted(r.info.run_id for r in killed) == sorted(t.user_attrs["mlflow_run_id"] for t in pruned)
    assert not [t for t in pruned if t.user_attrs.get("extreme_type")], "forced extremes are never pruned"
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_study_flow_tracks_every_trial_with_its_architecture(smoke_config: HpoConfig, prefect_harness):
    from flows.hpo import hpo_flow

    smoke_config = smoke_config.model_copy(update={"study": smoke_config.study.model_copy(update={"baselines": True})})
    summaries = hpo_flow(studies=["smoke_h1"], config=smoke_config)

    assert summaries[0]["state"] == "complete" and summaries[0]["complete"] == 8
    assert 0.0 <= summaries[0]["best_test_auc"] <= 1.0
    # optuna-dashboard labels the objective with this name, not "Objective 0"
    assert optuna.load_study(study_name="smoke_h1", storage=smoke_config.stores.optuna_url).metric_names == ["val_auc"]
    runs = trial_runs(smoke_config.stores, "smoke_h1")
    assert len(runs) == 8
    grid = get_architectures_for_budget("smoke")
    by_number = {int(r.data.tags[T.TAG_TRIAL_NUMBER]): r for r in runs}
    for run in runs:
        assert set(T.TRIAL_PARAMS) <= set(run.data.params), "every param is logged, n_heads included"
        arch = grid[int(run.data.params["arch_idx"])]
        assert int(run.data.params["n_heads"]) == arch.n_heads
        assert int(run.data.params["params"]) == arch.params
        assert {"val_auc", "pred_range", "recall", "epochs", "train_seconds", "samples_per_s"} <= set(run.data.metrics)
        assert run.data.tags[T.TAG_STATE] == "complete" and run.data.tags[T.TAG_SOURCE] == "hpo"
        # the MLflow UI cuts run names at ~20 characters: number and architecture come first
        p = run.data.params
        assert run.info.run_name.startswith(f"#{run.data.tags[T.TAG_TRIAL_NUMBER]} d{arch.d_model} L{arch.n_layers} h{arch.n_heads} ")
        assert f"lr{float(p['learning_rate']):.0e}".replace("e-0", "e-") in run.info.run_name
    for run in runs:  # where each trial's wall time went: every phase, adding up to the trial
        split = {k: v for k, v in run.data.metrics.items() if k.startswith("time/")}
        assert set(split) == set(T.TIME_METRICS) and min(split.values()) >= 0
        assert split["time/startup_s"] > 0 and split["time/train_steps_s"] > 0 and split["time/eval_s"] > 0
        assert split["time/trial_s"] == pytest.approx(split["time/process_s"] + split["time/orchestration_s"])
        in_process = [k for k in T.TIME_METRICS if k not in ("time/trial_s", "time/process_s", "time/orchestration_s")]
        assert sum(split[k] for k in in_process) == pytest.approx(split["time/process_s"], abs=0.01)
    for number, (extreme, arch) in enumerate(forced_extremes(grid)):
        run = by_number[number]
        assert run.data.tags[T.TAG_EXTREME_TYPE] == extreme
        assert int(run.data.params["arch_idx"]) == arch.arch_idx
    assert {by_number[n].data.tags[T.TAG_EXTREME_TYPE] for n in (6, 7)} == {"none"}
    client = MlflowClient(smoke_config.stores.mlflow_uri)
    history = client.get_metric_history(by_number[0].info.run_id, "epoch/val_auc")  # the curve; val_auc is the best epoch's
    assert [m.step for m in history] == [1]
    assert "val/auc" not in by_number[0].data.metrics
    baselines = client.search_runs([by_number[0].info.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'baseline'")
    assert baselines and all(b.info.run_name.startswith("baseline ") for b in baselines)
    # the experiment's saved view (the MLflow UI's shared view) lists the trials flat, best first
    experiment = client.get_experiment(by_number[0].info.experiment_id)
    assert json.loads(experiment.tags[T.TAG_SHARED_VIEW])["orderByKey"] == "metrics.`val_auc`"

    # The study run holds the best trial's test AUC; its model is a version of the registered
    # model named after the study, tagged with its AUCs and grid entry.
    parent = client.get_run(by_number[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_test_auc"] == pytest.approx(summaries[0]["best_test_auc"])
    (version,) = client.search_model_versions("name = 'smoke_h1'")
    assert version.run_id == parent.info.run_id and summaries[0]["model_version"] == str(version.version)
    best = by_number[int(parent.data.tags[T.TAG_BEST_TRIAL])]
    assert version.tags["best_trial"] == parent.data.tags[T.TAG_BEST_TRIAL]
    assert float(version.tags["test_auc"]) == pytest.approx(summaries[0]["best_test_auc"])
    assert {k: version.tags[k] for k in ("arch_idx", "n_heads", "d_model")} == {k: best.data.params[k] for k in ("arch_idx", "n_heads", "d_model")}
    # only the best trial's weights are left in MLflow, and none on this worker
    stored = client.search_runs([parent.info.experiment_id], f"tags.{T.TAG_CHECKPOINT} = 'stored'")
    assert [r.info.run_id for r in stored] == [best.info.run_id]
    assert not list((smoke_config.stores.root / "checkpoints").rglob("*.pt"))

    # The study's baselines sit beside its trials, never counted as trials.
    experiment = client.get_experiment_by_name("smoke_h1")
    baselines = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'baseline'")
    assert {r.data.tags[T.TAG_BASELINE_MODEL] for r in baselines} >= {"logreg", "base_rate"}

    # Every trial and baseline run has the prepared dataset as its input; the experiment is a
    # model-training experiment.
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in [*runs, *baselines]}
    assert digests == {baselines[0].data.params["dataset_fingerprint"]}
    assert experiment.tags[T.TAG_EXPERIMENT_KIND] == T.EXPERIMENT_KIND

    # The flow run's table artifact lists the trials as they ended.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as prefect:
        (table,) = prefect.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=["trials-smoke-h1"])))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [(row["trial"], row["state"]) for row in rows] == [(n, "complete") for n in range(8)]

    # Running it again trains nothing: the study already has its trials.
    again = hpo_flow(studies=["smoke_h1"], config=smoke_config)
    assert again[0]["complete"] == 8
    assert len(trial_runs(smoke_config.stores, "smoke_h1")) == 8
    assert len(client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'baseline'")) == len(baselines)


def test_slots_run_trials_side_by_side_and_keep_n_trials_exact(smoke_config: HpoConfig, prefect_harness):
    from flows.hpo import hpo_flow

    study = smoke_config.study.model_copy(update={"n_trials": 4, "slots": 3})
    config = smoke_config.model_copy(update={"study": study})
    (summary,) = hpo_flow(studies=["smoke_h5"], config=config)

    assert summary["complete"] == 4
    assert_exactly_complete(config.stores, "smoke_h5", 4)
    runs = sorted(trial_runs(config.stores, "smoke_h5"), key=lambda r: r.info.start_time)
    overlapping = sum(1 for a, b in zip(runs, runs[1:]) if b.info.start_time < a.info.end_time)
    assert overlapping >= 1, "with 3 slots some trials run at the same time"


def test_diverged_oom_and_crashed_trials_fail_with_reason_and_study_completes(smoke_config, monkeypatch):
    config = smoke_config.model_copy(update={"study": smoke_config.study.model_copy(update={"n_trials": 4})})
    monkeypatch.setenv(FAULT_ENV, json.dumps({"1": "nan", "2": "oom", "3": "crash"}))

    summary = run_study(StudySpec(budget="smoke", horizon=3), config)

    assert summary["complete"] == 4 and summary["failed"] == 3
    trials = {t.number: t for t in load_trials(config.stores, "smoke_h3")}
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["failure_kind"] == "diverged"
    assert "epoch 1" in trials[1].user_attrs["failure_reason"]
    assert trials[2].user_attrs["failure_kind"] == "oom"
    assert trials[3].user_attrs["failure_kind"] == "crashed" and "status 139" in trials[3].user_attrs["failure_reason"]
    failed = trial_runs(config.stores, "smoke_h3", "FAILED")
    assert {r.data.tags[T.TAG_FAILURE_KIND] for r in failed} == {"diverged", "oom", "crashed"}
    assert all(r.data.tags[T.TAG_FAILURE_REASON] for r in failed)
    for run in failed:  # a failed trial's wall time is logged, but no in-process split it did not measure
        assert {"time/trial_s", "time/process_s", "time/orchestration_s"} <= set(run.data.metrics)
        assert "time/train_steps_s" not in run.data.metrics
    assert_exactly_complete(config.stores, "smoke_h3", 4)


@pytest.mark.gpu
def test_a_real_cuda_oom_fails_its_trial_and_the_next_trial_gets_the_gpu(smoke_config, monkeypatch):
    """Trial 1 fills the GPU with 1 GiB blocks until CUDA's allocator gives up: a real OOM. It is
    recorded as oom with CUDA's message, and the trials after it train on the same GPU."""
    import torch

    free_before, _ = torch.cuda.mem_get_info()
    config = smoke_config.model_copy(update={
        "train": smoke_config.train.model_copy(update={"device": "cuda"}),
        "study": smoke_config.study.model_copy(update={"n_trials": 3}),
    })
    monkeypatch.setenv(FAULT_ENV, json.dumps({"1": "fill_gpu"}))

    summary = run_study(StudySpec(budget="smoke", horizon=1), config)

    assert summary["complete"] == 3 and summary["failed"] == 1
    trials = {t.number: t for t in load_trials(config.stores, "smoke_h1")}
    assert trials[1].user_attrs["failure_kind"] == "oom"
    assert "CUDA out of memory" in trials[1].user_attrs["failure_reason"]
    assert trials[2].state == TrialState.COMPLETE and trials[3].state == TrialState.COMPLETE
    free_after, _ = torch.cuda.mem_get_info()
    assert free_after >= free_before - (1 << 30), "no trial process is left holding GPU memory"


def test_hung_trial_is_killed_and_failed(smoke_config, monkeypatch):
    # 20 s: long enough for a healthy trial process to start on a loaded 2-core machine
    study = smoke_config.study.model_copy(update={"n_trials": 1, "stall_timeout_s": 20, "max_failed_trials": 2})
    config = smoke_config.model_copy(update={"study": study})
    monkeypatch.setenv(FAULT_ENV, json.dumps({"0": "hang"}))

    summary = run_study(StudySpec(budget="smoke", horizon=5), config)

    trials = load_trials(config.stores, "smoke_h5")
    assert trials[0].user_attrs["failure_kind"] == "hung"
    assert summary["complete"] == 1


def test_failure_limit_stops_the_run_and_resume_continues(smoke_config, monkeypatch):
    from tasks.study.store import StudyStopped

    study = smoke_config.study.model_copy(update={"n_trials": 2, "max_failed_trials": 1})
    config = smoke_config.model_copy(update={"study": study})
    monkeypatch.setenv(FAULT_ENV, json.dumps({"0": "nan"}))
    with pytest.raises(StudyStopped, match="1 trials failed"):
        run_study(StudySpec(budget="smoke", horizon=1), config)
    monkeypatch.delenv(FAULT_ENV)
    assert run_study(StudySpec(budget="smoke", horizon=1), config)["complete"] == 2


def test_timeout_stops_cleanly_and_rerun_continues(smoke_config):
    study = smoke_config.study.model_copy(update={"n_trials": 3, "timeout_hours": 1e-6})
    config = smoke_config.model_copy(update={"study": study})
    first = run_study(StudySpec(budget="smoke", horizon=1), config)
    assert first["state"] == "stopped" and "timeout" in first["reason"]
    assert first["complete"] < 3

    no_timeout = config.model_copy(update={"study": study.model_copy(update={"timeout_hours": None})})
    assert run_study(StudySpec(budget="smoke", horizon=1), no_timeout)["complete"] == 3
    assert_exactly_complete(config.stores, "smoke_h1", 3)


def test_fresh_rerun_is_a_new_version_and_keeps_the_old(smoke_config):
    config = smoke_config.model_copy(update={"study": smoke_config.study.model_copy(update={"n_trials": 1})})
    run_study(StudySpec(budget="smoke", horizon=1), config)
    handle = open_study(StudySpec(budget="smoke", horizon=1, fresh=True), config)
    assert handle.name == "smoke_h1_v2" and handle.version == 2
    names = {s.study_name for s in optuna.get_all_study_summaries(config.stores.optuna_url)}
    assert names == {"smoke_h1", "smoke_h1_v2"}
    # without --fresh, the latest version is resumed
    assert open_study(StudySpec(budget="smoke", horizon=1), config).name == "smoke_h1_v2"


def _hpo_command(config: HpoConfig, tmp_path: Path, trials: int, *extra: str) -> list[str]:
    """`hpo run smoke h1` as a user types it, with the test's small config in a --config file."""
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json())
    return [sys.executable, "-m", "flows.cli", "run", "smoke", "h1", "--trials", str(trials),
            "--config", str(config_file), *extra]


def _worker_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PYTHONUNBUFFERED="1")


def test_sigkill_mid_trial_then_rerun_ends_with_exactly_n_trials(smoke_config, tmp_path):
    stores = smoke_config.stores
    env = _worker_env(tmp_path)
    command = _hpo_command(smoke_config, tmp_path, 3, "--pruner", "median")
    worker = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # wait until a trial is running (its MLflow run exists and it is RUNNING in Optuna)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                trials = load_trials(stores, "smoke_h1")
            except Exception:  # noqa: BLE001 - the study may not exist yet
                trials = []
            if any(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials):
                break
            time.sleep(0.3)
        else:
            pytest.fail("no trial started within 240 s")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the whole worker: driver, trial process, Prefect server
        worker.wait()
    killed = [t for t in load_trials(stores, "smoke_h1") if t.state == TrialState.RUNNING]
    assert len(killed) == 1

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    assert_exactly_complete(stores, "smoke_h1", 3)
    trials = {t.number: t for t in load_trials(stores, "smoke_h1")}
    dead = trials[killed[0].number]
    assert dead.state == TrialState.FAIL
    client = MlflowClient(stores.mlflow_uri)
    dead_run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED" and dead_run.data.tags[T.TAG_FAILURE_KIND] == "worker_lost"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params


@pytest.mark.postgres
def test_two_workers_on_one_postgres_study(smoke_config, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    optuna_url, mlflow_url = postgres_database(f"hpo_optuna_{suffix}"), postgres_database(f"hpo_mlflow_{suffix}")
    if optuna_url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    n_trials = 8
    command = _hpo_command(smoke_config, tmp_path, n_trials, "--storage", optuna_url, "--tracking-uri", mlflow_url,
                           "--pruner", "median")
    # trials 6 and 7 learn nothing: pruned when 5 trials have completed by then, complete otherwise;
    # either way complete + pruned is exactly n_trials
    env = {**_worker_env(tmp_path), FAULT_ENV: json.dumps({"6": "noise", "7": "noise"})}
    # create the stores' schemas once, so the two workers race on the study, not on migrations
    stores = smoke_config.stores.model_copy(update={"optuna_storage": optuna_url, "mlflow_tracking_uri": mlflow_url})
    optuna_storage(stores)
    MlflowClient(mlflow_url).search_experiments()
    workers = [
        subprocess.Popen(command, cwd=REPO, env={**env, "PREFECT_HOME": str(tmp_path / f"prefect{i}")},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    assert_exactly_complete(stores, "smoke_h1", n_trials)
    trials = load_trials(stores, "smoke_h1")
    extremes = [t.user_attrs["extreme_type"] for t in trials if "extreme_type" in t.user_attrs]
    assert sorted(extremes) == sorted(e for e, _ in forced_extremes(get_architectures_for_budget("smoke")))
    # both workers did work
    assert all("Trial " in out for out in outputs)


def test_pruning_stops_bad_trials_never_extremes_and_keeps_counts_on_resume(smoke_config, monkeypatch):
    """Median pruning on a smoke study whose trials learn (20 batches at the smoke learning
    rates): a trial on random features is stopped after its first of 2 epochs, PRUNED in Optuna
    and KILLED (state pruned, last epoch) in MLflow; an extreme on random features is never
    pruned. A claim left RUNNING by a dead worker is failed and retried when the study resumes,
    the resumed study ends with exactly n_trials complete + pruned trials, and it keeps the
    space and pruner it was created with although the rerun asks for others."""
    config = smoke_config.smoke()
    train = config.train.model_copy(update={"max_epochs": 2, "patience": 2})
    study = config.study.model_copy(update={"n_trials": 7, "pruner": "median", "arch_space": "factored"})
    config = config.model_copy(update={"train": train, "study": study})
    spec = StudySpec(budget="smoke", horizon=1)
    monkeypatch.setenv(FAULT_ENV, json.dumps({"0": "noise", "6": "noise", "8": "noise"}))

    first = run_study(spec, config)
    assert (first["state"], first["complete"], first["pruned"]) == ("complete", 6, 1)

    # a worker claims trial 7 and dies before training it: no heartbeat from now on
    from tasks.study.loop import _LoopState, next_trial

    resumed = config.model_copy(update={"study": study.model_copy(update={"n_trials": 8, "pruner": "none", "arch_space": "categorical"})})
    handle = open_study(spec, resumed)
    assert (handle.arch_space, handle.pruner) == ("factored", "median")  # kept, though the rerun asked otherwise
    assert next_trial(handle, _LoopState(started=time.monotonic())).number == 7

    second = run_study(spec, resumed)
    assert (second["state"], second["complete"], second["pruned"]) == ("complete", 6, 2)
    assert_exactly_complete(config.stores, "smoke_h1", 8)
    trials = {t.number: t for t in load_trials(config.stores, "smoke_h1")}
    assert trials[0].state == TrialState.COMPLETE and trials[0].user_attrs["extreme_type"] == "min_d_model"
    assert trials[7].state == TrialState.FAIL and trials[8].system_attrs["failed_trial"] == 7
    assert trials[8].params == trials[7].params and "d_model" in trials[8].params
    client = MlflowClient(config.stores.mlflow_uri)
    for number in (6, 8):
        assert trials[number].state == TrialState.PRUNED and sorted(trials[number].intermediate_values) == [1]
        run = client.get_run(trials[number].user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags[T.TAG_STATE] == "pruned"
        assert run.data.tags[T.TAG_LAST_EPOCH] == "1" and "val_auc" not in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_auc")] == [1]
        assert not (handle.checkpoint_dir / f"trial_{number}.pt").exists()
    parent = client.get_run(trials[6].user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.metrics["n_pruned"] == 2
