"""One manifest row as a Prefect task: it walks the steps declared in t2vz_core.pipeline.

The row task never raises: a failing step ends its row (the error goes to the sidecar and the
report) while other rows go on. Each step is its own cached, retried task run (tasks.step_tasks).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from t2vz_core import pipeline, report, row_steps
from t2vz_core.errors import T2VZError
from t2vz_core.manifest import Job
from t2vz_core.pipeline import RowContext, Step
from t2vz_core.sidecar import Sidecar, StepRecord, write_sidecar
from t2vz_core.step_results import StepResult
from t2vz_core.stop import Cancelled, stop_reason, stop_requested
from t2vz_core.stop import check as check_stop
from t2vz_core.workdir import WorkDir
from tasks.config import RunConfig
from tasks.policy import failure_of
from tasks.progress import RunProgress
from tasks.step_tasks import step_task


class StepFailed(Exception):
    def __init__(self, step: str, exc: BaseException):
        self.step, self.exc = step, exc
        super().__init__(f"{step}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """Our own errors speak for themselves; others get their type name."""
    return str(exc) if isinstance(exc, T2VZError) else f"{type(exc).__name__}: {exc}"


class RowRun:
    """Runs the declared steps of one job and records what each did (status, seconds, key)."""

    def __init__(self, job: Job, cfg: RunConfig, progress: RunProgress | None):
        self.job, self.cfg, self.progress = job, cfg, progress
        self.work = WorkDir(cfg.work_dir)
        self.steps: dict[str, StepRecord] = {}
        self.ctx = RowContext(
            job=job,
            work=self.work,
            runtime=cfg.runtime(),
            output_dir=cfg.output_dir,
            force=cfg.force or job.refresh,
            on_progress=self._generation_progress,
        )

    def _report(self, step: str, done: int = 0, total: int = 1, message: str = "") -> None:
        if self.progress is not None:
            self.progress.step(self.job.job_id, step, done, total, message)

    def _generation_progress(self, done: int, total: int, message: str = "") -> None:
        if message.endswith(": resumed"):  # the engine picked up the checkpoint of a stopped run
            self.steps["generate"].resumed_at = f"{done}/{total}"  # StepRecord allows extra fields
        self._report("generate", done, total, message)

    def run_all(self) -> None:
        for step, skipped in pipeline.row_steps_of(self.job):
            if skipped is not None:
                self.steps[step.name] = StepRecord(status="skipped", reason=skipped)
            else:
                self.run(step)

    def run(self, step: Step) -> StepResult:
        """Run one step's task; attribute any failure (key computation included) to this step."""
        started = time.perf_counter()
        self._report(step.name)
        record = self.steps[step.name] = StepRecord(status="running")
        try:
            check_stop(f"before {step.name}")  # a stopped run starts no further step
            key = step.key(self.ctx) if step.key else None
            record.key = key
            # A missing work entry must be rebuilt even if Prefect still holds a record for the key.
            refresh = self.ctx.force or (key is not None and not self.work.has(step.name, key))
            state = self._call(step, refresh, key)
            result = state.result() if state.is_completed() else None
            if result is not None and state.name == "Cached" and not result.exists():
                state = self._call(step, True, key)
                result = state.result() if state.is_completed() else None
            if result is None:
                raise failure_of(state) or RuntimeError(f"task ended in state {state.name}: {state.message}")
        except Exception as exc:
            record.status, record.error = "cancelled" if isinstance(exc, Cancelled) else "failed", describe(exc)
            record.seconds = round(time.perf_counter() - started, 3)
            raise StepFailed(step.name, exc) from exc
        record.status = "cached" if state.name == "Cached" or result.hit else "computed"
        record.seconds = round(time.perf_counter() - started, 3)
        self.ctx.results[step.name] = result
        self._report(step.name, 1, 1)
        return result

    def _call(self, step: Step, refresh: bool, key: str | None) -> Any:
        configured = step_task(step.name, refresh, self.cfg.retries, self.cfg.retry_delay_s)
        return configured(ctx=self.ctx, cfg=self.cfg, key=key, return_state=True)


def run_row(job: Job, cfg: RunConfig, progress: RunProgress | None = None) -> Sidecar:
    """Process one job end to end; always returns its sidecar (status ok or failed)."""
    logger = get_run_logger()
    if stop_requested():  # the run was stopped before this row began: reported as not run
        if progress is not None:
            progress.finish(job.job_id, "not run")
        return not_run_sidecar(job)
    started, wall_start = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row = RowRun(job, cfg, progress)
    error, failed_step, outputs, status = None, None, [], None
    try:
        row.run_all()
        outputs = row.ctx.results["publish"].outputs
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
    for name in pipeline.step_names():
        row.steps.setdefault(name, StepRecord(status="not run"))
    status = status or ("failed" if error else "ok")
    if progress is not None:
        progress.finish(job.job_id, status)
    sidecar = Sidecar(
        job_id=job.job_id,
        row=job.row,
        mode=job.mode,
        status=status,
        error=error,
        failed_step=failed_step,
        outputs=outputs,
        shots=row_steps.output_shots(row.ctx),
        seconds=round(time.perf_counter() - started, 3),
        started=wall_start,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        steps=row.steps,
        job=job.cache_dict(),
        refresh=job.refresh,
        resolved=_resolved(row.ctx),
        # What each step returned: lets a re-run recompute the keys (t2vz_core.freshness).
        refs={name: result.model_dump(mode="json") for name, result in row.ctx.results.items()},
        qc=row.ctx.results["qc"].qc if "qc" in row.ctx.results else None,
        versions=report.software_versions(),
        manifest=cfg.manifest,
        flow_run_id=cfg.flow_run_id,
        options=cfg.options.model_dump(mode="json"),
    )
    try:
        write_sidecar(cfg.output_dir, sidecar)
    except Exception as exc:  # noqa: BLE001
        logger.error("%s: could not write its sidecar: %s", job.job_id, describe(exc))
    return sidecar


def not_run_sidecar(job: Job) -> Sidecar:
    """The report's record of a row the stopped run never began (not written to disk: an earlier
    run's sidecar, if any, stays as it was)."""
    return Sidecar(
        job_id=job.job_id,
        row=job.row,
        mode=job.mode,
        status="missing",
        job=job.cache_dict(),
        error=f"not run: the run was stopped before this row began ({stop_reason()})",
    )


def _resolved(ctx: RowContext) -> dict[str, Any]:
    """What the row actually ran with: request, frame size and fps, chunk size, models, source."""
    job, results = ctx.job, ctx.results
    resolved: dict[str, Any] = {"models": ctx.resolved_models}
    decoded, generated = results.get("decode"), results.get("generate")
    if decoded:
        info = decoded.source_info.model_dump(mode="json") if decoded.source_info else {}
        resolved["source"] = {"path": str(job.source), "sha256": decoded.source_sha256, **info}
        resolved["decoded"] = decoded.model_dump(mode="json", include={"count", "fps", "width", "height", "has_audio"})
    if generated:
        request = row_steps.generation_request(job, generated.width, generated.height)
        request["chunk_size"] = generated.chunk_size or request["chunk_size"]
        resolved["request"] = request
        resolved["effective_chunk_size"] = generated.chunk_size
        resolved["output_fps"] = generated.model_dump(mode="json")["fps"]
        resolved["frames"] = generated.count
        resolved["runtime"] = generated.runtime
    resolved["keys"] = {name: result.key for name, result in results.items()}
    return resolved


@task(name="row", task_run_name="row-{job.job_id}", cache_policy=NO_CACHE, persist_result=False)
def row_task(job: Job, cfg: RunConfig, progress: RunProgress | None = None) -> Sidecar:
    return run_row(job, cfg, progress)
