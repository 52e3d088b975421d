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
  are copied as they are when the container accepts the codec and the source's audio
  covers the whole window (precision: one packet, ~21 ms for AAC); otherwise decoded,
  resampled to a planar format (so a cut is a slice, whatever the layout), cut to the
  sample and re-encoded (AAC / Opus; more than two channels are mixed to stereo), with
  silence where the source has none, so the track spans the video exactly.
  Audio is interleaved with the video as it is written, so memory stays flat.
- Provenance: `metadata` (prompt, seed, model...) goes into the container tags (MP4 with
  `use_metadata_tags`, so custom keys survive; WebM natively). GIF has no tags.
- Atomic: written under a temporary name in the same folder, then os.replace.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2vz_core.atomic import atomic_path
from t2vz_core.errors import InputError, MediaError
from t2vz_core.media.geometry import as_chunk
from t2vz_core.media.probe import announced_duration
from t2vz_core.media.store import FrameStore
from t2vz_core.rates import to_fraction
from t2vz_core.stop import check as check_stop

log = logging.getLogger(__name__)

FORMATS = ("mp4", "webm", "gif")
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
_VP9_CPU_USED = {
    "ultrafast": 8,
    "superfast": 8,
    "veryfast": 7,
    "faster": 6,
    "fast": 5,
    "medium": 4,
    "slow": 2,
    "slower": 1,
    "veryslow": 0,
    "placebo": 0,
}
# Vorbis is not copied: cut mid-stream, its first packet decodes to nothing (it only primes
# the overlap), so the copy would start two packets late.
_COPY_AUDIO = {"mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}, "webm": {"opus"}}
_AUDIO_ENCODER = {"mp4": "aac", "webm": "libopus"}
_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".gif": "gif"}

Frames = Iterable[np.ndarray] | np.ndarray | FrameStore


def encode_video(
    frames: Frames,
    path: str | os.PathLike,
    fps: Fraction | int | float | str,
    fmt: str = "mp4",
    crf: int = 18,
    preset: str = "medium",
    audio_source: str | os.PathLike | None = None,
    audio_start: float = 0.0,
    metadata: dict | None = None,
) -> Path:
    """Encode uint8 RGB frames (chunks (k, H, W, 3), one array, or a FrameStore) to `path`."""
    path = Path(path)
    fps = to_fraction(fps)
    _validate(path, fmt, crf, preset, audio_start)
    chunks = iter_chunks(frames)
    first = next(chunks, None)
    if first is None or not len(first):
        raise InputError(f"{path}: no frames to encode")
    # The output's length, when known up front, decides whether audio can be copied.
    count = (
        len(frames)
        if isinstance(frames, FrameStore)
        else (len(as_chunk(frames)) if isinstance(frames, np.ndarray) else None)
    )
    duration = float(count / fps) if count is not None else None
    with atomic_path(path) as tmp:
        _encode(
            tmp,
            _prepend(first, chunks),
            fps,
            fmt,
            crf,
            preset,
            Path(audio_source) if audio_source else None,
            float(audio_start),
            metadata or {},
            duration,
        )
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
        source = (whole[start : start + chunk_size] for start in range(0, len(whole), chunk_size))
    else:
        source = (as_chunk(chunk) for chunk in frames)
    for chunk in source:
        check_stop("encode")
        yield chunk


def _prepend(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _encode(
    tmp: Path,
    chunks: Iterator[np.ndarray],
    fps: Fraction,
    fmt: str,
    crf: int,
    preset: str,
    audio_source: Path | None,
    audio_start: float,
    metadata: dict,
    duration: float | None,
) -> None:
    import av

    # movie_timescale: edit lists (an audio track starting mid-packet) in 1/90000 s, not ms
    options = {"movflags": "+faststart+use_metadata_tags", "movie_timescale": "90000"} if fmt == "mp4" else {}
    if fmt == "webm":  # its muxer draws random track ids otherwise: the same frames, other bytes each time
        options["fflags"] = "+bitexact"
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
                    audio = _AudioTrack.open(out, fmt, audio_source, audio_start, duration)
            if (chunk.shape[2], chunk.shape[1]) != size:
                raise InputError(
                    f"frame {count} is {chunk.shape[2]}x{chunk.shape[1]}, the video is {size[0]}x{size[1]}"
                )
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


def _video_stream(out, fmt: str, fps: Fraction, width: int, height: int, crf: int, preset: str):
    if fmt == "mp4":
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        _tag_bt601(stream)
    elif fmt == "webm":
        stream = out.add_stream("libvpx-vp9", rate=fps)
        stream.pix_fmt = "yuv420p"
        cpu_used = _VP9_CPU_USED[preset]
        stream.options = {
            "crf": str(crf),
            "b": "0",
            "row-mt": "1",
            "deadline": "realtime" if cpu_used >= 7 else "good",
            "cpu-used": str(cpu_used),
        }
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
    """The source's first audio track for [start, start + video duration) of the output.

    Copied packet by packet when the container takes the codec and the source's audio
    covers the whole window (precision: one packet at each end); otherwise decoded,
    resampled to a planar format, cut to the sample and re-encoded, with silence where the
    source has no audio (a late start, an early end), so the track spans the video exactly.
    """

    @classmethod
    def open(cls, out, fmt: str, source: Path, start: float, duration: float | None) -> _AudioTrack | None:
        import av

        try:
            src = av.open(str(source), metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise MediaError(source, f"cannot read audio source ({exc})") from None
        if not src.streams.audio:
            src.close()
            log.info("%s: no audio track to pass through", source)
            return None
        try:
            return cls(out, fmt, src, start, duration)
        except Exception:
            src.close()
            raise

    def __init__(self, out, fmt: str, src, start: float, duration: float | None):
        import av

        self.out, self.src = out, src
        self.in_stream = src.streams.audio[0]
        self.tb = self.in_stream.time_base
        video = src.streams.video[0] if src.streams.video else None
        base = 0.0
        if video is not None and video.start_time is not None and video.time_base:
            base = float(video.start_time * video.time_base)
        self.t0 = base + start  # container time of the output's first instant
        if duration is None and video is not None:  # streamed frames: at most the source's end
            end = _stream_end(video)
            duration = end - self.t0 if end is not None else None
        name = self.in_stream.codec_context.name
        # MP4 keeps the sample clock: packets stamped by a coarser one (Matroska's
        # milliseconds) would carry their rounding into its sample durations.
        fine_clock = fmt == "webm" or self.tb <= Fraction(1, self.in_stream.rate or 1)
        self.copy = name in _COPY_AUDIO[fmt] and fine_clock and self._covers(duration)
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.in_stream)
        else:
            self._open_encoder(fmt)
        if self.t0 > 1.0 and self.tb:  # skip most of what comes before; else read from 0
            try:
                src.seek(round((self.t0 - 1.0) / self.tb), stream=self.in_stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                log.info("%s: audio seek failed; reading from the start", src.name)
        self.packets = src.demux(self.in_stream)
        self.held = None  # a packet read ahead of the current video time
        self.finished = False

    def _covers(self, duration: float | None) -> bool:
        """Whether the source's audio spans [t0, t0 + duration], to within one packet."""
        stream = self.in_stream
        end = _stream_end(stream)
        if duration is None or end is None or stream.start_time is None:
            return False
        slack = (stream.codec_context.frame_size or 1024) / (stream.rate or 48000)
        start = float(stream.start_time * self.tb)
        return start <= self.t0 + slack and end >= self.t0 + duration - slack

    def _open_encoder(self, fmt: str) -> None:
        import av

        codec = _AUDIO_ENCODER[fmt]
        rates = av.codec.Codec(codec, "w").audio_rates or ()
        rate = self.in_stream.rate if self.in_stream.rate in rates else 48000
        self.out_stream = self.out.add_stream(codec, rate=rate)
        self.out_stream.layout = "stereo" if self.in_stream.channels > 1 else "mono"
        self.rate = rate
        # Planar: a cut is a slice along the sample axis, whatever the channel count.
        self.sample_format = self.out_stream.format.planar.name
        self.channels = self.out_stream.layout.nb_channels
        self.resampler = av.AudioResampler(format=self.sample_format, layout=self.out_stream.layout.name, rate=rate)
        self.origin = round(self.t0 * rate)  # source sample (at `rate`) of output sample 0
        self.written = 0  # output samples handed to the encoder so far
        self.next_first = None  # output sample where the next resampled frame should begin
        self.tick = math.ceil(self.tb * rate) + 1  # the source clock's tick, in output samples

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
            self._emit(packet, t, video_time)

    def _emit(self, packet, t: float, video_time: float) -> None:
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
        end = round(float(video_time) * self.rate)
        for frame in packet.decode():
            for piece in self.resampler.resample(frame):
                self._write_piece(piece, end)

    def _write_piece(self, piece, end: int) -> None:
        """Write the part of a resampled frame that falls in [written, end) output samples."""
        data = piece.to_ndarray()  # planar: (channels, samples)
        first = self.next_first
        if piece.pts is not None and piece.time_base:
            at = round(piece.pts * piece.time_base * self.rate) - self.origin
            # A coarse source clock (Matroska counts milliseconds) stamps back-to-back
            # frames up to half a tick off: only a jump of more than a tick is a real gap
            # or overlap.
            if first is None or abs(at - first) > self.tick:
                first = at
        if first is None:
            first = self.written
        self.next_first = first + data.shape[1]
        if first > self.written:  # the source has no audio here: silence
            self._write(np.zeros((self.channels, min(first, end) - self.written), data.dtype))
        lo, hi = max(0, self.written - first), min(data.shape[1], end - first)
        if hi > lo:
            self._write(data[:, lo:hi])

    def _write(self, samples: np.ndarray) -> None:
        import av

        if not samples.shape[1]:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples), format=self.sample_format, layout=self.out_stream.layout.name
        )
        frame.sample_rate = self.rate
        frame.pts = self.written
        frame.time_base = Fraction(1, self.rate)
        self.written += samples.shape[1]
        self.out.mux(self.out_stream.encode(frame))

    def finish(self, video_time: float) -> None:
        self.mux_until(video_time)
        if not self.copy:
            end = round(float(video_time) * self.rate)
            for piece in self.resampler.resample(None):
                self._write_piece(piece, end)
            if end > self.written:  # the source's audio ends early: silence to the end
                self._write(np.zeros((self.channels, end - self.written), np.dtype(_PLANAR_DTYPES[self.sample_format])))
            self.out.mux(self.out_stream.encode(None))
        self.src.close()


_PLANAR_DTYPES = {"u8p": "u1", "s16p": "<i2", "s32p": "<i4", "fltp": "<f4", "dblp": "<f8"}


def _stream_end(stream) -> float | None:
    """Container time (s) where a stream ends, from its header; None when not recorded."""
    if stream.start_time is None or not stream.time_base:
        return None
    duration = announced_duration(stream)
    return None if duration is None else float(stream.start_time * stream.time_base) + duration


def write_png_sequence(
    frames: Frames, directory: str | os.PathLike, fps: Fraction | int | float | str | None = None
) -> Path:
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
