"""`hpo retrain`: a selected configuration without test scores (here, recovered from legacy logs)
is trained again on the same data; its val and test scores are logged on a `retrain` run, and the
report's test verdict reads them in the original's place."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from flows.cli import app
from models.arch_grid import get_architectures_for_budget
from schemas import tracking as T
from schemas.config import HpoConfig
from tasks.report import analysis, render
from tasks.study.retrain import RetrainRefused, retrain, retrain_seeds
from tasks.tracking.runs import mlflow_client, search_all_runs

from helpers import fill_store, study_run, trial

pytestmark = pytest.mark.slow  # trains in child processes


@pytest.fixture
def legacy_store(smoke_config: HpoConfig) -> HpoConfig:
    """Two smoke-ladder budgets at h1, each with legacy trials only: val AUCs, no scores."""
    specs = []
    for study, budget in (("smoke-2M_h1", "smoke-2M"), ("smoke-20M_h1", "smoke-20M")):
        grid = get_architectures_for_budget(budget)
        specs.append(study_run(study, 1))
        for number, auc in enumerate((0.70, 0.74, 0.72)):
            specs.append(trial(study, number, grid[number], source="legacy", auc=auc, n_heads_source="recovered",
                               hp={"learning_rate": 1e-3, "dropout": 0.1, "weight_decay": 0.0}))  # fmt: skip
    fill_store(smoke_config.stores, specs)
    return smoke_config


def _report(config: HpoConfig) -> analysis.HorizonAnalysis:
    result = analysis.analyse_campaign(render.query_runs(config.stores))
    result = analysis.with_predictions(result, render.load_predictions(config.stores, result))
    return next(h for h in result.horizons if h.horizon == 1)


def test_retrained_scores_make_the_legacy_verdict_determined(legacy_store: HpoConfig, prefect_harness) -> None:
    config = legacy_store
    before = _report(config).test
    assert before.verdict == "undetermined"
    assert any("`hpo retrain smoke-2M_h1 1`" in line for line in before.missing)  # the selected trial is #1 (0.74)

    # one through the function, one through the CLI and its Prefect flow
    result = retrain(config, "smoke-2M_h1", "1")
    assert result.state == "complete" and 0.0 <= result.test_auc <= 1.0, result
    cli = CliRunner().invoke(app, ["retrain", "smoke-20M_h1", "1", "--root", str(config.stores.root)])
    assert cli.exit_code == 0, cli.output
    assert "complete" in cli.output

    client = mlflow_client(config.stores)
    for study in ("smoke-2M_h1", "smoke-20M_h1"):
        experiment = client.get_experiment_by_name(study)
        (run,) = search_all_runs(client, [experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'retrain'")
        (selected,) = search_all_runs(client, [experiment.experiment_id], f"tags.{T.TAG_TRIAL_NUMBER} = '1' and tags.{T.TAG_RUN_KIND} = 'trial'")
        assert run.info.status == "FINISHED" and run.data.tags[T.TAG_RETRAIN_OF] == selected.info.run_id
        assert run.data.tags[T.predictions_tag("val")] and run.data.tags[T.predictions_tag("test")]
        assert run.data.tags[T.TAG_PARENT_RUN]  # a child of the study run, like every run in a study
        assert {k: run.data.params[k] for k in ("d_model", "n_layers", "n_heads", *T.HPARAMS)} == \
               {k: selected.data.params[k] for k in ("d_model", "n_layers", "n_heads", *T.HPARAMS)}  # fmt: skip
        assert T.predictions_tag("test") not in selected.data.tags  # the recorded run stays as recorded

    after = _report(config).test
    assert after.verdict != "undetermined" and not after.missing
    assert [s.run["trial_number"] for s in after.selected] == [1, 1]  # selection unchanged: the originals' val AUC
    assert all(s.predictions is not None and s.run["scores_note"].startswith("re-trained") for s in after.selected)
    assert after.fit is not None and not math.isnan(after.fit.slope)
    (pair,) = after.pairs
    assert pair.test is not None and pair.verdict in ("higher", "lower", "not distinguishable")

    # again: the configuration already has test scores, nothing trains
    again = retrain(config, "smoke-2M_h1", "1")
    assert again.state == "skipped" and again.run_id == result.run_id

    # --seeds 2: seed 0 is the re-training above, seed 1 trains with another seed; again, nothing trains
    seeded = retrain_seeds(config, "smoke-2M_h1", "1", seeds=2)
    assert [(r.seed_index, r.state) for r in seeded] == [(0, "skipped"), (1, "complete")]
    client = mlflow_client(config.stores)
    seed_run = client.get_run(seeded[1].run_id)
    assert seed_run.data.tags[T.TAG_SEED_INDEX] == "1" and seed_run.data.params["seed"] != client.get_run(result.run_id).data.params["seed"]
    assert [r.state for r in retrain_seeds(config, "smoke-2M_h1", "1", seeds=2)] == ["skipped", "skipped"]


def test_an_unknown_trial_is_refused_with_what_to_check(legacy_store: HpoConfig) -> None:
    with pytest.raises(RetrainRefused, match="no complete trial #9"):
        retrain(legacy_store, "smoke-2M_h1", "9")
    with pytest.raises(RetrainRefused, match="no MLflow experiment 'smoke-2M_h7'"):
        retrain(legacy_store, "smoke-2M_h7", "1")
