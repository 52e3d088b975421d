"""Encode frames with PyAV: H.264 MP4, VP9 WebM, GIF, PNG sequences; atomic, with audio.

- MP4: libx264, yuv420p (plays everywhere), CRF and preset, tagged BT.601 limited range
  (the matrix swscale uses to convert our RGB). WebM: libvpx-vp9 in constant-quality mode
  (crf, b=0), the x264 preset mapped to cpu-used. GIF: the fixed `rgb8` palette (PyAV's
  `pal8` fails); GIF delays are whole centiseconds, so rates like 29.97 are approximated.
- Odd sizes: 4:2:0 needs even sides, so MP4/WebM frames with an odd width or height get
  one extra column/row copied from the edge (no black line, no lost pixels; the file is
  at most 1 px larger). GIF keeps the exact size.
- Frame rate: an exact Fraction; the stream clock is 1/fps so 30000/1001 stays exact.
- Audio: the source's first audio track, trimmed to [audio_start, audio_start + video
  duration) (seconds from the source's first video frame, i.e. DecodePlan.start). Packets
  are copied as they are when the container accepts the codec (precision: one packet,
  ~21 ms for AAC); otherwise decoded, cut to the sample and re-encoded (AAC / Opus).
  Audio is interleaved with the video as it is written, so memory stays flat.
- Provenance: `metadata` (prompt, seed, model...) goes into the container tags (MP4 with
  `use_metadata_tags`, so custom keys survive; WebM natively). GIF has no tags.
- Atomic: written under a temporary name in the same folder, then os.replace.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2vz_core.errors import InputError, MediaError
from t2vz_core.atomic import atomic_path
from t2vz_core.media.geometry import as_chunk
from t2vz_core.rates import to_fraction
from t2vz_core.media.store import FrameStore
from t2vz_core.stop import check as check_stop

log = logging.getLogger(__name__)

FORMATS = ("mp4", "webm", "gif")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")
_VP9_CPU_USED = {"ultrafast": 8, "superfast": 8, "veryfast": 7, "faster": 6, "fast": 5,
                 "medium": 4, "slow": 2, "slower": 1, "veryslow": 0, "placebo": 0}
_COPY_AUDIO = {"mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
               "webm": {"opus", "vorbis"}}
_AUDIO_ENCODER = {"mp4": "aac", "webm": "libopus"}
_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".gif": "gif"}

Frames = Iterable[np.ndarray] | np.ndarray | FrameStore


def encode_video(frames: Frames, path: str | os.PathLike, fps: Fraction | int | float | str,
                 fmt: str = "mp4", crf: int = 18, preset: str = "medium",
                 audio_source: str | os.PathLike | None = None, audio_start: float = 0.0,
                 metadata: dict | None = None) -> Path:
    """Encode uint8 RGB frames (chunks (k, H, W, 3), one array, or a FrameStore) to `path`."""
    path = Path(path)
    fps = to_fraction(fps)
    _validate(path, fmt, crf, preset, audio_start)
    chunks = iter_chunks(frames)
    first = next(chunks, None)
    if first is None or not len(first):
        raise InputError(f"{path}: no frames to encode")
    with atomic_path(path) as tmp:
        _encode(tmp, _prepend(first, chunks), fps, fmt, crf, preset,
                Path(audio_source) if audio_source else None, float(audio_start), metadata or {})
    return path


def _validate(path: Path, fmt: str, crf: int, preset: str, audio_start: float) -> None:
    if fmt not in FORMATS:
        raise InputError(f"fmt: {fmt!r} must be one of {', '.join(FORMATS)}")
    implied = _SUFFIXES.get(path.suffix.lower())
    if implied is not None and implied != fmt:
        raise InputError(f"{path}: the suffix says {implied}, fmt says {fmt}")
    top = 63 if fmt == "webm" else 51
    if not isinstance(crf, int) or not 0 <= crf <= top:
        raise InputError(f"crf: {crf!r} must be a whole number from 0 to {top} for {fmt}")
    if preset not in X264_PRESETS:
        raise InputError(f"preset: {preset!r} must be one of {', '.join(X264_PRESETS)}")
    if audio_start < 0:
        raise InputError(f"audio_start: {audio_start} must be >= 0")


def iter_chunks(frames: Frames, chunk_size: int = 16) -> Iterator[np.ndarray]:
    """Chunks (k, H, W, 3) from a FrameStore, one array, or an iterable of arrays.
    A stop request (t2vz_core.stop) raises Cancelled between chunks; the file being written is
    a temporary one (atomic_path), so nothing half-written is left."""
    if isinstance(frames, FrameStore):
        source = frames.iter_chunks(chunk_size)
    elif isinstance(frames, np.ndarray):
        whole = as_chunk(frames)
        source = (whole[start: start + chunk_size] for start in range(0, len(whole), chunk_size))
    else:
        source = (as_chunk(chunk) for chunk in frames)
    for chunk in source:
        check_stop("encode")
        yield chunk


def _prepend(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _encode(tmp: Path, chunks: Iterator[np.ndarray], fps: Fraction, fmt: str, crf: int,
            preset: str, audio_source: Path | None, audio_start: float, metadata: dict) -> None:
    import av

    options = {"movflags": "+faststart+use_metadata_tags"} if fmt == "mp4" else {}
    with av.open(str(tmp), "w", format=fmt, options=options) as out:
        if fmt != "gif":
            for key, value in metadata.items():
                out.metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
        stream = None
        audio = None
        size = None
        count = 0
        for chunk in chunks:
            if stream is None:
                size = (chunk.shape[2], chunk.shape[1])
                stream = _video_stream(out, fmt, fps, *size, crf, preset)
                if audio_source is not None and fmt != "gif":
                    audio = _AudioTrack.open(out, fmt, audio_source, audio_start)
            if (chunk.shape[2], chunk.shape[1]) != size:
                raise InputError(f"frame {count} is {chunk.shape[2]}x{chunk.shape[1]}, "
                                 f"the video is {size[0]}x{size[1]}")
            for frame in chunk:
                vf = av.VideoFrame.from_ndarray(_even(frame, fmt), format="rgb24")
                vf.pts = _pts(count, fps, fmt)
                out.mux(stream.encode(vf))
                count += 1
            if audio is not None:
                audio.mux_until(count / fps)
        out.mux(stream.encode(None))
        if audio is not None:
            audio.finish(count / fps)


def _video_stream(out, fmt: str, fps: Fraction, width: int, height: int, crf: int,
                  preset: str):
    if fmt == "mp4":
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        _tag_bt601(stream)
    elif fmt == "webm":
        stream = out.add_stream("libvpx-vp9", rate=fps)
        stream.pix_fmt = "yuv420p"
        cpu_used = _VP9_CPU_USED[preset]
        stream.options = {"crf": str(crf), "b": "0", "row-mt": "1",
                          "deadline": "realtime" if cpu_used >= 7 else "good",
                          "cpu-used": str(cpu_used)}
        _tag_bt601(stream)
    else:
        stream = out.add_stream("gif", rate=fps)
        stream.pix_fmt = "rgb8"
    if fmt == "gif":
        stream.width, stream.height = width, height
    else:
        stream.width, stream.height = width + width % 2, height + height % 2
    stream.codec_context.time_base = Fraction(1, 100) if fmt == "gif" else 1 / fps
    return stream


def _tag_bt601(stream) -> None:
    """Say which YUV matrix was used, so players convert back to the same colours."""
    ctx = stream.codec_context
    try:
        ctx.colorspace = "ITU601"
        ctx.color_range = "MPEG"
        ctx.color_primaries = "SMPTE170M"
        ctx.color_trc = "SMPTE170M"
    except (AttributeError, ValueError, TypeError):  # tagging is a nicety, never fatal
        log.debug("could not tag colour metadata", exc_info=True)


def _pts(index: int, fps: Fraction, fmt: str) -> int:
    return round(index * 100 / fps) if fmt == "gif" else index


def _even(frame: np.ndarray, fmt: str) -> np.ndarray:
    h, w = frame.shape[:2]
    if fmt == "gif" or (h % 2 == 0 and w % 2 == 0):
        return np.ascontiguousarray(frame)
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class _AudioTrack:
    """Copies (or re-encodes) the source's audio for [start, start + video duration)."""

    @classmethod
    def open(cls, out, fmt: str, source: Path, start: float) -> _AudioTrack | None:
        import av

        try:
            src = av.open(str(source), metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise MediaError(source, f"cannot read audio source ({exc})") from None
        if not src.streams.audio:
            src.close()
            log.info("%s: no audio track to pass through", source)
            return None
        return cls(out, fmt, src, start)

    def __init__(self, out, fmt: str, src, start: float):
        import av

        self.out, self.src = out, src
        self.in_stream = src.streams.audio[0]
        video = src.streams.video[0] if src.streams.video else None
        base = 0.0
        if video is not None and video.start_time is not None and video.time_base:
            base = float(video.start_time * video.time_base)
        self.t0 = base + start  # container time of the output's first instant
        self.copy = self.in_stream.codec_context.name in _COPY_AUDIO[fmt]
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.in_stream)
        else:
            rate = 48000 if fmt == "webm" else (self.in_stream.rate or 48000)
            self.out_stream = out.add_stream(_AUDIO_ENCODER[fmt], rate=rate)
            self.out_stream.layout = "stereo" if self.in_stream.channels > 1 else "mono"
            self.resampler = None
            self.samples_written = 0
        self.tb = self.in_stream.time_base
        if self.t0 > 1.0 and self.tb:  # skip most of what comes before; else read from 0
            try:
                src.seek(round((self.t0 - 1.0) / self.tb), stream=self.in_stream,
                         backward=True, any_frame=False)
            except av.error.FFmpegError:
                log.info("%s: audio seek failed; reading from the start", src.name)
        self.packets = src.demux(self.in_stream)
        self.held = None  # a packet read ahead of the current video time
        self.finished = False

    def mux_until(self, video_time: float) -> None:
        """Write source audio up to output time `video_time` (seconds)."""
        limit = self.t0 + float(video_time)
        while not self.finished:
            packet = self.held or next(self.packets, None)
            self.held = None
            if packet is None:
                self.finished = True
                break
            if packet.pts is None or packet.size == 0:
                continue
            t = float(packet.pts * self.tb)
            if t >= limit:
                self.held = packet
                break
            self._emit(packet, t, limit)

    def _emit(self, packet, t: float, limit: float) -> None:
        if self.copy:
            if t < self.t0 - 1e-6 and not (self.t0 == 0 and t > -0.1):
                return  # before the window; a source's own priming packet (t < 0) is kept
            shift = round(self.t0 / self.tb)
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self.out_stream
            self.out.mux(packet)
            return
        for frame in packet.decode():
            self._encode_frame(frame, limit)

    def _encode_frame(self, frame, limit: float) -> None:
        import av

        rate = self.out_stream.rate
        if self.resampler is None:
            self.resampler = av.AudioResampler(format=self.out_stream.format.name,
                                               layout=self.out_stream.layout.name, rate=rate)
        start = float(frame.pts * frame.time_base) if frame.pts is not None else self.t0
        for piece in self.resampler.resample(frame):
            data = piece.to_ndarray()
            n = data.shape[-1]
            first = int(round((start - self.t0) * rate))  # output sample of data[0]
            lo = max(0, self.samples_written - first)
            hi = min(n, int(round((limit - self.t0) * rate)) - first)
            start += n / rate
            if hi <= lo:
                continue
            cut = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[..., lo:hi]),
                                             format=piece.format.name, layout=piece.layout.name)
            cut.sample_rate = rate
            cut.pts = self.samples_written
            cut.time_base = Fraction(1, rate)
            self.samples_written += hi - lo
            self.out.mux(self.out_stream.encode(cut))

    def finish(self, video_time: float) -> None:
        self.mux_until(video_time)
        if not self.copy:
            self.out.mux(self.out_stream.encode(None))
        self.src.close()


def write_png_sequence(frames: Frames, directory: str | os.PathLike,
                       fps: Fraction | int | float | str | None = None) -> Path:
    """Lossless PNG frames 00000.png ... (+ meta.json) in `directory`, replaced atomically.

    A FrameStore folder (readable with FrameStore(directory)); fps is recorded in
    meta.json (default: the FrameStore's, else 1)."""
    directory = Path(directory)
    if fps is None:
        fps = frames.fps if isinstance(frames, FrameStore) else 1
    # fresh=True: equal params say nothing about these pixels, so never reuse or resume.
    with FrameStore.writer(directory, fps, {"kind": "png-sequence"}, fresh=True) as writer:
        start = 0
        for chunk in iter_chunks(frames):
            writer.write(start, chunk)
            start += len(chunk)
        if not start:
            raise InputError(f"{directory}: no frames to write")
    return directory
