"""Pose maps from raw frames: mediapipe (offline) or controlnet-aux Openpose / DWpose.

mediapipe 0.10.14's legacy Pose (model_complexity=1) ships its models inside the wheel,
so it works with no hub. It finds one person; its 33 landmarks are mapped to the
OpenPose-18 body (the neck is the middle of the shoulders) and drawn in the OpenPose
convention (openpose_render.py). Each frame is detected on its own (static mode):
deterministic, and a resumed run produces the same maps.
"""

from __future__ import annotations

import logging
import threading
import warnings
from functools import lru_cache

import numpy as np

from t2vz_core.control.annotators import DEFAULT_ANNOTATOR, require_packages, resolve_weights
from t2vz_core.control.openpose_render import render_openpose
from t2vz_core.errors import InputError
from t2vz_core.native_stderr import native_stderr_to_log

log = logging.getLogger(__name__)

# OpenPose-18 joint -> mediapipe landmark ("right" is the person's right in both).
_MEDIAPIPE_FOR_OPENPOSE = {
    0: 0,
    2: 12,
    3: 14,
    4: 16,
    5: 11,
    6: 13,
    7: 15,
    8: 24,
    9: 26,
    10: 28,
    11: 23,
    12: 25,
    13: 27,
    14: 5,
    15: 2,
    16: 8,
    17: 7,
}

MEDIAPIPE_DEFAULTS = {"min_detection_confidence": 0.5, "min_visibility": 0.5}
AUX_DEFAULTS = {
    "annotator": DEFAULT_ANNOTATOR,
    "detect_resolution": 512,
    "include_hand": False,
    "include_face": False,
    "device": "cpu",
}
DWPOSE_DEFAULTS = {"annotator": DEFAULT_ANNOTATOR, "detect_resolution": 512, "device": "cpu"}
OPENPOSE_FILES = ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"]
DWPOSE_FILES = ["yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth", "dw-ll_ucoco_384.pth"]
DWPOSE_PACKAGES = {"mmcv": "mmcv>=2.0.1", "mmdet": "mmdet>=3.1.0", "mmpose": "mmpose>=1.1.0"}


def mediapipe_to_openpose(landmarks, min_visibility: float) -> np.ndarray:
    """(18, 2) normalised OpenPose keypoints from 33 mediapipe landmarks (NaN = unseen)."""
    points = np.full((18, 2), np.nan)
    for op, mp in _MEDIAPIPE_FOR_OPENPOSE.items():
        lm = landmarks[mp]
        if lm.visibility >= min_visibility and 0.0 <= lm.x <= 1.0 and 0.0 <= lm.y <= 1.0:
            points[op] = (lm.x, lm.y)
    if not np.isnan(points[[2, 5]]).any():
        points[1] = (points[2] + points[5]) / 2
    return points


class MediapipePose:
    def __init__(self, min_detection_confidence: float = 0.5, min_visibility: float = 0.5):
        for name, value in (("min_detection_confidence", min_detection_confidence), ("min_visibility", min_visibility)):
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise InputError(f"pose {name}: {value!r} must be between 0 and 1")
        self.min_visibility = float(min_visibility)
        self.model, self.lock = _mediapipe_pose(float(min_detection_confidence))

    def keypoints(self, frame: np.ndarray) -> list[np.ndarray]:
        with self.lock, warnings.catch_warnings():  # one graph; mediapipe is not re-entrant
            warnings.filterwarnings("ignore", "SymbolDatabase.GetPrototype", UserWarning)
            result = self.model.process(np.ascontiguousarray(frame))
        if result.pose_landmarks is None:
            return []
        return [mediapipe_to_openpose(result.pose_landmarks.landmark, self.min_visibility)]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return render_openpose(self.keypoints(frame), frame.shape[0], frame.shape[1])


@lru_cache(maxsize=4)
def _mediapipe_pose(min_detection_confidence: float):
    try:
        import mediapipe as mp

        # The graph's threads print TFLite/absl lines on fd 2 while it starts (from the
        # constructor to the end of the first run): log them instead, and run it once here.
        with native_stderr_to_log(log), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "SymbolDatabase.GetPrototype", UserWarning)
            model = mp.solutions.pose.Pose(
                static_image_mode=True, model_complexity=1, min_detection_confidence=min_detection_confidence
            )
            model.process(np.zeros((64, 64, 3), np.uint8))
    except Exception as exc:
        raise InputError(
            f"pose backend 'mediapipe' is unavailable ({type(exc).__name__}: "
            f"{exc}); it needs mediapipe==0.10.14, the last release shipping "
            f"its pose models"
        ) from None
    return model, threading.Lock()


class AuxDetectorMapper:
    """A controlnet-aux detector called per frame, its map resized back to the frame."""

    def __init__(self, detector, **call_kwargs):
        self.detector, self.call_kwargs = detector, call_kwargs

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        h, w = frame.shape[:2]
        out = self.detector(
            np.ascontiguousarray(frame), image_resolution=max(h, w), output_type="np", **self.call_kwargs
        )
        out = np.asarray(out, np.uint8)
        if out.ndim == 2:
            out = np.repeat(out[:, :, None], 3, axis=2)
        if out.shape[:2] != (h, w):
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
        return out


def openpose_mapper(
    annotator: str, detect_resolution: int, include_hand: bool, include_face: bool, device: str
) -> AuxDetectorMapper:
    folder = resolve_weights("pose backend 'openpose'", annotator, OPENPOSE_FILES)
    detector = _aux_openpose(str(folder), device)
    return AuxDetectorMapper(
        detector, detect_resolution=detect_resolution, include_hand=include_hand, include_face=include_face
    )


def dwpose_mapper(annotator: str, detect_resolution: int, device: str) -> AuxDetectorMapper:
    require_packages("pose backend 'dwpose' (controlnet-aux DWposeDetector)", DWPOSE_PACKAGES)
    folder = resolve_weights("pose backend 'dwpose'", annotator, DWPOSE_FILES)
    detector = _aux_dwpose(str(folder), device)
    return AuxDetectorMapper(detector, detect_resolution=detect_resolution)


@lru_cache(maxsize=2)
def _aux_openpose(folder: str, device: str):
    from controlnet_aux import OpenposeDetector

    return OpenposeDetector.from_pretrained(folder).to(device)


@lru_cache(maxsize=2)
def _aux_dwpose(folder: str, device: str):
    from controlnet_aux import DWposeDetector

    return DWposeDetector(
        det_ckpt=f"{folder}/{DWPOSE_FILES[0]}", pose_ckpt=f"{folder}/{DWPOSE_FILES[1]}", device=device
    )
