"""Which rows of a manifest are already done: the incremental check behind re-running a manifest.

A row is up to date when its last run succeeded and nothing it depends on has changed since:
its cells, the bytes of its source and models, the device and dtype it runs with, t2vz's
version, and the files it published. The check recomputes the row's step keys
(t2vz_core.row_steps) from the references its sidecar recorded, so it agrees with the work
folder's cache by construction; it reads no frames and loads no model, and it does not need the
work folder at all (deleting that to reclaim disk space does not make finished rows run again),
and an output folder moved with its sidecars stays up to date.

An up-to-date row needs no task runs; a row that is not goes through every step, where the work
folder's cache still reuses whatever did not change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from t2vz_core import pipeline, row_steps
from t2vz_core.manifest import Job
from t2vz_core.runtime import Runtime
from t2vz_core.sidecar import Sidecar, StaleSidecar, read_sidecar
from t2vz_core.step_results import PublishResult
from t2vz_core.workdir import WorkDir

UP_TO_DATE = "up to date"

# Why a step's key changed, in the words of the report.
_CHANGED = {
    "decode": "its source file or decode settings changed",
    "cuts": "its shot detection settings changed",
    "control": "its control settings changed",
    "generate": "its model, generation settings, device or dtype changed",
    "encode": "its output settings changed",
}


@dataclass(frozen=True)
class Freshness:
    """Whether a row's outputs are current; `reason` says why not (or is UP_TO_DATE)."""

    job_id: str
    current: bool
    reason: str
    sidecar: Sidecar | None = None


def check_rows(
    jobs: list[Job], output_dir: str | os.PathLike, runtime: Runtime, work: WorkDir | None = None
) -> dict[str, Freshness]:
    """`check_row` for each job, by job_id."""
    return {job.job_id: check_row(job, output_dir, runtime, work) for job in jobs}


def current_sidecars(checks: dict[str, Freshness]) -> dict[str, Sidecar]:
    """The sidecars of the up-to-date rows of `check_rows`, by job_id (for report.manifest_lines)."""
    return {job_id: check.sidecar for job_id, check in checks.items() if check.current and check.sidecar}


def check_row(job: Job, output_dir: str | os.PathLike, runtime: Runtime, work: WorkDir | None = None) -> Freshness:
    """Is the row's published output current? `work` only lends its digest memos (no frames are read)."""
    try:
        sidecar = read_sidecar(output_dir, job.job_id)
    except StaleSidecar as exc:
        return Freshness(job.job_id, False, str(exc))

    def stale(reason: str) -> Freshness:
        return Freshness(job.job_id, False, reason, sidecar)

    if sidecar is None:
        return stale("not run yet")
    if sidecar.status != "ok":
        return stale("its last run failed")
    if job.refresh:
        return stale("refresh is set")
    if sidecar.job != job.cache_dict():
        return stale("its row changed")
    if "publish" not in sidecar.refs:
        return stale("its record predates up-to-date checks")
    try:
        reason = _changed_step(job, sidecar, runtime, work)
        if reason is None:
            publish = PublishResult.model_validate(sidecar.refs["publish"])
            reason = _changed_output(job, Path(output_dir), publish, work)
    except Exception as exc:  # noqa: BLE001 - the run itself reports what is wrong with the row
        return stale(f"cannot be checked ({type(exc).__name__}: {exc})")
    if reason is not None:
        return stale(reason)
    return Freshness(job.job_id, True, UP_TO_DATE, sidecar)


def _changed_step(job: Job, sidecar: Sidecar, runtime: Runtime, work: WorkDir | None) -> str | None:
    """The first step whose key differs from the recorded one, as a reason; None if none does.

    A recorded result stands for its key's output (keys are content addresses), so the keys
    downstream are computed from the recorded results, as the steps themselves would."""
    ctx = pipeline.RowContext(
        job=job, work=work, runtime=runtime, output_dir=Path("."), recorded_models=sidecar.resolved.get("models")
    )
    for step, skipped in pipeline.row_steps_of(job):
        if skipped is not None or step.key is None:
            continue
        record = sidecar.refs.get(step.name)
        if record is None or record.get("key") != step.key(ctx):
            return _CHANGED.get(step.name, f"its {step.name} settings changed")
        ctx.results[step.name] = pipeline.result_from_record(step.name, record)
    return None


def _changed_output(job: Job, output_dir: Path, publish: PublishResult, work: WorkDir | None) -> str | None:
    """None when every output the row's formats call for is where it was published, unedited."""
    memo = work.digest_memo if work is not None else None
    for path in row_steps.output_paths(job, output_dir).values():
        recorded = publish.digests.get(path.name)
        if recorded is None:
            return f"its record has no digest of {path.name}"
        if not path.exists():
            return f"{path.name} is missing"
        if row_steps.output_digest(path, memo) != recorded:
            return f"{path.name} was changed after it was published"
    return None
