"""From a CSV file to records: size and encoding checks, the header, rows as lists of strings.

Everything here that makes the whole file unusable raises `ManifestFileError`.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Iterable
from pathlib import Path

from t2vz_core.manifest.columns import COLUMN_ORDER, COLUMNS, REQUIRED_COLUMNS
from t2vz_core.manifest.errors import ManifestFileError

MAX_MANIFEST_BYTES = 64 * 1024 * 1024

# Marks a record that had more cells than the header (the count follows); see iter_records.
EXTRA_CELLS = "\x00t2vz-extra-cells:"


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 (with or without BOM) text; a clear error for UTF-16, bad bytes and NUL characters."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ManifestFileError(path, "the file is UTF-16 encoded; save it as CSV UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.start + 4]
        raise ManifestFileError(
            path,
            f"not valid UTF-8 at byte offset {exc.start} (line {line}, character {column}: {bad!r}); "
            "save the file as CSV UTF-8",
            line=line,
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestFileError(path, "contains a NUL character: is this a binary file?", line=line)
    return text


def read_text(path: Path) -> str:
    """The manifest as text, after the size, encoding and emptiness checks."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ManifestFileError(path, "is a folder, not a CSV file")
        if size > MAX_MANIFEST_BYTES:
            raise ManifestFileError(path, f"is {size} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes")
        data = path.read_bytes()
    except ManifestFileError:
        raise
    except OSError as exc:
        raise ManifestFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    text = _decode(path, data)
    if not text.strip():
        raise ManifestFileError(path, "the file is empty: expected a header row such as 'job_id,mode,prompt,source'")
    return text


def check_header(path: Path, names: list[str]) -> dict[int, str]:
    """Map column index -> column name ("" for a nameless one); raise one ManifestFileError for every header problem."""
    problems: list[str] = []
    mapping: dict[int, str] = {}
    seen: dict[str, int] = {}
    for index, raw in enumerate(names):
        name = raw.strip().lower()
        if not name:
            mapping[index] = ""  # spreadsheets export trailing empty columns; data there is a row error
            continue
        if name.startswith("#"):
            continue  # a comment column, for the user's notes
        if name in seen:
            problems.append(f"column {name!r} appears twice (columns {seen[name] + 1} and {index + 1})")
            continue
        seen[name] = index
        if name not in COLUMN_ORDER:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown column {raw.strip()!r}{hint}")
            continue
        mapping[index] = name
    missing = [name for name in REQUIRED_COLUMNS if name not in seen]
    if missing:
        problems.append(f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            problems.append("the header has a single column: is the file separated by ';' or tabs? t2vz reads commas")
    if problems:
        raise ManifestFileError(
            path,
            "bad header row: "
            + "; ".join(problems)
            + f". Known columns: {', '.join(COLUMNS)}; prefix a column with '#' to keep notes",
            line=1,
        )
    return mapping


def iter_records(path: Path, text: str) -> Iterable[list[str]]:
    """CSV records as lists of strings, the header first, each padded to the header's width.

    A record with more cells than the header comes back cut to the header's width with a marker
    in its last cell, so that it keeps its place (and row number) and can be reported. A quote
    that is never closed (which would swallow the rest of the file) or an oversized cell makes
    the whole file unreadable. The file is checked in full before the first record comes back.
    """
    records = _parse(path, text)
    width = max(len(records[0]) if records else 0, 1)
    for cells in records:
        if len(cells) > width:
            kept = cells[:width]
            kept[-1] = f"{EXTRA_CELLS}{len(cells) - width}"
            yield kept
        else:
            yield cells + [""] * (width - len(cells))


def _parse(path: Path, text: str) -> list[list[str]]:
    reader = csv.reader(io.StringIO(text), strict=True)
    records: list[list[str]] = []
    start = 1
    try:
        for record in reader:
            records.append(record)
            start = reader.line_num + 1
    except csv.Error as exc:
        hint = " (a quote that is never closed?)" if "end of data" in str(exc) else ""
        raise ManifestFileError(
            path, f"not a readable CSV file: {exc}{hint}; the record starts at line {start}", line=start
        ) from None
    return records
