"""The hyperparameter scaling fits on synthetic studies: a known trend is recovered within its
band, no trend reads "consistent" or "no evidence", and the sources are chosen as the module says
(finished studies, one dataset, legacy only when asked, seed noise before the AUC's SE)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.arch_grid import get_architectures_for_budget
from tasks.report.hparam_scaling import Scale, hparam_scaling, smaller_budgets, study_noise
from tasks.report.table import normalise_runs, trials_of
from tasks.study.warm_start import plan_warm_start

PARAMS = {"2M": 2e6, "20M": 2e7, "200M": 2e8, "2B": 2e9}
SEARCH = {"learning_rate": (1e-5, 5e-5, 1e-4, 5e-4), "dropout": (0.1, 0.3, 0.5, 0.7), "weight_decay": (0.0, 1e-5, 1e-4, 1e-3)}


def study_run(study: str, fingerprint: str | None = "fp-a", state: str = "complete", source: str = "hpo", **more) -> dict:
    row = {"run_id": f"{study}-run", "experiment": study, "run_kind": "study", "source": source, "status": "FINISHED",
           "study_state": state, "dataset_fingerprint": fingerprint}  # fmt: skip
    return row | more


def trial(study: str, n: int, auc: float, lr: float, dropout: float = 0.3, wd: float = 1e-4, params: float | None = None,
          source: str = "hpo", **more) -> dict:  # fmt: skip
    budget = study.split("_")[0].removeprefix("smoke-")
    return {"run_id": f"{study}-{n}", "experiment": study, "run_kind": "trial", "source": source, "state": "complete",
            "status": "FINISHED", "trial_number": n, "val_auc": auc, "params": params or PARAMS[budget],
            "learning_rate": lr, "dropout": dropout, "weight_decay": wd, "d_model": 64, "n_layers": 4, "n_heads": 4,
            "d_ff_ratio": 2, "val_n_pos": 1000, "val_n_neg": 1000, "extreme_type": "none"} | more  # fmt: skip


def studies(optimum, budgets=("2M", "20M", "200M", "2B"), near=10, scatter=0.1, seed=1, far=5) -> list[dict]:
    """Per budget a finished study: `near` trials around the optimal learning rate (log10 scatter
    `scatter`) with val AUCs within 0.002 of each other, and `far` clearly worse ones at random values."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets:
        study = f"{budget}_h1"
        rows.append(study_run(study))
        for n in range(near):
            lr = 10 ** (optimum(math.log10(PARAMS[budget])) + rng.normal(0, scatter))
            rows.append(trial(study, n, 0.78 - rng.uniform(0, 0.002), lr, params=PARAMS[budget] * 10 ** rng.uniform(-0.1, 0.1)))
        for n in range(near, near + far):
            rows.append(trial(study, n, 0.62 + rng.uniform(0, 0.01), float(rng.choice(SEARCH["learning_rate"]))))
    return rows


def frame(rows: list[dict]) -> pd.DataFrame:
    return normalise_runs(pd.DataFrame(rows))


def fit_of(scaling, param: str):
    return next(f for f in scaling.fits if f.param == param)


def test_a_known_trend_is_recovered_within_its_band():
    truth = lambda x: -3.0 - 0.5 * (x - 6.3)  # noqa: E731 - log10 lr* falls half a decade per tenfold parameters
    scaling = hparam_scaling(frame(studies(truth)), 1, ["2M", "20M", "200M", "2B"], SEARCH)
    lr = fit_of(scaling, "learning_rate")
    assert [b.budget for b in scaling.bands] == ["2M", "20M", "200M", "2B"] and not scaling.refused
    assert all(len(b.near) == 10 for b in scaling.bands), "the clearly worse trials are outside the near-optimal band"
    assert lr.slope_low <= -0.5 <= lr.slope_high and lr.slope_high < 0
    assert lr.reading == "trend" and "excludes 0" in lr.why
    assert len(lr.loo) == 4
    for loo in lr.loo:  # each budget predicted from the other three, within a tenth of a decade
        assert abs(loo.error) < 0.15 and loo.within
    # dropout and weight decay are the same everywhere: consistent
    assert fit_of(scaling, "dropout").reading == "consistent"
    assert fit_of(scaling, "weight_decay").reading == "consistent"


def test_no_trend_reads_consistent_and_too_little_reads_no_evidence():
    flat = hparam_scaling(frame(studies(lambda x: -3.0)), 1, ["2M", "20M", "200M", "2B"], SEARCH)
    lr = fit_of(flat, "learning_rate")
    assert lr.slope_low < 0 < lr.slope_high and lr.reading == "consistent"

    # two budgets, each with near-optimal trials at every searched value: no slope, no agreement either
    rows = [study_run("2M_h1"), study_run("20M_h1")]
    for study in ("2M_h1", "20M_h1"):
        rows += [trial(study, n, 0.78 - 0.001 * (n % 2), lr) for n, lr in enumerate([1e-5, 5e-4, 1e-5, 5e-4, 5e-5, 1e-4])]
    wide = fit_of(hparam_scaling(frame(rows), 1, ["2M", "20M"], SEARCH), "learning_rate")
    assert wide.reading == "no evidence" and "more than one step" in wide.why

    one = hparam_scaling(frame(studies(lambda x: -3.0, budgets=("2M",))), 1, ["2M", "20M"], SEARCH)
    assert fit_of(one, "learning_rate").reading == "no evidence"
    assert "a fit needs at least 2" in fit_of(one, "learning_rate").why


def test_identical_best_values_are_not_called_inconsistent():
    # the demo's h1: learning_rate 0.001 in every budget's best trial, near-optimal trials around it
    rows = []
    for budget in ("2M", "20M", "200M"):
        study = f"{budget}_h1"
        rows += [study_run(study)] + [trial(study, n, 0.785 - 0.0005 * n, 1e-3, dropout=0.3, wd=wd)
                                      for n, wd in enumerate((0.0, 1e-5, 1e-4, 1e-3))]
    scaling = hparam_scaling(frame(rows), 1, ["2M", "20M", "200M"], {**SEARCH, "learning_rate": (3e-4, 1e-3, 2e-3, 4e-3)})
    assert fit_of(scaling, "learning_rate").reading == "consistent"


def test_sources_are_finished_studies_on_one_dataset_and_legacy_only_when_asked():
    rows = studies(lambda x: -3.0, budgets=("2M", "20M", "200M"))
    rows = [r | {"study_state": "running"} if r["run_id"] == "200M_h1-run" else r for r in rows]
    scaling = hparam_scaling(frame(rows), 1, ["2M", "20M", "200M"], SEARCH)
    assert [b.budget for b in scaling.bands] == ["2M", "20M"]
    assert scaling.skipped == ["200M: no finished study at h1 (200M_h1 not finished)"]

    other = [r | {"dataset_fingerprint": "fp-b"} if r["run_id"] == "20M_h1-run" else r for r in rows]
    refused = hparam_scaling(frame(other), 1, ["2M", "20M", "200M"], SEARCH)
    assert refused.fits == [] and "different datasets" in refused.refused and "fp-b" in refused.refused
    # the warm start takes only studies on the new study's dataset
    kept = hparam_scaling(frame(other), 1, ["2M", "20M"], SEARCH, fingerprint="fp-a")
    assert [b.budget for b in kept.bands] == ["2M"] and "trained on dataset fp-b, not fp-a" in kept.skipped[0]

    legacy = [r | {"source": "legacy", "dataset_fingerprint": None} if r["experiment"] == "2M_h1" else r for r in rows]
    without = hparam_scaling(frame(legacy), 1, ["2M", "20M"], SEARCH, include_legacy=False)
    assert [b.budget for b in without.bands] == ["20M"] and "transfer_from_legacy=True" in without.skipped[0]
    marked = hparam_scaling(frame(legacy), 1, ["2M", "20M"], SEARCH, include_legacy=True)
    assert [(b.budget, b.legacy) for b in marked.bands] == [("2M", True), ("20M", False)]


def test_seed_noise_comes_before_the_auc_standard_error():
    rows = [study_run("2M_h1"), trial("2M_h1", 0, 0.78, 1e-4), trial("2M_h1", 1, 0.77, 5e-5), trial("2M_h1", 2, 0.70, 1e-5)]
    # seeds of trial 0: 0.78, 0.76, 0.77 (sd 0.01); of trial 1: 0.77, 0.75 (sd sqrt(2) * 0.01)
    rows += [{"run_id": f"c{i}", "experiment": "2M_h1", "run_kind": "confirm", "status": "FINISHED", "state": "complete",
              "confirm_of": of, "val_auc": auc} for i, (of, auc) in enumerate([("2M_h1-0", 0.76), ("2M_h1-0", 0.77), ("2M_h1-1", 0.75)])]  # fmt: skip
    f = frame(rows)
    noise = study_noise(f, trials_of(f), (1000, 1000))
    pooled = math.sqrt((0.0002 + 0.0002) / 3)  # squares 0.0002 and 0.0002 over 2 + 1 degrees of freedom
    assert noise.sd == pytest.approx(pooled) and noise.method.startswith("seed sd of 2 configurations")
    band = hparam_scaling(f, 1, ["2M"], SEARCH).bands[0]
    assert band.threshold == pytest.approx(0.78 - 1.959963984540054 * math.sqrt(2) * pooled)
    assert sorted(band.near["trial_number"]) == [0, 1]


def test_data_regime_and_weight_decay_zero():
    rows = [study_run("2M_h1", train_windows=7000, train_ticker_days=7100), trial("2M_h1", 0, 0.78, 1e-4)]
    (regime,) = hparam_scaling(frame(rows), 1, ["2M"], SEARCH).regime
    assert regime.train_windows == 7000 and regime.days_per_param == pytest.approx(7100 / 2e6) and regime.data_limited
    scale = Scale(True, 1e-6)  # a weight decay of 0 sits a decade below the smallest positive value searched
    assert scale.units([0.0, 1e-5]).tolist() == pytest.approx([-6.0, -5.0])
    assert scale.snap(-5.8, SEARCH["weight_decay"]) == 0.0 and scale.snap(-4.9, SEARCH["weight_decay"]) == 1e-5


def test_smaller_budgets_follow_each_ladder():
    assert smaller_budgets("2B") == ["2M", "20M", "200M"]
    assert smaller_budgets("smoke-200M") == ["smoke-2M", "smoke-20M"]
    assert smaller_budgets("smoke") == [] and smaller_budgets("2M") == []


def test_the_warm_start_plan_snaps_the_prediction_and_says_what_is_missing():
    truth = lambda x: -3.0 - 0.5 * (x - 6.3)  # noqa: E731
    grid = list(get_architectures_for_budget("2B"))
    plan = plan_warm_start(frame(studies(truth, budgets=("2M", "20M", "200M"))), "2B", 1, grid, SEARCH)
    assert plan.sources == ("2M_h1", "20M_h1", "200M_h1") and plan.readings["learning_rate"] == "trend"
    value, low, high = plan.predicted["learning_rate"]
    assert low <= value <= high and value == pytest.approx(10 ** truth(math.log10(plan.arch.params)), rel=0.6)
    # about 10^-4.5 at ~2B parameters: 5e-5 (10^-4.3) is the nearest searched value on a log scale
    assert plan.hparams["learning_rate"] == 5e-5
    assert plan.hparams["dropout"] == 0.3 and plan.hparams["weight_decay"] == 1e-4
    assert plan.arch in grid and plan.arch_from == "trend"
    params = plan.mlflow_params()
    assert params["warm_start_sources"] == "2M_h1,20M_h1,200M_h1" and "warm_start_learning_rate_low" in params

    assert plan_warm_start(frame(studies(truth, budgets=("2M",))), "20M", 1, grid, SEARCH) == (
        "20M has only 2M below it on its ladder; a warm start needs finished studies of two smaller budgets")
    missing = plan_warm_start(frame(studies(truth, budgets=("20M",))), "2B", 1, grid, SEARCH)
    assert missing == "needs finished studies of at least two smaller budgets at h1; found 20M (20M_h1); missing 2M, 200M"


def test_the_forced_extremes_count_once():
    # six extremes at the central values and two sampled trials, all near-optimal: three configurations
    rows = [study_run("2M_h1")] + [trial("2M_h1", n, 0.78, 5e-5, extreme_type=f"e{n}") for n in range(6)]
    rows += [trial("2M_h1", 6, 0.779, 1e-5), trial("2M_h1", 7, 0.779, 5e-4)]
    (lr,) = [f for f in hparam_scaling(frame(rows), 1, ["2M"], SEARCH).fits if f.param == "learning_rate"]
    assert lr.near == (3,)
    assert lr.y[0] == pytest.approx(np.mean(np.log10([1e-5, 5e-5, 5e-4])))
