"""Every common source into every output: probe -> plan_decode -> decode -> encode_video.

Three generated matrices (tests/media_matrix_support.py makes the sources with PyAV):
- audio: codec x layout x rate, into the outputs that carry audio (mp4, webm);
- audio timing: audio that starts late, audio that ends early, no audio, into every output,
  whole and trimmed;
- video: codecs, pixel formats, odd sizes, a rotated phone clip, variable frame rate and
  non-square pixels, into every output.
Trims fall inside audio packets. Each case checks the frames (count, rate, which source
frame each shows, read back by two decoders) and, where there is audio, its length and
its content (cross-correlation with the source's trimmed window peaks at lag 0).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media_matrix_support import (
    TRIM,
    VP9_FAST,
    AudioCase,
    VideoCase,
    audio_source_video,
    audio_unwritable,
    check_audio,
    frame_indices,
    make_source,
)

from t2vz_core.media import (
    DecodeSpec,
    FrameStore,
    encode_video,
    iter_frames,
    plan_decode,
    probe,
    write_png_sequence,
)

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, not its banner

OUTPUTS = ("mp4", "webm", "gif", "png")
AUDIO_CODECS = ("aac", "mp3", "opus", "vorbis", "flac", "pcm_s16le")
LAYOUTS = ("mono", "stereo", "5.1")
RATES = (22050, 44100, 48000)


def _audio_params():
    for codec in AUDIO_CODECS:
        for layout in LAYOUTS:
            for rate in RATES:
                case = AudioCase(codec, layout, rate)
                why = audio_unwritable(case)
                yield pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=why)] if why else [])


TIMING_CASES = [
    AudioCase("aac", "stereo", 48000, offset=0.4),  # starts after the video (and the trim)
    AudioCase("aac", "mono", 48000, seconds=0.9),  # ends before the video (and the trim)
    AudioCase("opus", "stereo", 48000, offset=0.4),
    AudioCase("mp3", "mono", 44100, seconds=0.9),
    None,  # no audio at all
]

_QUIET_X265 = (("x265-params", "log-level=error"),)
VIDEO_CASES = [
    VideoCase("h264-yuv420p"),
    VideoCase("h264-yuv444p", pix_fmt="yuv444p"),
    VideoCase("h264-10bit", pix_fmt="yuv420p10le"),
    VideoCase("hevc", "libx265", options=_QUIET_X265),
    VideoCase("hevc-10bit-mkv", "libx265", pix_fmt="yuv420p10le", suffix=".mkv", options=_QUIET_X265),
    VideoCase("vp9-webm", "libvpx-vp9", suffix=".webm", options=VP9_FAST),
    VideoCase("av1-mp4", "libsvtav1", options=(("preset", "12"),)),
    VideoCase("av1-webm", "libsvtav1", suffix=".webm", options=(("preset", "12"),)),
    VideoCase("mjpeg-avi", "mjpeg", pix_fmt="yuvj420p", suffix=".avi"),
    VideoCase("prores-mov", "prores_ks", pix_fmt="yuv422p10le", suffix=".mov"),
    VideoCase("ffv1-mkv", "ffv1", pix_fmt="yuv444p", suffix=".mkv"),
    VideoCase("odd-67x45", pix_fmt="yuv444p", size=(67, 45)),
    # (decord 0.6 misreads frames 48 or 72 px wide - 4 bytes a pixel - so no case has them)
    VideoCase("phone-rotated-90", size=(64, 96), rotation=90, fps=Fraction(30000, 1001)),
    VideoCase("phone-rotated-270-mov", suffix=".mov", size=(64, 96), rotation=270),
    VideoCase("vfr", vfr=True, fps=Fraction(30)),
    VideoCase("sar-3:2", size=(96, 48), sar=Fraction(3, 2)),
    VideoCase("sar-2:3-mkv", suffix=".mkv", size=(64, 80), sar=Fraction(2, 3)),
]
# The audio each video carries: what its container usually holds.
_VIDEO_AUDIO = {
    ".mp4": AudioCase("aac"),
    ".mov": AudioCase("pcm_s16le", "stereo", 48000),
    ".mkv": AudioCase("flac", "stereo", 44100),
    ".webm": AudioCase("opus"),
    ".avi": AudioCase("pcm_s16le", "mono", 22050),
}


# --- sources and decoded frames, made once per process (each xdist worker its own) -------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix-sources")
    made: dict[str, Path] = {}

    def get(video: VideoCase, audio: AudioCase | None) -> Path:
        name = f"{video.name}--{audio.id if audio else 'silent'}{video.suffix}"
        if name not in made:
            made[name] = make_source(folder / name, video, audio)
        return made[name]

    return get


_DECODED: dict[tuple, tuple] = {}


def decoded(src: Path, trim: tuple[float, float] | None):
    """(info, plan, frames) of `src`, decoded as a row does (backend "auto")."""
    key = (src, trim)
    if key not in _DECODED:
        info = probe(src)
        start, end = trim or (None, None)
        plan = plan_decode(info, DecodeSpec(start=start, end=end))
        frames = np.concatenate(list(iter_frames(src, plan)))
        _DECODED[key] = (info, plan, frames)
    return _DECODED[key]


# --- the checks ------------------------------------------------------------------------


def run_case(src: Path, fmt: str, out_dir: Path, trim=TRIM) -> tuple:
    """Encode `src` (trimmed) to `fmt` as the row's encode step does; check the frames."""
    info, plan, frames = decoded(src, trim)
    assert frame_indices(frames) == list(plan.indices), "decoded frames are not the planned ones"
    if fmt == "png":
        out = write_png_sequence(frames, out_dir / "png", plan.fps)
        check_png(out, plan)
        return info, plan, out
    out = encode_video(
        frames,
        out_dir / f"video.{fmt}",
        plan.fps,
        fmt=fmt,
        preset="ultrafast",
        audio_source=src if info.has_audio else None,
        audio_start=plan.start,
    )
    check_video(out, fmt, plan)
    return info, plan, out


def check_png(folder: Path, plan) -> None:
    store = FrameStore(folder)
    assert (len(store), store.fps) == (len(plan), plan.fps)
    assert frame_indices(np.concatenate(list(store.iter_chunks(16)))) == list(plan.indices)
    # a second reader: FFmpeg's image-sequence demuxer
    with av.open(str(folder / "%05d.png"), format="image2") as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert frame_indices(images) == list(plan.indices)


def check_video(out: Path, fmt: str, plan) -> None:
    got = probe(out)
    assert got.frame_count == len(plan)
    if fmt == "gif":  # GIF delays are whole centiseconds: the rate is approximated
        assert abs(got.duration - plan.duration) <= 0.01 * len(plan) / 2 + 0.01
    else:
        assert got.fps == plan.fps and not got.is_vfr
    w, h = plan.width, plan.height
    if fmt != "gif":  # 4:2:0 needs even sides: one edge column/row is added
        w, h = w + w % 2, h + h % 2
    assert (got.width, got.height) == (w, h)
    expected = list(plan.indices)
    with av.open(str(out)) as container:
        pyav_frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert frame_indices(pyav_frames) == expected
    if fmt == "gif":  # decord cannot read GIF ("failed to measure duration"): Pillow can
        from PIL import Image, ImageSequence

        with Image.open(out) as image:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
        assert frame_indices(frames) == expected
        return
    # decord through t2vz's worker process, never imported here: once loaded, its bundled
    # zlib breaks OpenCV's PNG reading in the same process ("libpng error: bad parameters
    # to zlib"). The worker also checks decord's frame count against the container's.
    by_decord = np.concatenate(list(iter_frames(out, plan_decode(got), backend="decord")))
    assert frame_indices(by_decord) == expected


# --- the matrices ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
@pytest.mark.parametrize("audio", list(_audio_params()))
def test_audio_matrix(sources, tmp_path, audio, fmt):
    src = sources(audio_source_video(audio), audio)
    info, plan, out = run_case(src, fmt, tmp_path)
    assert info.has_audio and info.audio_codec
    check_audio(src, out, fmt, plan)


@pytest.mark.parametrize("trim", [None, TRIM], ids=["whole", "trimmed"])
@pytest.mark.parametrize("fmt", OUTPUTS)
@pytest.mark.parametrize("audio", TIMING_CASES, ids=lambda a: a.id if a else "no-audio")
def test_audio_timing(sources, tmp_path, audio, fmt, trim):
    video = audio_source_video(audio) if audio else VideoCase("h264")
    src = sources(video, audio)
    info, plan, out = run_case(src, fmt, tmp_path, trim)
    if fmt in ("mp4", "webm") and audio is not None:
        check_audio(src, out, fmt, plan)
    elif fmt != "png":
        with av.open(str(out)) as container:
            assert not container.streams.audio  # GIF has no audio; no source, no track


@pytest.mark.parametrize("fmt", OUTPUTS)
@pytest.mark.parametrize("video", VIDEO_CASES, ids=lambda v: v.name)
def test_video_matrix(sources, tmp_path, video, fmt):
    audio = _VIDEO_AUDIO[video.suffix]
    src = sources(video, audio)
    info, plan, out = run_case(src, fmt, tmp_path)
    # the plan shows the picture as a player would: upright, at the display aspect ratio
    assert (info.width, info.height) == video.size == (plan.width, plan.height)
    assert plan.fps == video.fps
    if fmt in ("mp4", "webm"):
        check_audio(src, out, fmt, plan)


def test_display_aspect_output_looks_like_the_intended_picture(sources, tmp_path):
    """Non-square pixels: the decoded frame equals the picture a player shows (96x48)."""
    from t2vz_core.media.synthetic import frame_image

    video = VideoCase("sar-3:2", size=(96, 48), sar=Fraction(3, 2))
    src = sources(video, None)
    info, plan, frames = decoded(src, None)
    assert info.sample_aspect_ratio == Fraction(3, 2)
    assert (info.coded_width, info.coded_height) == (64, 48)
    for k in (0, len(plan) // 2):
        want = frame_image(plan.indices[k], video.size).astype(float)
        assert np.abs(frames[k].astype(float) - want).mean() < 12
