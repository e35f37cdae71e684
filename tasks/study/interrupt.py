"""Ctrl-C and SIGTERM stop a worker, they do not fail its trials.

Inside `graceful_stop()` (the study loop installs it), the first SIGINT or SIGTERM sets `STOP`:
the loop claims no new trial, each running trial process is terminated within a few seconds, and
its trial goes back to the queue with its parameters (tasks.study.trial) while its MLflow run ends
KILLED with state `interrupted`. A second signal exits at once (KeyboardInterrupt, the trial
processes die with their parent). Trial processes run in a process group of their own, so the
terminal's Ctrl-C reaches the worker only, which decides.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("hpo")

STOP = threading.Event()


def stopping() -> bool:
    """True once this worker was asked to stop."""
    return STOP.is_set()


@contextmanager
def graceful_stop() -> Iterator[None]:
    """SIGINT/SIGTERM handlers for the block (main thread only: elsewhere signals cannot be caught,
    and whoever owns the main thread decides)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()

    def on_signal(number: int, frame) -> None:
        if STOP.is_set():
            raise KeyboardInterrupt  # the second one: at once
        STOP.set()
        log.warning("%s: stopping; the running trials go back to the queue (press Ctrl-C again to exit at once)",
                    signal.Signals(number).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
