"""MLflow names a user compares trials by (issue 23): run names that differ in their first 20
characters, curves that cannot be mistaken for results, and a link that opens the saved view."""

from __future__ import annotations

from models.arch_grid import get_architectures_for_budget
from schemas import tracking as T
from tasks.tracking.runs import experiment_url


def test_a_trial_run_name_shows_what_differs_first():
    arch = next(a for a in get_architectures_for_budget("2M") if a.d_ff == 4 * a.d_model)
    name = T.trial_run_label(17, arch, {"learning_rate": 3e-4, "dropout": 0.1, "weight_decay": 1e-5})
    assert name == f"#17 d{arch.d_model} L{arch.n_layers} h{arch.n_heads} ff4 lr3e-4 do0.1 wd1e-5"
    assert T.trial_run_label("S2", arch, {"learning_rate": 0.001, "dropout": 0.0, "weight_decay": 0.01}).endswith("lr1e-3 do0 wd0.01")
    assert T.trial_run_label(3, arch, {"learning_rate": 1e-3, "dropout": 0.2, "weight_decay": 0.0}, suffix=" seed 1").startswith("#3 seed 1 d")
    assert T.baseline_run_name("logreg") == "baseline logreg"


def test_curves_and_results_have_names_that_cannot_be_confused():
    assert set(T.EPOCH_METRIC_NAMES) == set(T.EPOCH_METRICS)
    assert all(name.startswith("epoch/") for name in T.EPOCH_METRIC_NAMES.values())
    assert not set(T.EPOCH_METRIC_NAMES.values()) & set(T.FINAL_METRICS)
    assert "val_auc" in T.FINAL_METRICS  # the best epoch's: what the report and Optuna read


def test_the_printed_link_opens_the_saved_trials_view():
    url = experiment_url("http://127.0.0.1:5000/", "3")
    assert url == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=trials"
    state = T.trials_view_state()
    assert state["searchFilter"] == "tags.run_kind = 'trial'" and state["orderByAsc"] is False
    assert state["selectedColumns"][0] == "metrics.`val_auc`" and "params.`n_heads`" in state["selectedColumns"]



def test_flow_runs_are_named_after_what_they_run(prefect_harness):
    """Prefect calls these inside the run; here with tiny flows of the same parameters."""
    from prefect import flow
    from prefect.runtime import flow_run

    from flows import run_names

    @flow(flow_run_name=run_names.retrain_run_name)
    def retrain(trials: list[str]) -> str:
        return flow_run.name

    @flow(flow_run_name=run_names.supplemental_run_name)
    def supplemental(plan: str, smoke: bool = False) -> str:
        return flow_run.name

    @flow(flow_run_name=run_names.report_run_name)
    def report() -> str:
        return flow_run.name

    @flow(flow_run_name=run_names.recover_run_name)
    def recover(request: dict) -> str:
        return flow_run.name

    assert retrain(["smoke_h1 3", "smoke_h1 5"]) == "retrain smoke_h1 #3, smoke_h1 #5"
    assert supplemental("20M-h5-L160-180", smoke=True) == "supplemental 20M-h5-L160-180 smoke"
    assert report() == "report"  # from the deployment: `report cross-budget`
    assert recover({"inputs": ["a.log", "b.log"]}) == "recover 2 input(s)"
