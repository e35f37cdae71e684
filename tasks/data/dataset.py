"""Load panels, validate them, and build windowed, standardised, chronologically split data.

Two kinds of panel (`DataConfig.features`): OHLCV rows, whose 25 features are computed here
(tasks/data/features.py), or a researcher's feature panel (Date, ticker, the listed feature
columns used as they are). The label is the built-in rule on High/Close, or the panel's own
0/1 column per horizon (`DataConfig.label`, a template such as `label_h{horizon}`).

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
from tasks.data.features import FEATURE_NAMES, WARMUP_DAYS, compute_features, compute_labels

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
        # The readers turn empty cells and NA markers ('n/a', 'NA', 'null', ...) into NaN, so the
        # cell's text is gone by now: name each column and its first row instead.
        per_column = values.isna().sum()
        columns = ", ".join(
            f"{column} ({int(n)}, the first at data row {values[column].isna().idxmax() + 1})"
            for column, n in per_column.items() if n
        )
        first = nan_rows.idxmax()
        raise DataError(
            source,
            f"{int(nan_rows.sum())} row(s) have missing values (empty cells or NA markers such as 'n/a') in "
            f"column(s) {columns}; the first at data row {first + 1} (Date {frame.loc[first, 'Date'].date()})",
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


def _first_row(mask: pd.Series | np.ndarray, frame: pd.DataFrame) -> str:
    """Where the first True of a row mask is, for an error message: data row, ticker, Date."""
    first = int(np.argmax(np.asarray(mask)))
    date = frame["Date"].iloc[first]
    when = date.date() if isinstance(date, pd.Timestamp) else date
    return f"data row {first + 1} (ticker {frame['ticker'].iloc[first]}, Date {when})"


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds (so a message shows 2, not np.int64(2))."""
    return value.item() if isinstance(value, np.generic) else value


def _index_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Date parsed, a ticker column present (the file's name when it has none)."""
    frame = frame.copy()
    if "ticker" not in frame.columns:
        frame["ticker"] = Path(source).stem if source != BUNDLED else "series"
    try:
        frame["Date"] = pd.to_datetime(frame["Date"])
    except (ValueError, TypeError) as exc:
        raise DataError(source, f"column Date cannot be parsed as dates ({exc})", "write dates as YYYY-MM-DD") from exc
    return frame


def validate_feature_panel(frame: pd.DataFrame, source: str, features: tuple[str, ...], min_rows: int,
                           label_column: str | None = None) -> pd.DataFrame:
    """Check a researcher's feature panel and return it sorted by (ticker, Date).

    Refuses: a missing Date or feature column, non-numeric, NaN or infinite feature values (with
    how many and where: no silent fill), a duplicated (ticker, Date) and tickers with fewer than
    `min_rows` rows. A panel sorted by Date then ticker (the usual long export) is re-sorted, never
    refused: the order of rows carries no meaning here, (ticker, Date) does.
    """
    missing = [c for c in ("Date", *features) if c not in frame.columns]
    if missing:
        shown = ", ".join(map(str, frame.columns[:12])) + (", ..." if len(frame.columns) > 12 else "")
        raise DataError(
            source,
            f"feature column(s) {', '.join(missing)} not found (columns: {shown})",
            "list existing columns in data.features (--features), or add them to the file",
        )
    frame = _index_columns(frame, source)
    for column in features:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            numbers = pd.to_numeric(frame[column], errors="coerce")
            not_numeric = numbers.isna() & frame[column].notna()
            raise DataError(
                source,
                f"feature column {column} has {int(not_numeric.sum())} non-numeric value(s), the first "
                f"{_plain(frame[column][not_numeric].iloc[0])!r} at {_first_row(not_numeric, frame)}",
                "write plain numbers in feature columns, or drop the column from data.features",
            )
    values = frame[list(features)].to_numpy(dtype="float64")
    bad = ~np.isfinite(values)
    if bad.any():
        per_column = bad.sum(axis=0)
        columns = ", ".join(f"{c} ({int(n)})" for c, n in zip(features, per_column) if n)
        rows = bad.any(axis=1)
        raise DataError(
            source,
            f"{int(bad.sum())} NaN or infinite feature value(s) in {int(rows.sum())} row(s), by column: {columns}; "
            f"the first at {_first_row(rows, frame)}",
            "fill or drop them before training (nothing is filled for you: a fill is a modelling choice)",
        )
    duplicated = frame.duplicated(["ticker", "Date"])
    if duplicated.any():
        raise DataError(
            source,
            f"{int(duplicated.sum())} duplicated (ticker, Date) row(s) in columns ticker, Date, the first at "
            f"{_first_row(duplicated, frame)}",
            "keep one row per ticker and Date",
        )
    if label_column is not None:  # before sorting: its data row numbers are the file's
        frame = validate_label_column(frame, source, label_column)
    frame = frame.sort_values(["ticker", "Date"], kind="stable").reset_index(drop=True)
    _check_history(frame, source, min_rows)
    return frame


def _check_history(frame: pd.DataFrame, source: str, min_rows: int) -> None:
    counts = frame.groupby("ticker", sort=False).size()
    short = counts[counts < min_rows]
    if len(short):
        raise DataError(
            source,
            f"{len(short)} ticker(s) with too few rows for a window and the horizon in each of the three splits "
            f"(need at least {min_rows}; {short.index[0]} has {int(short.iloc[0])})",
            "drop those tickers from the file, provide a longer history, or reduce data.window",
        )


def validate_label_column(frame: pd.DataFrame, source: str, column: str) -> pd.DataFrame:
    """Check the panel's own label column: present, and 0/1 (an empty cell: unknown, not used)."""
    if column not in frame.columns:
        labels = [c for c in frame.columns if str(c).startswith("label")][:6]
        found = f"label-like columns: {', '.join(map(str, labels))}" if labels else "no column starts with 'label'"
        raise DataError(
            source,
            f"label column {column} not found ({found})",
            "add the column, or set data.label (--label) to a template that names it, e.g. 'label_h{horizon}'",
        )
    numbers = pd.to_numeric(frame[column], errors="coerce")
    bad = ~(numbers.isin((0, 1)) | frame[column].isna())
    if bad.any():
        raise DataError(
            source,
            f"label column {column} has {int(bad.sum())} value(s) that are not 0/1, the first "
            f"{_plain(frame[column][bad].iloc[0])!r} at {_first_row(bad, frame)}",
            "write 1 for the event and 0 for its absence (leave a cell empty where the future is unknown)",
        )
    frame[column] = numbers.astype("float64")
    return frame


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


def _ohlcv_rows(panel: pd.DataFrame, config: DataConfig, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of the stacked panel: the 25 computed features, the rule's label (NaN where the
    future is not in the data) and whether the row is past its ticker's feature warm-up."""
    blocks, label_parts, ok_parts = [], [], []
    for _, rows in panel.groupby("ticker", sort=False):
        rows = rows.reset_index(drop=True)
        feats = compute_features(rows).to_numpy(dtype="float64")
        label_parts.append(compute_labels(rows, horizon, config.threshold).to_numpy())
        # features_ok: True from the first row after which every row is finite (the warm-up ends)
        bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
        features_ok = np.zeros(len(rows), dtype=bool)
        features_ok[(bad.max() + 1 if len(bad) else 0) :] = True
        blocks.append(feats)
        ok_parts.append(features_ok)
    return np.concatenate(blocks), np.concatenate(label_parts), np.concatenate(ok_parts)


def prepare_dataset(panel: pd.DataFrame, config: DataConfig, horizon: int, source: str) -> PreparedData:
    """Features, labels, chronological splits with gaps, train-only standardisation.

    The panel's rows are stacked ticker by ticker (a validated panel is sorted that way). Split
    dates are cut once on the panel's distinct dates, so every ticker's train ends on the same day
    (`split_boundaries`); a window or label never crosses a ticker's or a split's edge.
    """
    train_end, val_end = split_boundaries(panel["Date"], config.train_fraction, config.val_fraction)
    label_column = config.label_column(horizon)
    ticker_codes, tickers = pd.factorize(panel["ticker"], sort=False)
    if (np.diff(ticker_codes) < 0).any():  # interleaved tickers: stack them in order of first appearance
        panel = panel.iloc[np.argsort(ticker_codes, kind="stable")].reset_index(drop=True)
        ticker_codes, tickers = pd.factorize(panel["ticker"], sort=False)
    if config.features == "ohlcv":
        raw, labels, features_ok = _ohlcv_rows(panel, config, horizon)
    else:
        raw = panel[list(config.features)].to_numpy(dtype="float64")  # (rows, F)
        labels, features_ok = np.full(len(panel), np.nan), np.ones(len(panel), dtype=bool)
    if label_column is not None:
        labels = panel[label_column].to_numpy(dtype="float64")
    # each ticker's rows are contiguous: ticker number x 3 + split code is one segment of the stack
    dates = panel["Date"].to_numpy()
    split_code = np.where(dates <= np.datetime64(train_end), 0, np.where(dates <= np.datetime64(val_end), 1, 2))
    segment = ticker_codes.astype("int64") * 3 + split_code
    usable = valid_anchor_mask(segment, features_ok, config.window, horizon) & np.isfinite(labels)
    anchors = {s: np.flatnonzero(usable & (split_code == code)).astype("int64") for code, s in enumerate(SPLITS)}
    split_labels = {s: labels[anchors[s]].astype("float32") for s in SPLITS}
    for split in SPLITS:
        if len(split_labels[split]) == 0 or split_labels[split].min() == split_labels[split].max():
            raise DataError(source, *_single_class(split, split_labels[split], horizon, label_column))
    features = standardise(raw, train_rows_for_statistics(anchors["train"], config.window))
    split_dates = {s: (str(pd.Timestamp(dates[anchors[s]].min()).date()), str(pd.Timestamp(dates[anchors[s]].max()).date()))
                   for s in SPLITS}
    return PreparedData(
        features=features,
        anchors=anchors,
        labels=split_labels,
        window=config.window,
        horizon=horizon,
        split_dates=split_dates,
        boundaries={"train_end": str(train_end.date()), "val_end": str(val_end.date())},
        tickers=tuple(str(t) for t in tickers),
        feature_names=feature_names(config),
    )


def _single_class(split: str, labels: np.ndarray, horizon: int, label_column: str | None) -> tuple[str, str]:
    """The problem and the fix of a split whose label has one class (or no samples)."""
    if label_column is None:
        return (f"the {split} split has {len(labels)} samples with a single class at h{horizon}",
                "provide a longer history, or change data.threshold so both outcomes occur")
    value = f"always {int(labels[0])}" if len(labels) else "no usable rows"
    return (f"label column {label_column} is constant on the {split} split ({value}, {len(labels)} samples)",
            "check the label column (both 0 and 1 must occur in train, val and test), or move the split "
            "with data.train_fraction / data.val_fraction")


def feature_names(config: DataConfig) -> tuple[str, ...]:
    """The names of the F columns of the feature matrix, in order."""
    return FEATURE_NAMES if config.features == "ohlcv" else tuple(config.features)


def train_rows_for_statistics(train_anchors: np.ndarray, window: int) -> np.ndarray:
    """Every feature row that some training window reads (and nothing of val or test), sorted.

    A window is the run of rows anchor-window+1 .. anchor: counted by a difference array (+1 where
    a window starts, -1 past its end), never by listing anchors x window row numbers."""
    if len(train_anchors) == 0:
        return np.zeros(0, dtype="int64")
    size = int(train_anchors.max()) + 2
    starts = np.bincount(train_anchors - window + 1, minlength=size)
    ends = np.bincount(train_anchors + 1, minlength=size)
    return np.flatnonzero(np.cumsum(starts - ends)[:-1] > 0).astype("int64")


def standardise(raw: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """(x - mean) / std with train-row statistics only; clipped; warm-up NaNs become 0."""
    train = raw[train_rows]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    del train
    std[std == 0] = 1.0
    scaled = raw - mean  # in place from here on: one copy of the matrix, not one per step
    scaled /= std
    np.clip(scaled, -FEATURE_CLIP, FEATURE_CLIP, out=scaled)
    return np.nan_to_num(scaled, copy=False, nan=0.0, posinf=0.0, neginf=0.0).astype("float32")


def minimum_rows(config: DataConfig, horizon: int) -> int:
    """The shortest ticker history for which each split can hold a few windows."""
    per_split = config.window + horizon + 10
    smallest_fraction = min(config.train_fraction, config.val_fraction, 1 - config.train_fraction - config.val_fraction)
    warmup = WARMUP_DAYS if config.features == "ohlcv" else 0  # listed features are used as they are
    return int(np.ceil(per_split / smallest_fraction)) + warmup


def load_panel(config: DataConfig, horizon: int) -> tuple[pd.DataFrame, str]:
    """The validated panel and a label for error messages (the file path or 'bundled')."""
    if config.source == BUNDLED:
        frame, source = load_bundled_panel(), BUNDLED
    else:
        path = Path(config.source).expanduser()
        frame, source = read_panel_file(path), str(path)
    if config.source == BUNDLED and (config.features != "ohlcv" or config.label != "rule"):
        raise DataError(BUNDLED, "the bundled data is OHLCV only: it has no feature or label columns",
                        "set data.source (--data) to your panel's CSV or Parquet file, or keep features='ohlcv', label='rule'")
    label_column = config.label_column(horizon)
    if config.features == "ohlcv":
        panel = validate_panel(frame, source, minimum_rows(config, horizon))
    else:
        keep = ["Date", "ticker", *config.features, *([label_column] if label_column else [])]
        frame = frame[[c for c in frame.columns if c in keep]] if "Date" in frame.columns else frame
        panel = validate_feature_panel(frame, source, tuple(config.features), minimum_rows(config, horizon), label_column)
    if label_column is not None and config.features == "ohlcv":
        panel = validate_label_column(panel, source, label_column)
    return panel, source


def dataset_fingerprint(config: DataConfig, horizon: int) -> str:
    """Cache key: the data config, the horizon, the feature list and the source file's content.

    The OHLCV defaults (features='ohlcv', label='rule') are left out of the key, so a dataset keeps
    the fingerprint it had before feature panels existed (studies and MLflow inputs stay pinned)."""
    dumped = config.model_dump(mode="json")
    for key, default in (("features", "ohlcv"), ("label", "rule")):
        if dumped[key] == default:
            del dumped[key]
    hasher = hashlib.sha256(json.dumps([dumped, horizon, list(feature_names(config))]).encode())
    if config.source != BUNDLED:
        path = Path(config.source).expanduser()
        if path.exists():
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 24), b""):
                    hasher.update(chunk)
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



class DatasetMismatch(ValueError):
    """A study, a joining worker, a supplemental or retrain run on other data than its study's."""


def dataset_record(config: DataConfig, data: PreparedData) -> dict[str, object]:
    """What pins a study's dataset: its fingerprint and what a reader compares (file, features,
    label, window, horizon, split dates)."""
    return {
        "fingerprint": dataset_fingerprint(config, data.horizon),
        "source": config.source if config.source == BUNDLED else str(Path(config.source).expanduser().resolve()),
        "features": list(data.feature_names or feature_names(config)),
        "num_features": data.num_features,
        "label": config.label if config.label != "rule" else f"rule (threshold {config.threshold:g})",
        "window": data.window,
        "horizon": data.horizon,
        "split_dates": {"train_end": data.boundaries["train_end"], "val_end": data.boundaries["val_end"]},
    }


def dataset_differences(recorded: dict, current: dict) -> list[str]:
    """What differs between two dataset records, in words (empty: only the file's content)."""
    found = []
    for key in ("source", "label", "window", "horizon", "split_dates"):
        if key in recorded and recorded.get(key) != current.get(key):
            found.append(f"{key} {recorded.get(key)} -> {current.get(key)}")
    before, after = recorded.get("features"), current.get("features")
    if isinstance(before, list) and before != after:
        gone = [c for c in before if c not in after]
        new = [c for c in after if c not in before]
        what = [f"F {len(before)} -> {len(after)}"]
        what += [f"missing {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}"] if gone else []
        what += [f"new {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}"] if new else []
        found.append("features " + ("; ".join(what) if gone or new else "in another order"))
    elif before is not None and not isinstance(before, list) and recorded.get("num_features") != current.get("num_features"):
        found.append(f"features F {recorded.get('num_features')} -> {current.get('num_features')}")
    return found or ["the file's content (same path, features, label, window and splits)"]


def mismatch_message(what: str, recorded: dict, current: dict) -> str:
    """One line: which study refuses which data, both fingerprints and what differs."""
    return (f"{what} was made on dataset {recorded.get('fingerprint')}, this run's data is {current['fingerprint']} "
            f"({'; '.join(dataset_differences(recorded, current))}). Fix: run it with the study's data "
            "(the same --data, --features, --label, --window), or start a new version with --fresh")
