"""`t2vz scan`: a manifest started from a video folder reads back as valid jobs.

Budget: < 1 s (empty files named like videos; nothing is decoded).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from t2vz_core.errors import InputError
from t2vz_core.manifest import read_manifest
from t2vz_core.scan import find_videos, job_id_for, scan_library

pytestmark = pytest.mark.usefixtures("no_env_allowed_roots")


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    names = [
        "b.mp4",
        "A.MOV",
        "sub dir/clip 1.mkv",
        "sub dir/deeper/x.webm",
        "sub_dir/clip_1.mp4",
        "Café.mp4",
        "report.mp4",
        "notes.txt",
        ".hidden.mp4",
        "._b.mp4",
        ".cache/c.mp4",
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_find_videos_is_sorted_recursive_and_skips_hidden_and_non_videos(videos):
    assert [p.as_posix() for p in find_videos(videos)] == [
        "A.MOV",
        "Café.mp4",
        "b.mp4",
        "report.mp4",
        "sub dir/clip 1.mkv",
        "sub dir/deeper/x.webm",
        "sub_dir/clip_1.mp4",
    ]


def test_job_ids_are_safe_and_unique():
    taken: set[str] = set()
    ids = [
        job_id_for(Path(p), taken)
        for p in (
            "sub dir/clip 1.mkv",
            "sub_dir/clip_1.mp4",
            "SUB_DIR/CLIP_1.mov",
            "Café.mp4",
            "$(rm -rf ~).mp4",
            "../../etc.mp4",
            "clip.v2.final.mp4",
            "report.mp4",
            "日本.mp4",
            "a" * 300 + ".mp4",
        )
    ]
    assert ids[:9] == [
        "sub_dir_clip_1",
        "sub_dir_clip_1-2",
        "SUB_DIR_CLIP_1-3",
        "Cafe",
        "rm_-rf",
        "etc",
        "clip_v2_final",
        "report_video",
        "video",
    ]
    assert len(ids[9]) <= 128 and len(set(i.lower() for i in ids)) == len(ids)


def test_scan_writes_a_manifest_that_validates(videos, monkeypatch):
    monkeypatch.chdir(videos.parent)  # `t2vz scan videos > manifest.csv` run from the parent folder
    text = scan_library(
        "videos", "canny", "a watercolor painting, soft light", seed=3, output=["mp4", "gif"], num_inference_steps=20
    )
    table = rows(text)
    assert list(table[0]) == ["job_id", "mode", "source", "prompt", "seed", "num_inference_steps", "output"]
    assert [r["source"] for r in table][:2] == ["videos/A.MOV", "videos/Café.mp4"]
    assert {r["prompt"] for r in table} == {"a watercolor painting, soft light"}
    path = videos.parent / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    manifest = read_manifest(path)
    assert manifest.errors == [] and len(manifest.jobs) == 7
    job = manifest.jobs[0]
    assert (job.job_id, job.mode, job.seed, job.num_inference_steps, job.outputs) == (
        "A",
        "canny",
        3,
        20,
        ["mp4", "gif"],
    )
    assert job.source == (videos / "A.MOV").resolve()


def test_sources_outside_relative_to_are_absolute(videos, tmp_path):
    elsewhere = tmp_path / "manifests"
    elsewhere.mkdir()
    table = rows(scan_library(videos, "pose", "a robot", relative_to=elsewhere))
    assert table[0]["source"] == str((videos / "A.MOV").absolute())
    path = elsewhere / "m.csv"
    path.write_text(scan_library(videos, "pose", "a robot", relative_to=elsewhere))
    refused = read_manifest(path)  # outside the manifest folder: confinement needs allowed roots
    assert refused.jobs == [] and {e.column for e in refused.errors} == {"source"}
    assert len(read_manifest(path, allowed_roots=[videos]).jobs) == 7


def test_scan_refuses_bad_requests(videos, tmp_path):
    with pytest.raises(InputError, match="edits a video"):
        scan_library(videos, "text2video", "x")
    with pytest.raises(InputError, match="mode that edits a video"):
        scan_library(videos, "cartoon", "x")
    with pytest.raises(InputError, match="non-empty prompt"):
        scan_library(videos, "canny", "  ")
    with pytest.raises(InputError, match="unknown manifest column.*guidance"):
        scan_library(videos, "canny", "x", guidance=3)
    with pytest.raises(InputError, match="not a folder"):
        scan_library(tmp_path / "missing", "canny", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        scan_library(tmp_path / "empty", "canny", "x")
