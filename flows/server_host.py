"""The shared local Prefect server process (see flows/server.py): Prefect's API app under uvicorn,
on a socket its first user bound, stopping itself once no lease holder is alive.

    python -m flows.server_host --fd N --state-dir DIR

The watchdog checks the leases under the state folder's lock every second, so a run killed with
SIGKILL (which cannot give its lease back) still leaves no server behind: within ~2 s of the last
holder's death the server removes server.json (under the lock, so no run picks it up again) and
shuts down. SIGTERM (the last run's normal stop) shuts it down the same way.

A home without a database gets a copy of a migrated empty one first (flows/server_db.py).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import threading
import time
from pathlib import Path

from flows.server import live_users, read_state

CHECK_EVERY_S = 1.0


def watch_leases(folder: Path, server, stopped: threading.Event) -> None:
    """Ask uvicorn to exit once no lease holder is alive (checked under the state lock)."""
    while not stopped.wait(CHECK_EVERY_S):
        try:
            fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # the state folder is gone: nobody can find this server any more
            server.should_exit = True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a run is starting, joining or leaving: look again next time
            if live_users(folder):
                continue
            state = read_state(folder)
            if state is not None and state.get("pid") == os.getpid():
                (folder / "server.json").unlink(missing_ok=True)
            server.should_exit = True
            return
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.server_host")
    parser.add_argument("--fd", type=int, required=True, help="listening socket inherited from the starter")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    from prefect import __version__ as prefect_version
    from prefect.settings import get_current_settings

    from flows import server_db
    from t2vz_core.gc_pause import paused_gc

    url = get_current_settings().server.database.connection_url
    template = server_db.seed(url.get_secret_value(), prefect_version) if url is not None else None
    if template is not None:
        print(f"new database: a copy of {template}", flush=True)

    sock = socket.socket(fileno=args.fd)
    with paused_gc():  # the app's imports: ~0.5 s of CPU in full collections otherwise
        import uvicorn
        from prefect.server.api.server import create_app

        app = create_app()  # settings from this process's environment (see server._server_env)
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    stopped = threading.Event()
    watchdog = threading.Thread(target=watch_leases, args=(args.state_dir, server, stopped), daemon=True)
    watchdog.start()
    started = time.monotonic()
    try:
        server.run(sockets=[sock])  # uvicorn handles SIGTERM/SIGINT: a graceful shutdown
    finally:
        stopped.set()
    print(f"t2vz local Prefect server stopped after {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
