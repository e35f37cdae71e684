"""One experiment from several sources (a log and the Optuna storage of the same study, say),
reconciled trial by trial: the most faithful source (`records.SOURCE_KINDS`: storage, trials CSV,
JSON, log; the first given among equals) wins where both give a value, the others fill what it
lacks, and every disagreement is reported."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from schemas.legacy import LegacyExperiment, LegacyTrial, Problem
from tasks.legacy.records import DEFAULT_REASONS, Recovered, SOURCE_KINDS, validation_message

# Fields two sources of one trial are compared on; the rest are only filled in.
COMPARED = ("state", "arch_idx", "d_model", "n_layers", "n_heads", "params", "learning_rate", "dropout",
            "weight_decay", "val_auc")
# Where a line number points into the winning source's file, it cannot be taken from another's.
_OWN = frozenset({"number", "attempt", "start_line", "end_line", "n_heads", "n_heads_source", "n_heads_note", "extra",
                  "verified", "unverified_reason"})


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-4 * max(abs(float(a)), abs(float(b)))  # type: ignore[arg-type]
    return a == b


def _latest(experiment: LegacyExperiment) -> dict[int, LegacyTrial]:
    return {t.number: t for t in experiment.latest_attempts()}


def _merge_trial(kept: LegacyTrial, other: LegacyTrial, names: tuple[str, str], say) -> LegacyTrial:
    """`kept` with what only `other` gives; each disagreement told to `say`."""
    for name in COMPARED:
        mine, theirs = getattr(kept, name), getattr(other, name)
        if mine is not None and theirs is not None and not _same(mine, theirs):
            say(f"trial {kept.number}: {name} {mine!r} ({names[0]}) vs {theirs!r} ({names[1]}); kept {names[0]}'s")
    values = kept.model_dump()
    for name, value in other.model_dump().items():
        if name not in _OWN and values.get(name) is None and value is not None:
            values[name] = value
    if kept.n_heads is None and other.n_heads is not None:
        values |= {"n_heads": other.n_heads, "n_heads_source": other.n_heads_source, "n_heads_note": other.n_heads_note}
    values["extra"] = other.extra | kept.extra
    if kept.verified and not other.verified:  # one source the grid contradicts is enough to doubt the trial
        values |= {"verified": False, "unverified_reason": f"{other.unverified_reason} (in {names[1]})"}
    if values["state"] == "complete":
        values["failure_reason"] = None
    elif kept.failure_reason in DEFAULT_REASONS.values() and other.failure_reason and other.state == kept.state:
        values["failure_reason"] = other.failure_reason  # a log's reason where the storage kept none
    try:
        return LegacyTrial.model_validate(values)
    except ValidationError as exc:
        say(f"trial {kept.number}: the merged trial is invalid ({validation_message(exc)}); kept {names[0]}'s as it was")
        return kept


def merge(kept: LegacyExperiment, other: LegacyExperiment, names: tuple[str, str], say) -> LegacyExperiment:
    """Two recoveries of one experiment as one; `names` are their sources, `kept`'s first."""
    mine, theirs = _latest(kept), _latest(other)
    for number in sorted(set(mine) - set(theirs)):
        say(f"trial {number} is only in {names[0]}")
    for number in sorted(set(theirs) - set(mine)):
        say(f"trial {number} is only in {names[1]}; taken from it")
    trials = []
    for number in sorted(set(mine) | set(theirs)):
        longer = max((kept, other), key=lambda e: sum(t.number == number for t in e.trials))
        earlier = [t for t in longer.trials if t.number == number][:-1]  # restarts only a log may show
        latest = _merge_trial(mine[number], theirs[number], names, say) if number in mine and number in theirs \
            else mine.get(number) or theirs[number]
        trials += earlier + [latest.model_copy(update={"attempt": len(earlier) + 1})]
    fields = kept.model_dump() | {
        "trials": [t.model_dump() for t in trials],
        "completed_trials": sum(t.state == "complete" for t in trials),
        "reconciled_with": [*kept.reconciled_with, other.source_log, *other.reconciled_with],
    }
    for name in ("planned_trials", "timeout_hours", "stopped_at"):
        fields[name] = fields[name] if fields[name] is not None else getattr(other, name)
    fields["timed_out"] = kept.timed_out or other.timed_out
    return LegacyExperiment.model_validate(fields)


def reconcile(recovered: list[Recovered]) -> list[tuple[LegacyExperiment, Recovered]]:
    """Each experiment once, with the input it is written from. An experiment several inputs gave
    is merged into the most faithful one's copy (the others' rows go; their disagreements are
    problems of that input, and the others are named in `reconciled_with`)."""
    by_name: dict[str, list[tuple[LegacyExperiment, Recovered]]] = {}
    for item in recovered:
        for experiment in item.experiments:
            by_name.setdefault(experiment.experiment, []).append((experiment, item))
    chosen = []
    for name, copies in by_name.items():
        copies.sort(key=lambda pair: SOURCE_KINDS.index(pair[1].kind))
        merged, owner = copies[0]
        for experiment, item in copies[1:]:
            labels = (Path(owner.source).name or owner.source, Path(item.source).name or item.source)

            def say(reason: str, owner: Recovered = owner) -> None:
                owner.problems.append(Problem(file=owner.source, reason=f"{name}: {reason}"))
            merged = merge(merged, experiment, labels, say)
            item.experiments.remove(experiment)
            item.reconciled_into.append(name)
        owner.experiments[owner.experiments.index(copies[0][0])] = merged
        chosen.append((merged, owner))
    return chosen
