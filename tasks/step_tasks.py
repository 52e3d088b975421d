"""Prefect tasks around the pure steps of t2vz_core.row_steps.

Every task:
- is cached by its step key (content of its real inputs, parameters, model fingerprints,
  t2vz_core version: see t2vz_core.row_steps) with the result persisted; results are small
  references into the work folder, never frames;
- retries only transient errors (t2vz_core.errors.is_transient); generate retries an
  out-of-memory error with a halved chunk size.
The caller (tasks.row) passes refresh_cache when the work entry is missing or a refresh was asked.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from t2vz_core import row_steps as steps
from t2vz_core.manifest import Job
from t2vz_core.workdir import WorkDir
from tasks import faults, policy
from tasks.config import RunConfig

Ref = dict[str, Any]
ProgressFn = Callable[[int, int, str], None]

_COMMON = dict(
    cache_policy=policy.STEP_CACHE,
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=policy.retry_if_transient,
)


def _force(job: Job, cfg: RunConfig) -> bool:
    return cfg.force or job.refresh


def _log_ref(ref: Ref, job: Job) -> Ref:
    state = "found in the work folder" if ref.get("hit") else "computed"
    get_run_logger().info("%s %s: %s (%s)", job.job_id, ref["step"], state, ref.get("path") or ref.get("outputs"))
    return ref


@task(name="decode", task_run_name="decode-{job.job_id}", **_COMMON)
def decode_task(job: Job, key: str, cfg: RunConfig) -> Ref:
    faults.inject("decode", job.job_id)
    return _log_ref(steps.decode_step(job, WorkDir(cfg.work_dir), key, force=_force(job, cfg)), job)


@task(name="control", task_run_name="control-{job.job_id}", **_COMMON)
def control_task(job: Job, key: str, cfg: RunConfig, decode_ref: Ref) -> Ref:
    faults.inject("control", job.job_id)
    return _log_ref(steps.control_step(job, decode_ref, WorkDir(cfg.work_dir), key, force=_force(job, cfg)), job)


@task(name="generate", task_run_name="generate-{job.job_id}", **_COMMON)
def generate_task(job: Job, key: str, cfg: RunConfig, cond_ref: Ref | None, models: dict[str, Any],
                  progress: ProgressFn | None = None) -> Ref:
    runtime = cfg.runtime()
    device = policy.device_name(runtime.resolve()[0])
    chunk_size, ooms = None, policy.out_of_memory_count(key)
    if ooms and job.mode == "text2video":
        runtime = policy.lighter_runtime(runtime, ooms)
        get_run_logger().warning("%s: retrying generation with offload=%s after running out of memory "
                                 "(text2video keeps its chunk size: its frames depend on it)",
                                 job.job_id, runtime.offload)
    elif ooms:
        frames = int(cond_ref["count"]) if cond_ref else None
        chunk_size = policy.halved_chunk_size(job.chunk_size, frames, ooms)
        get_run_logger().warning("%s: retrying generation with chunk_size=%d after running out of memory",
                                 job.job_id, chunk_size)

    def on_progress(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(done, total, message)
        faults.on_progress("generate", job.job_id, done)

    try:
        faults.inject("generate", job.job_id)
        ref = steps.generate_step(
            job, cond_ref, WorkDir(cfg.work_dir), key, runtime, models,
            force=_force(job, cfg), chunk_size=chunk_size,
            hold_device=lambda: policy.hold_device(device, cfg.gpu_limit), on_progress=on_progress,
        )
    except Exception as exc:
        policy.note_out_of_memory(key, exc)
        raise
    return _log_ref(ref, job)


@task(name="encode", task_run_name="encode-{job.job_id}", **_COMMON)
def encode_task(job: Job, key: str, cfg: RunConfig, gen_ref: Ref, decode_ref: Ref | None) -> Ref:
    faults.inject("encode", job.job_id)
    ref = steps.encode_step(job, gen_ref, decode_ref, WorkDir(cfg.work_dir), key, force=_force(job, cfg))
    return _log_ref(ref, job)


# Publishing is cheap and must notice a deleted or edited output, so it is never cached.
@task(name="publish", task_run_name="publish-{job.job_id}", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=2, retry_condition_fn=policy.retry_if_transient)
def publish_task(job: Job, cfg: RunConfig, enc_ref: Ref) -> Ref:
    faults.inject("publish", job.job_id)
    return _log_ref(steps.publish_step(job, enc_ref, cfg.output_dir), job)
