"""What the report refuses or marks, on a real MLflow SQLite store: unverified legacy trials are
never complete nor selected and are listed with their reason (issue 22, case 7); budgets trained on
different datasets get no verdict, a study without a fingerprint says "dataset not recorded"
(issue 26); a study's section shows how it selected (`selected_by`) and its seed figures."""

from __future__ import annotations

import json

from models.arch_grid import get_architectures_for_budget
from schemas import tracking as T
from tasks.report.analysis import analyse_campaign
from tasks.report.mlflow_io import query_runs
from tasks.report.render import render_markdown
from tasks.report.table import normalise_runs

from helpers import fill_store, study_run, trial

ARCH_2M = get_architectures_for_budget("2M")
ARCH_20M = get_architectures_for_budget("20M")


def unverified(spec: dict, reason: str, state: str = T.STATE_UNVERIFIED) -> dict:
    """A legacy trial as the importer logs one its grid contradicts: FINISHED, val AUC kept."""
    spec["tags"].update({T.TAG_STATE: state, T.TAG_VERIFIED: "false", T.TAG_UNVERIFIED_REASON: reason})
    return spec


def dataset(fingerprint: str, features: list[str], window: int = 60) -> dict[str, str]:
    record = {"fingerprint": fingerprint, "source": "/data/panel.parquet", "features": features, "num_features": len(features),
              "label": "label_h{horizon}", "window": window, "horizon": 1,
              "split_dates": {"train_end": "2015-12-31", "val_end": "2019-12-31"}}  # fmt: skip
    return {T.TAG_DATASET_FINGERPRINT: fingerprint, T.TAG_DATASET: json.dumps(record)}


def test_unverified_legacy_trials_are_counted_listed_and_never_selected(stores):
    reason = "arch_idx 7 of grid v1 has n_layers 35, the log says 40"
    specs = [
        study_run("2M_h1", 1),
        trial("2M_h1", 0, ARCH_2M[0], source="legacy", auc=0.70, grid_version=1),
        trial("2M_h1", 1, ARCH_2M[1], source="legacy", auc=0.71, grid_version=1),
        unverified(trial("2M_h1", 2, ARCH_2M[2], source="legacy", auc=0.95, grid_version=1), reason),
        # hand-edited back to complete, or imported before the state existed: verified=false still wins
        unverified(trial("2M_h1", 3, ARCH_2M[3], source="legacy", auc=0.96, grid_version=1), "no arch_idx 999", state="complete"),
    ]
    with_state = unverified(trial("2M_h1", 4, ARCH_2M[4], source="legacy", auc=0.97, grid_version=1), "params disagree")
    del with_state["tags"][T.TAG_STATE]  # untagged: FINISHED with a val AUC is not enough
    fill_store(stores, specs + [with_state])
    runs = query_runs(stores)
    frame = normalise_runs(runs)
    trials = frame[frame["run_kind"] == "trial"].set_index("trial_number")
    assert list(trials.loc[[2.0, 3.0, 4.0], "state"]) == ["unverified"] * 3
    assert not trials.loc[[2.0, 3.0, 4.0], "complete"].any() and trials.loc[[0.0, 1.0], "complete"].all()

    analysis = analyse_campaign(runs)
    study = next(s for s in analysis.studies if s.name == "2M_h1")
    assert (study.summary.complete, study.summary.unverified, study.summary.trials) == (2, 3, 5)
    assert study.summary.unverified_trials == (f"2M_h1 #2: {reason}", "2M_h1 #3: no arch_idx 999", "2M_h1 #4: params disagree")
    assert study.best["trial_number"] == 1 and study.summary.best_auc == 0.71
    best_2m = next(b for b in analysis.horizons[0].bests if b.budget == "2M")
    assert best_2m.best["trial_number"] == 1 and best_2m.complete == 2

    text = render_markdown(analysis)
    coverage = text.split(f"## Study 2M_h1")[1].split("### Coverage")[1].split("### Forced-extreme")[0]
    assert "Unverified legacy trials (3)" in coverage and f"- 2M_h1 #2: {reason}" in coverage, coverage
    assert "complete 2, pruned 0, failed 0, unverified 3, incomplete 0" in text
    assert "(2 complete, 0 pruned, 0 failed, 3 unverified, 0 incomplete)" in text


def _two_budgets(stores, data_2m: dict, data_20m: dict, horizon: int = 1) -> None:
    h = f"h{horizon}"
    specs = [study_run(f"2M_{h}", 1, tags=data_2m), study_run(f"20M_{h}", 1, tags=data_20m)]
    specs += [trial(f"2M_{h}", n, ARCH_2M[n], auc=0.60 + 0.01 * n, extra_metrics={"val_n_pos": 500, "val_n_neg": 700})
              for n in range(3)]  # fmt: skip
    specs += [trial(f"20M_{h}", n, ARCH_20M[n], auc=0.65 + 0.01 * n, extra_metrics={"val_n_pos": 500, "val_n_neg": 700})
              for n in range(3)]  # fmt: skip
    fill_store(stores, specs)


def test_budgets_on_different_datasets_get_no_verdict(stores):
    features = [f"f{i}" for i in range(12)]
    _two_budgets(stores, dataset("aaaa1111bbbb2222", features), dataset("cccc3333dddd4444", features[:11], window=30))
    analysis = analyse_campaign(query_runs(stores))
    h = analysis.horizons[0]
    assert h.test.verdict == "undetermined" and h.scaling.verdict == "undetermined"
    for reason in (h.test.reason, h.scaling.reason):
        assert reason.startswith("budgets trained on different datasets")
        assert "2M_h1 (2M) on aaaa1111bbbb2222" in reason and "20M_h1 (20M) on cccc3333dddd4444" in reason, reason
        assert "window 60 -> 30" in reason and "F 12 -> 11; missing f11" in reason, reason
    assert all(p.verdict == "undetermined" for p in h.test.pairs) and h.test.fit is None
    assert (h.scaling.pairs["verdict"] == "undetermined").all()

    text = render_markdown(analysis)
    assert "No verdict at h1: undetermined: budgets trained on different datasets: 2M_h1 (2M) on aaaa1111bbbb2222" in text
    assert "- 20M (20M_h1): fingerprint cccc3333dddd4444 (file /data/panel.parquet; F 11; label label_h{horizon}; window 30" in text
    assert "Validation comparison at h1: undetermined (budgets trained on different datasets" in text


def test_budgets_on_one_dataset_are_compared(stores):
    features = [f"f{i}" for i in range(12)]
    _two_budgets(stores, dataset("aaaa1111bbbb2222", features), dataset("aaaa1111bbbb2222", features))
    same = analyse_campaign(query_runs(stores)).horizons[0]
    assert not same.test.datasets.differ and "different datasets" not in same.scaling.reason
    assert same.scaling.verdict != "undetermined", same.scaling


def test_a_study_without_a_fingerprint_is_not_refused_but_named(stores):
    _two_budgets(stores, dataset("aaaa1111bbbb2222", ["f0"]), {})
    analysis = analyse_campaign(query_runs(stores))
    h = analysis.horizons[0]
    assert not h.test.datasets.differ and h.test.datasets.not_recorded == ["20M_h1"]
    assert h.scaling.verdict != "undetermined"
    text = render_markdown(analysis)
    assert "- 20M (20M_h1): dataset not recorded" in text
    assert "dataset not recorded for 20M_h1 (legacy-only" in text
    study = text.split("## Study 20M_h1")[1]
    assert "- Dataset: dataset not recorded" in study
    assert "- Dataset: fingerprint aaaa1111bbbb2222 (file /data/panel.parquet; F 1;" in text.split("## Study 2M_h1")[1]


def test_study_section_shows_selection_and_seed_figures(stores):
    seeds = dict(seeds=3, seed_mean_val_auc=0.6712, seed_sd_val_auc=0.0041, seed_mean_test_auc=0.6601, seed_sd_test_auc=0.0052)
    specs = [study_run("2M_h1", 1, tags={T.TAG_SELECTED_BY: "seed_mean", T.TAG_BEST_TRIAL: 1}, **seeds),
             study_run("20M_h1", 1, tags={T.TAG_SELECTED_BY: "single_run"})]  # fmt: skip
    specs += [trial("2M_h1", n, ARCH_2M[n], auc=0.66 + 0.01 * n) for n in range(2)]
    specs += [trial("20M_h1", n, ARCH_20M[n], auc=0.66 + 0.01 * n) for n in range(2)]
    fill_store(stores, specs)
    text = render_markdown(analyse_campaign(query_runs(stores)))
    small, large = text.split("## Study 2M_h1")[1].split("### Best configuration")[0], text.split("## Study 20M_h1")[1].split("### Best configuration")[0]
    assert ("- Selected by: seed_mean; seeds 3, seed_mean_val_auc 0.6712, seed_sd_val_auc 0.0041, "
            "seed_mean_test_auc 0.6601, seed_sd_test_auc 0.0052") in small, small
    assert "- Selected by: single_run\n" in large, large
