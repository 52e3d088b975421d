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

from t2vz_core import row_steps as steps
from t2vz_core.manifest import read_manifest
from t2vz_core.models import Runtime
from t2vz_core.workdir import WorkDir


def run_direct(manifest_path: str | os.PathLike, output_dir: str | os.PathLike,
               work_dir: str | os.PathLike | None = None, device: str = "cpu",
               allowed_roots: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every valid row of the manifest, step by step; returns {job_id: {"outputs", "seconds", "steps"}}."""
    manifest = read_manifest(manifest_path, allowed_roots=allowed_roots)
    out = Path(output_dir).absolute()
    work = WorkDir(work_dir or out / ".t2vz-direct-work")
    runtime = Runtime(device=device)
    results: dict[str, dict[str, Any]] = {}
    for job in manifest.jobs:
        started = time.perf_counter()
        hits: dict[str, bool] = {}
        decode_ref = None
        if job.uses_source:
            decode_ref = steps.decode_step(job, work, steps.decode_key(job))
            hits["decode"] = decode_ref["hit"]
        cond_ref = decode_ref
        if steps.control_kind(job):
            cond_ref = steps.control_step(job, decode_ref, work, steps.control_key(job, decode_ref))
            hits["control"] = cond_ref["hit"]
        models = steps.resolve_models(job)
        gen_ref = steps.generate_step(job, cond_ref, work, steps.generate_key(job, cond_ref, runtime, models),
                                      runtime, models)
        hits["generate"] = gen_ref["hit"]
        enc_ref = steps.encode_step(job, gen_ref, decode_ref, work, steps.encode_key(job, gen_ref, decode_ref))
        hits["encode"] = enc_ref["hit"]
        published = steps.publish_step(job, enc_ref, out)
        hits["publish"] = published["hit"]
        results[job.job_id] = {"outputs": published["outputs"], "seconds": time.perf_counter() - started,
                               "hits": hits, "generate": gen_ref}
    return results
