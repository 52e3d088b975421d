"""What `t2vz run` shows on the console: progress, per-row results and the summary.

At the default level everything else stays off the console:
- Python warnings raised inside libraries (deprecations, "this will change" notices) are
  routed into logging (`py.warnings`) at DEBUG: whoever reads a debug log sees them, a
  newcomer's console does not. t2vz's own warnings are log records of its loggers (a
  retry after running out of memory, a decoder fallback) and keep their WARNING level.
- Native libraries' stderr chatter is caught where it happens (see
  t2vz_core/native_stderr.py, used by the mediapipe pose backend) and logged at DEBUG.
- The local Prefect server a run without PREFECT_API_URL uses writes to its own log file
  (flows.server), so its shutdown tracebacks never reach the console.
`--verbose` changes none of that routing and turns the levels up: t2vz's loggers and
py.warnings at DEBUG, Prefect's run logs on the console.

`configure_run_console(verbose)` is called once by `t2vz run`, before Prefect starts.
"""

from __future__ import annotations

import logging

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
