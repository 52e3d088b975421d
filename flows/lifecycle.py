"""The life of one `t2vz run` process around its flow run: server, signals, exit.

`run_flow(call)`:
1. installs the stop handlers (flows.signals: SIGTERM/SIGINT request a cooperative stop; a
   second one gives the server lease back and ends the process at once, 128 + signal);
2. gets a Prefect API: the configured server, else the home's shared local server
   (flows.server), whose failure to start is one line and exit code 2;
3. runs the flow in a worker thread, so Prefect's engine installs no SIGTERM handler of its
   own (it only does so in the main thread) and the main thread stays free to take signals;
4. gives the server lease back however the run ends (the last user stops the server).
"""

from __future__ import annotations

import contextvars
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows import server, signals
from t2vz_core import stop

EXIT_USAGE = 2


@dataclass
class Outcome:
    state: Any = None  # the flow run's final state, when it ran
    exit_code: int | None = None  # set when the run ended before or without a state


def _say(text: str) -> None:
    os.write(2, f"t2vz: {text}\n".encode())  # safe inside a signal handler, unlike print


def _hard_exit(signum: int) -> None:
    name = signal.Signals(signum).name
    _say(f"second {name}: stopping now, without finishing the current step")
    server.release_all()
    os._exit(128 + signum)


def _announce_stop_on_first_signal() -> None:
    """Say once, when the first signal lands, what happens next (watched from the main thread)."""
    _say(f"{stop.stop_reason()}: stopping at the next step boundary (checkpoint kept; send it again to stop at once)")


def call_in_thread(call: Callable[[], Any]) -> Any:
    """call() in a worker thread (with this context: settings, API URL); the main thread waits
    in short joins so signal handlers run promptly."""
    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(call)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="t2vz-flow", daemon=True)
    thread.start()
    announced = False
    while thread.is_alive():
        thread.join(0.2)
        if not announced and stop.stop_requested() and stop.stop_reason() in signals.EXIT_CODES:
            announced = True
            _announce_stop_on_first_signal()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def end_stopped_process(code: int) -> None:
    """After SIGTERM/SIGINT, once the report is out: end the process without the interpreter's
    teardown of torch, diffusers and Prefect (measured 4.7 s on a busy 2-core machine, nearly
    all of a `docker stop` grace period). Only from the main thread, and only when a signal
    asked the process to end; logs and output are flushed first, the server lease is given back."""
    if threading.current_thread() is not threading.main_thread() or stop.stop_reason() not in signals.EXIT_CODES:
        return
    import logging

    server.release_all()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_flow(call: Callable[[], Any]) -> Outcome:
    """Run `call` (a flow call returning its state) as described in the module docstring."""
    with signals.stop_on_signals(on_second=_hard_exit):
        try:
            with server.api_for_run():
                if stop.stop_requested():
                    return Outcome(exit_code=signals.exit_code_after_stop())
                return Outcome(state=call_in_thread(call))
        except server.ServerStartError as exc:
            print(
                f"t2vz: cannot start the local Prefect server: {exc}; or start one (prefect server start) "
                f"and set PREFECT_API_URL",
                file=sys.stderr,
                flush=True,
            )
            return Outcome(exit_code=EXIT_USAGE)
        except stop.Cancelled:  # stopped while the server was starting: no row ran
            print(f"t2vz: stopped ({stop.stop_reason()}) before any row ran", file=sys.stderr, flush=True)
            return Outcome(exit_code=signals.exit_code_after_stop())
        finally:
            server.release_all()
