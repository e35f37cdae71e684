"""The report from a real (temporary) MLflow store filled with runs of known values: every number
the report shows is recomputed here from the values logged, independently of tasks.report's analysis modules."""

from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from models.arch_grid import Architecture, find_arch_idx, forced_extremes, get_architectures_for_budget
from schemas.config import StoreConfig
from tasks.report.analysis import analyse_campaign, with_predictions
from tasks.report.mlflow_io import REPORT_EXPERIMENT, load_predictions, log_report, query_runs
from tasks.report.render import render_markdown, write_report
from tasks.report.rows import best_per_budget_rows
from tasks.report.stats import holm, paired_delong
from tasks.report.table import normalise_runs
from tasks.tracking.predictions import log_predictions
from tasks.tracking.runs import get_or_create_experiment, log_batch, mlflow_client

from helpers import CENTRAL, baseline, fill_store, no_fsync, study_run, trial

LRS, DROPOUTS, WDS = (1e-5, 5e-5, 1e-4, 5e-4), (0.1, 0.3, 0.5, 0.7), (0.0, 1e-5, 1e-4, 1e-3)
def rerun_hp(n: int) -> dict[str, float]:
    """20M_h1_v2's hyperparameters: central for the six extremes, then a fixed rotation."""
    if n < 6:
        return CENTRAL
    return {"learning_rate": LRS[n % 4], "dropout": DROPOUTS[(n // 4) % 4], "weight_decay": WDS[(n // 16) % 4]}


def rerun_auc(n: int) -> float:
    """20M_h1_v2's val AUC: rises with dropout, falls with learning rate, plus a fixed wobble."""
    hp = rerun_hp(n)
    lr, dropout = LRS.index(hp["learning_rate"]), DROPOUTS.index(hp["dropout"])
    return round(0.66 + 0.01 * dropout - 0.006 * lr + 0.0005 * ((n * 37) % 11), 6)


def campaign_specs() -> list[dict]:
    """The campaign the tests read back (see the module docstring of each study's role)."""
    specs: list[dict] = []
    v1_2m = get_architectures_for_budget("2M", grid_version=1)
    v2_2m = get_architectures_for_budget("2M")
    v1_20m = get_architectures_for_budget("20M", grid_version=1)
    v2_20m = get_architectures_for_budget("20M")

    # 2M_h1: legacy study (grid v1), n_heads recovered, extremes in trials 0-5, one failed trial
    # whose n_heads is unrecoverable, and three supplemental L=64 trials.
    for n, (extreme, arch) in enumerate(forced_extremes(v1_2m)):
        specs.append(trial("2M_h1", n, arch, source="legacy", auc=[0.70, 0.71, 0.72, 0.69, 0.68, 0.705][n],
                           extreme=extreme, grid_version=1, n_heads_source="recovered"))  # fmt: skip
    for n, idx in zip((6, 7, 8), (3, 20, 40)):
        specs.append(trial("2M_h1", n, v1_2m[idx], source="legacy", auc=0.695 + 0.001 * n, grid_version=1,
                           n_heads_source="logged" if n == 6 else "recovered"))  # fmt: skip
    specs.append(trial("2M_h1", 9, v1_2m[5], source="legacy", state="failed", grid_version=1,
                       n_heads_source="unrecoverable", failure_reason="diverged"))  # fmt: skip
    for n, heads in zip((10, 11, 12), (8, 4, 2)):
        arch = v2_2m[find_arch_idx("2M", 64, 64, heads, 128)]
        specs.append(trial("2M_h1", n, arch, source="supplemental", auc=0.715 + 0.001 * heads))

    # 20M_h1: the legacy run cut short by the old timeout (4 trials, no forced extremes).
    for n in range(4):
        specs.append(trial("20M_h1", n, v1_20m[n * 5], source="legacy", auc=0.69 + 0.002 * n, grid_version=1,
                           n_heads_source="logged"))  # fmt: skip

    # 20M_h1_v2: the fresh re-run, 50 complete trials (extremes first, a failed trial 20 retried as
    # 50), three collapsed trials, baselines with the validation class counts.
    specs.append(study_run("20M_h1_v2", 2, n_complete=50, n_failed=1))
    extremes = forced_extremes(v2_20m)
    for n in range(51):
        if n == 20:
            specs.append(trial("20M_h1_v2", n, v2_20m[3], state="failed", failure_reason="CUDA out of memory"))
            continue
        if n < 6:
            extreme, arch = extremes[n]
            specs.append(trial("20M_h1_v2", n, arch, auc=rerun_auc(n), extreme=extreme))
            continue
        collapse = {"pred_range": 0.01} if n in (7, 8) else {"recall": 0.0} if n == 9 else {}
        specs.append(trial("20M_h1_v2", n, v2_20m[(n * 7) % len(v2_20m)], auc=rerun_auc(n), hp=rerun_hp(n), **collapse))
    best = max(s["metrics"]["val_auc"] for s in _complete(specs, "20M_h1_v2"))
    specs[[i for i, s in enumerate(specs) if s["tags"]["run_kind"] == "study"][0]]["metrics"].update(
        best_val_auc=best, best_test_auc=0.7012)
    specs.append(baseline("20M_h1_v2", "logreg", 0.78, 0.77, val_n_pos=600, val_n_neg=800))
    specs.append(baseline("20M_h1_v2", "hgb", 0.76, 0.75, val_n_pos=600, val_n_neg=800))
    specs.append(baseline("20M_h1_v2", "base_rate", 0.5, 0.5, val_n_pos=600, val_n_neg=800))

    # h5: a new 2M study (its v2 extremes include L=64) and the legacy 20M study (v1 extremes) with
    # one supplemental L=160 trial and no L=180; no class counts logged (top-k spread intervals).
    # 200M and 2B have no runs at all.
    for n, (extreme, arch) in enumerate(forced_extremes(v2_2m)):
        specs.append(trial("2M_h5", n, arch, auc=0.60 + 0.002 * n, extreme=extreme))
    specs.append(trial("2M_h5", 6, v2_2m[find_arch_idx("2M", 64, 64, 8, 128)], auc=0.61))
    for n, (extreme, arch) in enumerate(forced_extremes(v1_20m)):
        specs.append(trial("20M_h5", n, arch, source="legacy", auc=0.66 + 0.002 * n, extreme=extreme, grid_version=1,
                           n_heads_source="logged"))  # fmt: skip
    specs.append(trial("20M_h5", 6, v2_20m[find_arch_idx("20M", 128, 160, 8, 256)], source="supplemental", auc=0.67))
    return specs


TEST_WINDOWS = "ab12" * 16  # the digest of the h1 test split's windows


def synthetic_test_scores(n: int = 1500, seed: int = 0) -> dict[str, np.ndarray]:
    """h1's test labels and the scores of 2M's and 20M's selected trials and of logreg: sharing a
    latent term as models on the same windows do; 20M clearly better than 2M."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    shared = rng.normal(size=n)
    return {"labels": labels, **{name: signal * labels + shared + 0.6 * rng.normal(size=n)
                                 for name, signal in (("2M", 0.4), ("20M", 0.9), ("logreg", 0.7))}}  # fmt: skip


def log_h1_test_scores(stores: StoreConfig) -> None:
    """The test scores the study finish and the baselines log, for h1's selected runs: 2M_h1 #10
    (the supplemental trial with val AUC 0.723), the best 20M trial at h1 and the logreg baseline."""
    runs = normalise_runs(query_runs(stores))
    trials = runs[runs["complete"]]
    picks = {
        "2M": trials[(trials["study"] == "2M_h1") & (trials["trial_number"] == 10)].iloc[0],
        "20M": trials[trials["study"].isin(["20M_h1", "20M_h1_v2"])].sort_values("val_auc", ascending=False).iloc[0],
        "logreg": runs[runs["baseline_model"] == "logreg"].iloc[0],
    }
    scores, client = synthetic_test_scores(), mlflow_client(stores)
    for name, run in picks.items():
        log_predictions(client, run["run_id"], "test", scores[name], scores["labels"], TEST_WINDOWS)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> tuple[StoreConfig, list[dict]]:
    stores = StoreConfig(root=tmp_path_factory.mktemp("report") / "mlruns")
    specs = campaign_specs()
    with no_fsync():
        fill_store(stores, specs)
        log_h1_test_scores(stores)
    return stores, specs


@pytest.fixture(scope="module")
def analysis(campaign):
    stores, _ = campaign
    result = analyse_campaign(query_runs(stores))
    return with_predictions(result, load_predictions(stores, result))


@pytest.fixture(scope="module")
def written(analysis, campaign, tmp_path_factory):
    """The report's files, written once for the module (figures take seconds each)."""
    return write_report(analysis, tmp_path_factory.mktemp("out") / "reports", campaign[0].mlflow_uri)


def _complete(specs: list[dict], study: str) -> list[dict]:
    return [s for s in specs if s["study"] == study and s["tags"]["run_kind"] == "trial" and s["tags"]["state"] == "complete"]


def _study(analysis, name: str):
    return next(s for s in analysis.studies if s.name == name)


def test_query_returns_every_run_once_with_its_values(campaign):
    stores, specs = campaign
    runs = normalise_runs(query_runs(stores))
    assert len(runs) == len(specs)
    assert Counter(runs["run_kind"]) == Counter(s["tags"]["run_kind"] for s in specs)
    one = runs[(runs["study"] == "20M_h1_v2") & (runs["trial_number"] == 13)].iloc[0]
    assert one["val_auc"] == rerun_auc(13)
    assert (one["learning_rate"], one["dropout"], one["weight_decay"]) == (LRS[1], DROPOUTS[3], WDS[0])
    assert (one["budget"], one["horizon"], one["study_version"]) == ("20M", 1, 2)


def test_study_numbers_are_those_logged(analysis, campaign):
    _, specs = campaign
    study = _study(analysis, "20M_h1_v2")
    done = pd.DataFrame([{**s["params"], "val_auc": s["metrics"]["val_auc"]} for s in _complete(specs, "20M_h1_v2")])
    auc = done["val_auc"].to_numpy()

    assert study.summary.trials == 51 and study.summary.complete == 50 and study.summary.failed == 1
    assert study.summary.failure_kinds == {"CUDA out of memory": 1}
    assert study.summary.best_auc == auc.max()
    assert study.summary.mean_auc == pytest.approx(auc.mean(), abs=1e-12)
    assert study.summary.std_auc == pytest.approx(auc.std(ddof=1), abs=1e-12)
    assert study.best["val_auc"] == auc.max() and study.best["trial_number"] == done["val_auc"].idxmax() + (done["val_auc"].idxmax() >= 20)

    # importance: eta squared by hand
    for row in study.importance.itertuples():
        groups = done.groupby(row.param)["val_auc"]
        between = sum(len(g) * (g.mean() - auc.mean()) ** 2 for _, g in groups)
        assert row.eta_squared == pytest.approx(between / ((auc - auc.mean()) ** 2).sum(), abs=1e-12), row.param
    assert study.importance.iloc[0]["param"] == "dropout"

    # trends: Spearman as the Pearson correlation of ranks, and the per-value tables
    trends = {t.param: t for t in study.trends}
    for param in ("dropout", "learning_rate"):
        ranks = done[[param, "val_auc"]].rank()
        assert trends[param].rho == pytest.approx(ranks[param].corr(ranks["val_auc"]), abs=1e-12)
    assert trends["dropout"].label == "increasing" and trends["learning_rate"].label == "decreasing"
    table = trends["dropout"].table.set_index("value")
    for value, group in done.groupby("dropout")["val_auc"]:
        assert table.loc[value, "count"] == len(group)
        assert table.loc[value, "mean"] == pytest.approx(group.mean(), abs=1e-12)
        assert table.loc[value, "std"] == pytest.approx(group.std(ddof=1), abs=1e-12)

    # coverage: counts by hand, zeros elsewhere
    for cov in study.coverage:
        expected = Counter(zip(done[cov.row], done[cov.col]))
        assert int(cov.counts.to_numpy().sum()) == 50
        for (r, c), n in expected.items():
            assert cov.counts.loc[r, c] == n

    # collapse: trials 7, 8 (narrow range); trial 9 (recall 0) is one class, not collapsed
    assert (study.collapse.collapsed, study.collapse.narrow, study.collapse.one_class) == (2, 2, 1)
    assert sorted(study.collapse.trials["trial_number"]) == [7, 8]
    # extremes: the grid rule's picks, in trials 0-5
    assert list(study.extremes["trial"]) == [0, 1, 2, 3, 4, 5] and study.extremes["as_planned"].all()
    assert list(study.baselines["baseline_model"]) == ["logreg", "hgb", "base_rate"]


def test_legacy_study_with_recovered_heads_failed_trial_and_supplementals(analysis, campaign):
    study = _study(analysis, "2M_h1")
    assert study.summary.by_source == {"legacy": 10, "supplemental": 3}
    assert study.summary.n_heads_source == {"logged": 4, "recovered": 8, "unrecoverable": 1}
    assert (study.summary.complete, study.summary.failed) == (12, 1)
    assert study.best["source"] == "supplemental" and study.best["n_heads"] == 8 and study.best["val_auc"] == 0.723
    # extremes of a grid-v1 study are checked against the v1 rule
    assert study.extremes["as_planned"].tolist() == [True] * 6
    expected = Counter((s["params"]["d_model"], s["params"]["n_heads"]) for s in _complete(campaign[1], "2M_h1"))
    heads = next(c for c in study.coverage if c.col == "n_heads")
    assert {k: v for k, v in heads.counts.stack().items() if v} == expected
    # gaps: the v2 grid value L=64 is covered by the supplementals; most regions are not
    assert 64.0 not in study.gaps.untried_values["n_layers"]
    assert study.gaps.archs_tried == 12 and study.gaps.archs_total == 77


def test_checklist_with_evidence(analysis, campaign):
    checks = {c.item: c for c in analysis.checklist}
    statuses = [c.status for c in analysis.checklist]
    assert statuses == ["fail", "pass", "fail", "fail", "fail", "n/a"]
    heads = checks["All trials have n_heads (logged or recovered)"]
    assert heads.evidence == "81 of 82 trial runs have n_heads (logged 73, recovered 8, unrecoverable 1)"
    assert "missing: 2M_h1 #9 (legacy, failed)" in heads.details
    layers = checks["2M studies tested L=64"]
    assert layers.details == ("2M_h1: L=64: 3 complete in 2M_h1", "2M_h5: L=64: 3 complete in 2M_h5")
    reruns = checks["20M_h1/h3 re-runs have 50 complete trials each"]
    assert reruns.details == ("20M_h1: 4 complete (legacy 4)", "20M_h1_v2: 50 complete (hpo 50)", "20M_h3: no study in MLflow")
    deep = checks["20M studies tested L=160 and L=180"]
    assert deep.status == "fail"
    deep_h1 = Counter(s["params"]["n_layers"] for s in _complete(campaign[1], "20M_h1_v2"))
    assert deep.details == (f"20M_h1: L=160: {deep_h1[160]} complete in 20M_h1_v2; L=180: {deep_h1[180]} complete in 20M_h1_v2",
                            "20M_h5: L=160: 1 complete in 20M_h5; L=180: 0 complete")
    extremes = checks["Every study ran its extremes in its first 6 trials"]
    assert extremes.evidence == "4 of 5 studies; failing: 20M_h1"


def test_budgets_baselines_and_scaling(analysis, campaign):
    _, specs = campaign
    assert analysis.budgets == ["2M", "20M", "200M", "2B"]
    assert analysis.budgets_without_runs == ["200M", "2B"]
    h1 = next(h for h in analysis.horizons if h.horizon == 1)
    bests = {b.budget: b for b in h1.bests}
    assert bests["200M"].best is None and bests["200M"].trials == 0

    # h1 has the validation class counts (logged on the baselines): Hanley-McNeil intervals
    def hm(a, n1=600, n2=800):
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        return math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))

    best_20m = max(s["metrics"]["val_auc"] for s in _complete(specs, "20M_h1_v2") + _complete(specs, "20M_h1"))
    assert bests["2M"].interval.auc == 0.723 and bests["20M"].interval.auc == best_20m
    assert bests["2M"].interval.method == "Hanley-McNeil"
    assert bests["2M"].interval.se == pytest.approx(hm(0.723), abs=1e-15)
    diff = best_20m - 0.723
    se = math.hypot(hm(best_20m), hm(0.723))
    assert h1.scaling.pairs.iloc[0]["diff"] == pytest.approx(diff, abs=1e-12)
    assert h1.scaling.verdict == ("violated" if diff + 1.96 * se < 0 else "not distinguishable")
    # baselines: never trials; the best is logreg 0.78, and 2M's best is below it beyond the interval
    assert h1.baselines["baseline_model"].tolist() == ["logreg", "hgb", "base_rate"]
    assert bests["2M"].vs_baseline.verdict == "lower"
    assert bests["2M"].vs_baseline.diff == pytest.approx(0.723 - 0.78, abs=1e-12)
    assert bests["2M"].vs_baseline.se == pytest.approx(math.hypot(hm(0.723), hm(0.78)), abs=1e-15)
    assert 0.723 - 0.78 + 1.96 * math.hypot(hm(0.723), hm(0.78)) < 0

    # h5: no class counts, so the spread of the top trials, and the 20M trials all sit above 2M's
    h5 = next(h for h in analysis.horizons if h.horizon == 5)
    small = next(b for b in h5.bests if b.budget == "2M")
    top = sorted((s["metrics"]["val_auc"] for s in _complete(specs, "2M_h5")), reverse=True)[:5]
    assert small.interval.method == "top-5 spread" and small.interval.se == pytest.approx(np.std(top, ddof=1), abs=1e-12)
    assert h5.scaling.verdict == "undetermined"  # the top-k spread misses the evaluation noise: no call
    assert next(b for b in h5.bests if b.budget == "20M").vs_baseline is None


def test_test_split_verdicts_are_paired_delong_on_the_logged_scores(analysis):
    h1 = next(h for h in analysis.horizons if h.horizon == 1).test
    scores = synthetic_test_scores()
    assert [s.budget for s in h1.selected] == ["2M", "20M"] and h1.baseline.budget == "logreg"
    assert h1.selected[0].run["trial_number"] == 10 and h1.selected[0].run["source"] == "supplemental"
    (pair,) = h1.pairs
    expected = paired_delong(scores["20M"], scores["2M"], scores["labels"])
    assert (pair.a, pair.b) == ("20M", "2M")
    assert pair.test.diff == pytest.approx(expected.diff, abs=1e-12) and pair.test.se == pytest.approx(expected.se, abs=1e-12)
    assert pair.p_holm == pytest.approx(expected.p_value, abs=1e-15)  # one pair: Holm changes nothing
    assert pair.verdict == "higher" and h1.verdict == "holds"
    # each budget against logreg, Holm over the two budgets
    raw = [paired_delong(scores[b], scores["logreg"], scores["labels"]).p_value for b in ("2M", "20M")]
    assert [p.p_holm for p in h1.vs_baseline] == pytest.approx(list(holm(raw)), abs=1e-15)
    assert [p.verdict for p in h1.vs_baseline] == ["lower", "higher"]
    # the fitted curve goes through both budgets (two points: the line is exact)
    assert h1.fit is not None and h1.fit.slope > 0 and h1.fit.slope_low > 0
    assert h1.fit.aucs == pytest.approx([h1.selected[0].test_auc, h1.selected[1].test_auc], abs=1e-12)


def test_without_seeds_the_verdict_is_single_run_delong_and_says_seed_noise_not_measured(analysis, written):
    """No confirmation runs (confirm_seeds=0, a store from before issue 25): the same verdict as a
    single-seed paired DeLong, and every pair says its seed noise was not measured."""
    h1 = next(h for h in analysis.horizons if h.horizon == 1).test
    scores = synthetic_test_scores()
    for p in h1.pairs + h1.vs_baseline:
        expected = paired_delong(scores[p.a], scores[p.b], scores["labels"])
        assert p.test.diff == pytest.approx(expected.diff, abs=1e-12) and p.test.df == math.inf
        assert p.test.low == pytest.approx(expected.low, abs=1e-12) and p.test.high == pytest.approx(expected.high, abs=1e-12)
        assert p.seed_note == "seed noise not measured"
    assert [len(s.seeds) for s in h1.selected] == [1, 1] and math.isnan(h1.selected[0].seed_sd)
    assert h1.reason == "each larger budget beats the next smaller one on test (paired DeLong, Holm p < 0.05)"
    text = written.markdown.read_text()
    not_measured = [line for line in text.splitlines() if line.endswith("| seed noise not measured |")]
    assert [line.split(" | ")[:2] for line in not_measured] == [["| 2M", "20M"], ["| 2M", "logreg"], ["| 20M", "logreg"]]
    assert "Seed noise not measured at h1: every selected configuration has one seed" in text


def test_legacy_and_unfinished_studies_are_undetermined_with_the_command(analysis):
    h5 = next(h for h in analysis.horizons if h.horizon == 5).test
    assert h5.verdict == "undetermined" and "no test scores for 2M, 20M" in h5.reason
    assert h5.fit is None and [p.verdict for p in h5.pairs] == ["undetermined"]
    assert any(line.startswith("20M: the selected configuration (20M_h5 #5) was recovered from legacy logs")
               and "`hpo retrain 20M_h5 5`" in line and "`hpo run 20M h5 --fresh`" in line for line in h5.missing)  # fmt: skip
    assert any(line.startswith("2M: study 2M_h5 has not logged") and "`hpo run 2M h5 --version 1`" in line for line in h5.missing)


def test_markdown_shows_the_numbers(analysis, written):
    files = written
    text = files.markdown.read_text()
    assert "| 200M | no runs |" in text
    assert "Budgets without trial runs: 200M, 2B." in text
    assert "**Scaling law on test: HOLDS** at h1" in text
    assert "**Scaling law on test: UNDETERMINED** at h5: no test scores for 2M, 20M" in text
    assert "Fill: `hpo retrain 20M_h5 5`: re-trains that configuration" in text and "or `hpo run 20M h5 --fresh`" in text
    assert "| 2M | 20M | n/a | n/a | n/a | n/a | undetermined: no test scores for 2M and 20M |" in text
    assert "slope +" in text and "per tenfold parameters, 95% band" in text
    assert "| 20M | 7/7 | 0.6700 |" in text  # the recovered best AUCs stay in the (selection-biased) table
    assert "### Best per budget (validation, selection-biased)" in text
    assert "**No budget's best transformer beats the best baseline** (logreg, val AUC 0.7800)" in text
    assert "| **FAIL** | Every study ran its extremes in its first 6 trials | 4 of 5 studies; failing: 20M_h1 |" in text
    assert "| 0.7230 |" in text  # 2M's best at h1
    assert "![val AUC against parameter count](figures/auc_vs_params.png)" in text
    assert "Rule: pred_range < 0.05 (one class, recall 0 or 1 at 0.5, is counted but is not a collapse). Checked 50 complete trials: 2 collapsed, 1 one class" in text
    html = files.html.read_text()
    assert html.count("<table>") == text.count("\n| --- |") + text.count("\n|---")  # every table rendered
    assert 'id="verification-checklist"' in html and 'href="#verification-checklist"' in html
    for figure in files.figures.values():
        assert figure.stat().st_size > 10_000 and f'src="figures/{figure.name}"' in html
    assert set(files.figures) >= {"auc_vs_params", "20M_h1_v2/trends", "20M_h1_v2/coverage", "2M_h1/coverage"}
    rows = best_per_budget_rows(analysis)
    assert {(r["horizon"], r["budget"]) for r in rows} == {(f"h{h}", b) for h in (1, 5) for b in ("2M", "20M", "200M", "2B")}
    assert next(r for r in rows if r["budget"] == "2M" and r["horizon"] == "h1")["best_val_auc"] == 0.723


def test_report_logged_as_mlflow_artifact(campaign, written):
    stores, _ = campaign
    run_id = log_report(stores, written.out)
    client = mlflow_client(stores)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == REPORT_EXPERIMENT
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"report.md", "report.html", "runs.csv", "figures/auc_vs_params.png"} <= names
    # the reports experiment is not read back as a study
    assert len(query_runs(stores)) == len(campaign[1])


def test_render_without_figures_has_no_images(analysis):
    text = render_markdown(analysis)
    assert "![" not in text and "## Horizon h1" in text


BULK_BUDGETS = ("2M", "20M", "200M", "2B")
BULK_SIGNAL = {"2M": 0.3, "20M": 0.6, "200M": 0.9, "2B": 1.2, "logreg": 0.5, "hgb": 0.4, "base_rate": 0.0}
BULK_BASELINES = {"logreg": 0.75, "hgb": 0.74, "base_rate": 0.5}  # val AUC: logreg is the best baseline


@pytest.mark.slow
def test_report_with_predictions_stays_fast_with_thousands_of_runs(tmp_path, monkeypatch):
    """Issue 12: 2,000 trial runs over 8 studies (4 budgets x 2 horizons) plus baselines, every run
    with its val predictions artifact, the top trials of each study and every baseline with test
    predictions: the report flow's steps (query, analyse, test verdicts, files and figures, logging
    them to MLflow; not the Prefect artifacts, which need a server) in under 30 s on 2 cores,
    downloading only the selected runs' and best baselines' test scores."""
    from mlflow.tracking import MlflowClient

    from schemas.config import SearchSpace
    from tasks.report.tasks import add_test_verdicts, analyse_runs, log_report_task, query_runs_task, write_report_task
    from tasks.tracking.predictions import download_predictions

    stores = StoreConfig(root=tmp_path / "mlruns")
    with no_fsync():
        selected = _bulk_fill(stores, n_runs=2000)
    client = mlflow_client(stores)
    # the bulk insert lays artifacts out as MLflow does: read one back through the client
    one = selected[(1, "2M")]
    assert [a.path for a in client.list_artifacts(one, "predictions")] == ["predictions/test.npz", "predictions/val.npz"]
    assert download_predictions(client, one, "val").split == "val"

    downloads: list[tuple[str, str]] = []
    real_download = MlflowClient.download_artifacts

    def counting(self, run_id, path, dst_path=None):
        downloads.append((run_id, path))
        return real_download(self, run_id, path, dst_path)

    monkeypatch.setattr(MlflowClient, "download_artifacts", counting)
    seconds: dict[str, float] = {}

    @contextmanager
    def timed(name: str):
        started = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - started

    with timed("query"):
        runs = query_runs_task.fn(stores)
    with timed("analyse"):
        result = analyse_runs.fn(runs, SearchSpace())
    with timed("test verdicts"):
        result = add_test_verdicts.fn(stores, result)
    with timed("write report"):
        files = write_report_task.fn(result, tmp_path / "reports", stores.mlflow_uri)
    with timed("log report"):
        files.mlflow_run_id = log_report_task.fn(stores, files)
    total = sum(seconds.values())
    print(f"\n2000 runs with predictions: " + ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())
          + f" (figures {files.seconds['figures']:.2f}s); total {total:.2f}s, {len(downloads)} downloads")

    assert len(runs) == 2000 + 2 * len(BULK_BASELINES) and len(result.studies) == 8
    # only the verdicts' test scores were read: each budget's selected trial and the best baseline per horizon
    assert sorted(downloads) == sorted((run_id, "predictions/test.npz") for run_id in selected.values())
    text = files.markdown.read_text()
    for h in (1, 5):
        test = next(x for x in result.horizons if x.horizon == h).test
        assert [s.budget for s in test.selected] == list(BULK_BUDGETS) and test.baseline.budget == "logreg"
        assert [s.run["run_id"] for s in test.selected] == [selected[(h, b)] for b in BULK_BUDGETS]
        assert not test.missing and all(p.test is not None for p in test.pairs + test.vs_baseline)
        assert len(test.pairs) == 6 and test.fit is not None
        assert test.verdict == "holds", test.reason
        assert f"**Scaling law on test: HOLDS** at h{h}" in text
    assert "UNDETERMINED" not in text and "## Study 2B_h5" in text
    assert total < 30, seconds  # the requirement (issue 12)


def _bulk_scores(labels: np.ndarray, signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return signal * labels + rng.normal(size=len(labels))


def _bulk_fill(stores: StoreConfig, n_runs: int, n_val: int = 2000, n_test: int = 2000, tested: int = 3) -> dict[tuple[int, str], str]:
    """Insert runs straight into MLflow's SQL tables in one transaction: the public API costs
    ~0.1 s a run, too slow to build thousands for a test. Read back through the search API.

    Every trial and baseline gets `predictions/val.npz` (with its tag), written by
    `tasks.tracking.predictions.encode` straight into the run's artifact folder, laid out as MLflow
    lays it out (`<experiment artifact location>/<run id>/artifacts`). The `tested` best trials of
    each study and every baseline get `predictions/test.npz` too, on the horizon's test windows.
    Returns the runs whose test scores the verdicts need: (horizon, budget) -> the best trial's
    run id, and (horizon, "baseline") -> the best baseline's."""
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import append_to_uri_path

    from schemas.tracking import predictions_artifact, predictions_tag
    from tasks.tracking.predictions import encode, windows_digest

    client = mlflow_client(stores)
    studies = [f"{b}_h{h}" for b in BULK_BUDGETS for h in (1, 5)]
    experiments = {s: client.get_experiment(get_or_create_experiment(client, s, stores.artifact_root)) for s in studies}
    store = client._tracking_client.store
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    windows = {}
    for h in (1, 5):
        for split, n in (("val", n_val), ("test", n_test)):
            labels = rng.random(n) < 0.3
            digest = windows_digest(np.arange(n) + 1000 * h, (f"2024-0{h}-01", f"2024-0{h}-28"), 60, h)
            windows[h, split] = (labels, digest)

    def artifacts(study: str, run_id: str, splits: dict[str, np.ndarray], horizon: int) -> tuple[str, list[SqlTag]]:
        uri = append_to_uri_path(experiments[study].artifact_location, run_id, "artifacts")
        folder = Path(local_file_uri_to_path(uri))
        (folder / "predictions").mkdir(parents=True, exist_ok=True)
        tags = []
        for split, scores in splits.items():
            labels, digest = windows[horizon, split]
            (folder / predictions_artifact(split)).write_bytes(encode(split, scores, labels, digest))
            tags.append(SqlTag(key=predictions_tag(split), value=digest, run_uuid=run_id))
        return uri, tags

    rows = []  # (study, run id, val auc, budget, horizon)
    with store.ManagedSessionMaker(read_only=False) as session:
        def add(study, run_id, name, params, tags, metrics, predictions, horizon):
            uri, tagged = artifacts(study, run_id, predictions, horizon)
            session.add(SqlRun(run_uuid=run_id, name=name, experiment_id=int(experiments[study].experiment_id), user_id="test",
                               status="FINISHED", start_time=now, end_time=now, source_type="LOCAL", source_name="",
                               entry_point_name="", lifecycle_stage="active", artifact_uri=uri))  # fmt: skip
            session.add_all([SqlParam(key=k, value=str(v), run_uuid=run_id) for k, v in params.items()])
            session.add_all([SqlTag(key=k, value=str(v), run_uuid=run_id) for k, v in tags.items()] + tagged)
            session.add_all([SqlLatestMetric(key=k, value=v, timestamp=now, step=0, is_nan=False, run_uuid=run_id)
                             for k, v in metrics.items()])  # fmt: skip

        for i in range(n_runs):
            study = studies[i % len(studies)]
            budget, horizon = study.split("_h")
            archs = get_architectures_for_budget(budget)
            arch = archs[i % len(archs)]
            run_id = uuid.uuid4().hex
            params = {**arch.as_dict(), "budget": budget, "horizon": horizon, "grid_version": 2,
                      "learning_rate": LRS[i % 4], "dropout": DROPOUTS[(i // 4) % 4], "weight_decay": WDS[(i // 16) % 4],
                      "batch_size": 256, "seed": 0}  # fmt: skip
            tags = {"run_kind": "trial", "source": "hpo", "study": study, "budget": budget, "horizon": horizon,
                    "trial_number": i // len(studies), "state": "complete",
                    "extreme_type": "none"}  # fmt: skip
            metrics = {"val_auc": 0.6 + 0.1 * rng.random(), "pred_range": 0.3, "recall": 0.5, "train_seconds": 10.0}
            val = _bulk_scores(windows[int(horizon), "val"][0], BULK_SIGNAL[budget], seed=i)
            add(study, run_id, f"{study} #{i}", params, tags, metrics, {"val": val}, int(horizon))
            rows.append((study, run_id, metrics["val_auc"], budget, int(horizon)))

        selected: dict[tuple[int, str], str] = {}
        for study in studies:
            top = sorted((r for r in rows if r[0] == study), key=lambda r: -r[2])[:tested]
            for rank, (_, run_id, _, budget, horizon) in enumerate(top):
                test = _bulk_scores(windows[horizon, "test"][0], BULK_SIGNAL[budget], seed=10_000 + 10 * studies.index(study) + rank)
                _, tagged = artifacts(study, run_id, {"test": test}, horizon)
                session.add_all(tagged)
            selected[top[0][4], top[0][3]] = top[0][1]

        for h in (1, 5):  # the baselines log into the 2M study's experiment, val and test scores
            for k, (model, val_auc) in enumerate(BULK_BASELINES.items()):
                run_id = uuid.uuid4().hex
                scores = {split: _bulk_scores(windows[h, split][0], BULK_SIGNAL[model], seed=20_000 + 10 * h + k)
                          for split in ("val", "test")}  # fmt: skip
                tags = {"run_kind": "baseline", "source": "baseline", "baseline_model": model, "study": f"2M_h{h}",
                        "horizon": h}  # fmt: skip
                add(f"2M_h{h}", run_id, f"2M_h{h} baseline {model}", {"model": model, "horizon": h}, tags,
                    {"val_auc": val_auc, "test_auc": val_auc, "pred_range": 0.4, "recall": 0.5}, scores, h)
                if k == 0:
                    selected[h, "baseline"] = run_id
    return selected
