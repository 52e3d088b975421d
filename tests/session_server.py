"""One Prefect server for the whole test session, shared by both xdist workers.

It is t2vz's own local server (flows/server.py) on a PREFECT_HOME in the run's shared folder
(T2VZ_TESTS_SHARED_DIR, which the workers inherit from the xdist controller): the controller starts
it at the start of the run, the workers join it, and it stops when the last of them lets go (or
dies). In-process flows (the `prefect_api` fixture) and the `t2vz run` subprocesses of the
reliability, CLI and benchmark tests point PREFECT_API_URL at it; the tests about the local server
itself (test_process_life, test_local_server, test_console) start their own on homes of their own,
and test_server starts a real `prefect server start`.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

_lock = threading.Lock()
_lease = None


def api_url() -> str:
    """The session server's API URL (http://127.0.0.1:PORT/api), started or joined on first use."""
    global _lease
    with _lock:
        if _lease is None:
            from prefect.settings import PREFECT_HOME, temporary_settings

            from flows import server

            home = Path(os.environ["T2VZ_TESTS_SHARED_DIR"]) / "server-home"  # set by conftest
            with temporary_settings(updates={PREFECT_HOME: home}):  # the server's settings come from ours
                _lease = server.acquire(home)
            atexit.register(_release)
        return _lease.api_url


def start_in_background() -> None:
    """Start (or join) the server on a thread; api_url() waits for it if it is still starting."""
    threading.Thread(target=api_url, name="session-prefect-server", daemon=True).start()


def _release() -> None:
    """Send this process's last Prefect logs and events, then give the lease back."""
    from flows import server

    server.drain_prefect_senders()
    _lease.release()
