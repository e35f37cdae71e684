"""The temporary Prefect server `hpo` starts when no PREFECT_API_URL is set, kept out of the
terminal's reach.

Prefect starts that server (uvicorn) as a plain child, in the terminal's foreground process group:
Ctrl-C reached it as well as `hpo`, the server died at once, and the worker it was serving went on
blind ("Unable to connect to 'ws://...'", "Error logging to API") while it stopped its trial. Here
the server runs in a session of its own, so a Ctrl-C reaches `hpo` only, which stops gracefully
and then stops the server (Prefect's atexit hook). On Linux the server is also told to exit when
`hpo` dies without cleaning up (SIGKILL, a closed terminal): it never outlives its worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import types

_LOCK = threading.Lock()


def _die_with_parent(parent: int):
    """preexec_fn: SIGTERM this child when the thread that started it exits (Linux prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    return preexec


def detach_temporary_server() -> str | None:
    """Start Prefect's temporary server in a session of its own when this process would use one
    (no PREFECT_API_URL); its API URL, or None when a server is configured.

    Prefect keeps one SubprocessASGIServer per port; the one started here is the one its clients
    then find and use, so nothing else changes. Call it from the main thread (the death signal
    follows the thread that started the server)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api import server as server_module

    server_class = server_module.SubprocessASGIServer
    if not getattr(server_class, "_hpo_detached", False):
        start_uvicorn = server_class._run_uvicorn_command

        def run_in_own_session(self) -> subprocess.Popen:
            parent = os.getpid()
            on_main = threading.current_thread() is threading.main_thread()

            def popen(*args, **kwargs) -> subprocess.Popen:
                return subprocess.Popen(*args, start_new_session=True,
                                        preexec_fn=_die_with_parent(parent) if on_main else None, **kwargs)

            with _LOCK:  # Prefect's module calls subprocess.Popen: give it ours for this one call
                server_module.subprocess = types.SimpleNamespace(Popen=popen, TimeoutExpired=subprocess.TimeoutExpired)
                try:
                    return start_uvicorn(self)
                finally:
                    server_module.subprocess = subprocess

        server_class._run_uvicorn_command = run_in_own_session
        server_class._hpo_detached = True
    server = server_class()
    server.start()
    return server.api_url
