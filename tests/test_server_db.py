"""The local server's database template (flows/server_db.py): a new home's SQLite file is a copy of
a migrated empty database, never a replacement of an existing file, and any failure leaves the
database to Prefect. The template is the real one of this test run (XDG_CACHE_HOME, shared by the
xdist workers), made by `prefect server database upgrade`."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from prefect import __version__ as prefect_version

from flows import server_db


def _head(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchall()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:////home/u/.prefect/prefect.db", Path("/home/u/.prefect/prefect.db")),
        ("sqlite+aiosqlite:///prefect.db", Path("prefect.db")),
        ("sqlite+aiosqlite:////data/p.db?timeout=30", Path("/data/p.db")),
        ("sqlite+aiosqlite:///:memory:", None),
        ("sqlite+aiosqlite:///file:mem?mode=memory&uri=true", None),
        ("postgresql+asyncpg://prefect:pw@db:5432/prefect", None),
        ("", None),
    ],
)
def test_only_sqlite_files_are_seeded(url, expected):
    assert server_db.sqlite_path(url) == expected


def test_a_new_database_is_a_copy_of_the_migrated_template(tmp_path):
    target = tmp_path / "home" / "prefect.db"
    template = server_db.seed(f"sqlite+aiosqlite:///{target}", prefect_version)
    assert template == server_db.template(prefect_version)
    assert template.name == f"prefect-{prefect_version}.db" and template.parent == server_db.cache_dir()
    assert target.read_bytes() == template.read_bytes()
    assert len(_head(target)) == 1  # migrated to a head
    with closing(sqlite3.connect(target)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"flow_run", "task_run", "deployment", "artifact"} <= tables
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)
    assert [p.name for p in target.parent.iterdir()] == ["prefect.db"]  # no scratch copy left


def test_an_existing_database_is_never_replaced(tmp_path):
    target = tmp_path / "prefect.db"
    target.write_bytes(b"someone's database")
    assert server_db.seed(f"sqlite+aiosqlite:///{target}", prefect_version) is None
    assert target.read_bytes() == b"someone's database"


def test_a_failure_leaves_the_database_to_prefect(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv(server_db.CACHE_ENV, str(blocked))
    target = tmp_path / "home" / "prefect.db"
    assert server_db.seed(f"sqlite+aiosqlite:///{target}", prefect_version) is None
    assert not target.exists()


def test_the_session_server_started_on_a_copy(prefect_api):
    """The session's server (tests/session_server.py) is t2vz's local server on a new home: its log
    says where its database came from, and the database holds the flow runs of this session."""
    import os

    home = Path(os.environ["T2VZ_TESTS_SHARED_DIR"]) / "server-home"
    log = (home / "t2vz-server" / "server.log").read_text()
    assert f"new database: a copy of {server_db.template(prefect_version)}" in log
    assert _head(home / "prefect.db") == _head(server_db.template(prefect_version))
