"""One line a minute while a store is down, whoever is doing the retrying.

The Optuna storage is retried by us (tasks.study.patience), which logs "waiting for the Optuna
storage (n s)". MLflow's HTTP client and Prefect's API client retry by themselves (their retries
are sized to the same outage budget), and say so in their own ways: urllib3 prints a WARNING for
every retry of every request (a dozen lines a minute from heartbeats alone), Prefect only at DEBUG
(nothing, at the default level: a worker waiting out a Prefect outage looked hung). The notices
here read those libraries' retry records and log, on the "hpo" logger, the same line the Optuna
storage gives: `waiting for <store> (n s): <reason>` at most once a minute per store, where n is
how long the oldest request still retrying has waited.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time

log = logging.getLogger("hpo")
SAY_EVERY_S = 60.0
PREFECT_API, MLFLOW_SERVER = "the Prefect API", "the MLflow server"


def say_waiting(store: str, waited_s: float, reason: str) -> None:
    """The one waiting line, whichever store and whoever retries it."""
    log.warning("waiting for %s (%.0f s): %s", store, waited_s, reason)


class OncePerMinute:
    """True at most once every SAY_EVERY_S, across threads: the pace of a notice's lines."""

    def __init__(self) -> None:
        self._said, self._lock = float("-inf"), threading.Lock()

    def due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._said < SAY_EVERY_S:
                return False
            self._said = now
            return True


class RetryNotice(logging.Filter):
    """A filter on a library's logger that turns its retry records into our waiting line.

    A record for a first retry starts a wait for its thread (a thread's requests retry one at a
    time); its later retries continue it; a wait whose next retry is a minute overdue has ended
    (the request got through). Other records pass; a retry record passes unless
    `replace_library_line` (our line a minute stands for the library's line per retry)."""

    def __init__(self, store: str, replace_library_line: bool) -> None:
        super().__init__()
        self.store, self.replace_library_line = store, replace_library_line
        self._waits: dict[int, tuple[float, float]] = {}  # thread id -> (its first failure, its next retry due)
        self._lock, self.once = threading.Lock(), OncePerMinute()

    def retry_of(self, record: logging.LogRecord) -> tuple[int, float, str] | None:
        """(the retry's number, 1 for the first; seconds until it; why) or None for other records."""
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        retry = self.retry_of(record)
        if retry is None:
            return True
        number, next_in_s, reason = retry
        now = time.monotonic()
        with self._lock:
            self._waits = {t: w for t, w in self._waits.items() if now < w[1] + 60}
            started = now if number == 1 or record.thread not in self._waits else self._waits[record.thread][0]
            self._waits[record.thread] = (started, now + next_in_s)
            waited = now - min(first for first, _ in self._waits.values())
        if self.once.due():
            say_waiting(self.store, waited, reason)
        return not self.replace_library_line


class PrefectRetryNotice(RetryNotice):
    """prefect.client's DEBUG line before each retry: '... Another attempt will be made in 4.1s.
    This is attempt 2/10.'"""

    ATTEMPT = re.compile(r"Another attempt will be made in ([\d.]+)s\. This is attempt (\d+)/\d+")

    def retry_of(self, record: logging.LogRecord) -> tuple[int, float, str] | None:
        message = record.getMessage()
        found = self.ATTEMPT.search(message)
        if not found:
            return None
        if record.exc_info and record.exc_info[1] is not None:
            reason = type(record.exc_info[1]).__name__
        else:
            status = re.search(r"status code (\d+)", message)
            reason = f"HTTP {status.group(1)}" if status else "a retryable response"
        return int(found.group(2)), float(found.group(1)), reason


class Urllib3RetryNotice(RetryNotice):
    """urllib3.connectionpool's WARNING 'Retrying (Retry(total=...)) after connection broken by
    ...': the Retry it carries has one history entry per retry so far and knows its next backoff."""

    def retry_of(self, record: logging.LogRecord) -> tuple[int, float, str] | None:
        if not (isinstance(record.msg, str) and record.msg.startswith("Retrying (") and record.args):
            return None
        retry, error = record.args[0], record.args[1] if len(record.args) > 1 else None
        number = max(1, len(getattr(retry, "history", ()) or ()))
        next_in_s = float(retry.get_backoff_time()) if hasattr(retry, "get_backoff_time") else 0.0
        return number, next_in_s, type(error).__name__ if error is not None else "connection broken"


class DroppedEventsNotice(logging.Filter):
    """While the Prefect API is down its events client prints, for every event it gives up on
    (about one each 7 s), a WARNING 'Unable to connect to ws://...' and an ERROR "Service
    'EventsWorker' failed to process item Event(...)" that dumps the whole event over dozens of
    lines. Both are replaced by one line a minute saying how many were dropped and what that costs."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped, self._lock, self.once = 0, threading.Lock(), OncePerMinute()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if record.name == "prefect.events.clients" and message.startswith("Unable to connect to %r."):
            return False  # the drop it leads to is counted below
        args = record.args if isinstance(record.args, tuple) else ()
        if not (message.startswith("Service %r failed to process item") and args and args[0] == "EventsWorker"):
            return True
        with self._lock:
            self.dropped += 1
            dropped = self.dropped
        if self.once.due():
            log.warning("%s is unreachable: %d Prefect event(s) dropped so far (task-run states of that time; "
                        "the trials themselves are in Optuna and MLflow)", PREFECT_API, dropped)
        return False


class _ListeningLogger(logging.LoggerAdapter):
    """Stands in for prefect.client.base's module logger: its DEBUG retry lines reach the notice
    before the logger's level decides whether they are printed. (A filter on the logger would not
    see them: records under its level are never made, and Prefect's dictConfig resets the level
    each time a flow starts.)"""

    def __init__(self, logger: logging.Logger, notice: RetryNotice) -> None:
        super().__init__(logger, {})
        self.notice = notice

    def debug(self, msg, *args, **kwargs) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info is True:
            exc_info = sys.exc_info()
        self.notice.filter(logging.LogRecord(self.logger.name, logging.DEBUG, __file__, 0, msg, args, exc_info or None))
        self.logger.debug(msg, *args, **kwargs)


_installed: set[str] = set()
_install_lock = threading.Lock()


def notice_prefect_retries() -> None:
    """Log a waiting line while Prefect's client retries its API (its own line stays at DEBUG),
    and one line a minute for the events its events client drops meanwhile."""
    import prefect.client.base as client_base

    with _install_lock:
        if PREFECT_API in _installed or not isinstance(getattr(client_base, "logger", None), logging.Logger):
            return  # already listening, or a Prefect whose client logs elsewhere (tests/test_store_waits.py says so)
        notice = PrefectRetryNotice(PREFECT_API, replace_library_line=False)
        client_base.logger = _ListeningLogger(client_base.logger, notice)
        dropped = DroppedEventsNotice()  # logger filters survive Prefect's dictConfig (it only resets levels and handlers)
        for name in ("prefect.events.clients", "prefect._internal.concurrency"):
            logging.getLogger(name).addFilter(dropped)
        _installed.add(PREFECT_API)


def notice_mlflow_retries() -> None:
    """Log a waiting line a minute while MLflow's HTTP client retries, instead of urllib3's
    WARNING per retry (a filter on urllib3.connectionpool, whose level Prefect leaves alone)."""
    with _install_lock:
        if MLFLOW_SERVER in _installed:
            return
        logger = logging.getLogger("urllib3.connectionpool")
        logger.addFilter(Urllib3RetryNotice(MLFLOW_SERVER, replace_library_line=True))
        _installed.add(MLFLOW_SERVER)
