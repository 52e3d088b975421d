"""RunConfig: what every row of one flow run shares besides its Job, built once per flow run."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from t2vz_core.options import RunOptions
from t2vz_core.runtime import Runtime


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class RunConfig:
    output_dir: Path
    options: RunOptions = field(default_factory=RunOptions)
    # Retries for transient errors only (see tasks.policy.retry_if_transient).
    retries: int = field(default_factory=lambda: int(_env_float("T2VZ_RETRIES", 2)))
    retry_delay_s: float = field(default_factory=lambda: _env_float("T2VZ_RETRY_DELAY_S", 2.0))
    # Name of a Prefect global concurrency limit that holds one generation per GPU across
    # processes and machines (`prefect gcl create t2vz-gpu --limit 1`); None: in-process lock only.
    gpu_limit: str | None = field(default_factory=lambda: os.environ.get("T2VZ_GPU_LIMIT") or None)
    flow_run_id: str | None = None
    manifest: str | None = None

    @property
    def work_dir(self) -> Path:
        return self.options.resolved_work_dir(self.output_dir)

    @property
    def force(self) -> bool:
        return self.options.force

    @property
    def work_tag(self) -> str:
        """Short id of the work folder: Prefect cache records point into one work folder only."""
        return hashlib.sha256(str(self.work_dir).encode()).hexdigest()[:12]

    def runtime(self) -> Runtime:
        return self.options.runtime()
