"""A process-wide request to stop, honoured at the next safe point (no Prefect here).

Whoever decides the run must end (a SIGTERM/SIGINT handler, a watcher that saw the flow run
set to Cancelling in Prefect) calls `request_stop(reason)`. Long loops call `check()` at their
safe points: the denoising loop after each step's checkpoint is written, decode/control/encode
between chunks, the row between steps. `check()` raises `Cancelled`, which unwinds the row
without publishing anything (outputs only ever appear by atomic rename), and the row is
recorded as `cancelled`. A re-run resumes from what was kept (checkpoint, finished chunks).

One event per process: a request cannot be withdrawn, except by `reset()` (tests, or a process
that runs several manifests one after another).
"""

from __future__ import annotations

import threading

from t2vz_core.errors import T2VZError

_event = threading.Event()
_reason_lock = threading.Lock()
_reason: str | None = None


class Cancelled(T2VZError):
    """The run was asked to stop (a signal, or a cancellation in Prefect); never retried."""

    def __init__(self, where: str = ""):
        reason = stop_reason() or "stop requested"
        self.reason = reason
        super().__init__(f"cancelled ({reason}){f' at {where}' if where else ''}")


def request_stop(reason: str) -> bool:
    """Ask every loop of this process to stop at its next safe point; True for the first request."""
    global _reason
    with _reason_lock:
        first = not _event.is_set()
        if first:
            _reason = reason
            _event.set()
    return first


def stop_requested() -> bool:
    return _event.is_set()


def stop_reason() -> str | None:
    return _reason if _event.is_set() else None


def check(where: str = "") -> None:
    """Raise Cancelled when a stop was requested (call it at a point where stopping is safe)."""
    if _event.is_set():
        raise Cancelled(where)


def wait(timeout: float) -> bool:
    """Sleep up to `timeout` seconds, waking at once on a stop request; True if one was made."""
    return _event.wait(timeout)


def reset() -> None:
    global _reason
    with _reason_lock:
        _event.clear()
        _reason = None
