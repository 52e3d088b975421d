"""probe(): exact rates, real frame counts, rotation, audio; clear errors for bad files."""

from fractions import Fraction

import cv2
import numpy as np
import pytest

from t2vz_core.errors import MediaError, is_transient
from t2vz_core.media import probe
from t2vz_core.media.synthetic import (
    make_audio_only,
    make_corrupt,
    make_text_file,
    make_truncated,
    make_video,
    make_zero_frame,
    vfr_timestamps,
)


def test_ntsc_rate_stays_exact_with_audio(tmp_path):
    path = make_video(tmp_path / "ntsc.mp4", frames=30, fps=Fraction(30000, 1001), audio=True)
    info = probe(path)
    assert info.fps == Fraction(30000, 1001)  # the research code made this int(29.97) == 29
    assert info.frame_count == 30
    assert info.duration == pytest.approx(30 * 1001 / 30000)
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.codec == "h264" and not info.is_vfr


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_gives_upright_size(tmp_path, rotation):
    info = probe(make_video(tmp_path / f"r{rotation}.mp4", frames=3, size=(64, 48), rotation=rotation))
    assert info.rotation == rotation
    assert (info.width, info.height) == (64, 48)  # display size, upright
    coded = (48, 64) if rotation in (90, 270) else (64, 48)
    assert (info.coded_width, info.coded_height) == coded


def test_variable_frame_rate_is_detected(tmp_path):
    stamps = vfr_timestamps(20)
    info = probe(make_video(tmp_path / "vfr.mp4", frames=20, fps=30, timestamps=stamps))
    assert info.is_vfr
    assert info.fps == 30  # resampled to the stream's finest rate, keeping every frame
    assert info.frame_count == 20
    # the last frame lasts what the file says (here one 1/30 s tick of the encoder)
    assert float(stamps[-1]) < info.duration <= float(stamps[-1]) + 0.1 + 1e-6


@pytest.mark.parametrize(
    "name,kwargs,expect",
    [
        ("vp9.webm", {"codec": "vp9"}, ("vp9", 64, 48)),
        ("odd.mp4", {"size": (33, 17)}, ("h264", 33, 17)),
        ("tiny.mkv", {"size": (1, 1), "codec": "ffv1"}, ("ffv1", 1, 1)),
    ],
)
def test_other_codecs_and_sizes(tmp_path, name, kwargs, expect):
    info = probe(make_video(tmp_path / name, frames=6, **kwargs))
    assert (info.codec, info.width, info.height) == expect
    assert info.frame_count == 6 and info.fps == 24


def _truncated_faststart(d):
    full = make_video(d / "full.mp4", frames=60, pattern="texture", faststart=True)
    return make_truncated(full, d / "bad.mp4", 0.5)


def _truncated_plain(d):
    return make_truncated(make_video(d / "full.mp4", frames=60, pattern="texture"), d / "bad.mp4")


def _truncated_webm(d):
    full = make_video(d / "full.webm", frames=60, codec="vp9", pattern="texture")
    return make_truncated(full, d / "bad.webm", 0.5)


def _huge_image(d):
    path = d / "huge.png"
    cv2.imwrite(str(path), np.zeros((8, 16400, 3), np.uint8))
    return path


def _empty(d):
    (d / "empty.mp4").write_bytes(b"")
    return d / "empty.mp4"


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: make_text_file(d / "notes.mp4"), "not a readable media file"),
        (lambda d: make_corrupt(d / "junk.mp4"), "not a readable media file"),
        (_truncated_faststart, "truncated"),
        (_truncated_plain, "moov"),
        (_truncated_webm, "truncated"),
        (lambda d: make_zero_frame(d / "zero.mp4"), "no video frames"),
        (lambda d: make_audio_only(d / "song.m4a"), "no video stream (streams: audio)"),
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: d, "is a folder"),
        (_empty, "empty file"),
        (_huge_image, "too large"),
    ],
)
def test_bad_files_name_the_file_and_reason(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(MediaError) as err:
        probe(path)
    assert str(path) in str(err.value) and reason in str(err.value)
    assert err.value.path == str(path)
    assert not is_transient(err.value)
