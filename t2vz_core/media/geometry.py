"""Per-frame geometry shared by every decoder: turn upright, resize, crop or pad.

The one place frames change size or orientation: decord (in its worker process) and PyAV
both decode at the source size and hand every frame to `Geometry.apply`, so they produce
the same pixels for the same plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from t2vz_core.errors import InputError


@dataclass(frozen=True)
class Geometry:
    """rotation: clockwise degrees applied first; resize: (w, h) of the upright frame;
    crop: (x, y, w, h) taken from the resized frame; pad: (left, top, right, bottom) black."""

    rotation: int = 0
    resize: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    pad: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Transform one (H, W, 3) uint8 frame as decoded (coded orientation)."""
        out = frame
        if self.resize is not None:
            out = _resize(out, self.resize, self.rotation)
        if self.rotation:
            # np.rot90 with k>0 turns counter-clockwise, so clockwise needs -k.
            out = np.rot90(out, k=-(self.rotation // 90))
        if self.crop is not None:
            x, y, w, h = self.crop
            out = out[y : y + h, x : x + w]
        if self.pad is not None:
            left, top, right, bottom = self.pad
            out = np.pad(out, ((top, bottom), (left, right), (0, 0)))
        return np.ascontiguousarray(out)


def _resize(frame: np.ndarray, upright_size: tuple[int, int], rotation: int) -> np.ndarray:
    """Resize before turning (cheaper on big frames): swap the target for 90/270."""
    import cv2

    w, h = upright_size
    if rotation in (90, 270):
        w, h = h, w
    src_h, src_w = frame.shape[:2]
    if (src_w, src_h) == (w, h):
        return frame
    shrinking = w * h < src_w * src_h
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def as_chunk(frames) -> np.ndarray:
    """Accept one frame (H, W, 3) or a chunk (k, H, W, 3); check dtype and channels."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"frames must be (k, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got {arr.dtype}")
    return arr
