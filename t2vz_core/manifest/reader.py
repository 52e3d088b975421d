"""`read_manifest`: every row of a CSV file validated into a `Job`, every problem collected."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from t2vz_core.manifest.columns import (
    APPLIES_TO,
    COLUMN_ORDER,
    CONTROLNET_MODES,
    EXTRACTION_COLUMNS,
    MODES,
    OUTPUT_FORMATS,
    SHOT_DETECTOR_COLUMNS,
    SOURCE_MODES,
    STRUCTURAL,
)
from t2vz_core.manifest.csvfile import EXTRA_CELLS, check_header, iter_records, read_text
from t2vz_core.manifest.errors import ManifestError
from t2vz_core.manifest.job import Job
from t2vz_core.manifest.rules import Problem, RowProblems
from t2vz_core.paths import resolve_allowed_roots


@dataclass
class Manifest:
    """The result of `read_manifest`: valid jobs, every row error, warnings (ignored cells)."""

    path: Path
    jobs: list[Job] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[ManifestError] = field(default_factory=list)
    row_count: int = 0  # non-blank data rows

    def errors_by_row(self) -> dict[int, list[ManifestError]]:
        rows: dict[int, list[ManifestError]] = {}
        for error in self.errors:
            rows.setdefault(error.row, []).append(error)
        return rows


def _problems(exc: ValidationError) -> tuple[list[Problem], set[str]]:
    """All problems of a ValidationError, and the columns whose own cell failed."""
    problems: list[Problem] = []
    failed: set[str] = set()
    for detail in exc.errors():
        error = (detail.get("ctx") or {}).get("error")
        if isinstance(error, RowProblems):
            problems.extend(error.problems)
        else:
            column, message = _field_message(detail, error)
            problems.append((column, message, frozenset({column} - {None})))
            failed.add(column or "")
    return problems, failed


def _field_message(detail: Mapping[str, Any], error: BaseException | None) -> tuple[str | None, str]:
    column = str(detail["loc"][0]) if detail.get("loc") else None
    if error is not None:
        message = str(error)
    elif detail["type"] == "missing":
        message = f"{column} is required (the cell is empty)"
    else:
        message = str(detail["msg"])
    return column, message


def _validate_row(cells: dict[str, str], row: int, context: dict[str, Any]) -> tuple[Job | None, list[Problem]]:
    """Validate one row: a Job, or every problem of the row (field errors and cross-column rules)."""
    try:
        return Job.model_validate({**cells, "row": row}, context=context), []
    except ValidationError as exc:
        problems, failed = _problems(exc)
    if failed and "mode" not in failed:
        # Field errors stop pydantic before the cross-column rules: run those again without the
        # failed cells, keeping only rules that do not depend on a failed (hence defaulted) cell.
        try:
            Job.model_validate({k: v for k, v in cells.items() if k not in failed}, context=context)
        except ValidationError as exc:
            more, _ = _problems(exc)
            problems.extend(p for p in more if len(p[2]) > 1 and not p[2] & failed)
    return None, problems


def read_manifest(
    path: str | os.PathLike[str], allowed_roots: Iterable[str | os.PathLike[str]] | None = None
) -> Manifest:
    """Read and validate a CSV manifest.

    Returns every valid row as a `Job` and every problem as a `ManifestError` (all bad cells of
    all rows at once; a row with any error is skipped). Raises `ManifestFileError` when the file
    as a whole is unusable: unreadable, empty, not UTF-8, no header, unknown/duplicate/missing
    columns. Sources must lie inside `allowed_roots` (default: T2VZ_ALLOWED_ROOTS, else the
    manifest's folder); relative paths resolve against the manifest's folder.
    """
    path = Path(path)
    text = read_text(path)
    base_dir = path.resolve().parent
    context = {"base_dir": base_dir, "allowed_roots": resolve_allowed_roots(base_dir, allowed_roots)}
    manifest = Manifest(path=path)
    records = iter(iter_records(path, text))
    mapping = check_header(path, next(records))
    seen_ids: dict[str, tuple[int, str]] = {}
    for offset, record in enumerate(records):
        row = offset + 2
        if not any(cell.strip() for cell in record):
            continue  # a blank line or an empty spreadsheet row
        manifest.row_count += 1
        cells = {name: record[index] for index, name in mapping.items() if name and index < len(record)}
        raw_id = cells.get("job_id", "").strip()[:128] or None
        extra = next((cell for cell in record if cell.startswith(EXTRA_CELLS)), None)
        if extra is not None:
            count = extra[len(EXTRA_CELLS) :]
            manifest.errors.append(
                ManifestError(
                    row,
                    None,
                    f"the row has {count} more cell(s) than the header: "
                    "an unquoted comma? Quote cells that contain commas",
                    raw_id,
                )
            )
            continue
        nameless = [index + 1 for index, name in mapping.items() if not name and record[index].strip()]
        if nameless:
            manifest.errors.append(
                ManifestError(row, None, f"cell(s) in column(s) {nameless} have no column name in the header", raw_id)
            )
            continue
        mode = cells.get("mode", "").strip().lower()
        if mode in MODES:
            not_for_mode = [n for n, modes in APPLIES_TO.items() if mode not in modes and n not in STRUCTURAL]
            _ignore_cells(manifest, cells, row, raw_id, not_for_mode, f"in mode {mode}")
        if mode in CONTROLNET_MODES and cells.get("control", "").strip().lower() == "given":
            why = "with control=given", ": the maps are read, not extracted"
            _ignore_cells(manifest, cells, row, raw_id, EXTRACTION_COLUMNS, *why)
        if mode in SOURCE_MODES and cells.get("shots", "").strip().lower() == "none":
            why = "with shots=none", ": the whole video is one shot"
            _ignore_cells(manifest, cells, row, raw_id, SHOT_DETECTOR_COLUMNS, *why)
        job, problems = _validate_row(cells, row, context)
        if raw_id and "job_id" not in {column for column, _, _ in problems}:
            first = seen_ids.setdefault(raw_id.lower(), (row, raw_id))
            if first[0] != row:
                same = "" if first[1] == raw_id else f" as {first[1]!r}, ignoring case"
                problems.append(
                    (
                        "job_id",
                        f"duplicate job_id {raw_id!r}: already used in row {first[0]}{same} "
                        "(outputs are named after it)",
                        frozenset(),
                    )
                )
                job = None
        problems.sort(key=lambda p: COLUMN_ORDER.get(p[0] or "", -1))
        manifest.errors.extend(ManifestError(row, column, message, raw_id) for column, message, _ in problems)
        if job is not None:
            manifest.jobs.append(job)
    if manifest.row_count == 0:
        manifest.warnings.append(ManifestError(1, None, "the manifest has a header but no job rows"))
    _drop_output_collisions(manifest, seen_ids)
    manifest.errors.sort(key=lambda e: (e.row, COLUMN_ORDER.get(e.column or "", -1)))
    return manifest


def _drop_output_collisions(manifest: Manifest, seen_ids: dict[str, tuple[int, str]]) -> None:
    """A job named 'a.json' would overwrite job 'a''s sidecar (and 'a.mp4' its video): refuse it."""
    suffixes = (*OUTPUT_FORMATS, "json")
    bad: set[str] = set()
    for job in manifest.jobs:
        stem, dot, ext = job.job_id.lower().rpartition(".")
        if dot and ext in suffixes and stem in seen_ids:
            other_row, other_id = seen_ids[stem]
            manifest.errors.append(
                ManifestError(
                    job.row or 0,
                    "job_id",
                    f"job_id {job.job_id!r} collides with the .{ext} output of job "
                    f"{other_id!r} (row {other_row}); rename one of them",
                    job.job_id,
                )
            )
            bad.add(job.job_id)
    if bad:
        manifest.jobs = [job for job in manifest.jobs if job.job_id not in bad]


def _ignore_cells(manifest, cells: dict, row: int, raw_id: str, names, condition: str, reason: str = "") -> None:
    """Blank the cells of `names` that do not apply to this row, each with a warning that says so."""
    for name in names:
        if cells.get(name, "").strip():
            message = f"{name} is ignored {condition} (value {cells[name].strip()!r}){reason}"
            manifest.warnings.append(ManifestError(row, name, message, raw_id))
            cells[name] = ""
