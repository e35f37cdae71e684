"""Prefect flows: orchestration only (which studies, in what order, what happens on failure)."""

import os

# Defaults a user can override in the environment:
# - our "hpo" logger (trial start/finish lines) goes to Prefect's run logs too;
# - the embedded (ephemeral) Prefect server gets more than 20 s to start on a busy laptop or CI box.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "hpo")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# plain functions (hpo retrain outside its flow, tests) log to the "hpo" logger too: no API warning
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def prefect_client_retries(budget_s: float) -> int:
    """How many retries Prefect's API client needs to wait out an outage of `budget_s`: it waits
    2^n s (+-20% jitter) before retry n, so its default 5 retries give up after about a minute,
    and a flow run whose state it could not set then crashes. The outage budget is the one the
    Optuna storage and MLflow's client wait out (StoreConfig.outage_budget_s)."""
    retries, total = 0, 0.0
    while total < budget_s:
        retries += 1
        total += 2.0**retries
    return retries


# read by Prefect when it is first imported: here for `hpo`; a worker's flow runs import Prefect
# first, so its profile sets it (README, "Running a real campaign")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", str(prefect_client_retries(float(os.environ.get("HPO_OUTAGE_BUDGET_S", 900)))))


def _forward_hpo_logger() -> None:
    """The "hpo" logger's INFO lines in Prefect's run logs (the UI's Logs tab, `--watch`).

    Prefect reads PREFECT_LOGGING_EXTRA_LOGGERS when it is first imported. A worker's flow run
    process imports Prefect before this package (`python -m prefect.engine`), so the default above
    comes too late there: the handlers Prefect gives its extra loggers are attached here instead.
    Without a level of its own the logger inherits the root's WARNING and drops the trial lines."""
    import logging

    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    if "hpo" not in [name.strip() for name in os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")]:
        return  # the user chose other extra loggers
    logger = logging.getLogger("hpo")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not PROCESS_LOGGING_CONFIG:
        setup_logging()  # what importing Prefect does; its settings may predate the default above
    for handler in logging.getLogger("prefect.extra").handlers:  # what Prefect gives its extra loggers
        if all(type(h) is not type(handler) for h in logger.handlers):
            logger.addHandler(handler)
    from flows.watch import echo_hpo_logger

    echo_hpo_logger()  # and a copy of a subflow's lines in the watched flow run (flows/watch.py)


_forward_hpo_logger()


def _notice_prefect_retries() -> None:
    from tasks.store_waits import notice_prefect_retries

    notice_prefect_retries()  # "waiting for the Prefect API (n s)" while its client retries


_notice_prefect_retries()
