"""Retry, caching and device policies shared by the step tasks."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext

from t2vz_core.errors import is_out_of_memory, is_transient


def failure_of(state: Any) -> BaseException | None:
    """The exception a Failed state carries (None when it carries none)."""
    try:
        value = state.result(raise_on_failure=False)
    except BaseException as exc:  # the result could not even be read
        return exc
    return value if isinstance(value, BaseException) else None


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry I/O timeouts and out-of-memory, never bad input or media."""
    exc = failure_of(state)
    return exc is not None and is_transient(exc)


def _step_cache_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    # The step key already covers the content of every real input (see t2vz_core.row_steps); the
    # work-folder tag keeps records of one work folder from answering for another.
    return f"t2vz-{ctx.task.name}-{inputs['key']}-{inputs['cfg'].work_tag}"


STEP_CACHE = CacheKeyFnPolicy(cache_key_fn=_step_cache_key)


# -- one generation per device ---------------------------------------------------------------

_device_locks: dict[str, threading.Lock] = {}
_device_locks_guard = threading.Lock()


def _device_lock(device: str) -> threading.Lock:
    with _device_locks_guard:
        return _device_locks.setdefault(device, threading.Lock())


def device_name(device: Any) -> str:
    """'cuda' and 'cuda:0' are one device (so they share one lock)."""
    if device.type == "cuda" and device.index is None:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


@contextlib.contextmanager
def hold_device(device: str, gpu_limit: str | None = None) -> Iterator[None]:
    """Hold the device for one generation: an in-process lock, plus a Prefect global
    concurrency limit when one is named (it spans processes and machines; needs a server)."""
    with _device_lock(device):
        if gpu_limit:
            from prefect.concurrency.sync import concurrency

            with concurrency(gpu_limit, occupy=1, strict=True):
                yield
        else:
            yield


# -- out-of-memory: retry with less memory, never with other pixels ---------------------------

_oom_seen: Counter = Counter()
_oom_guard = threading.Lock()
_OFFLOAD_LADDER = ("none", "model", "sequential")


def note_out_of_memory(key: str, exc: BaseException) -> bool:
    """Record an OOM for a generate key (its retry then uses less memory); free cached memory."""
    if not is_out_of_memory(exc):
        return False
    with _oom_guard:
        _oom_seen[key] += 1
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass
    return True


def forget_out_of_memory(key: str) -> None:
    """The key succeeded: a later run of it starts from the requested settings again."""
    with _oom_guard:
        _oom_seen.pop(key, None)


def out_of_memory_count(key: str) -> int:
    with _oom_guard:
        return _oom_seen[key]


def halved_chunk_size(requested: int | None, frames: int | None, halvings: int) -> int:
    """The chunk size after `halvings` OOMs: halved each time, at least 2 (anchor + one frame).

    For pose/canny/depth/pix2pix the engine's output does not depend on the chunk size."""
    size = requested or frames or 2
    return max(2, size >> halvings)


def lighter_runtime(runtime: Any, steps: int) -> Any:
    """text2video after OOM: its frames depend on the chunk size, so memory comes down another
    way: weights offloaded to the CPU while unused (`model`, then `sequential`); same pixels.
    Unchanged on a CPU, where offloading does not apply."""
    device, _ = runtime.resolve()
    if device.type == "cpu":
        return runtime
    start = _OFFLOAD_LADDER.index(runtime.offload)
    return runtime.model_copy(update={"offload": _OFFLOAD_LADDER[min(len(_OFFLOAD_LADDER) - 1, start + steps)]})
