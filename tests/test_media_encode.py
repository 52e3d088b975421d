"""encode_video / write_png_sequence: exact rates, odd sizes, trimmed audio, tags, atomic."""

from fractions import Fraction

import av
import numpy as np
import pytest

from t2vz_core.errors import InputError
from t2vz_core.media import (
    DecodeSpec,
    FrameStore,
    encode_video,
    iter_frames,
    plan_decode,
    probe,
    write_png_sequence,
)
from t2vz_core.media.synthetic import dominant_frequency, make_video, read_frame_index, tone_frequency

NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3 s 29.97 fps clip with a tone that steps up 100 Hz every half second."""
    path = make_video(tmp_path_factory.mktemp("enc") / "src.mp4", frames=90, size=(96, 64), fps=NTSC, audio=True)
    info = probe(path)
    plan = plan_decode(info, DecodeSpec(start=1.0, end=2.0))
    frames = np.concatenate(list(iter_frames(path, plan, backend="pyav")))
    return path, plan, frames


def audio_of(path):
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(stream)])
        return samples, stream.rate


@pytest.mark.parametrize("fmt,audio_codec", [("mp4", "aac"), ("webm", "opus")])
def test_video_with_trimmed_audio_and_provenance(tmp_path, source, fmt, audio_codec):
    src, plan, frames = source
    out = encode_video(
        frames,
        tmp_path / f"out.{fmt}",
        plan.fps,
        fmt=fmt,
        audio_source=src,
        audio_start=plan.start,
        metadata={"prompt": "a cat", "seed": 42, "model": "m"},
    )
    info = probe(out)
    assert info.fps == NTSC and info.frame_count == 30 and (info.width, info.height) == (96, 64)
    assert info.codec == ("h264" if fmt == "mp4" else "vp9")
    assert info.audio_codec == audio_codec  # AAC copied into MP4, re-encoded to Opus for WebM
    tags = {k.lower(): v for k, v in info.metadata.items()}
    assert (tags["prompt"], tags["seed"], tags["model"]) == ("a cat", "42", "m")
    samples, rate = audio_of(out)
    assert len(samples) / rate == pytest.approx(plan.duration, abs=0.05)
    # the audio is the source's from 1.0 s to 2.0 s: 500 Hz first, 600 Hz at the end
    assert dominant_frequency(samples[1200:6000], rate) == pytest.approx(tone_frequency(1.05), abs=15)
    assert dominant_frequency(samples[-6000:-1200], rate) == pytest.approx(tone_frequency(1.95), abs=15)
    decoded = np.concatenate(list(iter_frames(out, plan_decode(info), backend="pyav")))
    assert [read_frame_index(f) for f in decoded] == list(plan.indices) == list(range(29, 59))


@pytest.mark.parametrize("fmt", ["webm", "gif"])
def test_the_same_frames_give_the_same_bytes(tmp_path, source, fmt):
    """A re-run writes the file it wrote before (WebM's muxer draws random track ids unless told
    to be bit-exact). Not MP4: PyAV's libx264 gives different H.264 bytes for the same frames in
    about one encode in four here, single-threaded too (cause not found)."""
    src, plan, frames = source
    written = [
        encode_video(frames, tmp_path / f"{n}.{fmt}", plan.fps, fmt=fmt, audio_source=src, audio_start=plan.start)
        for n in range(2)
    ]
    assert written[0].read_bytes() == written[1].read_bytes()


def test_mp4_is_yuv420p_with_crf_and_preset(tmp_path, source):
    _, _, frames = source
    small = encode_video(frames, tmp_path / "q40.mp4", 24, crf=40, preset="ultrafast")
    large = encode_video(frames, tmp_path / "q10.mp4", 24, crf=10, preset="ultrafast")
    assert small.stat().st_size < large.stat().st_size / 2
    with av.open(str(large)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert c.streams.video[0].average_rate == 24


def test_odd_sizes_are_padded_by_repeating_the_edge(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 17, 33, 3), np.uint8)
    info = probe(encode_video(frames, tmp_path / "odd.mp4", 24, crf=0, preset="ultrafast"))
    assert (info.width, info.height) == (34, 18)
    tiny = probe(encode_video(frames[:, :1, :1], tmp_path / "one.mp4", 24))
    assert (tiny.width, tiny.height, tiny.frame_count) == (2, 2, 3)
    gif = probe(encode_video(frames, tmp_path / "odd.gif", 24, fmt="gif"))
    assert (gif.width, gif.height, gif.codec, gif.frame_count) == (33, 17, "gif", 3)


def test_gif_and_png_sequence(tmp_path, source):
    _, plan, frames = source
    gif = encode_video(iter([frames[:10], frames[10:]]), tmp_path / "a.gif", plan.fps, fmt="gif")
    decoded = np.concatenate(list(iter_frames(gif, plan_decode(probe(gif)))))
    assert len(decoded) == 30 and [read_frame_index(f) for f in decoded[:3]] == [29, 30, 31]
    folder = write_png_sequence(frames, tmp_path / "png", fps=plan.fps)
    store = FrameStore(folder)
    assert np.array_equal(store[:], frames) and store.fps == NTSC
    assert (folder / "00029.png").exists()
    write_png_sequence(frames[:5], folder)  # replaced as a whole, never mixed
    assert len(FrameStore(folder)) == 5 and not (folder / "00029.png").exists()


def test_a_crash_mid_encode_leaves_the_old_file_and_no_temp(tmp_path, source):
    _, _, frames = source
    final = encode_video(frames[:5], tmp_path / "out.mp4", 24)
    before = final.read_bytes()

    def chunks_then_crash():
        yield frames[:10]
        raise RuntimeError("killed mid-encode")

    with pytest.raises(RuntimeError):
        encode_video(chunks_then_crash(), final, 24)
    assert final.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"fmt": "avi"}, "fmt"),
        ({"fmt": "webm"}, "suffix"),
        ({"crf": 60}, "crf"),
        ({"preset": "quick"}, "preset"),
        ({"fps": 0}, "fps"),
    ],
)
def test_bad_arguments(tmp_path, source, kwargs, words):
    args = {"fps": 24, **kwargs}
    with pytest.raises(InputError, match=words):
        encode_video(source[2], tmp_path / "x.mp4", **args)
    with pytest.raises(InputError, match="no frames"):
        encode_video([], tmp_path / "x.mp4", 24)
