"""Synthetic media files, made with PyAV: moving shapes with the frame index drawn in.

What t2vz_core.tiny is for models, this is for media: the tests and the benchmarks make their
clips here (and the broken files a library also holds). Every frame carries a barcode in its top
quarter (a red and a blue marker and 10 bits of the frame index), so a caller can tell exactly
which source frame it got back, and whether it is upright, after resampling and resizing:
`read_frame_index`.

    make_video(path, frames=24, size=(64, 48), fps=Fraction(24), audio=False,
               rotation=0, codec="h264", timestamps=None) -> Path
    make_truncated / make_corrupt / make_text_file / make_audio_only / make_zero_frame
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

BITS = 10
STRIPES = BITS + 2
AUDIO_RATE = 48000

# codec name -> (PyAV encoder, pixel format for even sizes)
_CODECS = {
    "h264": ("libx264", "yuv420p"),
    "vp9": ("libvpx-vp9", "yuv420p"),
    "vp8": ("libvpx", "yuv420p"),
    "ffv1": ("ffv1", "yuv444p"),
    "png": ("png", "rgb24"),
    "mpeg4": ("mpeg4", "yuv420p"),
}


def frame_image(
    index: int,
    size: tuple[int, int],
    pattern: str = "shapes",
    image: np.ndarray | None = None,
    barcode: bool | None = None,
) -> np.ndarray:
    """Upright RGB content of frame `index`, size (width, height). The barcode is drawn
    unless barcode=False (default for pattern="image", where it would hide the head)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    if pattern == "image" and image is not None:
        shift = index * 2
        base = np.roll(_fit(image, w, h), shift, axis=1)
    elif pattern == "texture":
        base = _texture(w, h, index)
    else:  # moving shapes on a gradient
        base = np.zeros((h, w, 3), np.uint8)
        base[..., 0] = (xx * 60 // max(w, 1)).astype(np.uint8)
        base[..., 2] = (yy * 80 // max(h, 1)).astype(np.uint8)
        cx = (index * 3) % max(w, 1)
        cy = h // 4 + (h * 5 // 8) * ((index % 16) / 16)
        r = max(1, min(w, h) // 8)
        base[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (240, 220, 40)
        x0 = (w - (index * 2) % max(w, 1)) % max(w, 1)
        base[h * 3 // 4 : h * 3 // 4 + max(1, h // 8), x0 : x0 + max(1, w // 6)] = (40, 200, 240)
    if barcode is None:
        barcode = pattern != "image"
    if barcode and h >= 8 and w >= STRIPES:
        _draw_barcode(base, index)
    return base


def _fit(image: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


_TEXTURES: dict[tuple[int, int], np.ndarray] = {}


def _texture(w: int, h: int, index: int) -> np.ndarray:
    """A fixed smooth random texture panning right: realistic work for an encoder."""
    import cv2

    key = (w, h)
    if key not in _TEXTURES:
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (max(2, h // 8), max(2, (w + 512) // 8), 3), np.uint8)
        _TEXTURES[key] = cv2.resize(small, (w + 512, h), interpolation=cv2.INTER_CUBIC)
    big = _TEXTURES[key]
    x = (index * 2) % 512
    return big[:, x : x + w].copy()


def _draw_barcode(img: np.ndarray, index: int) -> None:
    h, w = img.shape[:2]
    band = max(2, h // 4)
    edges = np.linspace(0, w, STRIPES + 1).round().astype(int)
    colours = [(255, 0, 0)]
    colours += [(255, 255, 255) if (index >> (BITS - 1 - b)) & 1 else (0, 0, 0) for b in range(BITS)]
    colours += [(0, 0, 255)]
    for j, colour in enumerate(colours):
        img[:band, edges[j] : edges[j + 1]] = colour


def read_frame_index(frame: np.ndarray) -> int | None:
    """The frame index drawn by `frame_image`, or None when the barcode is not upright."""
    h, w = frame.shape[:2]
    band = max(2, h // 4)
    centres = ((np.arange(STRIPES) + 0.5) * w / STRIPES).astype(int)
    y0, y1 = max(0, band // 2 - 1), max(1, band // 2 + 1)
    samples = [frame[y0:y1, max(0, c - 1) : c + 1].reshape(-1, 3).mean(axis=0) for c in centres]
    red, blue = samples[0], samples[-1]
    if not (red[0] > 150 > red[2] and blue[2] > 150 > blue[0]):
        return None
    value = 0
    for s in samples[1:-1]:
        value = value * 2 + int(s.mean() > 128)
    return value


def tone_frequency(t: float) -> float:
    """Frequency of the fixture audio at time t (s): 300 Hz, +100 Hz every half second."""
    return 300.0 + 100.0 * int(t * 2)


def dominant_frequency(samples: np.ndarray, rate: int = AUDIO_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def make_video(
    path: str | os.PathLike,
    frames: int = 24,
    size: tuple[int, int] = (64, 48),
    fps: Fraction | int = Fraction(24),
    *,
    audio: bool | float = False,
    rotation: int = 0,
    codec: str = "h264",
    timestamps: Sequence[Fraction | float] | None = None,
    pattern: str = "shapes",
    image: np.ndarray | None = None,
    barcode: bool | None = None,
    crf: int = 10,
    gop: int | None = 12,
    preset: str = "ultrafast",
    faststart: bool = False,
) -> Path:
    """Write a real video file and return its path.

    size is the upright (display) size; with `rotation` (clockwise degrees 0/90/180/270,
    like a phone's `rotate` tag) the coded frames are stored turned the other way and the
    display matrix says how to turn them back. `timestamps` (seconds) make a
    variable-frame-rate file. `audio=True` adds a stepped tone as long as the video
    (`audio=2.5` makes it 2.5 s long). Container from the suffix (.mp4, .mkv, .webm, .mov).
    pattern: "shapes" (default), "texture" (detailed, for benchmarks) or "image" (`image`
    panning, e.g. skimage.data.astronaut() for pose). The barcode needs a width >= 48.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = Fraction(fps)
    encoder, pix_fmt = _CODECS[codec]
    w, h = size
    if rotation in (90, 270):
        w, h = h, w  # coded size
    if (w % 2 or h % 2) and pix_fmt == "yuv420p":
        pix_fmt = "yuv444p"
    options = {"movflags": "+faststart"} if faststart else {}
    tb = Fraction(1, 90000) if timestamps is not None else 1 / fps
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.time_base = tb
        if gop:
            stream.codec_context.gop_size = gop
        stream.options = _encoder_options(codec, crf, preset)
        if rotation:
            stream.set_display_rotation(-rotation)  # display matrix is counter-clockwise
        astream = _add_audio(out, path) if audio else None
        for i in range(frames):
            img = frame_image(i, size, pattern, image, barcode)
            if rotation:
                img = np.ascontiguousarray(np.rot90(img, k=rotation // 90))
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = round(Fraction(timestamps[i]) / tb) if timestamps is not None else i
            vf.time_base = tb
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            seconds = (
                float(audio)
                if audio is not True
                else (float(timestamps[-1]) + float(1 / fps) if timestamps is not None else frames / float(fps))
            )
            _write_tone(out, astream, seconds)
    return path


def _encoder_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    if codec == "h264":
        return {"crf": str(crf), "preset": preset}
    if codec in ("vp9", "vp8"):
        return {"crf": str(max(4, crf)), "b": "0", "deadline": "realtime", "cpu-used": "8"}
    return {}


def _add_audio(out, path: Path):
    if path.suffix.lower() in (".webm",):
        stream = out.add_stream("libopus", rate=AUDIO_RATE)
    else:
        stream = out.add_stream("aac", rate=AUDIO_RATE)
    stream.layout = "mono"
    return stream


def _write_tone(out, stream, seconds: float) -> None:
    import av

    frame_size = stream.codec_context.frame_size or 1024
    total = int(round(seconds * AUDIO_RATE))
    fmt = stream.codec_context.format.name
    phase = 0.0
    for start in range(0, total, frame_size):
        n = min(frame_size, total - start)
        t = (start + np.arange(n)) / AUDIO_RATE
        freq = np.array([tone_frequency(x) for x in t])
        phases = phase + np.cumsum(2 * np.pi * freq / AUDIO_RATE)
        phase = float(phases[-1])
        samples = (0.5 * np.sin(phases)).astype(np.float32)[None, :]
        if fmt == "s16":
            samples = (samples * 32767).astype(np.int16)
        af = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
        af.sample_rate = AUDIO_RATE
        af.pts = start
        af.time_base = Fraction(1, AUDIO_RATE)
        for packet in stream.encode(af):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> Path:
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        _write_tone(out, _add_audio(out, path), seconds)
    return path


def make_zero_frame(path: str | os.PathLike, size: tuple[int, int] = (64, 48)) -> Path:
    """An MP4 with a video track that holds no frame."""
    import av

    path = Path(path)
    with av.open(str(path), "w", options={"movflags": "empty_moov"}) as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        out.start_encoding()
    return path


def make_truncated(src: str | os.PathLike, dst: str | os.PathLike, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `src`'s bytes, as a crashed download would leave it."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def make_corrupt(path: str | os.PathLike, size: int = 20000, seed: int = 0) -> Path:
    """Random bytes behind a plausible MP4 `ftyp` box: looks like a video, is not one."""
    rng = np.random.default_rng(seed)
    head = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    Path(path).write_bytes(head + rng.integers(0, 256, size, np.uint8).tobytes())
    return Path(path)


def make_text_file(path: str | os.PathLike) -> Path:
    Path(path).write_text("this is a text file with a video name\n" * 20)
    return Path(path)


def vfr_timestamps(frames: int, short: Fraction = Fraction(1, 30), long: Fraction = Fraction(1, 10)) -> list[Fraction]:
    """Timestamps alternating blocks of 5 fast and 5 slow frames (variable rate)."""
    out, t = [], Fraction(0)
    for i in range(frames):
        out.append(t)
        t += short if (i // 5) % 2 == 0 else long
    return out
