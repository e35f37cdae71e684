"""Loading, validation errors, chronological splits with gaps, train-only standardisation, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest

from schemas.config import DataConfig
from tasks.data.dataset import (
    SPLITS,
    DataError,
    PreparedData,
    cached_dataset,
    load_panel,
    minimum_rows,
    prepare_dataset,
    train_rows_for_statistics,
)
from tasks.data.features import compute_features, compute_labels


def random_walk_ohlcv(n: int, seed: int, start: str = "2001-01-01") -> pd.DataFrame:
    """A plausible daily OHLCV series: Low <= Open, Close <= High, positive volume."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, n)))
    volume = rng.integers(1_000_000, 5_000_000, n)
    dates = pd.bdate_range(start, periods=n)
    return pd.DataFrame({"Date": dates, "Open": open_, "High": high, "Low": low, "Close": close, "Volume": volume})


def synthetic_panel() -> pd.DataFrame:
    """Two tickers of different lengths: BBB starts 200 business days after AAA."""
    aaa = random_walk_ohlcv(1500, seed=10).assign(ticker="AAA")
    bbb = random_walk_ohlcv(1300, seed=11, start="2001-10-08").assign(ticker="BBB")
    return pd.concat([aaa, bbb], ignore_index=True)


@pytest.fixture(scope="module")
def bundled_panel() -> pd.DataFrame:
    panel, source = load_panel(DataConfig(), horizon=5)
    assert source == "bundled"
    return panel


# --- splits and gaps -------------------------------------------------------------------------


def stacked_rows(panel: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Date and ticker number of every row of the stacked feature matrix (prepare_dataset's order)."""
    parts = [rows for _, rows in panel.groupby("ticker", sort=False)]
    dates = np.concatenate([rows["Date"].to_numpy() for rows in parts])
    tickers = np.concatenate([np.full(len(rows), i) for i, rows in enumerate(parts)])
    return dates, tickers


def split_date_ranges(data: PreparedData) -> dict[str, tuple[np.datetime64, np.datetime64]]:
    """Inclusive date range of each split's segment, from the recorded boundaries."""
    train_end = np.datetime64(data.boundaries["train_end"])
    val_end = np.datetime64(data.boundaries["val_end"])
    return {
        "train": (np.datetime64("1000-01-01"), train_end),
        "val": (train_end + np.timedelta64(1, "D"), val_end),
        "test": (val_end + np.timedelta64(1, "D"), np.datetime64("3000-01-01")),
    }


def assert_no_window_or_label_crosses_a_boundary(panel: pd.DataFrame, data: PreparedData) -> None:
    dates, tickers = stacked_rows(panel)
    ranges = split_date_ranges(data)
    reach = np.arange(-data.window + 1, data.horizon + 1)  # window rows, then label rows
    touched = {}
    for split in SPLITS:
        anchors = data.anchors[split]
        assert len(anchors) > 0, split
        rows = anchors[:, None] + reach  # (n, window + horizon)
        assert rows.min() >= 0 and rows.max() < len(dates)
        assert (tickers[rows] == tickers[anchors][:, None]).all(), f"{split}: a window spans two tickers"
        lo, hi = ranges[split]
        row_dates = dates[rows].astype("datetime64[D]")
        assert (row_dates >= lo).all() and (row_dates <= hi).all(), f"{split}: a window or label leaves the split"
        touched[split] = (row_dates.min(), row_dates.max())
    assert touched["train"][1] < touched["val"][0]
    assert touched["val"][1] < touched["test"][0]


def assert_labels_and_windows_are_the_panels(panel: pd.DataFrame, data: PreparedData) -> None:
    """Each anchor's label is compute_labels at that row; each window reads finite features only."""
    parts = [rows.reset_index(drop=True) for _, rows in panel.groupby("ticker", sort=False)]
    labels = np.concatenate([compute_labels(rows, data.horizon, 0.01).to_numpy() for rows in parts])
    raw = np.concatenate([compute_features(rows).to_numpy() for rows in parts])
    for split in SPLITS:
        np.testing.assert_array_equal(data.labels[split], labels[data.anchors[split]])
        window_rows = data.anchors[split][:, None] + np.arange(-data.window + 1, 1)
        assert np.isfinite(raw[window_rows]).all(), f"{split}: a window reaches into the feature warm-up"


@pytest.mark.parametrize("horizon", [1, 5])
def test_bundled_splits_have_gaps_so_nothing_crosses_a_boundary(bundled_panel, horizon):
    data = prepare_dataset(bundled_panel, DataConfig(), horizon, "bundled")
    assert data.tickers == ("SP500", "NASDAQ")
    assert data.window == 60 and data.horizon == horizon
    assert data.features.shape == (len(bundled_panel), 25)
    assert_no_window_or_label_crosses_a_boundary(bundled_panel, data)
    assert_labels_and_windows_are_the_panels(bundled_panel, data)
    starts = {split: data.split_dates[split][0] for split in SPLITS}
    ends = {split: data.split_dates[split][1] for split in SPLITS}
    assert ends["train"] <= data.boundaries["train_end"] < starts["val"]
    assert ends["val"] <= data.boundaries["val_end"] < starts["test"]


def test_bundled_split_sizes_follow_the_fractions(bundled_panel):
    data = prepare_dataset(bundled_panel, DataConfig(), 1, "bundled")
    sizes = {split: len(data.anchors[split]) for split in SPLITS}
    total = sum(sizes.values())
    # 70/15/15 of the days, less the warm-up and each split's window and horizon gap
    assert sizes["train"] / total == pytest.approx(0.72, abs=0.03)
    assert sizes["val"] / total == pytest.approx(0.14, abs=0.03)
    assert sizes["test"] / total == pytest.approx(0.14, abs=0.03)
    assert all(0 < data.labels[split].mean() < 1 for split in SPLITS)


def test_the_gap_is_no_wider_than_the_window_and_horizon_need(bundled_panel):
    """Per ticker, the first val window starts on val's first day; the last train label is train's last day."""
    data = prepare_dataset(bundled_panel, DataConfig(), 3, "bundled")
    dates, tickers = stacked_rows(bundled_panel)
    days = dates.astype("datetime64[D]")
    train_end = np.datetime64(data.boundaries["train_end"])
    for ticker in np.unique(tickers):
        mine = tickers == ticker
        train = data.anchors["train"][mine[data.anchors["train"]]]
        val = data.anchors["val"][mine[data.anchors["val"]]]
        assert days[train.max() + data.horizon] == days[mine & (days <= train_end)].max()
        assert days[val.min() - data.window + 1] == days[mine & (days > train_end)].min()


@pytest.mark.parametrize(
    ("window", "horizon", "train_fraction", "val_fraction"), [(60, 1, 0.7, 0.15), (20, 3, 0.6, 0.2)]
)
def test_synthetic_panel_splits_have_gaps(window, horizon, train_fraction, val_fraction):
    panel = synthetic_panel()
    config = DataConfig(window=window, train_fraction=train_fraction, val_fraction=val_fraction)
    data = prepare_dataset(panel, config, horizon, "synthetic")
    assert data.tickers == ("AAA", "BBB")
    assert_no_window_or_label_crosses_a_boundary(panel, data)
    assert_labels_and_windows_are_the_panels(panel, data)
    assert data.windows("val").shape == (len(data.anchors["val"]), window, 25)


# --- standardisation -------------------------------------------------------------------------


def test_standardisation_uses_train_rows_only(bundled_panel):
    """Changing every val and test price and volume leaves the standardised train features alone."""
    config = DataConfig()
    data = prepare_dataset(bundled_panel, config, 1, "bundled")
    later = bundled_panel["Date"] > pd.Timestamp(data.boundaries["train_end"])
    changed = bundled_panel.astype({"Volume": "float64"})
    rng = np.random.default_rng(0)
    for column in ("Open", "High", "Low", "Close", "Volume"):
        changed.loc[later, column] *= rng.uniform(0.5, 2.0, later.sum())
    again = prepare_dataset(changed, config, 1, "bundled")

    train_rows = train_rows_for_statistics(data.anchors["train"], config.window)
    np.testing.assert_array_equal(again.features[train_rows], data.features[train_rows])
    np.testing.assert_array_equal(again.anchors["train"], data.anchors["train"])
    np.testing.assert_array_equal(again.labels["train"], data.labels["train"])
    val_rows = train_rows_for_statistics(data.anchors["val"], config.window)
    assert not np.array_equal(again.features[val_rows], data.features[val_rows]), "the change was real"


def test_train_rows_are_standardised_and_clipped(bundled_panel):
    data = prepare_dataset(bundled_panel, DataConfig(), 1, "bundled")
    train = data.features[train_rows_for_statistics(data.anchors["train"], data.window)]
    assert data.features.dtype == np.float32
    assert np.isfinite(data.features).all()
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=0.05)
    assert np.abs(data.features).max() <= 10.0


# --- bad input -------------------------------------------------------------------------------


def write_csv(frame: pd.DataFrame, tmp_path: Path, name: str = "prices.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def load_error(path: Path, horizon: int = 1) -> DataError:
    with pytest.raises(DataError) as raised:
        load_panel(DataConfig(source=str(path)), horizon)
    error = raised.value
    assert str(path) in str(error), "the message names the file"
    assert error.source == str(path)
    assert "Fix: " in str(error) and error.fix, "the message says what to do"
    return error


def test_missing_columns(tmp_path):
    error = load_error(write_csv(random_walk_ohlcv(800, seed=0).drop(columns=["Volume", "Low"]), tmp_path))
    assert "missing column(s) Low, Volume" in error.problem
    assert "provide columns Date, Open, High, Low, Close, Volume" in error.fix


def test_missing_values_are_located(tmp_path):
    frame = random_walk_ohlcv(800, seed=0)
    frame.loc[[10, 20], "Close"] = np.nan
    error = load_error(write_csv(frame, tmp_path))
    assert "2 row(s) have missing values" in error.problem and "the first at data row 11" in error.problem
    assert "column(s) Close (2, the first at data row 11)" in error.problem
    assert str(frame.loc[10, "Date"].date()) in error.problem
    assert "fill or remove those rows" in error.fix


def test_a_na_marker_in_close_names_its_column(tmp_path):
    """'n/a' is read as a missing value: the message says which column holds it."""
    frame = random_walk_ohlcv(800, seed=0).astype({"Close": object})
    frame.loc[50, "Close"] = "n/a"
    error = load_error(write_csv(frame, tmp_path))
    assert "column(s) Close (1, the first at data row 51)" in error.problem and "'n/a'" in error.problem


def test_unsorted_dates_are_located(tmp_path):
    frame = random_walk_ohlcv(800, seed=0)
    frame.loc[[100, 101], "Date"] = frame.loc[[101, 100], "Date"].to_numpy()
    error = load_error(write_csv(frame, tmp_path))
    assert "dates are not sorted" in error.problem
    assert "data row 102" in error.problem
    assert "sort the file by ticker and Date ascending" in error.fix


def test_duplicate_dates(tmp_path):
    frame = random_walk_ohlcv(800, seed=0)
    frame.loc[101, "Date"] = frame.loc[100, "Date"]
    error = load_error(write_csv(frame, tmp_path))
    assert f"duplicate date {frame.loc[100, 'Date'].date()}" in error.problem
    assert "keep one row per ticker and date" in error.fix


# 60 warm-up rows, then the smallest split (15%) must hold a 60-day window, the horizon and 10
# anchors: 60 + ceil((60 + h + 10) / 0.15).
@pytest.mark.parametrize(("horizon", "need"), [(1, 60 + 474), (5, 60 + 500)])
def test_too_few_rows_for_window_and_horizon(tmp_path, horizon, need):
    assert minimum_rows(DataConfig(), horizon) == need
    error = load_error(write_csv(random_walk_ohlcv(need - 1, seed=0), tmp_path), horizon)
    assert f"{need - 1} rows, too few" in error.problem
    assert f"need at least {need}" in error.problem
    assert "longer history" in error.fix
    # one more row is enough
    long_enough = write_csv(random_walk_ohlcv(need, seed=0), tmp_path, "ok.csv")
    panel, _ = load_panel(DataConfig(source=str(long_enough)), horizon)
    assert len(panel) == need


@pytest.mark.parametrize(("column", "value"), [("Close", 0.0), ("Low", -1.0), ("Volume", -5)])
def test_non_positive_prices_and_negative_volume(tmp_path, column, value):
    frame = random_walk_ohlcv(800, seed=0)
    frame.loc[50, column] = value
    error = load_error(write_csv(frame, tmp_path))
    assert "non-positive price or negative volume, the first at data row 51" in error.problem
    assert "remove or correct those rows" in error.fix


def test_non_numeric_values_are_located(tmp_path):
    frame = random_walk_ohlcv(800, seed=0).astype({"Close": "object"})
    frame.loc[7, "Close"] = "1,234.5"
    error = load_error(write_csv(frame, tmp_path))
    assert "column Close has 1 non-numeric value(s), the first '1,234.5' at data row 8" in error.problem
    assert "plain numbers" in error.fix


def test_unparseable_dates(tmp_path):
    frame = random_walk_ohlcv(800, seed=0).astype({"Date": "object"})
    frame.loc[5, "Date"] = "not a date"
    error = load_error(write_csv(frame, tmp_path))
    assert "column Date cannot be parsed as dates" in error.problem
    assert "YYYY-MM-DD" in error.fix


def test_unreadable_unsupported_and_missing_files(tmp_path):
    garbage = tmp_path / "prices.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    assert "cannot be read" in load_error(garbage).problem

    text = tmp_path / "prices.txt"
    text.write_text("Date,Open\n")
    error = load_error(text)
    assert "unsupported file type '.txt'" in error.problem
    assert ".csv or .parquet" in error.fix

    error = load_error(tmp_path / "absent.csv")
    assert "file not found" in error.problem


def test_a_single_class_split_is_refused(tmp_path):
    path = write_csv(random_walk_ohlcv(800, seed=0), tmp_path)
    config = DataConfig(source=str(path), threshold=0.9)
    panel, source = load_panel(config, 1)
    with pytest.raises(DataError, match="single class") as raised:
        prepare_dataset(panel, config, 1, source)
    assert str(path) in str(raised.value)
    assert "threshold" in raised.value.fix


def test_fractions_must_leave_a_test_split():
    with pytest.raises(pydantic.ValidationError, match="leaves no test split"):
        DataConfig(train_fraction=0.8, val_fraction=0.2)


# --- user files ------------------------------------------------------------------------------


def test_a_parquet_panel_with_a_ticker_column_loads(tmp_path):
    """A long-format export, rows ordered by date with the tickers interleaved."""
    path = tmp_path / "panel.parquet"
    synthetic_panel().sort_values(["Date", "ticker"]).to_parquet(path, index=False)
    config = DataConfig(source=str(path))
    panel, source = load_panel(config, 1)
    assert source == str(path)
    assert sorted(panel["ticker"].unique()) == ["AAA", "BBB"]
    assert pd.api.types.is_datetime64_any_dtype(panel["Date"])
    data = prepare_dataset(panel, config, 1, source)
    assert data.tickers == ("AAA", "BBB")
    assert_no_window_or_label_crosses_a_boundary(panel, data)


def test_a_csv_without_ticker_column_is_one_series_named_after_the_file(tmp_path):
    path = write_csv(random_walk_ohlcv(800, seed=0), tmp_path, "spy.csv")
    panel, _ = load_panel(DataConfig(source=str(path)), 1)
    assert set(panel["ticker"]) == {"spy"}


# --- dataset cache ---------------------------------------------------------------------------


def assert_same_data(a: PreparedData, b: PreparedData) -> None:
    np.testing.assert_array_equal(a.features, b.features)
    for split in SPLITS:
        np.testing.assert_array_equal(a.anchors[split], b.anchors[split])
        np.testing.assert_array_equal(a.labels[split], b.labels[split])
    assert (a.window, a.horizon, a.tickers) == (b.window, b.horizon, b.tickers)
    assert a.split_dates == b.split_dates and a.boundaries == b.boundaries


def test_the_dataset_cache_reuses_rebuilds_and_keys_on_content(tmp_path):
    csv = write_csv(random_walk_ohlcv(900, seed=0), tmp_path)
    config, cache = DataConfig(source=str(csv)), tmp_path / "cache"

    first, path = cached_dataset(config, 1, cache)
    assert path.exists() and path.parent == cache
    stamp = path.stat().st_mtime_ns
    again, same_path = cached_dataset(config, 1, cache)
    assert same_path == path and path.stat().st_mtime_ns == stamp, "the second call reads the cache"
    assert_same_data(first, again)

    path.write_bytes(b"torn")  # a half-written or stale file is rebuilt, never trusted
    rebuilt, rebuilt_path = cached_dataset(config, 1, cache)
    assert rebuilt_path == path
    assert_same_data(first, rebuilt)

    assert cached_dataset(config, 3, cache)[1] != path, "the horizon is part of the key"
    assert cached_dataset(config.model_copy(update={"threshold": 0.02}), 1, cache)[1] != path
    write_csv(random_walk_ohlcv(900, seed=1), tmp_path)  # same file name, new content
    assert cached_dataset(config, 1, cache)[1] != path


def test_prepared_data_survives_save_and_load(tmp_path):
    data = prepare_dataset(synthetic_panel(), DataConfig(window=20), 3, "synthetic")
    data.save(tmp_path / "deep" / "data.npz")
    assert_same_data(data, PreparedData.load(tmp_path / "deep" / "data.npz"))
    assert not list((tmp_path / "deep").glob("*.tmp*")), "no temporary file is left behind"
