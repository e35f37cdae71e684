"""The prepared dataset as the trainer sees it: numpy arrays and their file format.

Kept apart from `dataset.py` (which builds it with pandas) so that a trial process, which only
loads a prepared file, starts without importing pandas: every trial pays that start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """Standardised features of all tickers stacked, and per split the anchor rows and labels."""

    features: np.ndarray  # (rows, F) float32, standardised with train statistics
    anchors: dict[str, np.ndarray]  # split -> (n,) int64 rows whose window ends there
    labels: dict[str, np.ndarray]  # split -> (n,) float32 in {0, 1}
    window: int
    horizon: int
    split_dates: dict[str, tuple[str, str]]  # split -> first and last anchor date (ISO)
    boundaries: dict[str, str]  # last date of train and of val (ISO)
    tickers: tuple[str, ...]
    feature_names: tuple[str, ...] = ()  # the F column names, in order

    @property
    def num_features(self) -> int:
        """F, the features per day."""
        return int(self.features.shape[1])

    def windows(self, split: str) -> np.ndarray:
        """(n, window, F) windows of a split, materialised (baselines and tests only)."""
        offsets = np.arange(-self.window + 1, 1)
        return self.features[self.anchors[split][:, None] + offsets]

    def ticker_days(self, split: str) -> int:
        """The unique (ticker, day) rows a split's windows read. Windows end at their anchors and
        never cross a ticker's rows, so sorted anchors a gap g apart add min(g, window) new rows."""
        anchors = np.sort(self.anchors[split])
        if not len(anchors):
            return 0
        return int(self.window + np.minimum(np.diff(anchors), self.window).sum())

    def summary(self) -> dict[str, object]:
        return {
            split: {"samples": int(len(self.labels[split])), "positive_rate": float(self.labels[split].mean())}
            for split in SPLITS
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "window": self.window,
            "horizon": self.horizon,
            "split_dates": self.split_dates,
            "boundaries": self.boundaries,
            "tickers": list(self.tickers),
            "feature_names": list(self.feature_names),
        }
        arrays = {"features": self.features, "meta": np.array(json.dumps(meta))}
        for split in SPLITS:
            arrays[f"anchors_{split}"] = self.anchors[split]
            arrays[f"labels_{split}"] = self.labels[split]
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file

    @classmethod
    def load(cls, path: Path) -> PreparedData:
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"]))
            return cls(
                features=archive["features"],
                anchors={s: archive[f"anchors_{s}"] for s in SPLITS},
                labels={s: archive[f"labels_{s}"] for s in SPLITS},
                window=meta["window"],
                horizon=meta["horizon"],
                split_dates={k: tuple(v) for k, v in meta["split_dates"].items()},
                boundaries=meta["boundaries"],
                tickers=tuple(meta["tickers"]),
                feature_names=tuple(meta.get("feature_names", ())),
            )
