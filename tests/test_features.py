"""The 25 daily features (documented, causal) and the labels (a hand-worked example)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.data.dataset import load_bundled_panel
from tasks.data.features import FEATURE_NAMES, FEATURES, NUM_FEATURES, WARMUP_DAYS, compute_features, compute_labels

# The 25 features the mission names, in the column order checkpoints were trained on, each with the
# row of a ticker's history where it is first defined (its lookback: ret_5 needs C[-5], so row 5;
# a 20-day mean of same-day values needs rows 0..19, so row 19).
FIRST_DEFINED_ROW = {
    "ret_1": 1, "ret_5": 5, "ret_10": 10, "ret_20": 20, "ret_60": 60,
    "gap": 1, "intraday_ret": 0, "hl_range": 0, "upper_shadow": 0, "lower_shadow": 0, "high_vs_prev_close": 1,
    "vol_5": 5, "vol_20": 20, "vol_60": 60, "parkinson_20": 19, "atr_14": 14, "vol_ratio_5_20": 20,
    "sma_gap_5": 4, "sma_gap_20": 19, "sma_gap_50": 49, "rsi_14": 14, "range_pos_20": 19, "drawdown_20": 19,
    "volume_change": 1, "volume_ratio_20": 19,
}


def random_walk_ohlcv(n: int, seed: int) -> pd.DataFrame:
    """A plausible daily OHLCV series: Low <= Open, Close <= High, positive volume."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, n)))
    volume = rng.integers(1_000_000, 5_000_000, n).astype("float64")
    dates = pd.bdate_range("2001-01-01", periods=n)
    return pd.DataFrame({"Date": dates, "Open": open_, "High": high, "Low": low, "Close": close, "Volume": volume})


def perturb_after(frame: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """The same frame with every price and volume after row t changed (still positive)."""
    rng = np.random.default_rng(seed)
    changed = frame.astype({"Volume": "float64"})
    later = changed.index > t
    for column in ("Open", "High", "Low", "Close", "Volume"):
        changed.loc[later, column] *= rng.uniform(0.5, 1.5, later.sum())
    return changed


def test_the_25_named_features_in_order_each_documented():
    assert len(FIRST_DEFINED_ROW) == 25
    assert FEATURE_NAMES == tuple(FIRST_DEFINED_ROW) and NUM_FEATURES == 25
    for name, formula in FEATURES:
        assert formula.strip(), f"{name} has no formula"
    features = compute_features(random_walk_ohlcv(100, seed=0))
    assert tuple(features.columns) == tuple(FIRST_DEFINED_ROW)


def test_each_feature_is_first_defined_after_its_lookback():
    features = compute_features(random_walk_ohlcv(100, seed=6))
    for name, row in FIRST_DEFINED_ROW.items():
        assert features[name].iloc[:row].isna().all(), f"{name} is defined before row {row}: it cannot be"
        assert np.isfinite(features[name].iloc[row:]).all(), f"{name} is still undefined from row {row}"


@pytest.mark.parametrize("t", [0, 5, 30, 59, 60, 61, 120, 250, 398])
def test_a_feature_on_day_t_uses_nothing_after_t(t):
    frame = random_walk_ohlcv(400, seed=1)
    before = compute_features(frame)
    after = compute_features(perturb_after(frame, t, seed=t))
    pd.testing.assert_frame_equal(before.iloc[: t + 1], after.iloc[: t + 1], check_exact=True)
    # the perturbation is real: the day after t does move (unless t is the last day)
    if t + 1 < len(frame):
        assert not before.iloc[t + 1].equals(after.iloc[t + 1])


def test_features_are_causal_on_the_bundled_data():
    sp500 = load_bundled_panel().query("ticker == 'SP500'").reset_index(drop=True)
    before = compute_features(sp500)
    for t in (1000, 3000):
        after = compute_features(perturb_after(sp500, t, seed=t))
        pd.testing.assert_frame_equal(before.iloc[: t + 1], after.iloc[: t + 1], check_exact=True)


def test_features_are_defined_from_the_end_of_the_warm_up():
    assert WARMUP_DAYS == max(FIRST_DEFINED_ROW.values()) == 60  # ret_60 and vol_60
    for frame in (random_walk_ohlcv(300, seed=2), load_bundled_panel().query("ticker == 'NASDAQ'")):
        features = compute_features(frame.reset_index(drop=True))
        assert np.isfinite(features.iloc[60:].to_numpy()).all()
        assert features.iloc[59].isna().any(), "the longest lookback needs 60 rows"


def test_features_follow_their_documented_formulas():
    frame = random_walk_ohlcv(200, seed=3)
    features = compute_features(frame)
    o, h, l, c, v = (frame[k].to_numpy() for k in ("Open", "High", "Low", "Close", "Volume"))
    t = 150
    r = np.log(c[1:] / c[:-1])  # r[k - 1] is day k's log return
    last = slice(t - 19, t + 1)  # the 20 days ending at t
    true_range = [max(h[k] - l[k], abs(h[k] - c[k - 1]), abs(l[k] - c[k - 1])) for k in range(t - 13, t + 1)]
    dc = np.diff(c)[t - 14 : t]  # dC over the 14 days ending at t
    gains, losses = np.clip(dc, 0, None).mean(), np.clip(-dc, 0, None).mean()
    expected = {
        "ret_1": np.log(c[t] / c[t - 1]),
        "ret_5": np.log(c[t] / c[t - 5]),
        "ret_10": np.log(c[t] / c[t - 10]),
        "ret_20": np.log(c[t] / c[t - 20]),
        "ret_60": np.log(c[t] / c[t - 60]),
        "gap": np.log(o[t] / c[t - 1]),
        "intraday_ret": np.log(c[t] / o[t]),
        "hl_range": np.log(h[t] / l[t]),
        "upper_shadow": np.log(h[t] / max(o[t], c[t])),
        "lower_shadow": np.log(min(o[t], c[t]) / l[t]),
        "high_vs_prev_close": np.log(h[t] / c[t - 1]),
        "vol_5": np.std(r[t - 5 : t], ddof=1),
        "vol_20": np.std(r[t - 20 : t], ddof=1),
        "vol_60": np.std(r[t - 60 : t], ddof=1),
        "parkinson_20": np.sqrt(np.mean(np.log(h[last] / l[last]) ** 2) / (4 * np.log(2))),
        "atr_14": np.mean(true_range) / c[t],
        "vol_ratio_5_20": np.std(r[t - 5 : t], ddof=1) / np.std(r[t - 20 : t], ddof=1),
        "sma_gap_5": c[t] / c[t - 4 : t + 1].mean() - 1,
        "sma_gap_20": c[t] / c[last].mean() - 1,
        "sma_gap_50": c[t] / c[t - 49 : t + 1].mean() - 1,
        "rsi_14": gains / (gains + losses) - 0.5,
        "range_pos_20": (c[t] - l[last].min()) / (h[last].max() - l[last].min()),
        "drawdown_20": np.log(c[t] / h[last].max()),
        "volume_change": np.log((v[t] + 1) / (v[t - 1] + 1)),
        "volume_ratio_20": np.log((v[t] + 1) / (v[last].mean() + 1)),
    }
    assert set(expected) == set(FIRST_DEFINED_ROW), "every feature's formula is checked by hand"
    for name, value in expected.items():
        assert features[name].iloc[t] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_flat_prices_give_finite_features():
    """A stretch with no movement has zero volatility and range: the ratios fall back, not inf."""
    frame = random_walk_ohlcv(120, seed=4)
    frame.loc[:, ["Open", "High", "Low", "Close"]] = 50.0
    features = compute_features(frame)
    assert np.isfinite(features.iloc[60:].to_numpy()).all()
    assert (features["vol_ratio_5_20"].iloc[60:] == 1.0).all()
    assert (features["range_pos_20"].iloc[60:] == 0.5).all()
    assert (features["rsi_14"].iloc[60:] == 0.0).all()


def hand_example() -> pd.DataFrame:
    """Eight days; labels worked out by hand below with threshold 2% (target = Close x 1.02)."""
    return pd.DataFrame(
        {
            "Open": [100.0, 100, 103, 101, 99, 99, 99, 97],
            "High": [103.0, 101, 105, 103, 100, 102, 99, 98],
            "Low": [99.0, 99, 102, 99, 98, 98, 97, 96],
            "Close": [100.0, 100, 104, 100, 99, 100, 98, 97],
            "Volume": [1e6] * 8,
        }
    )


def test_labels_at_horizon_1_on_a_hand_worked_example():
    # target = Close x 1.02:      102   102   106.08  102   100.98  102   99.96  98.94
    # next day's High:            101   105   103     100   102     99    98     -
    # day 0: its own High 103 reaches 102, but only the *next* days count.
    labels = compute_labels(hand_example(), horizon=1, threshold=0.02)
    expected = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, np.nan]
    np.testing.assert_array_equal(labels.to_numpy(), expected)
    assert labels.name == "label_h1"


def test_labels_at_horizon_3_on_a_hand_worked_example():
    # target = Close x 1.02:        102   102   106.08  102   100.98
    # max High of the next 3 days:  105   105   103     102   102
    # day 3 reaches its target exactly (102 >= 102): "reaches" includes equality.
    labels = compute_labels(hand_example(), horizon=3, threshold=0.02)
    expected = [1.0, 1.0, 0.0, 1.0, 1.0, np.nan, np.nan, np.nan]
    np.testing.assert_array_equal(labels.to_numpy(), expected)


def test_the_threshold_is_configurable():
    # target = Close x 1.05:        105   105   109.2   105   103.95
    # max High of the next 3 days:  105   105   103     102   102
    labels = compute_labels(hand_example(), horizon=3, threshold=0.05)
    np.testing.assert_array_equal(labels.to_numpy(), [1.0, 1.0, 0.0, 0.0, 0.0, np.nan, np.nan, np.nan])


@pytest.mark.parametrize("horizon", [1, 3, 5])
def test_the_last_horizon_rows_have_no_label(horizon):
    labels = compute_labels(random_walk_ohlcv(50, seed=5), horizon, threshold=0.01)
    assert labels.iloc[-horizon:].isna().all()
    assert labels.iloc[:-horizon].isin([0.0, 1.0]).all()


def test_a_horizon_below_one_is_refused():
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        compute_labels(hand_example(), horizon=0, threshold=0.01)
