"""One manifest row as a Prefect task: decode -> control -> generate -> encode -> publish.

The row task never raises: a failing step ends its row (the error goes to the sidecar and the
report) while other rows go on. Each step is its own cached, retried task run (tasks.step_tasks).
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from t2vz_core import report
from t2vz_core import row_steps as steps
from t2vz_core.errors import T2VZError
from t2vz_core.manifest import Job
from t2vz_core.stop import Cancelled
from t2vz_core.stop import check as check_stop
from t2vz_core.stop import stop_reason, stop_requested
from t2vz_core.workdir import WorkDir
from tasks.config import RunConfig
from tasks.policy import failure_of
from tasks.progress import RunProgress
from tasks.step_tasks import control_task, decode_task, encode_task, generate_task, publish_task

Ref = dict[str, Any]


class StepFailed(Exception):
    def __init__(self, step: str, exc: BaseException):
        self.step, self.exc = step, exc
        super().__init__(f"{step}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """Our own errors speak for themselves; others get their type name."""
    return str(exc) if isinstance(exc, T2VZError) else f"{type(exc).__name__}: {exc}"


class RowRun:
    """Runs the steps of one job and records what each did (status, seconds, key)."""

    def __init__(self, job: Job, cfg: RunConfig, progress: RunProgress | None):
        self.job, self.cfg, self.progress = job, cfg, progress
        self.work = WorkDir(cfg.work_dir)
        self.steps: dict[str, dict[str, Any]] = {}
        self.refs: dict[str, Ref] = {}

    def _report(self, step: str, done: int = 0, total: int = 1, message: str = "") -> None:
        if self.progress is not None:
            self.progress.step(self.job.job_id, step, done, total, message)

    def skip(self, step: str, why: str) -> None:
        self.steps[step] = {"status": "skipped", "reason": why}

    def run(self, step: str, make_key: Callable[[], str] | None, step_task: Any, **kwargs: Any) -> Ref:
        """Run one step task; attribute any failure (key computation included) to this step."""
        started = time.perf_counter()
        self._report(step)
        self.steps[step] = {"status": "running"}
        try:
            check_stop(f"before {step}")  # a stopped run starts no further step
            key = make_key() if make_key else None
            if key is not None:
                kwargs["key"] = key
                self.steps[step]["key"] = key
            force = self.cfg.force or self.job.refresh
            # A missing work entry must be rebuilt even if Prefect still holds a record for the key.
            refresh = force or (key is not None and not self.work.has(step, key))
            state = self._call(step_task, refresh, kwargs)
            ref = state.result() if state.is_completed() else None
            if ref is not None and state.name == "Cached" and not steps.ref_exists(ref):
                state = self._call(step_task, True, kwargs)
                ref = state.result() if state.is_completed() else None
            if ref is None:
                exc = failure_of(state) or RuntimeError(f"task ended in state {state.name}: {state.message}")
                raise exc
        except Exception as exc:
            self.steps[step].update(status="cancelled" if isinstance(exc, Cancelled) else "failed",
                                    seconds=round(time.perf_counter() - started, 3),
                                    error=describe(exc))
            raise StepFailed(step, exc) from exc
        cached = state.name == "Cached" or bool(ref.get("hit"))
        self.steps[step].update(status="cached" if cached else "computed",
                                seconds=round(time.perf_counter() - started, 3))
        self.refs[step] = ref
        self._report(step, 1, 1)
        return ref

    def _call(self, step_task: Any, refresh: bool, kwargs: dict[str, Any]) -> Any:
        configured = _configured(step_task, refresh, self.cfg.retries, self.cfg.retry_delay_s)
        return configured(job=self.job, cfg=self.cfg, **kwargs, return_state=True)


_variants: dict[tuple, Any] = {}
_variants_lock = threading.Lock()


def _configured(step_task: Any, refresh: bool, retries: int, delay_s: float) -> Any:
    """The step task with these options, made once per process (with_options builds a new Task,
    reading the function's source for its key: ~2 ms a call, five calls a row)."""
    key = (id(step_task), refresh, retries, delay_s)
    with _variants_lock:
        variant = _variants.get(key)
        if variant is None:
            variant = _variants[key] = step_task.with_options(
                refresh_cache=refresh, retries=retries, retry_delay_seconds=delay_s)
        return variant


def run_row(job: Job, cfg: RunConfig, progress: RunProgress | None = None) -> dict[str, Any]:
    """Process one job end to end; always returns its sidecar dict (status ok or failed)."""
    logger = get_run_logger()
    if stop_requested():  # the run was stopped before this row began: reported as not run
        if progress is not None:
            progress.finish(job.job_id, "not run")
        return not_run_sidecar(job)
    started, wall_start = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row = RowRun(job, cfg, progress)
    models: dict[str, Any] = {}
    error, failed_step, outputs, status = None, None, [], None
    try:
        decode_ref = None
        if job.uses_source:
            decode_ref = row.run("decode", lambda: steps.decode_key(job, row.work), decode_task)
        else:
            row.skip("decode", "text2video has no source")
        if steps.control_kind(job):
            cond_ref = row.run("control", lambda: steps.control_key(job, decode_ref), control_task,
                               decode_ref=decode_ref)
        else:
            row.skip("control", "control=given: the source is the control video" if job.control == "given"
                     else f"mode {job.mode} uses no control maps")
            cond_ref = decode_ref
        runtime = cfg.runtime()

        def generate_key() -> str:
            models.update(steps.resolve_models(job, row.work))
            return steps.generate_key(job, cond_ref, runtime, models)

        def on_progress(done: int, total: int, message: str = "") -> None:
            if message.endswith(": resumed"):  # the engine picked up a checkpoint of a stopped run
                row.steps["generate"]["resumed_at"] = f"{done}/{total}"
            row._report("generate", done, total, message)

        gen_ref = row.run("generate", generate_key, generate_task, cond_ref=cond_ref, models=models,
                          progress=on_progress)
        enc_ref = row.run("encode", lambda: steps.encode_key(job, gen_ref, decode_ref), encode_task,
                          gen_ref=gen_ref, decode_ref=decode_ref)
        outputs = row.run("publish", None, publish_task, enc_ref=enc_ref)["outputs"]
        logger.info("%s: done -> %s", job.job_id, ", ".join(outputs))
    except StepFailed as exc:
        error, failed_step = str(exc), exc.step
        if isinstance(exc.exc, Cancelled):  # asked to stop: what was done is kept for the re-run
            status = "cancelled"
            logger.warning("%s stopped at %s: %s", job.job_id, exc.step, exc.exc)
        else:
            logger.error("%s failed at %s: %s", job.job_id, exc.step, describe(exc.exc))
        if not isinstance(exc.exc, T2VZError):
            logger.debug("".join(traceback.format_exception(exc.exc)))
    except Exception as exc:  # noqa: BLE001 - a bug in this module must still not stop other rows
        error, failed_step = f"internal error: {describe(exc)}", "row"
        logger.error("%s: %s", job.job_id, "".join(traceback.format_exception(exc)))
    for step in report.STEPS:
        row.steps.setdefault(step, {"status": "not run"})
    status = status or ("failed" if error else "ok")
    if progress is not None:
        progress.finish(job.job_id, status)
    sidecar = {
        "job_id": job.job_id,
        "row": job.row,
        "mode": job.mode,
        "status": status,
        "error": error,
        "failed_step": failed_step,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - started, 3),
        "started": wall_start,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": row.steps,
        "job": job.cache_dict(),
        "refresh": job.refresh,
        "resolved": _resolved(job, row.refs, models),
        "refs": row.refs,  # what each step returned: lets a re-run recompute the keys (t2vz_core.freshness)
        "versions": report.software_versions(),
        "manifest": cfg.manifest,
        "flow_run_id": cfg.flow_run_id,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "offload": cfg.offload,
        "allow_pickle": cfg.allow_pickle,
        "vae_slicing": cfg.vae_slicing,
        "vae_tiling": cfg.vae_tiling,
        "work_dir": str(cfg.work_dir),
    }
    try:
        report.write_sidecar(cfg.output_dir, job.job_id, sidecar)
    except Exception as exc:  # noqa: BLE001
        logger.error("%s: could not write its sidecar: %s", job.job_id, describe(exc))
    return sidecar


def not_run_sidecar(job: Job) -> dict[str, Any]:
    """The report's record of a row the stopped run never began (no sidecar file is written:
    an earlier run's sidecar, if any, stays as it was)."""
    return {"job_id": job.job_id, "row": job.row, "mode": job.mode, "status": "missing", "outputs": [],
            "error": f"not run: the run was stopped before this row began ({stop_reason()})", "steps": {},
            "job": job.cache_dict()}


def _resolved(job: Job, refs: dict[str, Ref], models: dict[str, Any]) -> dict[str, Any]:
    """What the row actually ran with: request, frame size and fps, chunk size, models, source."""
    resolved: dict[str, Any] = {"models": models or None}
    decode, gen = refs.get("decode"), refs.get("generate")
    if decode:
        resolved["source"] = {"path": str(job.source), "sha256": decode.get("source_sha256"),
                              **(decode.get("source_info") or {})}
        resolved["decoded"] = {k: decode.get(k) for k in ("count", "fps", "width", "height", "has_audio")}
    if gen:
        request = job.request(gen["width"], gen["height"])
        request["chunk_size"] = gen.get("chunk_size", request["chunk_size"])
        resolved["request"] = request
        resolved["effective_chunk_size"] = gen.get("chunk_size")
        resolved["output_fps"] = gen.get("fps")
        resolved["frames"] = gen.get("count")
        resolved["runtime"] = gen.get("runtime")
    resolved["keys"] = {step: ref.get("key") for step, ref in refs.items()}
    return resolved


@task(name="row", task_run_name="row-{job.job_id}", cache_policy=NO_CACHE, persist_result=False)
def row_task(job: Job, cfg: RunConfig, progress: RunProgress | None = None) -> dict[str, Any]:
    return run_row(job, cfg, progress)
