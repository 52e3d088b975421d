"""Run a manifest by calling t2vz_core's step functions directly: no Prefect, no flow, no tasks.

The baseline for the flow-overhead benchmark (bench/run_all.py) and the "single run" that the
reliability tests compare concurrent runs against. Rows run one after another, each step
through the same content-addressed work folder the flow uses, so outputs are the same files
the flow would publish.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from t2vz_core import pipeline
from t2vz_core.manifest import read_manifest
from t2vz_core.runtime import Runtime
from t2vz_core.workdir import WorkDir


def run_direct(
    manifest_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    allowed_roots: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every valid row of the manifest, step by step; returns {job_id: {"outputs", "seconds", "hits", "generate"}}."""
    manifest = read_manifest(manifest_path, allowed_roots=allowed_roots)
    out = Path(output_dir).absolute()
    work = WorkDir(work_dir or out / ".t2vz-direct-work")
    runtime = Runtime(device=device)
    results: dict[str, dict[str, Any]] = {}
    for job in manifest.jobs:
        started = time.perf_counter()
        ctx = pipeline.run_direct(job, work, runtime, out)
        results[job.job_id] = {
            "outputs": ctx.results["publish"].outputs,
            "seconds": time.perf_counter() - started,
            "hits": {name: result.hit for name, result in ctx.results.items()},
            "generate": ctx.results["generate"],
        }
    return results
