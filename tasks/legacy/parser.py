"""Legacy trial recovery: read the old HPO logs (and the older trial JSON files), recover n_heads
by arch_idx where the grid confirms it, and write one validated JSON file per experiment.

Three layers, each usable alone:
- `LogParser.parse(lines)`: pure and streaming. Takes lines as a file yields them (with their
  line endings), yields `LoggedTrial`s, and collects a `Problem` for every skipped or doubtful
  line. The format is described in `shared/legacy-log-format.md`.
- `recover_n_heads(values, budget, grid_version)`: pure. Trusts the grid entry of `arch_idx` only
  when it agrees with everything the line logged.
- `recover_log(path)` / `recover_json(path)`: the file edges, turning what was read into
  `schemas.legacy.LegacyExperiment`s; `write_experiment` writes one.
The Prefect tasks at the end wrap these for the `recover` flow.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from rich import box
from rich.table import Table

from models.arch_grid import EXTREME_TYPES, LEGACY_GRID_VERSION, Architecture, get_architectures_for_budget
from schemas.legacy import (
    experiment_name,
    ExperimentSummary,
    ImportCounts,
    LegacyExperiment,
    LegacyTrial,
    Problem,
    RecoverReport,
)

# ---------------------------------------------------------------------------------------------
# Line grammar
# ---------------------------------------------------------------------------------------------

_PREFIX = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d{1,6})?)\s+-\s+\S+\s+-\s+[A-Z]+\s+-\s(?P<msg>.*)$"
)
_HEADER = re.compile(r"^=== HPO (?P<name>\S+) \| (?P<fields>.*?) ===$")
# The current study driver (tasks/study/driver.py) appends " [forced extreme: TYPE]" to the start line.
_START = re.compile(r"^Trial (?P<n>\d+): (?P<fields>.*?)(?: \[forced extreme: (?P<kind>[^\]\s]+)\])?$")
_EXTREME = re.compile(r"^Trial (?P<n>\d+) forced extreme: (?P<kind>\S+)$")
_FINISHED = re.compile(r"^Trial (?P<n>\d+) finished: (?P<fields>.*)$")
_FAILED = re.compile(r"^Trial (?P<n>\d+) failed: ?(?P<reason>.*)$")
_TIMEOUT = re.compile(r"^Timeout after (?P<hours>[0-9.]+) ?h: stopping at (?P<done>\d+)/(?P<planned>\d+) trials$")
# Optuna's own messages ("Trial 3 finished with value: ...") are noise, not the script's records.
_OPTUNA_NOISE = re.compile(r"^Trial \d+ (finished with value|failed with (parameters|value)|pruned)")
# Noise that nevertheless looks like one of the records above is reported, not dropped.
_LOOKS_LIKE_RECORD = re.compile(r"Trial \d+(:| forced extreme| finished| failed)|=== HPO|Timeout after")

_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
_FIELD_SPLIT = re.compile(rf",\s*(?={_KEY}\s*=)")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_STUDY_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(?P<budget>smoke|\d+[MB])_h(?P<horizon>\d+)(?![0-9])")

# Canonical names of the keys the logs use; anything else is kept in `extra`.
ALIASES = {"lr": "learning_rate", "seconds": "train_seconds"}
INT_KEYS = frozenset({"arch_idx", "d_model", "n_layers", "n_heads", "params", "d_ff", "d_ff_ratio", "epochs", "best_epoch"})
FLOAT_KEYS = frozenset(
    {"learning_rate", "dropout", "weight_decay", "val_auc", "val_loss", "pred_min", "pred_max", "pred_range",
     "recall", "train_seconds"}
)
TRIAL_VALUE_KEYS = INT_KEYS | FLOAT_KEYS


def parse_number(text: str) -> int | float:
    """`1,612,801` -> 1612801, `1e-05` -> 1e-05, `0.3` -> 0.3; anything else raises ValueError."""
    value = text.strip()
    if _THOUSANDS.match(value):
        value = value.replace(",", "")
    if not _NUMBER.match(value):
        raise ValueError(f"{text!r} is not a number")
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


def parse_fields(text: str) -> tuple[dict[str, int | float], dict[str, int | float | str], list[str]]:
    """A `key=value, key=value` list: (known values by canonical name, unknown keys, errors).

    A value runs to the next `, key=`, so thousands separators survive; a fragment that is not
    `key=value`, an unreadable value of a known key, or a key given twice with two values is an
    error and that key is left out (never guessed)."""
    known: dict[str, int | float] = {}
    extra: dict[str, int | float | str] = {}
    errors: list[str] = []
    for piece in _FIELD_SPLIT.split(text.strip()):
        key, sep, raw = (part.strip() for part in piece.partition("="))
        if not sep or not re.fullmatch(_KEY, key):
            errors.append(f"{piece.strip()!r} is not key=value")
            continue
        name = ALIASES.get(key, key)
        if name in TRIAL_VALUE_KEYS:
            try:
                value = parse_number(raw)
            except ValueError:
                errors.append(f"{key}: cannot read {raw!r}")
                continue
            if name in INT_KEYS:
                if isinstance(value, float) and not value.is_integer():
                    errors.append(f"{key}: {raw!r} is not a whole number")
                    continue
                value = int(value)
            target = known
        else:
            try:
                value = parse_number(raw)
            except ValueError:
                value = raw
            target = extra
        if name in target and target[name] != value:
            errors.append(f"{key} given twice ({target[name]!r} and {value!r}); both left out")
            target.pop(name)
            continue
        target[name] = value
    return known, extra, errors


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The streaming parser
# ---------------------------------------------------------------------------------------------


@dataclass
class LoggedHeader:
    """An `=== HPO name | ... ===` line, updated by later headers (restarts) and the timeout line."""

    name: str
    line: int
    budget: str | None = None
    horizon: str | None = None
    n_trials: int | None = None
    timeout_hours: float | None = None
    timed_out: bool = False
    stopped_at: int | None = None


@dataclass
class LoggedTrial:
    """One start of a trial as the log told it; `values` use canonical names (`learning_rate`)."""

    experiment: str | None
    number: int
    attempt: int
    start_line: int
    started_at: datetime | None
    values: dict[str, int | float] = field(default_factory=dict)
    extra: dict[str, int | float | str] = field(default_factory=dict)
    extreme_type: str | None = None
    state: str = "incomplete"
    failure_reason: str | None = None
    end_line: int | None = None
    ended_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.end_line is not None


class LogParser:
    """Reads one legacy log as a stream of lines; see the module docstring.

    After `parse` is exhausted: `problems` (every skipped or doubtful line), `headers` (by
    experiment name), `noise_lines` (lines that are neither records nor look like them)."""

    def __init__(self, source: str, default_experiment: str | None = None):
        self.source = source
        self.problems: list[Problem] = []
        self.headers: dict[str, LoggedHeader] = {}
        self.noise_lines = 0
        self._current: str | None = default_experiment
        self._latest: dict[tuple[str | None, int], LoggedTrial] = {}
        self._pending_extremes: dict[tuple[str | None, int], tuple[str, int]] = {}

    def _problem(self, line: int | None, reason: str) -> None:
        self.problems.append(Problem(file=self.source, line=line, reason=reason))

    def parse(self, lines: Iterable[str]) -> Iterator[LoggedTrial]:
        """Trials in the order they become final: an attempt superseded by a restart at once,
        every other attempt at the end of the stream."""
        for lineno, raw in enumerate(lines, start=1):
            text = raw.rstrip("\r\n")
            truncated = not raw.endswith("\n")
            match = _PREFIX.match(text.rstrip())
            message = match["msg"].strip() if match else text.strip()
            if not message:
                continue
            if truncated:  # the process died mid-write: whatever the line was, its end is missing
                self._problem(lineno, f"last line has no line ending (truncated); skipped, its values may be cut: {_clip(text)}")
                continue
            if not match or _OPTUNA_NOISE.match(message):
                if _LOOKS_LIKE_RECORD.search(message) and not _OPTUNA_NOISE.match(message):
                    self._problem(lineno, f"looks like a record but has no 'timestamp - logger - LEVEL - ' prefix; skipped: {_clip(text)}")
                else:
                    self.noise_lines += 1
                continue
            if "\ufffd" in message and _LOOKS_LIKE_RECORD.search(message):
                self._problem(lineno, f"line has bytes that are not UTF-8; skipped: {_clip(text)}")
                continue
            yield from self._dispatch(message, lineno, _timestamp(match["ts"]))
        yield from self._finish()

    def _dispatch(self, message: str, lineno: int, ts: datetime | None) -> Iterator[LoggedTrial]:
        if m := _START.match(message):
            yield from self._on_start(int(m["n"]), m["fields"], lineno, ts)
            if m["kind"]:
                self._on_extreme(int(m["n"]), m["kind"], lineno)
        elif m := _FINISHED.match(message):
            self._on_finished(int(m["n"]), m["fields"], lineno, ts)
        elif m := _FAILED.match(message):
            self._on_failed(int(m["n"]), m["reason"].strip(), lineno, ts)
        elif m := _EXTREME.match(message):
            self._on_extreme(int(m["n"]), m["kind"], lineno)
        elif m := _HEADER.match(message):
            self._on_header(m["name"], m["fields"], lineno)
        elif m := _TIMEOUT.match(message):
            self._on_timeout(float(m["hours"]), int(m["done"]), int(m["planned"]), lineno)
        elif _LOOKS_LIKE_RECORD.match(message):
            self._problem(lineno, f"unreadable record; skipped: {_clip(message)}")
        else:
            self.noise_lines += 1

    def _on_header(self, name: str, fields: str, lineno: int) -> None:
        values: dict[str, str] = {}
        for token in fields.split():
            key, sep, value = token.partition("=")
            if sep:
                values[key] = value
            else:
                self._problem(lineno, f"header: {token!r} is not key=value; ignored")
        header = self.headers.get(name)
        if header is None:
            header = self.headers[name] = LoggedHeader(name=name, line=lineno)
        else:
            self._problem(lineno, f"experiment {name} starts again (a restart; its first header is at line {header.line})")
            for (experiment, number), trial in self._latest.items():
                if experiment == name and not trial.ended:
                    trial.state, trial.end_line = "incomplete", lineno
                    trial.failure_reason = f"never finished: the run restarted at line {lineno}"
                    self._problem(trial.start_line, f"trial {number} never finished (the run restarted at line {lineno}); recorded as incomplete")
        header.budget = values.get("budget", header.budget)
        header.horizon = values.get("horizon", header.horizon)
        for key, attr, kind in (("n_trials", "n_trials", int), ("timeout_hours", "timeout_hours", float)):
            if key not in values:
                continue
            if values[key].lower() in ("none", "null", ""):
                setattr(header, attr, None)
                continue
            try:
                setattr(header, attr, kind(parse_number(values[key])))
            except ValueError:
                self._problem(lineno, f"header: {key}: cannot read {values[key]!r}; ignored")
        self._current = name

    def _on_start(self, number: int, fields: str, lineno: int, ts: datetime | None) -> Iterator[LoggedTrial]:
        values, extra, errors = parse_fields(fields)
        for error in errors:
            self._problem(lineno, f"trial {number}: broken key=value list: {error}")
        key = (self._current, number)
        previous = self._latest.get(key)
        if previous is not None:
            self._problem(
                lineno,
                f"trial {number} starts again; the later start wins and the earlier one (line {previous.start_line}) "
                "counts as failed",
            )
            if previous.state != "failed":
                previous.failure_reason = f"superseded: trial {number} started again at line {lineno}"
            previous.state = "failed"
            yield previous
        trial = LoggedTrial(
            experiment=self._current,
            number=number,
            attempt=previous.attempt + 1 if previous else 1,
            start_line=lineno,
            started_at=ts,
            values=values,
            extra=extra,
        )
        if key in self._pending_extremes:
            trial.extreme_type, _ = self._pending_extremes.pop(key)
        self._latest[key] = trial

    def _open_trial(self, number: int, lineno: int, what: str) -> LoggedTrial | None:
        trial = self._latest.get((self._current, number))
        if trial is None:
            self._problem(lineno, f"trial {number} {what} but its start was never read; skipped")
            return None
        if trial.ended:
            self._problem(lineno, f"trial {number} {what} again (it already ended at line {trial.end_line}); skipped")
            return None
        return trial

    def _on_finished(self, number: int, fields: str, lineno: int, ts: datetime | None) -> None:
        trial = self._open_trial(number, lineno, "finished")
        if trial is None:
            return
        values, extra, errors = parse_fields(fields)
        for error in errors:
            self._problem(lineno, f"trial {number}: broken key=value list: {error}")
        for name, value in values.items():
            if name in trial.values and trial.values[name] != value:
                self._problem(lineno, f"trial {number}: {name}={value!r} contradicts {trial.values[name]!r} at its start; kept the start's")
                continue
            trial.values[name] = value
        trial.extra.update(extra)
        trial.end_line, trial.ended_at = lineno, ts
        if "val_auc" in values:
            trial.state, trial.failure_reason = "complete", None
        else:
            trial.state = "failed"
            trial.failure_reason = f"finished without a readable val_auc (line {lineno})"
            self._problem(lineno, f"trial {number} finished without a readable val_auc; recorded as failed")

    def _on_failed(self, number: int, reason: str, lineno: int, ts: datetime | None) -> None:
        trial = self._open_trial(number, lineno, "failed")
        if trial is None:
            return
        trial.state, trial.failure_reason = "failed", reason or "failed (no reason logged)"
        trial.end_line, trial.ended_at = lineno, ts

    def _on_extreme(self, number: int, kind: str, lineno: int) -> None:
        if kind not in EXTREME_TYPES:
            self._problem(lineno, f"trial {number}: unknown forced-extreme type {kind!r} (known: {', '.join(EXTREME_TYPES)}); ignored")
            return
        trial = self._latest.get((self._current, number))
        if trial is not None and not trial.ended:
            if trial.extreme_type not in (None, kind):
                self._problem(lineno, f"trial {number}: forced extreme {kind} contradicts {trial.extreme_type}; kept the first")
            else:
                trial.extreme_type = kind
        else:
            self._pending_extremes[(self._current, number)] = (kind, lineno)

    def _on_timeout(self, hours: float, done: int, planned: int, lineno: int) -> None:
        header = self.headers.get(self._current) if self._current else None
        if header is None:
            self._problem(lineno, "timeout line before any '=== HPO' header; ignored")
            return
        header.timed_out, header.stopped_at = True, done
        if header.timeout_hours is None:
            header.timeout_hours = hours
        if header.n_trials is not None and header.n_trials != planned:
            self._problem(lineno, f"timeout line says {planned} planned trials, the header {header.n_trials}")

    def _finish(self) -> Iterator[LoggedTrial]:
        for (_, number), (kind, lineno) in self._pending_extremes.items():
            self._problem(lineno, f"trial {number}: forced extreme {kind} but the trial never started after it; ignored")
        for trial in sorted(self._latest.values(), key=lambda t: (t.experiment or "", t.number)):
            if not trial.ended:
                trial.state = "incomplete"
                trial.failure_reason = trial.failure_reason or "never finished: no 'finished' or 'failed' line before the end of the log"
                self._problem(trial.start_line, f"trial {trial.number} never finished; recorded as incomplete")
            yield trial


def _clip(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------
# n_heads recovery
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# From what was read to validated experiments
# ---------------------------------------------------------------------------------------------


@dataclass
class Recovered:
    """What one input file gave: its experiments and every problem met."""

    source: str
    experiments: list[LegacyExperiment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    noise_lines: int = 0


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def build_trial(
    logged: dict, budget: str, grid_version: int, problem: Callable[[str], None]
) -> LegacyTrial | None:
    """A validated trial from canonical fields (`number`, `state`, values, ...); n_heads recovered.
    `problem(reason)` is told about anything doubtful; None when the trial fails validation."""
    values = dict(logged)
    try:
        lookup = recover_n_heads(values, budget, grid_version)
    except (TypeError, ValueError) as exc:  # a value of the wrong type in an old JSON file
        problem(f"trial {values.get('number')}: cannot look up its architecture: {exc}; skipped")
        return None
    values["n_heads"], values["n_heads_source"], values["n_heads_note"] = lookup.n_heads, lookup.source, lookup.note
    if lookup.note:
        verdict = "n_heads unrecoverable" if lookup.source == "unrecoverable" else "doubtful n_heads"
        problem(f"trial {values.get('number')}: {verdict}: {lookup.note}")
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
        problem(f"trial {values.get('number')}: invalid, skipped: {_validation_message(exc)}")
        return None


def study_from_name(name: str) -> tuple[str, str] | None:
    """('2M', '1') from '2M_h1.log' or 'phase6a_2M_h1_threshold_1pct_all_trials.json'."""
    match = _STUDY_IN_NAME.search(name)
    return (match["budget"], match["horizon"]) if match else None


def read_lines(path: Path, digest: hashlib._Hash) -> Iterator[str]:
    """The file's lines, decoded, with their endings; every byte also goes into `digest`."""
    with path.open("rb") as handle:
        for raw in handle:
            digest.update(raw)
            yield raw.decode("utf-8", errors="replace")


def recover_log(path: Path, grid_version: int | None = None) -> Recovered:
    """Parse a legacy log, recover n_heads and validate every experiment it holds."""
    source = str(path)
    study = study_from_name(path.name)
    parser = LogParser(source, default_experiment=f"{study[0]}_h{study[1]}" if study else None)
    digest = hashlib.sha256()
    by_experiment: dict[str | None, list[LoggedTrial]] = {}
    for trial in parser.parse(read_lines(path, digest)):
        by_experiment.setdefault(trial.experiment, []).append(trial)
    result = Recovered(source=source, problems=parser.problems, noise_lines=parser.noise_lines)
    for name in sorted(set(parser.headers) | set(by_experiment), key=str):
        trials = sorted(by_experiment.get(name, []), key=lambda t: (t.number, t.attempt))
        experiment = _build_log_experiment(name, parser.headers.get(name), trials, grid_version, source, digest.hexdigest(), result)
        if experiment is not None:
            result.experiments.append(experiment)
    return result


def _build_log_experiment(
    name: str | None,
    header: LoggedHeader | None,
    trials: list[LoggedTrial],
    grid_version: int | None,
    source: str,
    sha256: str,
    result: Recovered,
) -> LegacyExperiment | None:
    def problem(line: int | None, reason: str) -> None:
        result.problems.append(Problem(file=source, line=line, reason=reason))

    study = study_from_name(name) if name else None
    budget = (header.budget if header and header.budget else None) or (study[0] if study else None)
    horizon = (header.horizon if header and header.horizon else None) or (study[1] if study else None)
    line = header.line if header else None
    if budget is None or horizon is None:
        problem(line, f"cannot tell the budget and horizon of {len(trials)} trials: no '=== HPO' header says them and "
                      "the file name does not (name it like 2M_h1.log); skipped")
        return None
    version = grid_version or LEGACY_GRID_VERSION
    try:
        experiment = experiment_name(budget, horizon, version)
    except ValueError as exc:
        problem(line, f"experiment {name}: {exc}; its {len(trials)} trials skipped")
        return None
    if name and name != experiment:
        problem(line, f"experiment {name!r} is recovered as {experiment!r} (its budget and horizon)")
    built = []
    for logged in trials:
        record = {
            "number": logged.number, "attempt": logged.attempt, "state": logged.state,
            "failure_reason": logged.failure_reason, "extreme_type": logged.extreme_type,
            **logged.values, "extra": logged.extra,
            "started_at": logged.started_at, "ended_at": logged.ended_at,
            "start_line": logged.start_line, "end_line": logged.end_line,
        }
        trial = build_trial(record, budget, version, lambda reason, line=logged.start_line: problem(line, reason))
        if trial is not None:
            built.append(trial)
    fields = {
        "experiment": experiment, "budget": budget, "horizon": horizon, "grid_version": version,
        "source_log": source, "source_sha256": sha256,
        "completed_trials": sum(t.state == "complete" for t in built), "trials": built,
    }
    if header:
        fields |= {"planned_trials": header.n_trials, "timeout_hours": header.timeout_hours,
                   "timed_out": header.timed_out, "stopped_at": header.stopped_at}
    try:
        return LegacyExperiment.model_validate(fields)
    except ValidationError as exc:
        problem(header.line if header else None, f"experiment {experiment}: {_validation_message(exc)}; skipped")
        return None


# Older trial JSON files: key names seen in them -> our names.
JSON_ALIASES = {
    "trial": "number", "trial_number": "number", "trial_id": "number", "lr": "learning_rate",
    "seconds": "train_seconds", "status": "state", "forced_extreme": "extreme_type", "extreme": "extreme_type",
    "error": "failure_reason", "fail_reason": "failure_reason", "n_params": "params", "param_count": "params",
}
JSON_STATES = {
    "complete": "complete", "completed": "complete", "finished": "complete",
    "fail": "failed", "failed": "failed", "pruned": "failed",
    "running": "incomplete", "waiting": "incomplete", "incomplete": "incomplete",
}
_TRIAL_FIELDS = frozenset(LegacyTrial.model_fields) - {"extra", "n_heads_source", "n_heads_note"}


def _normalize_json_trial(entry: dict, problem: Callable[[str], None]) -> dict | None:
    record: dict = {"extra": {}}
    for key, value in entry.items():
        name = JSON_ALIASES.get(key, key)
        if name in _TRIAL_FIELDS:
            record[name] = value
        elif name not in ("n_heads_source", "n_heads_note", "extra"):
            record["extra"][key] = value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else json.dumps(value)
    record["extra"].update(entry.get("extra") or {})
    if entry.get("n_heads_source") == "recovered":  # recovered once: recover again, never take it on trust
        record.pop("n_heads", None)
    try:
        record["number"] = int(record["number"])
    except (KeyError, TypeError, ValueError):
        problem(f"no readable trial number in {_clip(json.dumps(entry), 80)}; skipped")
        return None
    state = str(record.get("state") or "").strip().lower().removeprefix("trialstate.")
    if not state:
        state = "complete" if record.get("val_auc") is not None else "incomplete"
        if state == "incomplete":
            problem(f"trial {record['number']}: no state and no val_auc; recorded as incomplete")
    if state not in JSON_STATES:
        problem(f"trial {record['number']}: unknown state {record.get('state')!r}; skipped")
        return None
    record["state"] = JSON_STATES[state]
    if record["state"] != "complete" and not record.get("failure_reason"):
        record["failure_reason"] = "failed (no reason recorded)" if record["state"] == "failed" else "never finished (per the JSON file)"
    return record


def recover_json(path: Path, grid_version: int | None = None) -> Recovered:
    """An experiment JSON file, ours or an older one (n_heads null), validated, n_heads recovered."""
    source = str(path)
    result = Recovered(source=source)

    def problem(reason: str, line: int | None = None) -> None:
        result.problems.append(Problem(file=source, line=line, reason=reason))

    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem(f"not readable JSON: {exc}; skipped", getattr(exc, "lineno", None))
        return result
    meta = document if isinstance(document, dict) else {}
    entries = document.get("trials") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        problem("expected a list of trials, or an object with a 'trials' list; skipped")
        return result
    if "schema_version" in meta:  # a file this module wrote: it must validate as it is
        try:
            LegacyExperiment.model_validate(meta)
        except ValidationError as exc:
            problem(f"invalid recovered-experiment file: {_validation_message(exc)}; skipped")
            return result

    recorded_version = meta.get("grid_version")
    version = recorded_version or grid_version or LEGACY_GRID_VERSION
    if recorded_version and grid_version and recorded_version != grid_version:
        problem(f"the file says grid_version {recorded_version}, --grid-version {grid_version} was given; used the file's")
    name = str(meta.get("experiment") or meta.get("study") or meta.get("name") or "")
    study = study_from_name(name) or study_from_name(path.name)
    budget = meta.get("budget") or (study[0] if study else None)
    horizon = meta.get("horizon") or (study[1] if study else None)
    if budget is None or horizon is None:
        problem("cannot tell the budget and horizon: the file has no budget/horizon and its name does not say (e.g. 2M_h1.json); skipped")
        return result
    try:
        experiment = experiment_name(str(budget), horizon, version)
    except ValueError as exc:
        problem(f"{exc}; skipped")
        return result

    records = []
    for i, entry in enumerate(entries):
        def trial_problem(reason: str, i: int = i) -> None:
            problem(f"trials[{i}]: {reason}")

        if not isinstance(entry, dict):
            trial_problem("not an object; skipped")
            continue
        record = _normalize_json_trial(entry, trial_problem)
        if record is not None:
            records.append((i, record))
    _number_attempts(records, problem)

    built = []
    for i, record in records:
        trial = build_trial(record, str(budget), int(version), lambda reason, i=i: problem(f"trials[{i}]: {reason}"))
        if trial is not None:
            built.append(trial)
    sha = meta.get("source_sha256")
    fields = {
        "experiment": experiment,
        "budget": budget, "horizon": horizon, "grid_version": version,
        "source_log": meta.get("source_log") or source,
        "source_sha256": sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else hashlib.sha256(data).hexdigest(),
        "planned_trials": meta.get("planned_trials", meta.get("n_trials")),
        "completed_trials": sum(t.state == "complete" for t in built),
        "timed_out": bool(meta.get("timed_out", False)),
        "timeout_hours": meta.get("timeout_hours"),
        "stopped_at": meta.get("stopped_at"),
        "trials": sorted(built, key=lambda t: (t.number, t.attempt)),
    }
    try:
        result.experiments.append(LegacyExperiment.model_validate(fields))
    except ValidationError as exc:
        problem(f"experiment {fields['experiment']}: {_validation_message(exc)}; skipped")
    return result


def _number_attempts(records: list[tuple[int, dict]], problem: Callable[[str], None]) -> None:
    """Give repeated trial numbers attempts in file order (an explicit `attempt` is kept); the later
    start wins, earlier ones count as failed, as in the logs."""
    by_number: dict[int, list[dict]] = {}
    for _, record in records:
        by_number.setdefault(record["number"], []).append(record)
    for number, group in by_number.items():
        if len(group) == 1 or all("attempt" in r for r in group):
            continue
        for attempt, record in enumerate(group, start=1):
            record["attempt"] = attempt
        problem(f"trial {number} appears {len(group)} times; the last wins and the earlier ones count as failed")
        for record in group[:-1]:
            if record["state"] != "failed":
                record["state"], record["failure_reason"] = "failed", "superseded: the trial number appears again"


def recover_file(path: Path, grid_version: int | None = None) -> Recovered:
    """A `.json` file through `recover_json`, anything else through `recover_log`."""
    if not path.is_file():
        return Recovered(source=str(path), problems=[Problem(file=str(path), reason="not a file; skipped")])
    return recover_json(path, grid_version) if path.suffix.lower() == ".json" else recover_log(path, grid_version)


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for its *.log and *.json files."""
    files = []
    for path in paths:
        files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in (".log", ".json")) if path.is_dir() else [path])
    return files


def write_experiment(experiment: LegacyExperiment, out_dir: Path) -> Path:
    """`out_dir/<experiment>.json`, written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{experiment.experiment}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(experiment.model_dump_json(indent=2) + "\n", encoding="utf-8")
    partial.replace(target)
    return target


def load_experiment(path: Path) -> LegacyExperiment:
    """A file `write_experiment` wrote, validated."""
    return LegacyExperiment.model_validate_json(path.read_text(encoding="utf-8"))


def dedupe_experiments(recovered: list[Recovered]) -> list[tuple[LegacyExperiment, Recovered]]:
    """Each experiment once: a second file giving the same experiment is reported, not used."""
    seen: dict[str, str] = {}
    chosen = []
    for item in recovered:
        for experiment in item.experiments:
            if experiment.experiment in seen:
                item.problems.append(Problem(
                    file=item.source,
                    reason=f"experiment {experiment.experiment} was already recovered from {seen[experiment.experiment]}; "
                    "this file's copy is not written",
                ))
                continue
            seen[experiment.experiment] = item.source
            chosen.append((experiment, item))
    return chosen


def summarize(
    recovered: list[Recovered],
    outputs: dict[str, Path] | None = None,
    imports: dict[str, ImportCounts] | None = None,
    written: bool = False,
) -> RecoverReport:
    """One summary row per experiment (and per input that gave none), and every problem."""
    outputs, imports = outputs or {}, imports or {}
    rows = []
    for item in recovered:
        for experiment in item.experiments:
            latest = experiment.latest_attempts()
            count = lambda attr, value: sum(getattr(t, attr) == value for t in latest)  # noqa: E731
            rows.append(ExperimentSummary(
                experiment=experiment.experiment, source=item.source, trials=len(latest),
                complete=count("state", "complete"), failed=count("state", "failed"),
                incomplete=count("state", "incomplete"), restarts=len(experiment.trials) - len(latest),
                n_heads_logged=count("n_heads_source", "logged"), n_heads_recovered=count("n_heads_source", "recovered"),
                n_heads_unrecoverable=count("n_heads_source", "unrecoverable"),
                problems=len(item.problems), noise_lines=item.noise_lines,
                output=str(outputs[experiment.experiment]) if experiment.experiment in outputs else None,
                mlflow=imports.get(experiment.experiment),
            ))
        if not item.experiments:
            rows.append(ExperimentSummary(
                experiment="-", source=item.source, trials=0, complete=0, failed=0, incomplete=0, restarts=0,
                n_heads_logged=0, n_heads_recovered=0, n_heads_unrecoverable=0,
                problems=len(item.problems), noise_lines=item.noise_lines,
            ))
    problems = [p for item in recovered for p in sorted(item.problems, key=lambda p: p.line or 0)]
    return RecoverReport(experiments=rows, problems=problems, written=written)


def summary_table(report: RecoverReport) -> Table:
    """The `hpo recover` table: per experiment, trials, complete, n_heads logged / recovered /
    unrecoverable, problems, and what the MLflow import did when there was one."""
    title = "legacy recovery" + ("" if report.written else ": nothing written")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("experiment", overflow="fold")
    for header in ("trials", "complete", "n_heads\nlogged", "n_heads\nrecov.", "n_heads\nunrec.", "problems"):
        table.add_column(header, justify="right")
    imported = any(row.mlflow for row in report.experiments)
    if imported:
        table.add_column("mlflow:\nnew/same/\nreplaced")
    for row in report.experiments:
        name = row.experiment if row.experiment != "-" else f"- ({Path(row.source).name})"
        counts = (row.trials, row.complete, row.n_heads_logged, row.n_heads_recovered, row.n_heads_unrecoverable, row.problems)
        cells = [name, *(str(v) for v in counts)]
        if imported:
            cells.append(f"{row.mlflow.created}/{row.mlflow.unchanged}/{row.mlflow.replaced}" if row.mlflow else "-")
        table.add_row(*cells)
    return table
