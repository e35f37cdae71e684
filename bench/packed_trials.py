"""Trials per hour: packed (bench.packed) against one trial at a time (tasks.training.trainer), same run.

    python bench/packed_trials.py --budget 2M --trials 16 --epochs 3
    python bench/packed_trials.py --budget smoke --trials 4 --epochs 1 --max-batches 5 --device cpu

Both paths train the same trials: one architecture, hyperparameters drawn from the default
search space (seeded), seeds seed..seed+N-1, the same TrainConfig (epochs, batches, batch
size, evaluation on val every epoch). One at a time calls `train_model` per trial in this process
(no per-trial process start or data load, which a real study pays: the comparison favours it);
packed calls `train_packed` on packs of --pack trials. Early stopping is off by default
(patience > epochs) so both paths do the same work; pass --patience to let trials stop.
An untimed one-step run of each path comes first (device context, kernels, allocator).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from _common import header, load_data, synchronize
from models.arch_grid import BUDGETS, get_architectures_for_budget
from schemas.config import SearchSpace, TrainConfig
from bench.packed import PackedTrial, train_packed
from tasks.training.trainer import Hyperparams, resolve_device, train_model


def draw_trials(n: int, seed: int) -> list[PackedTrial]:
    """n trials with hyperparameters drawn uniformly from the default search space."""
    space, rng = SearchSpace(), np.random.default_rng(seed)
    return [
        PackedTrial(
            Hyperparams(
                learning_rate=float(rng.choice(space.learning_rates)),
                dropout=float(rng.choice(space.dropouts)),
                weight_decay=float(rng.choice(space.weight_decays)),
            ),
            seed=seed + i,
        )
        for i in range(n)
    ]


def run_one_at_a_time(data, arch, trials, config) -> tuple[float, list[float]]:
    synchronize(resolve_device(config.device))
    started, aucs = time.perf_counter(), []
    for trial in trials:
        result, _ = train_model(data, arch, trial.hparams, config.model_copy(update={"seed": trial.seed}), data.window)
        aucs.append(result.val_auc)
    return time.perf_counter() - started, aucs


def run_packed(data, arch, trials, config, pack: int) -> tuple[float, list[float]]:
    synchronize(resolve_device(config.device))
    started, aucs = time.perf_counter(), []
    for first in range(0, len(trials), pack):
        for outcome in train_packed(data, arch, trials[first : first + pack], config, data.window):
            aucs.append(outcome.result.val_auc if outcome.result else float("nan"))
    return time.perf_counter() - started, aucs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=BUDGETS, default="2M")
    parser.add_argument("--arch-idx", type=int, default=0)
    parser.add_argument("--trials", type=int, default=16, help="trials per path")
    parser.add_argument("--pack", type=int, default=None, help="trials per pack (default: all of them)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=None, help="default: epochs + 1 (no early stop)")
    parser.add_argument("--max-batches", type=int, default=None, help="cap batches per epoch (default: full epochs)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-one-at-a-time", action="store_true", help="packed only (e.g. a long 50-trial run)")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    arch = get_architectures_for_budget(args.budget)[args.arch_idx]
    data = load_data()
    pack = args.pack or args.trials
    config = TrainConfig(
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience or args.epochs + 1,
        max_batches_per_epoch=args.max_batches,
        device=str(device),
    )
    trials = draw_trials(args.trials, args.seed)
    print(header(device))
    print(
        f"{args.budget} arch_idx={arch.arch_idx}: d_model={arch.d_model} n_layers={arch.n_layers} n_heads={arch.n_heads} "
        f"d_ff={arch.d_ff} params={arch.params:,}; {args.trials} trials, packs of {pack}; epochs={args.epochs} "
        f"patience={config.patience} batch_size={args.batch_size} max_batches={args.max_batches}"
    )
    warm = config.model_copy(update={"max_epochs": 1, "max_batches_per_epoch": 1})
    run_one_at_a_time(data, arch, trials[:1], warm)
    run_packed(data, arch, trials[: min(pack, 2)], warm, pack)

    figures = {}
    if not args.skip_one_at_a_time:
        figures["one_at_a_time"] = run_one_at_a_time(data, arch, trials, config)
    figures["packed"] = run_packed(data, arch, trials, config, pack)
    print(f"{'path':<14} {'trials':>6} {'seconds':>9} {'trials/hour':>12} {'mean val AUC':>13}")
    for path, (seconds, aucs) in figures.items():
        print(f"{path:<14} {len(aucs):>6} {seconds:>9.2f} {3600 * len(aucs) / seconds:>12.1f} {np.nanmean(aucs):>13.4f}")
    ratio = None
    if "one_at_a_time" in figures:
        ratio = figures["one_at_a_time"][0] / figures["packed"][0]
        print(f"packed / one-at-a-time: {ratio:.2f}x trials/hour")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"arch": arch.as_dict(), "args": vars(args), "figures": figures, "ratio": ratio}, handle, indent=2)


if __name__ == "__main__":
    main()
