"""What a user sees in Prefect while studies run: flow runs named after the studies, each trial's
result line and the study's MLflow link in the run logs, one trials table and one progress card per
study flow run (updated in place), the parent's outcome card, and a rerun that says it did nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from schemas.config import HpoConfig

REPO = Path(__file__).resolve().parent.parent


def test_the_hpo_logger_reaches_prefect_when_a_worker_loads_the_entrypoint():
    """A worker's flow run process imports Prefect first (`python -m prefect.engine`), then loads the
    deployment's entrypoint `flows/hpo.py:hpo_flow` as a bare script (not as `flows.hpo`, so
    flows/__init__ ran only because the module imports it): the "hpo" logger gets Prefect's API
    handler and the INFO level all the same. Before, a deployment run's logs had no trial line."""
    check = ("import prefect.main, logging; from prefect.flows import load_flow_from_entrypoint; "
             "load_flow_from_entrypoint('flows/hpo.py:hpo_flow'); logger = logging.getLogger('hpo'); "
             "print(logger.getEffectiveLevel(), sorted(type(h).__name__ for h in logger.handlers))")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_EXTRA_LOGGERS"}
    out = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True)
    level, handlers = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(level) == logging.INFO and "APILogHandler" in handlers, out.stdout + out.stderr


def test_a_study_run_shows_its_trials_and_a_rerun_says_it_has_nothing_to_run(smoke_config: HpoConfig, prefect_harness):
    from flows.hpo import hpo_flow

    config = smoke_config.model_copy(update={"study": smoke_config.study.model_copy(update={"n_trials": 2})})
    state = hpo_flow(studies=["smoke_h1_v2"], config=config, return_state=True)
    again = hpo_flow(studies=["smoke_h1_v2"], config=config, return_state=True)
    (summary,) = state.result()
    assert summary["state"] == "complete"

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(state.state_details.flow_run_id)
        assert parent.name == "hpo: smoke_h1_v2"
        (study_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
        assert study_run.name == "smoke_h1_v2"
        logs = [entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[study_run.id])))]
        # what `--watch` and the parent's Logs tab read: the parent run's own logs (flows/watch.py)
        parent_logs = "\n".join(e.message for e in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent.id]))))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[study_run.id])))
        outcome = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id])))
        (rerun_study,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[again.state_details.flow_run_id])))
        rerun_logs = [e.message for e in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[rerun_study.id])))]

    text = "\n".join(logs)
    assert "smoke_h1_v2 #0 complete: val AUC 0." in text and "MLflow run" in text, text  # a trial task run's result line
    assert "Trial 0:" in text  # the trial's start line (the "hpo" logger)
    assert "smoke_h1_v2 #0 complete: val AUC 0." in parent_logs and "Trial 0:" in parent_logs, parent_logs
    assert "smoke_h1_v2: 2/2 trials done, best val AUC" in parent_logs
    assert "smoke_h1_v2: 2/2 trials done, best val AUC" in text
    assert "smoke_h1_v2 complete: 2/2 trials, best val AUC" in text and "registered model smoke_h1_v2 version 1" in text
    assert sorted(a.key for a in artifacts) == ["progress-smoke-h1-v2", "trials-smoke-h1-v2"]  # one of each, updated in place
    table = next(a for a in artifacts if a.key.startswith("trials"))
    assert '"trial": 1' in table.data and '"state": "complete"' in table.data
    assert "smoke_h1_v2: 2/2 trials done, best val AUC" in table.description  # the live progress line, ETA and all
    assert next(a for a in artifacts if a.key.startswith("progress")).data == 100.0
    assert [a.key for a in outcome] == ["studies"] and "| smoke_h1_v2 | complete | 2/2 |" in outcome[0].data
    assert "| 1 | experiment " in outcome[0].data and "mlflow ui --backend-store-uri sqlite:" in outcome[0].data, outcome[0].data
    (again_summary,) = again.result()
    assert again_summary["model_version"] == summary["model_version"] == "1"  # a rerun names the version registered before
    assert any("smoke_h1_v2 already complete: 2/2 trials done, best val AUC" in m and "nothing to run" in m for m in rerun_logs), rerun_logs


def test_the_outcome_card_links_each_study_to_its_trials_in_mlflow():
    from flows.hpo import outcome_markdown

    served = {"study": "20M_h1_v2", "state": "complete", "done": 50, "n_trials": 50, "best_trial": 17, "best_val_auc": 0.5712,
              "best_test_auc": 0.5601, "model_version": "2", "mlflow_url": "http://mlflow:5000/#/experiments/4/runs?x"}
    stopped = {"study": "20M_h3_v2", "state": "stopped", "done": 3, "n_trials": 50, "mlflow_store": "sqlite:///m.db",
               "mlflow_experiment": "5"}
    card = outcome_markdown([served, stopped])
    assert "| 20M_h1_v2 | complete | 50/50 | 17 | 0.5712 | 0.5601 | 2 | [trials](http://mlflow:5000/#/experiments/4/runs?x) |" in card
    assert "| 20M_h3_v2 | stopped | 3/50 | – | – | – | – | experiment 5 |" in card
    assert card.endswith("open it with `mlflow ui --backend-store-uri sqlite:///m.db`.")
