"""Strict parsers for single cells, with the bounds of every numeric column.

Each parser raises ValueError with a message naming the column; pydantic turns it into a row error.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from t2vz_core.manifest.columns import OUTPUT_FORMATS

# (min, max) per numeric column; sizes must also be multiples of 8.
BOUNDS: dict[str, tuple[float, float]] = {
    "seed": (0, 2**63 - 1),
    "num_inference_steps": (1, 1000),
    "guidance_scale": (0, 100),
    "image_guidance_scale": (0, 100),
    "controlnet_conditioning_scale": (0, 10),
    "chunk_size": (2, 10_000),
    "resolution": (64, 2048),
    "width": (64, 2048),
    "height": (64, 2048),
    "fps": (0.1, 240),
    "start": (0, 864_000),
    "end": (0, 864_000),
    "max_frames": (1, 10_000),
    "video_length": (1, 10_000),
    "motion_field_strength_x": (-512, 512),
    "motion_field_strength_y": (-512, 512),
    "t0": (0, 999),
    "t1": (0, 999),
    "low_threshold": (1, 255),
    "high_threshold": (1, 255),
    "shot_threshold": (1, 255),
    "min_shot_frames": (1, 10_000),
    "qc_max_warp_ratio": (0.1, 1000),
}
INT_FIELDS = (
    "seed",
    "num_inference_steps",
    "chunk_size",
    "resolution",
    "width",
    "height",
    "max_frames",
    "video_length",
    "t0",
    "t1",
    "low_threshold",
    "high_threshold",
    "min_shot_frames",
)
FLOAT_FIELDS = (
    "guidance_scale",
    "image_guidance_scale",
    "controlnet_conditioning_scale",
    "fps",
    "motion_field_strength_x",
    "motion_field_strength_y",
    "shot_threshold",
    "qc_max_warp_ratio",
)
SIZE_FIELDS = frozenset({"resolution", "width", "height"})
MAX_PROMPT_CHARS = 10_000

_INT_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FRACTION_RE = re.compile(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)")
_CLOCK_RE = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)")
_TRUE = frozenset({"1", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "no", "n", "off"})


def describe(value: Any) -> str:
    """A cell's repr, cut to 60 characters, for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_bounds(name: str, value: float) -> None:
    low, high = BOUNDS[name]
    if not low <= value <= high:
        raise ValueError(f"{name} {value:g} is out of range: expected {low:g} to {high:g}")
    if name in SIZE_FIELDS and value % 8:
        raise ValueError(f"{name} {value} must be a multiple of 8 (e.g. {int(value) // 8 * 8 or 8})")


def parse_int(name: str, value: Any) -> int:
    """An integer cell: '12' or '12.0'; refuses '1.5', 'abc', NaN, inf, booleans."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if isinstance(value, numbers.Integral):
        result = int(value)
    elif isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        result = int(value)
    elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        result = int(value.strip().split(".")[0])
    else:
        raise ValueError(f"{name} must be a whole number, got {describe(value)}")
    _check_bounds(name, result)
    return result


def parse_float(name: str, value: Any) -> float:
    """A number cell: '7.5', '1e-2', '30000/1001'; refuses 'abc', NaN, inf, '7,5'."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if isinstance(value, numbers.Real):
        result = float(value)
    elif isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        result = float(value.strip())
    elif isinstance(value, str) and (match := _FRACTION_RE.fullmatch(value.strip())) and float(match[2]):
        result = float(match[1]) / float(match[2])
    else:
        hint = " (use '.' as the decimal separator)" if isinstance(value, str) and "," in value else ""
        raise ValueError(f"{name} must be a number, got {describe(value)}{hint}")
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {describe(value)}")
    _check_bounds(name, result)
    return result


def parse_seconds(name: str, value: Any) -> float:
    """A time cell in seconds ('12.5') or as a clock ('1:02.5', '01:00:00')."""
    if isinstance(value, str) and (match := _CLOCK_RE.fullmatch(value.strip())):
        hours, minutes, seconds = int(match[1] or 0), int(match[2]), float(match[3])
        if minutes >= 60 or seconds >= 60:
            raise ValueError(f"{name} {value!r} is not a valid time (minutes and seconds must be < 60)")
        value = hours * 3600 + minutes * 60 + seconds
    try:
        return parse_float(name, value)
    except ValueError as exc:
        raise ValueError(f"{exc} (seconds like 12.5, or a time like 1:02.5)") from None


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (also yes/no, 1/0), got {describe(value)}")


def parse_outputs(value: Any) -> tuple[str, ...]:
    """'mp4;gif' -> ('mp4', 'gif'); order kept, duplicates dropped."""
    items = value.split(";") if isinstance(value, str) else list(value)
    formats: list[str] = []
    for item in items:
        fmt = str(item).strip().lower().lstrip(".")
        if not fmt:
            continue
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(
                f"unknown output format {str(item).strip()!r}: use one or more of {', '.join(OUTPUT_FORMATS)} "
                "separated by ';'"
            )
        if fmt not in formats:
            formats.append(fmt)
    if not formats:
        raise ValueError(f"output names no format: use one or more of {', '.join(OUTPUT_FORMATS)} separated by ';'")
    return tuple(formats)
