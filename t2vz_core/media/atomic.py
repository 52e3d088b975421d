"""Atomic file and folder writes: a crash never leaves a half-written file at a final path.

Everything is first written under a temporary name in the *same* folder (so the final
rename never crosses a filesystem), flushed to disk, then moved into place with
`os.replace`. Readers see either the old complete file or the new complete one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


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
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(final: Path | str, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


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
