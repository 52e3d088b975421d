"""Shot detection on real encoded clips (PyAV H.264, decoded by t2vz) and the shot manifest cells.
Budget: ~5 s on 2 cores."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from shot_clips import talking_head_frames, two_shot_frames, write_clip

from t2vz_core.errors import InputError
from t2vz_core.manifest import read_manifest
from t2vz_core.media import DecodeSpec, FrameStore, decode_to_store, plan_decode, probe
from t2vz_core.shots import check_shots, default_min_shot_frames, detect_shots, shots_from_cuts


def decoded(tmp_path: Path, frames: np.ndarray, fps=24, **spec) -> FrameStore:
    """The clip as t2vz decodes it: an H.264 file written with PyAV, decoded into a FrameStore."""
    clip = write_clip(tmp_path / "clip.mp4", frames, fps)
    plan = plan_decode(probe(clip), DecodeSpec(**spec))
    return decode_to_store(clip, plan, tmp_path / "frames")


# ------------------------------------------------------------------------------- detection


def test_two_shot_clip_is_split_at_the_cut_frame(tmp_path):
    store = decoded(tmp_path, two_shot_frames(14, 13))  # 24 fps: min_shot_frames defaults to 12
    assert len(store) == 27
    assert detect_shots(store) == [(0, 14), (14, 27)]


def test_cut_found_at_a_smaller_decoded_resolution_too(tmp_path):
    store = decoded(tmp_path, two_shot_frames(9, 8), fps=30, resolution=64)  # min 15 frames at 30 fps
    assert (store.width, len(store)) == (64, 17)
    assert detect_shots(store) == [(0, 17)]  # a 9-frame shot is shorter than half a second: merged
    assert detect_shots(store, min_shot_frames=4) == [(0, 9), (9, 17)]


def test_talking_head_with_background_motion_stays_one_shot(tmp_path):
    store = decoded(tmp_path, talking_head_frames(48))
    assert detect_shots(store) == [(0, 48)]
    assert detect_shots(store, min_shot_frames=1) == [(0, 48)]  # not one frame pair looks like a cut


def test_threshold_is_the_detector_sensitivity():
    frames = two_shot_frames(6, 6, size=96)
    assert detect_shots(frames, threshold=27, min_shot_frames=3) == [(0, 6), (6, 12)]
    assert detect_shots(frames, threshold=250, min_shot_frames=3) == [(0, 12)]


def test_short_shots_merge_into_their_neighbour():
    # astronaut 6 frames, coffee 3, astronaut again 6: the 3-frame shot is too short
    a = two_shot_frames(6, 3, size=96)
    frames = np.concatenate([a, a[:6]])
    assert detect_shots(frames, min_shot_frames=1) == [(0, 6), (6, 9), (9, 15)]
    assert detect_shots(frames, min_shot_frames=4) == [(0, 6), (6, 15)]  # the next cut came too soon
    # a last shot shorter than the minimum joins the one before it
    assert detect_shots(frames[:8], min_shot_frames=4) == [(0, 8)]
    assert detect_shots(frames[:8], min_shot_frames=2) == [(0, 6), (6, 8)]
    assert shots_from_cuts([6, 9], 11, 4) == [(0, 6), (6, 11)]  # the last cut goes, then the rest is long enough
    assert shots_from_cuts([9], 11, 4) == [(0, 11)]
    assert shots_from_cuts([6, 9], 15, 4) == [(0, 6), (6, 9), (9, 15)]  # only the last is checked here


def test_min_shot_frames_default_is_half_a_second():
    assert default_min_shot_frames(Fraction(30000, 1001)) == 15
    assert default_min_shot_frames(24) == 12
    assert default_min_shot_frames(1) == 1  # at least one frame
    assert default_min_shot_frames(None) == 15


def test_detection_reads_the_store_in_bounded_chunks(tmp_path):
    store = decoded(tmp_path, two_shot_frames(14, 13))
    reads = []

    class Recording:
        fps = store.fps

        def __len__(self):
            return len(store)

        def __getitem__(self, index):
            reads.append(index.indices(len(store))[:2])
            return store[index]

    assert detect_shots(Recording()) == [(0, 14), (14, 27)]
    assert reads == [(0, 16), (16, 27)]


def test_bad_detector_settings_and_shot_lists_are_refused():
    frames = two_shot_frames(3, 3, size=64)
    with pytest.raises(InputError, match="shot_threshold"):
        detect_shots(frames, threshold=0)
    with pytest.raises(InputError, match="min_shot_frames"):
        detect_shots(frames, min_shot_frames=0)
    with pytest.raises(InputError, match="uint8 RGB"):
        detect_shots(frames.astype(np.float32))
    assert check_shots([[0, 2], [2, 6]], 6) == [(0, 2), (2, 6)]
    for bad in ([(0, 2), (3, 6)], [(0, 2), (2, 2), (2, 6)], [(1, 6)], [(0, 5)], [(0, 7)], [(0,)]):
        with pytest.raises(InputError, match="shots"):
            check_shots(bad, 6)


# ----------------------------------------------------------------------------- manifest cells


@pytest.fixture
def folder(tmp_path: Path, no_env_allowed_roots) -> Path:
    (tmp_path / "a.mp4").write_bytes(b"x")
    return tmp_path


def read(folder: Path, header: str, *rows: str):
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return read_manifest(path)


def test_video_modes_default_to_auto_shots(folder):
    manifest = read(folder, "job_id,mode,source,prompt", "c,canny,a.mp4,x", "p,pix2pix,a.mp4,x", "t,text2video,,x")
    canny, pix2pix, text2video = manifest.jobs
    assert (canny.shots, canny.shot_threshold, canny.min_shot_frames) == ("auto", 27.0, None)
    assert pix2pix.shots == "auto"
    assert (text2video.shots, text2video.shot_threshold, text2video.min_shot_frames) == (None, None, None)


def test_shot_cells_are_parsed_and_move_the_job(folder):
    manifest = read(
        folder,
        "job_id,mode,source,prompt,shots,shot_threshold,min_shot_frames",
        "a,pose,a.mp4,x,AUTO,35.5,8",
        "b,depth,a.mp4,x,none,,",
    )
    auto, none = manifest.jobs
    assert (auto.shots, auto.shot_threshold, auto.min_shot_frames) == ("auto", 35.5, 8)
    assert (none.shots, none.shot_threshold, none.min_shot_frames) == ("none", None, None)
    assert auto.cache_dict()["shot_threshold"] == 35.5


def test_detector_cells_are_ignored_with_shots_none(folder):
    manifest = read(
        folder, "job_id,mode,source,prompt,shots,shot_threshold,min_shot_frames", "a,canny,a.mp4,x,none,30,5"
    )
    assert manifest.errors == []
    job = manifest.jobs[0]
    assert (job.shots, job.shot_threshold, job.min_shot_frames) == ("none", None, None)
    assert sorted(w.column for w in manifest.warnings) == ["min_shot_frames", "shot_threshold"]
    assert "ignored with shots=none" in manifest.warnings[0].message


def test_bad_shot_cells_name_row_and_column(folder):
    manifest = read(
        folder,
        "job_id,mode,source,prompt,shots,shot_threshold,min_shot_frames",
        "a,canny,a.mp4,x,sometimes,,",
        "b,canny,a.mp4,x,auto,0,",
        "c,canny,a.mp4,x,,abc,1.5",
        "d,canny,a.mp4,x,,,0",
    )
    found = {(e.row, e.column): e.message for e in manifest.errors}
    assert "use one of auto, none" in found[(2, "shots")]
    assert "out of range" in found[(3, "shot_threshold")]
    assert "must be a number" in found[(4, "shot_threshold")]
    assert "whole number" in found[(4, "min_shot_frames")]
    assert "out of range" in found[(5, "min_shot_frames")]
    assert manifest.jobs == []


@pytest.mark.parametrize("cell", ["shots", "shot_threshold", "min_shot_frames"])
def test_text2video_rejects_shot_cells_like_source(folder, cell):
    value = {"shots": "auto", "shot_threshold": "30", "min_shot_frames": "4"}[cell]
    manifest = read(folder, f"job_id,mode,prompt,{cell}", f"t,text2video,a panda,{value}")
    assert manifest.jobs == []
    [error] = manifest.errors
    assert (error.row, error.column) == (2, cell)
    assert "not used by mode text2video" in error.message and "shots split a source video" in error.message
