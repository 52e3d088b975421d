"""`RunOptions`: every option of a run, one model passed whole through every entry point.

The CLI builds it once (its `t2vz run` / `t2vz serve` flags are generated from these fields:
flows.cli), the flows take it as one parameter (`process_manifest`, `process_rows`, `fan_out`,
the deployments of prefect.yaml and `t2vz serve`), and each sidecar records it. Adding an option
is adding a field here (or to `Runtime`, for options that shape how models run).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from t2vz_core.runtime import Runtime

DEFAULT_MAX_WORKERS = 2  # rows at once on an accelerator; a CPU runs one unless told otherwise


def _env_max_workers() -> int | None:
    value = os.environ.get("T2VZ_MAX_WORKERS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


class RunOptions(Runtime):
    """How to run a manifest: the `Runtime` fields plus what the flow itself decides."""

    force: bool = Field(False, description="recompute every step, ignoring caches and up-to-date checks")
    allowed_roots: list[str] | None = Field(
        None,
        description="folder sources may come from (repeatable; default: T2VZ_ALLOWED_ROOTS, else the "
        "manifest's folder)",
        json_schema_extra={"flag": "--allowed-root", "metavar": "DIR"},
    )
    work_dir: str | None = Field(
        None,
        description="content-addressed work folder (default OUTPUT_DIR/.t2vz-work or T2VZ_WORK_DIR); "
        "share it between output folders",
        json_schema_extra={"metavar": "DIR"},
    )
    max_workers: int | None = Field(
        default_factory=_env_max_workers,
        ge=1,
        description=f"rows processed at once (default T2VZ_MAX_WORKERS, else {DEFAULT_MAX_WORKERS}; one on a CPU)",
    )

    def rows_at_once(self, device_type: str) -> int:
        """Rows run concurrently: `max_workers` when chosen; by default one on a CPU, where the rows'
        CPU-bound steps (torch's intra-op threads, decoding, encoding) only fight over the cores
        (measured: 4 tiny rows on 2 cores, 8.5 s two at a time against 6.5 s one at a time)."""
        if self.max_workers:
            return self.max_workers
        return 1 if device_type == "cpu" else DEFAULT_MAX_WORKERS

    def resolved_work_dir(self, output_dir: str | os.PathLike) -> Path:
        """The work folder of a run: `work_dir` when given (absolute), else T2VZ_WORK_DIR, else
        OUTPUT_DIR/.t2vz-work."""
        if self.work_dir:
            return Path(self.work_dir).absolute()
        env = os.environ.get("T2VZ_WORK_DIR")
        return Path(env).absolute() if env else Path(output_dir).absolute() / ".t2vz-work"
