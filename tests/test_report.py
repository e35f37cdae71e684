"""The report from a real (temporary) MLflow store filled with runs of known values: every number
the report shows is recomputed here from the values logged, independently of tasks.analysis."""

from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from models.arch_grid import Architecture, find_arch_idx, forced_extremes, get_architectures_for_budget
from schemas.config import StoreConfig
from tasks.analysis import analyse_campaign, normalise_runs
from tasks.report import (
    REPORT_EXPERIMENT,
    best_per_budget_rows,
    log_report,
    query_runs,
    render_markdown,
    write_report,
)
from tasks.tracking import get_or_create_experiment, log_batch, mlflow_client

LRS, DROPOUTS, WDS = (1e-5, 5e-5, 1e-4, 5e-4), (0.1, 0.3, 0.5, 0.7), (0.0, 1e-5, 1e-4, 1e-3)
CENTRAL = {"learning_rate": 5e-5, "dropout": 0.3, "weight_decay": 1e-5}


def trial(study: str, number: int, arch: Architecture, *, source: str = "hpo", state: str = "complete",
          auc: float | None = None, extreme: str = "none", grid_version: int = 2, hp: dict | None = None,
          n_heads_source: str | None = None, pred_range: float = 0.3, recall: float = 0.5,
          failure_reason: str = "", extra_metrics: dict | None = None) -> dict:  # fmt: skip
    """One trial run as the trainer, the legacy importer or the supplemental flow logs it."""
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    params = {"budget": budget, "horizon": horizon, "grid_version": grid_version, "batch_size": 256, "seed": 0,
              **arch.as_dict(), **(hp or CENTRAL)}  # fmt: skip
    if n_heads_source == "unrecoverable":
        del params["n_heads"]
    tags = {"run_kind": "trial", "source": source, "study": study, "budget": budget, "horizon": horizon,
            "trial_number": number, "extreme_type": extreme, "state": state}  # fmt: skip
    if n_heads_source:
        tags["n_heads_source"] = n_heads_source
    if failure_reason:
        tags["failure_reason"] = failure_reason
    metrics = {}
    if state == "complete":
        metrics = {"val_auc": auc, "pred_min": 0.5 - pred_range / 2, "pred_max": 0.5 + pred_range / 2,
                   "pred_range": pred_range, "recall": recall, "epochs": 10, "train_seconds": 36.0,
                   "samples_per_s": 1000.0, **(extra_metrics or {})}  # fmt: skip
    return {"study": study, "params": params, "metrics": metrics, "tags": tags,
            "status": "FINISHED" if state == "complete" else "FAILED"}  # fmt: skip


def baseline(study: str, model: str, val_auc: float, test_auc: float, **metrics: float) -> dict:
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    return {"study": study, "params": {"horizon": horizon},
            "metrics": {"val_auc": val_auc, "test_auc": test_auc, "pred_range": 0.4, "recall": 0.5, **metrics},
            "tags": {"run_kind": "baseline", "source": "baseline", "baseline_model": model, "study": study,
                     "budget": budget, "horizon": horizon},
            "status": "FINISHED"}  # fmt: skip


def study_run(study: str, version: int, **metrics: float) -> dict:
    budget, horizon = study.split("_")[0], int(study.split("_")[1][1:])
    return {"study": study, "params": {}, "metrics": metrics, "status": "FINISHED",
            "tags": {"run_kind": "study", "study": study, "study_version": version, "budget": budget, "horizon": horizon}}  # fmt: skip


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


def fill_store(stores: StoreConfig, specs: list[dict]) -> None:
    """Log the runs through the public MLflow API, trials as children of their study's run."""
    client = mlflow_client(stores)
    parents: dict[str, str] = {}
    for spec in sorted(specs, key=lambda s: s["tags"]["run_kind"] != "study"):
        experiment = get_or_create_experiment(client, spec["study"], stores.artifact_root)
        tags = {k: str(v) for k, v in spec["tags"].items()}
        if spec["study"] in parents:
            tags["mlflow.parentRunId"] = parents[spec["study"]]
        run = client.create_run(experiment, tags=tags)
        if spec["tags"]["run_kind"] == "study":
            parents[spec["study"]] = run.info.run_id
        log_batch(client, run.info.run_id, params=spec["params"], metrics=spec["metrics"])
        client.set_terminated(run.info.run_id, spec["status"])


@contextmanager
def no_fsync():
    """A throwaway store needs no durability: SQLite skips its fsyncs while the store is filled
    (2-3x faster on a busy disk). Only connections opened inside the block are affected."""

    def pragma(connection, _record) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", pragma)
    try:
        yield
    finally:
        event.remove(Engine, "connect", pragma)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> tuple[StoreConfig, list[dict]]:
    stores = StoreConfig(root=tmp_path_factory.mktemp("report") / "mlruns")
    specs = campaign_specs()
    with no_fsync():
        fill_store(stores, specs)
    return stores, specs


@pytest.fixture(scope="module")
def analysis(campaign):
    stores, _ = campaign
    return analyse_campaign(query_runs(stores))


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

    assert study.summary["trials"] == 51 and study.summary["complete"] == 50 and study.summary["failed"] == 1
    assert study.summary["failure_kinds"] == {"CUDA out of memory": 1}
    assert study.summary["best_auc"] == auc.max()
    assert study.summary["mean_auc"] == pytest.approx(auc.mean(), abs=1e-12)
    assert study.summary["std_auc"] == pytest.approx(auc.std(ddof=1), abs=1e-12)
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

    # collapse: trials 7, 8 (narrow range) and 9 (recall 0)
    assert (study.collapse.collapsed, study.collapse.narrow, study.collapse.one_class) == (3, 2, 1)
    assert sorted(study.collapse.trials["trial_number"]) == [7, 8, 9]
    # extremes: the grid rule's picks, in trials 0-5
    assert list(study.extremes["trial"]) == [0, 1, 2, 3, 4, 5] and study.extremes["as_planned"].all()
    assert list(study.baselines["baseline_model"]) == ["logreg", "hgb", "base_rate"]


def test_legacy_study_with_recovered_heads_failed_trial_and_supplementals(analysis, campaign):
    study = _study(analysis, "2M_h1")
    assert study.summary["by_source"] == {"legacy": 10, "supplemental": 3}
    assert study.summary["n_heads_source"] == {"logged": 4, "recovered": 8, "unrecoverable": 1}
    assert (study.summary["complete"], study.summary["failed"]) == (12, 1)
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
    assert h5.scaling.verdict == "holds"
    assert next(b for b in h5.bests if b.budget == "20M").vs_baseline is None


def test_markdown_shows_the_numbers(analysis, written):
    files = written
    text = files.markdown.read_text()
    assert "| 200M | no runs |" in text
    assert "Budgets without trial runs: 200M, 2B." in text
    assert "**Scaling law HOLDS** at h5" in text
    assert "**No budget's best transformer beats the best baseline** (logreg, val AUC 0.7800)" in text
    assert "| **FAIL** | Every study ran its extremes in its first 6 trials | 4 of 5 studies; failing: 20M_h1 |" in text
    assert "| 0.7230 |" in text  # 2M's best at h1
    assert "![val AUC against parameter count](figures/auc_vs_params.png)" in text
    assert "Rule: pred_range < 0.05 or recall 0 or 1. Checked 50 complete trials: 3 collapsed" in text
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
    run_id = log_report(stores, written)
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


@pytest.mark.slow
def test_report_stays_fast_with_thousands_of_runs(tmp_path):
    """2,000 trial runs over 8 studies: one search, analysis and rendering in seconds."""
    stores = StoreConfig(root=tmp_path / "mlruns")
    _bulk_fill(stores, n_runs=2000)
    started = time.perf_counter()
    runs = query_runs(stores)
    queried = time.perf_counter()
    result = analyse_campaign(runs)
    analysed = time.perf_counter()
    text = render_markdown(result)
    rendered = time.perf_counter()
    print(f"\n2000 runs: query {queried - started:.2f}s, analyse {analysed - queried:.2f}s, markdown {rendered - analysed:.2f}s")
    assert len(runs) == 2000 and len(result.studies) == 8 and "## Study 2B_h5" in text
    assert queried - started < 60 and rendered - queried < 30


def _bulk_fill(stores: StoreConfig, n_runs: int) -> None:
    """Insert runs straight into MLflow's SQL tables in one transaction: the public API costs
    ~0.1 s a run, too slow to build thousands for a test. Read back through the search API."""
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag

    client = mlflow_client(stores)
    studies = [f"{b}_h{h}" for b in ("2M", "20M", "200M", "2B") for h in (1, 5)]
    experiments = {s: get_or_create_experiment(client, s, stores.artifact_root) for s in studies}
    store = client._tracking_client.store
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    with store.ManagedSessionMaker(read_only=False) as session:
        for i in range(n_runs):
            study = studies[i % len(studies)]
            budget, horizon = study.split("_h")
            archs = get_architectures_for_budget(budget)
            arch = archs[i % len(archs)]
            run_id = uuid.uuid4().hex
            session.add(SqlRun(run_uuid=run_id, name=f"{study} #{i}", experiment_id=int(experiments[study]), user_id="test",
                               status="FINISHED", start_time=now, end_time=now, source_type="LOCAL", source_name="",
                               entry_point_name="", lifecycle_stage="active", artifact_uri=""))  # fmt: skip
            params = {**arch.as_dict(), "budget": budget, "horizon": horizon, "grid_version": 2,
                      "learning_rate": LRS[i % 4], "dropout": DROPOUTS[(i // 4) % 4], "weight_decay": WDS[(i // 16) % 4],
                      "batch_size": 256, "seed": 0}  # fmt: skip
            tags = {"run_kind": "trial", "source": "hpo", "study": study, "budget": budget, "horizon": horizon,
                    "trial_number": i // len(studies), "state": "complete",
                    "extreme_type": "none"}  # fmt: skip
            metrics = {"val_auc": 0.6 + 0.1 * rng.random(), "pred_range": 0.3, "recall": 0.5, "train_seconds": 10.0}
            session.add_all([SqlParam(key=k, value=str(v), run_uuid=run_id) for k, v in params.items()])
            session.add_all([SqlTag(key=k, value=str(v), run_uuid=run_id) for k, v in tags.items()])
            session.add_all([SqlLatestMetric(key=k, value=v, timestamp=now, step=0, is_nan=False, run_uuid=run_id)
                             for k, v in metrics.items()])  # fmt: skip
