"""Write the small demo clips of manifests/demo.csv into manifests/media/ (committed; ~100 KB).

    .venv/bin/python manifests/make_demo_media.py

Clips are made from scikit-image's bundled photographs (public domain / CC0, see
skimage.data) with a slow camera move, so they look like footage and control extractors
have real content to work on:

- person.mp4: the astronaut portrait, slow push-in (pose: MediaPipe finds her upper body)
- cat.mp4:    the Chelsea cat photo, slow pan, with a quiet 440 Hz tone (pix2pix; audio passthrough)
- rocket.mp4: the rocket photo, slow pan (canny edges)
- depth.mp4:  a synthetic depth video (near = bright) of two spheres drifting past each other,
              used with control=given: depth maps need MiDaS/Zoe weights from a model hub,
              which the offline demo cannot download.
The committed files are what the demo uses; x264 does not promise identical bytes across
runs, so rerunning this script may change them slightly (and re-run the demo from decode).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MEDIA = Path(__file__).resolve().parent / "media"
SIZE = 160  # px, square: small files, and resolution=128 in demo.csv downsizes them
FRAMES = 12
FPS = Fraction(8)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _camera_move(photo: np.ndarray, zoom: tuple[float, float], pan: tuple[float, float]) -> list[np.ndarray]:
    """Frames cropped from `photo`: the crop shrinks by `zoom` and slides by `pan` (fractions)."""
    h, w = photo.shape[:2]
    frames = []
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        scale = zoom[0] + (zoom[1] - zoom[0]) * t
        side = int(min(h, w) * scale)
        x = int((w - side) * (0.5 + (pan[0] - 0.5) * (2 * t - 1) * 0.5))
        y = int((h - side) * (0.5 + (pan[1] - 0.5) * (2 * t - 1) * 0.5))
        frames.append(_resize(photo[y : y + side, x : x + side], SIZE))
    return frames


def _depth_frames() -> list[np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    frames = []
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        depth = 0.15 + 0.25 * yy  # floor: nearer at the bottom
        for cx, cy, r, near in ((0.25 + 0.5 * t, 0.45, 0.22, 0.95), (0.75 - 0.4 * t, 0.6, 0.16, 0.7)):
            d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
            sphere = np.where(d2 < 1, near * np.sqrt(np.clip(1 - d2, 0, 1)) ** 0.5, 0)
            depth = np.maximum(depth, sphere)
        gray = (255 * np.clip(depth, 0, 1)).astype(np.uint8)
        frames.append(np.repeat(gray[:, :, None], 3, axis=2))
    return frames


def _write(path: Path, frames: list[np.ndarray], tone_hz: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "28", "preset": "slow"})
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
        audio = None
        if tone_hz:
            audio = out.add_stream("aac", rate=16000)
            audio.layout = "mono"
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            seconds = FRAMES / float(FPS)
            n = int(16000 * seconds)
            samples = (0.1 * np.sin(2 * np.pi * tone_hz * np.arange(n) / 16000)).astype(np.float32)
            for start in range(0, n, 1024):
                block = samples[None, start : start + 1024]
                aframe = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
                aframe.sample_rate = 16000
                aframe.pts = start
                for packet in audio.encode(aframe):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)


def main() -> None:
    from skimage import data

    _write(MEDIA / "person.mp4", _camera_move(data.astronaut(), zoom=(1.0, 0.85), pan=(0.5, 0.4)))
    _write(MEDIA / "cat.mp4", _camera_move(data.chelsea(), zoom=(0.95, 0.95), pan=(0.8, 0.5)), tone_hz=440)
    _write(MEDIA / "rocket.mp4", _camera_move(data.rocket(), zoom=(0.9, 0.9), pan=(0.2, 0.5)))
    _write(MEDIA / "depth.mp4", _depth_frames())
    for path in sorted(MEDIA.glob("*.mp4")):
        print(f"{path.relative_to(MEDIA.parent)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
