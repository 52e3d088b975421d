"""Flows over a CSV manifest: one flow run per manifest (`process_manifest`) or per shard of it
(`process_rows`, for fanning a manifest out over several workers).

Both return the run report (dict, also written to OUTPUT_DIR/report.json and report.csv) and
end Failed when a row failed (or, for a whole manifest, when a row is invalid); the report is
written first. Rows already up to date (t2vz_core.freshness: same cells, same source and model
bytes, same runtime, outputs untouched) get no task run; --force runs them anyway. Rows run
concurrently on a bounded ThreadPoolTaskRunner (T2VZ_MAX_WORKERS, default 2; one at a time on a
CPU unless chosen: see rows_at_once); generation holds one job per device
(tasks.policy.hold_device), across machines too when T2VZ_GPU_LIMIT names a Prefect global
concurrency limit. Each row is six task runs: for thousands of rows, fan out in shards
(flows/deploy.py) rather than one giant flow run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import heartbeats  # noqa: F401 - runs end without waiting for the heartbeat thread
from flows import signals
from t2vz_core import freshness, report
from t2vz_core.errors import InputError
from t2vz_core.manifest import Job, format_errors, read_manifest
from t2vz_core.stop import stop_requested
from t2vz_core.workdir import WorkDir, resolve_work_dir
from tasks.config import RunConfig
from tasks.progress import RunProgress
from tasks.row import not_run_sidecar, row_task

MAX_WORKERS = max(1, int(os.environ.get("T2VZ_MAX_WORKERS", "2")))


def rows_at_once(device_type: str, runner_workers: int | None) -> int:
    """Rows run concurrently: as many as the task runner has threads when chosen (T2VZ_MAX_WORKERS,
    `--max-workers`); by default one on a CPU, where the rows' CPU-bound steps (torch's intra-op
    threads, decoding, encoding) only fight over the cores and the GIL (measured: 4 tiny rows on
    2 cores, 8.5 s two at a time against 6.5 s one at a time), else MAX_WORKERS."""
    workers = runner_workers or MAX_WORKERS
    chosen = bool(os.environ.get("T2VZ_MAX_WORKERS")) or workers != MAX_WORKERS
    return 1 if device_type == "cpu" and not chosen else workers


MARKDOWN_ROWS = 500  # the summary artifact lists this many rows; report.csv has them all


# ---------------------------------------------------------------- reports (no Prefect needed)

def write_manifest_report(manifest_path: str | os.PathLike, output_dir: str | os.PathLike,
                          allowed_roots: list[str] | None = None, current: dict[str, dict] | None = None) -> dict:
    """Rebuild report.csv/json of a manifest from the sidecars in OUTPUT_DIR (e.g. after shards ran);
    `current`: the sidecars of rows the caller found up to date (not run), by job_id."""
    manifest = read_manifest(manifest_path, allowed_roots=allowed_roots)
    lines = report.manifest_lines(manifest, output_dir, current=current)
    return report.write_report(output_dir, lines, report.manifest_extra(manifest))


# ---------------------------------------------------------------- artifacts

def _artifact_key(prefix: str, manifest_path: str | os.PathLike) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", Path(manifest_path).stem.lower()).strip("-") or "manifest"
    return f"{prefix}-{stem}"[:100]


def _table(lines: list[dict]) -> list[dict]:
    return [{"row": line["row"], "job_id": line["job_id"], "mode": line["mode"], "status": line["status"],
             **{step: line.get(step, "") for step in report.STEPS},
             "seconds": line["seconds"], "outputs": "; ".join(line["outputs"]), "error": line["error"]}
            for line in lines]


def _markdown(rep: dict) -> str:
    counts = rep["counts"]
    current = sum(1 for line in rep["rows"] if line.get("up_to_date"))
    out = [f"# t2vz: {Path(rep.get('manifest', '')).name}",
           f"**{counts['ok']} ok** ({current} up to date, not run again), {counts['failed']} failed, "
           f"{counts['invalid']} invalid, "
           f"{counts['missing']} not run, of {counts['total']} rows. Report: "
           f"[report.csv]({(Path(rep['output_dir']) / 'report.csv').absolute().as_uri()})", "",
           "| row | job | mode | status | outputs | error |", "|---|---|---|---|---|---|"]
    shown = rep["rows"][:MARKDOWN_ROWS]
    for line in shown:
        links = ", ".join(f"[{Path(p).name}]({Path(p).absolute().as_uri()})" for p in line["outputs"])
        error = str(line["error"]).replace("|", "\\|").replace("\n", " ")[:300]
        out.append(f"| {line['row']} | {line['job_id']} | {line['mode']} | {line['status']} | {links} | {error} |")
    if len(rep["rows"]) > len(shown):
        out.append(f"\n... {len(rep['rows']) - len(shown)} more rows in report.csv")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the flows

def _run(manifest_path: str, output_dir: str, job_ids: list[str] | None, device: str, dtype: str, force: bool,
         allowed_roots: list[str] | None, work_dir: str | None, offload: str = "none",
         allow_pickle: bool = False, vae_slicing: bool = False, vae_tiling: bool = False) -> Any:
    logger = get_run_logger()
    from prefect.runtime import flow_run

    manifest = read_manifest(manifest_path, allowed_roots=allowed_roots)
    if manifest.errors:
        logger.warning("%d invalid row(s) are skipped:\n%s", len(manifest.errors_by_row()),
                       format_errors(manifest.errors, manifest_path))
    for warning in manifest.warnings:
        logger.warning("%s", warning)
    jobs = manifest.jobs
    if job_ids is not None:
        by_id = {job.job_id: job for job in manifest.jobs}
        unknown = [j for j in job_ids if j not in by_id]
        if unknown:
            raise InputError(f"{manifest_path}: no valid row with job_id {', '.join(map(repr, unknown))}")
        jobs = [by_id[j] for j in job_ids]

    out = Path(output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    run_id = str(flow_run.id) if flow_run.id else None
    cfg = RunConfig(output_dir=out, work_dir=resolve_work_dir(out, work_dir),
                    device=device, dtype=dtype, offload=offload, allow_pickle=allow_pickle,
                    vae_slicing=vae_slicing, vae_tiling=vae_tiling, force=force,
                    flow_run_id=run_id,
                    manifest=str(Path(manifest_path).absolute()))
    runtime = cfg.runtime()
    current, to_run = _partition(jobs, cfg, runtime, logger)
    ran: dict[str, dict] = {}
    if to_run:
        resolved_device, _ = runtime.resolve()  # a missing GPU fails here, before any row starts
        logger.info("%d row(s) to run from %s into %s (work folder %s)", len(to_run), manifest_path, out,
                    cfg.work_dir)
        with signals.flow_stops(run_id):  # SIGTERM/SIGINT/a cancel in Prefect stop the rows cooperatively
            ran = _run_rows(to_run, cfg, resolved_device.type, manifest_path)

    lines = report.manifest_lines(manifest, out, ran, current)
    rep = report.write_report(out, lines, report.manifest_extra(manifest, run_id))
    create_table_artifact(_table(rep["rows"]), key=_artifact_key("t2vz-report", manifest_path),
                          description=f"t2vz rows of {Path(manifest_path).name}")
    create_markdown_artifact(_markdown(rep), key=_artifact_key("t2vz-summary", manifest_path),
                             description="t2vz run summary with links to outputs")

    failed = [s["job_id"] for s in ran.values() if s["status"] == "failed"]
    if stop_requested():
        return signals.cancelled_state(rep, [s["job_id"] for s in ran.values() if s["status"] == "cancelled"])
    invalid = len(manifest.errors_by_row()) if job_ids is None else 0
    logger.info("%d ok (%d up to date), %d failed, %d invalid; report: %s", len(ran) - len(failed) + len(current),
                len(current), len(failed), invalid, out / "report.csv")
    if failed or invalid:
        named = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        parts = ([f"{len(failed)} row(s) failed: {named}"] if failed else []) + \
                ([f"{invalid} invalid row(s)"] if invalid else [])
        return Failed(message="; ".join(parts), data=rep)
    return rep


def _partition(jobs: list[Job], cfg: RunConfig, runtime: Any, logger: Any) -> tuple[dict[str, dict], list[Job]]:
    """(sidecars of the rows already up to date by job_id, jobs to run); --force runs every row."""
    if cfg.force:
        return {}, list(jobs)
    checks = freshness.check_rows(jobs, cfg.output_dir, runtime, WorkDir(cfg.work_dir))
    current = freshness.current_sidecars(checks)
    to_run = [job for job in jobs if job.job_id not in current]
    if current:
        named = list(current)
        logger.info("%d row(s) up to date, not run again: %s", len(named), ", ".join(named[:20])
                    + (f" and {len(named) - 20} more" if len(named) > 20 else ""))
    for job in to_run:
        if checks[job.job_id].sidecar is not None:
            logger.info("%s runs again: %s", job.job_id, checks[job.job_id].reason)
    return current, to_run


def _run_rows(jobs: list[Job], cfg: RunConfig, device_type: str, manifest_path: str) -> dict[str, dict]:
    """Submit one row task per job, at most rows_at_once at a time; their sidecars by job_id."""
    artifact = create_progress_artifact(0.0, key=_artifact_key("t2vz-progress", manifest_path),
                                        description=f"t2vz: {len(jobs)} row(s) of {Path(manifest_path).name}")
    progress = RunProgress([job.job_id for job in jobs], artifact_id=artifact)
    from prefect.context import FlowRunContext

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    at_once = rows_at_once(device_type, getattr(runner, "_max_workers", None))
    futures: list[Any] = []
    for job in jobs:
        if len(futures) >= at_once:
            futures[-at_once].wait()  # rows still finish in any order; this only bounds how many run
        if stop_requested():
            break  # the rest are reported as not run
        futures.append(row_task.submit(job, cfg, progress))
    ran = {job.job_id: _row_result(job, future) for job, future in zip(jobs, futures)}
    ran.update({job.job_id: not_run_sidecar(job) for job in jobs[len(futures):]})
    progress.close()
    return ran


def _row_result(job: Job, future: Any) -> dict:
    """The row's sidecar; a row task that crashed outright (it never raises) still gets a line."""
    try:
        result = future.result()
    except Exception as exc:  # noqa: BLE001
        result = exc
    if isinstance(result, dict):
        return result
    return {"job_id": job.job_id, "row": job.row, "mode": job.mode, "status": "failed", "outputs": [],
            "error": f"row task crashed: {type(result).__name__}: {result}", "steps": {}, "job": job.cache_dict()}


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"t2vz-{Path(flow_run.parameters.get('manifest_path', 'manifest')).stem}"


@flow(name="t2vz-manifest", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), flow_run_name=_run_name)
def process_manifest(manifest_path: str, output_dir: str, device: str = "auto", dtype: str = "auto",
                     force: bool = False, allowed_roots: list[str] | None = None,
                     work_dir: str | None = None, offload: str = "none", allow_pickle: bool = False,
                     vae_slicing: bool = False, vae_tiling: bool = False) -> dict:
    """Run every valid row of a manifest; invalid rows are reported and skipped.

    device/dtype/offload: see t2vz_core.models.Runtime (offload "model"/"sequential" trades speed
    for GPU memory). work_dir: the content-addressed work folder (default OUTPUT_DIR/.t2vz-work).
    allow_pickle: also load .bin/.ckpt pickle weights (they can run code: only for trusted models);
    recorded in each sidecar. Not in cache keys: the model fingerprint already covers the weights' bytes."""
    return _run(manifest_path, output_dir, None, device, dtype, force, allowed_roots, work_dir, offload,
                allow_pickle, vae_slicing, vae_tiling)


@flow(name="t2vz-rows", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def process_rows(manifest_path: str, output_dir: str, job_ids: list[str], device: str = "auto",
                 dtype: str = "auto", force: bool = False, allowed_roots: list[str] | None = None,
                 work_dir: str | None = None, offload: str = "none", allow_pickle: bool = False,
                 vae_slicing: bool = False, vae_tiling: bool = False) -> dict:
    """Run the named rows of a manifest (a shard); the report covers the whole manifest, other rows
    from their sidecars (or 'missing'). Rebuild it once all shards ran: write_manifest_report."""
    return _run(manifest_path, output_dir, list(job_ids), device, dtype, force, allowed_roots, work_dir, offload,
                allow_pickle, vae_slicing, vae_tiling)
