"""n_heads recovery: the grid entry of a trial's `arch_idx`, trusted only when it agrees with
everything the trial logged; otherwise unrecoverable, with the reason. Never a guess."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from models.arch_grid import Architecture, get_architectures_for_budget


@dataclass(frozen=True)
class HeadsLookup:
    """The outcome of recovering n_heads for one trial."""

    n_heads: int | None
    source: str  # logged | recovered | unrecoverable
    note: str | None
    entry: Architecture | None  # the grid entry, when it was trusted


def _disagreements(entry: Architecture, values: dict, keys: Iterable[str]) -> list[str]:
    def show(value: int | float) -> str:
        return f"{value:,}" if isinstance(value, int) else f"{value:g}"

    return [
        f"{key} {show(getattr(entry, key))} (grid) vs {show(values[key])} (log)"
        for key in keys
        if values.get(key) is not None and values[key] != getattr(entry, key)
    ]


def recover_n_heads(values: dict, budget: str, grid_version: int) -> HeadsLookup:
    """n_heads as logged, or from the grid entry of `arch_idx` when that entry agrees with the
    logged d_model and n_layers (both required) and params, d_ff_ratio, d_ff (when logged)."""
    archs = get_architectures_for_budget(budget, grid_version=grid_version)
    arch_idx = values.get("arch_idx")
    entry = archs[arch_idx] if arch_idx is not None and 0 <= arch_idx < len(archs) else None
    checked = ("d_model", "n_layers", "params", "d_ff_ratio", "d_ff")
    where = f"arch_idx {arch_idx} of the {budget} grid v{grid_version}"
    if values.get("n_heads") is not None:
        diffs = _disagreements(entry, values, (*checked, "n_heads")) if entry else []
        note = f"logged n_heads kept, but {where} disagrees: {'; '.join(diffs)}" if diffs else None
        return HeadsLookup(values["n_heads"], "logged", note, None)
    if arch_idx is None:
        return HeadsLookup(None, "unrecoverable", "no arch_idx logged", None)
    if entry is None:
        return HeadsLookup(None, "unrecoverable", f"{where} does not exist (the grid has {len(archs)} entries)", None)
    missing = [key for key in ("d_model", "n_layers") if values.get(key) is None]
    if missing:
        return HeadsLookup(None, "unrecoverable", f"{' and '.join(missing)} not logged, so {where} cannot be confirmed", None)
    diffs = _disagreements(entry, values, checked)
    if diffs:
        return HeadsLookup(None, "unrecoverable", f"{where} disagrees with the log: {'; '.join(diffs)}", None)
    return HeadsLookup(entry.n_heads, "recovered", None, entry)
