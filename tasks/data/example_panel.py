"""Write a small example feature panel from the bundled data: what a researcher's file looks like.

    .venv/bin/python -m tasks.data.example_panel example_panel.csv

Columns: Date, ticker, 12 of the 25 computed features (named as in tasks/data/features.py) and
label_h1, label_h3, label_h5 (the threshold rule's labels, empty where the future is unknown).
The warm-up rows, whose features are undefined, are dropped: a panel's features must be finite.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.data.dataset import load_bundled_panel
from tasks.data.features import compute_features, compute_labels

EXAMPLE_FEATURES = ("ret_1", "ret_5", "ret_20", "gap", "intraday_ret", "hl_range", "vol_5", "vol_20",
                    "atr_14", "sma_gap_20", "rsi_14", "volume_ratio_20")


def example_panel(threshold: float = 0.01):
    """The bundled S&P 500 and NASDAQ rows as a feature panel with label columns."""
    import pandas as pd

    frames = []
    for ticker, rows in load_bundled_panel().groupby("ticker", sort=False):
        rows = rows.reset_index(drop=True)
        frame = compute_features(rows)[list(EXAMPLE_FEATURES)]
        frame.insert(0, "Date", rows["Date"].dt.strftime("%Y-%m-%d"))
        frame.insert(1, "ticker", ticker)
        for horizon in (1, 3, 5):
            frame[f"label_h{horizon}"] = compute_labels(rows, horizon, threshold).astype("Int8")
        frames.append(frame.dropna(subset=list(EXAMPLE_FEATURES)))
    return pd.concat(frames, ignore_index=True)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "example_panel.csv")
    panel = example_panel()
    panel.to_csv(out, index=False)
    print(f"{out}: {len(panel)} rows, tickers {', '.join(panel['ticker'].unique())}, features {','.join(EXAMPLE_FEATURES)}")
