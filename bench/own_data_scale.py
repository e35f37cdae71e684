"""A researcher's panel at their scale: time and peak memory of preparing it, and of a trial's data setup.

Generates a feature panel (default 500 tickers x 5,000 business days x 25 feature columns, plus
label_h1/h3/h5) as Parquet, then in fresh processes (so each peak is its own):
  prepare  `cached_dataset` on a cold cache: read, validate, label, split, standardise, save the npz;
  setup    what a trial process does with it: `PreparedData.load` and the trainer's `DeviceData`,
           then one batch of windows built by indexing (never materialised for a split).
Prints wall seconds and peak RSS (ru_maxrss) of each; goal: prepared in < 60 s and < 4 GB.

    .venv/bin/python bench/own_data_scale.py [--tickers 500 --days 5000 --features 25]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_panel(path: Path, tickers: int, days: int, features: int, seed: int = 0) -> None:
    """Long format, Date then ticker order; labels depend on two features (a learnable signal)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("1990-01-01", periods=days)
    n = tickers * days
    x = rng.standard_normal((n, features), dtype=np.float32)
    frame = pd.DataFrame(x, columns=[f"f{j:02d}" for j in range(features)])
    frame.insert(0, "Date", np.tile(dates.to_numpy(), tickers))
    frame.insert(1, "ticker", np.repeat([f"T{i:03d}" for i in range(tickers)], days))
    signal = x[:, 0] + 0.5 * x[:, 1]
    for h in (1, 3, 5):
        frame[f"label_h{h}"] = (signal + rng.normal(scale=1.0, size=n) > 0).astype("int8")
    frame.sort_values(["Date", "ticker"], kind="stable").to_parquet(path, index=False)


def _child(step: str, source: str, features: int, cache: str) -> dict:
    from schemas.config import DataConfig
    from tasks.data.dataset import cached_dataset, dataset_fingerprint

    config = DataConfig(source=source, features=tuple(f"f{j:02d}" for j in range(features)), label="label_h{horizon}")
    started = time.perf_counter()
    if step == "prepare":
        data, path = cached_dataset(config, 5, Path(cache))
        figures = {"rows": int(data.features.shape[0]), "F": data.num_features,
                   "samples": {s: int(len(v)) for s, v in data.labels.items()}, "npz_mb": path.stat().st_size / 2**20}
    else:
        import torch

        from tasks.data.prepared import PreparedData
        from tasks.training.trainer import DeviceData

        path = Path(cache) / f"dataset_h5_{dataset_fingerprint(config, 5)}.npz"
        data = PreparedData.load(path)
        dev = DeviceData.from_prepared(data, torch.device("cpu"))
        batch = dev.batch(dev.anchors["train"][:256])  # (256, window, F), by indexing
        figures = {"batch": list(batch.shape)}
    figures["seconds"] = time.perf_counter() - started
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--days", type=int, default=5000)
    parser.add_argument("--features", type=int, default=25)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, source, features, cache = args.child
        print(json.dumps(_child(step, source, int(features), cache)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        panel = Path(tmp) / "panel.parquet"
        started = time.perf_counter()
        write_panel(panel, args.tickers, args.days, args.features)
        print(f"panel: {args.tickers} tickers x {args.days} days x {args.features} features, "
              f"{panel.stat().st_size / 2**20:.0f} MiB Parquet, generated in {time.perf_counter() - started:.1f} s")
        for step in ("prepare", "setup"):
            out = subprocess.run([sys.executable, __file__, "--child", step, str(panel), str(args.features), tmp],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{step}: {figures['seconds']:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MB  "
                  f"{ {k: v for k, v in figures.items() if k not in ('seconds', 'peak_rss_mb')} }")


if __name__ == "__main__":
    main()
