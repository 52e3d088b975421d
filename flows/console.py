"""What `t2vz run` shows on the console: progress, per-row results and the summary.

At the default level everything else stays off the console:
- Python warnings raised inside libraries (deprecations, "this will change" notices) are
  routed into logging (`py.warnings`) at DEBUG: whoever reads a debug log sees them, a
  newcomer's console does not. t2vz's own warnings are log records of its loggers (a
  retry after running out of memory, a decoder fallback) and keep their WARNING level.
- Native libraries' stderr chatter is caught where it happens (see
  t2vz_core/native_stderr.py, used by the mediapipe pose backend) and logged at DEBUG.
- The temporary Prefect server that a run without PREFECT_API_URL starts is a uvicorn
  subprocess writing to our stderr; when it is stopped mid-way through its own startup or
  shutdown it prints asyncio CancelledError tracebacks that say nothing about the run.
  Its output goes to a log file instead (`server_log_path()`), kept for diagnosis.
`--verbose` changes none of that routing and turns the levels up: t2vz's loggers and
py.warnings at DEBUG, Prefect's run logs on the console, the server's output on stderr.

`configure_run_console(verbose)` is called once by `t2vz run`, before Prefect starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_SERVER_LOG_NAME = "t2vz-prefect-server.log"


class _DemoteToDebug(logging.Filter):
    """Library warnings are for developers: keep them, below the console's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def configure_run_console(verbose: bool) -> None:
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    if verbose:
        for name in ("t2vz_core", "tasks", "flows"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        return
    if not any(isinstance(f, _DemoteToDebug) for f in warnings_log.filters):
        warnings_log.addFilter(_DemoteToDebug())
    _send_temporary_server_output_to_log()


def server_log_path() -> Path:
    """Where the temporary Prefect server's own output goes at the default level: Prefect's
    home folder (PREFECT_HOME, ~/.prefect by default), next to its database."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / _SERVER_LOG_NAME


def _send_temporary_server_output_to_log() -> None:
    """Start Prefect's temporary server with its stdout/stderr in a log file.

    Prefect 3.8 starts it with `subprocess.Popen` inheriting our streams
    (prefect.server.api.server.SubprocessASGIServer._run_uvicorn_command) and has no
    setting for them, so that method is wrapped: while it runs, fds 1 and 2 point at the
    log file, which the child inherits; ours are restored as soon as it has started."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # a real server: no temporary one is started
        return
    try:
        from prefect.server.api import server
    except ImportError:  # a Prefect without the server: nothing is started here
        return
    cls = getattr(server, "SubprocessASGIServer", None)
    original = getattr(cls, "_run_uvicorn_command", None)
    if original is None or getattr(original, "_t2vz_quiet", False):
        return

    def run_uvicorn_command(self):
        with _output_to(server_log_path()):
            return original(self)

    run_uvicorn_command._t2vz_quiet = True
    cls._run_uvicorn_command = run_uvicorn_command


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Point fds 1 and 2 at `path` (appending) inside the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with open(path, "ab") as log_file:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
