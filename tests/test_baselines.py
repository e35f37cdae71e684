"""Baselines: the studies' splits and nothing else, logged once to MLflow, reused after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from schemas.config import DataConfig, HpoConfig, StoreConfig
from schemas.tracking import TAG_BASELINE_MODEL, TAG_RUN_KIND, TAG_SOURCE, TAG_STUDY
from tasks.training import baselines
from tasks.training.tasks import fit_baselines
from tasks.training.baselines import (
    BASELINE_METRICS,
    TAG_BASELINE_KEY,
    BaselineSettings,
    baseline_key,
    design_matrix,
    fit_baseline,
    run_baselines,
)
from tasks.data.dataset import PreparedData, cached_dataset
from tasks.data.features import NUM_FEATURES
from tasks.tracking.runs import get_or_create_experiment, mlflow_client, search_all_runs

ROWS_PER_TICKER = 700  # enough for the default 60-day window at h5 in each split
# The baselines every study is compared with: two logistic regressions, gradient boosting, the base rate.
MODELS = {"logreg", "logreg_flat", "hgb", "base_rate"}


@pytest.fixture(scope="module")
def panel_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two random-walk tickers, written ticker by ticker: file row i is feature row i."""
    rng = np.random.default_rng(7)
    frames = []
    for ticker in ("AAA", "BBB"):
        close = 100 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, ROWS_PER_TICKER)))
        open_ = close * np.exp(rng.normal(0, 0.004, ROWS_PER_TICKER))
        frames.append(
            pd.DataFrame(
                {
                    "Date": pd.bdate_range("2010-01-04", periods=ROWS_PER_TICKER).strftime("%Y-%m-%d"),
                    "ticker": ticker,
                    "Open": open_,
                    "High": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, ROWS_PER_TICKER))),
                    "Low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, ROWS_PER_TICKER))),
                    "Close": close,
                    "Volume": rng.integers(1_000, 5_000, ROWS_PER_TICKER),
                }
            )
        )
    path = tmp_path_factory.mktemp("panel") / "panel.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, panel_csv: Path) -> HpoConfig:
    """One store for the module (creating an MLflow database takes seconds); each test writes
    to experiments of its own."""
    return HpoConfig(data=DataConfig(source=str(panel_csv)), stores=StoreConfig(root=tmp_path_factory.mktemp("mlruns")))


def prepared(config: HpoConfig, horizon: int) -> PreparedData:
    return cached_dataset(config.data, horizon, config.stores.cache_dir)[0]


def source_rows(data: PreparedData, matrix: np.ndarray) -> np.ndarray:
    """(n, k) feature-matrix rows a design matrix was built from, found by content: the check
    does not trust the code that built it."""
    index = {row.tobytes(): i for i, row in enumerate(data.features)}
    assert len(index) == len(data.features), "feature rows must be distinct for the lookup"
    days = matrix.reshape(len(matrix), -1, NUM_FEATURES)  # (n, k, NUM_FEATURES)
    return np.array([[index[day.tobytes()] for day in sample] for sample in days])


@pytest.mark.parametrize("horizon", [1, 5])
def test_every_baseline_trains_on_train_rows_and_the_trials_anchors_only(config, panel_csv, monkeypatch, horizon):
    data = prepared(config, horizon)
    dates = pd.to_datetime(pd.read_csv(panel_csv)["Date"]).to_numpy()
    train_end = np.datetime64(data.boundaries["train_end"])
    fits: list[tuple[str, np.ndarray, np.ndarray]] = []
    for cls in (LogisticRegression, HistGradientBoostingClassifier, DummyClassifier):
        def spy(self, X, y, *args, _fit=cls.fit, **kwargs):
            fits.append((type(self).__name__, np.asarray(X), np.asarray(y)))
            return _fit(self, X, y, *args, **kwargs)

        monkeypatch.setattr(cls, "fit", spy)

    small = BaselineSettings(logreg_cs=(0.01,), logreg_flat_cs=(1e-4,), hgb_max_leaf_nodes=(4,), hgb_max_iter=(20,))
    for model in sorted(MODELS):
        fits.clear()
        fit_baseline(data, model, small)
        assert fits, f"{model} fitted nothing"
        for estimator, X, y in fits:
            rows = source_rows(data, X)  # (n, 1) last day or (n, window) flattened window
            assert (dates[rows] <= train_end).all(), f"{model} ({estimator}) trained on a val or test row"
            anchors = rows[:, -1]
            np.testing.assert_array_equal(anchors, data.anchors["train"])  # the trials' samples, in order
            np.testing.assert_array_equal(y, data.labels["train"])
            assert (dates[anchors + horizon] <= train_end).all(), "a training label reads past train_end"
            if rows.shape[1] > 1:
                np.testing.assert_array_equal(rows, anchors[:, None] + np.arange(-data.window + 1, 1))

    # the check can fail: the val split's inputs are found to lie after train_end
    val_rows = source_rows(data, design_matrix(data, "val", "window"))
    assert (dates[val_rows] > train_end).all()


def test_base_rate_predicts_the_train_positive_rate(config):
    data = prepared(config, 1)
    result = fit_baseline(data, "base_rate")
    rate = float(data.labels["train"].mean())
    assert result.val_auc == result.test_auc == 0.5
    assert result.pred_min == pytest.approx(rate) and result.pred_max == pytest.approx(rate)
    assert result.pred_range == 0.0
    assert result.val_n_pos + result.val_n_neg == len(data.labels["val"])
    assert result.test_n_pos == int(data.labels["test"].sum())


def test_baselines_are_logged_once_then_reused(config, monkeypatch):
    client = mlflow_client(config.stores)
    experiment_id = get_or_create_experiment(client, "smoke_h1", config.stores.artifact_root)
    study_run = client.create_run(experiment_id, tags={TAG_RUN_KIND: "study", TAG_STUDY: "smoke_h1"})

    returned = run_baselines(config, "smoke_h1", 1)
    runs = search_all_runs(client, [experiment_id], f"tags.{TAG_RUN_KIND} = 'baseline'")
    assert sorted(r.data.tags[TAG_BASELINE_MODEL] for r in runs) == sorted(MODELS) == sorted(returned)
    data = prepared(config, 1)
    key = baseline_key(config.data, 1)
    for run in runs:
        model = run.data.tags[TAG_BASELINE_MODEL]
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        assert run.info.status == "FINISHED"
        assert tags[TAG_SOURCE] == "baseline" and tags[TAG_STUDY] == "smoke_h1" and tags["horizon"] == "1"
        assert tags[TAG_BASELINE_KEY] == key and tags["code_version"]
        assert tags["mlflow.parentRunId"] == study_run.info.run_id
        assert metrics["val_auc"] == returned[model]
        assert set(BASELINE_METRICS) <= set(metrics)
        expected = baselines._FITTED[key, model].metrics()  # what run_baselines fitted
        for name in set(BASELINE_METRICS) - {"train_seconds", "tune_seconds"}:
            assert metrics[name] == pytest.approx(expected[name], abs=1e-12), (model, name)
        assert metrics["val_n_pos"] + metrics["val_n_neg"] == len(data.labels["val"])
        assert params["model"] == model and params["horizon"] == "1" and params["window"] == "60"
    assert returned["base_rate"] == 0.5

    # same data, same settings: nothing is fitted or logged again, by the function or the task
    monkeypatch.setattr(baselines, "_FITTED", {})
    monkeypatch.setattr(baselines, "fit_baseline", lambda *a, **k: pytest.fail("cached baselines refitted"))
    assert run_baselines(config, "smoke_h1", 1) == returned
    assert fit_baselines.fn(config, "smoke_h1", 1) == returned
    assert len(search_all_runs(client, [experiment_id])) == len(runs) + 1  # + the study run

    # another label: another key, new runs beside the old ones
    monkeypatch.undo()
    other = config.model_copy(update={"data": config.data.model_copy(update={"threshold": 0.02})})
    assert baseline_key(other.data, 1) != key
    run_baselines(other, "smoke_h1", 1, models=("logreg",))
    assert len(search_all_runs(client, [experiment_id], f"tags.{TAG_RUN_KIND} = 'baseline'")) == len(runs) + 1


def test_a_worker_that_read_the_baselines_before_another_logged_them_logs_none_again(config, monkeypatch):
    """Issue 22, case 4 (seen in CI): two workers' views of what is missing differ when one reads
    while the other is logging; each model is claimed on its own, and checked again under its
    claim, so a stale view fits and logs nothing twice."""
    client = mlflow_client(config.stores)
    experiment_id = get_or_create_experiment(client, "stale_h1", config.stores.artifact_root)
    run_baselines(config, "stale_h1", 1, models=("base_rate", "logreg"))
    key = baseline_key(config.data, 1)
    monkeypatch.setattr(baselines, "fit_baseline", lambda *a, **k: pytest.fail("a logged baseline refitted"))
    # what the second worker does with the view it read before the first one logged anything
    baselines._fit_and_log_once(client, config, experiment_id, "stale_h1", 1, key, ["base_rate", "logreg"],
                                baselines.DEFAULT_SETTINGS)
    runs = search_all_runs(client, [experiment_id], f"tags.{TAG_RUN_KIND} = 'baseline'")
    assert sorted(r.data.tags[TAG_BASELINE_MODEL] for r in runs) == ["base_rate", "logreg"]


def test_a_dataset_logged_by_two_workers_at_once_is_linked_not_refused():
    """MLflow looks a dataset up, then inserts it: the slower of two workers breaks the unique
    key (seen on PostgreSQL in CI) and is asked once more, when the dataset exists."""
    from mlflow.exceptions import RestException

    from tasks.tracking import datasets

    class RacingClient:
        calls = 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls == 1:
                raise RestException({"error_code": "BAD_REQUEST", "message": '(psycopg2.errors.UniqueViolation) duplicate key '
                                     'value violates unique constraint "dataset_pk"'})

        def log_batch(self, *args, **kwargs):
            pass

    client = RacingClient()
    dataset = datasets.Dataset(name="bundled-h1-w20", digest="cc9b449d", source_type="code", source="{}", profile="{}")
    datasets.log_dataset_input(client, "run", dataset)
    assert client.calls == 2

    class BrokenClient(RacingClient):
        def log_inputs(self, run_id, datasets):
            raise RestException({"error_code": "BAD_REQUEST", "message": "something else"})

    with pytest.raises(RestException, match="something else"):
        datasets.log_dataset_input(BrokenClient(), "run", dataset)


def test_cli_logs_into_every_study_of_the_horizon(config, panel_csv):
    from flows.cli import app

    client = mlflow_client(config.stores)
    for name in ("smoke_h3", "2M_h3", "2M_h1"):
        get_or_create_experiment(client, name, config.stores.artifact_root)
    args = ["baselines", "--horizon", "h3", "--data", str(panel_csv), "--root", str(config.stores.root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "logreg_flat" in result.output and "2M_h3," in result.output and "smoke_h3" in result.output
    logged = {}
    for name in ("smoke_h3", "2M_h3", "2M_h1"):
        experiment_id = client.get_experiment_by_name(name).experiment_id
        logged[name] = {r.data.tags[TAG_BASELINE_MODEL]: r.data.metrics["val_auc"]
                        for r in search_all_runs(client, [experiment_id], f"tags.{TAG_RUN_KIND} = 'baseline'")}  # fmt: skip
    assert logged["smoke_h3"] == logged["2M_h3"] and set(logged["smoke_h3"]) == MODELS
    assert logged["2M_h1"] == {}

    bad = CliRunner().invoke(app, ["baselines", "--horizon", "h2", "--root", str(config.stores.root)])
    assert bad.exit_code != 0 and "h1, h3, h5" in bad.output


def test_logistic_regression_on_the_bundled_data_reaches_the_known_level(tmp_path):
    """The issue's reference: a plain logistic regression reaches about 0.77 val AUC at h1."""
    data, _ = cached_dataset(DataConfig(), 1, tmp_path)
    result = fit_baseline(data, "logreg")
    assert result.val_auc > 0.76
    assert 0.0 < result.pred_min < result.pred_max < 1.0 and 0.0 <= result.recall <= 1.0
