"""Prefect tasks around the steps declared in t2vz_core.pipeline: one task per step, made from
the declaration.

Every cached step's task:
- is cached by its step key (content of its real inputs, parameters, model fingerprints,
  t2vz_core version: see t2vz_core.row_steps) with the result persisted; results are small
  typed references into the work folder, never frames;
- retries only transient errors (t2vz_core.errors.is_transient); a step that uses the device
  is retried after an out-of-memory error with less memory (tasks.policy).
The caller (tasks.row) passes refresh_cache when the work entry is missing or a refresh was asked.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from t2vz_core import pipeline
from t2vz_core.pipeline import RowContext
from t2vz_core.step_results import StepResult
from tasks import policy
from tasks.config import RunConfig


def run_step(name: str, ctx: RowContext, cfg: RunConfig, key: str | None) -> StepResult:
    """Build one declared step of a row (the body of every step task)."""
    step = pipeline.get_step(name)
    if step.uses_device:
        ctx = _adapted_to_memory(ctx, cfg, key)
    try:
        result = step.build(ctx, key)
    except Exception as exc:
        if step.uses_device and key is not None:
            policy.note_out_of_memory(key, exc)
        raise
    if step.uses_device and key is not None:
        policy.forget_out_of_memory(key)
    state = "found in the work folder" if result.hit else "computed"
    where = result.path or getattr(result, "outputs", "")
    get_run_logger().info("%s %s: %s (%s)", ctx.job.job_id, name, state, where)
    return result


def _adapted_to_memory(ctx: RowContext, cfg: RunConfig, key: str | None) -> RowContext:
    """The context for a device step: it holds the device while it works, and after an
    out-of-memory error it runs with a halved chunk size, or (text2video, whose frames depend on
    the chunk size) with its weights offloaded."""
    runtime = ctx.runtime

    def hold_device():
        # Resolved when a generation starts: a step found in the work folder never holds the
        # device, and a CPU run whose steps are all there never imports torch (~2.5 s of CPU).
        return policy.hold_device(policy.device_name(runtime.resolve()[0]), cfg.gpu_limit)

    ctx = dataclasses.replace(ctx, hold_device=hold_device)
    ooms = policy.out_of_memory_count(key) if key else 0
    job, logger = ctx.job, get_run_logger()
    if ooms and job.mode == "text2video":
        ctx = dataclasses.replace(ctx, runtime=policy.lighter_runtime(ctx.runtime, ooms))
        logger.warning(
            "%s: retrying generation with offload=%s after running out of memory "
            "(text2video keeps its chunk size: its frames depend on it)",
            job.job_id,
            ctx.runtime.offload,
        )
    elif ooms:
        conditioning = ctx.conditioning
        chunk_size = policy.halved_chunk_size(job.chunk_size, conditioning.count if conditioning else None, ooms)
        ctx = dataclasses.replace(ctx, chunk_size=chunk_size)
        logger.warning("%s: retrying generation with chunk_size=%d after running out of memory", job.job_id, chunk_size)
    return ctx


def _make_task(step: pipeline.Step) -> Task:
    def step_task(ctx: RowContext, cfg: RunConfig, key: str | None = None) -> StepResult:
        return run_step(step.name, ctx, cfg, key)

    step_task.__name__ = f"{step.name}_task"
    caching: dict[str, Any] = (
        dict(cache_policy=policy.STEP_CACHE, persist_result=True)
        if step.cached
        else dict(cache_policy=NO_CACHE, persist_result=False)
    )
    return task(
        step_task,
        name=step.name,
        task_run_name=f"{step.name}-{{ctx.job.job_id}}",
        retries=2,
        retry_delay_seconds=2,
        retry_condition_fn=policy.retry_if_transient,
        **caching,
    )


_tasks: dict[tuple, Task] = {}
_tasks_lock = threading.Lock()


def step_task(name: str, refresh: bool, retries: int, delay_s: float) -> Task:
    """The task of a declared step with these options, made once per process (with_options builds a
    new Task, reading the function's source for its key: ~2 ms a call, five calls a row)."""
    key = (name, refresh, retries, delay_s)
    with _tasks_lock:
        found = _tasks.get(key)
        if found is None:
            base = _tasks.get((name,))
            if base is None:
                base = _tasks[(name,)] = _make_task(pipeline.get_step(name))
            found = _tasks[key] = base.with_options(refresh_cache=refresh, retries=retries, retry_delay_seconds=delay_s)
        return found
