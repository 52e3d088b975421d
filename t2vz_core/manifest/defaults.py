"""Per-mode defaults: base model, ControlNet, sampling parameters and t0/t1."""

from __future__ import annotations

from typing import Any

from t2vz_core.errors import InputError
from t2vz_core.manifest.columns import CONTROLNET_MODES

# Defaults from the Text2Video-Zero paper / diffusers pipelines.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_PIX2PIX_MODEL = "timbrooks/instruct-pix2pix"
_CONTROLNETS = {
    "sd": {
        "pose": "lllyasviel/sd-controlnet-openpose",
        "canny": "lllyasviel/sd-controlnet-canny",
        "depth": "lllyasviel/sd-controlnet-depth",
    },
    "sdxl": {
        "pose": "thibaud/controlnet-openpose-sdxl-1.0",
        "canny": "diffusers/controlnet-canny-sdxl-1.0",
        "depth": "diffusers/controlnet-depth-sdxl-1.0",
    },
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
DEFAULT_SHOTS = "auto"  # video modes split at detected cuts; `none` keeps one anchor for the whole video
DEFAULT_SHOT_THRESHOLD = 27.0  # PySceneDetect ContentDetector's default (t2vz_core/shots.py)
# min_shot_frames has no fixed default: half a second at the decoded frame rate (t2vz_core/shots.py).


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


def or_default(value: Any, default: Any) -> Any:
    """`value`, or `default` when the cell was left empty (None)."""
    return default if value is None else value
