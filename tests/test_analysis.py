"""The report's rules on hand-made frames: each expected number is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.arch_grid import forced_extremes, get_architectures_for_budget
from tasks.report.analysis import analyse_campaign
from tasks.report.budgets import (
    Interval,
    auc_interval,
    budget_bests,
    compare_aucs,
    hanley_mcneil_se,
    parameter_consistency,
    scaling_verdict,
)
from tasks.report.checklist import verification_checklist
from tasks.report.study import (
    collapse_flags,
    coverage,
    eta_squared,
    gaps,
    parameter_importance,
    parameter_trend,
    summary_statistics,
    value_table,
)
from tasks.report.table import budget_order, normalise_runs
from tasks.report.render import render_markdown


def run(study: str = "2M_h1", n: int = 0, auc: float | None = 0.7, **values) -> dict:
    """One trial row as `tasks.report.mlflow_io.runs_frame` builds it (params and tags as text)."""
    row = {"run_id": f"{study}-{n}", "experiment": study, "run_kind": "trial", "source": "hpo", "state": "complete",
           "status": "FINISHED", "trial_number": str(n), "val_auc": auc, "extreme_type": "none",
           "d_model": "64", "n_layers": "4", "n_heads": "4", "d_ff_ratio": "2",
           "learning_rate": "5e-05", "dropout": "0.3", "weight_decay": "1e-05"}  # fmt: skip
    row.update({k: (str(v) if k not in ("val_auc", "pred_range", "recall", "val_n_pos", "val_n_neg", "params") and v is not None else v)
                for k, v in values.items()})  # fmt: skip
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return normalise_runs(pd.DataFrame(rows))


# ----------------------------------------------------------------------------- importance and trends


def test_eta_squared_by_hand():
    # groups 64: {0.70, 0.72}, 128: {0.60, 0.62}; grand mean 0.66
    # SS_between = 2*0.05^2 + 2*0.05^2 = 0.01; SS_total = 0.04^2 + 0.06^2 + 0.06^2 + 0.04^2 = 0.0104
    values = pd.Series([0.70, 0.72, 0.60, 0.62])
    assert eta_squared(values, pd.Series([64, 64, 128, 128])) == pytest.approx(0.01 / 0.0104, abs=1e-12)
    assert eta_squared(values, pd.Series([1, 1, 1, 1])) == 0.0
    assert eta_squared(values, pd.Series([1, 2, 3, 4])) == pytest.approx(1.0)  # one trial per value explains all
    assert math.isnan(eta_squared(pd.Series([0.7, 0.7]), pd.Series([1, 2])))  # no variance
    # a trial without the parameter is left out: groups {0.70} and {0.60, 0.62}, mean 0.64,
    # SS_between = 0.06^2 + 2 * 0.03^2 = 0.0054, SS_total = 0.06^2 + 0.04^2 + 0.02^2 = 0.0056
    assert eta_squared(values, pd.Series([64, None, 128, 128])) == pytest.approx(0.0054 / 0.0056, abs=1e-12)


def _eta(*groups: list[float]) -> float:
    values = np.concatenate(groups)
    between = sum(len(g) * (np.mean(g) - values.mean()) ** 2 for g in groups)
    return between / ((values - values.mean()) ** 2).sum()


def test_importance_ranks_parameters_and_ignores_incomplete_trials():
    rows = [run(n=0, auc=0.70, d_model=64, dropout=0.1), run(n=1, auc=0.72, d_model=64, dropout=0.3),
            run(n=2, auc=0.60, d_model=128, dropout=0.1), run(n=3, auc=0.62, d_model=128, dropout=0.3),
            run(n=4, auc=None, d_model=128, dropout=0.3, state="failed", status="FAILED")]  # fmt: skip
    table = parameter_importance(frame(rows)).set_index("param")
    assert table.loc["d_model", "eta_squared"] == pytest.approx(0.01 / 0.0104, abs=1e-12)
    assert table.loc["dropout", "eta_squared"] == pytest.approx(_eta([0.70, 0.60], [0.72, 0.62]), abs=1e-12)
    assert table.loc["n_heads", "eta_squared"] == 0.0 and table.loc["d_model", "trials"] == 4
    assert list(table.index[:2]) == ["d_model", "dropout"]


def test_trend_labels_follow_spearman_at_five_percent():
    rising = [run(n=i, auc=0.60 + 0.01 * i + 0.002 * (i % 2), dropout=[0.1, 0.3, 0.5, 0.7][i // 2]) for i in range(8)]
    trend = parameter_trend(frame(rising), "dropout")
    assert trend.label == "increasing" and trend.p_value < 0.05
    assert trend.rho == pytest.approx(pd.Series([0, 0, 1, 1, 2, 2, 3, 3]).corr(pd.Series(range(8)), method="spearman"))
    falling = [run(n=i, auc=0.70 - 0.01 * i, learning_rate=[1e-5, 5e-5, 1e-4, 5e-4][i // 2]) for i in range(8)]
    assert parameter_trend(frame(falling), "learning_rate").label == "decreasing"
    # a peak in the middle has no monotonic trend: flat (the per-value table shows the peak)
    peaked = [run(n=i, auc=[0.60, 0.70, 0.70, 0.60][i % 4], d_model=[32, 64, 96, 128][i % 4]) for i in range(8)]
    trend = parameter_trend(frame(peaked), "d_model")
    assert trend.label == "flat" and trend.best["value"] == 64 and trend.worst["value"] == 32
    assert parameter_trend(frame(rising[:3]), "dropout").label == "n/a"  # fewer than 4 trials
    assert parameter_trend(frame(rising), "n_heads").label == "n/a"  # one value


def test_value_table_mean_std_count():
    rows = [run(n=0, auc=0.70, n_layers=2), run(n=1, auc=0.74, n_layers=2), run(n=2, auc=0.60, n_layers=4)]
    table = value_table(frame(rows), "n_layers")
    assert table["value"].tolist() == [2.0, 4.0] and table["count"].tolist() == [2, 1]
    assert table["mean"].tolist() == pytest.approx([0.72, 0.60]) and table["std"][0] == pytest.approx(math.sqrt(0.0008))
    assert math.isnan(table["std"][1])


# ----------------------------------------------------------------------------- collapse, coverage, gaps


def test_collapse_rule_boundaries():
    rows = [run(n=0, pred_range=0.049, recall=0.4), run(n=1, pred_range=0.05, recall=0.4),
            run(n=2, pred_range=0.3, recall=0.0), run(n=3, pred_range=0.3, recall=1.0),
            run(n=4, pred_range=None, recall=None)]  # fmt: skip
    flags = collapse_flags(frame(rows))
    assert flags["collapsed"].tolist() == [True, False, False, False, None]  # one class alone is not a collapse
    assert flags["narrow"].tolist() == [True, False, False, False, None]
    assert flags["one_class"].tolist() == [False, False, True, True, None]


def test_coverage_counts_complete_trials_on_the_grid_axes():
    rows = [run(n=0, d_model=64, n_layers=32), run(n=1, d_model=64, n_layers=32), run(n=2, d_model=96, n_layers=16),
            run(n=3, d_model=96, n_layers=16, state="failed", status="FAILED", auc=None)]  # fmt: skip
    cov = coverage(frame(rows), "d_model", "n_layers", "2M")
    grid = get_architectures_for_budget("2M")
    assert cov.counts.loc[64, 32] == 2 and cov.counts.loc[96, 16] == 1 and cov.counts.to_numpy().sum() == 3
    assert list(cov.counts.index) == sorted({float(a.d_model) for a in grid})
    assert list(cov.counts.columns) == sorted({float(a.n_layers) for a in grid})
    assert bool(cov.feasible.loc[64, 64]) and not bool(cov.feasible.loc[160, 64])  # d=160 has no L=64 in the band
    assert (64.0, 32.0) not in cov.untried() and (64.0, 64.0) in cov.untried() and (160.0, 64.0) not in cov.untried()
    hp = coverage(frame(rows), "learning_rate", "dropout")
    assert hp.counts.shape == (4, 4) and hp.counts.loc[5e-5, 0.3] == 3 and hp.feasible is None


def test_gaps_list_untried_grid_values_and_regions():
    grid = get_architectures_for_budget("smoke")
    rows = [run(study="smoke_h1", n=i, **{k: getattr(a, k) for k in ("d_model", "n_layers", "n_heads", "d_ff_ratio")})
            for i, a in enumerate(grid) if a.d_model != 48]  # fmt: skip
    g = gaps(frame(rows), "smoke")
    assert g.untried_values["d_model"] == [48.0] and g.untried_values["n_layers"] == []
    assert g.archs_total == len(grid) and g.archs_tried == len([a for a in grid if a.d_model != 48])
    assert g.untried_archs == [a.arch_idx for a in grid if a.d_model == 48]
    assert [(d, n) for d, n, _ in g.untried_cells] == [(48.0, 1.0), (48.0, 2.0), (48.0, 3.0)]
    assert g.untried_values["learning_rate"] == [1e-5, 1e-4, 5e-4] and len(g.untried_hparam_cells) == 15


# ----------------------------------------------------------------------------- intervals and verdicts


def test_hanley_mcneil_by_hand():
    # A = 0.5, n_pos = n_neg = 100: Q1 = Q2 = 1/3, var = (0.25 + 2 * 99 * (1/3 - 1/4)) / 100^2
    assert hanley_mcneil_se(0.5, 100, 100) == pytest.approx(math.sqrt((0.25 + 198 / 12) / 1e4), abs=1e-15)
    a, n1, n2 = 0.7, 600, 800
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    assert hanley_mcneil_se(a, n1, n2) == pytest.approx(
        math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)), abs=1e-15)
    assert math.isnan(hanley_mcneil_se(0.7, math.nan, 800)) and math.isnan(hanley_mcneil_se(0.7, 0, 800))


def test_interval_uses_class_counts_else_top_trials_spread():
    rows = [run(n=i, auc=a) for i, a in enumerate([0.70, 0.69, 0.68, 0.66, 0.65, 0.50])]
    trials = frame(rows)
    best = trials.iloc[0]
    counted = auc_interval(best, trials, (600.0, 800.0))
    assert counted.method == "Hanley-McNeil" and counted.se == hanley_mcneil_se(0.70, 600, 800)
    spread = auc_interval(best, trials, (math.nan, math.nan))
    assert spread.method == "top-5 spread" and spread.se == pytest.approx(np.std([0.70, 0.69, 0.68, 0.66, 0.65], ddof=1))
    alone = auc_interval(best, trials.iloc[:1], (math.nan, math.nan))
    assert alone.method == "none" and math.isnan(alone.se)


def test_compare_aucs_needs_the_interval_to_exclude_zero():
    z = 1.959963984540054
    a, b = Interval(0.72, 0.01, "x"), Interval(0.70, 0.0, "x")
    assert compare_aucs(a, b).verdict == "higher"  # 0.02 - 1.96 * 0.01 > 0
    assert compare_aucs(Interval(0.7195, 0.01, "x"), b).verdict == "not distinguishable"  # 0.0195 < 1.96 * 0.01
    assert compare_aucs(b, a).verdict == "lower"
    c = compare_aucs(Interval(0.72, 0.006, "x"), Interval(0.70, 0.008, "x"))
    assert c.se == pytest.approx(0.01) and c.low == pytest.approx(0.02 - z * 0.01)
    assert compare_aucs(a, Interval(0.5, math.nan, "none")).verdict == "not distinguishable"


def _bests(aucs: dict[str, float], counts: tuple[int, int] | None = (600, 800)):
    rows = []
    for budget, auc in aucs.items():
        extra = {"val_n_pos": counts[0], "val_n_neg": counts[1]} if counts else {}
        rows.append(run(study=f"{budget}_h1", n=0, auc=auc, **extra))
    return budget_bests(frame(rows), 1, budget_order(aucs) + ["2B"])


def test_scaling_verdicts():
    # with 600/800 windows an AUC near 0.7 has SE ~0.0137, so a difference needs ~0.038 to count
    assert scaling_verdict(_bests({"2M": 0.60, "20M": 0.66, "200M": 0.72})).verdict == "holds"
    assert scaling_verdict(_bests({"2M": 0.72, "20M": 0.73, "200M": 0.66})).verdict == "violated"
    violated = scaling_verdict(_bests({"2M": 0.72, "20M": 0.73, "200M": 0.66}))
    assert "20M is higher than 200M" in violated.reason or "2M is higher than 200M" in violated.reason
    undecided = scaling_verdict(_bests({"2M": 0.70, "20M": 0.71, "200M": 0.76}))
    assert undecided.verdict == "not distinguishable" and "2M and 20M" in undecided.reason
    assert scaling_verdict(_bests({"20M": 0.7})).verdict == "not assessable"
    pairs = scaling_verdict(_bests({"2M": 0.60, "20M": 0.66, "200M": 0.72})).pairs
    assert pairs[["smaller", "larger"]].values.tolist() == [["2M", "20M"], ["2M", "200M"], ["20M", "200M"]]
    assert pairs["adjacent"].tolist() == [True, False, True]
    # the 2B budget has no runs: listed, never compared
    assert [b.budget for b in _bests({"2M": 0.6, "20M": 0.7})] == ["2M", "20M", "2B"]


def test_baselines_are_never_trials_and_set_the_reference():
    rows = [run(study="2M_h1", n=0, auc=0.70), run(study="2M_h1", n=1, auc=0.65),
            {"run_id": "b1", "experiment": "2M_h1", "run_kind": "baseline", "baseline_model": "logreg",
             "val_auc": 0.78, "horizon": "1", "status": "FINISHED", "val_n_pos": 600, "val_n_neg": 800},
            {"run_id": "b2", "experiment": "baselines_h1", "run_kind": "baseline", "baseline_model": "hgb",
             "val_auc": 0.74, "horizon": "1", "status": "FINISHED"}]  # fmt: skip
    runs = frame(rows)
    assert summary_statistics(runs[runs["run_kind"] == "trial"]).trials == 2
    best = budget_bests(runs, 1, ["2M"])[0]
    assert best.baseline["baseline_model"] == "logreg" and best.vs_baseline.verdict == "lower"
    assert best.interval.method == "Hanley-McNeil"  # the baselines' class counts serve the whole horizon
    analysis = analyse_campaign(pd.DataFrame(rows))
    assert [s.name for s in analysis.studies] == ["2M_h1"] and analysis.studies[0].summary.trials == 2


def test_parameter_consistency_uses_best_mean_values():
    rows = [run(study="2M_h1", n=0, auc=0.70, dropout=0.1), run(study="2M_h1", n=1, auc=0.60, dropout=0.3),
            run(study="20M_h1", n=0, auc=0.71, dropout=0.1, weight_decay=0.0),
            run(study="20M_h1", n=1, auc=0.65, dropout=0.3, weight_decay=1e-3)]  # fmt: skip
    table = parameter_consistency(frame(rows), 1, ["2M", "20M", "200M"]).set_index("param")
    assert table.loc["dropout", "verdict"] == "consistent" and table.loc["dropout", "best_mean"] == {"2M": 0.1, "20M": 0.1}
    assert table.loc["weight_decay", "verdict"] == "inconsistent"
    assert table.loc["weight_decay", "best_trial"] == {"2M": 1e-05, "20M": 0.0}


# ----------------------------------------------------------------------------- normalising and the checklist


def test_normalise_fills_identity_and_state():
    rows = [run(study="20M_h5_v3", n=0, state=None, status="FINISHED"), run(study="20M_h5_v3", n=1, state=None, status="FAILED", auc=None),
            run(study="smoke-2M_h3", n=0, state=None, status="RUNNING", auc=None),
            {**run(study="x", n=0), "experiment": "2B_h1", "study": None, "horizon": "h1"}]  # fmt: skip
    runs = frame(rows)
    assert runs["state"].tolist() == ["complete", "failed", "incomplete", "complete"]
    assert runs["complete"].tolist() == [True, False, False, True]
    assert runs["study_version"].tolist() == [3, 3, 1, 1] and runs["horizon"].tolist() == [5, 5, 3, 1]
    assert runs["budget"].tolist() == ["20M", "20M", "smoke-2M", "2B"] and runs["study"].tolist()[3] == "2B_h1"
    assert runs["budget_group"].tolist() == ["20M", "20M", "smoke-2M", "2B"]
    assert budget_order(["2B", "smoke-20M", "2M", "smoke", "smoke-2M", "other"]) == ["smoke", "2M", "2B", "other", "smoke-2M", "smoke-20M"]


def _extremes(study: str, budget: str, version: int = 2, skip: int | None = None, retry: dict | None = None) -> list[dict]:
    rows = []
    for n, (extreme, arch) in enumerate(forced_extremes(get_architectures_for_budget(budget, grid_version=version))):
        if n == skip:
            continue
        number = (retry or {}).get(n, n)
        extra = {"retry_of": n} if number != n else {}
        rows.append(run(study=study, n=number, extreme_type=extreme, n_layers=arch.n_layers, d_model=arch.d_model,
                        n_heads=arch.n_heads, grid_version=version, **extra))  # fmt: skip
    return rows


def test_checklist_passes_on_a_complete_campaign():
    rows = _extremes("2M_h1", "2M") + _extremes("20M_h1", "20M", retry={2: 9})  # extreme 2 re-run as trial 9
    rows += [run(study="20M_h1", n=10 + i, n_layers=[160, 180][i % 2]) for i in range(44)]
    rows += _extremes("20M_h3", "20M") + [run(study="20M_h3", n=10 + i, n_layers=180 - 20 * (i % 2)) for i in range(44)]
    checks = verification_checklist(frame(rows))
    assert [c.status for c in checks] == ["pass"] * 5 + ["n/a"]
    assert checks[2].details == ("20M_h1: 50 complete (hpo 50)", "20M_h3: 50 complete (hpo 50)")


def test_checklist_failures_name_the_evidence():
    rows = _extremes("2M_h1", "2M", version=1, skip=4)  # v1 grid: no L=64; min_n_heads never ran
    rows.append(run(study="2M_h1", n=6, n_layers=64, state="failed", status="FAILED", auc=None))
    rows.append(run(study="2M_h1", n=7, n_heads=None, n_heads_source="unrecoverable"))
    rows += [run(study="20M_h1", n=i, n_layers=160) for i in range(49)]
    checks = verification_checklist(frame(rows))
    assert [c.status for c in checks] == ["fail", "fail", "fail", "fail", "fail", "n/a"]
    assert checks[0].evidence.startswith("55 of 56 trial runs have n_heads") and "missing: 2M_h1 #7 (hpo, complete)" in checks[0].details
    assert checks[1].evidence == "2M_h1: L=64: 0 complete (1 not complete)"
    assert checks[2].details == ("20M_h1: 49 complete (hpo 49)", "20M_h3: no study in MLflow")
    assert checks[3].evidence == "20M_h1: L=160: 49 complete in 20M_h1; L=180: 0 complete"
    assert checks[4].details == (
        "2M_h1: trials 0-5 lack min_n_heads",
        "20M_h1: trials 0-5 lack min_d_model, max_d_model, min_n_layers, max_n_layers, min_n_heads, max_n_heads",
    )
    assert checks[4].evidence == "0 of 2 studies; failing: 2M_h1, 20M_h1"


def test_a_smoke_only_store_marks_the_real_budget_items_not_applicable():
    rows = _extremes("smoke-20M_h5", "smoke-20M")
    checks = verification_checklist(frame(rows))
    assert [c.status for c in checks] == ["pass", "n/a", "n/a", "n/a", "pass", "n/a"]
    assert checks[1].evidence == "smoke stand-ins only: this item checks the real budgets' studies"
    # one real-budget trial and the items apply again
    checks = verification_checklist(frame(rows + [run(study="2M_h1", n=0, n_layers=64)]))
    assert [c.status for c in checks][1:4] == ["pass", "fail", "fail"]


def test_empty_store_renders():
    analysis = analyse_campaign(pd.DataFrame())
    assert analysis.studies == [] and analysis.horizons == []
    assert analysis.budgets_without_runs == ["2M", "20M", "200M", "2B"]
    assert [c.status for c in analysis.checklist] == ["fail"] * 5 + ["n/a"]
    assert "# Cross-budget HPO report" in render_markdown(analysis)


def test_pruned_trials_are_counted_and_never_a_best():
    # the pruned trial reported a higher val AUC before it was stopped: it still is no complete trial
    rows = [run(study="2M_h1", n=0, auc=0.70), run(study="2M_h1", n=1, auc=0.66),
            run(study="2M_h1", n=2, auc=0.75, state="pruned", status="KILLED", last_epoch="2"),
            run(study="20M_h1", n=0, auc=0.71), run(study="20M_h1", n=1, auc=0.80, state="pruned", status="KILLED")]  # fmt: skip
    runs = frame(rows)
    assert runs["complete"].tolist() == [True, True, False, True, False]
    stats = summary_statistics(runs[runs["study"] == "2M_h1"])
    assert (stats.complete, stats.pruned, stats.failed, stats.best_auc) == (2, 1, 0, 0.70)
    bests = {b.budget: b for b in budget_bests(runs, 1, ["2M", "20M"])}
    assert bests["2M"].best["trial_number"] == 0 and bests["20M"].best["val_auc"] == 0.71
    assert (bests["2M"].complete, bests["2M"].trials) == (2, 3)
    text = render_markdown(analyse_campaign(pd.DataFrame(rows)))
    assert "(3 complete, 2 pruned, 0 failed" in text
    assert "complete 2, pruned 1, failed 0" in text
