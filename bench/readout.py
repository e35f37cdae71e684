"""Readout benchmark: mean pooling over the window's days against the last day's hidden state.

Trains the same architecture, seed and learning rate twice with the trainer of every trial
(`tasks.training.trainer.train_model`: relative warmup, cosine decay, early stopping on val AUC),
once per readout, on the bundled data, and prints each run's best val AUC beside the
logistic-regression baseline on the last day's features (the report's `logreg`). One CPU thread
by default, so runs on a shared machine are comparable.

    python bench/readout.py --arch smoke:10 --arch smoke:21 --horizon 1 --horizon 5 --seed 0 --seed 1
    python bench/readout.py --arch 2M:54 --horizon 1 --max-batches 8 --batch-size 64 --epochs 4

Each run prints a JSON line (for RESULTS.md), then a table per horizon.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch

import tasks.training.trainer as trainer
from models.arch_grid import get_architectures_for_budget
from models.transformer import ModelConfig
from schemas.config import DataConfig, TrainConfig
from tasks.data.dataset import load_panel, prepare_dataset
from tasks.training.baselines import fit_baseline

READOUTS = ("mean", "last")


def train_once(data, arch, readout: str, lr: float, seed: int, config: TrainConfig) -> dict:
    """One trial's training with the model's readout set to `readout`."""
    trainer.ModelConfig = partial(ModelConfig, readout=readout)  # the trainer builds the model
    try:
        started = time.perf_counter()
        hparams = trainer.Hyperparams(learning_rate=lr, dropout=0.1, weight_decay=1e-4)
        result, _ = trainer.train_model(data, arch, hparams, config.model_copy(update={"seed": seed}), data.window)
    finally:
        trainer.ModelConfig = ModelConfig
    return {
        "val_auc": round(result.val_auc, 4),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "pred_range": round(result.pred_range, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", required=True, help="BUDGET:ARCH_IDX, repeatable")
    parser.add_argument("--horizon", action="append", type=int, default=None, help="repeatable; default 1")
    parser.add_argument("--seed", action="append", type=int, default=None, help="repeatable; default 0")
    parser.add_argument("--lr", action="append", type=float, default=None, help="repeatable; default 5e-4")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batches", type=int, default=None, help="cap an epoch's batches")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    horizons, seeds, lrs = args.horizon or [1], args.seed or [0], args.lr or [5e-4]
    config = TrainConfig(
        max_epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
        max_batches_per_epoch=args.max_batches, device="cpu",
    )  # fmt: skip
    for horizon in horizons:
        panel, source = load_panel(DataConfig(), horizon)
        data = prepare_dataset(panel, DataConfig(), horizon, source)
        logreg = fit_baseline(data, "logreg").val_auc
        print(json.dumps({"horizon": horizon, "baseline": "logreg", "val_auc": round(logreg, 4)}), flush=True)
        rows = []
        for spec in args.arch:
            budget, idx = spec.split(":")
            arch = get_architectures_for_budget(budget)[int(idx)]
            for seed in seeds:
                for lr in lrs:
                    for readout in READOUTS:
                        run = train_once(data, arch, readout, lr, seed, config)
                        row = {"horizon": horizon, "arch": spec, "params": arch.params, "seed": seed, "lr": lr,
                               "readout": readout, **run}  # fmt: skip
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        print(f"\nh{horizon}: logreg (last day) val AUC {logreg:.4f}")
        print("arch        params   seed  lr      mean (best ep)    last (best ep)   last - mean")
        for i in range(0, len(rows), 2):
            mean, last = rows[i], rows[i + 1]
            print(f"{mean['arch']:<10} {mean['params']:>8,} {mean['seed']:>5}  {mean['lr']:<6g}  "
                  f"{mean['val_auc']:.4f} ({mean['best_epoch']})      {last['val_auc']:.4f} ({last['best_epoch']})"
                  f"      {last['val_auc'] - mean['val_auc']:+.4f}")  # fmt: skip
        print(flush=True)


if __name__ == "__main__":
    main()
