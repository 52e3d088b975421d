"""Real-looking clips with and without cuts, for the shot tests (`from shot_clips import ...`).

    two_shot_frames(first, second, size)  astronaut panning, then a cut to coffee panning
    talking_head_frames(count, size)      one face over a slowly panning and zooming background
    write_clip(path, frames, fps)         H.264 file written with PyAV

Photographs from skimage.data; the motion is slow enough (about 1 px per frame) to be
ordinary footage, not a cut.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def _pan(image: np.ndarray, count: int, size: int, step: float = 1.0) -> np.ndarray:
    """`count` frames (size x size) of a square crop of `image` moving right ~`step` px per frame."""
    import cv2

    height, width = image.shape[:2]
    crop = int(min(height, width) * 0.7)
    scale = crop / size
    top = (height - crop) // 2
    frames = []
    for index in range(count):
        left = int(round(index * step * scale))
        frames.append(
            cv2.resize(image[top : top + crop, left : left + crop], (size, size), interpolation=cv2.INTER_AREA)
        )
    return np.stack(frames)


def two_shot_frames(first: int, second: int, size: int = 128) -> np.ndarray:
    """`first` frames of the astronaut panning, then a hard cut to `second` frames of coffee."""
    from skimage import data

    return np.concatenate([_pan(data.astronaut(), first, size), _pan(data.coffee(), second, size)])


def talking_head_frames(count: int, size: int = 128) -> np.ndarray:
    """A face (the astronaut's) swaying slightly over a background that pans and zooms in."""
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut()[20:220, 130:330], (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    background = data.coffee()
    height, width = background.shape[:2]
    frames = []
    for index in range(count):
        zoom = 1 + 0.01 * index
        crop_w, crop_h = int(width / zoom * 0.8), int(height / zoom * 0.8)
        left, top = (width - crop_w) // 2 + 2 * index, (height - crop_h) // 2
        frame = cv2.resize(
            background[top : top + crop_h, left : left + crop_w], (size, size), interpolation=cv2.INTER_AREA
        )
        x = size // 4 + int(round(2 * np.sin(index / 4)))
        y = size * 5 // 16 + int(round(np.sin(index / 3)))
        frame[y : y + size // 2, x : x + size // 2] = face
        frames.append(frame)
    return np.stack(frames)


def write_clip(path: str | Path, frames: np.ndarray, fps: Fraction | int = 24) -> Path:
    """Encode RGB frames (n, H, W, 3) to H.264 (yuv420p, crf 12) with PyAV."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
