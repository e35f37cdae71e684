"""What people look at, as data: the Prefect UI's trials table of a study, its artifact key, and
the MLflow UI link that opens the model-training view."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from models.arch_grid import get_architectures_for_budget
from schemas import tracking as T
from tasks.study.progress import trials_table
from tasks.study.tasks import trials_artifact_key
from tasks.tracking.runs import experiment_url

GRID = get_architectures_for_budget("smoke")


def test_the_trials_table_has_a_row_per_trial_that_ran_in_order_with_its_architecture():
    space = {"arch_idx": CategoricalDistribution(list(range(len(GRID)))), "learning_rate": CategoricalDistribution([1e-3])}
    trials = [
        create_trial(params={"arch_idx": 2, "learning_rate": 1e-3}, distributions=space, value=0.71234),
        create_trial(params={"arch_idx": 0, "learning_rate": 1e-3}, distributions=space, state=TrialState.FAIL,
                     user_attrs={"failure_kind": "oom"}),
        create_trial(state=TrialState.RUNNING),
        create_trial(state=TrialState.WAITING),  # a queued extreme: not shown
    ]
    for trial, number in zip(trials, (1, 0, 2, 3)):
        trial.number = number
    rows = trials_table(trials, GRID)

    assert [(r["trial"], r["state"], r["val_auc"], r["failure"]) for r in rows] == [
        (0, "failed", None, "oom"), (1, "complete", 0.7123, ""), (2, "running", None, "")
    ]
    arch = GRID[2]
    assert rows[1]["architecture"] == f"d_model={arch.d_model} n_layers={arch.n_layers} n_heads={arch.n_heads} d_ff={arch.d_ff}"
    assert rows[1]["params"] == arch.params and rows[1]["learning_rate"] == 1e-3
    assert rows[2]["architecture"] == "" and rows[2]["params"] is None


def test_artifact_keys_and_mlflow_links():
    assert trials_artifact_key("smoke-20M_h5_v2") == "trials-smoke-20m-h5-v2"
    url = experiment_url("http://mlflow-host:5000/", "7", trials_view=False)
    assert url == f"http://mlflow-host:5000/#/experiments/7/runs?{T.UI_WORKFLOW}"
    assert experiment_url("http://mlflow-host:5000/", "7").endswith(f"{T.UI_WORKFLOW}&viewStateShareKey=trials")
    assert T.UI_WORKFLOW == "workflowType=machine_learning"


def test_a_study_with_no_trials_has_an_empty_table():
    assert trials_table(optuna.create_study().get_trials(), GRID) == []


def test_the_trials_table_reads_factored_trials_too():
    from tasks.study import space

    arch = GRID[5]
    distributions = {d: dist for d, dist in space.FactoredGrid(GRID).distributions.items()}
    params = {d: getattr(arch, d) for d in distributions}
    trials = [create_trial(params=params, distributions=distributions, value=0.7), create_trial(state=TrialState.RUNNING)]
    trials[1].number = 1
    rows = trials_table(trials, GRID)
    assert rows[0]["params"] == arch.params and rows[1]["params"] is None
