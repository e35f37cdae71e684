"""Seed-aware verdicts (issue 25) from a real (temporary) MLflow store: two budgets whose selected
trials' single-seed test AUCs order one way and whose seed means order the other. The verdict
follows the seed means; the numbers are recomputed here from the logged scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from models.arch_grid import get_architectures_for_budget
from schemas.config import StoreConfig
from tasks.report.analysis import analyse_campaign, with_predictions
from tasks.report.mlflow_io import load_predictions, query_runs
from tasks.report.render import render_markdown
from tasks.report.stats import delong, paired_delong
from tasks.tracking.predictions import log_predictions

from helpers import baseline, fill_store, no_fsync, seed_run, study_run, trial

WINDOWS = "cd34" * 16
WINDOWS_H5 = "ef56" * 16
N = 3000
# test-score signal per seed (seed 0 is the trial): 2M's trial is its luckiest seed, 20M's its unluckiest
SIGNALS = {"2M": (1.0, 0.75, 0.78, 0.76), "20M": (0.92, 1.05, 1.08, 1.06)}


def labels_and_shared() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.random(N) < 0.3).astype(int), rng.normal(size=N)


def seed_scores(budget: str, index: int) -> np.ndarray:
    labels, shared = labels_and_shared()
    offset = {"2M": 10, "20M": 20, "logreg": 30}[budget]
    signal = 0.85 if budget == "logreg" else SIGNALS[budget][index]
    return signal * labels + shared + 0.8 * np.random.default_rng(offset + index).normal(size=N)


def seeded_specs() -> list[dict]:
    """2M_h1 and 20M_h1, each finished with seed confirmation: 2M picked #0, 20M picked #1 on the
    seed mean although #0 had the better single val AUC. Three confirmation seeds each, a failed
    seed and a seed of a configuration not picked (neither read), a logreg baseline."""
    archs = {b: get_architectures_for_budget(b) for b in ("2M", "20M")}
    specs = [
        study_run("2M_h1", 1, tags={"selected_by": "seed_mean", "best_trial": 0}, seed_mean_val_auc=0.735, seeds=4),
        study_run("20M_h1", 1, tags={"selected_by": "seed_mean", "best_trial": 1}, seed_mean_val_auc=0.745, seeds=4),
        trial("2M_h1", 0, archs["2M"][0], auc=0.76), trial("2M_h1", 1, archs["2M"][1], auc=0.74),
        trial("20M_h1", 0, archs["20M"][0], auc=0.75), trial("20M_h1", 1, archs["20M"][1], auc=0.74),
        baseline("20M_h1", "logreg", 0.72, 0.71),
    ]
    for budget, picked in (("2M", 0), ("20M", 1)):
        specs += [seed_run(f"{budget}_h1", picked, i, 0.73 + 0.001 * i) for i in (1, 2, 3)]
    specs.append(seed_run("20M_h1", 1, 4, None, status="FAILED"))
    specs.append(seed_run("20M_h1", 0, 1, 0.70))  # the unpicked configuration's seed
    # h5: a legacy trial without scores, given seeds by `hpo retrain 2M_h5 3 --seeds 3`
    specs.append(trial("2M_h5", 3, archs["2M"][2], source="legacy", auc=0.66, n_heads_source="logged"))
    specs += [seed_run("2M_h5", 3, i, 0.65, kind="retrain", test_auc=0.6) for i in (0, 1, 2)]
    specs.append(baseline("2M_h5", "logreg", 0.64, 0.63))
    return specs


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The analysis of the seeded store, and the run ids of each budget's seeds (trial first)."""
    from tasks.tracking.runs import mlflow_client

    stores = StoreConfig(root=tmp_path_factory.mktemp("seeds") / "mlruns")
    specs = seeded_specs()
    with no_fsync():
        ids = fill_store(stores, specs)
    labels, _ = labels_and_shared()
    client = mlflow_client(stores)
    seeds: dict[str, list[str]] = {"2M": [], "20M": []}
    for spec, run_id in zip(specs, ids):
        tags, budget = spec["tags"], spec["study"].split("_")[0]
        picked = {"2M": 0, "20M": 1}[budget]
        index = None
        if spec["study"].endswith("_h5"):
            pass
        elif tags["run_kind"] == "trial" and tags["trial_number"] == picked:
            index = 0
        elif tags["run_kind"] == "confirm" and spec["of_trial"] == picked and spec["status"] == "FINISHED":
            index = tags["seed_index"]
        if index is not None:
            log_predictions(client, run_id, "test", seed_scores(budget, index), labels, WINDOWS)
            seeds[budget].append(run_id)
        if tags["run_kind"] == "retrain":
            log_predictions(client, run_id, "test", seed_scores("2M", tags["seed_index"]), labels, WINDOWS_H5)
        if tags["run_kind"] == "baseline":
            log_predictions(client, run_id, "test", seed_scores("logreg", 0), labels, WINDOWS if spec["study"].endswith("h1") else WINDOWS_H5)
        if tags["run_kind"] == "confirm" and spec["of_trial"] != picked:  # scored, but not a seed of the pick
            log_predictions(client, run_id, "test", seed_scores(budget, 3), labels, WINDOWS)
    result = analyse_campaign(query_runs(stores))
    return with_predictions(result, load_predictions(stores, result)), seeds


def _aucs(budget: str) -> np.ndarray:
    labels, _ = labels_and_shared()
    return np.array([roc_auc_score(labels, seed_scores(budget, i)) for i in range(4)])


def test_single_seeds_order_one_way_seed_means_the_other():
    small, large = _aucs("2M"), _aucs("20M")
    assert small[0] > large[0]  # the studies' picks: 2M ahead
    assert small.mean() < large.mean()  # over seeds: 20M ahead


def test_selection_follows_the_study_and_every_seed_is_read(seeded):
    analysis, seeds = seeded
    h1 = analysis.horizons[0].test
    assert [s.budget for s in h1.selected] == ["2M", "20M"]
    assert [int(s.run["trial_number"]) for s in h1.selected] == [0, 1]  # 20M: the seed-mean pick, not #0
    for s in h1.selected:
        assert s.seed_names == ("trial", "confirm seed 1", "confirm seed 2", "confirm seed 3")
        assert s.seed_aucs == pytest.approx(_aucs(s.budget), abs=1e-6)
        assert s.test_auc == pytest.approx(_aucs(s.budget).mean(), abs=1e-6)
        assert s.seed_sd == pytest.approx(np.std(_aucs(s.budget), ddof=1), abs=1e-6)
        assert s.picked_test_auc == pytest.approx(_aucs(s.budget)[0], abs=1e-6)
    assert h1.baseline.deterministic and h1.baseline.seed_sd == 0


def test_verdict_is_on_the_seed_means(seeded):
    analysis, _ = seeded
    h1 = analysis.horizons[0].test
    (pair,) = h1.pairs
    labels, _ = labels_and_shared()
    small, large = _aucs("2M"), _aucs("20M")
    # by hand: DeLong's covariance of the eight seeds on the shared windows, the contrast of the two
    # seed means, plus each side's seed variance over its 4 seeds; t with Welch-Satterthwaite df
    scores = np.vstack([seed_scores("20M", i) for i in range(4)] + [seed_scores("2M", i) for i in range(4)])
    _, cov = delong(scores, labels)
    contrast = np.r_[np.full(4, 0.25), np.full(4, -0.25)]
    window, va, vb = contrast @ cov @ contrast, large.var(ddof=1) / 4, small.var(ddof=1) / 4
    df = (window + va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    se = math.sqrt(window + va + vb)
    diff = large.mean() - small.mean()
    assert (pair.a, pair.b) == ("20M", "2M")
    assert pair.test.diff == pytest.approx(diff, abs=1e-6) and pair.test.se == pytest.approx(se, abs=1e-6)
    assert pair.test.df == pytest.approx(df, rel=1e-6)
    assert pair.p_holm == pytest.approx(2 * scipy_stats.t.sf(diff / se, df), rel=1e-5)
    assert pair.test.low == pytest.approx(diff - scipy_stats.t.ppf(0.975, df) * se, abs=1e-6)
    assert pair.verdict == "higher" and h1.verdict == "holds", h1.reason
    assert "seed-mean test AUC" in h1.reason and pair.seed_note == "4 seeds vs 4 seeds"
    # the single-seed test of the two picks reads the other way
    single = paired_delong(seed_scores("20M", 0), seed_scores("2M", 0), labels)
    assert single.diff < 0 < pair.test.diff
    # against the deterministic baseline: the budget's seed variance only
    vs = next(p for p in h1.vs_baseline if p.a == "2M")
    assert vs.test.sd_b == 0 and vs.test.seed_se == pytest.approx(math.sqrt(vb), abs=1e-9)
    assert vs.seed_note.startswith("4 seeds vs deterministic") or "dominates" in vs.seed_note
    # the scaling curve through the seed means
    assert h1.fit.aucs == pytest.approx([small.mean(), large.mean()], abs=1e-6)


def test_report_shows_the_seeds(seeded):
    analysis, _ = seeded
    text = render_markdown(analysis)
    small = _aucs("2M")
    assert "**Scaling law on test: HOLDS** at h1" in text
    rank = int((small > small[0]).sum()) + 1
    assert (f"| {small.mean():.4f} | 3000 windows (cd34cd34) | 4 | {np.std(small, ddof=1):.4f} | "
            f"[{small.min():.4f}, {small.max():.4f}] | {small[0]:.4f} (seed 0, rank {rank} of 4 by test AUC) |") in text
    assert "| 4 seeds vs 4 seeds |" in text and "seed noise not measured" not in text
    assert "Welch-Satterthwaite" in text  # Methods says how the interval is made


def test_a_seed_sd_above_the_gap_is_called_dominant():
    from tasks.report.rows import seed_lines
    from tasks.report.stats import seed_paired_delong
    from tasks.report.verdicts import Paired, Selected, seed_note
    from tasks.tracking.predictions import decode, encode

    labels, _ = labels_and_shared()
    def selected(budget: str, signals: tuple[float, ...]) -> Selected:
        preds = tuple(decode(encode("test", signal * labels + np.random.default_rng(k).normal(size=N), labels, WINDOWS))
                      for k, signal in enumerate(signals))  # fmt: skip
        return Selected(budget, None, 1.0, preds[0], seeds=preds, seed_names=("trial",) * len(preds))

    a, b = selected("20M", (0.9, 1.3, 0.6)), selected("2M", (0.9, 0.95, 0.85))
    test = seed_paired_delong(np.vstack([p.scores for p in a.seeds]), np.vstack([p.scores for p in b.seeds]), labels)
    assert test.seed_sd > abs(test.diff)
    note = seed_note(a, b, test)
    assert note.startswith("seed noise dominates (seed sd")
    horizon = type("H", (), {"horizon": 1, "test": type("T", (), {"pairs": [Paired("20M", "2M", test, 1.0, "not distinguishable", seed_note=note)],
                                                                  "vs_baseline": []})()})()  # fmt: skip
    assert seed_lines(horizon)[0].startswith("Seed noise dominates 2M vs 20M: a seed sd of")



def test_a_legacy_configuration_gets_its_seeds_from_its_retrainings(seeded):
    analysis, _ = seeded
    h5 = next(h for h in analysis.horizons if h.horizon == 5).test
    (small,) = h5.selected
    labels, _ = labels_and_shared()
    expected = [roc_auc_score(labels, seed_scores("2M", i)) for i in range(3)]
    assert small.seed_names == ("retrain seed 0", "retrain seed 1", "retrain seed 2")
    assert small.test_auc == pytest.approx(np.mean(expected), abs=1e-6) and math.isnan(small.picked_test_auc)
    assert small.run["scores_note"].startswith("re-trained")
    (vs,) = h5.vs_baseline
    assert vs.test.seeds_a == 3 and vs.test.sd_b == 0 and vs.test.seed_se > 0
    assert "n/a (no test scores of its own: seeds are re-trainings)" in render_markdown(analysis)


def test_figure_draws_the_seed_means(seeded, tmp_path):
    from tasks.report.figures import plot_auc_vs_params

    path = plot_auc_vs_params(seeded[0], tmp_path / "auc.png")
    assert path is not None and path.stat().st_size > 10_000
