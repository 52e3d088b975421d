"""Stop requests from outside the process, turned into t2vz_core.stop requests.

Three ways a run is asked to stop, one behaviour (rows stop at the next step boundary, the
cancelled row keeps its checkpoint, the report is written, the flow run ends Cancelled):

* SIGTERM (`docker stop`, Kubernetes, systemd, a Prefect worker cancelling a deployment run)
  and SIGINT (Ctrl-C): `stop_on_signals`, installed by the `t2vz run` CLI for its whole life
  and by the flow itself when it runs in a process's main thread (a worker's flow-run
  process). A second signal ends the process at once (`on_second`).
  In a worker's flow-run process this replaces Prefect's own SIGTERM bridge for the flow's
  duration: Prefect's bridge raises in the main thread wherever it is, and the engine then
  waits for the rows' threads anyway; Prefect's runner, finding no bridge to acknowledge its
  cancel intent, falls back to SIGTERM with 30 s grace, which this handler turns into a stop.
* A cancellation in the Prefect UI/API of a flow run that runs in this process (`t2vz run`
  against a server: no worker is there to kill it): `watch_cancellation` polls the run's
  state and requests a stop once it is Cancelling.

Exit codes of a stopped `t2vz run`: 130 after SIGINT, 143 after SIGTERM (128 + the signal,
what shells and container runtimes expect), 1 after a cancellation in Prefect.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from t2vz_core import stop

PREFECT_CANCEL = "cancelled in Prefect"
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def exit_code_after_stop() -> int:
    """The exit code of a run that was stopped (see the module docstring)."""
    return EXIT_CODES.get(stop.stop_reason() or "", 1)


@contextlib.contextmanager
def stop_on_signals(on_second: Callable[[int], None] | None = None) -> Iterator[bool]:
    """While inside, SIGTERM and SIGINT request a stop (t2vz_core.stop) instead of killing.

    A second signal calls `on_second(signum)` when given (it should end the process), else the
    handler that was there before (Prefect's SIGTERM bridge, or the default: the process ends).
    Once a stop was requested the handler stays installed after the block (see below).
    Only the main thread can own signal handlers: elsewhere this does nothing (yields False).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[int, Any] = {}
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:  # the first signal (a stop may already be under way: a cancel in Prefect)
            stop.request_stop(signal.Signals(signum).name)
            return
        if on_second is not None:
            on_second(signum)
            return
        # Second signal: hand it to whoever handled it before us (restored first, then re-sent).
        before = previous.get(signum)
        signal.signal(signum, before if before is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handle)
    try:
        yield True
    finally:
        # A stopping process keeps this handler: the worker's SIGTERM that follows a cancel the
        # watcher saw first must not crash the run while it writes its report and final state.
        if not stop.stop_requested():
            for sig, before in previous.items():
                if signal.getsignal(sig) is handle:
                    signal.signal(sig, before if before is not None else signal.SIG_DFL)


@contextlib.contextmanager
def watch_cancellation(flow_run_id: Any, poll_s: float = 1.0) -> Iterator[None]:
    """Poll the flow run's state every `poll_s` s while inside; Cancelling (or Cancelled) in
    Prefect requests a stop. Also where a worker will SIGTERM the process: whichever comes first."""
    if flow_run_id is None:
        yield
        return
    done = threading.Event()
    context = contextvars.copy_context()  # the flow run's settings (its API URL)

    def poll() -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not done.wait(poll_s):
                try:
                    state = client.read_flow_run(flow_run_id).state
                except Exception:  # noqa: BLE001 - a slow or restarting server: ask again next time
                    continue
                if state is not None and (state.is_cancelling() or state.is_cancelled()):
                    stop.request_stop(PREFECT_CANCEL)
                    return

    watcher = threading.Thread(target=context.run, args=(poll,), name="t2vz-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=5)


@contextlib.contextmanager
def flow_stops(flow_run_id: Any) -> Iterator[None]:
    """Everything a flow body needs: signals (when it owns the main thread) and the watcher."""
    with stop_on_signals(), watch_cancellation(flow_run_id):
        yield


def cancelled_state(rep: dict) -> Any:
    """The flow run's final state when it was stopped: Cancelled, carrying the report."""
    from prefect.states import Cancelled as CancelledState

    counts = rep["counts"]
    cancelled = [line["job_id"] for line in rep["rows"] if line["status"] == "cancelled"]
    named = ", ".join(cancelled[:10]) or "none"
    return CancelledState(
        message=f"stopped ({stop.stop_reason()}): {counts.get('cancelled', 0)} row(s) "
        f"cancelled ({named}), {counts.get('missing', 0)} not run, "
        f"{counts['ok']} ok",
        data=rep,
    )
