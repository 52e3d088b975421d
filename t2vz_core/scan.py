"""Start a manifest from a folder of videos: `t2vz scan VIDEO_DIR --mode canny --prompt "..." > manifest.csv`.

Sources are written relative to `relative_to` (default: the current folder, which is where
`> manifest.csv` lands) when the video lies under it, else as absolute paths. Relative paths in a
manifest resolve against the manifest's folder, so the CSV works where it is written; absolute
paths outside that folder still need T2VZ_ALLOWED_ROOTS (sources are confined, see paths.py).
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from t2vz_core.errors import InputError
from t2vz_core.manifest import COLUMNS, SOURCE_MODES
from t2vz_core.paths import RESERVED_JOB_IDS

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".wmv",
        ".flv",
        ".3gp",
        ".ogv",
    }
)
_MAX_ID = 120  # leaves room for a "-N" deduplication suffix within the 128-character limit
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def find_videos(video_dir: str | os.PathLike[str], extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under `video_dir` (recursive, sorted), relative to it.

    Hidden files and folders (names starting with '.', e.g. macOS '._clip.mp4') are skipped, and
    symlinked folders are not entered (no loops). Extensions match case-insensitively.
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise InputError(f"{video_dir}: not a folder")
    wanted = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted:
                found.append(Path(folder, name).relative_to(root))
    return sorted(found, key=lambda path: path.as_posix())


def job_id_for(relative: Path, taken: set[str]) -> str:
    """A safe, unique job id from a relative video path: 'Sub Dir/clip 1.mp4' -> 'Sub_Dir_clip_1'.

    Non-ASCII letters lose their accents, other characters (dots included, so no id can look like
    another job's output file) become '_'; duplicates (ignoring case, as file systems may) get
    '-2', '-3'... `taken` holds lower-cased ids already used and is updated.
    """
    stem = relative.with_suffix("").as_posix()
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", ascii_stem.replace("/", "_")).strip("_-")[:_MAX_ID].strip("_-") or "video"
    if base.lower() in RESERVED_JOB_IDS:
        base = f"{base}_video"  # reserved for the run report
    candidate, number = base, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{base}-{number}"
    taken.add(candidate.lower())
    return candidate


def _source_text(video: Path, relative_to: Path) -> str:
    absolute = Path(os.path.abspath(video))
    if absolute.is_relative_to(relative_to):
        return absolute.relative_to(relative_to).as_posix()
    return str(absolute)


def scan_library(
    video_dir: str | os.PathLike[str],
    mode: str,
    prompt: str,
    *,
    relative_to: str | os.PathLike[str] | None = None,
    **defaults: Any,
) -> str:
    """CSV text of a manifest with one row per video under `video_dir`.

    Columns: job_id, mode, source, prompt, then each column given in `defaults` (e.g.
    `seed=3, num_inference_steps=30`), repeated on every row. Run `t2vz validate` on the result.
    """
    if mode not in SOURCE_MODES:
        raise InputError(f"scan needs a mode that edits a video ({', '.join(sorted(SOURCE_MODES))}), not {mode!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("scan needs a non-empty prompt")
    fixed = {"job_id", "mode", "source", "prompt"}
    unknown = sorted(set(defaults) - (set(COLUMNS) - fixed))
    if unknown:
        raise InputError(f"unknown manifest column(s) for scan: {', '.join(unknown)}")
    extra = [name for name in COLUMNS if name in defaults and defaults[name] is not None]
    videos = find_videos(video_dir)
    if not videos:
        raise InputError(f"no video files under {video_dir} (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    base = Path(os.path.abspath(relative_to if relative_to is not None else os.getcwd()))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job_id", "mode", "source", "prompt", *extra])
    taken: set[str] = set()
    for relative in videos:
        source = _source_text(Path(video_dir) / relative, base)
        writer.writerow(
            [job_id_for(relative, taken), mode, source, prompt.strip(), *(_cell(defaults[name]) for name in extra)]
        )
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ";".join(str(item) for item in value)
    return str(value)
