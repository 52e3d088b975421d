"""Run reports: report.csv / report.json with one line per manifest row, built from the sidecars.

Sidecars (t2vz_core.sidecar) are the source of truth: a report can always be rebuilt from the
manifest and the sidecars in the output folder, which is what lets shards of one manifest
(separate flow runs, maybe on separate machines) produce one complete report at the end. No
Prefect here: `t2vz report` rebuilds a report without it.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2vz_core.atomic import atomic_write_json, atomic_write_text
from t2vz_core.sidecar import Sidecar, StaleSidecar, read_sidecar, sidecar_path
from t2vz_core.step_results import QC_KEYS

if TYPE_CHECKING:
    from t2vz_core.manifest import Job, Manifest


def _step_names() -> tuple[str, ...]:
    from t2vz_core.pipeline import step_names

    return step_names()


# Temporal-consistency scores (t2vz_core.qc), as the sidecar's "qc" object names them.
QC_COLUMNS = QC_KEYS  # report.csv names them as the sidecar's qc object does


def report_columns() -> tuple[str, ...]:
    return (
        "row",
        "job_id",
        "mode",
        "status",
        "error",
        "outputs",
        "seconds",
        "frames",
        "shots",
        *_step_names(),
        *QC_COLUMNS,
        "sidecar",
    )


# A row's status: ok, flagged (ok, but its warp_error_ratio exceeds the row's qc_max_warp_ratio; counted
# as ok too), failed (ran and failed), cancelled (stopped: t2vz_core.stop), invalid (manifest
# validation), missing (no sidecar yet, or not run because the run was stopped).
# An ok row found up to date (t2vz_core.freshness) shows "up to date" in its step columns.


def row_from_sidecar(sidecar: Sidecar, output_dir: str | os.PathLike) -> dict:
    """One report line from a job's sidecar."""
    line = {
        "row": sidecar.row,
        "job_id": sidecar.job_id,
        "mode": sidecar.mode,
        "status": sidecar.status,
        "error": sidecar.error or "",
        "outputs": list(sidecar.outputs),
        "seconds": sidecar.seconds,
        "frames": sidecar.resolved.get("frames"),
        "shots": len(sidecar.shots) if sidecar.shots else None,  # how many shots the output has
        "sidecar": str(sidecar_path(output_dir, sidecar.job_id)),
    }
    for step in _step_names():
        record = sidecar.steps.get(step)
        line[step] = record.status if record else ""
    scores = sidecar.qc or {}
    for column in QC_COLUMNS:
        line[column] = scores.get(column)
    return line


def apply_qc_limit(line: dict, limit: float | None) -> dict:
    """Mark an ok line "flagged" when its warp_error_ratio exceeds the row's qc_max_warp_ratio. The limit
    comes from the manifest as it is now (it is in no cache key): changing it re-runs nothing."""
    if limit is not None:
        line["qc_max_warp_ratio"] = limit
        ratio = line.get("warp_error_ratio")
        if line["status"] == "ok" and ratio is not None and ratio > limit:
            line["status"] = "flagged"
    return line


def up_to_date_row(sidecar: Sidecar, output_dir: str | os.PathLike) -> dict:
    """A report line for a row found up to date (t2vz_core.freshness): no step ran this time."""
    line = row_from_sidecar(sidecar, output_dir)
    for step in _step_names():
        if line[step] not in ("skipped", ""):
            line[step] = "up to date"
    line["up_to_date"] = True
    return line


def manifest_lines(
    manifest: Manifest,
    output_dir: str | os.PathLike,
    ran: dict[str, Sidecar] | None = None,
    current: dict[str, Sidecar] | None = None,
) -> list[dict]:
    """One report line per manifest row: rows run now (`ran`), rows found up to date (`current`;
    both map job_id -> sidecar), else their sidecar on disk if it was written for this very job,
    else 'missing'; invalid rows with their validation errors."""
    ran, current = ran or {}, current or {}
    lines = []
    for job in manifest.jobs:
        if job.job_id in ran:
            line = row_from_sidecar(ran[job.job_id], output_dir)
        elif job.job_id in current:
            line = up_to_date_row(current[job.job_id], output_dir)
        else:
            line = _line_on_disk(job, output_dir)
        lines.append(apply_qc_limit(line, job.qc_max_warp_ratio))
    for row, errors in sorted(manifest.errors_by_row().items()):
        job_id = next((e.job_id for e in errors if e.job_id), None)
        messages = [f"{e.column}: {e.message}" if e.column else e.message for e in errors]
        lines.append(invalid_row(row, job_id, None, messages))
    return lines


def _line_on_disk(job: Job, output_dir: str | os.PathLike) -> dict:
    """The row's sidecar on disk if it was written for this very job, else a 'missing' line."""
    try:
        on_disk = read_sidecar(output_dir, job.job_id)
    except StaleSidecar as exc:
        return missing_row(job.row, job.job_id, job.mode, f"not run by this version: {exc}")
    if on_disk is None or on_disk.job != job.cache_dict():
        return missing_row(job.row, job.job_id, job.mode)
    return row_from_sidecar(on_disk, output_dir)


def manifest_extra(manifest: Manifest, flow_run_id: str | None = None) -> dict:
    """The report's header fields."""
    return {
        "manifest": str(Path(manifest.path).absolute()),
        "flow_run_id": flow_run_id,
        "warnings": [str(w) for w in manifest.warnings],
    }


def invalid_row(row: int | None, job_id: str | None, mode: str | None, messages: list[str]) -> dict:
    """A report line for a row that failed validation (it never ran and has no sidecar)."""
    line = {c: "" for c in report_columns()}
    line.update(
        row=row,
        job_id=job_id or "",
        mode=mode or "",
        status="invalid",
        error="; ".join(messages),
        outputs=[],
        seconds=None,
        sidecar="",
    )
    return line


def missing_row(row: int | None, job_id: str, mode: str | None, why: str = "not run yet: no sidecar") -> dict:
    """A report line for a valid row that has not produced a sidecar (not run yet, or killed)."""
    line = invalid_row(row, job_id, mode, [why])
    line["status"] = "missing"
    return line


def summarize(rows: Iterable[dict]) -> dict[str, int]:
    # "flagged" appears only when some row is (the counts keep their shape for reports without QC limits).
    counts = {"total": 0, "ok": 0, "failed": 0, "invalid": 0, "missing": 0}
    for line in rows:
        counts["total"] += 1
        counts[line["status"]] = counts.get(line["status"], 0) + 1
        if line["status"] == "flagged":  # a flagged row ran fine: it counts as ok
            counts["ok"] += 1
    return counts


def write_report(
    output_dir: str | os.PathLike,
    rows: list[dict],
    extra: dict | None = None,
    sidecars: dict[str, Sidecar] | None = None,
) -> dict:
    """Write report.json, report.csv, report.parquet and report.html (atomically) and return the report
    dict. `sidecars` (by job_id), when the caller holds them, spare the gallery a read per row.

    report.csv and report.parquet come from one pandas DataFrame (t2vz_core.report_table), except when
    the rows' results are those the last report recorded (`results_digest`) and report.parquet is
    there: then report.csv is written by the stdlib writer below (the same bytes) and pandas is not
    imported, which keeps the all-up-to-date re-run fast. The digest leaves out the step columns, so
    a re-run that only marks rows "up to date" leaves report.parquet as the run that made them wrote it."""
    output_dir = Path(output_dir)
    rows = sorted(rows, key=lambda r: (r.get("row") is None, r.get("row") or 0, str(r.get("job_id"))))
    digest = results_digest(rows)
    unchanged = digest == _previous_digest(output_dir) and (output_dir / "report.parquet").is_file()
    report = {
        **(extra or {}),
        "output_dir": str(output_dir),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": summarize(rows),
        "results_digest": digest,
        "rows": rows,
    }
    if unchanged:
        atomic_write_text(output_dir / "report.csv", _rows_to_csv(rows))
    else:
        from t2vz_core import report_table

        report_table.write_tables(output_dir, rows)
    atomic_write_json(output_dir / "report.json", report)  # last: its digest vouches for the parquet
    from t2vz_core.gallery import write_gallery

    write_gallery(output_dir, rows, extra, sidecars)
    return report


def results_digest(rows: list[dict]) -> str:
    """sha256 of the rows' results: every column but the per-step statuses (which turn "up to date"
    on a re-run that changed nothing)."""
    import hashlib
    import json

    steps = set(_step_names())
    kept = [{k: v for k, v in line.items() if k not in steps and k != "up_to_date"} for line in rows]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _previous_digest(output_dir: Path) -> str | None:
    import json

    try:
        return json.loads((output_dir / "report.json").read_text(encoding="utf-8")).get("results_digest")
    except (OSError, ValueError, AttributeError):
        return None


def write_manifest_report(
    manifest_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    allowed_roots: list[str] | None = None,
    current: dict[str, Sidecar] | None = None,
    flow_run_id: str | None = None,
) -> dict:
    """Rebuild report.csv/json of a manifest from the sidecars in OUTPUT_DIR (e.g. after shards ran);
    `current`: the sidecars of rows the caller found up to date (not run), by job_id."""
    from t2vz_core.manifest import read_manifest

    manifest = read_manifest(manifest_path, allowed_roots=allowed_roots)
    lines = manifest_lines(manifest, output_dir, current=current)
    return write_report(output_dir, lines, manifest_extra(manifest, flow_run_id))


def _rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(report_columns()), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in rows:
        flat = dict(line)
        flat["outputs"] = ";".join(str(p) for p in line.get("outputs") or [])
        flat["seconds"] = "" if line.get("seconds") is None else f"{float(line['seconds']):.3f}"
        writer.writerow({k: _cell(v) for k, v in flat.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    # Spreadsheet apps execute cells starting with = + - @: neutralise them (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


def software_versions() -> dict[str, str | None]:
    """Versions of the packages that shape an output (read from metadata: nothing is imported)."""
    return dict(_software_versions())


@functools.lru_cache(maxsize=1)
def _software_versions() -> dict[str, str | None]:
    # Metadata lookups scan sys.path (~10 ms each row); installed versions do not change mid-process.
    import platform
    from importlib import metadata

    import t2vz_core

    found: dict[str, str | None] = {"t2vz_core": t2vz_core.__version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "prefect", "av", "decord", "controlnet-aux", "mediapipe"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
