"""Progress as people see it. In a terminal: a bar per study (completed trials) and per running
trial (epochs). In the Prefect UI: the study's trials as a table (`trials_table`).

The CLI installs the bars with `live_progress()`; flows look them up with `current_progress()`,
so a flow run from a Prefect worker (no terminal) simply has none and logs lines instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from models.arch_grid import Architecture
from tasks.study import space

_current: ContextVar[TrialProgress | None] = ContextVar("hpo_progress", default=None)


class TrialProgress:
    def __init__(self, progress: Progress, max_epochs: int):
        self._progress = progress
        self._max_epochs = max_epochs
        self._studies: dict[str, int] = {}
        self._started: dict[str, tuple[float, int]] = {}  # study -> (when this run first saw it, done then)
        self._trials: dict[tuple[str, int], int] = {}

    def study(self, name: str, n_trials: int, complete: int) -> None:
        """The study's bar, with an ETA from this run's own pace (trials it saw finish over the time
        it has run: a resumed study's earlier trials say nothing about this machine's speed)."""
        now = time.monotonic()
        if name not in self._studies:
            self._studies[name] = self._progress.add_task(f"[bold]{name}[/] trials", total=n_trials)
            self._started[name] = (now, complete)
        started_at, done_before = self._started[name]
        eta = time_to_go(now - started_at, complete - done_before, n_trials - complete)
        self._progress.update(self._studies[name], completed=complete, total=n_trials, description=f"[bold]{name}[/] trials{eta}")

    def trial_started(self, study: str, number: int, description: str) -> None:
        self._trials[(study, number)] = self._progress.add_task(f"  #{number} {description}", total=self._max_epochs)

    def on_event(self, study: str, number: int, event: dict) -> None:
        task = self._trials.get((study, number))
        if task is None:
            return
        if event["event"] == "epoch":
            self._progress.update(
                task,
                completed=event["epoch"],
                description=f"  #{number} epoch {event['epoch']}: val AUC {event['val/auc']:.4f}, train loss {event['train/loss']:.4f}",
            )

    def trial_finished(self, study: str, number: int, summary: str) -> None:
        task = self._trials.pop((study, number), None)
        if task is not None:
            self._progress.remove_task(task)
        self._progress.console.print(f"  {study} #{number}: {summary}")
        if study in self._studies:
            self._progress.advance(self._studies[study], 0)


class NoProgress(TrialProgress):
    """What a run without a terminal shows: nothing (its log lines carry the progress), so callers
    never check for a display."""

    def __init__(self) -> None:
        pass

    def study(self, name: str, n_trials: int, complete: int) -> None:
        pass

    def trial_started(self, study: str, number: int, description: str) -> None:
        pass

    def on_event(self, study: str, number: int, event: dict) -> None:
        pass

    def trial_finished(self, study: str, number: int, summary: str) -> None:
        pass


def current_progress() -> TrialProgress:
    """The terminal's bars installed by `live_progress`, or NoProgress."""
    return _current.get() or NoProgress()


@contextmanager
def live_progress(max_epochs: int, console: Console | None = None) -> Iterator[TrialProgress | None]:
    """A live display when stdout is a terminal; otherwise none (log lines carry the progress)."""
    console = console or Console()
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        display = TrialProgress(progress, max_epochs)
        token = _current.set(display)
        try:
            yield display
        finally:
            _current.reset(token)


# Optuna's states as MLflow's `state` tag names them.
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed", TrialState.RUNNING: "running",
               TrialState.WAITING: "waiting", TrialState.PRUNED: "pruned"}


def _architecture(trial: FrozenTrial, grid: list[Architecture]) -> Architecture | None:
    """The trial's grid entry, whichever space drew it (categorical: arch_idx; factored: its
    dimensions); None before it has one."""
    kind = "categorical" if "arch_idx" in trial.params else "factored"
    try:
        return space.trial_architecture(kind, grid, trial.params)
    except (KeyError, LookupError):
        return None


def trials_table(trials: list[FrozenTrial], grid: list[Architecture]) -> list[dict[str, object]]:
    """One row per trial that ran or runs, in trial order: number, state, val AUC, architecture,
    hyperparameters. Val AUC comes before the wide columns: the UI's table scrolls sideways.
    Waiting trials (queued extremes a short study never reaches) are left out."""
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.WAITING:
            continue
        arch = _architecture(trial, grid)
        rows.append({
            "trial": trial.number,
            "state": STATE_NAMES.get(trial.state, trial.state.name.lower()),
            "val_auc": round(trial.value, 4) if trial.value is not None else None,
            "architecture": f"d_model={arch.d_model} n_layers={arch.n_layers} n_heads={arch.n_heads} d_ff={arch.d_ff}" if arch else "",
            "params": arch.params if arch else None,
            **{k: trial.params.get(k) for k in ("learning_rate", "dropout", "weight_decay")},
            "failure": trial.user_attrs.get("failure_kind", ""),
        })
    return rows


def progress_line(study: str, trials: list[FrozenTrial], done: int, n_trials: int, elapsed_s: float, done_here: int) -> str:
    """`smoke-20M_h1_v2: 3/10 trials done, best val AUC 0.7712 (#2), about 4 min to go`: the ETA
    from this run's pace (trials it saw finish over the time it has run), none before the first."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    line = f"{study}: {done}/{n_trials} trials done"
    if complete:
        best = max(complete, key=lambda t: t.value)
        line += f", best val AUC {best.value:.4f} (#{best.number})"
    return line + time_to_go(elapsed_s, done_here, n_trials - done)


def time_to_go(elapsed_s: float, done_here: int, remaining: int) -> str:
    """`, about 4 min to go` at this run's pace (`done_here` trials in `elapsed_s`); "" before the
    first or when none remain."""
    if remaining <= 0 or done_here <= 0:
        return ""
    return f", about {_duration(elapsed_s / done_here * remaining)} to go"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
