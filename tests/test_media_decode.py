"""iter_frames(): real decord and PyAV on real files; the frames asked for, upright, streamed."""

import logging
import sys
from fractions import Fraction

import numpy as np
import pytest

from t2vz_core.errors import MediaError, TransientError, is_transient
from t2vz_core.media import DecodeSpec, choose_backend, iter_frames, plan_decode, probe
from t2vz_core.media import decode as decode_module
from t2vz_core.media.synthetic import make_video, read_frame_index, vfr_timestamps


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    return {
        "ntsc": make_video(
            d / "ntsc.mp4", frames=45, size=(96, 64), fps=Fraction(30000, 1001), preset="medium"
        ),  # B-frames: decode order != display order
        "sixty": make_video(d / "sixty.mp4", frames=48, size=(96, 64), fps=60),
        "vfr": make_video(d / "vfr.mp4", frames=20, size=(96, 64), fps=30, timestamps=vfr_timestamps(20)),
        "webm": make_video(d / "vp8.webm", frames=24, size=(96, 64), codec="vp8"),
        "tiny": make_video(d / "tiny.mkv", frames=4, size=(1, 1), codec="ffv1"),
        **{f"rot{r}": make_video(d / f"rot{r}.mp4", frames=12, size=(96, 64), rotation=r) for r in (90, 180, 270)},
    }


def decode_all(path, spec=None, **kwargs):
    plan = plan_decode(probe(path), spec or DecodeSpec())
    chunks = list(iter_frames(path, plan, **kwargs))
    return plan, chunks, np.concatenate(chunks)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_both_backends_deliver_the_planned_frames(media, backend):
    stats = {}
    plan, chunks, frames = decode_all(
        media["ntsc"], DecodeSpec(resolution=64), backend=backend, chunk_size=8, stats=stats
    )
    assert stats["backend"] == backend and stats["fallback"] is None
    assert frames.shape == (45, 40, 64, 3) and frames.dtype == np.uint8
    assert [len(c) for c in chunks] == [8] * 5 + [5]
    assert [read_frame_index(f) for f in frames] == list(range(45))


def test_decord_and_pyav_agree_pixel_for_pixel(media):
    _, _, a = decode_all(media["ntsc"], DecodeSpec(start=0.5, max_frames=10), backend="decord")
    _, _, b = decode_all(media["ntsc"], DecodeSpec(start=0.5, max_frames=10), backend="pyav")
    assert np.array_equal(a, b)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_60_to_15_and_seek(media, backend):
    plan, _, frames = decode_all(media["sixty"], DecodeSpec(fps=15, start=0.25), backend=backend)
    assert plan.indices == tuple(range(15, 48, 4))
    assert [read_frame_index(f) for f in frames] == list(plan.indices)


@pytest.mark.parametrize("name", ["rot90", "rot180", "rot270"])
def test_rotated_files_come_out_upright(media, name):
    assert choose_backend(probe(media[name])) == "pyav"  # decord 0.6 garbles rotated files
    plan, _, frames = decode_all(media[name], DecodeSpec(resolution=96))
    assert frames.shape == (12, 64, 96, 3)
    assert [read_frame_index(f) for f in frames] == list(range(12))


def test_variable_rate_frames_follow_timestamps(media):
    info = probe(media["vfr"])
    assert choose_backend(info) == "pyav"
    plan, _, frames = decode_all(media["vfr"])
    assert [read_frame_index(f) for f in frames] == list(plan.indices)
    assert len(set(plan.indices)) == 20 and len(plan) > 20  # slow frames held


def test_vp8_webm_goes_to_pyav_and_is_indexed_right(media):
    assert choose_backend(probe(media["webm"])) == "pyav"
    plan, _, frames = decode_all(media["webm"], DecodeSpec(start=0.5, fps=8))
    assert [read_frame_index(f) for f in frames] == list(plan.indices) == [12, 15, 18, 21]


def test_crop_and_pad(media):
    _, _, crop = decode_all(media["ntsc"], DecodeSpec(width=48, height=48, fit="crop", max_frames=2), backend="pyav")
    assert crop.shape == (2, 48, 48, 3)
    _, _, pad = decode_all(media["ntsc"], DecodeSpec(width=96, height=96, fit="pad", max_frames=2), backend="pyav")
    assert pad.shape == (2, 96, 96, 3)
    assert pad[:, :16].max() == 0 and pad[:, -16:].max() == 0  # black bars top and bottom
    assert read_frame_index(pad[1, 16:-16]) == 1


def test_real_decord_failure_falls_back_to_pyav(media, caplog):
    # decord 0.6 cannot decode 1x1 frames (size check fails inside get_batch)
    info = probe(media["tiny"])
    assert choose_backend(info) == "decord"
    stats = {}
    with caplog.at_level(logging.WARNING):
        _, _, frames = decode_all(media["tiny"], stats=stats)
    assert frames.shape == (4, 1, 1, 3)
    assert "decord failed" in caplog.text
    assert stats["backend"] == "pyav" and "shape" in stats["fallback"]
    with pytest.raises(MediaError, match="decord failed"):
        decode_all(media["tiny"], backend="decord")


HANG_HOLDING_THE_GIL = "import re, sys; sys.stdin.readline(); re.match(r'(a+)+$', 'a' * 64 + 'b')"


def test_a_hung_decoder_is_killed_after_the_timeout(media, monkeypatch, caplog):
    # A catastrophic regex runs in C without releasing the GIL, like decord#373's hang:
    # no thread could interrupt it, the worker process is killed instead.
    monkeypatch.setattr(decode_module, "_worker_command", lambda: [sys.executable, "-c", HANG_HOLDING_THE_GIL])
    plan = plan_decode(probe(media["ntsc"]), DecodeSpec(max_frames=5))
    with pytest.raises(TransientError, match="no frames for 1 s") as err:
        list(iter_frames(media["ntsc"], plan, backend="decord", timeout=1.0))
    assert is_transient(err.value) and str(media["ntsc"]) in str(err.value)
    with caplog.at_level(logging.WARNING):  # "auto" carries on with PyAV
        frames = np.concatenate(list(iter_frames(media["ntsc"], plan, timeout=1.0)))
    assert [read_frame_index(f) for f in frames] == [0, 1, 2, 3, 4]


def test_fallback_resumes_after_frames_already_delivered(media, monkeypatch):
    real = decode_module._iter_decord

    def dies_after_one_chunk(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        gen.close()
        raise decode_module._DecordUnusable("worker crashed")

    monkeypatch.setattr(decode_module, "_iter_decord", dies_after_one_chunk)
    plan, chunks, frames = decode_all(media["ntsc"], chunk_size=8)
    assert [read_frame_index(f) for f in frames] == list(range(45))


def test_bad_arguments(media):
    plan = plan_decode(probe(media["ntsc"]))
    with pytest.raises(ValueError, match="backend"):
        next(iter_frames(media["ntsc"], plan, backend="opencv"))
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_frames(media["ntsc"], plan, chunk_size=0))


def test_decord_worker_reads_in_segments(media, monkeypatch):
    monkeypatch.setattr(decode_module, "DECORD_SEGMENT", 16)  # 45 frames: 3 decord readers
    stats = {}
    plan, chunks, frames = decode_all(media["ntsc"], backend="decord", chunk_size=8, stats=stats)
    assert [len(c) for c in chunks] == [8] * 5 + [5]
    assert [read_frame_index(f) for f in frames] == list(range(45))
    assert stats["worker_peak_rss_mb"] > 0
