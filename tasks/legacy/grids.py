"""The researcher's own architecture grid, for looking n_heads up by arch_idx (`hpo recover --grid`).

A grid spec is either a JSON file of entries per budget

    {"2M": [{"arch_idx": 0, "d_model": 32, "n_layers": 4, "n_heads": 8, "d_ff": 128, "params": 1612801}, ...]}

(`params` optional: their model's count, checked against the logs instead of ours), or a Python
callable `package.module:function` with the seed's signature `function(budget, num_features=25)`
returning such entries (dicts, or objects with those attributes), imported from the current
directory or PYTHONPATH. A spec that cannot be read at all is a `GridError` (nothing is
recovered); a defective entry or budget only makes the trials that need it unrecoverable, each
with the reason.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.arch_grid import DEFAULT_NUM_FEATURES, count_parameters

REQUIRED = ("d_model", "n_layers", "n_heads", "d_ff")
_CALLABLE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)$")


class GridError(ValueError):
    """A grid spec that cannot be read: the message says what is wrong and how to give it."""


@dataclass(frozen=True)
class GridEntry:
    """One architecture of the researcher's grid. `params` is theirs when the grid gave it, else
    our exact count of the shape (`params_given` says which)."""

    arch_idx: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    params: int
    params_given: bool
    d_ff_ratio: int | None  # d_ff / d_model when whole

    def as_dict(self) -> dict[str, int]:
        return {"arch_idx": self.arch_idx, "d_model": self.d_model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "d_ff": self.d_ff, "d_ff_ratio": self.d_ff_ratio or 0, "params": self.params}


@dataclass
class BudgetGrid:
    """The researcher's grid of one budget: its usable entries, the defects of the others (by
    arch_idx), or the error that left the whole budget without a grid."""

    source: str
    budget: str
    entries: dict[int, GridEntry] = field(default_factory=dict)
    defects: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    sha256: str | None = None

    @property
    def where(self) -> str:
        return f"the {self.budget} grid of {self.source}"


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_mapping(item: object) -> dict | None:
    if isinstance(item, dict):
        return item
    if any(hasattr(item, key) for key in REQUIRED):
        return {key: getattr(item, key) for key in ("arch_idx", *REQUIRED, "params") if hasattr(item, key)}
    return None


def budget_grid(source: str, budget: str, items: object, num_features: int = DEFAULT_NUM_FEATURES) -> BudgetGrid:
    """Entries read and checked: each needs d_model, n_layers, n_heads, d_ff as positive whole
    numbers (arch_idx too, unless no entry gives one: then it is the position in the list)."""
    grid = BudgetGrid(source=source, budget=budget)
    if not isinstance(items, (list, tuple)):
        grid.error = f"{grid.where} is a {type(items).__name__}, not a list of architectures"
        return grid
    rows = [_as_mapping(item) for item in items]
    grid.sha256 = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    positional = all(row is None or "arch_idx" not in row for row in rows)
    seen: dict[int, int] = {}
    for position, row in enumerate(rows):
        if row is None:
            grid.defects.setdefault(position, f"entry {position} of {grid.where} is not an object with {', '.join(REQUIRED)}")
            continue
        arch_idx = position if positional else _integer(row.get("arch_idx"))
        if arch_idx is None or arch_idx < 0:
            # Without a readable arch_idx no trial can name this entry; said once, on the grid.
            grid.defects.setdefault(-1 - position, f"entry {position} of {grid.where} has no readable arch_idx "
                                                   f"({row.get('arch_idx')!r})")
            continue
        if arch_idx in seen:
            grid.entries.pop(arch_idx, None)
            grid.defects[arch_idx] = f"arch_idx {arch_idx} appears twice in {grid.where} (entries {seen[arch_idx]} and {position})"
            continue
        seen[arch_idx] = position
        values = {key: _integer(row.get(key)) for key in (*REQUIRED, "params")}
        missing = [key for key in REQUIRED if values[key] is None or values[key] <= 0]
        if missing:
            shown = ", ".join(f"{key}={row[key]!r}" if key in row else f"no {key}" for key in missing)
            grid.defects[arch_idx] = f"arch_idx {arch_idx} of {grid.where} lacks a positive whole {'/'.join(missing)} ({shown})"
            continue
        d_model, n_layers, n_heads, d_ff = (values[key] for key in REQUIRED)
        if d_model % n_heads:
            grid.defects[arch_idx] = f"arch_idx {arch_idx} of {grid.where}: d_model={d_model} is not divisible by n_heads={n_heads}"
            continue
        if "params" in row and values["params"] is None:
            grid.defects[arch_idx] = f"arch_idx {arch_idx} of {grid.where}: params={row['params']!r} is not a whole number"
            continue
        given = values["params"] is not None
        params = values["params"] if given else count_parameters(d_model, n_layers, d_ff, num_features)
        grid.entries[arch_idx] = GridEntry(arch_idx, d_model, n_layers, n_heads, d_ff, params, given,
                                           d_ff // d_model if d_ff % d_model == 0 else None)
    return grid


@dataclass
class ResearcherGrid:
    """A loaded grid spec: `source` as recorded (the JSON file's path or `module:function`), and
    one `BudgetGrid` per budget, built on first use."""

    source: str
    load: Callable[[str], object]  # budget -> raw entries, raising when the spec has none for it
    budgets: dict[str, BudgetGrid] = field(default_factory=dict)

    def for_budget(self, budget: str) -> BudgetGrid:
        if budget not in self.budgets:
            try:
                items = self.load(budget)
            except Exception as exc:  # noqa: BLE001 - their code: any failure leaves this budget without a grid
                grid = BudgetGrid(source=self.source, budget=budget)
                grid.error = f"{self.source} gave no {budget} grid: {type(exc).__name__}: {exc}"
                self.budgets[budget] = grid
            else:
                self.budgets[budget] = budget_grid(self.source, budget, items)
        return self.budgets[budget]


def _json_grid(path: Path) -> ResearcherGrid:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"--grid {path}: cannot read it: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise GridError(f"--grid {path}:{exc.lineno}: not valid JSON ({exc.msg}); give an object of entries per budget, "
                        'e.g. {"2M": [{"arch_idx": 0, "d_model": 32, "n_layers": 4, "n_heads": 8, "d_ff": 128}]}') from exc
    if not isinstance(document, dict) or not document:
        raise GridError(f"--grid {path}: expected an object of entries per budget, e.g. "
                        f'{{"2M": [{{"arch_idx": 0, "d_model": 32, ...}}]}}; got a {type(document).__name__}')

    def load(budget: str) -> object:
        if budget not in document:
            raise KeyError(f"the file has no {budget!r} key (it has {', '.join(map(repr, document))})")
        return document[budget]

    return ResearcherGrid(source=str(path), load=load)


def _callable_grid(spec: str) -> ResearcherGrid:
    match = _CALLABLE.match(spec)
    assert match is not None
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(match["module"])
    except Exception as exc:  # noqa: BLE001 - an import of their code may fail in any way
        raise GridError(f"--grid {spec}: cannot import {match['module']}: {type(exc).__name__}: {exc}; run from the folder "
                        "that holds it or add that folder to PYTHONPATH") from exc
    function = getattr(module, match["function"], None)
    if not callable(function):
        raise GridError(f"--grid {spec}: {match['module']} has no function {match['function']!r}")
    return ResearcherGrid(source=spec, load=lambda budget: function(budget, num_features=DEFAULT_NUM_FEATURES))


def load_grid(spec: str) -> ResearcherGrid:
    """A grid spec read: a JSON file, or `package.module:function`; GridError naming the fix."""
    path = Path(spec)
    if path.is_file():
        return _json_grid(path)
    if _CALLABLE.match(spec):
        return _callable_grid(spec)
    raise GridError(f"--grid {spec}: no such file, and not a Python callable written package.module:function")

