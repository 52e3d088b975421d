"""CSV manifests: one `Job` per row, every bad cell reported at once, valid rows still returned.

`manifests/README.md` is the user-facing reference (columns, defaults, modes, examples); keep the
two in step. The manifest layer never loads a model: SDXL-ness is decided later, so an empty
`controlnet` stays None and `default_controlnet(mode, family)` picks one once the family is known.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from t2vz_core.errors import InputError
from t2vz_core.paths import (
    RealRoots,
    check_job_id,
    check_model_ref,
    check_revision,
    resolve_allowed_roots,
    resolve_source,
)

Mode = Literal["text2video", "pose", "canny", "depth", "pix2pix"]
MODES: tuple[str, ...] = ("text2video", "pose", "canny", "depth", "pix2pix")
CONTROLNET_MODES = frozenset({"pose", "canny", "depth"})
SOURCE_MODES = frozenset({"pose", "canny", "depth", "pix2pix"})
OUTPUT_FORMATS: tuple[str, ...] = ("mp4", "webm", "gif", "png")
FITS: tuple[str, ...] = ("keep", "crop", "pad")

# Every column a manifest may have, in the order `t2vz scan` and the README use.
COLUMNS: tuple[str, ...] = (
    "job_id", "mode", "source", "control", "prompt", "negative_prompt", "model", "revision",
    "controlnet", "controlnet_conditioning_scale", "seed", "num_inference_steps", "guidance_scale",
    "image_guidance_scale", "chunk_size", "resolution", "width", "height", "fit", "fps", "start",
    "end", "max_frames", "video_length", "motion_field_strength_x", "motion_field_strength_y",
    "t0", "t1", "output", "refresh",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("job_id", "mode", "prompt")

# Defaults from the Text2Video-Zero paper / diffusers pipelines.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_PIX2PIX_MODEL = "timbrooks/instruct-pix2pix"
_CONTROLNETS = {
    "sd": {"pose": "lllyasviel/sd-controlnet-openpose", "canny": "lllyasviel/sd-controlnet-canny",
           "depth": "lllyasviel/sd-controlnet-depth"},
    "sdxl": {"pose": "thibaud/controlnet-openpose-sdxl-1.0", "canny": "diffusers/controlnet-canny-sdxl-1.0",
             "depth": "diffusers/controlnet-depth-sdxl-1.0"},
}
DEFAULT_SEED = 0
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
DEFAULT_IMAGE_GUIDANCE = 1.5
DEFAULT_CONTROLNET_SCALE = 1.0
DEFAULT_CHUNK_SIZE = 8
DEFAULT_RESOLUTION = 512
DEFAULT_VIDEO_LENGTH = 8
DEFAULT_MOTION = 12.0
DEFAULT_TEXT2VIDEO_FPS = 4.0  # the diffusers Text2Video-Zero example writes its 8 frames at 4 fps
DEFAULT_T0, DEFAULT_T1 = 44, 47  # of 50 steps, i.e. fractions 0.88 and 0.94 of the schedule

# Cells that only some modes use. "Structural" ones in the wrong mode mean the row was
# misunderstood (an error); the others are tuning knobs that are ignored with a warning.
APPLIES_TO: dict[str, frozenset[str]] = {
    "source": SOURCE_MODES, "control": CONTROLNET_MODES, "controlnet": CONTROLNET_MODES,
    "controlnet_conditioning_scale": CONTROLNET_MODES, "image_guidance_scale": frozenset({"pix2pix"}),
    "fit": SOURCE_MODES, "start": SOURCE_MODES, "end": SOURCE_MODES, "max_frames": SOURCE_MODES,
    "video_length": frozenset({"text2video"}), "motion_field_strength_x": frozenset({"text2video"}),
    "motion_field_strength_y": frozenset({"text2video"}), "t0": frozenset({"text2video"}),
    "t1": frozenset({"text2video"}),
}
STRUCTURAL = frozenset({"source", "control", "controlnet", "video_length"})

# (min, max) per numeric column; sizes must also be multiples of 8.
BOUNDS: dict[str, tuple[float, float]] = {
    "seed": (0, 2**63 - 1), "num_inference_steps": (1, 1000), "guidance_scale": (0, 100),
    "image_guidance_scale": (0, 100), "controlnet_conditioning_scale": (0, 10), "chunk_size": (2, 10_000),
    "resolution": (64, 2048), "width": (64, 2048), "height": (64, 2048), "fps": (0.1, 240),
    "start": (0, 864_000), "end": (0, 864_000), "max_frames": (1, 10_000), "video_length": (1, 10_000),
    "motion_field_strength_x": (-512, 512), "motion_field_strength_y": (-512, 512), "t0": (0, 999), "t1": (0, 999),
}
INT_FIELDS = ("seed", "num_inference_steps", "chunk_size", "resolution", "width", "height", "max_frames",
              "video_length", "t0", "t1")
FLOAT_FIELDS = ("guidance_scale", "image_guidance_scale", "controlnet_conditioning_scale", "fps",
                "motion_field_strength_x", "motion_field_strength_y")
SIZE_FIELDS = frozenset({"resolution", "width", "height"})
MAX_PROMPT_CHARS = 10_000
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

_INT_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FRACTION_RE = re.compile(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)")
_CLOCK_RE = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)")
_TRUE = frozenset({"1", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "no", "n", "off"})


def default_model(mode: str) -> str:
    """The base model a row gets when its `model` cell is empty."""
    return DEFAULT_PIX2PIX_MODEL if mode == "pix2pix" else DEFAULT_MODEL


def default_controlnet(mode: str, family: str) -> str | None:
    """The ControlNet for `mode` once the base model's family ("sd" or "sdxl") is known; None if unused."""
    if mode not in CONTROLNET_MODES:
        return None
    if family not in _CONTROLNETS:
        raise InputError(f"no default ControlNet for a {family!r} model in mode {mode!r}: set the controlnet column")
    return _CONTROLNETS[family][mode]


def default_t0_t1(num_inference_steps: int) -> tuple[int, int]:
    """44/47 at 50 steps, scaled for other step counts so that 0 <= t0 < t1 <= steps-1 still holds."""
    t1 = min(num_inference_steps - 1, round(0.94 * num_inference_steps))
    t0 = min(t1 - 1, round(0.88 * num_inference_steps))
    return t0, t1


# ---------------------------------------------------------------- strict cell parsers

def _describe(value: Any) -> str:
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
        raise ValueError(f"{name} must be a whole number, got {_describe(value)}")
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
        raise ValueError(f"{name} must be a number, got {_describe(value)}{hint}")
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {_describe(value)}")
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
    raise ValueError(f"{name} must be true or false (also yes/no, 1/0), got {_describe(value)}")


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


Problem = tuple[str | None, str, frozenset[str]]  # (column, message, columns the rule depends on)


class _RowProblems(ValueError):
    """Cross-column problems of one row, raised from the model validator and unpacked by read_manifest."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{column}: {message}" if column else message for column, message, _ in problems))


def _context(info: ValidationInfo) -> tuple[str | Path, RealRoots]:
    ctx = info.context or {}
    base_dir = ctx.get("base_dir") or os.getcwd()
    return base_dir, resolve_allowed_roots(base_dir, ctx.get("allowed_roots"))


# ---------------------------------------------------------------- the model

class Job(BaseModel):
    """One manifest row, validated and with its defaults resolved.

    Parameters a row's mode does not use are None (so they never change a cache key). `source` is
    the real path of the file (confined to the allowed roots), `model`/`controlnet` a hub id or the
    real path of a local folder. `row` is the spreadsheet row (header = 1) or None when built in code.
    Construct directly in Python (`Job(job_id="a", mode="text2video", prompt="...")`) or through
    `read_manifest`; relative paths resolve against the validation context's `base_dir` (default:
    the current folder).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    mode: Mode
    prompt: str
    source: Path | None = None
    control: Literal["extract", "given"] | None = None
    negative_prompt: str = ""
    model: str = ""
    revision: str | None = None
    controlnet: str | None = None
    controlnet_conditioning_scale: float | None = None
    seed: int = DEFAULT_SEED
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    image_guidance_scale: float | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    resolution: int | None = None
    width: int | None = None
    height: int | None = None
    fit: Literal["keep", "crop", "pad"] | None = None
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
    video_length: int | None = None
    motion_field_strength_x: float | None = None
    motion_field_strength_y: float | None = None
    t0: int | None = None
    t1: int | None = None
    output: tuple[str, ...] = ("mp4",)
    refresh: bool = False
    row: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_empty(cls, data: Any) -> Any:
        """Empty cells (or None) take the default: drop them before field validation."""
        if not isinstance(data, Mapping):
            return data
        cleaned = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = value.strip()
            if value is None or (isinstance(value, str) and not value):
                continue
            cleaned[key] = value
        return cleaned

    @field_validator("job_id", mode="before")
    @classmethod
    def _job_id(cls, value: Any) -> str:
        return check_job_id(str(value))

    @field_validator("mode", "control", "fit", mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> str:
        choices = {"mode": MODES, "control": ("extract", "given"), "fit": FITS}[info.field_name]
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"unknown {info.field_name} {_describe(value)}: use one of {', '.join(choices)}")
        return text

    @field_validator("prompt", "negative_prompt", mode="before")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{info.field_name} must be text")
        text = value.strip()
        if info.field_name == "prompt" and not text:
            raise ValueError("prompt is empty (whitespace only)")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"{info.field_name} is {len(text)} characters long; at most {MAX_PROMPT_CHARS}")
        if "\x00" in text:
            raise ValueError(f"{info.field_name} contains a NUL character")
        return text

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any, info: ValidationInfo) -> str:
        base_dir, roots = _context(info)
        return str(resolve_source(value, base_dir, roots))  # str: JSON-mode validation takes no Path objects

    @field_validator("model", "controlnet", mode="before")
    @classmethod
    def _model_ref(cls, value: Any, info: ValidationInfo) -> str:
        base_dir, _ = _context(info)
        return check_model_ref(str(value), base_dir)

    @field_validator("revision", mode="before")
    @classmethod
    def _revision(cls, value: Any) -> str:
        return check_revision(str(value))

    @field_validator(*INT_FIELDS, mode="before")
    @classmethod
    def _int(cls, value: Any, info: ValidationInfo) -> int:
        return parse_int(info.field_name, value)

    @field_validator(*FLOAT_FIELDS, mode="before")
    @classmethod
    def _float(cls, value: Any, info: ValidationInfo) -> float:
        return parse_float(info.field_name, value)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _seconds(cls, value: Any, info: ValidationInfo) -> float:
        return parse_seconds(info.field_name, value)

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> tuple[str, ...]:
        return parse_outputs(value)

    @field_validator("refresh", mode="before")
    @classmethod
    def _refresh(cls, value: Any) -> bool:
        return parse_bool("refresh", value)

    @model_validator(mode="after")
    def _resolve(self) -> Job:
        """Cross-column rules, then the mode-dependent defaults."""
        problems = _cross_column_problems(self, self.model_fields_set)
        if problems:
            raise _RowProblems(problems)
        mode, given = self.mode, self.model_fields_set
        values: dict[str, Any] = {}
        for name, modes in APPLIES_TO.items():
            if mode not in modes and name not in STRUCTURAL:
                values[name] = None  # a knob this mode ignores: keep it out of cache keys
        if "model" not in given:
            values["model"] = default_model(mode)
        if mode in CONTROLNET_MODES:
            values.setdefault("control", self.control or "extract")
            if self.controlnet_conditioning_scale is None:
                values["controlnet_conditioning_scale"] = DEFAULT_CONTROLNET_SCALE
        if mode == "pix2pix" and self.image_guidance_scale is None:
            values["image_guidance_scale"] = DEFAULT_IMAGE_GUIDANCE
        if mode in SOURCE_MODES and self.fit is None:
            values["fit"] = "keep"
        if self.width is None and self.height is None and self.resolution is None:
            values["resolution"] = DEFAULT_RESOLUTION
        if mode == "text2video":
            t0, t1 = default_t0_t1(self.num_inference_steps)
            values["t0"] = t0 if self.t0 is None else self.t0
            values["t1"] = t1 if self.t1 is None else self.t1
            for name, default in (("video_length", DEFAULT_VIDEO_LENGTH), ("fps", DEFAULT_TEXT2VIDEO_FPS),
                                  ("motion_field_strength_x", DEFAULT_MOTION),
                                  ("motion_field_strength_y", DEFAULT_MOTION)):
                if getattr(self, name) is None:
                    values[name] = default
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen model: set once, during validation
        return self

    # ------------------------------------------------------------ helpers for the flows

    @property
    def outputs(self) -> list[str]:
        """Output formats in manifest order, e.g. ['mp4', 'gif']."""
        return list(self.output)

    @property
    def uses_source(self) -> bool:
        return self.mode in SOURCE_MODES

    @property
    def uses_controlnet(self) -> bool:
        return self.mode in CONTROLNET_MODES

    def controlnet_for(self, family: str) -> str | None:
        """The row's ControlNet, or the default for `family` ("sd"/"sdxl") when the cell was empty."""
        if self.mode not in CONTROLNET_MODES:
            return None
        return self.controlnet or default_controlnet(self.mode, family)

    def text2video_size(self) -> tuple[int, int]:
        """(width, height) of a text2video row: width x height, or resolution x resolution."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        side = self.resolution or DEFAULT_RESOLUTION
        return side, side

    def decode_spec_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of media's `DecodeSpec` (start, end, fps, max_frames, resolution, width, height, fit)."""
        return {
            "start": self.start, "end": self.end, "fps": self.fps, "max_frames": self.max_frames,
            "resolution": self.resolution, "width": self.width, "height": self.height, "fit": self.fit or "keep",
        }

    def decode_spec(self):
        """media's `DecodeSpec` for this row (imported lazily: the manifest layer needs no media stack)."""
        from t2vz_core.media.plan import DecodeSpec

        return DecodeSpec(**self.decode_spec_kwargs())

    def generation_kwargs(self) -> dict[str, Any]:
        """The engine `GenerationRequest` fields this row decides (not width/height, which come from decoding).

        Parameters the mode ignores are sent as their defaults (t0/t1 scaled to the step count), so
        that the request always validates; `video_length` is None except for text2video.
        """
        t0, t1 = (self.t0, self.t1) if self.t0 is not None else default_t0_t1(self.num_inference_steps)
        kwargs: dict[str, Any] = {
            "mode": self.mode,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": _or(self.image_guidance_scale, DEFAULT_IMAGE_GUIDANCE),
            "controlnet_conditioning_scale": _or(self.controlnet_conditioning_scale, DEFAULT_CONTROLNET_SCALE),
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "motion_field_strength_x": _or(self.motion_field_strength_x, DEFAULT_MOTION),
            "motion_field_strength_y": _or(self.motion_field_strength_y, DEFAULT_MOTION),
            "t0": t0,
            "t1": t1,
        }
        # None outside text2video: the frame count comes from the conditioning frames.
        kwargs["video_length"] = self.video_length if self.mode == "text2video" else None
        return kwargs

    def request(self, width: int | None = None, height: int | None = None,
                video_length: int | None = None) -> dict[str, Any]:
        """`generation_kwargs()` plus the frame size: complete kwargs for `GenerationRequest(**...)`.

        Video modes must pass the decoded width/height; text2video defaults to `text2video_size()`.
        """
        kwargs = self.generation_kwargs()
        if self.mode == "text2video":
            default_w, default_h = self.text2video_size()
            width, height = width or default_w, height or default_h
        elif width is None or height is None:
            raise InputError(f"job {self.job_id!r}: mode {self.mode} needs the decoded width and height")
        kwargs.update(width=width, height=height)
        if video_length is not None:
            kwargs["video_length"] = video_length
        return kwargs

    def cache_dict(self) -> dict[str, Any]:
        """Every parameter as JSON-able values (for cache keys and the sidecar).

        Leaves out `row` (position in the file) and `refresh` (an instruction, not a parameter:
        toggling it must not move the cache key).
        """
        return self.model_dump(mode="json", exclude={"row", "refresh"})


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _cross_column_problems(job: Job, given: set[str]) -> list[Problem]:
    """Rules that involve more than one column, each with the columns it depends on."""
    problems: list[Problem] = []
    mode = job.mode

    def add(column: str | None, message: str, *involved: str) -> None:
        problems.append((column, message, frozenset({column, "mode", *involved} - {None})))

    if mode in SOURCE_MODES and job.source is None:
        add("source", f"source is required for mode {mode} (the video to edit)")
    for name in sorted(STRUCTURAL & given):
        if mode not in APPLIES_TO[name]:
            hint = {"source": "text2video generates from the prompt alone; leave source empty or pick a video mode",
                    "video_length": "use max_frames to limit how many source frames are read"}.get(
                name, "only pose, canny and depth use a ControlNet")
            add(name, f"{name} is not used by mode {mode}: {hint}")
    one_side = (job.width is None) != (job.height is None)
    missing = "height" if job.height is None else "width"
    if one_side and mode == "text2video":
        add(missing, "text2video needs both width and height (or neither, and resolution)", "width", "height")
    elif one_side and job.fit in ("crop", "pad"):
        add(missing, f"fit={job.fit} needs both width and height", "width", "height", "fit")
    if (job.width is not None or job.height is not None) and "resolution" in given:
        add("resolution", "give either resolution (long side) or width/height, not both", "width", "height")
    if mode in SOURCE_MODES and job.start is not None and job.end is not None and job.start >= job.end:
        add("end", f"end ({job.end:g} s) must be after start ({job.start:g} s)", "start")
    if "revision" in given and os.path.isabs(job.model):
        add("revision", "revision applies to hub models; the model is a local folder", "model")
    if mode == "text2video":
        steps = job.num_inference_steps
        d0, d1 = default_t0_t1(steps)
        t0, t1 = _or(job.t0, d0), _or(job.t1, d1)
        rule = (f"need 0 <= t0 < t1 <= num_inference_steps-1 (= {steps - 1}): t0 and t1 are indices into the "
                f"{steps}-step schedule between which the first frame's latent is re-noised to make motion "
                "(defaults 44/47 of 50 steps)")
        if steps < 2:
            add("num_inference_steps", f"text2video needs at least 2 steps ({rule})", "t0", "t1")
        elif t1 > steps - 1:
            add("t1", f"t1={t1} is too large for num_inference_steps={steps}; {rule}", "t0", "num_inference_steps")
        elif t0 >= t1:
            add("t0", f"t0={t0} must be smaller than t1={t1}; {rule}", "t1", "num_inference_steps")
    return problems


# ---------------------------------------------------------------- reading a CSV

@dataclass(frozen=True)
class ManifestError:
    """One problem with one row (or the header, row 1). `row` counts like a spreadsheet: header = 1."""

    row: int
    column: str | None
    message: str
    job_id: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        job = f" (job {self.job_id!r})" if self.job_id else ""
        return f"{where}{job}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message, "job_id": self.job_id}


class ManifestFileError(InputError):
    """The manifest as a whole is unusable (unreadable, empty, not UTF-8, bad header): CLI exit code 2."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}, line {line}" if line else self.path
        super().__init__(f"{where}: {reason}")


@dataclass
class Manifest:
    """The result of `read_manifest`: valid jobs, every row error, warnings (ignored cells)."""

    path: Path
    jobs: list[Job] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[ManifestError] = field(default_factory=list)
    row_count: int = 0  # non-blank data rows

    @property
    def ok(self) -> bool:
        return not self.errors

    def errors_by_row(self) -> dict[int, list[ManifestError]]:
        rows: dict[int, list[ManifestError]] = {}
        for error in self.errors:
            rows.setdefault(error.row, []).append(error)
        return rows


_EXTRA_CELLS = "\x00t2vz-extra-cells:"
_COLUMN_ORDER = {name: index for index, name in enumerate(COLUMNS)}


def _decode(path: Path, data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ManifestFileError(path, "the file is UTF-16 encoded; save it as CSV UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start:exc.start + 4]
        raise ManifestFileError(
            path, f"not valid UTF-8 at byte offset {exc.start} (line {line}, character {column}: {bad!r}); "
            "save the file as CSV UTF-8", line=line) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestFileError(path, "contains a NUL character: is this a binary file?", line=line)
    return text


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ManifestFileError(path, "is a folder, not a CSV file")
        if size > MAX_MANIFEST_BYTES:
            raise ManifestFileError(path, f"is {size} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes")
        data = path.read_bytes()
    except ManifestFileError:
        raise
    except OSError as exc:
        raise ManifestFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    text = _decode(path, data)
    if not text.strip():
        raise ManifestFileError(path, "the file is empty: expected a header row such as 'job_id,mode,prompt,source'")
    return text


def _check_header(path: Path, names: list[str]) -> dict[int, str]:
    """Map column index -> column name ("" for a nameless one); raise one ManifestFileError for every header problem."""
    problems: list[str] = []
    mapping: dict[int, str] = {}
    seen: dict[str, int] = {}
    for index, raw in enumerate(names):
        name = raw.strip().lower()
        if not name:
            mapping[index] = ""  # spreadsheets export trailing empty columns; data there is a row error
            continue
        if name.startswith("#"):
            continue  # a comment column, for the user's notes
        if name in seen:
            problems.append(f"column {name!r} appears twice (columns {seen[name] + 1} and {index + 1})")
            continue
        seen[name] = index
        if name not in _COLUMN_ORDER:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown column {raw.strip()!r}{hint}")
            continue
        mapping[index] = name
    missing = [name for name in REQUIRED_COLUMNS if name not in seen]
    if missing:
        problems.append(f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            problems.append("the header has a single column: is the file separated by ';' or tabs? t2vz reads commas")
    if problems:
        raise ManifestFileError(
            path, "bad header row: " + "; ".join(problems)
            + f". Known columns: {', '.join(COLUMNS)}; prefix a column with '#' to keep notes", line=1)
    return mapping


def _problems(exc: ValidationError) -> tuple[list[Problem], set[str]]:
    """All problems of a ValidationError, and the columns whose own cell failed."""
    problems: list[Problem] = []
    failed: set[str] = set()
    for detail in exc.errors():
        error = (detail.get("ctx") or {}).get("error")
        if isinstance(error, _RowProblems):
            problems.extend(error.problems)
        else:
            column, message = _field_message(detail, error)
            problems.append((column, message, frozenset({column} - {None})))
            failed.add(column or "")
    return problems, failed


def _field_message(detail: Mapping[str, Any], error: BaseException | None) -> tuple[str | None, str]:
    column = str(detail["loc"][0]) if detail.get("loc") else None
    if error is not None:
        message = str(error)
    elif detail["type"] == "missing":
        message = f"{column} is required (the cell is empty)"
    else:
        message = str(detail["msg"])
    return column, message


def _validate_row(cells: dict[str, str], row: int, context: dict[str, Any]) -> tuple[Job | None, list[Problem]]:
    """Validate one row: a Job, or every problem of the row (field errors and cross-column rules)."""
    try:
        return Job.model_validate({**cells, "row": row}, context=context), []
    except ValidationError as exc:
        problems, failed = _problems(exc)
    if failed and "mode" not in failed:
        # Field errors stop pydantic before the cross-column rules: run those again without the
        # failed cells, keeping only rules that do not depend on a failed (hence defaulted) cell.
        try:
            Job.model_validate({k: v for k, v in cells.items() if k not in failed}, context=context)
        except ValidationError as exc:
            more, _ = _problems(exc)
            problems.extend(p for p in more if len(p[2]) > 1 and not p[2] & failed)
    return None, problems


def _check_csv_structure(path: Path, text: str) -> list[str]:
    """Return the header; raise for what pandas' python engine would silently drop with a
    callable on_bad_lines (an unclosed quote swallowing the rest of the file, a huge cell)."""
    reader = csv.reader(io.StringIO(text), strict=True)  # the rules of pandas' python engine
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            header = record if header is None else header
            start = reader.line_num + 1
    except csv.Error as exc:
        hint = " (a quote that is never closed?)" if "end of data" in str(exc) else ""
        raise ManifestFileError(path, f"not a readable CSV file: {exc}{hint}; the record starts at line {start}",
                                line=start) from None
    return header or []


def _iter_records(path: Path, text: str, chunk_rows: int = 2000) -> Iterable[list[str]]:
    """CSV records as lists of strings (pandas, every cell a string, "NaN" kept as text).

    A record with more cells than the header comes back cut to the header's width with a marker
    in its last cell, so that it keeps its place (and row number) and can be reported.
    """
    width = max(len(_check_csv_structure(path, text)), 1)

    def extra_cells(cells: list[str]) -> list[str]:
        kept = cells[:width]
        kept[-1] = f"{_EXTRA_CELLS}{len(cells) - width}"
        return kept

    try:
        reader = pd.read_csv(
            io.StringIO(text), header=None, names=range(width), index_col=False, dtype=str, keep_default_na=False,
            na_filter=False, skip_blank_lines=False, engine="python", on_bad_lines=extra_cells,
            chunksize=chunk_rows,
        )
        for chunk in reader:
            for record in chunk.itertuples(index=False, name=None):
                yield ["" if isinstance(cell, float) else cell for cell in record]
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        match = re.search(r"(?:line|row) (\d+)", str(exc))
        raise ManifestFileError(path, f"not a readable CSV file: {exc}",
                                line=int(match[1]) if match else None) from None


def read_manifest(path: str | os.PathLike[str],
                  allowed_roots: Iterable[str | os.PathLike[str]] | None = None) -> Manifest:
    """Read and validate a CSV manifest.

    Returns every valid row as a `Job` and every problem as a `ManifestError` (all bad cells of
    all rows at once; a row with any error is skipped). Raises `ManifestFileError` when the file
    as a whole is unusable: unreadable, empty, not UTF-8, no header, unknown/duplicate/missing
    columns. Sources must lie inside `allowed_roots` (default: T2VZ_ALLOWED_ROOTS, else the
    manifest's folder); relative paths resolve against the manifest's folder.
    """
    path = Path(path)
    text = _read_text(path)
    base_dir = path.resolve().parent
    context = {"base_dir": base_dir, "allowed_roots": resolve_allowed_roots(base_dir, allowed_roots)}
    manifest = Manifest(path=path)
    records = iter(_iter_records(path, text))
    mapping = _check_header(path, next(records))
    seen_ids: dict[str, tuple[int, str]] = {}
    for offset, record in enumerate(records):
        row = offset + 2
        if not any(cell.strip() for cell in record):
            continue  # a blank line or an empty spreadsheet row
        manifest.row_count += 1
        cells = {name: record[index] for index, name in mapping.items() if name and index < len(record)}
        raw_id = cells.get("job_id", "").strip()[:128] or None
        extra = next((cell for cell in record if cell.startswith(_EXTRA_CELLS)), None)
        if extra is not None:
            count = extra[len(_EXTRA_CELLS):]
            manifest.errors.append(ManifestError(row, None, f"the row has {count} more cell(s) than the header: "
                                                 "an unquoted comma? Quote cells that contain commas", raw_id))
            continue
        nameless = [index + 1 for index, name in mapping.items() if not name and record[index].strip()]
        if nameless:
            manifest.errors.append(ManifestError(row, None, f"cell(s) in column(s) {nameless} have no column name "
                                                 "in the header", raw_id))
            continue
        mode = cells.get("mode", "").strip().lower()
        for name, modes in APPLIES_TO.items():
            if mode in MODES and mode not in modes and name not in STRUCTURAL and cells.get(name, "").strip():
                manifest.warnings.append(ManifestError(
                    row, name, f"{name} is ignored in mode {mode} (value {cells[name].strip()!r})", raw_id))
                cells[name] = ""
        job, problems = _validate_row(cells, row, context)
        if raw_id and "job_id" not in {column for column, _, _ in problems}:
            first = seen_ids.setdefault(raw_id.lower(), (row, raw_id))
            if first[0] != row:
                same = "" if first[1] == raw_id else f" as {first[1]!r}, ignoring case"
                problems.append(("job_id", f"duplicate job_id {raw_id!r}: already used in row {first[0]}{same} "
                                 "(outputs are named after it)", frozenset()))
                job = None
        problems.sort(key=lambda p: _COLUMN_ORDER.get(p[0] or "", -1))
        manifest.errors.extend(ManifestError(row, column, message, raw_id) for column, message, _ in problems)
        if job is not None:
            manifest.jobs.append(job)
    if manifest.row_count == 0:
        manifest.warnings.append(ManifestError(1, None, "the manifest has a header but no job rows"))
    _drop_output_collisions(manifest, seen_ids)
    manifest.errors.sort(key=lambda e: (e.row, _COLUMN_ORDER.get(e.column or "", -1)))
    return manifest


def _drop_output_collisions(manifest: Manifest, seen_ids: dict[str, tuple[int, str]]) -> None:
    """A job named 'a.json' would overwrite job 'a''s sidecar (and 'a.mp4' its video): refuse it."""
    suffixes = (*OUTPUT_FORMATS, "json")
    bad: set[str] = set()
    for job in manifest.jobs:
        stem, dot, ext = job.job_id.lower().rpartition(".")
        if dot and ext in suffixes and stem in seen_ids:
            other_row, other_id = seen_ids[stem]
            manifest.errors.append(ManifestError(
                job.row or 0, "job_id", f"job_id {job.job_id!r} collides with the .{ext} output of job "
                f"{other_id!r} (row {other_row}); rename one of them", job.job_id))
            bad.add(job.job_id)
    if bad:
        manifest.jobs = [job for job in manifest.jobs if job.job_id not in bad]


def format_errors(errors: Iterable[ManifestError], path: str | os.PathLike[str] | None = None) -> str:
    """One line per problem, ready for a terminal: 'demo.csv: row 3, column seed (job 'a'): ...'."""
    prefix = f"{Path(path).name}: " if path is not None else ""
    ordered = sorted(errors, key=lambda e: (e.row, _COLUMN_ORDER.get(e.column or "", -1)))
    return "\n".join(f"{prefix}{error}" for error in ordered)
