"""The run report as a pandas DataFrame: report.parquet, report.csv's text, the per-mode summary.

    df = report_frame(rows)                 # rows: report lines (t2vz_core.report)
    frame_to_csv(df) == report.csv's text   # the same columns, cells and CSV-injection guard
    write_tables(output_dir, rows)          # report.csv + report.parquet from one DataFrame
    summary = summarize_by_mode_status(df)  # per mode and status: rows, frames, timings, QC medians
    summary_text(summary) / summary_markdown(summary)

Typed columns: row, frames and shots are nullable integers, seconds and the QC scores floats
(NaN when unknown), outputs a list of paths (joined with ";" in the CSV), text columns strings.

pandas costs ~0.4 s to import, more than the whole all-up-to-date re-run (t2vz run finding
nothing to do: ~0.2 s), so this module is imported only where a table is written or summarised:
t2vz_core.report.write_report calls it when the rows' results changed, never on that path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from t2vz_core import report
from t2vz_core.atomic import atomic_path, atomic_write_text

QC_COLUMNS = report.QC_COLUMNS
INT_COLUMNS = ("row", "frames", "shots")
FLOAT_COLUMNS = ("seconds", *QC_COLUMNS)
PARQUET_NAME = "report.parquet"


def _number(value, kind: type):
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return int(number) if kind is int else number


def report_frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    """One DataFrame row per report line, in the lines' order, typed as the module docstring says."""
    columns = columns or list(report.report_columns())
    data: dict[str, list] = {c: [] for c in columns}
    for line in rows:
        for column in columns:
            value = line.get(column)
            if column in INT_COLUMNS:
                value = _number(value, int)
            elif column in FLOAT_COLUMNS:
                value = _number(value, float)
            elif column == "outputs":
                value = [str(p) for p in value or []]
            else:
                value = "" if value is None else str(value)
            data[column].append(value)
    frame = pd.DataFrame(data, columns=columns)
    for column in columns:
        if column in INT_COLUMNS:
            frame[column] = pd.array(data[column], dtype="Int64")
        elif column in FLOAT_COLUMNS:
            frame[column] = pd.array([math.nan if v is None else v for v in data[column]], dtype="float64")
    return frame


def _csv_text(value, column: str) -> str:
    """One cell as report.py's stdlib writer formats it (seconds to the millisecond, lists joined)."""
    if column == "outputs":
        value = ";".join(value)
    elif isinstance(value, float) or column in FLOAT_COLUMNS:
        if value is None or pd.isna(value):
            return ""
        value = f"{float(value):.3f}" if column == "seconds" else str(float(value))
    elif value is None or value is pd.NA:
        return ""
    return str(report._cell(value if isinstance(value, str) else str(value)))


def frame_to_csv(frame: pd.DataFrame) -> str:
    """report.csv's text: the stdlib writer's (t2vz_core.report) byte for byte, CSV-injection guard
    included (cells starting with = + - @ get a leading quote)."""
    text = pd.DataFrame(
        {c: [_csv_text(v, c) for v in frame[c].tolist()] for c in frame.columns},
        columns=list(frame.columns),
        dtype=object,
    )
    return text.to_csv(index=False, lineterminator="\n")


def write_tables(output_dir: str | os.PathLike, rows: list[dict]) -> pd.DataFrame:
    """Write report.csv and report.parquet (atomically) from one DataFrame of `rows`."""
    output_dir = Path(output_dir)
    frame = report_frame(rows)
    atomic_write_text(output_dir / "report.csv", frame_to_csv(frame))
    with atomic_path(output_dir / PARQUET_NAME) as tmp:
        frame.to_parquet(tmp, index=False)
    return frame


def summarize_by_mode_status(frame: pd.DataFrame) -> pd.DataFrame:
    """Per mode and status: rows, frames, median seconds per row, frames per second (all frames
    over all seconds of the rows that have both), and the median of each QC score."""
    frame = frame.copy()
    for column in ("frames", "seconds", *QC_COLUMNS):
        if column not in frame:
            frame[column] = math.nan
    frame["mode"] = frame["mode"].replace("", "(none)")
    frame["frames"] = frame["frames"].astype("float64")
    timed = frame["frames"].notna() & frame["seconds"].notna()
    frame["_timed_frames"] = frame["frames"].where(timed)
    frame["_timed_seconds"] = frame["seconds"].where(timed)
    groups = frame.groupby(["mode", "status"], sort=True)
    summary = pd.DataFrame(
        {
            "rows": groups.size(),
            "frames": groups["frames"].sum(min_count=1),
            "median_seconds": groups["seconds"].median(),
            "frames_per_second": groups["_timed_frames"].sum(min_count=1) / groups["_timed_seconds"].sum(min_count=1),
            **{f"median_{c}": groups[c].median() for c in QC_COLUMNS},
        }
    )
    summary["frames"] = summary["frames"].astype("Int64")
    return summary


def _shown(value, column: str) -> str:
    if value is None or pd.isna(value):
        return "-"
    if column in ("rows", "frames"):
        return str(int(value))
    return f"{float(value):.2f}"


def summary_text(summary: pd.DataFrame) -> str:
    """A fixed-width console table of summarize_by_mode_status()."""
    header = ["mode", "status", *summary.columns]
    body = [
        [str(mode), str(status), *(_shown(v, c) for c, v in zip(summary.columns, values))]
        for (mode, status), values in zip(summary.index, summary.itertuples(index=False))
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        for r in [header, *body]
    ]
    return "\n".join(line.rstrip() for line in lines)


def summary_markdown(summary: pd.DataFrame) -> str:
    """The same table as markdown (the Prefect summary artifact); `|` in text is escaped."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    header = ["mode", "status", *(c.replace("_", " ") for c in summary.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (mode, status), values in zip(summary.index, summary.itertuples(index=False)):
        cells = [cell(str(mode)), cell(str(status)), *(_shown(v, c) for c, v in zip(summary.columns, values))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
