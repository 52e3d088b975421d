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
from typing import Any

from t2vz_core import report
from t2vz_core import row_steps as steps
from t2vz_core.manifest import Job
from t2vz_core.paths import output_path
from t2vz_core.runtime import Runtime
from t2vz_core.workdir import WorkDir

UP_TO_DATE = "up to date"


@dataclass(frozen=True)
class Freshness:
    """Whether a row's outputs are current; `reason` says why not (or is UP_TO_DATE)."""

    job_id: str
    current: bool
    reason: str
    sidecar: dict[str, Any] | None = None


def check_rows(jobs: list[Job], output_dir: str | os.PathLike, runtime: Runtime,
               work: WorkDir | None = None) -> dict[str, Freshness]:
    """`check_row` for each job, by job_id."""
    return {job.job_id: check_row(job, output_dir, runtime, work) for job in jobs}


def current_sidecars(checks: dict[str, Freshness]) -> dict[str, dict[str, Any]]:
    """The sidecars of the up-to-date rows of `check_rows`, by job_id (for report.manifest_lines)."""
    return {job_id: check.sidecar for job_id, check in checks.items() if check.current and check.sidecar}


def check_row(job: Job, output_dir: str | os.PathLike, runtime: Runtime, work: WorkDir | None = None) -> Freshness:
    """Is the row's published output current? `work` only lends its digest memos (no frames are read)."""
    sidecar = report.read_sidecar(output_dir, job.job_id)

    def stale(reason: str) -> Freshness:
        return Freshness(job.job_id, False, reason, sidecar)

    if sidecar is None:
        return stale("not run yet")
    if sidecar.get("status") != "ok":
        return stale("its last run failed")
    if job.refresh:
        return stale("refresh is set")
    if sidecar.get("job") != job.cache_dict():
        return stale("its row changed")
    refs = sidecar.get("refs")
    if not isinstance(refs, dict) or not isinstance(refs.get("publish"), dict):
        return stale("its record predates up-to-date checks")
    try:
        recorded_models = (sidecar.get("resolved") or {}).get("models")
        reason = _changed_step(job, refs, recorded_models, runtime, work)
        if reason is None:
            reason = _changed_output(job, Path(output_dir), refs["publish"], work)
    except Exception as exc:  # noqa: BLE001 - the run itself reports what is wrong with the row
        return stale(f"cannot be checked ({type(exc).__name__}: {exc})")
    if reason is not None:
        return stale(reason)
    return Freshness(job.job_id, True, UP_TO_DATE, sidecar)


def _changed_step(job: Job, refs: dict[str, Any], recorded_models: dict[str, Any] | None, runtime: Runtime,
                  work: WorkDir | None) -> str | None:
    """The first step whose key differs from the recorded one, as a reason; None if none does.

    A recorded reference stands for its key's output (keys are content addresses), so the keys
    downstream are computed from the recorded references, as the steps themselves would."""
    def differs(step: str, key: str) -> bool:
        return (refs.get(step) or {}).get("key") != key

    decode_ref = None
    if job.uses_source:
        if differs("decode", steps.decode_key(job, work)):
            return "its source file or decode settings changed"
        decode_ref = refs["decode"]
    cond_ref = decode_ref
    if steps.control_kind(job):
        if differs("control", steps.control_key(job, decode_ref)):
            return "its control settings changed"
        cond_ref = refs["control"]
    models = steps.resolve_models(job, work, recorded_models)
    if differs("generate", steps.generate_key(job, cond_ref, runtime, models)):
        return "its model, generation settings, device or dtype changed"
    if differs("encode", steps.encode_key(job, refs["generate"], decode_ref)):
        return "its output settings changed"
    return None


def _changed_output(job: Job, output_dir: Path, publish_ref: dict[str, Any], work: WorkDir | None) -> str | None:
    """None when every output the row's formats call for is where it was published, unedited."""
    digests = publish_ref.get("digests") or {}
    memo = work.digest_memo if work is not None else None
    for fmt in job.output:
        path = output_path(output_dir, job.job_id, "" if fmt == "png" else f".{fmt}")
        recorded = digests.get(path.name)
        if recorded is None:
            return f"its record has no digest of {path.name}"
        if not path.exists():
            return f"{path.name} is missing"
        if steps.output_digest(path, memo) != recorded:
            return f"{path.name} was changed after it was published"
    return None
