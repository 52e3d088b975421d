"""Fault injection for the reliability tests, driven by T2VZ_FAULTS (off when unset).

`install()` wraps the build function of every step declared in t2vz_core.pipeline, in this
process (tests/conftest.py) or in a CLI subprocess (tests/reliability_support.py); production
code knows nothing of it.

Comma-separated rules `STEP[@JOB_ID]:KIND[:COUNT]`:

- `eio`    raise OSError(EIO) (transient: retried)
- `oom`    raise a CUDA-style out-of-memory RuntimeError (transient: retried with a halved chunk size)
- `fatal`  raise RuntimeError (permanent: fails the row, never retried)
- `sleep=S` (generate only) sleep S seconds at every progress report, to make a run slow
- `kill=N`  (generate only) SIGKILL this process at the N-th progress report, to simulate a crash

COUNT limits how many times a raising rule fires per process (default: always). Example:
`T2VZ_FAULTS="decode@clip1:eio:1,generate:oom:1"`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import threading
import time
from collections import Counter

ENV = "T2VZ_FAULTS"
_lock = threading.Lock()
_fired: Counter = Counter()


def _rules(step: str, job_id: str) -> list[tuple[str, str, int | None]]:
    raw = os.environ.get(ENV, "").strip()
    rules = []
    for index, item in enumerate(filter(None, (part.strip() for part in raw.split(",")))):
        parts = item.split(":")
        target, kind = parts[0], parts[1] if len(parts) > 1 else ""
        count = int(parts[2]) if len(parts) > 2 else None
        rule_step, _, rule_job = target.partition("@")
        if rule_step == step and rule_job in ("", job_id):
            rules.append((f"{index}:{item}", kind, count))
    return rules


def inject(step: str, job_id: str) -> None:
    """Raise the configured error for this step, if any (called at the start of a task)."""
    for ident, kind, count in _rules(step, job_id):
        if kind not in ("eio", "oom", "fatal"):
            continue
        with _lock:
            if count is not None and _fired[ident] >= count:
                continue
            _fired[ident] += 1
        if kind == "eio":
            raise OSError(errno.EIO, f"injected I/O error in {step} for {job_id}")
        if kind == "oom":
            raise RuntimeError(f"CUDA out of memory (injected in {step} for {job_id})")
        raise RuntimeError(f"injected permanent failure in {step} for {job_id}")


def on_progress(step: str, job_id: str, done: int) -> None:
    """Slow down or kill the process at a progress report (simulates long work and crashes)."""
    for _, kind, _ in _rules(step, job_id):
        name, _, value = kind.partition("=")
        if name == "sleep":
            time.sleep(float(value))
        elif name == "kill" and done >= int(value):
            os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    """Wrap every declared step's build: inject its faults first, and watch its progress."""
    from t2vz_core import pipeline

    if getattr(pipeline, "_faults_installed", False):
        return
    pipeline.STEPS = tuple(dataclasses.replace(step, build=_faulty(step.name, step.build)) for step in pipeline.STEPS)
    pipeline._faults_installed = True


def _faulty(name: str, build):
    def build_with_faults(ctx, key):
        job_id = ctx.job.job_id
        inject(name, job_id)
        reporter = ctx.on_progress

        def progress(done: int, total: int, message: str = "") -> None:
            if reporter is not None:
                reporter(done, total, message)
            on_progress(name, job_id, done)

        return build(dataclasses.replace(ctx, on_progress=progress), key)

    return build_with_faults
