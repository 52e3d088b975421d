"""The local Prefect server of `t2vz run` when no PREFECT_API_URL is configured.

Prefect's own default, a temporary server per process with a fixed 20 s start timeout, fails
under load: three runs started together on 2 cores (separate PREFECT_HOMEs) all timed out, and
a killed run left its server behind. Instead:

* one server per PREFECT_HOME (per database), shared by every run that uses that home: the
  first run starts it, later runs find it in `<home>/t2vz-server/server.json` and reuse it;
* runs hold a lease (a file per process under `users/`, checked by pid and start time); the
  run that gives back the last lease stops the server. The server itself (flows/server_host.py)
  also stops within ~2 s once no lease holder is alive, so even a SIGKILLed run leaves nothing;
* the start waits as long as the machine needs (T2VZ_SERVER_START_TIMEOUT_S, default 180 s),
  fails at once when the server process exits, and any failure is one `ServerStartError`
  line for the CLI (exit 2), the half-started server stopped;
* the server's listening socket is bound here (port 0) and handed over, so there is no port race;
* it runs in its own session: a Ctrl-C meant for one run does not reach a server others use.

When runs are many, long-lived or spread over machines, start a real server instead
(`prefect server start`, PREFECT_API_URL): see README.md, "The local server".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from t2vz_core import stop
from t2vz_core.atomic import atomic_write_json

START_TIMEOUT_ENV = "T2VZ_SERVER_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
HOST_MODULE = "flows.server_host"
STATE_DIRNAME = "t2vz-server"


class ServerStartError(RuntimeError):
    """The local Prefect server could not be started (the message is one line)."""


def start_timeout_s() -> float:
    raw = os.environ.get(START_TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_START_TIMEOUT_S
    except ValueError:
        raise ServerStartError(f"{START_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


# ------------------------------------------------------------------ the state folder


def state_dir(home: str | os.PathLike) -> Path:
    return Path(home).expanduser() / STATE_DIRNAME


def _identity(pid: int) -> float | None:
    """A process's start time (with its pid, it names one process even after pid reuse)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def live_users(folder: Path) -> list[int]:
    """Pids of the lease holders still alive; leases of dead processes are removed."""
    alive = []
    for lease in (folder / "users").glob("*"):
        try:
            pid, recorded = int(lease.name), float(lease.read_text() or "nan")
        except (ValueError, OSError):
            lease.unlink(missing_ok=True)
            continue
        if _identity(pid) == recorded:
            alive.append(pid)
        else:
            lease.unlink(missing_ok=True)
    return alive


def read_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return None


def host_alive(state: dict) -> bool:
    """The server named by `state` is still that process (not a reused pid)."""
    try:
        proc = psutil.Process(int(state["pid"]))
        return proc.create_time() == state["create_time"] and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


@contextlib.contextmanager
def locked(folder: Path, timeout_s: float) -> Iterator[None]:
    """The state folder's lock (flock: released by the kernel if its holder dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerStartError(f"another run held {folder / 'lock'} for over {timeout_s:.0f} s") from None
                stop.check("waiting for the local Prefect server")
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ starting and stopping


def _health_client():
    """One HTTP client per wait: `httpx.get` builds a new client, and with it an SSL context, for
    every call (~30 ms of CPU each, on a machine that is busy starting the server)."""
    import httpx

    return httpx.Client()


def _healthy(client, url: str, timeout_s: float = 2.0) -> bool:
    import httpx

    try:
        return client.get(f"{url}/api/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _answers(state: dict, timeout_s: float) -> bool:
    """The running server of `state` answers within `timeout_s`. It did once (server.json is written
    only then), and other runs may be using it: on a loaded machine a health check can take longer
    than one try allows, and replacing a busy server would cut those runs off (seen with eight runs
    started at once on 2 cores). A server process that is gone fails at once."""
    started = time.monotonic()
    with _health_client() as client:
        while host_alive(state):
            if _healthy(client, state["url"]):
                return True
            if time.monotonic() - started > timeout_s:
                return False
            stop.check("waiting for the local Prefect server")
            time.sleep(0.2)
    return False


def _server_env() -> dict[str, str]:
    """What Prefect's own temporary server gets: this process's Prefect settings (home, database),
    no UI, ephemeral-mode services; plus this checkout on the path for flows.server_host."""
    from prefect.settings import get_current_settings

    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # its telemetry races SQLite
    env.pop("PREFECT_API_URL", None)
    return env


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def _start_host(folder: Path, timeout_s: float) -> dict:
    """Start flows.server_host on a socket bound here; its state once /api/health answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", HOST_MODULE, "--fd", str(sock.fileno()), "--state-dir", str(folder)],
            pass_fds=[sock.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=_server_env(),
            start_new_session=True,
        )
    sock.close()  # the server holds it now
    started = time.monotonic()
    try:
        with _health_client() as client:
            while not _healthy(client, url, timeout_s=1.0):
                if proc.poll() is not None:
                    raise ServerStartError(
                        f"the server process exited with code {proc.returncode} "
                        f"({_log_tail(log_path) or 'no output'}; log: {log_path})"
                    )
                if time.monotonic() - started > timeout_s:
                    raise ServerStartError(
                        f"not answering after {timeout_s:.0f} s (raise {START_TIMEOUT_ENV} "
                        f"on a busy machine; log: {log_path})"
                    )
                stop.check("starting the local Prefect server")
                time.sleep(0.2)
    except BaseException:
        _terminate(proc.pid)
        raise
    return {
        "pid": proc.pid,
        "create_time": _identity(proc.pid),
        "url": url,
        "port": port,
        "started_s": round(time.monotonic() - started, 2),
        "python": sys.executable,
    }


def _terminate(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; reaps it when it is our child."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        pass


@dataclass
class Lease:
    """This process's use of the local server of one PREFECT_HOME."""

    folder: Path
    url: str
    started_here: bool
    start_s: float | None
    released: bool = False

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def release(self) -> None:
        """Give the lease back; the last holder stops the server (and waits until it is gone)."""
        if self.released:
            return
        self.released = True
        with locked(self.folder, STOP_GRACE_S * 3):
            (self.folder / "users" / str(os.getpid())).unlink(missing_ok=True)
            state = read_state(self.folder)
            if live_users(self.folder) or state is None:
                return
            (self.folder / "server.json").unlink(missing_ok=True)  # no new run may pick it up now
        if host_alive(state):
            _terminate(int(state["pid"]))


_leases: list[Lease] = []


def acquire(home: str | os.PathLike, timeout_s: float | None = None) -> Lease:
    """A lease on the local server of `home`, starting it when none is running."""
    timeout_s = start_timeout_s() if timeout_s is None else timeout_s
    folder = state_dir(home)
    # Waiting for the lock includes waiting for another run to start the server.
    with locked(folder, timeout_s + STOP_GRACE_S):
        users = folder / "users"
        users.mkdir(exist_ok=True)
        live_users(folder)  # prunes leases of dead runs
        (users / str(os.getpid())).write_text(repr(_identity(os.getpid())))
        state = read_state(folder)
        if state is not None and _answers(state, timeout_s):
            lease = Lease(folder, state["url"], started_here=False, start_s=None)
        else:
            if state is not None and host_alive(state):  # alive but not answering for the whole timeout
                _terminate(int(state["pid"]))
            (folder / "server.json").unlink(missing_ok=True)
            try:
                state = _start_host(folder, timeout_s)
            except BaseException:
                (users / str(os.getpid())).unlink(missing_ok=True)
                raise
            atomic_write_json(folder / "server.json", state)
            lease = Lease(folder, state["url"], started_here=True, start_s=state["started_s"])
    _leases.append(lease)
    return lease


def release_all() -> None:
    """Give back every lease of this process (normal exit, or before a hard exit)."""
    while _leases:
        with contextlib.suppress(Exception):
            _leases.pop().release()


@contextlib.contextmanager
def api_for_run(timeout_s: float | None = None) -> Iterator[str | None]:
    """Inside, Prefect talks to a server: the configured one (PREFECT_API_URL in the environment
    or profile; yields None), else this home's shared local server (yields its API URL)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url:
        yield None
        return
    lease = acquire(settings.home, timeout_s)
    try:
        with temporary_settings(updates={PREFECT_API_URL: lease.api_url}):
            yield lease.api_url
    finally:
        drain_prefect_senders()
        lease.release()
        if lease in _leases:
            _leases.remove(lease)


def drain_prefect_senders(timeout_s: float = 10.0) -> None:
    """Send the run's last logs and events now, while the server is still there (Prefect would
    otherwise send them at interpreter exit, to a server already stopped)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout_s)
