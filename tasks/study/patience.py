"""Stores blink: Optuna storage calls ride out a transient outage within a budget.

A database restart, a failover or a dropped connection is not a reason to kill a campaign that has
run for days. `PatientRDBStorage` is Optuna's RDBStorage whose every storage call retries a
transient database error (connection refused or reset, server shutting down or starting) with
backoff, logging "waiting for the Optuna storage (n s)" once a minute, for up to
`StoreConfig.outage_budget_s` (default 15 minutes). Past the budget it raises `StoreUnavailable`,
and the worker stops: its trial is left to the heartbeat check, which fails and re-queues it once
the store is back (tasks.study.store.optuna_storage). Errors that are not transient (a constraint,
a bad value) are raised at once.

MLflow's HTTP client retries by itself (urllib3 backoff); tasks.tracking.runs.mlflow_retry_env
sizes its retries to the same budget.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from optuna.storages import RDBStorage
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, PendingRollbackError

from tasks import store_waits


# Every storage call a study makes (optuna.storages.BaseStorage and the heartbeat API).
STORAGE_CALLS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
    "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
    # what Optuna's _CachedStorage (every study's storage wraps ours in it) calls directly on its
    # backend, skipping the public methods: a draw's set_trial_param is `_set_trial_param` there
    "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
)
FIRST_WAIT_S, LONGEST_WAIT_S = 1.0, 30.0


class StoreUnavailable(RuntimeError):
    """A store stayed unreachable past the outage budget: the worker stops (run it again once the store is back)."""


def past_the_outage_budget(exc: BaseException | None) -> bool:
    """A store that stayed unreachable for the whole outage budget: ours (StoreUnavailable) or
    MLflow's HTTP client giving up after the retries we sized to the budget (an MlflowException
    raised while handling requests' ConnectionError or RetryError). Retrying it again (a Prefect
    task retry) would wait another budget for nothing: the budget was the retry."""
    if exc is None:
        return False
    if isinstance(exc, StoreUnavailable):
        return True
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import RetryError

    return isinstance(exc, MlflowException) and any(isinstance(link, (RequestsConnectionError, RetryError)) for link in _chain(exc))


def _chain(exc: BaseException | None):
    """The exception, then what caused it or was being handled when it was raised."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """A database error that waiting can cure: the connection, not the statement.

    The chain is searched, not only the top: Optuna wraps every SQLAlchemy error in
    StorageInternalError, and where it retries a failed query in the same session (the fallback in
    RDBStorage._get_trials) the error raised is a PendingRollbackError whose context is the lost
    connection's OperationalError (seen in CI: the worker died instead of waiting)."""
    for link in _chain(exc):
        if isinstance(link, (OperationalError, InterfaceError, DisconnectionError, PendingRollbackError)):
            return True
        if isinstance(link, DBAPIError) and link.connection_invalidated:
            return True
    return False


def patiently(call: Callable, store: str, budget_s: float, *args, **kwargs):
    """`call(*args, **kwargs)`, retried on transient errors with backoff for up to `budget_s`."""
    started = time.monotonic()
    wait, said = FIRST_WAIT_S, started
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sorted below: transient ones are waited out
            if not is_transient(exc):
                raise
            waited = time.monotonic() - started
            if waited + wait > budget_s:
                raise StoreUnavailable(
                    f"{store} unreachable for {waited:.0f} s (outage budget {budget_s:.0f} s): {str(exc.__cause__ or exc)[:300]}; "
                    "the worker stops; run it again once the store is back (its trial is re-queued then)"
                ) from exc
            if time.monotonic() - said >= store_waits.SAY_EVERY_S or waited == 0 or said == started:
                store_waits.say_waiting(store, waited, type(exc.__cause__ or exc).__name__)
                said = time.monotonic()
            time.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT_S)


_inside = threading.local()  # a storage call made by another one is retried by the outer one only


def _patient(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args, **kwargs):
        if getattr(_inside, "active", False):
            return method(self, *args, **kwargs)
        _inside.active = True
        try:
            return patiently(method, "the Optuna storage", self.outage_budget_s, self, *args, **kwargs)
        finally:
            _inside.active = False

    return call


class PatientRDBStorage(RDBStorage):
    """RDBStorage whose calls wait out a database outage of up to `outage_budget_s`."""

    def __init__(self, *args, outage_budget_s: float = 900.0, **kwargs):
        self.outage_budget_s = outage_budget_s
        super().__init__(*args, **kwargs)


for _name in STORAGE_CALLS:
    if hasattr(RDBStorage, _name):
        setattr(PatientRDBStorage, _name, _patient(getattr(RDBStorage, _name)))

