"""Trials to a near-best configuration: the factored architecture space against categorical
`arch_idx` against random search, on synthetic response surfaces over the real grids.

    python bench/search_space.py                               # 2M and 20M, seeds 0-19
    python bench/search_space.py --seeds 20 --seed-offset 100 --startup 5 10 --candidates 24 64   # a sweep

The surface (one per seed, the same for every method at that seed; fixed before any measurement):
each dimension's value is placed on [0, 1] (`position`: log scale for the architecture
dimensions and the learning rate, rank for dropout and weight decay), and

    val_auc = 0.70 - 0.05 ((d_model - c_d)^2 + (n_layers - c_L)^2)     a bowl in width and depth
                   + s_h (n_heads - 0.5) + s_r (d_ff_ratio - 0.5)       linear, s ~ U(-0.01, 0.01)
                   - 0.04 (learning_rate - c_lr)^2                       a bowl in the learning rate
                   + s_p (dropout - 0.5) + s_w (weight_decay - 0.5)      linear, s ~ U(-0.004, 0.004)
                   + noise, std 0.01 (the trial-to-trial noise the user's report shows)

with the centres c ~ U(0, 1). A run counts the trials (the six forced extremes included, as in a
real study) until the first whose noise-free value is within 0.003 of the best value anywhere on
the budget's grid x search space; a run that gets there in none of `--max-trials` counts as
max-trials + 1 (censored, and reported). Each method uses the study's own code: the sampler of
`tasks.study.space.make_sampler` (random: Optuna's RandomSampler over `arch_idx`),
`space.suggest` and `space.enqueue_extremes`, with Optuna's in-memory storage.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.arch_grid import Architecture, get_architectures_for_budget  # noqa: E402
from schemas.config import SearchSpace  # noqa: E402
from schemas.tracking import ARCH_PARAMS  # noqa: E402
from tasks.study import space  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

NOISE_STD = 0.01
TOLERANCE = 0.003
SEARCH = SearchSpace()


def position(values: list[float], value: float, log: bool) -> float:
    """Where `value` lies among `values` on [0, 1]: by log value, or by rank (0 cannot be logged)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return 0.5
    if log:
        low, high = math.log(ordered[0]), math.log(ordered[-1])
        return (math.log(value) - low) / (high - low)
    return ordered.index(value) / (len(ordered) - 1)


@dataclass(frozen=True)
class Surface:
    """One synthetic response surface over a grid and the search space."""

    grid: tuple[Architecture, ...]
    centre: dict[str, float]
    slope: dict[str, float]
    dim_values: dict[str, list[int]]  # each architecture dimension's values on the grid

    @classmethod
    def draw(cls, grid: list[Architecture], seed: int) -> Surface:
        rng = np.random.default_rng(seed)
        centre = {"d_model": rng.uniform(), "n_layers": rng.uniform(), "learning_rate": rng.uniform()}
        slope = {"n_heads": rng.uniform(-0.01, 0.01), "d_ff_ratio": rng.uniform(-0.01, 0.01),
                 "dropout": rng.uniform(-0.004, 0.004), "weight_decay": rng.uniform(-0.004, 0.004)}
        return cls(tuple(grid), centre, slope, {dim: sorted({getattr(a, dim) for a in grid}) for dim in ARCH_PARAMS})

    def value(self, arch: Architecture, hp: dict[str, float]) -> float:
        """The noise-free val AUC of this configuration."""
        at = {dim: position(self.dim_values[dim], getattr(arch, dim), log=True) for dim in ARCH_PARAMS}
        at["learning_rate"] = position(list(SEARCH.learning_rates), hp["learning_rate"], log=True)
        at["dropout"] = position(list(SEARCH.dropouts), hp["dropout"], log=False)
        at["weight_decay"] = position(list(SEARCH.weight_decays), hp["weight_decay"], log=False)
        c, s = self.centre, self.slope
        return (
            0.70
            - 0.05 * ((at["d_model"] - c["d_model"]) ** 2 + (at["n_layers"] - c["n_layers"]) ** 2)
            + s["n_heads"] * (at["n_heads"] - 0.5) + s["d_ff_ratio"] * (at["d_ff_ratio"] - 0.5)
            - 0.04 * (at["learning_rate"] - c["learning_rate"]) ** 2
            + s["dropout"] * (at["dropout"] - 0.5) + s["weight_decay"] * (at["weight_decay"] - 0.5)
        )  # fmt: skip

    def all_values(self) -> np.ndarray:
        hps = [{"learning_rate": lr, "dropout": p, "weight_decay": w}
               for lr in SEARCH.learning_rates for p in SEARCH.dropouts for w in SEARCH.weight_decays]  # fmt: skip
        return np.array([self.value(a, hp) for a in self.grid for hp in hps])


def sampler_for(method: str, grid: list[Architecture], seed: int, startup: int | None, candidates: int | None):
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if startup is None and candidates is None:
        return space.make_sampler(method, grid, seed)  # what a study uses
    tpe = {"seed": seed, "n_startup_trials": startup or space.FACTORED_STARTUP_TRIALS,
           "n_ei_candidates": candidates or space.FACTORED_EI_CANDIDATES}
    return space.InBandTPESampler(grid, **tpe) if method == "factored" else optuna.samplers.TPESampler(**tpe)


def trials_to_target(method: str, grid: list[Architecture], seed: int, max_trials: int,
                     startup: int | None = None, candidates: int | None = None) -> int:
    """Trials until the first within TOLERANCE of the surface's best; max_trials + 1 if none."""
    surface = Surface.draw(grid, seed)
    target = surface.all_values().max() - TOLERANCE
    noise = np.random.default_rng(10_000 + seed)
    kind = "factored" if method == "factored" else "categorical"
    study = optuna.create_study(direction="maximize", sampler=sampler_for(method, grid, seed, startup, candidates))
    space.enqueue_extremes(study, kind, grid, SEARCH)
    for n in range(1, max_trials + 1):
        trial = study.ask()
        arch, hp = space.suggest(trial, kind, grid, SEARCH)
        true = surface.value(arch, hp)
        if true >= target:
            return n
        study.tell(trial, true + noise.normal(0, NOISE_STD))
    return max_trials + 1


def summarise(counts: list[int], max_trials: int) -> str:
    q1, median, q3 = np.percentile(counts, [25, 50, 75])
    censored = sum(c > max_trials for c in counts)
    return f"median {median:5.1f}  IQR [{q1:.0f}, {q3:.0f}]" + (f"  ({censored} of {len(counts)} not within {max_trials})" if censored else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", default=["2M", "20M"])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed-offset", type=int, default=0, help="surfaces and samplers of seeds offset..offset+seeds-1")
    parser.add_argument("--max-trials", type=int, default=200)
    parser.add_argument("--methods", nargs="+", default=["factored", "categorical", "random"])
    parser.add_argument("--startup", type=int, nargs="*", default=[], help="sweep: TPE n_startup_trials values (both TPE methods)")
    parser.add_argument("--candidates", type=int, nargs="*", default=[], help="sweep: TPE n_ei_candidates values (both TPE methods)")
    args = parser.parse_args()

    load = " load average %.1f %.1f %.1f" % os.getloadavg()
    print(f"date {date.today().isoformat()}  {platform.processor() or platform.machine()}, {os.cpu_count()} cores,{load}  "
          f"optuna {optuna.__version__}")
    print(f"command: python {shlex.join(sys.argv)}")
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    sweep = [(s, c) for s in (args.startup or [None]) for c in (args.candidates or [None])]
    for budget in args.budgets:
        grid = get_architectures_for_budget(budget)
        surfaces = [Surface.draw(grid, seed).all_values() for seed in seeds]
        shares = [float(np.mean(values >= values.max() - TOLERANCE)) for values in surfaces]
        print(f"\n{budget}: {len(grid)} grid entries x {len(SEARCH.learning_rates) * len(SEARCH.dropouts) * len(SEARCH.weight_decays)} "
              f"hyperparameter combinations; share of the space within {TOLERANCE} of the best: median {statistics.median(shares):.4f}")
        medians: dict[tuple[str, str], float] = {}
        for setting in sweep:
            tag = "" if setting == (None, None) else f"startup={setting[0] or space.FACTORED_STARTUP_TRIALS} candidates={setting[1] or space.FACTORED_EI_CANDIDATES}"
            for method in args.methods:
                if method == "random" and setting != sweep[0]:
                    continue  # random search has no settings
                started = time.perf_counter()
                counts = [trials_to_target(method, grid, seed, args.max_trials, *setting) for seed in seeds]
                medians[(method, tag if method != "random" else "")] = float(np.median(counts))
                print(f"  {method:<12} {tag:<28} {summarise(counts, args.max_trials)}   ({time.perf_counter() - started:.0f} s)", flush=True)
            factored = medians.get(("factored", tag))
            if factored:
                for other, other_tag in (("categorical", tag), ("random", "")):
                    if (other, other_tag) in medians:
                        print(f"  {other} / factored {tag}: {medians[(other, other_tag)] / factored:.2f}x trials")


if __name__ == "__main__":
    main()
