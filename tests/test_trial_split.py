"""The per-trial time split: what a trial outcome measured becomes TIME_METRICS, and
bench/trial_split.py summarises a study's split (the study end to end is in test_study)."""

from __future__ import annotations

import pytest

from helpers import bench_module
from schemas import tracking as T
from tasks.study.trial_process import TrialOutcome


@pytest.fixture(scope="module")
def trial_split():
    with bench_module("trial_split") as module:
        yield module


def complete_outcome(process_s: float = 10.0, startup_s: float = 2.0) -> TrialOutcome:
    result = {"val_auc": 0.7, "setup_seconds": 1.0, "train_seconds": 5.0, "eval_seconds": 1.0, "finish_seconds": 0.5}
    return TrialOutcome(state="complete", result=result, seconds=process_s, startup_seconds=startup_s)


def test_a_complete_trial_splits_its_whole_wall_time():
    split = complete_outcome().time_split(trial_seconds=12.0)
    assert set(split) == set(T.TIME_METRICS)
    assert split["time/orchestration_s"] == pytest.approx(2.0)
    assert split["time/process_other_s"] == pytest.approx(0.5)  # 10 - (2 + 1 + 5 + 1 + 0.5)
    assert split["time/train_steps_s"] == 5.0 and split["time/startup_s"] == 2.0


def test_a_failed_trial_has_only_what_was_measured():
    died = TrialOutcome(state="failed", failure_kind="crashed", seconds=3.0)  # never said "ready"
    assert died.time_split(4.0) == {"time/trial_s": 4.0, "time/process_s": 3.0, "time/orchestration_s": 1.0}
    oom = TrialOutcome(state="failed", failure_kind="oom", seconds=3.0, startup_seconds=1.5)
    assert oom.time_split(4.0)["time/startup_s"] == 1.5 and "time/train_steps_s" not in oom.time_split(4.0)


def trial(state: str, start_s: float, end_s: float, outcome: TrialOutcome | None = None) -> dict:
    metrics = outcome.time_split(end_s - start_s) if outcome else {}
    return {"state": state, "start_ms": int(start_s * 1000), "end_ms": int(end_s * 1000), "metrics": metrics}


def test_summary_shares_add_up_and_say_when_startup_dominates(trial_split):
    trials = [trial("complete", 0, 12, complete_outcome()), trial("complete", 6, 18, complete_outcome()),
              trial("failed", 18, 20)]
    summary = trial_split.summarise(trials)
    assert summary["trials"] == {"complete": 2, "failed": 1} and summary["timed_trials"] == 2
    assert sum(row["share"] for row in summary["phases"].values()) == pytest.approx(1.0)
    assert summary["phases"]["time/startup_s"]["share"] == pytest.approx(2 / 12)
    assert summary["keep_processes_alive"]  # 17% of each trial is start-up
    assert summary["study_wall_s"] == pytest.approx(20.0) and summary["trials_per_hour"] == pytest.approx(2 / 20 * 3600)
    assert "start-up is 16.7% of trial time: over the 10%" in trial_split.render("2M_h1", summary)

    quick_start = [trial("complete", 0, 12, complete_outcome(startup_s=0.5))]
    assert not trial_split.summarise(quick_start)["keep_processes_alive"]


def test_summary_refuses_a_study_without_a_split(trial_split):
    with pytest.raises(ValueError, match="no complete trial with a time split"):
        trial_split.summarise([trial("complete", 0, 5), trial("failed", 5, 6, TrialOutcome(state="failed", seconds=1.0))])
