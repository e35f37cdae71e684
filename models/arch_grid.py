"""The architecture grid: which transformer shapes each parameter budget searches over.

Pure arithmetic: no torch, no I/O. The parameter count here is exact and is checked against
`sum(p.numel())` of the instantiated `models.transformer.TransformerClassifier` in the tests.

How `arch_idx` stays meaningful across grid versions
----------------------------------------------------
A grid version is built from candidate value sets per budget. Version N+1 may only *add*
candidate values. Its list is version N's list, unchanged and in the same order, followed by the
architectures that only the new values make possible (in the same deterministic product order).
So every `arch_idx` of an older version denotes the same architecture in every later version, and
an `arch_idx` beyond the old list's length is new. Even so, every record stores the grid version
beside `arch_idx` (Optuna, MLflow, legacy JSON), because the list of a version is what a study's
sampler searched over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from itertools import product

DEFAULT_NUM_FEATURES = 25

# Budget name -> inclusive band on the exact parameter count.
BUDGET_BANDS: dict[str, tuple[int, int]] = {
    "smoke": (2_000, 60_000),
    "2M": (1_500_000, 2_500_000),
    "20M": (15_000_000, 25_000_000),
    "200M": (150_000_000, 250_000_000),
    "2B": (1_500_000_000, 2_500_000_000),
    # The smoke ladder: under the smoke switch each real budget's study searches its own stand-in
    # band, so a smoke campaign compares different sizes as the real one does. Band medians are
    # about 2.8k, 9.4k, 30k and 100k parameters (each ~3.3x the one before), all trainable on one
    # CPU core in seconds; the bands do not overlap.
    "smoke-2M": (2_000, 4_000),
    "smoke-20M": (6_500, 13_000),
    "smoke-200M": (20_000, 40_000),
    "smoke-2B": (60_000, 120_000),
}
BUDGETS: tuple[str, ...] = tuple(BUDGET_BANDS)
REAL_BUDGETS: tuple[str, ...] = ("2M", "20M", "200M", "2B")


def smoke_budget(budget: str) -> str:
    """The smoke ladder's stand-in of a real budget (`20M` -> `smoke-20M`); smoke budgets map to themselves."""
    if budget == "smoke" or budget.startswith("smoke-"):
        return check_budget(budget)
    if budget not in REAL_BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    return f"smoke-{budget}"


@dataclass(frozen=True)
class CandidateValues:
    """The values a budget's grid draws from; the grid is their product, filtered by the band."""

    d_model: tuple[int, ...]
    n_layers: tuple[int, ...]
    n_heads: tuple[int, ...]
    d_ff_ratio: tuple[int, ...]

    def extended(self, **more: tuple[int, ...]) -> CandidateValues:
        """These values plus `more` (new values are appended, never reordered)."""
        merged = {}
        for name, values in asdict(self).items():
            extra = tuple(v for v in more.get(name, ()) if v not in values)
            merged[name] = tuple(values) + extra
        return CandidateValues(**merged)


# Version 1: the grid the legacy (pre-2025-12) runs used; legacy arch_idx values refer to it.
_V1 = {
    "smoke": CandidateValues(d_model=(16, 32, 48), n_layers=(1, 2, 3), n_heads=(1, 2, 4), d_ff_ratio=(2,)),
    "2M": CandidateValues(
        d_model=(32, 48, 64, 80, 96, 128, 160),
        n_layers=(2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48),
        n_heads=(2, 4, 8),
        d_ff_ratio=(2, 4),
    ),
    "20M": CandidateValues(
        d_model=(64, 96, 128, 160, 192, 256, 320, 384, 512),
        n_layers=(4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128),
        n_heads=(4, 8),
        d_ff_ratio=(2, 4),
    ),
    "200M": CandidateValues(
        d_model=(256, 384, 512, 640, 768, 1024, 1280),
        n_layers=(6, 8, 10, 12, 16, 20, 24, 32, 48, 64),
        n_heads=(8, 16),
        d_ff_ratio=(2, 4),
    ),
    "2B": CandidateValues(
        d_model=(1024, 1536, 2048, 2560, 3072),
        n_layers=(12, 16, 20, 24, 32, 48, 64, 96),
        n_heads=(16, 32),
        d_ff_ratio=(2, 4),
    ),
}

# The smoke ladder's grids (not in the legacy runs; the same in every version): one candidate set,
# each band keeps the shapes whose exact count it holds.
_SMOKE_LADDER = CandidateValues(
    d_model=(8, 16, 24, 32, 48, 64, 96), n_layers=(1, 2, 3, 4, 6, 8), n_heads=(1, 2, 4, 8), d_ff_ratio=(2, 4)
)
_V1.update({f"smoke-{budget}": _SMOKE_LADDER for budget in ("2M", "20M", "200M", "2B")})

# Version 2 (current): the supplemental plan's extensions, L=64 for 2M and L=160/180 for 20M.
_V2 = dict(_V1)
_V2["2M"] = _V1["2M"].extended(n_layers=(64,))
_V2["20M"] = _V1["20M"].extended(n_layers=(160, 180))

GRID_VERSIONS: dict[int, dict[str, CandidateValues]] = {1: _V1, 2: _V2}
CURRENT_GRID_VERSION = max(GRID_VERSIONS)
LEGACY_GRID_VERSION = 1


@dataclass(frozen=True)
class Architecture:
    arch_idx: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    d_ff_ratio: int
    params: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ArchitectureOutOfBudget(ValueError):
    """An explicitly requested architecture whose exact count lies outside its budget's band."""


def count_parameters(d_model: int, n_layers: int, d_ff: int, num_features: int = DEFAULT_NUM_FEATURES) -> int:
    """Exact trainable parameter count of `TransformerClassifier` (see models/transformer.py).

    input projection  num_features*d + d
    per block         LN 2d + qkv (3d*d + 3d) + out (d*d + d) + LN 2d + fc1 (d*ff + ff) + fc2 (ff*d + d)
    final LN + head   2d + (d + 1)
    Positions are sinusoidal (a buffer, not a parameter), so the count does not depend on the window.
    """
    per_block = 4 * d_model * d_model + 2 * d_model * d_ff + 9 * d_model + d_ff
    return (num_features + 1) * d_model + n_layers * per_block + 3 * d_model + 1


def _candidates(budget: str, grid_version: int) -> CandidateValues:
    if grid_version not in GRID_VERSIONS:
        raise ValueError(f"unknown grid_version {grid_version!r}; known versions: {sorted(GRID_VERSIONS)}")
    check_budget(budget)
    return GRID_VERSIONS[grid_version][budget]


def check_budget(budget: str) -> str:
    if budget not in BUDGET_BANDS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    return budget


def _in_band_shapes(values: CandidateValues, band: tuple[int, int], num_features: int):
    """(d_model, n_layers, n_heads, d_ff_ratio, params) in product order, head_dim >= 8, in band."""
    lo, hi = band
    for d_model, n_layers, n_heads, ratio in product(values.d_model, values.n_layers, values.n_heads, values.d_ff_ratio):
        if d_model % n_heads or d_model // n_heads < 8:
            continue
        params = count_parameters(d_model, n_layers, d_model * ratio, num_features)
        if lo <= params <= hi:
            yield d_model, n_layers, n_heads, ratio, params


@cache
def _grid(budget: str, num_features: int, grid_version: int) -> tuple[Architecture, ...]:
    values = _candidates(budget, grid_version)
    band = BUDGET_BANDS[budget]
    if grid_version > 1:
        previous = _grid(budget, num_features, grid_version - 1)
        seen = {(a.d_model, a.n_layers, a.n_heads, a.d_ff_ratio) for a in previous}
    else:
        previous, seen = (), set()
    added = [s for s in _in_band_shapes(values, band, num_features) if s[:4] not in seen]
    shapes = [(a.d_model, a.n_layers, a.n_heads, a.d_ff_ratio, a.params) for a in previous] + added
    return tuple(
        Architecture(arch_idx=i, d_model=d, n_layers=n, n_heads=h, d_ff=d * r, d_ff_ratio=r, params=p)
        for i, (d, n, h, r, p) in enumerate(shapes)
    )


def get_architectures_for_budget(
    budget: str, num_features: int = DEFAULT_NUM_FEATURES, grid_version: int = CURRENT_GRID_VERSION
) -> list[Architecture]:
    """The deterministic, ordered architectures of `budget` whose exact count lies in its band."""
    return list(_grid(budget, num_features, grid_version))


def validate_architecture(
    budget: str,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_ff: int,
    num_features: int = DEFAULT_NUM_FEATURES,
) -> int:
    """Exact count of an explicitly requested architecture; refuse it when outside the band."""
    check_budget(budget)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pick n_heads dividing d_model")
    params = count_parameters(d_model, n_layers, d_ff, num_features)
    lo, hi = BUDGET_BANDS[budget]
    if not lo <= params <= hi:
        raise ArchitectureOutOfBudget(
            f"d_model={d_model}, n_layers={n_layers}, n_heads={n_heads}, d_ff={d_ff} has {params:,} parameters, "
            f"outside the {budget} band [{lo:,}, {hi:,}]; choose a smaller d_ff or fewer layers"
            if params > hi
            else f"d_model={d_model}, n_layers={n_layers}, n_heads={n_heads}, d_ff={d_ff} has {params:,} parameters, "
            f"outside the {budget} band [{lo:,}, {hi:,}]; choose a wider or deeper architecture"
        )
    return params


def find_arch_idx(
    budget: str,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_ff: int,
    num_features: int = DEFAULT_NUM_FEATURES,
    grid_version: int = CURRENT_GRID_VERSION,
) -> int | None:
    """The grid index of this exact architecture, or None when the grid does not list it."""
    for arch in _grid(budget, num_features, grid_version):
        if (arch.d_model, arch.n_layers, arch.n_heads, arch.d_ff) == (d_model, n_layers, n_heads, d_ff):
            return arch.arch_idx
    return None


def explicit_architecture(budget: str, d_model: int, n_layers: int, n_heads: int, d_ff: int,
                          num_features: int = DEFAULT_NUM_FEATURES) -> Architecture:
    """An architecture given by its shape (a supplemental entry, a recorded trial re-trained): its
    index in the budget's current grid for F = `num_features`, or -1 when the grid does not list
    it, and its exact count. No band check: `validate_architecture` is for that."""
    arch_idx = find_arch_idx(budget, d_model, n_layers, n_heads, d_ff, num_features) if budget in BUDGET_BANDS else None
    return Architecture(
        arch_idx=-1 if arch_idx is None else arch_idx,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=d_ff,
        d_ff_ratio=d_ff // d_model,
        params=count_parameters(d_model, n_layers, d_ff, num_features),
    )


EXTREME_TYPES: tuple[str, ...] = (
    "min_d_model",
    "max_d_model",
    "min_n_layers",
    "max_n_layers",
    "min_n_heads",
    "max_n_heads",
)


def forced_extremes(archs: list[Architecture]) -> list[tuple[str, Architecture]]:
    """The six forced-extreme architectures, in EXTREME_TYPES order.

    Rule: for `min_X`/`max_X` keep the entries whose X is the grid's smallest/largest value; among
    them choose the one most *central* in the other dimensions (d_model, n_layers, n_heads,
    d_ff_ratio, X excluded). Centrality is measured in rank space: for each other dimension,
    |rank of the value among the grid's distinct values - the median rank| divided by the number
    of distinct values, summed. Ties go to the lowest arch_idx. Ranks (not raw values) keep a
    dimension with large numbers, like n_layers, from dominating.
    """
    dims = ("d_model", "n_layers", "n_heads", "d_ff_ratio")
    distinct = {dim: sorted({getattr(a, dim) for a in archs}) for dim in dims}

    def off_centre(arch: Architecture, skip: str) -> float:
        total = 0.0
        for dim in dims:
            if dim == skip:
                continue
            values = distinct[dim]
            rank = values.index(getattr(arch, dim))
            total += abs(rank - (len(values) - 1) / 2) / len(values)
        return total

    chosen = []
    for extreme in EXTREME_TYPES:
        side, dim = extreme.split("_", 1)
        target = distinct[dim][0] if side == "min" else distinct[dim][-1]
        pool = [a for a in archs if getattr(a, dim) == target]
        chosen.append((extreme, min(pool, key=lambda a: (off_centre(a, dim), a.arch_idx))))
    return chosen
