"""Refused input is one line and exit 2, never retried by Prefect, never buried under tracebacks
(issue 22, case 5); a failure a retry can cure is still retried."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow, task

from tasks.refusals import retry_unless_refused
from tasks.study.patience import StoreUnavailable

REPO = Path(__file__).resolve().parent.parent


def _calls_until_given_up(error: BaseException) -> int:
    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_unless_refused)
    def flaky() -> None:
        calls.append(1)
        raise error

    @flow
    def run() -> None:
        flaky()

    run(return_state=True)
    return len(calls)


def test_refused_input_is_not_retried_and_an_outage_is(prefect_harness):
    from tasks.data.dataset import DataError

    assert _calls_until_given_up(DataError("ten.csv", "ticker ten: 10 rows, too few", "give at least 300 rows")) == 1
    assert _calls_until_given_up(LookupError("no study 2M_h9")) == 1
    assert _calls_until_given_up(StoreUnavailable("optuna unreachable for 900 s")) == 1  # the budget was the retry
    assert _calls_until_given_up(ConnectionError("connection refused")) == 3
    assert _calls_until_given_up(_mlflow_gave_up()) == 1  # MLflow's own retries were sized to the budget


def _mlflow_gave_up() -> BaseException:
    """What MLflow's client raises once its HTTP retries are spent on a server that is down."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from helpers import free_port

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        patch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        with pytest.raises(MlflowException) as gave_up:
            MlflowClient(f"http://127.0.0.1:{free_port()}").search_experiments()
    return gave_up.value


def test_an_mlflow_server_down_past_the_budget_stops_the_run_with_one_line_and_no_retries(tmp_path: Path, prefect_harness):
    from helpers import free_port

    done = _hpo("run", "smoke", "h1", "--smoke", root=tmp_path / "mlruns", HPO_OUTAGE_BUDGET_S="3",
                HPO_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "stopped: the MLflow server stayed unreachable for the whole outage budget (3 s)" in out, out
    assert "waiting for the MLflow server (0 s)" in out, out
    assert "Retry 1/2" not in out and "Traceback" not in out, out  # before: two Prefect retries of the whole budget, 1,182 lines


def _hpo(*args: str, root: Path, **env_vars: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "HPO_ROOT": str(root), **env_vars}
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT"):
        env.pop(key, None)  # hpo sizes them from its own outage budget
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_refusal_inside_a_flow_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path: Path, prefect_harness):
    quiet = _hpo("retrain", "smoke_h1", "99", root=tmp_path / "mlruns")
    out = quiet.stdout + quiet.stderr
    assert quiet.returncode == 2, out
    assert "no MLflow store at sqlite:///" in out and "give the --root" in out
    assert "Traceback" not in out and "Retry" not in out, out
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # a mistyped root leaves no empty store behind
    loud = _hpo("--debug", "retrain", "smoke_h1", "99", root=tmp_path / "mlruns")
    assert loud.returncode == 2 and "Traceback" in loud.stdout + loud.stderr


def test_bad_data_is_exit_2_before_any_store(tmp_path: Path, prefect_harness):
    path = tmp_path / "fake.parquet"
    path.write_text("hello")
    result = _hpo("run", "smoke", "h1", "--smoke", "--data", str(path), root=tmp_path / "mlruns")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "fake.parquet: cannot be read" in result.stdout and "Fix:" in result.stdout
    assert not (tmp_path / "mlruns").exists()


def test_an_optuna_database_down_past_the_budget_before_any_flow_is_one_line_too(tmp_path: Path, prefect_harness):
    from helpers import free_port

    storage = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing"
    done = _hpo("run", "smoke", "h1", "--smoke", "--storage", storage, root=tmp_path / "mlruns", HPO_OUTAGE_BUDGET_S="3")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "waiting for the Optuna storage (0 s)" in out and "stopped: the Optuna storage unreachable" in out, out
    assert "Traceback" not in out and len(out.splitlines()) < 10, out  # before: 553 lines of traceback
