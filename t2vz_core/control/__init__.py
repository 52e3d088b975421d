"""Control maps (canny, pose, depth) from raw frames, stored losslessly and reused.

Pose works offline through mediapipe (models ship in its wheel); Openpose / DWpose / MiDaS /
Zoe come from controlnet-aux with annotator weights from a hub id or a local folder.
"""

from t2vz_core.control.maps import (
    BACKENDS,
    DEFAULT_BACKEND,
    KINDS,
    control_maps_to_store,
    control_params,
    extract_control_maps,
    make_mapper,
)
from t2vz_core.control.openpose_render import render_openpose

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "KINDS",
    "control_maps_to_store",
    "control_params",
    "extract_control_maps",
    "make_mapper",
    "render_openpose",
]
