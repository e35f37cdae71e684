"""A study rides out an outage of the Prefect API (issue 22: "Store calls (Optuna storage, MLflow
client, Prefect API) go through one retry policy ... bounded by the outage budget").

Seen before, on a real server stopped for 5 minutes under `hpo run 20M h1 --smoke`: the study
survived, but each trial took 74-83 s instead of 7 s, because the trials table artifact was
written in the study's own thread and Prefect's client retried each write for about a minute; and
Prefect's default 5 retries (about 62 s) are all that stand between a flow run and a crash when
its state cannot be set. Now the view is written from a thread of its own (it never holds up a
trial) and `hpo` sizes PREFECT_CLIENT_MAX_RETRIES to the outage budget. (The study ending inside
a 130 s outage, both flow runs then ending Completed, and the same run exiting 1 with ConnectError
under Prefect's default retries were seen by hand; a test of it waits out Prefect's 2^n s
backoff, over 5 minutes on a loaded 2-core machine, so here the sizing is checked by the probe.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest

from helpers import free_port, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
STUDY = "smoke-20M_h1"
DOWN_S = 60  # how long the server stays down


def test_prefect_client_retries_are_sized_to_the_outage_budget():
    from flows import prefect_client_retries

    def waited(retries: int) -> float:  # Prefect's client: 2^n s before retry n, jitter aside
        return sum(2.0**n for n in range(1, retries + 1))

    assert waited(5) < 70  # Prefect's default: about a minute
    for budget in (60, 900, 3600):
        retries = prefect_client_retries(budget)
        assert waited(retries - 1) < budget <= waited(retries)
    # `hpo` sets it before Prefect is first imported, so Prefect's client reads it
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_CLIENT_MAX_RETRIES", "HPO_OUTAGE_BUDGET_S")}
    probe = "import flows; from prefect.settings import PREFECT_CLIENT_MAX_RETRIES as R; print(R.value())"
    for budget, expected in ((None, prefect_client_retries(900)), ("60", prefect_client_retries(60))):
        run_env = env if budget is None else {**env, "HPO_OUTAGE_BUDGET_S": budget}
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=120)
        assert out.stdout.split()[-1:] == [str(expected)], out.stderr[-2000:]


def _complete(database: Path) -> int:
    """Complete trials of the study, read straight from Optuna's SQLite file (read-only: loading
    the study through Optuna would create its schema, racing `hpo` creating it)."""
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
            (count,) = db.execute("SELECT count(*) FROM trials JOIN studies USING (study_id) "
                                  "WHERE study_name = ? AND state = 'COMPLETE'", (STUDY,)).fetchone()  # fmt: skip
    except sqlite3.OperationalError:  # no tables yet
        return 0
    return count


def test_a_study_goes_on_while_the_prefect_server_is_down_and_its_runs_end_completed(tmp_path: Path):
    port, home, root = free_port(), tmp_path / "prefect-home", tmp_path / "mlruns"
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "HPO_OUTAGE_BUDGET_S"}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")  # fmt: skip
    server_log = tmp_path / "server.log"

    def start_server() -> subprocess.Popen:
        with open(server_log, "ab") as log:
            server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        wait_until_healthy("prefect server", api_url, server, lambda: server_log.read_text(errors="replace")[-3000:])
        return server

    def stop_server(server: subprocess.Popen) -> None:
        os.killpg(server.pid, signal.SIGKILL)  # a crash: nothing is handed over
        server.wait(timeout=30)

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"study": {"confirm_seeds": 0, "baselines": False}}))
    database = root / "optuna.db"
    server = start_server()
    hpo_log = tmp_path / "hpo.log"
    try:
        with open(hpo_log, "wb") as log:
            hpo = subprocess.Popen([str(BIN / "hpo"), "run", "20M", "h1", "--smoke", "--trials", "6", "--max-epochs", "3",
                                    "--root", str(root), "--config", str(config)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 300
        while _complete(database) < 2:
            assert hpo.poll() is None and time.monotonic() < deadline, hpo_log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        stop_server(server)
        down_at, done_at_stop = time.monotonic(), _complete(database)
        # the study goes on without the API: two more trials while it is down (before, the first
        # trials-table update after the stop held the study up for Prefect's ~62 s of retries)
        while _complete(database) < done_at_stop + 2:
            assert time.monotonic() - down_at < DOWN_S, f"two trials did not finish in {DOWN_S} s while the Prefect API was down"
            assert hpo.poll() is None or _complete(database) == 6, hpo_log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        server = start_server()
        assert hpo.wait(timeout=420) == 0, hpo_log.read_text(errors="replace")[-4000:]
        output = hpo_log.read_text(errors="replace")
        assert f"{STUDY} complete: 6/6 trials" in output, output[-4000:]
        assert "waiting for the Prefect API (" in output, output[-4000:]  # the worker says why it is slow
        # and the events Prefect drops meanwhile are one line a minute (before: 16 records, each error dumping its event)
        assert "Unable to connect to 'ws://" not in output and "failed to process item Event(" not in output, output[-4000:]
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{database}")
        assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 6
        runs = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=30).json()
        assert len(runs) == 2 and {r["state_type"] for r in runs} == {"COMPLETED"}, [(r["name"], r["state_type"]) for r in runs]
        assert STUDY in {r["name"] for r in runs}
    finally:
        if hpo.poll() is None:
            os.killpg(hpo.pid, signal.SIGKILL)
        if server.poll() is None:
            stop_server(server)
