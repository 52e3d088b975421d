"""Atomic file and folder writes: a crash never leaves a half-written file at a final path.

Every file t2vz publishes or keeps (outputs, sidecars, reports, work-folder metadata, frames,
checkpoints) is written through this module.

Everything is first written under a temporary name in the *same* folder (so the final
rename never crosses a filesystem), flushed to disk, then moved into place with
`os.replace`. Readers see either the old complete file or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from t2vz_core.rates import fraction_text


def temp_sibling(final: Path, kind: str = "tmp") -> Path:
    """A unique hidden name next to `final`, keeping its suffix (muxers pick formats by it)."""
    final = Path(final)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return final.with_name(f".{final.stem}.{kind}-{token}{final.suffix}")


def fsync_dir(folder: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY on dirs
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path | str, *, sync_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on error it is removed.

    `sync_dir=False` skips the folder fsync (a writer of many files syncs the folder once)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        if sync_dir:
            fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(final: Path | str, data: bytes, *, sync_dir: bool = True) -> Path:
    with atomic_path(final, sync_dir=sync_dir) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: Path | str, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: Path | str, data: object) -> Path:
    """Indented JSON with a final newline; frame rates as "n/d", other values JSON lacks as text."""
    return atomic_write_text(final, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: object) -> str:
    return fraction_text(value) if isinstance(value, Fraction) else str(value)


def atomic_copy(src: Path | str, final: Path | str) -> Path:
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)
    return Path(final)


def copy_dir_atomic(src: Path | str, final: Path | str) -> None:
    """Copy a whole folder into place; `final` never holds a half-copied folder."""
    final = Path(final)
    tmp = temp_sibling(final)
    try:
        shutil.copytree(src, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def is_stale_temp(path: Path, final_name: str) -> bool:
    """True for a temporary or set-aside name that `temp_sibling` made for `final_name`."""
    final = Path(final_name)
    return path.name.startswith((f".{final.stem}.tmp-", f".{final.stem}.old-"))


def replace_dir(src: Path, final: Path) -> None:
    """Move the finished folder `src` to `final`, replacing any folder already there.

    A directory rename cannot overwrite a non-empty directory, so an existing `final` is
    first renamed aside and deleted afterwards: `final` is briefly absent, never partial.
    """
    final = Path(final)
    old = None
    if final.exists():
        old = temp_sibling(final, "old")
        os.replace(final, old)
    os.replace(src, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
