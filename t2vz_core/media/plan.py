"""Which source frames to decode and at what size: resampling by real timestamps.

Output frame k is shown at T_k = start + k / fps (exact Fractions: 29.97 fps stays
30000/1001). It takes the source frame on screen at T_k, i.e. the last frame whose time
is <= T_k. So 60 -> 15 fps picks every 4th frame, 30 -> 60 repeats each frame, and a
variable-rate file becomes constant-rate without drift.

Sizes are display sizes (non-square pixels stretched, see VideoInfo). They keep the display
aspect ratio with both sides multiples of 8 (what the diffusion engine needs); `crop` /
`pad` give an exact width x height instead.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction

from t2vz_core.errors import InputError
from t2vz_core.media.geometry import Geometry
from t2vz_core.media.probe import VideoInfo
from t2vz_core.rates import to_fraction

FITS = ("keep", "crop", "pad")
MULTIPLE = 8
MAX_OUTPUT_SIDE = 8192


@dataclass(frozen=True)
class DecodeSpec:
    """What a job asks for. start/end in seconds from the first frame; fps exact or None
    (source rate); resolution = target long side; width/height exact sizes (crop/pad) or
    a box to fit in (keep). Nothing about size given: frames keep the source size."""

    start: float | None = None
    end: float | None = None
    fps: Fraction | float | int | str | None = None
    max_frames: int | None = None
    resolution: int | None = None
    width: int | None = None
    height: int | None = None
    fit: str = "keep"


@dataclass(frozen=True)
class DecodePlan:
    """indices: source frame numbers (presentation order, may repeat); timestamps: the
    source times of those frames (s); start: source time of output frame 0 (pass it as
    encode_video(audio_start=...)); width/height: output size."""

    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    fps: Fraction
    width: int
    height: int
    start: float = 0.0
    geometry: Geometry = Geometry()
    info: VideoInfo | None = field(default=None, repr=False, compare=False)

    @property
    def frame_count(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def duration(self) -> float:
        return float(len(self.indices) / self.fps)

    def output_times(self) -> list[Fraction]:
        return [Fraction(self.start) + k / self.fps for k in range(len(self.indices))]


def plan_decode(info: VideoInfo, spec: DecodeSpec | None = None) -> DecodePlan:
    """Resolve a spec against a probed file; InputError names the bad parameter."""
    spec = spec or DecodeSpec()
    fps = to_fraction(spec.fps, "fps") if spec.fps is not None else info.fps
    start, end = _time_range(info, spec)
    if spec.max_frames is not None and (not isinstance(spec.max_frames, int) or spec.max_frames < 1):
        raise InputError(f"max_frames: {spec.max_frames!r} must be a whole number >= 1")
    out_start = Fraction(start).limit_denominator(10**6)
    limit = spec.max_frames if spec.max_frames is not None else float("inf")
    frame_at, time_of = _clock(info)
    indices: list[int] = []
    k = 0
    while len(indices) < limit:
        t = out_start + k / fps
        if t >= end:
            break
        indices.append(frame_at(t))
        k += 1
    if not indices:
        raise InputError(
            f"{info.path}: the time range {float(start):.3f}-{float(end):.3f} s holds no frame at {float(fps):.3f} fps"
        )
    width, height, geometry = _geometry(info, spec)
    return DecodePlan(
        indices=tuple(indices),
        timestamps=tuple(float(time_of(i)) for i in indices),
        fps=fps,
        width=width,
        height=height,
        start=float(out_start),
        geometry=geometry,
        info=info,
    )


def _time_range(info: VideoInfo, spec: DecodeSpec) -> tuple[Fraction, Fraction]:
    duration = Fraction(info.duration).limit_denominator(10**6)
    start = _seconds(spec.start, "start") if spec.start is not None else Fraction(0)
    end = _seconds(spec.end, "end") if spec.end is not None else duration
    if start < 0:
        raise InputError(f"start: {spec.start} s must be >= 0")
    if start >= duration:
        raise InputError(f"start: {float(start):g} s is at or past the end of {info.path} ({info.duration:.3f} s)")
    if end <= start:
        raise InputError(f"end: {float(end):g} s must be after start ({float(start):g} s)")
    return start, min(end, duration)


def _seconds(value, name: str) -> Fraction:
    try:
        seconds = Fraction(value).limit_denominator(10**6)
    except (TypeError, ValueError):
        raise InputError(f"{name}: {value!r} is not a number of seconds") from None
    return seconds


def _clock(info: VideoInfo):
    """(frame on screen at time t, time of frame i), both exact.

    Constant rate: frame i is at i / fps exactly (the probed rate is exact), which also
    undoes timestamps rounded to a coarse container clock (29.97 fps in WebM milliseconds).
    Variable rate: the real timestamps, with half a clock tick of slack for that rounding.
    """
    last = info.frame_count - 1
    if not info.is_vfr or len(info.pts) < 2:
        return (lambda t: min(last, math.floor(t * info.fps))), (lambda i: i / info.fps)
    ticks = [p - info.pts[0] for p in info.pts]
    slack = Fraction(1, 2)

    def frame_at(t: Fraction) -> int:
        return max(0, bisect.bisect_right(ticks, t / info.time_base + slack) - 1)

    return frame_at, (lambda i: ticks[i] * info.time_base)


def _geometry(info: VideoInfo, spec: DecodeSpec) -> tuple[int, int, Geometry]:
    src_w, src_h = info.width, info.height  # upright display size
    fit = spec.fit
    if fit not in FITS:
        raise InputError(f"fit: {fit!r} must be one of {', '.join(FITS)}")
    for name in ("resolution", "width", "height"):
        value = getattr(spec, name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not MULTIPLE <= value <= MAX_OUTPUT_SIDE
        ):
            raise InputError(
                f"{name}: {value!r} must be a whole number of pixels between {MULTIPLE} and {MAX_OUTPUT_SIDE}"
            )
    for name in ("width", "height"):
        value = getattr(spec, name)
        if value is not None and value % MULTIPLE:
            raise InputError(f"{name}: {value} must be a multiple of {MULTIPLE}")
    if spec.resolution is not None and (spec.width is not None or spec.height is not None):
        raise InputError("give either resolution (long side) or width/height, not both")
    rot = info.rotation
    if fit in ("crop", "pad"):
        if spec.width is None or spec.height is None:
            raise InputError(f"fit={fit!r} needs both width and height")
        box_w, box_h = spec.width, spec.height
        if fit == "crop":
            scale = max(box_w / src_w, box_h / src_h)
            rw, rh = max(box_w, round(src_w * scale)), max(box_h, round(src_h * scale))
            crop = ((rw - box_w) // 2, (rh - box_h) // 2, box_w, box_h)
            return box_w, box_h, Geometry(rot, (rw, rh), crop, None)
        scale = min(box_w / src_w, box_h / src_h)
        rw, rh = min(box_w, max(1, round(src_w * scale))), min(box_h, max(1, round(src_h * scale)))
        left, top = (box_w - rw) // 2, (box_h - rh) // 2
        pad = (left, top, box_w - rw - left, box_h - rh - top)
        return box_w, box_h, Geometry(rot, (rw, rh), None, pad if any(pad) else None)
    if spec.resolution is not None:
        scale = spec.resolution / max(src_w, src_h)
    elif spec.width is not None and spec.height is not None:
        scale = min(spec.width / src_w, spec.height / src_h)
    elif spec.width is not None:
        scale = spec.width / src_w
    elif spec.height is not None:
        scale = spec.height / src_h
    else:  # the display size: frames with non-square pixels are stretched to it
        resize = None if (src_w, src_h) == info.stored_size else (src_w, src_h)
        return src_w, src_h, Geometry(rot, resize, None, None)
    w, h = _round8(src_w * scale), _round8(src_h * scale)
    if spec.width is not None and spec.height is not None:
        w, h = min(w, spec.width), min(h, spec.height)
    resize = None if (w, h) == info.stored_size else (w, h)
    return w, h, Geometry(rot, resize, None, None)


def _round8(x: float) -> int:
    return max(MULTIPLE, int(round(x / MULTIPLE)) * MULTIPLE)
