"""Run progress: one Prefect progress artifact per flow run, updated per generated chunk at most
once a second, plus in-process listeners (the CLI's progress bars).

Updates are API round trips: a background thread sends them (the latest value only), so a
row's thread, which may hold the GPU, never waits on the server."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from uuid import UUID

from t2vz_core.pipeline import STEPS

# Share of a row's progress each step stands for, and the share of the steps before it.
STEP_WEIGHTS = {step.name: step.weight for step in STEPS}
_BEFORE = {step: sum(list(STEP_WEIGHTS.values())[:i]) for i, step in enumerate(STEP_WEIGHTS)}

# listener(job_id, step, done, total, message)
Listener = Callable[[str, str, int, int, str], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


class RunProgress:
    """Thread-safe progress over the rows of one flow run (0-100 %), mirrored to a Prefect artifact."""

    def __init__(self, job_ids: list[str], artifact_id: UUID | None = None, min_interval_s: float = 1.0):
        self._rows = {job_id: 0.0 for job_id in job_ids}
        self._artifact_id = artifact_id
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_sent = (0.0, -1.0)  # (time, percent)
        self._context = contextvars.copy_context()  # the flow run's settings (API URL) for the sender
        self._pending: float | None = None
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None

    @property
    def percent(self) -> float:
        with self._lock:
            return 100.0 * sum(self._rows.values()) / max(1, len(self._rows))

    def step(self, job_id: str, step: str, done: int = 0, total: int = 1, message: str = "") -> None:
        """Report progress inside a step (done of total units, e.g. generated chunks)."""
        fraction = _BEFORE[step] + STEP_WEIGHTS[step] * (done / total if total else 1.0)
        for listener in list(_listeners):
            listener(job_id, step, done, total, message)
        self._set(job_id, fraction)

    def finish(self, job_id: str, status: str = "ok") -> None:
        """The row is over (whatever its outcome): listeners get step "done" with the status."""
        for listener in list(_listeners):
            listener(job_id, "done", 1, 1, status)
        self._set(job_id, 1.0)  # rate-limited too; 100 % is always sent, and close() sends the rest

    def close(self) -> None:
        """Send the final percentage if rate limiting held it back, and wait until it is sent."""
        with self._lock:
            percent = 100.0 * sum(self._rows.values()) / max(1, len(self._rows))
            final = self._artifact_id is not None and percent != self._last_sent[1]
            if final:
                self._last_sent = (time.monotonic(), percent)
        if final:
            self._send(percent)
        with self._lock:
            self._closing, sender = True, self._sender
        self._wake.set()
        if sender is not None:
            sender.join(timeout=30)

    def _set(self, job_id: str, fraction: float, force: bool = False) -> None:
        with self._lock:
            self._rows[job_id] = max(self._rows.get(job_id, 0.0), min(1.0, fraction))
            percent = 100.0 * sum(self._rows.values()) / max(1, len(self._rows))
            last_time, last_percent = self._last_sent
            due = force or time.monotonic() - last_time >= self._min_interval_s or percent >= 100.0
            if self._artifact_id is None or not due or percent == last_percent:
                return
            self._last_sent = (time.monotonic(), percent)
        self._send(percent)

    def _send(self, percent: float) -> None:
        """Hand the value to the sender thread (started on first use); a newer value replaces an unsent one."""
        with self._lock:
            self._pending = percent
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._context.run, args=(self._send_loop,), name="t2vz-progress", daemon=True
                )
                self._sender.start()
        self._wake.set()

    def _send_loop(self) -> None:
        from prefect.artifacts import update_progress_artifact

        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                percent, self._pending, closing = self._pending, None, self._closing
            if percent is not None:
                try:
                    update_progress_artifact(self._artifact_id, round(percent, 1))
                except Exception:  # noqa: BLE001 - progress display must never fail a row
                    pass
            if closing:
                with self._lock:
                    if self._pending is None:
                        return
