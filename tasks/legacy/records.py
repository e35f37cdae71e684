"""From what a source read to validated trials: a `TrialRecord` (one trial as a log line or a JSON
entry gave it) becomes a `schemas.legacy.LegacyTrial`, n_heads recovered on the way; `Recovered`
is what one input gave."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from schemas.legacy import LegacyExperiment, LegacyTrial, Problem
from tasks.legacy.grids import BudgetGrid, ResearcherGrid
from tasks.legacy.heads import recover_n_heads

# What a source is, most faithful first: where two give the same experiment, the first one's values win.
SOURCE_KINDS = ("optuna-storage", "trials-csv", "json", "log")
# The reason a trial that did not complete gets when its source gives none (Optuna's storage never does).
DEFAULT_REASONS = {"failed": "failed (no reason recorded)", "pruned": "pruned (per the source)",
                   "incomplete": "never finished (per the source)"}
# What a trial the grid contradicts becomes, as its problem lines say it.
UNVERIFIED_NOTE = "unverified: imported with its metrics, never selected as best"


@dataclass
class TrialRecord:
    """One trial as its source gave it, before validation.

    `fields` holds the other LegacyTrial fields by canonical name (`attempt`, `arch_idx`,
    `learning_rate`, `val_auc`, `failure_reason`, `started_at`, ...) exactly as read: an old JSON
    file may give a value of the wrong type, and validation, not this class, says so."""

    number: int
    state: str
    fields: dict[str, object] = field(default_factory=dict)
    extra: dict[str, int | float | str] = field(default_factory=dict)


@dataclass
class Recovered:
    """What one input file gave: its experiments and every problem met."""

    source: str
    kind: str = "log"  # one of SOURCE_KINDS
    experiments: list[LegacyExperiment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    noise_lines: int = 0
    reconciled_into: list[str] = field(default_factory=list)  # experiments merged into another input's copy


def grid_of(grid: ResearcherGrid | None, budget: str) -> tuple[BudgetGrid | None, dict[str, str | None]]:
    """The researcher's grid of `budget` (None: ours) and the experiment fields that record it."""
    if grid is None:
        return None, {}
    found = grid.for_budget(budget)
    return found, {"grid_source": grid.source, "grid_sha256": found.sha256}


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line: `location: message; location: message`."""
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def build_trial(
    record: TrialRecord, budget: str, grid_version: int, problem: Callable[[str], None], grid: BudgetGrid | None = None
) -> LegacyTrial | None:
    """A validated trial from a record; n_heads recovered (in the researcher's `grid` when given).
    `problem(reason)` is told about anything doubtful; None when the trial fails validation."""
    values = {"number": record.number, "state": record.state, **record.fields, "extra": record.extra}
    try:
        lookup = recover_n_heads(values, budget, grid_version, grid)
    except (TypeError, ValueError) as exc:  # a value of the wrong type in an old JSON file
        problem(f"trial {record.number}: cannot look up its architecture: {exc}; skipped")
        return None
    values["n_heads"], values["n_heads_source"], values["n_heads_note"] = lookup.n_heads, lookup.source, lookup.note
    if lookup.contradiction:
        values["verified"], values["unverified_reason"] = False, lookup.contradiction
    unverified = f"; {UNVERIFIED_NOTE}" if lookup.contradiction else ""
    if lookup.note:
        verdict = "n_heads unrecoverable" if lookup.source == "unrecoverable" else "doubtful n_heads"
        problem(f"trial {record.number}: {verdict}: {lookup.note}{unverified}")
    elif lookup.contradiction:
        problem(f"trial {record.number}: {lookup.contradiction}{unverified}")
    if lookup.entry is not None:
        values.setdefault("d_ff_ratio", lookup.entry.d_ff_ratio)
        values.setdefault("d_ff", lookup.entry.d_ff)
    if values.get("d_ff") is None and values.get("d_model") and values.get("d_ff_ratio"):
        values["d_ff"] = values["d_model"] * values["d_ff_ratio"]
    if values.get("pred_range") is None and values.get("pred_min") is not None and values.get("pred_max") is not None:
        values["pred_range"] = round(values["pred_max"] - values["pred_min"], 10)
    try:
        return LegacyTrial.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problem(f"trial {record.number}: invalid, skipped: {validation_message(exc)}")
        return None
