"""The log line grammar: read a legacy HPO log as a stream of lines into `LoggedTrial`s.

`LogParser.parse(lines)` is pure and streaming: it takes lines as a file yields them (with their
line endings), yields one `LoggedTrial` per trial start, and collects a `Problem` for every
skipped or doubtful line. The lines it reads are described in README.md, "Legacy logs": the
seed's own (`Trial N: arch_idx=...`, `Trial N finished: val_auc=...`) and Optuna's (`[I ...] Trial N
finished with value: ... and parameters: {...}`, `failed with parameters`, `pruned`), joined by
trial number. `parse_number` and `parse_fields` read the numbers and `key=value` lists inside the
seed's lines; `mapping_fields` reads a parameter dict (Optuna's, parsed as a literal, never run).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from models.arch_grid import EXTREME_TYPES
from schemas.legacy import Problem

_PREFIX = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d{1,6})?)\s+-\s+\S+\s+-\s+[A-Z]+\s+-\s(?P<msg>.*)$"
)
# Optuna's own handler: `[I 2025-11-02 14:09:40,117] message`, coloured on a terminal.
_OPTUNA_PREFIX = re.compile(r"^\[(?P<level>[A-Z]) (?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:[,.]\d{1,6})?)\]\s(?P<msg>.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEADER = re.compile(r"^=== HPO (?P<name>\S+) \| (?P<fields>.*?) ===$")
# The current study driver (tasks/study/) appends " [forced extreme: TYPE]" to the start line.
_START = re.compile(r"^Trial (?P<n>\d+): (?P<fields>.*?)(?: \[forced extreme: (?P<kind>[^\]\s]+)\])?$")
_EXTREME = re.compile(r"^Trial (?P<n>\d+) forced extreme: (?P<kind>\S+)$")
_FINISHED = re.compile(r"^Trial (?P<n>\d+) finished: (?P<fields>.*)$")
_FAILED = re.compile(r"^Trial (?P<n>\d+) failed: ?(?P<reason>.*)$")
_TIMEOUT = re.compile(r"^Timeout after (?P<hours>[0-9.]+) ?h: stopping at (?P<done>\d+)/(?P<planned>\d+) trials$")
# Optuna's own messages (optuna/study/study.py and optuna/study/_optimize.py).
_OPTUNA_FINISHED = re.compile(r"^Trial (?P<n>\d+) finished with values?: (?P<value>.*?) and parameters: (?P<rest>\{.*)$")
_OPTUNA_FAILED = re.compile(r"^Trial (?P<n>\d+) failed with parameters: (?P<params>\{.*?\}) because of the following error: (?P<reason>.*)$")
_OPTUNA_FAILED_VALUE = re.compile(r"^Trial \d+ failed with value .*$")  # follows the line above; adds nothing
_OPTUNA_PRUNED = re.compile(r"^Trial (?P<n>\d+) pruned\.(?P<reason>.*)$")
# Noise that nevertheless looks like one of the records above is reported, not dropped.
_LOOKS_LIKE_RECORD = re.compile(r"Trial \d+(:| forced extreme| finished| failed)|=== HPO|Timeout after")

_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
_FIELD_SPLIT = re.compile(rf",\s*(?={_KEY}\s*=)")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

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


class Fields(NamedTuple):
    """A parsed `key=value` list: known values by canonical name, unknown keys, and errors."""

    known: dict[str, int | float]
    extra: dict[str, int | float | str]
    errors: list[str]


def parse_fields(text: str) -> Fields:
    """A `key=value, key=value` list read into `Fields`.

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
    return Fields(known, extra, errors)


def _whole_or_number(name: str, raw: object) -> int | float:
    """A known key's value from a parameter dict or table cell; ValueError when it is not one."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"{name}: {raw!r} is not a number")
    value = parse_number(raw) if isinstance(raw, str) else raw
    if not math.isfinite(value):
        raise ValueError(f"{name}: {raw!r} is not a finite number")
    if name in INT_KEYS:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name}: {raw!r} is not a whole number")
        value = int(value)
    return value


def mapping_fields(mapping: dict) -> Fields:
    """A parameter dict (Optuna's `params`, `user_attrs`) read into `Fields`: known keys by canonical
    name as numbers, the rest kept in `extra` (non-scalars as JSON); None values are left out."""
    known: dict[str, int | float] = {}
    extra: dict[str, int | float | str] = {}
    errors: list[str] = []
    for key, raw in mapping.items():
        name = ALIASES.get(str(key), str(key))
        if raw is None:
            continue
        if name in TRIAL_VALUE_KEYS:
            try:
                known[name] = _whole_or_number(name, raw)
            except ValueError as exc:
                errors.append(f"{key}: {exc}".replace(f"{key}: {name}: ", f"{key}: "))
        elif isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            extra[name] = raw
        else:
            extra[name] = json.dumps(raw, default=str)
    return Fields(known, extra, errors)


def literal(text: str) -> object:
    """A Python literal as Optuna prints it (`{'lr': 1e-05}`, `[0.7, 0.2]`, `0.71`, `nan`); ValueError if not one."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{clip(text.strip(), 60)!r} is not a literal") from None


def _params_then_rest(text: str) -> tuple[dict, str]:
    """The dict at the start of `text` (the shortest prefix that is one) and what follows it."""
    for end in (i for i, char in enumerate(text) if char == "}"):
        try:
            value = ast.literal_eval(text[: end + 1])
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value, text[end + 1:]
    raise ValueError(f"the parameters {clip(text, 60)!r} are not a readable dict")


def objective_values(text: str) -> list[tuple[str | None, float]]:
    """Optuna's `value: 0.71`, `values: [0.71, 0.2]` or `{'auc': 0.71}`: (name or None, value) pairs."""
    value = literal(text)
    pairs = list(value.items()) if isinstance(value, dict) else [(None, v) for v in (value if isinstance(value, list) else [value])]
    if not pairs or any(isinstance(v, bool) or not isinstance(v, (int, float)) for _, v in pairs):
        raise ValueError(f"{clip(text, 60)!r} is not a number, a list of numbers or a dict of them")
    return [(None if name is None else str(name), float(v)) for name, v in pairs]


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return None


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
class OptunaEnd:
    """How Optuna's own line said a trial ended; the seed's own end line wins where both exist."""

    state: str  # complete | failed | pruned
    line: int
    at: datetime | None
    value: float | None = None
    reason: str | None = None


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
    optuna: OptunaEnd | None = None

    @property
    def ended(self) -> bool:
        return self.end_line is not None or self.optuna is not None


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
            if "\x1b" in text:
                text = _ANSI.sub("", text)
            truncated = not raw.endswith("\n")
            match = _PREFIX.match(text.rstrip()) or _OPTUNA_PREFIX.match(text.rstrip())
            message = match["msg"].strip() if match else text.strip()
            if not message:
                continue
            if truncated:  # the process died mid-write: whatever the line was, its end is missing
                self._problem(lineno, f"last line has no line ending (truncated); skipped, its values may be cut: {clip(text)}")
                continue
            if not match:
                if _LOOKS_LIKE_RECORD.search(message):
                    self._problem(lineno, "looks like a record but has no 'timestamp - logger - LEVEL - ' (or Optuna's "
                                          f"'[I timestamp]') prefix; skipped: {clip(text)}")
                else:
                    self.noise_lines += 1
                continue
            if "\ufffd" in message and _LOOKS_LIKE_RECORD.search(message):
                self._problem(lineno, f"line has bytes that are not UTF-8; skipped: {clip(text)}")
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
        elif m := _OPTUNA_FINISHED.match(message):
            self._on_optuna_finished(int(m["n"]), m["value"], m["rest"], lineno, ts)
        elif m := _OPTUNA_FAILED.match(message):
            reason = m["reason"].strip().removesuffix(".") or "failed (Optuna gave no reason)"
            self._on_optuna_end(int(m["n"]), OptunaEnd("failed", lineno, ts, reason=reason), lineno, m["params"])
        elif m := _OPTUNA_PRUNED.match(message):
            detail = m["reason"].strip()
            end = OptunaEnd("pruned", lineno, ts, reason="pruned by Optuna" + (f": {detail}" if detail else ""))
            self._on_optuna_end(int(m["n"]), end, lineno, None)
        elif _OPTUNA_FAILED_VALUE.match(message):
            pass
        elif _LOOKS_LIKE_RECORD.match(message):
            self._problem(lineno, f"unreadable record; skipped: {clip(message)}")
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
            self._settle(previous)
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
        if trial.end_line is not None:  # the seed's own end line; Optuna's alone leaves room for it
            self._problem(lineno, f"trial {number} {what} again (it already ended at line {trial.end_line}); skipped")
            return None
        return trial

    def _on_optuna_finished(self, number: int, value: str, rest: str, lineno: int, ts: datetime | None) -> None:
        try:
            values = objective_values(value)
        except ValueError as exc:
            end = OptunaEnd("failed", lineno, ts, reason=f"finished without a readable value (line {lineno})")
            self._problem(lineno, f"trial {number}: Optuna's value: {exc}; recorded as failed")
        else:
            end = OptunaEnd("complete", lineno, ts, value=values[0][1])
        try:
            params, _ = _params_then_rest(rest)
        except ValueError as exc:
            self._problem(lineno, f"trial {number}: {exc}; its parameters are left out")
            params = {}
        trial = self._on_optuna_end(number, end, lineno, params)
        if trial is not None and end.value is not None and (len(values) > 1 or values[0][0] is not None):
            for i, (name, number_) in enumerate(values):
                trial.extra[f"value_{name if name is not None else i}"] = number_
            if len(values) > 1:
                self._problem(lineno, f"trial {number}: Optuna logged {len(values)} objective values; the first "
                                      f"({values[0][1]:g}) is read as val_auc, all are kept as value_* in extra")

    def _on_optuna_end(self, number: int, end: OptunaEnd, lineno: int, params: str | dict | None) -> LoggedTrial | None:
        """Optuna's end of a trial: it joins the trial's start line by number (or stands in for a
        start line the log lacks); its parameters fill what the start line did not give."""
        key = (self._current, number)
        trial = self._latest.get(key)
        if trial is None:
            trial = self._latest[key] = LoggedTrial(experiment=self._current, number=number, attempt=1,
                                                    start_line=lineno, started_at=None)
        elif trial.optuna is not None:
            self._problem(lineno, f"trial {number} ended again in Optuna's lines (first at line {trial.optuna.line}); skipped")
            return None
        trial.optuna = end
        if isinstance(params, str):
            try:
                params = literal(params)
            except ValueError as exc:
                self._problem(lineno, f"trial {number}: Optuna's parameters: {exc}; left out")
        if isinstance(params, dict):
            known, extra, errors = mapping_fields(params)
            for error in errors:
                self._problem(lineno, f"trial {number}: Optuna's parameters: {error}; left out")
            for name, value in known.items():
                if name in trial.values and not _same(trial.values[name], value):
                    self._problem(lineno, f"trial {number}: Optuna's {name}={value!r} contradicts {trial.values[name]!r} "
                                          "at its start; kept the start's")
                trial.values.setdefault(name, value)
            for name, value in extra.items():
                trial.extra.setdefault(name, value)
        return trial

    def _settle(self, trial: LoggedTrial) -> None:
        """Fold Optuna's end into the trial: it is the end when the seed's own line never came,
        and only checked against it when it did."""
        end = trial.optuna
        if end is None:
            return
        if trial.end_line is None:
            trial.state, trial.failure_reason = end.state, end.reason
            trial.end_line, trial.ended_at = end.line, end.at
            if end.value is not None:
                trial.values.setdefault("val_auc", end.value)
        elif end.state != trial.state:
            self._problem(end.line, f"trial {trial.number}: Optuna says {end.state}, the log's line {trial.end_line} says "
                                    f"{trial.state}; kept the log's")
        elif end.value is not None and "val_auc" in trial.values and not _same(end.value, trial.values["val_auc"]):
            self._problem(end.line, f"trial {trial.number}: Optuna's value {end.value:g} differs from val_auc="
                                    f"{trial.values['val_auc']:g} at line {trial.end_line}; kept the log's")

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
            self._settle(trial)
            if not trial.ended:
                trial.state = "incomplete"
                trial.failure_reason = trial.failure_reason or "never finished: no 'finished' or 'failed' line before the end of the log"
                self._problem(trial.start_line, f"trial {trial.number} never finished; recorded as incomplete")
            yield trial


def _same(a: int | float, b: int | float) -> bool:
    """Equal, up to the rounding of a value printed with fewer digits (`0.7094` vs `0.709412`)."""
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)


def clip(text: str, width: int = 120) -> str:
    """`text`, cut to `width` characters with an ellipsis, for quoting input lines in problems."""
    return text if len(text) <= width else text[: width - 3] + "..."
