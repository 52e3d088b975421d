"""FrameStore: lossless PNG frames + meta.json, atomic finalize, resume, reuse, one writer at a time."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from t2vz_core.errors import MediaError, TransientError
from t2vz_core.media import DecodeSpec, FrameStore, decode_to_store, plan_decode, probe
from t2vz_core.media.synthetic import make_video, read_frame_index

REPO = Path(__file__).resolve().parents[1]


def frames(n, h=24, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)


def test_round_trip_is_lossless_with_meta(tmp_path):
    data = frames(7)
    with FrameStore.writer(tmp_path / "s", Fraction(30000, 1001), {"kind": "test", "x": (1, 2)}) as w:
        w.write(0, data[:4])
        w.write(4, data[4:])
    store = FrameStore(tmp_path / "s")
    assert len(store) == 7 and (store.width, store.height) == (40, 24)
    assert store.fps == Fraction(30000, 1001)
    assert np.array_equal(store[:], data) and np.array_equal(store[2:5], data[2:5])
    assert np.array_equal(store[-1], data[-1])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["fps"] == "30000/1001" and meta["count"] == 7
    assert meta["params"] == {"kind": "test", "x": [1, 2]}
    assert sorted(p.name for p in (tmp_path / "s").iterdir())[:2] == ["00000.png", "00001.png"]
    assert [len(c) for c in store.iter_chunks(3)] == [3, 3, 1]


def test_nothing_at_the_final_path_until_close_and_resume_after_failure(tmp_path):
    data = frames(6)
    final = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with FrameStore.writer(final, 24, {"p": 1}) as w:
            w.write(0, data[:3])
            assert not final.exists()
            raise RuntimeError("crash mid-way")
    assert not final.exists()
    w = FrameStore.writer(final, 24, {"p": 1})
    assert w.done(0, 3) and not w.done(0, 4) and w.first_missing() == 3
    w.write(3, data[3:])
    assert np.array_equal(w.close()[:], data)


def test_changed_params_start_over_and_equal_params_reuse(tmp_path):
    with FrameStore.writer(tmp_path / "s", 24, {"p": 1}) as w:
        w.write(0, frames(3))
    w = FrameStore.writer(tmp_path / "s", 24, {"p": 1})
    assert w.reused and w.done(0, 3)
    w.close()
    w = FrameStore.writer(tmp_path / "s", 24, {"p": 2})
    assert not w.reused and not w.done(0, 1)
    w.write(0, frames(2, seed=5))
    store = w.close()
    assert len(store) == 2 and store.params == {"p": 2}
    assert not any(p.name.startswith(".s.old") for p in tmp_path.iterdir())


def test_incomplete_or_inconsistent_stores_are_refused(tmp_path):
    w = FrameStore.writer(tmp_path / "gap", 24)
    w.write(0, frames(1))
    w.write(2, frames(1))
    with pytest.raises(MediaError, match="1 of 3 frames missing"):
        w.close()
    assert not (tmp_path / "gap").exists()
    w = FrameStore.writer(tmp_path / "size", 24)
    w.write(0, frames(1))
    with pytest.raises(ValueError, match="differs"):
        w.write(1, frames(1, h=8))
    w.abort()
    with pytest.raises(MediaError, match="no meta.json"):
        FrameStore(tmp_path / "nothing")


def test_concurrent_writers_wait_for_each_other(tmp_path):
    data = frames(8)
    results, errors = [], []

    def run():
        try:
            with FrameStore.writer(tmp_path / "s", 24, {"p": 1}) as w:
                for i in range(8):
                    if not w.done(i, i + 1):
                        w.write(i, data[i : i + 1])
                        time.sleep(0.01)
                results.append(w.reused)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [False, True]
    assert np.array_equal(FrameStore(tmp_path / "s")[:], data)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with FrameStore.writer(tmp_path / "s2", 24) as holder:
            holder.write(0, data[:1])
            holding.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    holding.wait(10)
    with pytest.raises(TransientError, match="another writer"):
        FrameStore.writer(tmp_path / "s2", 24, lock_timeout=0.2)
    release.set()
    other.join()


KILLED_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from t2vz_core.media import FrameStore
    w = FrameStore.writer(sys.argv[1], 24, {"p": 1})
    for i in range(1000):
        w.write(i, np.full((1, 16, 16, 3), i % 256, np.uint8))
        if i == 5:
            print("written", flush=True)
""")


def test_sigkill_mid_write_leaves_no_final_store_and_resumes(tmp_path):
    final = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(final)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == b"written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not final.exists()
    w = FrameStore.writer(final, 24, {"p": 1})  # the dead writer's lock died with it
    done = w.first_missing()
    assert done >= 6 and all(not p.name.endswith(".tmp") for p in w.partial.iterdir() if p.name[0] != ".")
    store = w.close() if done else None
    assert len(store) == done and store[5].max() == 5


def test_decode_to_store_reuses_and_resumes(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=20, size=(96, 64))
    plan = plan_decode(probe(video), DecodeSpec(resolution=64))
    store = decode_to_store(video, plan, tmp_path / "frames", backend="pyav")
    assert [read_frame_index(f) for f in store[:]] == list(range(20))
    mtimes = [store.frame_path(i).stat().st_mtime_ns for i in range(20)]
    again = decode_to_store(video, plan, tmp_path / "frames", backend="pyav")
    assert [again.frame_path(i).stat().st_mtime_ns for i in range(20)] == mtimes
    other = plan_decode(probe(video), DecodeSpec(resolution=48))
    assert decode_to_store(video, other, tmp_path / "frames", backend="pyav").width == 48


def test_a_retry_in_the_same_thread_takes_over_an_unclosed_writer(tmp_path):
    abandoned = FrameStore.writer(tmp_path / "s", 24, {"p": 1})
    abandoned.write(0, frames(2))  # then an exception left it unclosed, still referenced
    retry = FrameStore.writer(tmp_path / "s", 24, {"p": 1}, lock_timeout=2)
    assert abandoned.closed and retry.first_missing() == 2  # resumed, not blocked
    with pytest.raises(ValueError, match="closed"):
        abandoned.write(2, frames(1))
    retry.write(2, frames(1))
    assert len(retry.close()) == 3
