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
