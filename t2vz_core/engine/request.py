"""What to generate: one frozen request object and its validation (before any model work)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from t2vz_core.errors import InputError
from t2vz_core.manifest.defaults import (
    DEFAULT_CONTROLNET_SCALE,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_MOTION,
    DEFAULT_RESOLUTION,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_T0,
    DEFAULT_T1,
)
from t2vz_core.modes import CONTROLNET_MODES as CONTROL_MODES
from t2vz_core.modes import MODES, t0_t1_problem


@dataclass(frozen=True)
class GenerationRequest:
    """One video to generate. Field names follow diffusers' pipeline arguments.

    mode: "text2video" (prompt only), "pose" / "canny" / "depth" (ControlNet, one control
    map per frame) or "pix2pix" (Instruct-Pix2Pix edit of source frames).
    video_length: number of frames; required for text2video. For the other modes it defaults
    to the number of conditioning frames and, when given, must match it.
    chunk_size: frames per UNet call counting the anchor frame (the anchor plus
    chunk_size - 1 new frames), as in Text2Video-Zero's long-video recipe; None = the whole
    video in one UNet batch. For pose/canny/depth/pix2pix the output does not depend on it.
    For text2video it does, exactly like the reference recipe: None reproduces one
    `TextToVideoZeroPipeline` call, any chunk_size reproduces the documented `frame_ids`
    chunk recipe (each chunk's forward noise is drawn after reseeding).
    t0, t1: text2video only (paper Sect. 3.3.1); 0 <= t0 < t1 <= scheduler steps - 1.
    guidance_scale <= 1 turns classifier-free guidance off (one guidance branch);
    pix2pix uses three branches when guidance_scale > 1 and image_guidance_scale >= 1.
    """

    mode: str
    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE
    controlnet_conditioning_scale: float = DEFAULT_CONTROLNET_SCALE
    seed: int = DEFAULT_SEED
    width: int = DEFAULT_RESOLUTION
    height: int = DEFAULT_RESOLUTION
    video_length: int | None = None
    chunk_size: int | None = None
    motion_field_strength_x: float = DEFAULT_MOTION
    motion_field_strength_y: float = DEFAULT_MOTION
    t0: int = DEFAULT_T0
    t1: int = DEFAULT_T1

    def validate(self, scheduler_steps: int | None = None) -> GenerationRequest:
        """Raise InputError naming the field when anything is off; returns self.

        scheduler_steps: the scheduler's real number of timesteps when it differs from
        num_inference_steps (schedulers of order 2); t0/t1 are checked against it.
        """
        if self.mode not in MODES:
            raise InputError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt must be a non-empty string")
        if not isinstance(self.negative_prompt, str):
            raise InputError("negative_prompt must be a string (use '' for none)")
        _int(self, "num_inference_steps", low=1)
        _int(self, "seed", low=0, high=2**64 - 1)
        for name in ("width", "height"):
            _int(self, name, low=8)
            if getattr(self, name) % 8:
                raise InputError(f"{name}={getattr(self, name)} must be a multiple of 8")
        for name in ("guidance_scale", "image_guidance_scale", "controlnet_conditioning_scale"):
            _number(self, name, low=0.0)
        for name in ("motion_field_strength_x", "motion_field_strength_y"):
            _number(self, name)
        if self.chunk_size is not None:
            _int(self, "chunk_size", low=2, hint="the anchor frame plus at least one new frame")
        if self.mode == "text2video":
            if self.video_length is None:
                raise InputError("video_length is required for mode text2video")
            self._validate_t0_t1(scheduler_steps or self.num_inference_steps)
        if self.video_length is not None:
            _int(self, "video_length", low=1)
        return self

    def _validate_t0_t1(self, steps: int) -> None:
        _int(self, "t0", low=0)
        _int(self, "t1", low=1)
        problem = t0_t1_problem(self.t0, self.t1, steps)
        if problem == "t0":
            raise InputError(f"t0={self.t0} must be smaller than t1={self.t1}")
        if problem in ("t1", "steps"):
            raise InputError(
                f"t1={self.t1} must be at most the number of denoising steps - 1 = {steps - 1} "
                f"(num_inference_steps={self.num_inference_steps}); lower t0/t1 or use more steps"
            )

    @property
    def uses_control(self) -> bool:
        return self.mode in CONTROL_MODES

    def as_dict(self) -> dict:
        return asdict(self)


def _int(req: GenerationRequest, name: str, low: int, high: int | None = None, hint: str = "") -> None:
    value = getattr(req, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name}={value!r} must be an integer")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise InputError(f"{name}={value} must be {bound}" + (f" ({hint})" if hint else ""))


def _number(req: GenerationRequest, name: str, low: float | None = None) -> None:
    value = getattr(req, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name}={value!r} must be a finite number")
    if low is not None and value < low:
        raise InputError(f"{name}={value} must be >= {low}")
