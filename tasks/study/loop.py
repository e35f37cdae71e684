"""The one study loop: claim trials, run up to `slots` at once, until the study has `n_trials` done trials.

The Prefect flow, the CLI, the tests and the benchmarks all run `run_trials`; the flow passes an
`execute` that runs each trial as a Prefect task (tasks.study.tasks), the default runs
`tasks.study.trial.run_trial` in this process.

Guarantees, and how:
- `n_trials` counts done trials across all workers and restarts: COMPLETE ones, plus PRUNED ones
  when the study has a pruner (without one there are none). A worker only starts a trial while
  done + running < n_trials, and after `ask()` it checks its claim: ordered by trial number, the
  done and running trials beyond the first n_trials are surplus and are failed at once (reason
  "surplus"), so two workers racing for the last slot never overshoot.
- The sampler draws once, when the trial is claimed: the claim keeps its architecture on the trial
  (`ATTR_ARCHITECTURE`) and its hyperparameters are the trial's params, which `run_trial` reads.
- A killed worker's trial stops heart-beating; after `heartbeat_grace_s` any worker fails it,
  marks its MLflow run FAILED (reason worker_lost) and re-enqueues its parameters (at most
  `max_retries` times; tasks.study.store.optuna_storage).
"""

from __future__ import annotations

import contextvars
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_any
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from schemas.config import HpoConfig, StudySpec
from tasks.study import space
from tasks.study.finish import finish_study
from tasks.study.interrupt import graceful_stop, stopping
from tasks.study.progress import current_progress
from tasks.study.store import (
    ATTR_ARCHITECTURE,
    ATTR_FAILURE_KIND,
    ATTR_FAILURE_REASON,
    SURPLUS,
    StudyHandle,
    StudyStopped,
    open_study,
)
from tasks.study.trial import Claim, TrialResult, run_trial

log = logging.getLogger("hpo")

TrialExecutor = Callable[[int], TrialResult]  # trial number -> its result


class NoClaim(enum.Enum):
    """Why `next_trial` claimed nothing."""

    DONE = "done"  # the study (or this run of it) is done
    WAIT = "wait"  # block=False: the remaining slots are taken by running trials, which may complete the study


def run_trials(handle: StudyHandle, execute: TrialExecutor | None = None, poll_s: float = 2.0) -> str | None:
    """The study loop: run trials, up to `slots` at once on this worker, until the study has
    `n_trials` done trials; returns why it stopped early (a timeout), or None.

    Raises StudyStopped after `failure_limit` failed trials of this run (the running ones finish
    first). An exception from `execute` (not a failed trial: those are results) stops the loop and
    is raised once the running trials have ended.
    """
    cfg = handle.config.study
    progress = current_progress()
    if execute is None:
        def execute(number: int) -> TrialResult:
            return run_trial(handle, number, progress)
    progress.study(handle.name, cfg.n_trials, handle.counts()["done"])
    loop = _LoopState(started=time.monotonic())
    running: set[Future] = set()
    with graceful_stop(), ThreadPoolExecutor(max_workers=cfg.slots, thread_name_prefix=f"{handle.name}-slot") as slots:
        while True:
            for future in [f for f in running if f.done()]:
                running.discard(future)
                if future.result().state == "failed":  # a pruned trial is a result, not a failure
                    loop.failures += 1
            claim = next_trial(handle, loop, block=False) if len(running) < cfg.slots else NoClaim.WAIT
            if claim is NoClaim.DONE and not running:
                return loop.stop_reason
            if isinstance(claim, NoClaim):
                if running:
                    wait_for_any(running, timeout=poll_s, return_when=FIRST_COMPLETED)
                else:
                    time.sleep(poll_s)
                continue
            # each trial thread sees the caller's context (Prefect's flow run, the progress bars)
            running.add(slots.submit(contextvars.copy_context().run, execute, claim.number))


@dataclass
class _LoopState:
    """What one run of the loop remembers: when it started, its failures, why it stopped."""

    started: float
    failures: int = 0
    stop_reason: str | None = None


def next_trial(handle: StudyHandle, loop: _LoopState, poll_s: float = 2.0, block: bool = True) -> Claim | NoClaim:
    """Claim the next trial for this worker and draw its parameters (the one draw); NoClaim.DONE
    when the study (or this run) is done. With block=False it returns NoClaim.WAIT instead of
    sleeping while running trials (this worker's own or other workers') may still complete the study."""
    cfg = handle.config.study
    while True:
        if stopping():
            loop.stop_reason = loop.stop_reason or "stopped by SIGINT/SIGTERM; run it again to resume"
            return NoClaim.DONE
        optuna.storages.fail_stale_trials(handle.study)
        counts = handle.counts()
        if counts["done"] >= cfg.n_trials:
            return NoClaim.DONE
        if cfg.timeout_hours is not None and time.monotonic() - loop.started > cfg.timeout_hours * 3600:
            if loop.stop_reason is None:  # said once, though slots may poll until their trials end
                loop.stop_reason = f"timeout after {cfg.timeout_hours:g} h at {counts['done']}/{cfg.n_trials} trials"
                log.warning("Timeout after %g h: stopping at %d/%d trials", cfg.timeout_hours, counts["done"], cfg.n_trials)
            return NoClaim.DONE
        if loop.failures >= cfg.failure_limit:
            raise StudyStopped(
                f"{handle.name}: {loop.failures} trials failed in this run (limit {cfg.failure_limit}); "
                "see the failure_reason of the failed runs in MLflow, fix the cause, and run again to resume"
            )
        if counts["done"] + counts["running"] >= cfg.n_trials:
            if not block:
                return NoClaim.WAIT
            time.sleep(poll_s)  # the last trials are running elsewhere; take over if their worker dies
            continue
        trial = handle.study.ask()
        handle.storage.record_heartbeat(trial._trial_id)
        if _is_surplus(handle, trial):
            trial.set_user_attr(ATTR_FAILURE_KIND, SURPLUS)
            trial.set_user_attr(ATTR_FAILURE_REASON, "another worker took the last slot first")
            handle.study.tell(trial, state=TrialState.FAIL)
            continue
        arch, hparams = space.suggest(trial, handle.arch_space, handle.grid, handle.config.search)  # the one draw
        # one write (each attribute is a commit): arch_idx and grid version whatever the space drew
        trial.set_user_attr(ATTR_ARCHITECTURE, {**arch.as_dict(), "grid_version": handle.grid_version})
        return Claim(trial.number, arch, hparams)


def _is_surplus(handle: StudyHandle, trial: optuna.Trial) -> bool:
    claimed = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    order = sorted(t.number for t in claimed)
    return order.index(trial.number) >= handle.config.study.n_trials


def run_study(spec: StudySpec, config: HpoConfig, execute: TrialExecutor | None = None) -> dict[str, object]:
    """A whole study without Prefect: the same three steps the study flow runs as tasks."""
    handle = open_study(spec, config)
    stop_reason = run_trials(handle, execute)
    return finish_study(handle, stop_reason)
