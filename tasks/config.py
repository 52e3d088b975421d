"""RunConfig: everything a row needs besides its Job, built once per flow run."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class RunConfig:
    output_dir: Path
    work_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"
    allow_pickle: bool = False  # also load .bin/.ckpt pickle weights (`t2vz run --allow-pickle`)
    vae_slicing: bool = False  # decode one frame at a time (less memory for large frames)
    vae_tiling: bool = False  # decode in overlapping tiles (large frames; pixels change slightly)
    force: bool = False
    # Retries for transient errors only (see tasks.policy.retry_if_transient).
    retries: int = field(default_factory=lambda: int(_env_float("T2VZ_RETRIES", 2)))
    retry_delay_s: float = field(default_factory=lambda: _env_float("T2VZ_RETRY_DELAY_S", 2.0))
    # Name of a Prefect global concurrency limit that holds one generation per GPU across
    # processes and machines (`prefect gcl create t2vz-gpu --limit 1`); None: in-process lock only.
    gpu_limit: str | None = field(default_factory=lambda: os.environ.get("T2VZ_GPU_LIMIT") or None)
    flow_run_id: str | None = None
    manifest: str | None = None

    @property
    def work_tag(self) -> str:
        """Short id of the work folder: Prefect cache records point into one work folder only."""
        return hashlib.sha256(str(self.work_dir).encode()).hexdigest()[:12]

    def runtime(self) -> Any:
        from t2vz_core.runtime import Runtime

        return Runtime(device=self.device, dtype=self.dtype, offload=self.offload, allow_pickle=self.allow_pickle,
                       vae_slicing=self.vae_slicing, vae_tiling=self.vae_tiling)
