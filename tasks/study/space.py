"""A study's search space: what the sampler draws, and how a draw becomes a grid architecture.

Two kinds of architecture space; a study keeps the kind it was created with (study user attr
`arch_space`; a study without it predates the choice and is `categorical`):

- `categorical`: `arch_idx`, one unordered category over the budget's grid (24 to 77 entries).
  TPE learns nothing across entries from it: each index is its own category.
- `factored`: the architecture through its ordered dimensions d_model, n_layers, n_heads and
  d_ff_ratio, each an integer on a log scale between the grid's smallest and largest value, so
  TPE can learn "fewer layers score better" from every trial. Only in-band grid entries come
  out: `InBandTPESampler` moves each of TPE's candidates to its nearest grid entry *before*
  scoring them, so the draw is the best-scoring in-band candidate (not the best free candidate
  moved somewhere it was never scored), and the trial's params are exactly the entry trained.

Both record the entry's `arch_idx` (and the study its grid version), so MLflow, the report and
the legacy records read the same whichever space a study used. The hyperparameters
(learning_rate, dropout, weight_decay) are categorical over the config's values in both; the
forced extremes are the same architectures with the same central hyperparameters in both.

Which kind is the default, and why, is measured in bench/search_space.py (bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import FrozenTrial

from models.arch_grid import Architecture, forced_extremes
from schemas.config import ArchSpaceKind, SearchSpace
from schemas.tracking import ARCH_PARAMS

ARCH_SPACES: tuple[str, ...] = get_args(ArchSpaceKind)
ATTR_ARCH_SPACE = "arch_space"  # study user attr: the kind the study was created with
LEGACY_ARCH_SPACE: ArchSpaceKind = "categorical"  # studies made before the attr existed
ATTR_EXTREME = "extreme_type"  # trial user attr of the enqueued forced extremes


def study_arch_space(user_attrs: Mapping[str, Any]) -> ArchSpaceKind:
    """The kind a study was created with; refuses a kind this code does not know."""
    kind = user_attrs.get(ATTR_ARCH_SPACE, LEGACY_ARCH_SPACE)
    if kind not in ARCH_SPACES:
        raise ValueError(
            f"the study was created with arch_space={kind!r}, which this version does not know "
            f"(known: {', '.join(ARCH_SPACES)}); run it with the version that created it, or start a --fresh one"
        )
    return kind


# ---------------------------------------------------------------- the factored encoding


class FactoredGrid:
    """A grid seen through its ordered dimensions: each dimension's distribution, and the nearest
    grid entry to any point, with distance measured per dimension on a log scale normalised by
    the grid's log range of that dimension (so n_layers' wide range does not dominate n_heads)."""

    def __init__(self, grid: Sequence[Architecture]):
        if not grid:
            raise ValueError("an empty grid has no architecture to search; check the budget's band and grid version")
        self.grid = tuple(grid)
        values = {dim: sorted({getattr(a, dim) for a in grid}) for dim in ARCH_PARAMS}
        self.distributions: dict[str, IntDistribution] = {
            dim: IntDistribution(vs[0], vs[-1], log=True) for dim, vs in values.items()
        }
        # dimensions with one value (the smoke grid's d_ff_ratio) are not drawn: Optuna fixes them
        self.free = tuple(dim for dim, d in self.distributions.items() if not d.single())
        self._low = np.array([math.log(values[d][0]) for d in self.free])
        self._span = np.array([math.log(values[d][-1]) - math.log(values[d][0]) for d in self.free])
        self._points = self._scaled(np.array([[getattr(a, d) for d in self.free] for a in grid], dtype=float))

    def _scaled(self, raw: np.ndarray) -> np.ndarray:  # (n, len(free)) values -> [0, 1] log coords
        return (np.log(raw) - self._low) / self._span

    def nearest_indices(self, raw: np.ndarray) -> np.ndarray:
        """Per row of free-dimension values (n, len(free)): the position of its nearest grid entry
        (ties: the lower arch_idx)."""
        gaps = self._scaled(np.asarray(raw, dtype=float))[:, None, :] - self._points[None, :, :]  # (n, grid, free)
        return np.argmin((gaps**2).sum(axis=2), axis=1)

    def nearest(self, params: Mapping[str, float]) -> Architecture:
        """The grid entry nearest to these dimension values (absent ones do not count)."""
        row = np.array([[params[d] for d in self.free]], dtype=float)
        return self.grid[int(self.nearest_indices(row)[0])]

    def find(self, params: Mapping[str, float]) -> Architecture:
        """The grid entry with exactly these dimension values (KeyError when a drawn dimension is
        missing); a clear error when there is none."""
        key = tuple(int(params[d]) if d in self.free or d in params else self.distributions[d].low for d in ARCH_PARAMS)
        for arch in self.grid:
            if (arch.d_model, arch.n_layers, arch.n_heads, arch.d_ff_ratio) == key:
                return arch
        raise LookupError(
            f"no grid entry has {dict(zip(ARCH_PARAMS, key))}: the trial's architecture is not in this grid; "
            "was the study created with another grid version?"
        )


class InBandTPESampler(optuna.samplers.TPESampler):
    """Multivariate TPE over the factored dimensions whose every draw is a grid entry.

    The architecture dimensions are always in the relative search space, so they are drawn
    together: before TPE has enough trials, as one uniformly random grid entry (a random point
    in the box would favour entries next to empty regions); afterwards TPE's candidates are moved
    to their nearest grid entries and then scored, and the best-scoring one is drawn. The final
    projection in `sample_relative` is a guarantee, not the mechanism: should a later Optuna
    stop calling `_compute_acquisition_func` with the candidates, draws stay in band (the tests
    check both).
    """

    def __init__(self, grid: Sequence[Architecture], **tpe: Any):
        super().__init__(multivariate=True, **tpe)
        self.factored = FactoredGrid(grid)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = super().infer_relative_search_space(study, trial)
        return {**space, **{d: self.factored.distributions[d] for d in self.factored.free}}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        params = super().sample_relative(study, trial, search_space)
        free = self.factored.free
        if all(d in params for d in free):
            arch = self.factored.nearest(params)
        else:  # TPE's start-up trials: a random entry, from TPE's own seeded generator
            arch = self.factored.grid[int(self._rng.rng.randint(len(self.factored.grid)))]
        return {**params, **{d: getattr(arch, d) for d in free}}

    def _compute_acquisition_func(self, samples: dict[str, np.ndarray], mpe_below, mpe_above) -> np.ndarray:
        free = self.factored.free
        if all(d in samples for d in free):
            rows = self.factored.nearest_indices(np.stack([samples[d] for d in free], axis=1))
            for dim in free:
                samples[dim] = np.array([getattr(self.factored.grid[i], dim) for i in rows], dtype=float)
        return super()._compute_acquisition_func(samples, mpe_below, mpe_above)


# ---------------------------------------------------------------- what a study uses


# TPE settings of the factored space: Optuna's defaults, the same as the categorical space's. A
# sweep (bench/search_space.py, 200 surfaces; bench/RESULTS.md) found no setting better at both
# budgets: 64 candidates 27 vs 30 trials at 2M and 22 vs 22 at 20M, 6 start-up trials no better.
FACTORED_STARTUP_TRIALS = 10
FACTORED_EI_CANDIDATES = 24


def make_sampler(kind: ArchSpaceKind, grid: Sequence[Architecture], seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler: TPE (Optuna's defaults) over `arch_idx`, or in-band TPE over the factored dimensions."""
    if kind == "factored":
        return InBandTPESampler(grid, seed=seed, n_startup_trials=FACTORED_STARTUP_TRIALS,
                                n_ei_candidates=FACTORED_EI_CANDIDATES)
    return optuna.samplers.TPESampler(seed=seed)


def suggest(trial: optuna.Trial, kind: ArchSpaceKind, grid: Sequence[Architecture],
            search: SearchSpace) -> tuple[Architecture, dict[str, float]]:
    """The search space, in one place: the architecture and three hyperparameters. Called once by
    the loop that claims the trial (the sampler decides) and again by whoever runs it (Optuna
    then returns the values already drawn)."""
    if kind == "factored":
        factored = FactoredGrid(grid)
        drawn = {d: trial.suggest_int(d, dist.low, dist.high, log=True) for d, dist in factored.distributions.items()}
        arch = factored.find(drawn)
    else:
        arch = grid[trial.suggest_categorical("arch_idx", list(range(len(grid))))]
    hparams = {
        "learning_rate": trial.suggest_categorical("learning_rate", list(search.learning_rates)),
        "dropout": trial.suggest_categorical("dropout", list(search.dropouts)),
        "weight_decay": trial.suggest_categorical("weight_decay", list(search.weight_decays)),
    }
    return arch, hparams


def arch_params(kind: ArchSpaceKind, arch: Architecture) -> dict[str, int]:
    """The Optuna params that draw this architecture in a space of this kind."""
    if kind == "factored":
        return {d: getattr(arch, d) for d in ARCH_PARAMS}
    return {"arch_idx": arch.arch_idx}


def trial_architecture(kind: ArchSpaceKind, grid: Sequence[Architecture], params: Mapping[str, Any]) -> Architecture:
    """The architecture a finished trial trained, from its Optuna params."""
    if kind == "factored":
        return FactoredGrid(grid).find(params)
    return grid[int(params["arch_idx"])]


def enqueue_extremes(study: optuna.Study, kind: ArchSpaceKind, grid: Sequence[Architecture], search: SearchSpace) -> None:
    """Trials 0-5: min/max d_model, n_layers, n_heads, with central hyperparameters."""
    central = search.central()
    for extreme_type, arch in forced_extremes(list(grid)):
        study.enqueue_trial({**arch_params(kind, arch), **central}, user_attrs={ATTR_EXTREME: extreme_type})
