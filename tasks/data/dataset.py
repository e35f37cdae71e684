"""Load OHLCV panels, validate them, and build windowed, standardised, chronologically split data.

Loading and the dataset cache are I/O (the edge); splitting and standardising are pure functions
of arrays. The windows themselves are never materialised: a split is a list of *anchor* rows into
one feature matrix, and a batch of windows is `features[anchor - window + 1 .. anchor]`, built by
indexing on whatever device holds the matrix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.config import DataConfig
from tasks.data.prepared import SPLITS, PreparedData  # noqa: F401 - re-exported: the dataset's public names
from tasks.data.features import FEATURE_NAMES, NUM_FEATURES, WARMUP_DAYS, compute_features, compute_labels

REQUIRED_COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume")
# Standardised features are clipped here: a few crash days sit 20+ sigma out and would dominate.
FEATURE_CLIP = 10.0
BUNDLED = "bundled"


class DataError(ValueError):
    """Bad input data: the message names the file, the problem and the fix."""

    def __init__(self, source: str, problem: str, fix: str):
        super().__init__(f"{source}: {problem}. Fix: {fix}")
        self.source, self.problem, self.fix = source, problem, fix


def load_bundled_panel() -> pd.DataFrame:
    """S&P 500 and NASDAQ Composite daily OHLCV, 1999-2018, as shipped by the `arch` package."""
    from arch.data import nasdaq, sp500

    frames = []
    for ticker, module in (("SP500", sp500), ("NASDAQ", nasdaq)):
        frame = module.load().reset_index()
        frame["ticker"] = ticker
        frames.append(frame[["Date", "ticker", "Open", "High", "Low", "Close", "Volume"]])
    return pd.concat(frames, ignore_index=True)


def read_panel_file(path: Path) -> pd.DataFrame:
    """Read a user's CSV or Parquet file (Date, Open, High, Low, Close, Volume[, ticker])."""
    if not path.exists():
        raise DataError(str(path), "file not found", "pass an existing CSV or Parquet file, or source='bundled'")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a DataError naming the file
        raise DataError(str(path), f"cannot be read ({exc})", "check it is a valid CSV or Parquet file") from exc
    raise DataError(str(path), f"unsupported file type {suffix!r}", "use a .csv or .parquet file")


def validate_panel(frame: pd.DataFrame, source: str, min_rows: int) -> pd.DataFrame:
    """Check a panel and return it normalised (Date parsed, ticker column present, sorted).

    Refuses: missing columns, non-numeric values, NaNs, non-positive prices, unsorted or duplicate dates within a
    ticker, and tickers with fewer than `min_rows` rows. Nothing is silently dropped or reordered
    behind the user's back: unsorted input is an error, because it usually means a broken export.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            source,
            f"missing column(s) {', '.join(missing)} (found: {', '.join(map(str, frame.columns))})",
            f"provide columns {', '.join(REQUIRED_COLUMNS)} and optionally 'ticker'",
        )
    frame = frame.copy()
    if "ticker" not in frame.columns:
        frame["ticker"] = Path(source).stem if source != BUNDLED else "series"
    try:
        frame["Date"] = pd.to_datetime(frame["Date"])
    except (ValueError, TypeError) as exc:
        raise DataError(source, f"column Date cannot be parsed as dates ({exc})", "write dates as YYYY-MM-DD") from exc
    for column in REQUIRED_COLUMNS[1:]:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        not_numeric = numbers.isna() & frame[column].notna()
        if not_numeric.any():
            first = not_numeric.idxmax()
            raise DataError(
                source,
                f"column {column} has {int(not_numeric.sum())} non-numeric value(s), the first "
                f"{frame.loc[first, column]!r} at data row {first + 1}",
                "write plain numbers (no thousands separators, currency signs or text)",
            )
        frame[column] = numbers
    values = frame[list(REQUIRED_COLUMNS[1:])]
    nan_rows = values.isna().any(axis=1)
    if nan_rows.any():
        first = nan_rows.idxmax()
        raise DataError(
            source,
            f"{int(nan_rows.sum())} row(s) have missing values, the first at data row {first + 1} "
            f"(Date {frame.loc[first, 'Date'].date()})",
            "fill or remove those rows before training",
        )
    prices = frame[["Open", "High", "Low", "Close"]]
    bad_prices = (prices <= 0).any(axis=1) | (frame["Volume"] < 0)
    if bad_prices.any():
        first = bad_prices.idxmax()
        raise DataError(
            source,
            f"{int(bad_prices.sum())} row(s) have a non-positive price or negative volume, the first at data row {first + 1}",
            "remove or correct those rows",
        )
    for ticker, rows in frame.groupby("ticker", sort=False):
        dates = rows["Date"]
        duplicated = dates.duplicated()
        if duplicated.any():
            raise DataError(
                source,
                f"ticker {ticker}: duplicate date {dates[duplicated].iloc[0].date()} ({int(duplicated.sum())} duplicates)",
                "keep one row per ticker and date",
            )
        if not dates.is_monotonic_increasing:
            position = int(np.argmax(dates.diff().dt.days.to_numpy()[1:] < 0)) + 1
            raise DataError(
                source,
                f"ticker {ticker}: dates are not sorted (data row {rows.index[position] + 1}, "
                f"{dates.iloc[position].date()} comes after {dates.iloc[position - 1].date()})",
                "sort the file by ticker and Date ascending",
            )
        if len(rows) < min_rows:
            raise DataError(
                source,
                f"ticker {ticker}: {len(rows)} rows, too few for the feature warm-up, a window and the horizon "
                f"in each of the three splits (need at least {min_rows})",
                "provide a longer history, or reduce data.window",
            )
    return frame.reset_index(drop=True)


def split_boundaries(dates: pd.Series, train_fraction: float, val_fraction: float) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Last date of train and of val, cut on the panel's sorted distinct dates."""
    distinct = np.sort(dates.unique())
    n = len(distinct)
    train_end = distinct[max(int(n * train_fraction) - 1, 0)]
    val_end = distinct[max(int(n * (train_fraction + val_fraction)) - 1, 0)]
    return pd.Timestamp(train_end), pd.Timestamp(val_end)


def valid_anchor_mask(segment: np.ndarray, features_ok: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """Rows t of one ticker usable as anchors inside their own split segment.

    A window covers rows t-window+1 .. t and its label reads rows t+1 .. t+horizon; all of them
    must lie in the same segment (the gap: no window or label crosses a split boundary), and the
    window's first row must be past the feature warm-up (`features_ok` is True from there on).
    """
    n = len(segment)
    rows = np.arange(n)
    first, last = rows - window + 1, rows + horizon
    inside = (first >= 0) & (last < n)
    ok = np.zeros(n, dtype=bool)
    idx = rows[inside]
    ok[idx] = (segment[first[inside]] == segment[idx]) & (segment[last[inside]] == segment[idx])
    ok[idx] &= features_ok[first[inside]]
    return ok


def prepare_dataset(panel: pd.DataFrame, config: DataConfig, horizon: int, source: str) -> PreparedData:
    """Features, labels, chronological splits with gaps, train-only standardisation."""
    train_end, val_end = split_boundaries(panel["Date"], config.train_fraction, config.val_fraction)
    blocks, anchor_parts, label_parts, date_parts = [], {s: [] for s in SPLITS}, {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    offset = 0
    tickers = []
    for ticker, rows in panel.groupby("ticker", sort=False):
        rows = rows.reset_index(drop=True)
        feats = compute_features(rows).to_numpy(dtype="float64")
        labels = compute_labels(rows, horizon, config.threshold).to_numpy()
        finite = np.isfinite(feats).all(axis=1)
        # features_ok: True from the first row after which every row is finite (the warm-up ends)
        bad = np.flatnonzero(~finite)
        features_ok = np.zeros(len(rows), dtype=bool)
        features_ok[(bad.max() + 1 if len(bad) else 0) :] = True
        dates = rows["Date"].to_numpy()
        segment = np.where(dates <= np.datetime64(train_end), 0, np.where(dates <= np.datetime64(val_end), 1, 2))
        usable = valid_anchor_mask(segment, features_ok, config.window, horizon) & np.isfinite(labels)
        for code, split in enumerate(SPLITS):
            picked = np.flatnonzero(usable & (segment == code))
            anchor_parts[split].append(picked + offset)
            label_parts[split].append(labels[picked].astype("float32"))
            date_parts[split].append(dates[picked])
        blocks.append(feats)
        tickers.append(str(ticker))
        offset += len(rows)

    raw = np.concatenate(blocks)
    anchors = {s: np.concatenate(anchor_parts[s]).astype("int64") for s in SPLITS}
    labels = {s: np.concatenate(label_parts[s]) for s in SPLITS}
    for split in SPLITS:
        if len(labels[split]) == 0 or labels[split].min() == labels[split].max():
            raise DataError(
                source,
                f"the {split} split has {len(labels[split])} samples with a single class at h{horizon}",
                "provide a longer history, or change data.threshold so both outcomes occur",
            )
    features = standardise(raw, train_rows_for_statistics(anchors["train"], config.window))
    split_dates = {}
    for split in SPLITS:
        d = np.concatenate(date_parts[split])
        split_dates[split] = (str(pd.Timestamp(d.min()).date()), str(pd.Timestamp(d.max()).date()))
    return PreparedData(
        features=features,
        anchors=anchors,
        labels=labels,
        window=config.window,
        horizon=horizon,
        split_dates=split_dates,
        boundaries={"train_end": str(train_end.date()), "val_end": str(val_end.date())},
        tickers=tuple(tickers),
    )


def train_rows_for_statistics(train_anchors: np.ndarray, window: int) -> np.ndarray:
    """Every feature row that some training window reads (and nothing of val or test)."""
    offsets = np.arange(-window + 1, 1)
    return np.unique((train_anchors[:, None] + offsets).ravel())


def standardise(raw: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """(x - mean) / std with train-row statistics only; clipped; warm-up NaNs become 0."""
    train = raw[train_rows]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    scaled = np.clip((raw - mean) / std, -FEATURE_CLIP, FEATURE_CLIP)
    return np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0).astype("float32")


def minimum_rows(config: DataConfig, horizon: int) -> int:
    """The shortest ticker history for which each split can hold a few windows."""
    per_split = config.window + horizon + 10
    smallest_fraction = min(config.train_fraction, config.val_fraction, 1 - config.train_fraction - config.val_fraction)
    return int(np.ceil(per_split / smallest_fraction)) + WARMUP_DAYS


def load_panel(config: DataConfig, horizon: int) -> tuple[pd.DataFrame, str]:
    """The validated panel and a label for error messages (the file path or 'bundled')."""
    if config.source == BUNDLED:
        frame, source = load_bundled_panel(), BUNDLED
    else:
        path = Path(config.source).expanduser()
        frame, source = read_panel_file(path), str(path)
    return validate_panel(frame, source, minimum_rows(config, horizon)), source


def dataset_fingerprint(config: DataConfig, horizon: int) -> str:
    """Cache key: the data config, the horizon, the feature list and the source file's content."""
    hasher = hashlib.sha256(json.dumps([config.model_dump(mode="json"), horizon, FEATURE_NAMES]).encode())
    if config.source != BUNDLED:
        path = Path(config.source).expanduser()
        if path.exists():
            hasher.update(path.read_bytes())
    return hasher.hexdigest()[:16]


def cached_dataset(config: DataConfig, horizon: int, cache_dir: Path) -> tuple[PreparedData, Path]:
    """Prepare once per (data config, horizon, content) and reuse the npz; trial processes load it."""
    path = cache_dir / f"dataset_h{horizon}_{dataset_fingerprint(config, horizon)}.npz"
    if path.exists():
        try:
            return PreparedData.load(path), path
        except Exception:  # noqa: BLE001 - a torn or stale cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    panel, source = load_panel(config, horizon)
    data = prepare_dataset(panel, config, horizon, source)
    data.save(path)
    return data, path


assert NUM_FEATURES == 25, "the model and the grid count 25 features per day"
