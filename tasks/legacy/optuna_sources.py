"""What the researcher's Optuna left behind, read as trial entries of one shape: the study's storage
(an SQLite file, a journal file or an RDB URL, through `optuna.load_study`), a
`study.trials_dataframe()` CSV, and trial JSON written from a `FrozenTrial`. Each becomes a list
of dicts in FrozenTrial's shape (`number`, `state`, `values`, `params`, `user_attrs`,
`system_attrs`, `datetime_start`, `datetime_complete`) that `flatten_optuna` turns into the flat
keys of a legacy trial; `tasks.legacy.recover` validates them like any other trial JSON.

Reading never writes to the researcher's files: an SQLite or journal file is copied and the copy
is opened.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks.legacy.grammar import mapping_fields, parse_number

# FrozenTrial's keys read by `flatten_optuna`, and those knowingly left out (derivable or not ours).
OPTUNA_KEYS = frozenset({"value", "values", "params", "user_attrs", "system_attrs", "datetime_start", "datetime_complete"})
IGNORED_KEYS = frozenset({"duration", "intermediate_values", "distributions", "trial_id", "_trial_id"})
# TrialState's integer values, for JSON that wrote the enum as a number.
_STATE_NUMBERS = {0: "RUNNING", 1: "COMPLETE", 2: "PRUNED", 3: "FAIL", 4: "WAITING"}
_SQLITE_MAGIC = b"SQLite format 3\x00"


class StorageError(ValueError):
    """An Optuna storage that cannot be read: the message says what is wrong and what to give."""


def _moment(value: object) -> datetime | object:
    if isinstance(value, str) and value.strip():
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    return value


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= 1e-4 * max(abs(a), abs(b))
    return a == b


def flatten_optuna(entry: dict, problem: Callable[[str], None]) -> tuple[dict, set[str]]:
    """An entry with Optuna's nested parts made flat keys of our names: `params` and `user_attrs`
    (known keys as numbers, `lr` -> `learning_rate`), the objective value as `val_auc` (every value
    of a multi-objective trial kept as `value_N`), the `fail_reason` system attr as
    `failure_reason`, the datetimes as `started_at`/`ended_at`. The entry's own flat keys win;
    a nested value that contradicts one is reported. Returns the flat entry and the names that
    came from params/user_attrs (free-form, kept in extra without being reported as unknown)."""
    # `params` is also our schema's parameter count: only a dict is Optuna's parameters.
    flat = {key: value for key, value in entry.items()
            if key not in OPTUNA_KEYS or (key == "params" and not isinstance(value, dict))}
    number = entry.get("number", entry.get("trial_number", "?"))
    free: set[str] = set()

    def put(name: str, value: object, where: str) -> None:
        if flat.get(name) is not None and not _same(flat[name], value):
            problem(f"trial {number}: {where}={value!r} contradicts {name}={flat[name]!r}; kept {name}")
        elif flat.get(name) is None:
            flat[name] = value

    for part in ("params", "user_attrs"):
        nested = entry.get(part)
        if nested is None or (part == "params" and not isinstance(nested, dict)):
            continue
        if not isinstance(nested, dict):
            problem(f"trial {number}: {part} is not an object; left out")
            continue
        known, extra, errors = mapping_fields(nested)
        for error in errors:
            problem(f"trial {number}: {part}: {error}; left out")
        for name, value in known.items():
            put(name, value, f"{part}.{name}")
        for name, value in extra.items():
            free.add(name)
            put(name, value, f"{part}.{name}")
    values = entry.get("values")
    if values is None and entry.get("value") is not None:
        values = [entry["value"]]
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, list) and values:
        if len(values) > 1:
            for i, value in enumerate(values):
                free.add(f"value_{i}")
                flat.setdefault(f"value_{i}", value)
            problem(f"trial {number}: {len(values)} objective values; the first is read as val_auc, all are kept as value_N")
        put("val_auc", values[0], "value")
    elif values is not None:
        problem(f"trial {number}: value(s) {values!r} are not numbers; left out")
    system = entry.get("system_attrs")
    if isinstance(system, dict) and system.get("fail_reason"):
        flat.setdefault("failure_reason", str(system["fail_reason"]))
    for key, name in (("datetime_start", "started_at"), ("datetime_complete", "ended_at")):
        if entry.get(key) is not None:
            flat.setdefault(name, _moment(entry[key]))
    if isinstance(flat.get("state"), int) and not isinstance(flat.get("state"), bool):
        flat["state"] = _STATE_NUMBERS.get(flat["state"], flat["state"])
    return flat, free


# --- a trials_dataframe() CSV ----------------------------------------------------------------


def _cell(text: str) -> object:
    """A CSV cell as pandas wrote it: '' -> None, numbers as numbers, True/False as booleans."""
    text = text.strip()
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return parse_number(text)
    except ValueError:
        return text


def read_trials_csv(path: Path) -> tuple[list[dict], list[str]]:
    """A `study.trials_dataframe().to_csv(path)` file as FrozenTrial-shaped entries, and the
    problems with the file as a whole (then there are no entries)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return [], ["empty file; skipped"]
    header = [name.strip() for name in rows[0]]
    if "number" not in header or "state" not in header:
        hint = (" (it looks like trials_dataframe(multi_index=True): export with the default multi_index=False)"
                if "params" in header else "")
        return [], [f"not a trials_dataframe() CSV: it needs 'number' and 'state' columns{hint}; skipped"]
    entries = []
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        cells = dict(zip(header, row))
        entry: dict = {"params": {}, "user_attrs": {}, "system_attrs": {}}
        values: dict[int, object] = {}
        for name, raw in cells.items():
            value = _cell(raw)
            if name.startswith(("params_", "user_attrs_", "system_attrs_")):
                part, key = _split(name)
                if value is not None:
                    entry[part][key] = value
            elif name.startswith("values_") and name.removeprefix("values_").isdigit():
                values[int(name.removeprefix("values_"))] = value
            elif name in ("", "Unnamed: 0"):  # the index pandas writes first
                continue
            elif value is not None:
                entry[name] = value
        if values:
            entry["values"] = [values[i] for i in sorted(values)]
        entries.append(entry)
    return entries, []


def _split(column: str) -> tuple[str, str]:
    for part in ("params", "user_attrs", "system_attrs"):
        if column.startswith(part + "_"):
            return part, column[len(part) + 1:]
    raise ValueError(column)


# --- an Optuna storage ------------------------------------------------------------------------


@dataclass
class OpenedStorage:
    """An Optuna storage opened for reading: `label` is what is recorded as the source (a URL with
    its password hidden, or the file's path), `sha256` the file's bytes (None for a server)."""

    storage: object
    label: str
    sha256: str | None
    scratch: Path | None = None

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def open_storage(spec: str) -> OpenedStorage:
    """An RDB URL (`sqlite:///...`, `postgresql://...`), an SQLite file or an Optuna journal file,
    opened read-only in effect; StorageError naming what to give instead."""
    import optuna

    if "://" in spec:
        from sqlalchemy.engine import make_url

        try:
            label = make_url(spec).render_as_string(hide_password=True)
            storage = optuna.storages.RDBStorage(spec, skip_table_creation=True)
        except Exception as exc:  # noqa: BLE001 - drivers, DNS, credentials: any failure is "cannot open"
            raise StorageError(f"--optuna-storage {spec}: cannot open it: {type(exc).__name__}: {exc}") from exc
        return OpenedStorage(storage, label, None)
    path = Path(spec)
    if not path.is_file():
        raise StorageError(f"--optuna-storage {spec}: no such file; give an SQLite file, an Optuna journal file, "
                           "or an RDB URL such as postgresql://user@host/db")
    data = path.read_bytes()
    scratch = Path(tempfile.mkdtemp(prefix="hpo-optuna-"))
    copy = scratch / path.name
    shutil.copyfile(path, copy)
    try:
        if data.startswith(_SQLITE_MAGIC):
            storage = optuna.storages.RDBStorage(f"sqlite:///{copy}", skip_table_creation=True)
        else:
            first = data.split(b"\n", 1)[0]
            try:
                json.loads(first)
            except ValueError:
                raise StorageError(f"--optuna-storage {spec}: neither an SQLite file nor an Optuna journal file "
                                   f"(it starts {data[:24]!r}); give the study's storage file or its RDB URL") from None
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            storage = JournalStorage(JournalFileBackend(str(copy)))
        optuna.get_all_study_names(storage)
    except StorageError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001 - an SQLite file of another program, a damaged journal, ...
        shutil.rmtree(scratch, ignore_errors=True)
        raise StorageError(f"--optuna-storage {spec}: not a readable Optuna storage: {type(exc).__name__}: {exc}") from exc
    return OpenedStorage(storage, str(path), hashlib.sha256(data).hexdigest(), scratch)


def study_names(opened: OpenedStorage, wanted: list[str]) -> list[str]:
    """The studies to read: `wanted`, each checked to exist, or every study in the storage."""
    import optuna

    names = sorted(optuna.get_all_study_names(opened.storage))
    if not names:
        raise StorageError(f"--optuna-storage {opened.label}: it holds no study")
    missing = [name for name in wanted if name not in names]
    if missing:
        raise StorageError(f"--study {', '.join(missing)}: not in {opened.label}; it holds: {', '.join(names)}")
    return wanted or names


def study_entries(opened: OpenedStorage, name: str) -> tuple[list[dict], dict]:
    """Every trial of one study as a FrozenTrial-shaped entry, and the study's user attrs."""
    import optuna

    study = optuna.load_study(study_name=name, storage=opened.storage)
    entries = [
        {
            "number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
            "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return entries, dict(study.user_attrs)


def entries_sha256(entries: list[dict]) -> str:
    """A fingerprint of trial entries, for a storage that is not a file."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True, default=str).encode()).hexdigest()

