"""The local server's join rules (flows/server.py), against a real server on a home of its own: a run
joining a running server waits for it to answer (a busy server is never replaced under the runs that
use it), and a server whose process is gone is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from flows import server

REPO = Path(__file__).resolve().parents[1]
JOIN = "import sys; from flows import server; lease = server.acquire(sys.argv[1]); print(lease.url); lease.release()"


def _join(home: Path) -> str:
    """The server URL another process gets when it asks for a lease (and gives it back)."""
    command = [sys.executable, "-c", JOIN, str(home)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.timeout(180)
def test_a_frozen_server_is_waited_for_and_a_dead_one_replaced(tmp_path):
    from prefect.settings import PREFECT_HOME, temporary_settings

    home = tmp_path / "home"
    with temporary_settings(updates={PREFECT_HOME: home}):  # the server's settings come from ours
        lease = server.acquire(home)
    try:
        pid = server.read_state(server.state_dir(home))["pid"]
        os.kill(pid, signal.SIGSTOP)  # no answer for 5 s, longer than one health check waits
        thaw = threading.Timer(5.0, os.kill, (pid, signal.SIGCONT))
        thaw.start()
        try:
            assert _join(home) == lease.url
        finally:
            thaw.cancel()
            os.kill(pid, signal.SIGCONT)
        assert server.read_state(server.state_dir(home))["pid"] == pid and psutil.pid_exists(pid)

        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10)
        assert _join(home) != lease.url  # a new server (on a new port), stopped again by the joiner
    finally:
        lease.release()
    assert server.read_state(server.state_dir(home)) is None
