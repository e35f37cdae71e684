"""Seed confirmation (tasks/study/confirm.py) and the claims it runs under (tasks/study/claims.py)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from schemas import tracking as T
from schemas.config import HpoConfig, StoreConfig, StudySpec
from tasks.study.claims import Claims
from tasks.study.confirm import ConfirmedConfiguration, candidates, seed_key, select_on_seed_mean
from tasks.study.store import optuna_storage


def _trial(number: int, value: float, arch_idx: int) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=TrialState.COMPLETE, value=value, params={"arch_idx": arch_idx},
                         distributions={"arch_idx": CategoricalDistribution(list(range(10)))})
    trial.number = number
    return trial


def test_candidates_are_the_best_distinct_configurations():
    trials = [_trial(0, 0.70, 1), _trial(1, 0.75, 2), _trial(2, 0.74, 2), _trial(3, 0.72, 3), _trial(4, 0.60, 4)]
    assert [t.number for t in candidates(trials, 3)] == [1, 3, 0]  # #2 repeats #1's configuration


def test_the_seed_mean_can_overturn_the_luckiest_single_run():
    """The demo's case: the best single trial (0.783) was its configuration's luckiest seed."""
    lucky = ConfirmedConfiguration(0, "a", val_aucs=[0.783, 0.70, 0.72])
    steady = ConfirmedConfiguration(1, "b", val_aucs=[0.780, 0.778, 0.779])
    assert select_on_seed_mean([lucky, steady]) is steady


def test_one_worker_wins_a_claim_a_stale_one_is_taken_over_and_an_error_gives_it_back(tmp_path: Path):
    storage = optuna_storage(StoreConfig(root=tmp_path / "mlruns"))
    first, second = Claims(storage, "s", stale_after_s=0.5), Claims(storage, "s", stale_after_s=0.5)
    assert first.claim("k") and not second.claim("k")
    time.sleep(0.7)  # the first worker stopped renewing: it died
    assert second.claim("k") and not first.claim("k")
    with pytest.raises(KeyboardInterrupt):
        with second.held("k"):
            raise KeyboardInterrupt  # Ctrl-C: the work goes back to the queue
    assert first.claim("k")
    with first.held("k"):
        pass
    assert first.done(["k", "other"]) == {"k"} and not second.claim("k")  # done work is never claimed again


@pytest.mark.slow
def test_a_complete_study_is_selected_on_its_seed_mean_and_a_rerun_trains_no_seed_twice(smoke_config: HpoConfig):
    from tasks.study.finish import finish_study
    from tasks.study.loop import run_trials
    from tasks.study.store import open_study

    study = smoke_config.study.model_copy(update={"n_trials": 6, "confirm_top_k": 2, "confirm_seeds": 1})
    config = smoke_config.model_copy(update={"study": study})
    spec = StudySpec(budget="smoke", horizon=1)
    handle = open_study(spec, config)
    run_trials(handle)

    # a worker that died while confirming left its claim (never renewed again) and a RUNNING run
    top = candidates(handle.study.get_trials(deepcopy=False), 2)
    dead = Claims(handle.storage, handle.name, stale_after_s=config.study.heartbeat_grace_s)
    assert dead.claim(seed_key(top[0].number, 1))
    client = MlflowClient(config.stores.mlflow_uri)
    orphan = client.create_run(handle.experiment_id, tags={
        T.TAG_RUN_KIND: "confirm", T.TAG_CONFIRM_OF: top[0].user_attrs["mlflow_run_id"], T.TAG_SEED_INDEX: "1"})

    summary = finish_study(handle)  # waits out the dead worker's claim, then takes it over
    assert summary["state"] == "complete" and summary["selected_by"] == "seed_mean"
    assert summary["seeds"] == 2 and 0.5 < summary["seed_mean_val_auc"] < 1
    confirm_runs = client.search_runs([handle.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'confirm'")
    complete = [r for r in confirm_runs if r.info.status == "FINISHED"]
    assert sorted((r.data.tags[T.TAG_CONFIRM_OF], r.data.tags[T.TAG_SEED_INDEX]) for r in complete) == sorted(
        (t.user_attrs["mlflow_run_id"], "1") for t in top)
    assert all(r.data.tags.get(T.predictions_tag("test")) and "test_auc" in r.data.metrics for r in complete)
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    parent = client.get_run(handle.parent_run_id).data
    assert parent.tags[T.TAG_SELECTED_BY] == "seed_mean" and parent.metrics["seeds"] == 2

    again = finish_study(open_study(spec, config))  # a rerun (or a second finisher): nothing trains again
    assert again["state"] == "complete"
    assert len(client.search_runs([handle.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'confirm'")) == len(confirm_runs)


@pytest.mark.slow
def test_with_confirmation_off_the_best_single_trial_is_selected(smoke_config: HpoConfig):
    from tasks.study.loop import run_study

    config = smoke_config.model_copy(update={"study": smoke_config.study.model_copy(update={"n_trials": 6})})
    summary = run_study(StudySpec(budget="smoke", horizon=3), config)
    assert summary["selected_by"] == "single_run" and "seeds" not in summary
    client = MlflowClient(config.stores.mlflow_uri)
    experiment = client.get_experiment_by_name(summary["study"])
    assert not client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'confirm'")
