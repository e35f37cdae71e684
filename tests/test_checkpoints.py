"""Trial weights through the MLflow artifact store (tasks/study/checkpoints.py): which weights are
uploaded and pruned, where finishing a study fetches them from, and what happens when they are
missing. The two-worker version of this, with PostgreSQL and an MLflow server, is
tests/test_scaleout.py."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from schemas import tracking as T
from schemas.config import HpoConfig, StoreConfig, StudySpec
from tasks.study import checkpoints
from tasks.tracking.runs import get_or_create_experiment, mlflow_client, start_run


def _trial_run(client, experiment_id: str, number: int) -> str:
    return start_run(client, experiment_id, run_kind="trial", source="hpo", name=f"s #{number}", study="s",
                     parent_run_id=None, tags={T.TAG_TRIAL_NUMBER: number})


def test_only_the_best_finished_trials_weights_are_kept_here_and_in_mlflow(stores: StoreConfig, tmp_path: Path):
    client = mlflow_client(stores)
    experiment = get_or_create_experiment(client, "s", stores.artifact_root)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    runs = [_trial_run(client, experiment, n) for n in range(4)]
    files = [checkpoints.checkpoint_path(folder, n) for n in range(4)]
    for path in files:
        path.write_bytes(b"weights")

    # As the driver meets them: 0 (0.6) and 1 (0.7) each beat the best so far; 3 (0.5) does not;
    # 2 (0.8) is uploaded but not yet told complete when another worker prunes.
    assert checkpoints.store_if_best(client, runs[0], files[0], 0.6, None)
    assert checkpoints.store_if_best(client, runs[1], files[1], 0.7, 0.6)
    assert not checkpoints.store_if_best(client, runs[3], files[3], 0.5, 0.7)
    assert checkpoints.store_if_best(client, runs[2], files[2], 0.8, 0.7)
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.6))
    study.add_trial(create_trial(value=0.7))
    study.ask()  # trial 2: still running
    study.add_trial(create_trial(value=0.5))

    checkpoints.discard_weights(client, experiment, folder, study)

    assert sorted(p.name for p in folder.glob("*.pt")) == ["trial_1.pt", "trial_2.pt"]
    tags = {n: client.get_run(run).data.tags.get(T.TAG_CHECKPOINT) for n, run in enumerate(runs)}
    assert tags == {0: "deleted", 1: "stored", 2: "stored", 3: None}
    assert not client.list_artifacts(runs[0], T.CHECKPOINT_DIR)

    # Finishing on a worker without the file: the best's weights come from its run...
    files[1].unlink()
    assert checkpoints.fetch(client, runs[1], 1, folder).read_bytes() == b"weights"
    # ...and weights that are nowhere are an error that says why and what to do.
    with pytest.raises(checkpoints.CheckpointMissing, match="(?s)could not be downloaded .*HPO_MLFLOW_TRACKING_URI"):
        checkpoints.fetch(client, runs[0], 0, folder)


@pytest.mark.slow
def test_finishing_without_the_best_weights_fails_and_a_rerun_with_them_registers_the_model(smoke_config: HpoConfig, monkeypatch):
    from tasks.study.finish import finish_study
    from tasks.study.store import open_study
    from tasks.training.trainer import build_model

    # categorical: the trial added below is drawn over arch_idx, as its params say
    study = smoke_config.study.model_copy(update={"n_trials": 1, "arch_space": "categorical"})
    config = smoke_config.model_copy(update={"study": study})
    handle = open_study(StudySpec(budget="smoke", horizon=1), config)
    client = handle.client
    run_id = _trial_run(client, handle.experiment_id, 99)
    search = config.search
    params = {"arch_idx": 0, **search.central()}
    choices = {"arch_idx": list(range(len(handle.grid))), "learning_rate": list(search.learning_rates),
               "dropout": list(search.dropouts), "weight_decay": list(search.weight_decays)}
    # a trial another worker completed (its weights were never uploaded)
    handle.study.add_trial(create_trial(
        params=params, distributions={k: CategoricalDistribution(v) for k, v in choices.items()},
        value=0.6, user_attrs={"mlflow_run_id": run_id},
    ))
    number = handle.study.best_trial.number

    with pytest.raises(checkpoints.CheckpointMissing, match=f"weights of trial {number} are not on this worker"):
        finish_study(handle)
    study_run = client.get_run(handle.parent_run_id)
    assert study_run.info.status == "FAILED"
    assert study_run.data.tags[T.TAG_STUDY_STATE] == "evaluation_failed"
    assert "could not be downloaded" in study_run.data.tags[T.TAG_FAILURE_REASON]

    # The weights reach MLflow (the worker that trained them uploads them): a rerun finishes.
    arch = handle.grid[0]
    (other_worker := config.stores.root.parent / "other-worker").mkdir()
    uploaded = checkpoints.checkpoint_path(other_worker, number)
    torch.save({"arch": arch.as_dict(), "state": build_model(arch, 0.0, config.train, config.data.window).state_dict(),
                "dropout": 0.1}, uploaded)
    assert checkpoints.store_if_best(client, run_id, uploaded, 0.6, None)
    uploaded.unlink()

    summary = finish_study(handle)

    assert summary["state"] == "complete" and 0.0 <= summary["best_test_auc"] <= 1.0
    study_run = client.get_run(handle.parent_run_id)
    assert study_run.info.status == "FINISHED" and study_run.data.tags[T.TAG_STUDY_STATE] == "complete"
    assert study_run.data.metrics["best_test_auc"] == pytest.approx(summary["best_test_auc"])
    version = client.get_model_version("smoke_h1", summary["model_version"])
    assert version.tags["best_trial"] == str(number) and version.tags["arch_idx"] == str(arch.arch_idx)
    assert not handle.checkpoint_dir.exists(), "the finishing worker keeps no weights"

    # Finished: a rerun evaluates nothing. A study finished by a version that logged no test scores
    # (the tag is gone) is evaluated again, so the report's fill command (`hpo run ... --version N`) works.
    tag = T.predictions_tag("test")
    assert client.get_run(run_id).data.tags[tag]
    from tasks.study import finish

    with monkeypatch.context() as patched:  # the shortcut: no evaluation, no model logged
        patched.setattr(finish, "evaluate_on_test", lambda *a, **k: pytest.fail("a finished study evaluated again"))
        shortcut = finish_study(handle)
    assert shortcut["model_version"] == summary["model_version"]  # the version registered before, named again
    assert len(client.search_model_versions("name = 'smoke_h1'")) == 1
    client.delete_tag(run_id, tag)
    again = finish_study(handle)
    assert again["best_test_auc"] == pytest.approx(summary["best_test_auc"], abs=1e-6)
    assert client.get_run(run_id).data.tags[tag]
    assert again["model_version"] == summary["model_version"]  # the registered version is reused
