"""The warm start on the real path: after smoke studies of smoke-2M and smoke-20M at h1, the
smoke-200M h1 study starts with exactly one trial tagged warm_start=transfer, at trial number 6,
whether one worker opens it or two at once (two threads on SQLite, two processes on PostgreSQL);
the report's "Hyperparameter scaling" section shows where it ranked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from helpers import postgres_database
from schemas import tracking as T
from schemas.config import DataConfig, HpoConfig, StoreConfig, StudyConfig, StudySpec, TrainConfig
from tasks.study.loop import run_study
from tasks.study.store import open_study
from tasks.study.warm_start import ATTR_WARM_START

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TARGET = "smoke-200M_h1"


def config_at(root: Path, n_trials: int = 7, **study) -> HpoConfig:
    return HpoConfig(
        data=DataConfig(window=20),
        train=TrainConfig(max_epochs=1, max_batches_per_epoch=4, batch_size=64, max_warmup_steps=2, device="cpu"),
        study=StudyConfig(n_trials=n_trials, heartbeat_interval_s=1, heartbeat_grace_s=10, baselines=False,
                          confirm_seeds=0, **study),  # fmt: skip
        stores=StoreConfig(root=root),
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with finished smoke-2M_h1 and smoke-20M_h1 studies (the six extremes and one sampled trial each)."""
    root = tmp_path_factory.mktemp("warm") / "mlruns"
    config = config_at(root)
    for name in ("smoke-2M_h1", "smoke-20M_h1"):
        assert run_study(StudySpec.parse(name), config)["state"] == "complete"
    # smoke-20M had one smaller budget only: no warm start, its trial 6 was the sampler's
    trials = optuna.load_study(study_name="smoke-20M_h1", storage=config.stores.optuna_url).get_trials()
    assert not [t for t in trials if t.user_attrs.get(ATTR_WARM_START)] and len(trials) == 7
    return root


def copy_of(sources: Path, tmp_path: Path) -> Path:
    root = tmp_path / "mlruns"
    shutil.copytree(sources, root, ignore=shutil.ignore_patterns("checkpoints"))
    return root


def warm_trials(storage: str, study: str = TARGET) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return [t for t in trials if t.user_attrs.get(ATTR_WARM_START) == "transfer"]


def test_two_workers_opening_the_next_budget_enqueue_one_warm_start_and_the_report_ranks_it(sources: Path, tmp_path: Path):
    config = config_at(copy_of(sources, tmp_path))
    spec = StudySpec.parse(TARGET)
    barrier, errors = threading.Barrier(2), []

    def worker() -> None:
        try:
            barrier.wait()
            open_study(spec, config)
        except Exception as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    (warm,) = warm_trials(config.stores.optuna_url)
    assert warm.number == 6 and warm.state == optuna.trial.TrialState.WAITING
    prediction = warm.user_attrs["warm_start_prediction"]
    assert prediction["warm_start_sources"] == "smoke-2M_h1,smoke-20M_h1"
    enqueued = warm.system_attrs["fixed_params"]  # a waiting trial's params: what enqueue_trial fixed
    assert enqueued["learning_rate"] in config.search.learning_rates and enqueued["dropout"] in config.search.dropouts

    summary = run_study(spec, config)
    assert summary["state"] == "complete"
    client = MlflowClient(config.stores.mlflow_uri)
    experiment = client.get_experiment_by_name(TARGET)
    runs = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_WARM_START} = 'transfer'")
    assert len(runs) == 1 and runs[0].data.tags[T.TAG_TRIAL_NUMBER] == "6"
    assert runs[0].data.params["warm_start_sources"] == "smoke-2M_h1,smoke-20M_h1"
    assert {"warm_start_learning_rate", "warm_start_learning_rate_low", "warm_start_dropout_high"} <= set(runs[0].data.params)
    assert float(runs[0].data.params["learning_rate"]) == enqueued["learning_rate"]

    # transfer=False: a new version starts as before, trial 6 left to the sampler
    off = config_at(config.stores.root, transfer=False)
    open_study(StudySpec(budget="smoke-200M", horizon=1, fresh=True), off)
    assert warm_trials(off.stores.optuna_url, f"{TARGET}_v2") == []
    assert len(optuna.load_study(study_name=f"{TARGET}_v2", storage=off.stores.optuna_url).get_trials()) == 6

    from tasks.report.analysis import analyse_campaign
    from tasks.report.render import query_runs, render_markdown

    analysis = analyse_campaign(query_runs(config.stores), config.search)
    text = render_markdown(analysis)
    section = text[text.index("### Hyperparameter scaling"):]
    section = section[: section.index("\n### ", 5)]
    assert "smoke-200M_h1 #6" in section and "warm start" in section
    assert "data-limited" in section or "ticker-days per parameter" in section


OPENER = """
import sys
from schemas.config import HpoConfig, StudySpec
from tasks.study.store import open_study
handle = open_study(StudySpec.parse(sys.argv[2]), HpoConfig.model_validate_json(sys.argv[1]))
print("opened", handle.name, flush=True)
"""


@pytest.mark.postgres
def test_two_processes_opening_it_on_postgresql_enqueue_one_warm_start(sources: Path, tmp_path: Path):
    url = postgres_database(f"warm_{uuid.uuid4().hex[:8]}")
    if url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    root = copy_of(sources, tmp_path)
    config = config_at(root).model_copy(update={"stores": StoreConfig(root=root, optuna_storage=url)})
    workers = [subprocess.Popen([sys.executable, "-c", OPENER, config.model_dump_json(), TARGET], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]  # fmt: skip
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0 and f"opened {TARGET}" in output, output[-3000:]
    (warm,) = warm_trials(url)
    assert warm.number == 6
    trials = optuna.load_study(study_name=TARGET, storage=url).get_trials()
    assert [t.number for t in trials] == list(range(7))
