"""The content-addressed work folder and the run report: keys, atomicity, locks, crashes (no Prefect)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from t2vz_core import report
from t2vz_core.sidecar import Sidecar, StaleSidecar, read_sidecar, write_sidecar
from t2vz_core.workdir import WorkDir, canonical_json, file_digest, make_key

REPO = Path(__file__).resolve().parents[1]


def test_keys_are_stable_and_sensitive_to_every_part():
    base = {"source": "ab" * 32, "params": {"fps": 8, "start": 0.5}}
    assert make_key("decode", base) == make_key("decode", json.loads(json.dumps(base)))
    assert make_key("decode", base) != make_key("control", base)
    assert make_key("decode", base) != make_key("decode", {**base, "source": "cd" * 32})
    assert make_key("decode", base) != make_key("decode", {**base, "params": {"fps": 8, "start": 0.6}})
    # 8.0 and 8 are the same parameter; dict order does not matter
    assert canonical_json({"b": 8.0, "a": 1}) == canonical_json({"a": 1, "b": 8})


def test_file_digest_follows_bytes_not_path(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"first version")
    first = file_digest(path)
    assert first == file_digest(path)
    path.write_bytes(b"other version")  # same size, same path
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert file_digest(path) != first
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(b"other version")
    assert file_digest(copy) == file_digest(path)


def test_file_digest_memo_on_disk_is_used_until_the_file_changes(tmp_path):
    from t2vz_core import workdir

    path, memo = tmp_path / "clip.mp4", tmp_path / "memo"
    path.write_bytes(b"v1")
    assert file_digest(path, memo) and not memo.exists()  # just written: too fresh to remember
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))
    real = file_digest(path, memo)
    (saved,) = memo.glob("*.json")
    record = json.loads(saved.read_text())
    assert record["sha256"] == real
    record["sha256"] = "f" * 64  # prove the next process trusts the memo instead of rereading
    saved.write_text(json.dumps(record))
    workdir._digest_memo.clear()
    assert file_digest(path, memo) == "f" * 64
    path.write_bytes(b"v2")  # same size, new bytes: new mtime/ctime, so the memo no longer applies
    workdir._digest_memo.clear()
    assert file_digest(path, memo) not in (real, "f" * 64)


def test_produce_builds_once_then_hits(tmp_path):
    work = WorkDir(tmp_path / "work")
    calls = []

    def build(folder: Path):
        calls.append(folder)
        (folder / "data.txt").write_text("payload")
        return {"frames": 3}

    first = work.produce("decode", "k1", build)
    assert not first.hit and first.meta["frames"] == 3
    assert (first.path / "data.txt").read_text() == "payload"
    second = work.produce("decode", "k1", build)
    assert second.hit and second.path == first.path and len(calls) == 1
    assert WorkDir(tmp_path / "work").lookup("decode", "k1").meta["key"] == "k1"
    forced = work.produce("decode", "k1", build, force=True)
    assert not forced.hit and len(calls) == 2 and (forced.path / "data.txt").exists()
    assert not list((tmp_path / "work" / ".trash").iterdir())


def test_failed_build_leaves_no_entry_and_is_wiped_unless_resumable(tmp_path):
    work = WorkDir(tmp_path / "work")

    def failing(folder: Path):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        work.produce("encode", "k", failing)
    assert work.lookup("encode", "k") is None
    assert not (tmp_path / "work" / "encode" / "k").exists()
    seen = []
    work.produce("encode", "k", lambda f: seen.append(sorted(os.listdir(f))))
    assert seen == [[]]  # the leftover was wiped for a non-resumable step

    with pytest.raises(RuntimeError):
        work.produce("generate", "g", failing, resumable=True)
    work.produce("generate", "g", lambda f: seen.append(sorted(os.listdir(f))), resumable=True)
    assert seen[-1] == ["half.bin"]  # handed back for resuming


def test_bad_names_are_refused(tmp_path):
    work = WorkDir(tmp_path)
    for bad in ("../x", ".hidden", "", "a/b"):
        with pytest.raises(ValueError):
            work.entry_path("decode", bad)


def test_threads_racing_on_one_key_build_once(tmp_path):
    work = WorkDir(tmp_path / "work")
    calls = []

    def slow_build(folder: Path):
        calls.append(1)
        time.sleep(0.3)
        (folder / "f").write_text("x")

    results = []
    threads = [threading.Thread(target=lambda: results.append(work.produce("s", "k", slow_build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4
    assert sum(not r.hit for r in results) == 1


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from t2vz_core.workdir import WorkDir
    root, mode, log = sys.argv[1:4]
    def build(folder):
        with open(log, "a") as f:
            f.write("build\\n")
        (folder / "part1").write_text("done")
        if mode == "hang":
            print("building", flush=True)
            time.sleep(60)
        time.sleep(0.5)
        (folder / "part2").write_text("done")
    entry = WorkDir(root).produce("generate", "key", build, resumable=True)
    print("hit" if entry.hit else "built", flush=True)
    """
)


def _child(root, mode, log):
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), mode, str(log)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_processes_build_one_key_once(tmp_path):
    log = tmp_path / "log"
    procs = [_child(tmp_path / "work", "normal", log) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["built", "hit"]
    assert log.read_text().count("build") == 1
    entry = WorkDir(tmp_path / "work").lookup("generate", "key")
    assert sorted(os.listdir(entry.path)) == ["entry.json", "part1", "part2"]


def test_sigkill_mid_build_leaves_nothing_final_and_releases_the_lock(tmp_path):
    log = tmp_path / "log"
    proc = _child(tmp_path / "work", "hang", log)
    assert proc.stdout.readline().strip() == "building"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    work = WorkDir(tmp_path / "work")
    assert work.lookup("generate", "key") is None
    assert not (tmp_path / "work" / "generate" / "key").exists()
    seen = []
    entry = work.produce("generate", "key", lambda f: seen.append(sorted(os.listdir(f))), resumable=True)
    assert seen == [["part1"]] and not entry.hit  # resumed from what the killed build wrote


@pytest.mark.parametrize(
    "content",
    [
        '{"job_id": "a", "status": "ok"}',  # a sidecar of t2vz before schema 2
        '{"schema": 99, "job_id": "a", "status": "ok"}',  # one from a later version
        '{"schema": 2, "job_id": "a", "status": 7, "x": 1}',  # the schema number, but not a sidecar
        "[1, 2, 3]",
        "{not json",
    ],
)
def test_an_older_or_foreign_sidecar_is_stale_never_a_crash(tmp_path, content):
    from t2vz_core import freshness
    from t2vz_core.manifest import Job
    from t2vz_core.runtime import Runtime

    (tmp_path / "a.json").write_text(content)
    with pytest.raises(StaleSidecar, match="a.json"):
        read_sidecar(tmp_path, "a")
    job = Job(job_id="a", mode="text2video", prompt="a kite")
    check = freshness.check_row(job, tmp_path, Runtime("cpu"))
    assert not check.current and "a.json" in check.reason
    manifest = tmp_path / "m.csv"
    manifest.write_text("job_id,mode,prompt\na,text2video,a kite\n")
    [line] = report.write_manifest_report(manifest, tmp_path)["rows"]
    assert line["status"] == "missing" and "a.json" in line["error"]


def test_report_has_one_line_per_row_and_survives_spreadsheets(tmp_path):
    ok = {
        "job_id": "a",
        "row": 2,
        "mode": "canny",
        "status": "ok",
        "outputs": [str(tmp_path / "a.mp4")],
        "seconds": 1.5,
        "steps": {"decode": {"status": "computed"}, "generate": {"status": "cached"}},
    }
    bad = {"job_id": "b", "row": 4, "mode": "pose", "status": "failed", "error": "=HYPERLINK(x)", "steps": {}}
    write_sidecar(tmp_path, Sidecar(**ok))
    write_sidecar(tmp_path, Sidecar(**bad))
    assert read_sidecar(tmp_path, "a").status == "ok"
    assert read_sidecar(tmp_path, "zzz") is None
    with pytest.raises(ValueError):
        write_sidecar(tmp_path, Sidecar(**{**ok, "job_id": "report"}))
    rows = [
        report.row_from_sidecar(read_sidecar(tmp_path, "b"), tmp_path),
        report.invalid_row(3, "c", "depth", ["prompt: required", "seed: not a number"]),
        report.row_from_sidecar(read_sidecar(tmp_path, "a"), tmp_path),
        report.missing_row(5, "d", "canny"),
    ]
    rep = report.write_report(tmp_path, rows, {"manifest": "m.csv"})
    assert rep["counts"] == {"total": 4, "ok": 1, "failed": 1, "invalid": 1, "missing": 1}
    assert [r["row"] for r in rep["rows"]] == [2, 3, 4, 5]
    assert json.loads((tmp_path / "report.json").read_text())["manifest"] == "m.csv"
    with open(tmp_path / "report.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["job_id"] for line in lines] == ["a", "c", "b", "d"]
    assert lines[0]["generate"] == "cached" and lines[0]["decode"] == "computed"
    assert lines[1]["error"] == "prompt: required; seed: not a number"
    assert lines[2]["error"].startswith("'=")  # no formula injection
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
