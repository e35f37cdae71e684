"""The terminal's study bar says how long the study has to go (issue 24: a live ETA per study)."""

from __future__ import annotations


def test_the_terminal_study_bar_shows_an_eta_from_this_runs_pace(monkeypatch):
    import io

    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from tasks.study import progress as progress_module

    clock = iter([100.0, 160.0])  # first seen at t=100 with 2 done; at t=160, 4 done: 30 s a trial
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    with Progress(TextColumn("{task.description}"), console=Console(file=io.StringIO())) as bars:
        display = progress_module.TrialProgress(bars, max_epochs=5)
        display.study("2M_h1", n_trials=10, complete=2)  # resumed: its 2 earlier trials set no pace
        assert bars.tasks[0].description == "[bold]2M_h1[/] trials"
        display.study("2M_h1", n_trials=10, complete=4)
        assert bars.tasks[0].description == "[bold]2M_h1[/] trials, about 3 min to go"  # 6 left x 30 s
