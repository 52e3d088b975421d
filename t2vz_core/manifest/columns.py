"""Modes and columns: what a manifest may contain and which columns each mode uses."""

from __future__ import annotations

from t2vz_core.modes import CONTROLNET_MODES, MODES, SOURCE_MODES, Mode  # noqa: F401 - re-exported

OUTPUT_FORMATS: tuple[str, ...] = ("mp4", "webm", "gif", "png")
FITS: tuple[str, ...] = ("keep", "crop", "pad")

# Every column a manifest may have, in the order `t2vz scan` and the README use.
COLUMNS: tuple[str, ...] = (
    "job_id",
    "mode",
    "source",
    "control",
    "prompt",
    "negative_prompt",
    "model",
    "revision",
    "controlnet",
    "controlnet_conditioning_scale",
    "control_backend",
    "annotator",
    "low_threshold",
    "high_threshold",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "image_guidance_scale",
    "chunk_size",
    "resolution",
    "width",
    "height",
    "fit",
    "fps",
    "start",
    "end",
    "max_frames",
    "video_length",
    "motion_field_strength_x",
    "motion_field_strength_y",
    "t0",
    "t1",
    "shots",
    "shot_threshold",
    "min_shot_frames",
    "output",
    "refresh",
    "qc_max_warp_ratio",
    # Models users bring (t2vz_core.model_sources)
    "lora",
    "scheduler",
    "vae",
    "model_config",
    "controlnet_config",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("job_id", "mode", "prompt")

# Cells that only some modes use. "Structural" ones in the wrong mode mean the row was
# misunderstood (an error); the others are tuning knobs that are ignored with a warning.
APPLIES_TO: dict[str, frozenset[str]] = {
    "source": SOURCE_MODES,
    "control": CONTROLNET_MODES,
    "controlnet": CONTROLNET_MODES,
    "controlnet_conditioning_scale": CONTROLNET_MODES,
    "control_backend": CONTROLNET_MODES,
    "annotator": frozenset({"pose", "depth"}),
    "low_threshold": frozenset({"canny"}),
    "high_threshold": frozenset({"canny"}),
    "image_guidance_scale": frozenset({"pix2pix"}),
    "fit": SOURCE_MODES,
    "start": SOURCE_MODES,
    "end": SOURCE_MODES,
    "max_frames": SOURCE_MODES,
    "video_length": frozenset({"text2video"}),
    "motion_field_strength_x": frozenset({"text2video"}),
    "motion_field_strength_y": frozenset({"text2video"}),
    "t0": frozenset({"text2video"}),
    "t1": frozenset({"text2video"}),
    "controlnet_config": CONTROLNET_MODES,
    "shots": SOURCE_MODES,
    "shot_threshold": SOURCE_MODES,
    "min_shot_frames": SOURCE_MODES,
}
# Control-extraction cells: unused when the row brings its own maps (control=given).
EXTRACTION_COLUMNS = ("control_backend", "annotator", "low_threshold", "high_threshold")
# Backends whose weights come from an annotator folder or hub repo (mediapipe and opencv need none).
ANNOTATOR_BACKENDS = frozenset({"openpose", "dwpose", "midas", "zoe"})
# Shot-detector cells: unused when the row asks for one anchor (shots=none).
SHOT_DETECTOR_COLUMNS = ("shot_threshold", "min_shot_frames")
STRUCTURAL = frozenset(
    {
        "source",
        "control",
        "controlnet",
        "video_length",
        "controlnet_config",
        "shots",
        "shot_threshold",
        "min_shot_frames",
    }
)

# Position of each column in COLUMNS: errors are listed in this order within a row.
COLUMN_ORDER: dict[str, int] = {name: index for index, name in enumerate(COLUMNS)}
