"""The campaign on the smoke budget: stage order, resumption without re-training, supplemental
trials with the main study's best hyperparameters, and the plan's out-of-band entry refused."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from flows.campaign import assign_devices, campaign_stages
from models.arch_grid import ArchitectureOutOfBudget, validate_architecture
from schemas import tracking as T
from schemas.config import HpoConfig, StudySpec
from tasks.study.supplemental import PLANS, SMOKE_PLANS


def test_stages_follow_the_plan():
    stages = campaign_stages()
    assert [label for label, _ in stages] == ["20M_h5", "200M and 2B", "20M re-runs"]
    assert stages[0][1] == ["20M_h5"]
    assert sorted(stages[1][1]) == sorted(f"{b}_h{h}" for b in ("200M", "2B") for h in (1, 3, 5))
    assert stages[2][1] == ["20M_h1_v2", "20M_h3_v2"]
    assert campaign_stages(rerun_20m_h5=True)[2][1][-1] == "20M_h5_v2"


def test_studies_of_a_stage_spread_over_gpus():
    names = ["200M_h1", "200M_h3", "200M_h5", "2B_h1", "2B_h3", "2B_h5"]
    lanes = assign_devices(names, ["cuda:0", "cuda:1"])
    assert lanes == {"cuda:0": ["200M_h1", "200M_h5", "2B_h3"], "cuda:1": ["200M_h3", "2B_h1", "2B_h5"]}
    assert assign_devices(names, ["auto"]) == {"auto": names}


def test_supplemental_plan_validation_matches_the_users_plan():
    """The plan's 20M S3 (d_ff=512) is refused with its exact count and the band; the rest fit."""
    verdicts = {}
    for name, plan in PLANS.items():
        for entry in plan.entries:
            try:
                verdicts[(name, entry.id)] = validate_architecture(plan.budget, entry.d_model, entry.n_layers, entry.n_heads, entry.d_ff)
            except ArchitectureOutOfBudget as refusal:
                verdicts[(name, entry.id)] = str(refusal)
    s3 = verdicts.pop(("20M-h5-L160-180", "S3"))
    assert "31,727,233" in s3 and "[15,000,000, 25,000,000]" in s3
    assert all(isinstance(v, int) for v in verdicts.values())
    assert verdicts[("2M-L64", "S1")] == 2_144_065
    assert verdicts[("20M-h5-L160-180", "S4")] == 23_850_113
    # the smoke stand-ins keep the shape: one entry out of band
    smoke = SMOKE_PLANS["20M-h5-L160-180"]
    with pytest.raises(ArchitectureOutOfBudget):
        s3_smoke = next(e for e in smoke.entries if e.id == "S3")
        validate_architecture(smoke.budget, s3_smoke.d_model, s3_smoke.n_layers, s3_smoke.n_heads, s3_smoke.d_ff)
    for name, plan in SMOKE_PLANS.items():
        assert plan.budget == f"smoke-{PLANS[name].budget}", "each plan runs on its budget's smoke-ladder band"


def test_the_smoke_switch_puts_each_study_on_its_budgets_ladder_band():
    """20M_h5 under the smoke switch is smoke-20M_h5 on the smoke-20M grid, however it is named."""
    for name in ("20M_h5", "200M_h1", "2B_h3_v2"):
        spec = StudySpec.parse(name).as_smoke()
        budget = name.split("_")[0]
        assert (spec.budget, spec.smoke_of) == (f"smoke-{budget}", budget)
        assert spec.name(spec.version or 1) == f"smoke-{name}"
        assert StudySpec.parse(spec.name(spec.version or 1)) == spec
    assert StudySpec(budget="smoke-2B", horizon=1) == StudySpec(budget="smoke", horizon="h1", smoke_of="2B")
    assert StudySpec.parse("smoke_h1").as_smoke().budget == "smoke"
    with pytest.raises(ValueError, match="cannot stand in for 20M"):
        StudySpec(budget="2M", horizon=1, smoke_of="20M")


def test_the_smoke_switch_trains_every_trial_for_several_epochs():
    smoke = HpoConfig().smoke()
    assert smoke.train.max_epochs >= 3 and smoke.train.patience >= 2
    assert smoke.study.n_trials == 8
    # the forced extremes' central learning rate learns in a short run (bench/RESULTS.md "Readout")
    assert smoke.search.central()["learning_rate"] >= 5e-4


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_campaign_runs_stages_in_order_and_resumes_without_retraining(smoke_config: HpoConfig, tmp_path, prefect_harness):
    from flows.campaign import campaign_flow

    config = smoke_config.model_copy(update={"study": smoke_config.study.model_copy(update={"n_trials": 1})})
    result = campaign_flow(
        config=config, smoke=True, supplemental=["20M-h5-L160-180"], report=True, report_dir=tmp_path / "reports"
    )

    client = MlflowClient(config.stores.mlflow_uri)
    study_runs = {}
    for label, names in campaign_stages():
        for name in names:
            spec = StudySpec.parse(name).as_smoke()
            run_name = spec.name(spec.version or 1)
            experiment = client.get_experiment_by_name(run_name)
            assert experiment is not None, f"{run_name} never ran"
            (parent,) = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'study'")
            assert parent.info.status == "FINISHED"
            study_runs.setdefault(label, []).append(parent)
    labels = [label for label, _ in campaign_stages()]
    for earlier, later in zip(labels, labels[1:]):
        assert max(r.info.end_time for r in study_runs[earlier]) <= min(r.info.start_time for r in study_runs[later])

    # supplemental: the valid stand-ins ran with the main study's best hyperparameters; S3 refused
    supplemental = {r["id"]: r for r in result["supplemental 20M-h5-L160-180"]}
    assert supplemental["S3"]["state"] == "refused" and "outside the smoke-20M band" in supplemental["S3"]["detail"]
    assert {supplemental[s]["state"] for s in ("S1", "S2", "S4", "S5")} == {"complete"}
    experiment = client.get_experiment_by_name("smoke-20M_h5")
    trials = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_SOURCE} = 'hpo' and tags.{T.TAG_RUN_KIND} = 'trial'")
    best = max(trials, key=lambda r: r.data.metrics["val_auc"])
    extra = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_SOURCE} = 'supplemental'")
    assert sorted(r.data.tags[T.TAG_SUPPLEMENTAL_ID] for r in extra) == ["S1", "S2", "S4", "S5"]
    for run in extra:
        assert run.info.status == "FINISHED"
        assert {k: run.data.params[k] for k in T.HPARAMS} == {k: best.data.params[k] for k in T.HPARAMS}
        assert run.data.params["n_layers"] in ("4", "5") and run.data.params["budget"] == "smoke-20M"
    assert (tmp_path / "reports" / "report.md").exists() and (tmp_path / "reports" / "report.html").exists()

    # Again: every study is complete, so nothing trains and no run is added.
    before = {e.name: len(client.search_runs([e.experiment_id], max_results=1000)) for e in client.search_experiments()}
    campaign_flow(config=config, smoke=True, supplemental=["20M-h5-L160-180"], report=False)
    after = {e.name: len(client.search_runs([e.experiment_id], max_results=1000)) for e in client.search_experiments()}
    assert after == before
