"""The 25 daily features and the labels. Pure functions of one ticker's OHLCV frame.

Every feature on day t is *causal*: it uses rows up to and including t only (trailing rolling
windows, lags, never a shift into the future). The tests check this by perturbing every row
after t and asserting the features up to t do not move.

Notation: O, H, L, C, V are day t's open, high, low, close, volume; C[-k] is the close k trading
days earlier; r = ln(C / C[-1]); ln is the natural log; mean/std/max/min over n are trailing
windows of n days ending at t (std with ddof=1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where features are computed, not by every trial process
    import pandas as pd

# (name, formula): the order is the column order of the feature matrix.
FEATURES: tuple[tuple[str, str], ...] = (
    ("ret_1", "ln(C / C[-1])"),
    ("ret_5", "ln(C / C[-5])"),
    ("ret_10", "ln(C / C[-10])"),
    ("ret_20", "ln(C / C[-20])"),
    ("ret_60", "ln(C / C[-60])"),
    ("gap", "ln(O / C[-1])"),
    ("intraday_ret", "ln(C / O)"),
    ("hl_range", "ln(H / L)"),
    ("upper_shadow", "ln(H / max(O, C))"),
    ("lower_shadow", "ln(min(O, C) / L)"),
    ("high_vs_prev_close", "ln(H / C[-1])"),
    ("vol_5", "std(r, 5)"),
    ("vol_20", "std(r, 20)"),
    ("vol_60", "std(r, 60)"),
    ("parkinson_20", "sqrt(mean(ln(H/L)^2, 20) / (4 ln 2))"),
    ("atr_14", "mean(TR, 14) / C, TR = max(H - L, |H - C[-1]|, |L - C[-1]|)"),
    ("vol_ratio_5_20", "std(r, 5) / std(r, 20)"),
    ("sma_gap_5", "C / mean(C, 5) - 1"),
    ("sma_gap_20", "C / mean(C, 20) - 1"),
    ("sma_gap_50", "C / mean(C, 50) - 1"),
    ("rsi_14", "mean(max(dC, 0), 14) / (mean(max(dC, 0), 14) + mean(max(-dC, 0), 14)) - 0.5, dC = C - C[-1]"),
    ("range_pos_20", "(C - min(L, 20)) / (max(H, 20) - min(L, 20))"),
    ("drawdown_20", "ln(C / max(H, 20))"),
    ("volume_change", "ln((V + 1) / (V[-1] + 1))"),
    ("volume_ratio_20", "ln((V + 1) / (mean(V, 20) + 1))"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _ in FEATURES)
NUM_FEATURES = len(FEATURES)
# Rows at the start of each ticker whose features are undefined (the longest lookback, ret_60 / vol_60).
WARMUP_DAYS = 60


def compute_features(ohlcv: pd.DataFrame) -> pd.DataFrame:
    """25 causal features for one ticker's rows (sorted by date); the first rows are NaN (warm-up)."""
    import pandas as pd

    o, h, l, c = (ohlcv[k].astype("float64") for k in ("Open", "High", "Low", "Close"))
    v = ohlcv["Volume"].astype("float64")
    prev_c = c.shift(1)
    r = np.log(c / prev_c)
    vol_5, vol_20 = r.rolling(5).std(), r.rolling(20).std()
    true_range = pd.concat([h - l, (h - prev_c).abs(), (l - prev_c).abs()], axis=1).max(axis=1, skipna=False)
    dc = c.diff()
    gains, losses = dc.clip(lower=0).rolling(14).mean(), (-dc).clip(lower=0).rolling(14).mean()
    low_20, high_20 = l.rolling(20).min(), h.rolling(20).max()
    columns = {
        "ret_1": r,
        "ret_5": np.log(c / c.shift(5)),
        "ret_10": np.log(c / c.shift(10)),
        "ret_20": np.log(c / c.shift(20)),
        "ret_60": np.log(c / c.shift(60)),
        "gap": np.log(o / prev_c),
        "intraday_ret": np.log(c / o),
        "hl_range": np.log(h / l),
        "upper_shadow": np.log(h / np.maximum(o, c)),
        "lower_shadow": np.log(np.minimum(o, c) / l),
        "high_vs_prev_close": np.log(h / prev_c),
        "vol_5": vol_5,
        "vol_20": vol_20,
        "vol_60": r.rolling(60).std(),
        "parkinson_20": np.sqrt((np.log(h / l) ** 2).rolling(20).mean() / (4 * np.log(2))),
        "atr_14": true_range.rolling(14).mean() / c,
        # a flat 20-day stretch has vol_20 = 0: call the ratio 1 (no regime change) rather than inf
        "vol_ratio_5_20": (vol_5 / vol_20).where(vol_20 > 0, 1.0).where(vol_20.notna()),
        "sma_gap_5": c / c.rolling(5).mean() - 1,
        "sma_gap_20": c / c.rolling(20).mean() - 1,
        "sma_gap_50": c / c.rolling(50).mean() - 1,
        "rsi_14": (gains / (gains + losses)).where(gains + losses > 0, 0.5).where(gains.notna()) - 0.5,
        "range_pos_20": ((c - low_20) / (high_20 - low_20)).where(high_20 > low_20, 0.5).where(high_20.notna()),
        "drawdown_20": np.log(c / high_20),
        "volume_change": np.log((v + 1) / (v.shift(1) + 1)),
        "volume_ratio_20": np.log((v + 1) / (v.rolling(20).mean() + 1)),
    }
    features = pd.DataFrame(columns, index=ohlcv.index)
    assert tuple(features.columns) == FEATURE_NAMES
    return features


def compute_labels(ohlcv: pd.DataFrame, horizon: int, threshold: float) -> pd.Series:
    """1.0 when max(High[t+1 .. t+horizon]) >= Close[t] * (1 + threshold), else 0.0; NaN for the
    last `horizon` rows, whose future is not in the data."""
    import pandas as pd

    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    high = ohlcv["High"].astype("float64").to_numpy()
    close = ohlcv["Close"].astype("float64").to_numpy()
    n = len(high)
    future_max = np.full(n, np.nan)
    for k in range(1, horizon + 1):
        shifted = np.full(n, np.nan)
        shifted[: n - k] = high[k:]
        future_max = np.fmax(future_max, shifted) if k > 1 else shifted
    labels = (future_max >= close * (1 + threshold)).astype("float64")
    labels[n - horizon :] = np.nan
    return pd.Series(labels, index=ohlcv.index, name=f"label_h{horizon}")
