"""n_heads recovery: the grid entry of a trial's `arch_idx` (in our versioned grid, or in the
researcher's own, `tasks.legacy.grids`), trusted only when it agrees with everything the trial
logged; otherwise unrecoverable, with the reason. Never a guess. A trial the grid contradicts (its
entry disagrees with the log, or the grid has no such arch_idx) is also told apart
(`HeadsLookup.contradiction`): its architecture is not the grid's, so it is never a study's best."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from models.arch_grid import Architecture, get_architectures_for_budget
from tasks.legacy.grids import BudgetGrid, GridEntry


@dataclass(frozen=True)
class HeadsLookup:
    """The outcome of recovering n_heads for one trial."""

    n_heads: int | None
    source: str  # logged | recovered | unrecoverable
    note: str | None
    entry: Architecture | GridEntry | None  # the grid entry, when it was trusted
    contradiction: str | None = None  # how the grid contradicts the trial, when it does


def _disagreements(entry: Architecture | GridEntry, values: dict, keys: Iterable[str]) -> list[str]:
    def show(value: int | float) -> str:
        return f"{value:,}" if isinstance(value, int) else f"{value:g}"

    def grid_side(key: str) -> str:
        if key == "params" and isinstance(entry, GridEntry) and not entry.params_given:
            return "(our count of the grid's shape; give the grid's own params to check against those)"
        return "(grid)"

    return [
        f"{key} {show(getattr(entry, key))} {grid_side(key)} vs {show(values[key])} (log)"
        for key in keys
        if values.get(key) is not None and getattr(entry, key) is not None and values[key] != getattr(entry, key)
    ]


def _lookup(arch_idx: int | None, budget: str, grid_version: int, grid: BudgetGrid | None):
    """(entry or None, where it was looked up, why there is none, whether that is because the grid
    has no such arch_idx rather than a grid it cannot read or a defective entry)."""
    if grid is None:
        archs = get_architectures_for_budget(budget, grid_version=grid_version)
        where = f"arch_idx {arch_idx} of the {budget} grid v{grid_version}"
        entry = archs[arch_idx] if arch_idx is not None and 0 <= arch_idx < len(archs) else None
        return entry, where, f"{where} does not exist (the grid has {len(archs)} entries)", entry is None and arch_idx is not None
    where = f"arch_idx {arch_idx} of {grid.where}"
    if grid.error:
        return None, where, grid.error, False
    if arch_idx in grid.defects:
        return None, where, grid.defects[arch_idx], False
    indices = sorted(grid.entries)
    held = f"{len(indices)} usable entries, arch_idx {indices[0]}..{indices[-1]}" if indices else "no usable entries"
    entry = grid.entries.get(arch_idx)
    return entry, where, f"{where} does not exist (the grid has {held})", entry is None and arch_idx is not None


def recover_n_heads(values: dict, budget: str, grid_version: int, grid: BudgetGrid | None = None) -> HeadsLookup:
    """n_heads as logged, or from the grid entry of `arch_idx` when that entry agrees with the
    logged d_model and n_layers (both required) and params, d_ff_ratio, d_ff (when logged).
    The grid is ours (`grid_version`) unless the researcher's `grid` is given."""
    arch_idx = values.get("arch_idx")
    entry, where, absent, not_in_grid = _lookup(arch_idx, budget, grid_version, grid)
    checked = ("d_model", "n_layers", "params", "d_ff_ratio", "d_ff")
    if values.get("n_heads") is not None:
        diffs = _disagreements(entry, values, (*checked, "n_heads")) if entry else []
        note = f"logged n_heads kept, but {where} disagrees: {'; '.join(diffs)}" if diffs else None
        contradiction = f"{where} disagrees with the log: {'; '.join(diffs)}" if diffs else absent if not_in_grid else None
        return HeadsLookup(values["n_heads"], "logged", note, None, contradiction)
    if arch_idx is None:
        return HeadsLookup(None, "unrecoverable", "no arch_idx logged", None)
    if entry is None:
        return HeadsLookup(None, "unrecoverable", absent, None, absent if not_in_grid else None)
    missing = [key for key in ("d_model", "n_layers") if values.get(key) is None]
    if missing:
        return HeadsLookup(None, "unrecoverable", f"{' and '.join(missing)} not logged, so {where} cannot be confirmed", None)
    diffs = _disagreements(entry, values, checked)
    if diffs:
        note = f"{where} disagrees with the log: {'; '.join(diffs)}"
        return HeadsLookup(None, "unrecoverable", note, None, note)
    return HeadsLookup(entry.n_heads, "recovered", None, entry)
