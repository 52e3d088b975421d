"""decord and PyAV give the same pixels for every decode plan (resize, crop, pad, fps, rotation).

Both decode at the source size and convert to RGB the same way; one function
(media.geometry.Geometry) then resizes, turns, crops and pads. Files where decord's older FFmpeg
converts differently (10-bit, 4:2:0 of odd size) or cannot know the rotation are left to PyAV,
and a test proves those differences are real. So a machine without decord, a fallback mid-video
and the decode cache all give the same frames. Real files made here with PyAV; budget ~20-30 s.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from t2vz_core.errors import InputError, MediaError
from t2vz_core.media import DecodeSpec, choose_backend, iter_frames, plan_decode, probe
from t2vz_core.media import decode as decode_module
from t2vz_core.media.synthetic import frame_image, make_video, read_frame_index

ROOT = Path(__file__).resolve().parents[1]


def write_clip(
    path: Path,
    size: tuple[int, int],
    frames: int = 6,
    *,
    encoder: str = "libx264",
    pix_fmt: str = "yuv420p",
    bt709: bool = False,
    full_range: bool = False,
    options: dict | None = None,
) -> Path:
    """A clip in a given pixel format, tagged (and converted from RGB) with BT.709 and/or full range."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=24)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = options if options is not None else {"crf": "12", "preset": "ultrafast"}
        ctx = stream.codec_context
        if bt709:
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709
        if full_range:
            ctx.color_range = 2  # JPEG (full)
        for i in range(frames):
            rgb = av.VideoFrame.from_ndarray(frame_image(i, size, "texture"), format="rgb24")
            frame = rgb.reformat(
                format=pix_fmt, dst_colorspace="ITU709" if bt709 else None, dst_color_range=2 if full_range else None
            )
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("agree")
    texture = dict(pattern="texture", crf=18)
    return {
        # B-frames (preset medium): decode order != display order
        "hd": make_video(d / "hd.mp4", frames=8, size=(1280, 720), fps=30, preset="medium", **texture),
        "small": make_video(d / "small.mp4", frames=20, size=(320, 180), fps=Fraction(30000, 1001), **texture),
        "odd": make_video(d / "odd.mp4", frames=10, size=(317, 179), **texture),  # odd: H.264 4:4:4
        "sixty": make_video(d / "sixty.mp4", frames=30, size=(320, 180), fps=60, **texture),
        **{
            f"rot{r}": make_video(d / f"rot{r}.mp4", frames=6, size=(320, 180), rotation=r, **texture)
            for r in (90, 180, 270)
        },
        "rot90.mkv": make_video(d / "rot90.mkv", frames=6, size=(320, 180), rotation=90, **texture),
        # colour: every decoded pixel format decord is trusted with
        "bt709": write_clip(d / "bt709.mp4", (320, 180), bt709=True),
        "full": write_clip(d / "full.mp4", (320, 180), full_range=True),
        "bt709-full": write_clip(d / "bt709-full.mp4", (320, 180), bt709=True, full_range=True),
        "yuv422p": write_clip(d / "yuv422p.mp4", (320, 180), pix_fmt="yuv422p"),
        "yuvj422p": write_clip(d / "mjpeg422.mkv", (320, 180), encoder="mjpeg", pix_fmt="yuvj422p", options={}),
        "yuvj444p": write_clip(d / "mjpeg444.mkv", (320, 180), encoder="mjpeg", pix_fmt="yuvj444p", options={}),
        "gray": write_clip(d / "gray.mkv", (320, 180), encoder="ffv1", pix_fmt="gray", options={}),
        "bgr0": write_clip(d / "bgr0.mkv", (320, 180), encoder="ffv1", pix_fmt="bgr0", options={}),
        # decord converts these differently: left to PyAV
        "10bit": write_clip(d / "10bit.mp4", (320, 180), pix_fmt="yuv420p10le", bt709=True),
        "odd420": write_clip(d / "odd420.mkv", (321, 181), encoder="ffv1", options={}),
    }


def decode(path, spec: DecodeSpec, backend: str, **kwargs):
    plan = plan_decode(probe(path), spec)
    stats: dict = {}
    frames = np.concatenate(list(iter_frames(path, plan, backend=backend, stats=stats, **kwargs)))
    return plan, frames, stats


def decode_both(path, spec: DecodeSpec):
    plan, a, stats_a = decode(path, spec, "decord")
    _, b, stats_b = decode(path, spec, "pyav")
    assert (stats_a["backend"], stats_a["fallback"], stats_a["worker_readers"]) == ("decord", None, 1)
    assert stats_b == {"backend": "pyav", "fallback": None}
    assert a.shape == b.shape == (len(plan), plan.height, plan.width, 3)
    return plan, a, b


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() == 0, f"decord and PyAV differ: max {diff.max()}/255, mean {diff.mean():.3f}"


# Before the fix, decord's own scaler resized: 1280x720 -> 128 px differed by up to 120/255
# (mean 17) on this texture, 51/255 on a real film.
@pytest.mark.parametrize(
    "clip, spec",
    [
        ("hd", DecodeSpec(resolution=128)),
        ("hd", DecodeSpec(resolution=96, start=0.1)),
        ("hd", DecodeSpec(width=96, height=96, fit="crop")),
        ("hd", DecodeSpec(width=128, height=128, fit="pad")),
        ("small", DecodeSpec(width=200, max_frames=12)),
        ("small", DecodeSpec(resolution=640, start=0.2, max_frames=6)),  # enlarging
        ("odd", DecodeSpec(resolution=96)),
        ("odd", DecodeSpec(width=200, height=200, fit="pad")),
        ("sixty", DecodeSpec(fps=24, start=0.05, resolution=128)),  # 60 -> 24 fps: uneven steps
        ("sixty", DecodeSpec(fps=Fraction(30000, 1001), width=128, height=96, fit="crop")),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_decord_and_pyav_give_identical_pixels_at_non_native_sizes(clips, clip, spec):
    plan, a, b = decode_both(clips[clip], spec)
    assert (plan.width, plan.height) != (probe(clips[clip]).width, probe(clips[clip]).height)
    assert_same(a, b)
    if spec.fit == "keep":  # the planned source frames, upright, not just equal pixels
        assert [read_frame_index(f) for f in a] == list(plan.indices)


@pytest.mark.parametrize(
    "clip", ["small", "odd", "bt709", "full", "bt709-full", "yuv422p", "yuvj422p", "yuvj444p", "gray", "bgr0"]
)
def test_colour_conversion_agrees_at_the_source_size(clips, clip):
    """Same YUV -> RGB as PyAV: BT.601/BT.709 matrices and limited/full range as the file is tagged."""
    info = probe(clips[clip])
    assert decode_module.decord_mismatch(info) is None and choose_backend(info) == "decord", info.pix_fmt
    plan, a, b = decode_both(clips[clip], DecodeSpec())
    assert (plan.width, plan.height) == (info.width, info.height)
    assert_same(a, b)
    source = np.stack([frame_image(i, (info.width, info.height), "texture") for i in plan.indices])
    if clip == "gray":  # luma only (BT.601 weights), in all three channels
        assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
        source = np.repeat((source @ [0.299, 0.587, 0.114]).round()[..., None], 3, axis=-1)
    error = np.abs(a.astype(int) - source).mean()
    if clip.startswith("bt709"):  # the tag is honoured: reading it as BT.601 would be worse
        with av.open(str(clips[clip])) as container:
            as_601 = np.stack(
                [f.reformat(format="rgb24", src_colorspace="ITU601").to_ndarray() for f in container.decode(video=0)]
            )
        assert error + 1 < np.abs(as_601.astype(int) - source).mean()
    assert error < (12 if clip.startswith("yuvj") else 8), error  # MJPEG at default quality: lossier


@pytest.mark.parametrize("clip, reason", [("10bit", "yuv420p10le"), ("odd420", "odd size")])
def test_files_decord_converts_differently_are_decoded_by_pyav(clips, clip, reason):
    import decord

    info = probe(clips[clip])
    assert reason in decode_module.decord_mismatch(info)
    assert choose_backend(info) == "pyav"
    # Why: decord's own RGB differs (measured: up to 59/255 on 10-bit BT.709, 89 on odd 4:2:0).
    raw = decord.VideoReader(str(clips[clip])).get_batch(list(range(info.frame_count))).asnumpy()
    _, auto, stats = decode(clips[clip], DecodeSpec(), "auto")
    _, pyav, _ = decode(clips[clip], DecodeSpec(), "pyav")
    assert np.abs(raw.astype(int) - pyav).max() > 20
    assert stats == {"backend": "pyav", "fallback": None} and np.array_equal(auto, pyav)
    with pytest.raises(MediaError, match="differently from PyAV"):
        decode(clips[clip], DecodeSpec(resolution=96), "decord")


@pytest.mark.parametrize("clip", ["rot90", "rot180", "rot270"])
def test_rotated_clips_agree(clips, clip):
    info = probe(clips[clip])
    assert info.rotation == int(clip[3:]) and choose_backend(info) == "pyav"  # auto stays with PyAV
    plan, a, b = decode_both(clips[clip], DecodeSpec(resolution=96))
    assert (plan.width, plan.height) == (96, 56)  # upright 16:9
    assert_same(a, b)
    assert [read_frame_index(f) for f in a] == list(plan.indices)
    _, a, b = decode_both(clips[clip], DecodeSpec(width=64, height=64, fit="crop"))
    assert_same(a, b)


def test_rotation_decord_cannot_see_is_left_to_pyav(clips):
    info = probe(clips["rot90.mkv"])
    assert info.rotation == 90 and "rotation" in decode_module.decord_mismatch(info)
    with pytest.raises(MediaError, match="ignores the rotation"):
        decode(clips["rot90.mkv"], DecodeSpec(resolution=96), "decord")
    plan, frames, stats = decode(clips["rot90.mkv"], DecodeSpec(resolution=96), "auto")
    assert stats["backend"] == "pyav" and [read_frame_index(f) for f in frames] == list(plan.indices)


def test_segments_that_end_inside_a_chunk_give_the_same_frames(clips, monkeypatch):
    """The worker drops its decord reader every `segment` frames (and earlier when decord's
    read-ahead grows): a new reader seeks back, whole chunks are sent, the rest waits."""
    spec = DecodeSpec(resolution=128, fps=60)  # 30 -> 60 fps: every frame twice, across segments
    _, pyav, _ = decode(clips["hd"], spec, "pyav")
    monkeypatch.setattr(decode_module, "DECORD_SEGMENT", 3)
    plan = plan_decode(probe(clips["hd"]), spec)
    stats: dict = {}
    chunks = list(iter_frames(clips["hd"], plan, chunk_size=4, backend="decord", stats=stats))
    assert [len(c) for c in chunks] == [4, 4, 4, 4]
    assert stats["worker_readers"] == 6  # 16 planned frames, 3 per reader
    assert_same(np.concatenate(chunks), pyav)


def dies_after_one_chunk(monkeypatch):
    real = decode_module._iter_decord

    def iter_decord(*args, **kwargs):
        frames = real(*args, **kwargs)
        yield next(frames)
        frames.close()
        raise decode_module._DecordUnusable("worker crashed")

    monkeypatch.setattr(decode_module, "_iter_decord", iter_decord)


def test_a_fallback_mid_video_gives_the_frames_of_a_pure_run(clips, monkeypatch):
    spec = DecodeSpec(resolution=128, fps=24)
    _, pure_decord, _ = decode(clips["small"], spec, "decord", chunk_size=4)
    _, pure_pyav, _ = decode(clips["small"], spec, "pyav", chunk_size=4)
    dies_after_one_chunk(monkeypatch)
    _, mixed, stats = decode(clips["small"], spec, "auto", chunk_size=4)
    assert stats["backend"] == "pyav" and stats["fallback"] == "worker crashed"
    assert len(mixed) == 17  # 20 frames at 29.97 fps -> 24 fps: 4 from decord, 13 from PyAV
    assert_same(mixed, pure_decord)
    assert_same(mixed, pure_pyav)


def hide_decord(monkeypatch):
    """As on macOS arm64 or Linux aarch64: no decord to find or import."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "decord" else real_find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` raises ImportError


def test_without_decord_pyav_decodes_everything_quietly(clips, monkeypatch, caplog):
    spec = DecodeSpec(resolution=128)
    _, with_decord, _ = decode(clips["hd"], spec, "decord")
    hide_decord(monkeypatch)
    assert not decode_module.decord_installed() and choose_backend(probe(clips["hd"])) == "pyav"
    with caplog.at_level("INFO", logger="t2vz_core"):
        _, frames, stats = decode(clips["hd"], spec, "auto")
    assert stats == {"backend": "pyav", "fallback": None} and not caplog.records
    assert_same(frames, with_decord)
    with pytest.raises(InputError, match="'decord' is not installed"):
        decode(clips["hd"], spec, "decord")


def test_a_process_that_cannot_import_decord_decodes_with_pyav(clips, tmp_path):
    """Nothing imports decord at module level: a fresh process without it decodes into a store."""
    script = f"""
import importlib.util, json, sys
sys.modules["decord"] = None
from t2vz_core.media import DecodeSpec, decode_to_store, plan_decode, probe
from t2vz_core.media.decode import decord_installed
plan = plan_decode(probe({str(clips["small"])!r}), DecodeSpec(resolution=96, max_frames=4))
store = decode_to_store({str(clips["small"])!r}, plan, {str(tmp_path / "store")!r})
print(json.dumps({{"installed": decord_installed(), "count": len(store), "size": [store.width, store.height]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"installed": False, "count": 4, "size": [96, 56]}
    assert "warning" not in result.stderr.lower(), result.stderr


def test_the_decode_cache_entry_is_the_same_whichever_backend_ran(clips, tmp_path, monkeypatch):
    """The decode step's entry (frames, meta.json, entry.json) and key: decord, no decord, fallback."""
    from t2vz_core.manifest import read_manifest
    from t2vz_core.pipeline import RowContext, get_step
    from t2vz_core.runtime import Runtime
    from t2vz_core.workdir import WorkDir

    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        f"job_id,mode,source,prompt,width,height,fit\na,canny,{clips['sixty']},a glass city,128,96,crop\n"
    )
    (job,) = read_manifest(manifest, allowed_roots=[clips["sixty"].parent]).jobs
    used: list[str] = []
    for name in ("_iter_decord", "_iter_pyav"):
        real = getattr(decode_module, name)
        monkeypatch.setattr(
            decode_module, name, lambda *a, _real=real, _name=name, **k: (used.append(_name), _real(*a, **k))[1]
        )

    def run(label: str):
        used.clear()
        step = get_step("decode")
        ctx = RowContext(job=job, work=WorkDir(tmp_path / label), runtime=Runtime("cpu"), output_dir=tmp_path / "out")
        key = step.key(ctx)
        result = step.build(ctx, key)
        assert result.key == key and not result.hit
        return key, Path(result.path), list(used)

    runs = {"decord": run("decord")}
    with monkeypatch.context() as m:
        hide_decord(m)
        runs["no decord"] = run("no-decord")
    with monkeypatch.context() as m:
        dies_after_one_chunk(m)  # the store reads 16-frame chunks: 16 from decord, 14 from PyAV
        runs["fallback"] = run("fallback")
    assert runs["decord"][2] == ["_iter_decord"]
    assert runs["no decord"][2] == ["_iter_pyav"]
    assert runs["fallback"][2] == ["_iter_decord", "_iter_pyav"]

    def contents(folder: Path) -> dict:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        entry = json.loads(files.pop("entry.json"))
        entry.pop("created")
        return {"entry": entry, **files}

    key, folder, _ = runs["decord"]
    expected = contents(folder)
    assert sum(name.endswith(".png") for name in expected) == 30
    for label, (other_key, other_folder, _) in runs.items():
        assert other_key == key, label
        assert contents(other_folder) == expected, label


def test_decord_is_a_dependency_only_where_it_has_wheels():
    """decord 0.6.0 has wheels for x86_64 Linux and 64-bit Windows only (pip download, Nov 2026)."""
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (decord,) = [Requirement(d) for d in deps if Requirement(d).name == "decord"]
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("decord==")]
    assert len(pins) == 1 and Requirement(pins[0]).marker == decord.marker
    platforms = {
        ("linux", "x86_64"): True,
        ("win32", "AMD64"): True,
        ("linux", "aarch64"): False,
        ("darwin", "arm64"): False,
        ("darwin", "x86_64"): False,
    }
    for (system, machine), wanted in platforms.items():
        env = {"sys_platform": system, "platform_machine": machine}
        assert decord.marker.evaluate(env) is wanted, (system, machine)
