"""Legacy sources in, validated experiments out: `recover_log` (a log, through `grammar.LogParser`),
`recover_json` (one of our experiment files, an older trial JSON file, or trials in Optuna's
FrozenTrial shape), `recover_csv` (a `trials_dataframe()` export), `recover_file` for any of these,
`recover_storage` (an Optuna storage, one result per study), and the edges around them:
`expand_inputs`, `write_experiment` / `load_experiment` and `summarize` (the rows of `hpo
recover`'s table). n_heads is looked up in our grid, or in the researcher's (`grid`,
`tasks.legacy.grids`). The Prefect tasks that wrap these for the `recover` flow are in
`tasks/legacy/tasks.py`."""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from models.arch_grid import LEGACY_GRID_VERSION
from schemas.legacy import (
    experiment_name,
    ExperimentSummary,
    ImportCounts,
    LegacyExperiment,
    LegacyTrial,
    Problem,
    RecoverReport,
)
from schemas.names import study_in_text
from tasks.legacy.grammar import clip, LoggedHeader, LoggedTrial, LogParser
from tasks.legacy.grids import ResearcherGrid
from tasks.legacy.optuna_sources import (
    entries_sha256,
    flatten_optuna,
    IGNORED_KEYS,
    open_storage,
    read_trials_csv,
    study_entries,
    study_names,
)
from tasks.legacy.records import build_trial, DEFAULT_REASONS, grid_of, Recovered, TrialRecord, validation_message


def read_lines(path: Path, digest: hashlib._Hash) -> Iterator[str]:
    """The file's lines, decoded, with their endings; every byte also goes into `digest`."""
    with path.open("rb") as handle:
        for raw in handle:
            digest.update(raw)
            yield raw.decode("utf-8", errors="replace")


def recover_log(path: Path, grid_version: int | None = None, grid: ResearcherGrid | None = None) -> Recovered:
    """Parse a legacy log, recover n_heads and validate every experiment it holds."""
    source = str(path)
    study = study_in_text(path.name)
    parser = LogParser(source, default_experiment=f"{study[0]}_h{study[1]}" if study else None)
    digest = hashlib.sha256()
    by_experiment: dict[str | None, list[LoggedTrial]] = {}
    for trial in parser.parse(read_lines(path, digest)):
        by_experiment.setdefault(trial.experiment, []).append(trial)
    result = Recovered(source=source, problems=parser.problems, noise_lines=parser.noise_lines)
    for name in sorted(set(parser.headers) | set(by_experiment), key=str):
        trials = sorted(by_experiment.get(name, []), key=lambda t: (t.number, t.attempt))
        experiment = _build_log_experiment(name, parser.headers.get(name), trials, grid_version, grid, source,
                                           digest.hexdigest(), result)
        if experiment is not None:
            result.experiments.append(experiment)
    return result


def _build_log_experiment(
    name: str | None,
    header: LoggedHeader | None,
    trials: list[LoggedTrial],
    grid_version: int | None,
    grid: ResearcherGrid | None,
    source: str,
    sha256: str,
    result: Recovered,
) -> LegacyExperiment | None:
    def problem(line: int | None, reason: str) -> None:
        result.problems.append(Problem(file=source, line=line, reason=reason))

    study = study_in_text(name) if name else None
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
    budget_grid, recorded = grid_of(grid, budget)
    built = []
    for logged in trials:
        record = TrialRecord(logged.number, logged.state, extra=logged.extra, fields={
            "attempt": logged.attempt, "failure_reason": logged.failure_reason, "extreme_type": logged.extreme_type,
            **logged.values, "started_at": logged.started_at, "ended_at": logged.ended_at,
            "start_line": logged.start_line, "end_line": logged.end_line,
        })
        trial = build_trial(record, budget, version, lambda reason, line=logged.start_line: problem(line, reason), budget_grid)
        if trial is not None:
            built.append(trial)
    fields = {
        "experiment": experiment, "budget": budget, "horizon": horizon, "grid_version": version,
        "source_log": source, "source_sha256": sha256, **recorded,
        "completed_trials": sum(t.state == "complete" for t in built), "trials": built,
    }
    if header:
        fields |= {"planned_trials": header.n_trials, "timeout_hours": header.timeout_hours,
                   "timed_out": header.timed_out, "stopped_at": header.stopped_at}
    try:
        return LegacyExperiment.model_validate(fields)
    except ValidationError as exc:
        problem(header.line if header else None, f"experiment {experiment}: {validation_message(exc)}; skipped")
        return None


# Older trial JSON files: key names seen in them -> our names.
JSON_ALIASES = {
    "trial": "number", "trial_number": "number", "trial_id": "number", "lr": "learning_rate",
    "seconds": "train_seconds", "status": "state", "forced_extreme": "extreme_type", "extreme": "extreme_type",
    "error": "failure_reason", "fail_reason": "failure_reason", "n_params": "params", "param_count": "params",
}
JSON_STATES = {
    "complete": "complete", "completed": "complete", "finished": "complete",
    "fail": "failed", "failed": "failed", "pruned": "pruned",
    "running": "incomplete", "waiting": "incomplete", "incomplete": "incomplete",
}
# Worked out again on every read, never taken from the file: n_heads' source and whether the grid agrees.
_DERIVED = frozenset({"n_heads_source", "n_heads_note", "verified", "unverified_reason"})
_TRIAL_FIELDS = frozenset(LegacyTrial.model_fields) - {"extra"} - _DERIVED


_NUMBER_ALIASES = frozenset(key for key, name in JSON_ALIASES.items() if name == "number")


def _normalize_json_trial(entry: dict, problem: Callable[[str], None], unknown: set[str]) -> TrialRecord | None:
    """One trial entry (ours, an older script's, or Optuna's FrozenTrial shape) as a record; keys
    it does not understand are kept in extra and added to `unknown`."""
    entry, free = flatten_optuna(entry, problem)
    fields: dict[str, object] = {}
    extra: dict[str, int | float | str] = {}
    for key, value in entry.items():
        name = JSON_ALIASES.get(key, key)
        if key in _NUMBER_ALIASES and "number" in entry:  # Optuna's trial_id is not the trial's number
            name = key
        if name in _TRIAL_FIELDS:
            fields[name] = value
        elif name not in _DERIVED and name != "extra" and key not in IGNORED_KEYS:
            extra[key] = value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else json.dumps(value, default=str)
            if key not in free:
                unknown.add(key)
    extra.update(entry.get("extra") or {})
    if entry.get("n_heads_source") == "recovered":  # recovered once: recover again, never take it on trust
        fields.pop("n_heads", None)
    try:
        number = int(fields.pop("number"))  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        problem(f"no readable trial number in {clip(json.dumps(entry, default=str), 80)}; skipped")
        return None
    given = fields.pop("state", None)
    state = str(given or "").strip().lower().removeprefix("trialstate.")
    if not state:
        state = "complete" if fields.get("val_auc") is not None else "incomplete"
        if state == "incomplete":
            problem(f"trial {number}: no state and no val_auc; recorded as incomplete")
    if state not in JSON_STATES:
        problem(f"trial {number}: unknown state {given!r}; skipped")
        return None
    record = TrialRecord(number, JSON_STATES[state], fields, extra)
    if record.state != "complete" and not fields.get("failure_reason"):
        fields["failure_reason"] = DEFAULT_REASONS[record.state]
    return record


def recover_json(path: Path, grid_version: int | None = None, grid: ResearcherGrid | None = None) -> Recovered:
    """An experiment JSON file, ours or an older one (n_heads null), validated, n_heads recovered."""
    source = str(path)
    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = Problem(file=source, line=getattr(exc, "lineno", None), reason=f"not readable JSON: {exc}; skipped")
        return Recovered(source=source, kind="json", problems=[problem])
    meta = document if isinstance(document, dict) else {}
    entries = document.get("trials") if isinstance(document, dict) else document
    result = Recovered(source=source, kind="json")
    if not isinstance(entries, list):
        result.problems.append(Problem(file=source, reason="expected a list of trials, or an object with a 'trials' list; skipped"))
        return result
    if "schema_version" in meta:  # a file this module wrote: it must validate as it is
        try:
            LegacyExperiment.model_validate(meta)
        except ValidationError as exc:
            result.problems.append(Problem(file=source, reason=f"invalid recovered-experiment file: {validation_message(exc)}; skipped"))
            return result
        if meta.get("grid_source") and (grid is None or grid.source != meta["grid_source"]):
            result.problems.append(Problem(file=source, reason=f"its n_heads were recovered in the grid {meta['grid_source']}; "
                                           f"recovering them again in {grid.source if grid else 'our grid'} (give --grid "
                                           f"{meta['grid_source']} to use the same one)"))
    return recover_entries(entries, meta, path.name, hashlib.sha256(data).hexdigest(), grid_version, grid, result)


def recover_entries(
    entries: list, meta: dict, name_hint: str, sha256: str, grid_version: int | None, grid: ResearcherGrid | None,
    result: Recovered,
) -> Recovered:
    """Trial entries (JSON, CSV rows or a storage's trials, in any shape `_normalize_json_trial`
    reads) and what is known of their experiment (`meta`) into one validated experiment."""
    source = result.source

    def problem(reason: str, line: int | None = None) -> None:
        result.problems.append(Problem(file=source, line=line, reason=reason))

    recorded_version = meta.get("grid_version")
    version = recorded_version or grid_version or LEGACY_GRID_VERSION
    if recorded_version and grid_version and recorded_version != grid_version:
        problem(f"the file says grid_version {recorded_version}, --grid-version {grid_version} was given; used the file's")
    name = str(meta.get("experiment") or meta.get("study") or meta.get("name") or "")
    study = study_in_text(name) or study_in_text(name_hint)
    budget = meta.get("budget") or (study[0] if study else None)
    horizon = meta.get("horizon") or (study[1] if study else None)
    if budget is None or horizon is None:
        problem(f"cannot tell the budget and horizon: {'the study' if result.kind == 'optuna-storage' else 'the file'} has no "
                f"budget/horizon and its name does not say (name it like 2M_h1); skipped")
        return result
    try:
        experiment = experiment_name(str(budget), horizon, version)
    except ValueError as exc:
        problem(f"{exc}; skipped")
        return result

    records, unknown = [], set()
    for i, entry in enumerate(entries):
        def trial_problem(reason: str, i: int = i) -> None:
            problem(f"trials[{i}]: {reason}")

        if not isinstance(entry, dict):
            trial_problem("not an object; skipped")
            continue
        record = _normalize_json_trial(entry, trial_problem, unknown)
        if record is not None:
            records.append((i, record))
    if unknown:
        problem(f"keys not understood, kept in each trial's extra: {', '.join(sorted(unknown))}")
    _number_attempts(records, problem)

    budget_grid, recorded = grid_of(grid, str(budget))
    built = []
    for i, record in records:
        trial = build_trial(record, str(budget), int(version), lambda reason, i=i: problem(f"trials[{i}]: {reason}"), budget_grid)
        if trial is not None:
            built.append(trial)
    sha = meta.get("source_sha256")
    fields = {
        "experiment": experiment,
        "budget": budget, "horizon": horizon, "grid_version": version, **recorded,
        "source_log": meta.get("source_log") or source,
        "source_sha256": sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else sha256,
        "planned_trials": meta.get("planned_trials", meta.get("n_trials")),
        "completed_trials": sum(t.state == "complete" for t in built),
        "timed_out": bool(meta.get("timed_out", False)),
        "timeout_hours": meta.get("timeout_hours"),
        "stopped_at": meta.get("stopped_at"),
        "reconciled_with": meta.get("reconciled_with") or [],
        "trials": sorted(built, key=lambda t: (t.number, t.attempt)),
    }
    try:
        result.experiments.append(LegacyExperiment.model_validate(fields))
    except ValidationError as exc:
        problem(f"experiment {fields['experiment']}: {validation_message(exc)}; skipped")
    return result


def recover_csv(path: Path, grid_version: int | None = None, grid: ResearcherGrid | None = None) -> Recovered:
    """A `study.trials_dataframe().to_csv()` file (its name says the study, e.g. 2M_h1_trials.csv)."""
    result = Recovered(source=str(path), kind="trials-csv")
    try:
        entries, errors = read_trials_csv(path)
    except (OSError, UnicodeDecodeError) as exc:
        entries, errors = [], [f"cannot read it: {exc}; skipped"]
    if errors:
        result.problems.extend(Problem(file=str(path), reason=reason) for reason in errors)
        return result
    return recover_entries(entries, {}, path.name, hashlib.sha256(path.read_bytes()).hexdigest(), grid_version, grid, result)


def recover_storage(
    spec: str, studies: list[str] | None = None, grid_version: int | None = None, grid: ResearcherGrid | None = None
) -> list[Recovered]:
    """Every study of an Optuna storage (or those named), one result each; StorageError when the
    storage cannot be opened or a named study is not in it."""
    opened = open_storage(spec)
    try:
        results = []
        for name in study_names(opened, list(studies or [])):
            entries, attrs = study_entries(opened, name)
            result = Recovered(source=f"{opened.label}#{name}", kind="optuna-storage")
            meta = {"experiment": name, "budget": attrs.get("budget"), "horizon": attrs.get("horizon")}
            sha = entries_sha256(entries) if opened.sha256 is None else opened.sha256
            results.append(recover_entries(entries, meta, name, sha, grid_version, grid, result))
        return results
    finally:
        opened.close()


def _number_attempts(records: list[tuple[int, TrialRecord]], problem: Callable[[str], None]) -> None:
    """Give repeated trial numbers attempts in file order (an explicit `attempt` is kept); the later
    start wins, earlier ones count as failed, as in the logs."""
    by_number: dict[int, list[TrialRecord]] = {}
    for _, record in records:
        by_number.setdefault(record.number, []).append(record)
    for number, group in by_number.items():
        if len(group) == 1 or all("attempt" in r.fields for r in group):
            continue
        for attempt, record in enumerate(group, start=1):
            record.fields["attempt"] = attempt
        problem(f"trial {number} appears {len(group)} times; the last wins and the earlier ones count as failed")
        for record in group[:-1]:
            if record.state != "failed":
                record.state, record.fields["failure_reason"] = "failed", "superseded: the trial number appears again"


_SNIFF_BYTES = 8192
# What to give instead of a file that is not text (the line `hpo recover` refuses it with).
TEXT_FIX = ("give the text log, trial .json or trials .csv file (an Optuna database goes to --optuna-storage; "
            "a compressed log: decompress it first)")


def non_text_reason(path: Path) -> str | None:
    """Why `path` is not a text file, from its first 8 KiB (a NUL byte, or a tenth of its bytes not
    UTF-8), or None: a log with a stray bad byte is still read, a binary file is never echoed."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if b"\0" in head:
        return f"not a text file (a NUL byte at offset {head.index(0)})"
    decoded = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head)  # not final: a cut character is fine
    bad = decoded.count("\ufffd")
    if head and bad * 10 > len(head):
        return f"not a text file ({bad} of its first {len(head)} bytes are not UTF-8)"
    return None


def recover_file(path: Path, grid_version: int | None = None, grid: ResearcherGrid | None = None) -> Recovered:
    """A `.json` file through `recover_json`, a `.csv` through `recover_csv`, anything else through
    `recover_log`; a file that is empty or not text gives only a problem."""
    if not path.is_file():
        return Recovered(source=str(path), problems=[Problem(file=str(path), reason="not a file; skipped")])
    if path.stat().st_size == 0:
        return Recovered(source=str(path), problems=[Problem(file=str(path), reason="empty file; nothing to recover")])
    binary = non_text_reason(path)
    if binary:
        return Recovered(source=str(path), problems=[Problem(file=str(path), reason=f"{binary}; skipped: {TEXT_FIX}")])
    read = {".json": recover_json, ".csv": recover_csv}.get(path.suffix.lower(), recover_log)
    return read(path, grid_version, grid)


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
                complete=count("state", "complete"), unverified=count("verified", False), failed=count("state", "failed"),
                incomplete=count("state", "incomplete"), pruned=count("state", "pruned"), restarts=len(experiment.trials) - len(latest),
                n_heads_logged=count("n_heads_source", "logged"), n_heads_recovered=count("n_heads_source", "recovered"),
                n_heads_unrecoverable=count("n_heads_source", "unrecoverable"),
                problems=len(item.problems), noise_lines=item.noise_lines,
                output=str(outputs[experiment.experiment]) if experiment.experiment in outputs else None,
                mlflow=imports.get(experiment.experiment),
            ))
        if not item.experiments and not item.reconciled_into:
            rows.append(ExperimentSummary(
                experiment="-", source=item.source, trials=0, complete=0, failed=0, incomplete=0, restarts=0,
                n_heads_logged=0, n_heads_recovered=0, n_heads_unrecoverable=0,
                problems=len(item.problems), noise_lines=item.noise_lines,
            ))
    problems = [p for item in recovered for p in sorted(item.problems, key=lambda p: p.line or 0)]
    return RecoverReport(experiments=rows, problems=problems, written=written)
