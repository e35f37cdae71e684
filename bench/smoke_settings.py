"""Probe of the smoke switch's trial settings: one trial's training per architecture, timed.

    python bench/smoke_settings.py HORIZON BATCH_SIZE BATCHES_PER_EPOCH EPOCHS LR WINDOW BUDGET:IDX ...
    python bench/smoke_settings.py 5 64 20 4 1e-3 20 smoke-20M:10 smoke-2B:5

The trainer of every trial (`train_model`), patience 2, dropout 0.3, weight decay 1e-5 (the
forced extremes' central values), one CPU thread. Prints val AUC, prediction range, best and
last epoch, and the seconds the training took.
"""

from __future__ import annotations

import sys
import time

import torch

from models.arch_grid import get_architectures_for_budget
from schemas.config import DataConfig, TrainConfig
from tasks.data.dataset import load_panel, prepare_dataset
from tasks.training.trainer import Hyperparams, train_model


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    horizon, batch, batches, epochs, lr, window = int(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5])
    data_config = DataConfig(window=window)
    panel, source = load_panel(data_config, horizon)
    data = prepare_dataset(panel, data_config, horizon, source)
    config = TrainConfig(max_epochs=epochs, patience=2, batch_size=batch, max_batches_per_epoch=batches, device="cpu")
    for spec in argv[6:]:
        budget, idx = spec.split(":")
        arch = get_architectures_for_budget(budget)[int(idx)]
        started = time.perf_counter()
        result, _ = train_model(data, arch, Hyperparams(lr, 0.3, 1e-5), config, data.window)
        print(f"h{horizon} window {window} {spec} ({arch.params:,} params): val AUC {result.val_auc:.4f}, "
              f"pred_range {result.pred_range:.3f}, best epoch {result.best_epoch} of {result.epochs}, "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
