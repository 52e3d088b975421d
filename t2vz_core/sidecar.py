"""The sidecar: OUTPUT_DIR/<job_id>.json, the record of a row's last run, as a versioned model.

Sidecars are the source of truth for reports and for the up-to-date check: a report can always be
rebuilt from the manifest and the sidecars in the output folder. This module alone writes and
reads them. A sidecar of another schema (an older t2vz, or a file that is not a sidecar) is
reported as `StaleSidecar`, which callers treat as "run the row again", never as a crash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from t2vz_core.atomic import atomic_write_json
from t2vz_core.paths import RESERVED_JOB_IDS

SCHEMA = 2  # 2: typed model with `schema` and `options` (version 1 had neither)


class StaleSidecar(Exception):
    """The file at a sidecar's path is not a sidecar this version of t2vz can read."""


class StepRecord(BaseModel):
    """What one step did in a run: computed, cached, skipped, failed or not run."""

    model_config = ConfigDict(extra="allow")

    status: str
    seconds: float | None = None
    key: str | None = None
    reason: str | None = None
    error: str | None = None


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: int = Field(SCHEMA, alias="schema")
    job_id: str
    row: int | None = None
    mode: str | None = None
    status: str  # ok | failed | cancelled (stopped by a signal or a cancel in Prefect: t2vz_core.stop)
    error: str | None = None
    failed_step: str | None = None
    outputs: list[str] = []
    # The output's shots, [start, end) frame indices covering every output frame (one pair when
    # the video was not split); None when the row failed before they were known.
    shots: list[tuple[int, int]] | None = None
    seconds: float | None = None
    started: str | None = None
    finished: str | None = None
    steps: dict[str, StepRecord] = {}
    job: dict[str, Any] = {}  # the row's cells, resolved (Job.cache_dict)
    refresh: bool = False
    resolved: dict[str, Any] = {}  # what the row actually ran with: request, models, source, keys
    refs: dict[str, dict[str, Any]] = {}  # each step's result: lets a re-run recompute the keys
    qc: dict[str, float | None] | None = None  # temporal-consistency scores (t2vz_core.qc), None if not scored
    versions: dict[str, str | None] = {}
    manifest: str | None = None
    flow_run_id: str | None = None
    options: dict[str, Any] = {}  # the run's RunOptions, its work folder resolved

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def sidecar_path(output_dir: str | os.PathLike, job_id: str) -> Path:
    return Path(output_dir) / f"{job_id}.json"


def write_sidecar(output_dir: str | os.PathLike, sidecar: Sidecar) -> Path:
    if sidecar.job_id.lower() in RESERVED_JOB_IDS:
        raise ValueError(f"job_id {sidecar.job_id!r} is reserved")
    return atomic_write_json(sidecar_path(output_dir, sidecar.job_id), sidecar.to_json())


def read_sidecar(output_dir: str | os.PathLike, job_id: str) -> Sidecar | None:
    """The row's sidecar; None when there is none; StaleSidecar when it cannot be read as one."""
    path = sidecar_path(output_dir, job_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StaleSidecar(f"{path.name} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise StaleSidecar(
            f"{path.name} was written by another version of t2vz (schema {found}, this one reads {SCHEMA})"
        )
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        raise StaleSidecar(f"{path.name} is not a valid sidecar ({exc.error_count()} problem(s))") from None


def try_read_sidecar(output_dir: str | os.PathLike, job_id: str) -> Sidecar | None:
    """`read_sidecar`, with a stale sidecar read as none."""
    try:
        return read_sidecar(output_dir, job_id)
    except StaleSidecar:
        return None
