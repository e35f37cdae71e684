"""While MLflow's or Prefect's client retries a store that is down, the worker says so the way it
does for the Optuna storage: `waiting for <store> (n s): <reason>`, at most once a minute (issue
22). Before, Prefect's retries were silent at the default level (a worker waiting out a Prefect
outage looked hung) and urllib3 printed a line per retry of every MLflow request. Both clients
here talk to a port nothing listens on."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from helpers import free_port
from schemas.config import StoreConfig

REPO = Path(__file__).resolve().parent.parent

PREFECT_PROBE = """
import http.server, logging, os, sys, threading


class Api(http.server.BaseHTTPRequestHandler):  # answers once, as a server up before its outage
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{server.server_port}/api"
import flows  # what `hpo` and a worker's flow runs import: it installs the notice
import tasks.store_waits as waits
waits.SAY_EVERY_S = 0  # every retry's line, to see the count go up
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
logging.getLogger("hpo").addHandler(handler)
logging.getLogger("prefect").addHandler(handler)  # what Prefect itself prints (its DEBUG lines must stay out)
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    client.hello()
    print("connected")
    server.shutdown()
    server.server_close()  # the outage: Prefect retries a refused connection once it has connected
    try:
        client.hello()
    except Exception as exc:
        print("gave up:", type(exc).__name__)
"""


def test_prefect_client_retries_say_waiting_for_the_prefect_api_with_the_time_waited(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_CLIENT_MAX_RETRIES="2", PREFECT_CLIENT_RETRY_JITTER_FACTOR="0", PREFECT_HOME=str(tmp_path),
               PYTHONPATH=str(REPO))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", PREFECT_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert "connected" in lines, done.stdout + done.stderr
    waits = [line for line in lines if line.startswith("hpo WARNING waiting for the Prefect API")]
    assert len(waits) == 2, done.stdout + done.stderr  # two retries, each announced
    seconds = [int(re.search(r"\((\d+) s\)", line).group(1)) for line in waits]
    assert seconds[0] == 0 and 2 <= seconds[1] <= 8, waits  # the second retry comes after Prefect's 2 s backoff (and a refused connect)
    assert all(line.endswith(": ConnectError") for line in waits), waits
    assert "gave up: ConnectError" in lines
    assert not [line for line in lines if line.startswith("prefect.client DEBUG")], done.stdout  # its own level is kept


def test_mlflow_client_retries_say_waiting_for_the_mlflow_server_once_not_per_retry(caplog: pytest.LogCaptureFixture, tmp_path):
    from tasks.tracking.runs import mlflow_client

    stores = StoreConfig(root=tmp_path / "mlruns", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", outage_budget_s=2)
    with caplog.at_level(logging.DEBUG), pytest.raises(MlflowException, match="Max retries exceeded"):
        mlflow_client(stores).search_experiments()  # two retries: at once, then after 4 s
    waits = [r.getMessage() for r in caplog.records if r.name == "hpo" and "waiting for the MLflow server" in r.getMessage()]
    assert waits == ["waiting for the MLflow server (0 s): NewConnectionError"], waits
    assert not [r for r in caplog.records if r.getMessage().startswith("Retrying (")]  # urllib3's line per retry


def test_a_wait_that_ended_is_not_counted_in_the_next_one():
    """Two outages a few minutes apart are two waits: the second says how long it has lasted,
    not how long since the first began."""
    from tasks.store_waits import PrefectRetryNotice

    notice = PrefectRetryNotice("the Prefect API", replace_library_line=False)
    clock = [1000.0]

    def retry(number: int, next_in: float) -> logging.LogRecord:
        message = f"Encountered retryable exception during request. Another attempt will be made in {next_in}s. This is attempt {number}/10."
        return logging.LogRecord("prefect.client", logging.DEBUG, __file__, 1, message, None, None)

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("hpo")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("tasks.store_waits.time.monotonic", lambda: clock[0])
            patch.setattr("tasks.store_waits.SAY_EVERY_S", 0.0)
            for number, next_in in ((1, 2), (2, 4), (3, 8)):
                assert notice.filter(retry(number, next_in)) is True  # Prefect's own DEBUG line is kept
                clock[0] += next_in
            clock[0] += 300  # it got through; five minutes later the API goes away again
            notice.filter(retry(1, 2))
    finally:
        logger.removeHandler(handler)
    assert [re.search(r"\((\d+) s\)", line).group(1) for line in said] == ["0", "2", "6", "0"], said


def test_events_prefect_drops_while_its_api_is_down_are_one_line_a_minute_not_two_records_each():
    """Seen in tests/test_prefect_outage.py: a 60 s outage printed 8 'Unable to connect to ws://'
    warnings and 8 'EventsWorker failed to process item Event(...)' errors, each dumping a whole
    event. Here the same records, as Prefect logs them, on its own loggers."""
    import flows  # noqa: F401 - installs the notices, as for `hpo` and a worker's flow runs
    from tasks.store_waits import DroppedEventsNotice, OncePerMinute

    (notice,) = [f for f in logging.getLogger("prefect.events.clients").filters if isinstance(f, DroppedEventsNotice)]
    notice.once = OncePerMinute()  # as in a fresh process (another test may have dropped events a moment ago)
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(f"{record.name} {record.getMessage()}")
    loggers = [logging.getLogger(n) for n in ("hpo", "prefect.events.clients", "prefect._internal.concurrency")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        for _ in range(3):
            logging.getLogger("prefect.events.clients").warning(
                "Unable to connect to %r. Please check your network settings to ensure websocket connections to the API are "
                "allowed. Otherwise event data (including task run data) may be lost. Reason: %s. Set PREFECT_DEBUG_MODE=1 "
                "to see the full error.", "ws://127.0.0.1:1/api/events/in", "[Errno 111] Connect call failed")
            logging.getLogger("prefect._internal.concurrency").error("Service %r failed to process item %r", "EventsWorker", "Event(...)")
        logging.getLogger("prefect._internal.concurrency").error("Service %r failed to process item %r", "APILogWorker", "a log")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert said[0].startswith("hpo the Prefect API is unreachable: ") and "event(s) dropped so far" in said[0], said
    assert not [line for line in said if "Unable to connect" in line or "'EventsWorker' failed" in line], said
    assert said[-1] == "prefect._internal.concurrency Service 'APILogWorker' failed to process item 'a log'"  # not ours to hide
    assert len(said) == 2, said  # once a minute
