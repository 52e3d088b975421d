"""The local server's database: a new PREFECT_HOME's SQLite file starts as a copy of an empty,
migrated one, made once per Prefect version.

Migrating a new SQLite database is most of a local server's start. Measured on the 2-core machine:
12.8 s to healthy (10.8 s of CPU) on a new home, 5.4 s (4.5 s of CPU) on a new home given a copy.
Every new home pays it: cron jobs with their own homes, a container started afresh. So the first
server that needs one migrates an empty file in the cache folder (`prefect server database
upgrade`, Prefect's own command) and each new home gets a copy. The server's own start-up migration
then finds the database at its head and does nothing. A copy from another Prefect version is never
used (the file is named by version), and any failure here leaves the database to Prefect.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE_ENV = "XDG_CACHE_HOME"
SQLITE_PREFIX = "sqlite+aiosqlite:///"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache") / "t2vz" / "prefect-db"


def sqlite_path(connection_url: str) -> Path | None:
    """The database file of a SQLite connection URL (None for another database or in-memory)."""
    if not connection_url.startswith(SQLITE_PREFIX):
        return None
    path = connection_url.removeprefix(SQLITE_PREFIX).split("?", 1)[0]
    return Path(path) if path and path != ":memory:" and not path.startswith("file:") else None


def _migrate(path: Path) -> None:
    """Prefect's own upgrade of an empty database at `path`, then one self-contained file (no WAL)."""
    env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": SQLITE_PREFIX + str(path)}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=600,
    )
    with contextlib.closing(sqlite3.connect(path)) as db:
        if db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] != 1:
            raise RuntimeError(f"{path}: no migration head recorded")
        db.execute("PRAGMA journal_mode=DELETE")  # folds the WAL in: the template is one file


def template(version: str) -> Path:
    """The migrated empty database of this Prefect version, made on first use (one maker at a time)."""
    folder = cache_dir()
    path = folder / f"prefect-{version}.db"
    if path.exists():  # only ever put in place whole (os.replace): a read-only cache will do
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another server may be making it: wait and use theirs
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                made = Path(scratch) / path.name
                _migrate(made)
                os.replace(made, path)
    finally:
        os.close(fd)
    return path


def seed(connection_url: str, version: str) -> Path | None:
    """Give a database file that does not exist yet the migrated template's content; the template
    copied, or None when nothing was (another database, an existing file, a failure).

    Never replaces a file: the copy is linked into place, which fails if the database appeared
    meanwhile (another Prefect process on the same home)."""
    target = sqlite_path(connection_url)
    if target is None or target.exists():
        return None
    try:
        source = template(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            copy = Path(scratch) / target.name
            shutil.copyfile(source, copy)
            os.link(copy, target)
        return source
    except (OSError, sqlite3.Error, subprocess.SubprocessError, RuntimeError):
        return None  # Prefect migrates the database itself, as without this module
