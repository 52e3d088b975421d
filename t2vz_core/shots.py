"""Shots: where a video cuts, so that every shot gets its own Text2Video-Zero anchor.

Text2Video-Zero makes every frame attend to one anchor frame and share one noise; across a
cut that ties the new shot to a frame of the old one. `detect_shots` finds the cuts in decoded
frames with PySceneDetect's ContentDetector (mean change of hue, saturation and luma between
consecutive frames, 0-255; a cut where it reaches `threshold`) and returns the shots as
[start, end) frame ranges that cover every frame.

Short shots: a cut is accepted only when at least `min_shot_frames` frames passed since the
last accepted one (the detector's own "suppress" filter), so a shot shorter than that merges
into the shot before it; a last shot that is too short merges into the one before it too.
Every shot is then at least `min_shot_frames` long unless the whole video is shorter.

Defaults: `threshold` 27 (PySceneDetect's default for ContentDetector) and `min_shot_frames`
half a second at the frames' rate (15 frames at 30 fps, PySceneDetect's default scene length),
at least 1 frame.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from t2vz_core.errors import InputError
from t2vz_core.manifest.defaults import DEFAULT_SHOT_THRESHOLD

MIN_SHOT_SECONDS = 0.5
READ_CHUNK = 16  # frames read from the store at a time: memory stays bounded on long videos
DETECT_WIDTH = 256  # wider frames are scaled down to this width first, as PySceneDetect's SceneManager does

Shot = tuple[int, int]


def default_min_shot_frames(fps: Fraction | float | None) -> int:
    """Half a second of frames at `fps` (at least 1); 15 frames when the rate is unknown."""
    if fps is None or float(fps) <= 0:
        return 15
    return max(1, round(float(fps) * MIN_SHOT_SECONDS))


def detect_shots(
    frames,
    threshold: float = DEFAULT_SHOT_THRESHOLD,
    min_shot_frames: int | None = None,
    *,
    fps: Fraction | float | None = None,
) -> list[Shot]:
    """Shots of `frames` as [(start, end), ...]: end exclusive, in order, covering every frame.

    frames: anything with len() and slicing that returns RGB uint8 (k, H, W, 3) arrays (a
    FrameStore, a numpy array); read READ_CHUNK frames at a time. fps: the frames' rate, for
    the default `min_shot_frames` (a FrameStore's own rate is used when not given).
    """
    from scenedetect import FrameTimecode
    from scenedetect.detector import FlashFilter
    from scenedetect.detectors import ContentDetector

    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold <= 0
    ):
        raise InputError(f"shot_threshold={threshold!r} must be a positive number")
    rate = fps if fps is not None else getattr(frames, "fps", None)
    if min_shot_frames is None:
        min_shot_frames = default_min_shot_frames(rate)
    if isinstance(min_shot_frames, bool) or not isinstance(min_shot_frames, int) or min_shot_frames < 1:
        raise InputError(f"min_shot_frames={min_shot_frames!r} must be a whole number >= 1")
    count = len(frames)
    if count == 0:
        return []
    timebase = Fraction(rate) if rate is not None and float(rate) > 0 else Fraction(30)

    # The detector's own filter keeps cuts at least min_shot_frames apart (counted from frame 0).
    detector = ContentDetector(
        threshold=float(threshold), min_scene_len=min_shot_frames, filter_mode=FlashFilter.Mode.SUPPRESS
    )
    cuts: list[int] = []
    for start in range(0, count, READ_CHUNK):
        chunk = np.asarray(frames[start : min(start + READ_CHUNK, count)])
        _check_frames(chunk, start)
        for offset, rgb in enumerate(chunk):
            timecode = FrameTimecode(start + offset, fps=timebase)
            bgr = _detector_input(rgb)
            cuts.extend(int(tc.frame_num) for tc in detector.process_frame(timecode, bgr))
    cuts.extend(int(tc.frame_num) for tc in detector.post_process(FrameTimecode(count - 1, fps=timebase)))
    return shots_from_cuts(cuts, count, min_shot_frames)


def shots_from_cuts(cuts: list[int], count: int, min_shot_frames: int = 1) -> list[Shot]:
    """[start, end) ranges between sorted cut frames; a too-short last shot joins the one before."""
    bounds = sorted({c for c in cuts if 0 < c < count})
    while bounds and count - bounds[-1] < min_shot_frames:
        bounds.pop()
    edges = [0, *bounds, count]
    return [(a, b) for a, b in zip(edges, edges[1:])]


def check_shots(shots, count: int) -> list[Shot]:
    """`shots` as a list of int pairs; InputError unless they are non-empty, in order and cover [0, count)."""
    try:
        pairs = [(int(a), int(b)) for a, b in shots]
    except (TypeError, ValueError):
        raise InputError(f"shots must be (start, end) frame pairs, got {shots!r}") from None
    expected = 0
    for start, end in pairs:
        if start != expected or end <= start:
            raise InputError(
                f"shots {pairs} must be non-empty [start, end) ranges in order covering frames "
                f"0 to {count - 1} without gaps (expected one starting at {expected})"
            )
        expected = end
    if expected != count:
        raise InputError(f"shots {pairs} cover frames 0 to {expected - 1} but there are {count} frames")
    return pairs


def _detector_input(rgb: np.ndarray) -> np.ndarray:
    """BGR (OpenCV's order, what PySceneDetect reads) at no more than DETECT_WIDTH pixels wide, so
    a threshold means the same at every output resolution (and detection stays cheap)."""
    import cv2

    height, width = rgb.shape[:2]
    if width > DETECT_WIDTH:
        size = (DETECT_WIDTH, max(1, round(height * DETECT_WIDTH / width)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _check_frames(chunk: np.ndarray, start: int) -> None:
    if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
        raise InputError(
            f"frames from {start}: expected uint8 RGB frames (k, H, W, 3), got {chunk.dtype} {tuple(chunk.shape)}"
        )
