"""The house rules of the layout, checked on the source (README, "What is what"):
- the pure core (models, schemas, data, analysis, statistics, legacy parsing, the trainer) imports
  neither Prefect nor MLflow;
- a Prefect `@task` lives in `tasks/<concern>/tasks.py`, a `@flow` in `flows/`;
- MLflow runs are created in `tasks/tracking/runs.py` only;
- no import cycles between our modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks", "models", "schemas")
PURE = (
    "models",
    "schemas",
    "tasks/data",
    "tasks/report/analysis.py",
    "tasks/report/table.py",
    "tasks/report/study.py",
    "tasks/report/budgets.py",
    "tasks/report/checklist.py",
    "tasks/report/rows.py",
    "tasks/report/figures.py",
    "tasks/report/stats.py",
    "tasks/report/verdicts.py",
    "tasks/report/hparam_scaling.py",
    "tasks/legacy/grammar.py",
    "tasks/legacy/heads.py",
    "tasks/legacy/records.py",
    "tasks/legacy/recover.py",
    "tasks/legacy/grids.py",
    "tasks/legacy/optuna_sources.py",
    "tasks/legacy/reconcile.py",
    "tasks/training/trainer.py",
    "tasks/training/batch_size.py",
    "tasks/plan/forecast.py",
)


def sources(*roots: str) -> dict[str, ast.Module]:
    found = {}
    for root in roots:
        path = REPO / root
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            found[str(file.relative_to(REPO))] = ast.parse(file.read_text(), str(file))
    return found


def imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def decorators(tree: ast.Module) -> set[str]:
    """Names of the decorators used in a module (`task` for `@task(...)` and `@task`)."""
    names = set()
    for node in ast.walk(tree):
        for decorator in getattr(node, "decorator_list", []):
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Attribute):
                names.add(target.attr)
    return names


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_the_pure_core_imports_neither_prefect_nor_mlflow():
    offenders = {
        path: sorted(m for m in imported_modules(tree) if m.split(".")[0] in ("prefect", "mlflow"))
        for path, tree in sources(*PURE).items()
    }
    assert not {p: m for p, m in offenders.items() if m}


def test_tasks_and_flows_live_where_the_readme_says():
    misplaced = []
    for path, tree in sources(*PACKAGES).items():
        used = decorators(tree)
        if "task" in used and not (path.startswith("tasks/") and path.endswith("/tasks.py")):
            misplaced.append(f"{path}: @task outside tasks/<concern>/tasks.py")
        if "flow" in used and not path.startswith("flows/"):
            misplaced.append(f"{path}: @flow outside flows/")
    assert not misplaced


def test_mlflow_runs_are_created_in_one_module():
    creators = []
    for path, tree in sources(*PACKAGES).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("create_run", "start_run"):
                if isinstance(node.func.value, ast.Name) and node.func.value.id in ("client", "mlflow"):
                    creators.append(path)
    assert set(creators) <= {"tasks/tracking/runs.py"}, creators


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of module-level imports, or None (depth-first, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


@pytest.mark.parametrize("lazy_too", [False, True], ids=["module-level", "including-lazy"])
def test_no_import_cycles(lazy_too: bool):
    trees = sources(*PACKAGES)
    ours = {module_name(p) for p in trees}
    graph = {}
    for path, tree in trees.items():
        nodes = ast.walk(tree) if lazy_too else tree.body
        imported = imported_modules(ast.Module(body=[n for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[]))
        graph[module_name(path)] = {m for m in imported if m in ours and m != module_name(path)}
    cycle = find_cycle(graph)
    if lazy_too and cycle and all(m.startswith("flows.") for m in cycle):
        pytest.skip("lazy imports between flows (the CLI imports flows on demand) are not cycles at import time")
    assert cycle is None, " -> ".join(cycle)


def called_names(tree: ast.Module) -> set[str]:
    """Names of the functions a module calls (`run_trial_process` for `x.run_trial_process(...)` too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
    return names


def test_trial_processes_are_started_by_the_tracked_run_recipe_only():
    """Every kind of run that trains goes through tasks/study/tracked_run.py (DESIGN: one recipe
    for a tracked run); a new kind is an argument to it, not another copy."""
    starters = {path for path, tree in sources(*PACKAGES).items() if "run_trial_process" in called_names(tree)}
    assert starters <= {"tasks/study/tracked_run.py"}, starters


def test_faults_are_injected_at_one_seam():
    """Only tasks/study/faults.py reads the fault switch, so the trial worker's own code is load -> train -> save."""
    readers = [path for path, tree in sources(*PACKAGES).items()
               if path != "schemas/trial.py" and any(isinstance(n, ast.Name) and n.id == "FAULT_ENV" for n in ast.walk(tree))]
    assert readers == ["tasks/study/faults.py"]


def test_a_prefect_task_is_named_apart_from_every_plain_function():
    """`open_study_task` runs `open_study`: a reader (and an import) never takes one for the other."""
    trees = sources(*PACKAGES)
    plain, wrapped = set(), {}
    for path, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                if "task" in decorators(ast.Module(body=[node], type_ignores=[])):
                    wrapped[node.name] = path
                else:
                    plain.add(node.name)
    assert not {name: path for name, path in wrapped.items() if name in plain}


def test_horizons_are_parsed_in_one_place():
    """`h1` -> 1 lives in schemas/names.py (parse_horizon); nowhere else strips the `h`."""
    parsers = [path for path in sources(*PACKAGES) if path != "schemas/names.py"
               and 'removeprefix("h")' in (REPO / path).read_text()]
    assert not parsers
