"""Refused input, told apart from failures that a retry could cure.

Every input check in the product raises a ValueError subclass (DataError, DatasetMismatch,
GridError, StorageError, RetrainRefused, pydantic's ValidationError) or a LookupError (an unknown
study, trial or budget). Retrying those gives the same answer five seconds later, and Prefect's
retries would bury the one useful line under hundreds of retry and traceback lines. A store that
stayed unreachable for the whole outage budget (StoreUnavailable, or MLflow's client giving up
after the retries sized to it) is not retried either: the budget was the retry.
"""

from __future__ import annotations

import logging

from tasks.study.patience import past_the_outage_budget

REFUSALS: tuple[type[BaseException], ...] = (ValueError, LookupError, TypeError)
EXIT_REFUSED = 2  # `hpo` exits 2 on refused input (as for a bad flag), 1 on a failure


def is_refusal(exc: BaseException | None) -> bool:
    """Input that retrying cannot change."""
    return isinstance(exc, REFUSALS)


def retry_unless_refused(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run unless its input was refused or its
    store outlasted the outage budget."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not (is_refusal(exc) or past_the_outage_budget(exc))


class HideRefusalTracebacks(logging.Filter):
    """On the terminal, Prefect's 'Task run failed with exception ...' and 'Encountered exception
    during execution' records carry a refusal's traceback; `hpo` prints the refusal itself as one
    line, so those records are dropped from the console (the Prefect API still gets them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (is_refusal(exc) or past_the_outage_budget(exc))


def hide_refusal_tracebacks() -> None:
    """Attach the filter to the console handlers Prefect set up on the root logger (once)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, HideRefusalTracebacks) for f in handler.filters):
            handler.addFilter(HideRefusalTracebacks())
