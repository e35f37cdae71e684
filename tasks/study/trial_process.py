"""Run one trial in a child process and turn whatever happens into a TrialOutcome.

The driver keeps the study's heartbeat alive while it waits, forwards per-epoch events, and
kills a child that stops reporting for `stall_timeout_s`. When `should_stop` says so after an
event (the pruner gave up on the trial), the child is terminated at once, so it trains at most
the epoch it had begun: the outcome is "pruned", with the epochs it reported. A child that dies (segfault, the
kernel's OOM killer, an exception) is a failed trial with its exit status and the tail of its
stderr as the reason; the driver itself never raises because of a trial.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from schemas.trial import EVENT_PREFIX, TrialRequest
from tasks.study.interrupt import stopping

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("hpo")


# A terminated child gets this long to exit before it is killed (it holds no file open for
# writing mid-epoch: its checkpoint is written only after the last epoch).
TERMINATE_GRACE_S = 10.0


@dataclass
class TrialOutcome:
    state: str  # "complete" | "failed" | "pruned" | "interrupted"
    result: dict = field(default_factory=dict)
    failure_kind: str | None = None  # diverged | oom | crashed | hung | error
    reason: str | None = None
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # the process's wall time, start to exit
    startup_seconds: float | None = None  # start to its "ready" event: interpreter, imports, dataset read

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def pruned(self) -> bool:
        return self.state == "pruned"

    @property
    def interrupted(self) -> bool:
        """Stopped because its worker was (Ctrl-C, SIGTERM): not the trial's failure."""
        return self.state == "interrupted"

    def time_split(self, trial_seconds: float) -> dict[str, float]:
        """Where the trial's wall time went (schemas.tracking.TIME_METRICS): only the phases this
        outcome measured; a failed or pruned trial has no in-process split."""
        split = {"time/trial_s": trial_seconds, "time/process_s": self.seconds,
                 "time/orchestration_s": max(0.0, trial_seconds - self.seconds)}
        if self.startup_seconds is not None:
            split["time/startup_s"] = self.startup_seconds
        phases = {"time/setup_s": "setup_seconds", "time/train_steps_s": "train_seconds",
                  "time/eval_s": "eval_seconds", "time/finish_s": "finish_seconds"}
        if self.complete and self.startup_seconds is not None and all(k in self.result for k in phases.values()):
            split.update({name: float(self.result[key]) for name, key in phases.items()})
            inside = sum(split[name] for name in ("time/startup_s", *phases))
            split["time/process_other_s"] = max(0.0, self.seconds - inside)
        return split

    @property
    def last_epoch(self) -> int:
        """The last epoch the trial reported (0 before its first)."""
        return int(self.epochs[-1]["epoch"]) if self.epochs else 0


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _pump(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def run_trial_process(
    request: TrialRequest,
    on_event: Callable[[dict], None] | None = None,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_interval_s: float = 30.0,
    stall_timeout_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrialOutcome:
    """Start `python -m tasks.study.trial_worker`, follow it to the end (or until `should_stop`
    after an event), never raise for its failures."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hpo-trial-") as tmp:
        request_path = Path(tmp) / "request.json"
        request_path.write_text(request.model_dump_json())
        stderr_path = Path(tmp) / "stderr.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(stderr_path, "w+") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-m", "tasks.study.trial_worker", str(request_path)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=REPO_ROOT,
                # a group of its own: the terminal's Ctrl-C goes to the worker, which stops the trial
                # itself (tasks.study.interrupt); the child still dies with its parent (PDEATHSIG)
                process_group=0,
            )
            ready_at: list[float] = []
            beating = _beat_in_background(heartbeat, heartbeat_interval_s)
            try:
                outcome = _follow(child, on_event, stall_timeout_s, should_stop, ready_at)
            except BaseException:  # Ctrl-C or a driver error: leave no orphan behind
                child.kill()
                child.wait()
                raise
            finally:
                beating.set()
            if outcome is None:  # the child ended without a final event
                stderr.seek(0)
                tail = "".join(deque(stderr, maxlen=15)).strip()
                outcome = TrialOutcome(
                    state="failed",
                    failure_kind="crashed",
                    reason=f"trial process {_describe_exit(child.returncode)}" + (f": {tail[-1500:]}" if tail else ""),
                )
    outcome.seconds = time.monotonic() - started
    if ready_at:
        outcome.startup_seconds = ready_at[0] - started
    return outcome


def _terminate(child: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after TERMINATE_GRACE_S; returns once the child is gone."""
    child.terminate()
    try:
        child.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _beat_in_background(heartbeat: Callable[[], None] | None, interval_s: float) -> threading.Event:
    """The trial's heartbeat from a thread of its own, every `interval_s` until the returned event
    is set: while an MLflow call waits out an outage, the trial still says it is alive."""
    stop = threading.Event()
    if heartbeat is None:
        return stop

    def beat() -> None:
        while True:
            try:
                heartbeat()
            except Exception as exc:  # noqa: BLE001 - the storage waits out blinks itself; a miss is logged
                log.warning("heartbeat not recorded: %s", exc)
            if stop.wait(interval_s):
                return

    threading.Thread(target=beat, name="trial-heartbeat", daemon=True).start()
    return stop


def _follow(child, on_event, stall_timeout_s, should_stop, ready_at: list[float]) -> TrialOutcome | None:
    """Read the child's events until it exits; `ready_at` gets the time of its "ready" event."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
    epochs: list[dict] = []
    final: TrialOutcome | None = None
    last_progress = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=5.0)
        except queue.Empty:
            line = ""
        now = time.monotonic()
        if line is None:  # stdout closed: the child is exiting
            child.wait()
            return final
        if final is None and stopping():
            _terminate(child)
            return TrialOutcome(state="interrupted", failure_kind="interrupted", epochs=epochs,
                                reason="the worker was stopped (SIGINT/SIGTERM); the trial goes back to the queue")
        if line.startswith(EVENT_PREFIX):
            event = json.loads(line[len(EVENT_PREFIX) :])
            last_progress = now
            kind = event.pop("event")
            if kind == "ready":
                ready_at.append(now)
            elif kind == "epoch":
                epochs.append(event)
            elif kind in ("result", "evaluation"):
                final = TrialOutcome(state="complete", result=event, epochs=epochs)
            elif kind == "failed":
                final = TrialOutcome(state="failed", failure_kind=event["kind"], reason=event["reason"], epochs=epochs)
            if on_event:
                on_event({"event": kind, **event})
            if final is None and should_stop is not None and should_stop():
                _terminate(child)
                return TrialOutcome(state="pruned", result=dict(epochs[-1]) if epochs else {}, epochs=epochs)
        elif stall_timeout_s is not None and now - last_progress > stall_timeout_s:
            child.kill()
            child.wait()
            return TrialOutcome(
                state="failed",
                failure_kind="hung",
                reason=f"no progress for {stall_timeout_s:g} s; the trial process was killed",
                epochs=epochs,
            )
