"""Canny edge maps, as the canny ControlNets were trained on: cv2.Canny on the RGB frame."""

from __future__ import annotations

import numpy as np

from t2vz_core.errors import InputError

DEFAULTS = {"low_threshold": 100, "high_threshold": 200}


def threshold_problem(low: float, high: float) -> str | None:
    """The one rule for a pair of thresholds (the manifest's cells and the mapper both apply it)."""
    if low >= high:
        return f"low_threshold ({low}) must be smaller than high_threshold ({high})"
    return None


class CannyMapper:
    def __init__(
        self, low_threshold: int = DEFAULTS["low_threshold"], high_threshold: int = DEFAULTS["high_threshold"]
    ):
        for name, value in (("low_threshold", low_threshold), ("high_threshold", high_threshold)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1000:
                raise InputError(f"canny {name}: {value!r} must be a number from 0 to 1000")
        problem = threshold_problem(low_threshold, high_threshold)
        if problem:
            raise InputError(f"canny {problem}")
        self.low, self.high = low_threshold, high_threshold

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        edges = cv2.Canny(np.ascontiguousarray(frame), self.low, self.high)
        return np.repeat(edges[:, :, None], 3, axis=2)
