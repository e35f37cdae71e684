"""The researcher's own data: a feature panel with its own label columns, F flowing from the data,
one-line refusals of bad input that write nothing, and datasets pinned per study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from models.arch_grid import count_parameters, get_architectures_for_budget
from schemas import tracking as T
from schemas.config import DataConfig, HpoConfig, SearchSpace, StoreConfig, StudyConfig, StudySpec, TrainConfig
from tasks.data.dataset import DataError, DatasetMismatch, cached_dataset, load_panel, prepare_dataset

FEATURES = tuple(f"f{j:02d}" for j in range(12))
LABEL = "label_h{horizon}"


def make_panel(n_tickers: int = 3, n_days: int = 800, seed: int = 0) -> pd.DataFrame:
    """Tickers x business days of 12 features and label_h1/h3/h5 that depend on f00 and f01 of the
    day (a learnable signal), rows in Date-then-ticker order (the usual long export)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_tickers):
        x = rng.normal(size=(n_days, len(FEATURES)))
        frame = pd.DataFrame(x, columns=list(FEATURES))
        frame.insert(0, "Date", pd.bdate_range("2005-01-03", periods=n_days).strftime("%Y-%m-%d"))
        frame.insert(1, "ticker", f"T{i}")
        for h in (1, 3, 5):
            frame[f"label_h{h}"] = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.6, size=n_days) > 0).astype(int)
        frames.append(frame)
    return pd.concat(frames).sort_values(["Date", "ticker"], kind="stable").reset_index(drop=True)


def panel_config(path: Path, **update) -> DataConfig:
    return DataConfig(**{"source": str(path), "features": FEATURES, "label": LABEL, "window": 20, **update})


def written(root: Path) -> list[str]:
    """What a refused run left under the stores' root: nothing, not even an empty database."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def panel_csv(tmp_path: Path) -> Path:
    path = tmp_path / "panel.csv"
    make_panel().to_csv(path, index=False)
    return path


def own_config(tmp_path: Path, source: Path, **data) -> HpoConfig:
    return HpoConfig(
        data=panel_config(source, **data),
        train=TrainConfig(max_epochs=3, max_batches_per_epoch=10, batch_size=64, max_warmup_steps=2, device="cpu"),
        search=SearchSpace(learning_rates=(3e-3,), dropouts=(0.1,), weight_decays=(0.0,)),
        study=StudyConfig(n_trials=3, heartbeat_interval_s=1, heartbeat_grace_s=4, baselines=False),
        stores=StoreConfig(root=tmp_path / "mlruns"),
    )


# --- the panel as input ------------------------------------------------------------------------


def test_a_feature_panel_is_used_as_it_is_with_its_own_labels(panel_csv: Path):
    config = panel_config(panel_csv)
    panel, source = load_panel(config, horizon=5)
    data = prepare_dataset(panel, config, 5, source)
    assert data.num_features == 12 and data.feature_names == FEATURES
    assert data.tickers == ("T0", "T1", "T2")  # re-sorted from Date-then-ticker order, ticker by ticker
    # labels are the panel's column at the anchor rows
    assert np.array_equal(data.labels["val"], panel["label_h5"].to_numpy()[data.anchors["val"]].astype("float32"))
    # the gap: no window or label crosses a split boundary, and train-only statistics
    dates = panel["Date"].to_numpy()
    assert dates[data.anchors["train"] + 5].max() <= np.datetime64(data.boundaries["train_end"])
    assert dates[data.anchors["val"] - 19].min() > np.datetime64(data.boundaries["train_end"])
    train_rows = np.unique((data.anchors["train"][:, None] + np.arange(-19, 1)).ravel())
    assert np.allclose(data.features[train_rows].mean(axis=0), 0, atol=1e-4)


def test_config_json_and_flags_give_the_same_data_config(panel_csv: Path, tmp_path: Path):
    from flows.cli import build_config

    names = tmp_path / "features.txt"
    names.write_text("\n".join(FEATURES) + "\n")
    file = tmp_path / "config.json"
    file.write_text(json.dumps({"data": {"source": str(panel_csv), "features": list(FEATURES), "label": LABEL}}))
    from_json = build_config(config_file=file).data
    from_flags = build_config(data=str(panel_csv), features=",".join(FEATURES), label=LABEL).data
    from_file = build_config(data=str(panel_csv), features=f"@{names}", label=LABEL).data
    assert from_json == from_flags == from_file and from_json.num_features == 12
    assert DataConfig().num_features == 25 and DataConfig().label_column(5) is None
    with pytest.raises(ValueError, match="template with \\{horizon\\}"):
        DataConfig(label="label_5")


def test_the_ohlcv_defaults_keep_their_fingerprint():
    """The bundled path's cache file names and MLflow digests are those from before feature panels."""
    import hashlib

    from tasks.data.dataset import dataset_fingerprint
    from tasks.data.features import FEATURE_NAMES

    before = hashlib.sha256(json.dumps([{"source": "bundled", "window": 60, "threshold": 0.01, "train_fraction": 0.7,
                                         "val_fraction": 0.15}, 1, FEATURE_NAMES]).encode()).hexdigest()[:16]
    assert dataset_fingerprint(DataConfig(), 1) == before


# --- bad input: one line naming file, column and fix; nothing written ---------------------------


def _bad(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.copy()


BAD_INPUTS = {
    "missing feature": (lambda f: f.drop(columns=["f07"]), "feature column(s) f07 not found", "data.features"),
    "non-numeric feature": (lambda f: f.assign(f03=f["f03"].astype(object).where(f.index != 10, "1.2.3")),
                            "feature column f03 has 1 non-numeric value(s), the first '1.2.3' at data row 11", "plain numbers"),
    "NaN feature": (lambda f: f.assign(f05=f["f05"].where(~f.index.isin([4, 9]))),
                    "2 NaN or infinite feature value(s) in 2 row(s), by column: f05 (2); the first at data row 5",
                    "nothing is filled for you"),
    "inf feature": (lambda f: f.assign(f11=f["f11"].where(f.index != 7, np.inf)), "by column: f11 (1)", "fill or drop"),
    "missing label": (lambda f: f.drop(columns=["label_h5"]), "label column label_h5 not found", "--label"),
    "label not 0/1": (lambda f: f.assign(label_h5=f["label_h5"].where(f.index != 20, 2)),
                      "label column label_h5 has 1 value(s) that are not 0/1, the first 2", "write 1 for the event"),
    "constant label on a split": (lambda f: f.assign(label_h5=np.where(pd.to_datetime(f["Date"]) > "2007-06-01", 1, f["label_h5"])),
                                  "label column label_h5 is constant on the test split (always 1", "both 0 and 1"),
    "duplicated (ticker, Date)": (lambda f: pd.concat([f, f.iloc[[5]]], ignore_index=True),
                                  "1 duplicated (ticker, Date) row(s) in columns ticker, Date", "one row per ticker and Date"),
    "too few rows": (lambda f: f[(f["ticker"] != "T1") | (f.index % 5 == 0)],
                     "ticker(s) with too few rows for a window and the horizon", "reduce data.window"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_column_and_fix_and_writes_nothing(case: str, tmp_path: Path):
    from tasks.study.store import open_study

    breaks, problem, fix = BAD_INPUTS[case]
    path = tmp_path / "bad.csv"
    breaks(make_panel()).to_csv(path, index=False)
    config = own_config(tmp_path, path)
    with pytest.raises(DataError) as refused:
        open_study(StudySpec(budget="smoke", horizon=5), config)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert problem in message and fix in message and "Fix:" in message, message
    assert written(config.stores.root) == [], "a refusal writes nothing to any store"


def test_the_cli_refuses_bad_input_in_one_line_before_any_store_exists(tmp_path: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    path = tmp_path / "bad.csv"
    make_panel().drop(columns=["f02"]).to_csv(path, index=False)
    root = tmp_path / "mlruns"
    result = CliRunner().invoke(app, ["run", "smoke", "h5", "--root", str(root), "--data", str(path),
                                      "--features", ",".join(FEATURES), "--label", LABEL])
    assert result.exit_code == 2
    assert "feature column(s) f02 not found" in result.output and "Fix:" in result.output
    assert written(root) == []


# --- F flows from the data; a study learns on it; datasets are pinned ---------------------------


def test_a_smoke_study_learns_on_the_panel_with_exact_counts_for_f12(panel_csv: Path, tmp_path: Path):
    from tasks.study.loop import run_study
    from tasks.study.store import open_study

    config = own_config(tmp_path, panel_csv)
    summary = run_study(StudySpec(budget="smoke", horizon=5), config)
    assert summary["complete"] == 3 and summary["best_val_auc"] > 0.65, summary

    client = MlflowClient(config.stores.mlflow_uri)
    experiment = client.get_experiment_by_name("smoke_h5")
    runs = client.search_runs([experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'trial'")
    grid12 = get_architectures_for_budget("smoke", 12)
    assert len(runs) == 3
    for run in runs:
        p = run.data.params
        assert int(p["params"]) == count_parameters(int(p["d_model"]), int(p["n_layers"]), int(p["d_ff"]), 12)
        assert int(p["params"]) == grid12[int(p["arch_idx"])].params
        assert p[T.PARAM_NUM_FEATURES] == "12" and p[T.PARAM_FEATURES] == ",".join(FEATURES)
        assert p[T.PARAM_LABEL] == LABEL
    study_run = client.get_run(runs[0].info.run_id).data.tags[T.TAG_PARENT_RUN]
    tags = client.get_run(study_run).data.tags
    data, _ = cached_dataset(config.data, 5, config.stores.cache_dir)
    assert json.loads(tags[T.TAG_DATASET])["features"] == list(FEATURES)
    assert data.num_features == 12

    # the registered model's signature reads (batch, window, 12)
    version = client.get_latest_versions("smoke_h5")[0]
    assert "20, 12" in (client.get_registered_model("smoke_h5").description or "")
    assert version.version

    # resuming on a panel with another feature list is refused, naming both fingerprints and what differs
    other = own_config(tmp_path, panel_csv, features=FEATURES[:11])
    trials_before = len(optuna.load_study(study_name="smoke_h5", storage=config.stores.optuna_url).trials)
    with pytest.raises(DatasetMismatch) as refused:
        open_study(StudySpec(budget="smoke", horizon=5), other)
    message = str(refused.value)
    assert tags[T.TAG_DATASET_FINGERPRINT] in message and "F 12 -> 11; missing f11" in message, message
    assert len(optuna.load_study(study_name="smoke_h5", storage=config.stores.optuna_url).trials) == trials_before


def test_a_changed_file_or_window_is_refused_on_resume(panel_csv: Path, tmp_path: Path):
    from tasks.data.dataset import dataset_differences, dataset_record

    config = panel_config(panel_csv)
    data, _ = cached_dataset(config, 5, tmp_path / "cache")
    record = dataset_record(config, data)
    wider = panel_config(panel_csv, window=30)
    wider_data, _ = cached_dataset(wider, 5, tmp_path / "cache")
    assert "window 20 -> 30" in dataset_differences(record, dataset_record(wider, wider_data))
    make_panel(seed=1).to_csv(panel_csv, index=False)  # same path, same columns, new content
    changed, _ = cached_dataset(config, 5, tmp_path / "cache")
    now = dataset_record(config, changed)
    assert now["fingerprint"] != record["fingerprint"]
    assert dataset_differences(record, now) == ["the file's content (same path, features, label, window and splits)"]


def test_baselines_read_the_panels_f(panel_csv: Path, tmp_path: Path):
    from tasks.training.baselines import design_matrix, fit_baseline

    data, _ = cached_dataset(panel_config(panel_csv), 5, tmp_path / "cache")
    assert design_matrix(data, "val", "last").shape[1] == 12
    result = fit_baseline(data, "logreg")
    assert result.metrics()["val_auc"] > 0.7
