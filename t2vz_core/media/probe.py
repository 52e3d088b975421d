"""Probe a media file with PyAV: exact rate, real frame count and timestamps, rotation, audio.

The frame count and timestamps come from demuxing every video packet (no decoding), not
from the header: headers of truncated files over-report their frames, which is what makes
decord hang (dmlc/decord#373), and variable-frame-rate files need real timestamps. Reading
the packets costs about one read of the file, small next to any diffusion work.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from t2vz_core.errors import MediaError
from t2vz_core.rates import snap_rate

log = logging.getLogger(__name__)

MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class VideoInfo:
    """What a decode plan needs to know about a file.

    width/height are the upright display size (after rotation, and with non-square pixels
    stretched to the display aspect as players do: a 64x48 frame with a 3:2 sample aspect
    ratio shows as 96x48; coded_width/coded_height are the stored size); rotation is the clockwise
    turn in degrees (0/90/180/270) that makes decoded frames upright, like the legacy
    `rotate` tag. `pts` are the presentation timestamps of all frames in `time_base`
    units, sorted (frame index i = i-th frame in presentation order, as in decord).
    `pix_fmt` is the decoded pixel format (e.g. "yuv420p", "yuv420p10le"): it decides
    whether decord converts to RGB exactly as PyAV does (decode.decord_mismatch).
    """

    path: Path
    fps: Fraction
    frame_count: int
    duration: float
    width: int
    height: int
    rotation: int
    has_audio: bool
    codec: str
    container: str = ""
    is_vfr: bool = False
    coded_width: int = 0
    coded_height: int = 0
    audio_codec: str | None = None
    time_base: Fraction = Fraction(1, 1)
    pix_fmt: str = ""
    metadata: dict = field(default_factory=dict, repr=False, compare=False)
    pts: tuple[int, ...] = field(default=(), repr=False, compare=False)
    sample_aspect_ratio: Fraction = Fraction(1)

    @property
    def stored_size(self) -> tuple[int, int]:
        """Upright size of the decoded frames before any resize: the coded size, turned."""
        w, h = (self.coded_width, self.coded_height) if self.coded_width else (self.width, self.height)
        if self.coded_width and self.rotation in (90, 270):
            w, h = h, w
        return w, h

    def frame_times(self) -> list[Fraction]:
        """Exact time of every frame in seconds, the first frame at 0."""
        first = self.pts[0]
        return [(p - first) * self.time_base for p in self.pts]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file, or raise MediaError naming the file and what is wrong."""
    import av

    path = Path(path)
    if not path.exists():
        raise MediaError(path, "no such file")
    if path.is_dir():
        raise MediaError(path, "is a folder, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        hint = (
            " - or a truncated MP4 whose index (moov) is missing"
            if path.suffix.lower() in (".mp4", ".mov", ".m4v")
            else ""
        )
        raise MediaError(path, f"not a readable media file ({_reason(exc)}{hint})") from None
    with container:
        kinds = [s.type for s in container.streams]
        if not container.streams.video:
            raise MediaError(path, f"has no video stream (streams: {', '.join(kinds) or 'none'})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise MediaError(path, "video stream has no frame size (unsupported or corrupt)")
        if max(ctx.width, ctx.height) > MAX_SIDE or ctx.width * ctx.height > MAX_PIXELS:
            raise MediaError(
                path,
                f"frame size {ctx.width}x{ctx.height} is too large (limits: {MAX_SIDE} px a side, {MAX_PIXELS} pixels)",
            )
        pts, corrupt, last_duration = _demux_video(container, stream, path)
        if not pts:
            raise MediaError(path, "has no video frames")
        if corrupt or (stream.frames and stream.frames > len(pts)):
            announced = f"header announces {stream.frames} frames, " if stream.frames else ""
            raise MediaError(path, f"truncated or corrupt: {announced}{len(pts)} readable")
        fps, is_vfr = _frame_rate(stream, pts)
        tb = stream.time_base or Fraction(1, 1)
        span = (pts[-1] - pts[0]) * tb
        tail = last_duration * tb if last_duration else 1 / fps
        duration = float(len(pts) / fps if not is_vfr else span + tail)
        announced = announced_duration(stream)
        if announced and announced - duration > max(2 / fps, announced * 0.01):
            raise MediaError(path, f"truncated: header announces {announced:.2f} s of video, {duration:.2f} s readable")
        rotation, pix_fmt = _first_frame(path)
        audio = container.streams.audio[0] if container.streams.audio else None
        sar = _sample_aspect_ratio(stream)
        width, height = ctx.width, ctx.height
        if sar != 1:  # non-square pixels: the display is wider or narrower than the storage
            width = max(1, round(ctx.width * sar))
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            path=path,
            fps=fps,
            frame_count=len(pts),
            duration=duration,
            width=width,
            height=height,
            rotation=rotation,
            has_audio=audio is not None,
            codec=ctx.name,
            container=container.format.name,
            is_vfr=is_vfr,
            coded_width=ctx.width,
            coded_height=ctx.height,
            audio_codec=audio.codec_context.name if audio is not None else None,
            time_base=Fraction(tb),
            pix_fmt=pix_fmt,
            metadata=dict(container.metadata),
            pts=tuple(pts),
            sample_aspect_ratio=sar,
        )


def _sample_aspect_ratio(stream) -> Fraction:
    """The pixel aspect ratio, container first (as FFmpeg guesses it); 1 when unset or absurd."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar and Fraction(1, 8) <= sar <= 8:
            return Fraction(sar)
    return Fraction(1)


def announced_duration(stream) -> float | None:
    """A stream's duration as its header promises it (MP4 track duration, Matroska DURATION tag)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    text = stream.metadata.get("DURATION")
    if text:
        try:
            h, m, sec = text.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return None
    return None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _demux_video(container, stream, path) -> tuple[list[int], bool, int]:
    """Presentation timestamps of every video packet, whether one was flagged corrupt,
    and the duration of the last one."""
    import av

    pts: list[int] = []
    corrupt = False
    last_duration = 0
    count_only = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            corrupt = corrupt or packet.is_corrupt
            if packet.pts is None:
                count_only += 1
                continue
            pts.append(packet.pts)
            last_duration = packet.duration or last_duration
    except av.error.FFmpegError as exc:
        raise MediaError(
            path, f"truncated or corrupt: demuxing failed after {len(pts) + count_only} frames ({_reason(exc)})"
        ) from None
    if count_only:  # raw streams without timestamps: synthesise a constant rate
        step = 1
        rate = stream.guessed_rate or stream.average_rate or Fraction(25)
        if stream.time_base:
            step = max(1, round(1 / (rate * stream.time_base)))
        base = pts[-1] + step if pts else 0
        pts.extend(base + i * step for i in range(count_only))
    pts.sort()
    return pts, corrupt, last_duration


def _first_frame(path: Path) -> tuple[int, str]:
    """Decode the first frame: proves the codec works, reads the display matrix (as a
    clockwise rotation) and the decoded pixel format.

    A fresh open rather than a seek back: some formats (raw streams) cannot seek.
    """
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                ccw = frame.rotation  # counter-clockwise degrees of the display matrix
                return (-int(round(ccw / 90.0)) * 90) % 360, frame.format.name
    except av.error.FFmpegError as exc:
        raise MediaError(path, f"cannot decode video: {_reason(exc)}") from None
    raise MediaError(path, "no decodable video frame")


def _frame_rate(stream, pts: list[int]) -> tuple[Fraction, bool]:
    """The exact rate (constant-rate files) or the rate to resample to (variable-rate)."""
    tb = stream.time_base or Fraction(1, 1)
    intervals = [b - a for a, b in zip(pts, pts[1:])]
    declared = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not intervals:
        return snap_rate(Fraction(declared or 25)), False
    median = statistics.median(intervals)
    # One tick of jitter is rounding (e.g. 29.97 fps in milliseconds: 33, 34, 33 ...).
    slack = max(1, median * 0.02)
    is_vfr = max(intervals) - min(intervals) > 2 * slack
    if not is_vfr:
        measured = Fraction(len(intervals)) / (Fraction(pts[-1] - pts[0]) * tb)
        for candidate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
            if candidate and abs(candidate - measured) <= measured * Fraction(1, 200):
                return snap_rate(Fraction(candidate)), False
        return snap_rate(measured.limit_denominator(1001)), False
    # Variable rate: resample to the finest rate the stream declares (r_frame_rate), which
    # keeps every frame; fall back to the mean rate when that is absurd.
    mean = (Fraction(len(intervals)) / (Fraction(pts[-1] - pts[0]) * tb)).limit_denominator(1001)
    base = stream.base_rate or stream.guessed_rate
    if base and mean <= base <= 120:
        return snap_rate(Fraction(base)), True
    return snap_rate(mean), True
