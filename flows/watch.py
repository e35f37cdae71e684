"""The "hpo" lines in the logs of the flow run a user watches.

`prefect deployment run hpo/20M-rerun --watch` and a flow run's Logs tab show the logs of THAT flow
run only, while trials run in the study subflows under it (their task runs log there): the watch
showed state changes and heartbeats for 14 minutes, no trial line. Inside `watched_run()` (the hpo,
campaign and study flows open it), each "hpo" record logged in a subflow or one of its task runs is
also sent to the watched (outermost) flow run, so the parent's Logs tab and `--watch` read like the
terminal; the subflow keeps its own copy. (`--watch` also needs a server that streams logs: README,
PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import UUID

from prefect.logging.handlers import APILogHandler

_WATCHED: ContextVar[UUID | None] = ContextVar("hpo_watched_flow_run", default=None)


@contextmanager
def watched_run() -> Iterator[None]:
    """The outermost flow run of this one is the one watched: an outer flow run of this process
    already set, else the root of this run's tree (a study that a campaign handed to the work pool
    runs in a worker's process of its own, a child of the campaign's run: its lines go to the
    campaign's logs), else this run."""
    from prefect.runtime import flow_run

    if _WATCHED.get() is not None or not flow_run.id:
        yield
        return
    try:
        root = flow_run.root_flow_run_id  # reads the run's ancestors from the API
    except Exception as exc:  # noqa: BLE001 - a view; the run goes on, its lines stay in its own logs
        logging.getLogger("hpo").debug("root flow run not read: %s", exc)
        root = None
    token = _WATCHED.set(UUID(str(root or flow_run.id)))
    try:
        yield
    finally:
        _WATCHED.reset(token)


class EchoToWatchedRun(APILogHandler):
    """Prefect's API log handler, sending a copy of a record logged in a child flow run (or its
    task runs) to the watched flow run."""

    def emit(self, record: logging.LogRecord) -> None:
        watched = _WATCHED.get()
        if watched is None:
            return
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        current = context.flow_run.id if context and context.flow_run else None
        if current is None or current == watched:
            return  # Prefect's own handler already sends it to the watched run
        echo = logging.makeLogRecord(record.__dict__)
        echo.flow_run_id, echo.task_run_id = watched, None
        super().emit(echo)


def echo_hpo_logger() -> None:
    """Attach the echo to the "hpo" logger (once)."""
    logger = logging.getLogger("hpo")
    if not any(isinstance(h, EchoToWatchedRun) for h in logger.handlers):
        logger.addHandler(EchoToWatchedRun())
