"""Flows over a CSV manifest: one flow run per manifest (`process_manifest`) or per shard of it
(`process_rows`, for fanning a manifest out over several workers).

Both return the run report (dict, also written to OUTPUT_DIR/report.json and report.csv) and
end Failed when a row failed (or, for a whole manifest, when a row is invalid); the report is
written first. Rows already up to date (t2vz_core.freshness: same cells, same source and model
bytes, same runtime, outputs untouched) get no task run; --force runs them anyway. Rows run
concurrently, at most RunOptions.rows_at_once (max_workers, default 2; one at a time on a CPU
unless chosen); generation holds one job per device
(tasks.policy.hold_device), across machines too when T2VZ_GPU_LIMIT names a Prefect global
concurrency limit. Each row is six task runs: for thousands of rows, fan out in shards
(flows/deploy.py) rather than one giant flow run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import signals
from t2vz_core import freshness, report
from t2vz_core.errors import InputError
from t2vz_core.manifest import Job, format_errors, read_manifest
from t2vz_core.options import RunOptions
from t2vz_core.sidecar import Sidecar
from t2vz_core.stop import stop_requested
from t2vz_core.workdir import WorkDir
from tasks.config import RunConfig
from tasks.progress import RunProgress
from tasks.row import not_run_sidecar, row_task

# Threads of the flow's task runner: an upper bound only; RunOptions.rows_at_once decides how
# many rows really run at once (the steps of a row run inside its row task's thread).
RUNNER_THREADS = 16
MARKDOWN_ROWS = 500  # the summary artifact lists this many rows; report.csv has them all


# ---------------------------------------------------------------- artifacts


def report_table(lines: list[dict]) -> list[dict]:
    """The rows table artifact: one layout, written by a flow run and by a fan-out alike."""
    columns = report.report_columns()
    return [
        {
            column: "; ".join(line["outputs"]) if column == "outputs" else line.get(column, "")
            for column in columns
            if column != "sidecar"
        }
        for line in lines
    ]


def artifact_key(prefix: str, manifest_path: str | Path) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", Path(manifest_path).stem.lower()).strip("-") or "manifest"
    return f"{prefix}-{stem}"[:100]


def mode_status_markdown(lines: list[dict]) -> str:
    """Per mode and status: rows, frames, timings, median QC scores (t2vz_core.report_table)."""
    from t2vz_core import report_table as tables

    summary = tables.summarize_by_mode_status(tables.report_frame(lines))
    return "## By mode and status\n\n" + tables.summary_markdown(summary)


def _markdown(rep: dict) -> str:
    counts = rep["counts"]
    current = sum(1 for line in rep["rows"] if line.get("up_to_date"))
    out = [
        f"# t2vz: {Path(rep.get('manifest', '')).name}",
        f"**{counts['ok']} ok** ({current} up to date, not run again), {counts['failed']} failed, "
        f"{counts['invalid']} invalid, "
        f"{counts['missing']} not run, of {counts['total']} rows. Report: "
        f"[report.csv]({(Path(rep['output_dir']) / 'report.csv').absolute().as_uri()}); gallery: "
        f"[report.html]({(Path(rep['output_dir']) / 'report.html').absolute().as_uri()})",
        "",
        mode_status_markdown(rep["rows"]),
        "## Rows",
        "",
        "| row | job | mode | status | outputs | error |",
        "|---|---|---|---|---|---|",
    ]
    shown = rep["rows"][:MARKDOWN_ROWS]
    for line in shown:
        links = ", ".join(f"[{Path(p).name}]({Path(p).absolute().as_uri()})" for p in line["outputs"])
        error = str(line["error"]).replace("|", "\\|").replace("\n", " ")[:300]
        out.append(f"| {line['row']} | {line['job_id']} | {line['mode']} | {line['status']} | {links} | {error} |")
    if len(rep["rows"]) > len(shown):
        out.append(f"\n... {len(rep['rows']) - len(shown)} more rows in report.csv")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the flows


def _run(manifest_path: str, output_dir: str, job_ids: list[str] | None, options: RunOptions) -> Any:
    logger = get_run_logger()
    from prefect.runtime import flow_run

    manifest = read_manifest(manifest_path, allowed_roots=options.allowed_roots)
    if manifest.errors:
        logger.warning(
            "%d invalid row(s) are skipped:\n%s",
            len(manifest.errors_by_row()),
            format_errors(manifest.errors, manifest_path),
        )
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
    options = options.model_copy(update={"work_dir": str(options.resolved_work_dir(out))})
    cfg = RunConfig(output_dir=out, options=options, flow_run_id=run_id, manifest=str(Path(manifest_path).absolute()))
    runtime = cfg.runtime()
    current, to_run = _partition(jobs, cfg, logger)
    ran: dict[str, Sidecar] = {}
    if to_run:
        device_type, _ = runtime.signature()  # torch is imported only where a step needs it
        if device_type != "cpu":
            runtime.resolve()  # a missing GPU fails here, before any row starts
        logger.info("%d row(s) to run from %s into %s (work folder %s)", len(to_run), manifest_path, out, cfg.work_dir)
        with signals.flow_stops(run_id):  # SIGTERM/SIGINT/a cancel in Prefect stop the rows cooperatively
            ran = _run_rows(to_run, cfg, options.rows_at_once(device_type), manifest_path)

    lines = report.manifest_lines(manifest, out, ran, current)
    rep = report.write_report(out, lines, report.manifest_extra(manifest, run_id), sidecars={**current, **ran})
    create_table_artifact(
        report_table(rep["rows"]),
        key=artifact_key("t2vz-report", manifest_path),
        description=f"t2vz rows of {Path(manifest_path).name}",
    )
    create_markdown_artifact(
        _markdown(rep),
        key=artifact_key("t2vz-summary", manifest_path),
        description="t2vz run summary with links to outputs",
    )

    failed = [s.job_id for s in ran.values() if s.status == "failed"]
    if stop_requested():
        return signals.cancelled_state(rep)
    invalid = len(manifest.errors_by_row()) if job_ids is None else 0
    logger.info(
        "%d ok (%d up to date), %d failed, %d invalid; report: %s",
        len(ran) - len(failed) + len(current),
        len(current),
        len(failed),
        invalid,
        out / "report.csv",
    )
    if failed or invalid:
        named = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        parts = ([f"{len(failed)} row(s) failed: {named}"] if failed else []) + (
            [f"{invalid} invalid row(s)"] if invalid else []
        )
        return Failed(message="; ".join(parts), data=rep)
    return rep


def _partition(jobs: list[Job], cfg: RunConfig, logger: Any) -> tuple[dict[str, Sidecar], list[Job]]:
    """(sidecars of the rows already up to date by job_id, jobs to run); --force runs every row."""
    if cfg.force:
        return {}, list(jobs)
    checks = freshness.check_rows(jobs, cfg.output_dir, cfg.runtime(), WorkDir(cfg.work_dir))
    current = freshness.current_sidecars(checks)
    to_run = [job for job in jobs if job.job_id not in current]
    if current:
        named = list(current)
        logger.info(
            "%d row(s) up to date, not run again: %s",
            len(named),
            ", ".join(named[:20]) + (f" and {len(named) - 20} more" if len(named) > 20 else ""),
        )
    for job in to_run:
        if checks[job.job_id].sidecar is not None:
            logger.info("%s runs again: %s", job.job_id, checks[job.job_id].reason)
    return current, to_run


def _run_rows(jobs: list[Job], cfg: RunConfig, at_once: int, manifest_path: str) -> dict[str, Sidecar]:
    """Submit one row task per job, at most `at_once` at a time; their sidecars by job_id."""
    artifact = create_progress_artifact(
        0.0,
        key=artifact_key("t2vz-progress", manifest_path),
        description=f"t2vz: {len(jobs)} row(s) of {Path(manifest_path).name}",
    )
    progress = RunProgress([job.job_id for job in jobs], artifact_id=artifact)
    futures: list[Any] = []
    for job in jobs:
        if len(futures) >= at_once:
            futures[-at_once].wait()  # rows still finish in any order; this only bounds how many run
        if stop_requested():
            break  # the rest are reported as not run
        futures.append(row_task.submit(job, cfg, progress))
    ran = {job.job_id: _row_result(job, future) for job, future in zip(jobs, futures)}
    ran.update({job.job_id: not_run_sidecar(job) for job in jobs[len(futures) :]})
    progress.close()
    return ran


def _row_result(job: Job, future: Any) -> Sidecar:
    """The row's sidecar; a row task that crashed outright (it never raises) still gets a line."""
    try:
        result = future.result()
    except Exception as exc:  # noqa: BLE001
        result = exc
    if isinstance(result, Sidecar):
        return result
    return Sidecar(
        job_id=job.job_id,
        row=job.row,
        mode=job.mode,
        status="failed",
        error=f"row task crashed: {type(result).__name__}: {result}",
        job=job.cache_dict(),
    )


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"t2vz-{Path(flow_run.parameters.get('manifest_path', 'manifest')).stem}"


@flow(name="t2vz-manifest", task_runner=ThreadPoolTaskRunner(max_workers=RUNNER_THREADS), flow_run_name=_run_name)
def process_manifest(manifest_path: str, output_dir: str, options: RunOptions | None = None) -> dict:
    """Run every valid row of a manifest; invalid rows are reported and skipped.

    options: how to run (device, dtype, offload, force, work folder...: t2vz_core.options.RunOptions;
    default: all defaults). Recorded in each sidecar."""
    return _run(manifest_path, output_dir, None, options or RunOptions())


@flow(name="t2vz-rows", task_runner=ThreadPoolTaskRunner(max_workers=RUNNER_THREADS))
def process_rows(manifest_path: str, output_dir: str, job_ids: list[str], options: RunOptions | None = None) -> dict:
    """Run the named rows of a manifest (a shard); the report covers the whole manifest, other rows
    from their sidecars (or 'missing'). Rebuild it once all shards ran: report.write_manifest_report."""
    return _run(manifest_path, output_dir, list(job_ids), options or RunOptions())
