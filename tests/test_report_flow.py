"""The `report` Prefect flow and `hpo report` end to end on a small MLflow store: files written,
the report logged to MLflow, the markdown and table artifacts in Prefect."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from models.arch_grid import forced_extremes, get_architectures_for_budget
from schemas.config import StoreConfig
from tasks.tracking.runs import mlflow_client

from helpers import baseline, fill_store, no_fsync, trial


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> StoreConfig:
    """A smoke stand-in study (the shape `hpo run --smoke` leaves) with its extremes, a failed
    trial and a baseline."""
    stores = StoreConfig(root=tmp_path_factory.mktemp("flow") / "mlruns")
    grid = get_architectures_for_budget("smoke")
    specs = [trial("smoke-20M_h1", n, arch, auc=0.55 + 0.01 * n, extreme=extreme)
             for n, (extreme, arch) in enumerate(forced_extremes(grid))]  # fmt: skip
    specs.append(trial("smoke-20M_h1", 6, grid[0], state="failed", failure_reason="diverged"))
    specs.append(baseline("smoke-20M_h1", "logreg", 0.70, 0.69, val_n_pos=300, val_n_neg=500))
    for spec in specs:  # the stand-in's runs carry the smoke budget, as the study driver logs them
        spec["params"]["budget"] = spec["tags"]["budget"] = "smoke"
    with no_fsync():
        fill_store(stores, specs)
    return stores


def latest_artifact(key: str):
    """The newest Prefect artifact with this key. (`Artifact.get` sends nulls that this Prefect
    server rejects with a 422, so every filter field is given.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(), sort=ArtifactSort.UPDATED_DESC, limit=1, offset=0,
        )  # fmt: skip
    return found[0] if found else None


def test_report_flow_writes_logs_and_publishes(prefect_harness, small_store, tmp_path):
    from flows.report import report
    from tasks.report.tasks import MARKDOWN_KEY, TABLE_KEY

    files = report(stores=small_store, out=tmp_path / "reports")

    text = files.markdown.read_text()
    assert "## Study smoke-20M_h1" in text and "Budget smoke-20M (the smoke grid standing in for 20M)" in text
    assert "| smoke-20M | 6/7 | 0.6000 |" in text  # the best-per-budget row of the stand-in
    assert "| 2M |" not in text and "Budgets without trial runs" not in text  # a smoke-only store: no real budgets
    assert files.html.exists() and (tmp_path / "reports" / "figures" / "auc_vs_params.png").exists()

    client = mlflow_client(small_store)
    logged = {a.path for a in client.list_artifacts(files.mlflow_run_id)}
    assert {"report.md", "report.html", "runs.csv", "figures"} <= logged

    markdown = latest_artifact(MARKDOWN_KEY)
    assert markdown is not None and markdown.data.startswith("# Cross-budget HPO report") and "![" not in markdown.data
    table = latest_artifact(TABLE_KEY)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows == [{
        "horizon": "h1", "budget": "smoke-20M", "complete": 6, "best_val_auc": 0.6,
        # Hanley-McNeil for AUC 0.60 with the baseline's 300/500 class counts: SE 0.020921
        "ci_low": 0.559, "ci_high": 0.641, "ci_method": "Hanley-McNeil",
        # trial #5 is forced_extremes(smoke grid)[5], the max_n_heads entry
        "trial": "smoke-20M_h1 #5 (hpo)", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff_ratio": 2,
        "learning_rate": 5e-05, "dropout": 0.3, "weight_decay": 1e-05,
        "best_baseline": "logreg 0.7000", "vs_baseline": "lower",
        # no test scores logged in this store, and one budget: nothing to compare on test
        "test_auc": None, "seeds": None, "seed_sd_test_auc": None, "scaling_on_test": "not assessable",
    }]  # fmt: skip


def test_cli_report_help_lists_its_options():
    from flows.cli import app

    result = CliRunner().invoke(app, ["report", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--root", "--tracking-uri"):
        assert option in result.output


def test_cli_report_on_an_empty_store_says_so_and_creates_nothing(tmp_path, stores):
    """Issue 22, case 6: no store at all, and a store with no study (only the default experiment),
    are each refused with what to run, exit 1, and no db file, report run or report file made."""
    from flows.cli import app

    root, out = tmp_path / "nothing" / "mlruns", tmp_path / "nothing" / "reports"
    result = CliRunner().invoke(app, ["report", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"no studies in sqlite:///{root.resolve() / 'mlflow.db'}: run a study first (hpo run ...)" in message, message
    assert "or import legacy logs (hpo recover ... --import-mlflow)" in message
    assert not (tmp_path / "nothing").exists()

    before = sorted(p.name for p in stores.root.iterdir())
    result = CliRunner().invoke(app, ["report", "--root", str(stores.root), "--out", str(out)])
    assert result.exit_code == 2 and "no studies in" in result.output, result.output
    assert sorted(p.name for p in stores.root.iterdir()) == before and not out.exists()
    assert mlflow_client(stores).get_experiment_by_name("reports") is None


def test_report_flow_refuses_an_empty_store_before_querying(tmp_path):
    from tasks.report.tasks import NothingToReport, refuse_empty_store

    stores = StoreConfig(root=tmp_path / "mlruns")
    with pytest.raises(NothingToReport, match="no studies in sqlite:///"):
        refuse_empty_store.fn(stores)
    assert not stores.root.exists()
