"""`Job`: one manifest row as a validated pydantic model, with its mode-dependent defaults resolved."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from t2vz_core.manifest.cells import (
    FLOAT_FIELDS,
    INT_FIELDS,
    MAX_PROMPT_CHARS,
    describe,
    parse_bool,
    parse_float,
    parse_int,
    parse_outputs,
    parse_seconds,
)
from t2vz_core.manifest.columns import (
    APPLIES_TO,
    CONTROLNET_MODES,
    EXTRACTION_COLUMNS,
    FITS,
    MODES,
    SHOT_DETECTOR_COLUMNS,
    SOURCE_MODES,
    STRUCTURAL,
    Mode,
)
from t2vz_core.manifest.defaults import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTROLNET_SCALE,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_MOTION,
    DEFAULT_RESOLUTION,
    DEFAULT_SEED,
    DEFAULT_SHOT_THRESHOLD,
    DEFAULT_SHOTS,
    DEFAULT_STEPS,
    DEFAULT_TEXT2VIDEO_FPS,
    DEFAULT_VIDEO_LENGTH,
    default_controlnet,
    default_model,
    default_t0_t1,
)
from t2vz_core.manifest.rules import RowProblems, cross_column_problems
from t2vz_core.model_sources import (
    OWN_MODEL_COLUMNS,
    LoraWeight,
    check_scheduler,
    check_weights_ref,
    parse_lora_cell,
)
from t2vz_core.paths import (
    RealRoots,
    check_job_id,
    check_model_ref,
    check_revision,
    resolve_allowed_roots,
    resolve_source,
)


def _context(info: ValidationInfo) -> tuple[str | Path, RealRoots]:
    """(base_dir, allowed roots) from the validation context that `read_manifest` passes (default: cwd)."""
    ctx = info.context or {}
    base_dir = ctx.get("base_dir") or os.getcwd()
    return base_dir, resolve_allowed_roots(base_dir, ctx.get("allowed_roots"))


class Job(BaseModel):
    """One manifest row, validated and with its defaults resolved.

    Parameters a row's mode does not use are None (so they never change a cache key). `source` is
    the real path of the file (confined to the allowed roots), `model`/`controlnet` a hub id or the
    real path of a local folder. `row` is the spreadsheet row (header = 1) or None when built in code.
    Construct directly in Python (`Job(job_id="a", mode="text2video", prompt="...")`) or through
    `read_manifest`; relative paths resolve against the validation context's `base_dir` (default:
    the current folder).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    job_id: str
    mode: Mode
    prompt: str
    source: Path | None = None
    control: Literal["extract", "given"] | None = None
    control_backend: str | None = None
    annotator: str | None = None
    low_threshold: int | None = None
    high_threshold: int | None = None
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
    shots: Literal["auto", "none"] | None = None
    shot_threshold: float | None = None
    min_shot_frames: int | None = None
    output: tuple[str, ...] = ("mp4",)
    refresh: bool = False
    # Models users bring (t2vz_core.model_sources): LoRAs with scales, a scheduler name, a replacement
    # VAE, and the architecture configs of single-file model / ControlNet checkpoints.
    lora: tuple[LoraWeight, ...] = ()
    scheduler: str | None = None
    vae: str | None = None
    # pydantic reserves the name model_config: the field is base_model_config, its column model_config.
    base_model_config: str | None = Field(default=None, alias="model_config")
    controlnet_config: str | None = None
    # Review: the report marks the row "flagged" when its warp_error_ratio (t2vz_core.qc) exceeds this.
    qc_max_warp_ratio: float | None = None
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

    @field_validator("mode", "control", "fit", "shots", mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> str:
        choices = {"mode": MODES, "control": ("extract", "given"), "fit": FITS, "shots": ("auto", "none")}[
            info.field_name
        ]
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"unknown {info.field_name} {describe(value)}: use one of {', '.join(choices)}")
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

    @field_validator("control_backend", mode="before")
    @classmethod
    def _control_backend(cls, value: Any) -> str:
        # Which backends suit the row's mode is a cross-column rule (rules.py).
        from t2vz_core.control.maps import BACKENDS

        text = str(value).strip().lower()
        known = sorted({name for names in BACKENDS.values() for name in names})
        if text not in known:
            raise ValueError(f"unknown control_backend {describe(value)}: use one of {', '.join(known)}")
        return text

    @field_validator("annotator", "base_model_config", "controlnet_config", mode="before")
    @classmethod
    def _model_ref(cls, value: Any, info: ValidationInfo) -> str:
        base_dir, _ = _context(info)
        return check_model_ref(str(value), base_dir)

    @field_validator("model", "controlnet", "vae", mode="before")
    @classmethod
    def _weights_ref(cls, value: Any, info: ValidationInfo) -> str:
        # These may also be one checkpoint file in the original Stable Diffusion layout.
        base_dir, _ = _context(info)
        return check_weights_ref(str(value), base_dir, info.field_name)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora(cls, value: Any, info: ValidationInfo) -> tuple[LoraWeight, ...]:
        base_dir, _ = _context(info)
        return parse_lora_cell(value, base_dir)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler(cls, value: Any) -> str:
        return check_scheduler(value)

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
        problems = cross_column_problems(self, self.model_fields_set)
        if problems:
            raise RowProblems(problems)
        mode, given = self.mode, self.model_fields_set
        values: dict[str, Any] = {}
        for name, modes in APPLIES_TO.items():
            if mode not in modes and name not in STRUCTURAL:
                values[name] = None  # a knob this mode ignores: keep it out of cache keys
        if "model" not in given:
            values["model"] = default_model(mode)
        if mode in CONTROLNET_MODES:
            values.setdefault("control", self.control or "extract")
            if values["control"] == "given":
                values.update(dict.fromkeys(EXTRACTION_COLUMNS))  # maps are given: nothing is extracted
            if self.controlnet_conditioning_scale is None:
                values["controlnet_conditioning_scale"] = DEFAULT_CONTROLNET_SCALE
        if mode == "pix2pix" and self.image_guidance_scale is None:
            values["image_guidance_scale"] = DEFAULT_IMAGE_GUIDANCE
        if mode in SOURCE_MODES and self.fit is None:
            values["fit"] = "keep"
        if mode in SOURCE_MODES:
            values["shots"] = self.shots or DEFAULT_SHOTS
            if values["shots"] == "none":
                values.update(dict.fromkeys(SHOT_DETECTOR_COLUMNS))  # one anchor: nothing is detected
            elif self.shot_threshold is None:
                values["shot_threshold"] = DEFAULT_SHOT_THRESHOLD
        if self.width is None and self.height is None and self.resolution is None:
            values["resolution"] = DEFAULT_RESOLUTION
        if mode == "text2video":
            t0, t1 = default_t0_t1(self.num_inference_steps)
            values["t0"] = t0 if self.t0 is None else self.t0
            values["t1"] = t1 if self.t1 is None else self.t1
            for name, default in (
                ("video_length", DEFAULT_VIDEO_LENGTH),
                ("fps", DEFAULT_TEXT2VIDEO_FPS),
                ("motion_field_strength_x", DEFAULT_MOTION),
                ("motion_field_strength_y", DEFAULT_MOTION),
            ):
                if getattr(self, name) is None:
                    values[name] = default
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen model: set once, during validation
        return self

    # ------------------------------------------------------------ what the row is (t2vz_core.row_steps
    # turns it into a decode plan, control parameters and an engine request)

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

    def cache_dict(self) -> dict[str, Any]:
        """Every parameter as JSON-able values (for cache keys and the sidecar).

        Leaves out `row` (position in the file), `refresh` (an instruction, not a parameter:
        toggling it must not move the cache key) and `qc_max_warp_ratio` (a review threshold the
        report applies: changing it re-runs nothing), and the own-model cells when empty, so rows
        that do not use them keep the dicts (and up-to-date sidecars) they had before those cells existed.
        """
        data = self.model_dump(mode="json", exclude={"row", "refresh", "qc_max_warp_ratio"}, by_alias=True)
        for column in OWN_MODEL_COLUMNS:
            if not data.get(column):
                data.pop(column, None)
        return data
