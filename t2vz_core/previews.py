"""Small looping previews for the gallery page: animated WebP files made with Pillow.

    OUTPUT_DIR/previews/<job_id>.source.webp    the decoded source (absent for text2video)
    OUTPUT_DIR/previews/<job_id>.control.webp   the control maps (absent when the row has none)
    OUTPUT_DIR/previews/<job_id>.output.webp    the generated frames

Why animated WebP: one file per clip that every browser loops in a plain <img> (no player, no
autoplay policy, and `naturalWidth` tells a test it decoded), at a few KB per clip. Frames are
shrunk to PREVIEW_SIDE on the long side and at most PREVIEW_FRAMES are kept (evenly spaced,
each shown longer so the clip keeps its real duration). Only those small frames are held in
memory; the big ones stream through chunk by chunk. Paths alone need no numpy, Pillow or
OpenCV (report.html is written on fast paths): those are imported where frames are handled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from t2vz_core.atomic import atomic_path

if TYPE_CHECKING:
    import numpy as np

PREVIEW_DIR = "previews"
PREVIEW_KINDS = ("source", "control", "output")
PREVIEW_SIDE = 160
PREVIEW_FRAMES = 48


def preview_name(job_id: str, kind: str) -> str:
    if kind not in PREVIEW_KINDS:
        raise ValueError(f"preview kind {kind!r} must be one of {', '.join(PREVIEW_KINDS)}")
    return f"{job_id}.{kind}.webp"


def preview_path(output_dir: str | os.PathLike, job_id: str, kind: str) -> Path:
    return Path(output_dir) / PREVIEW_DIR / preview_name(job_id, kind)


def _small_size(width: int, height: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(2, round(width * scale)), max(2, round(height * scale))


def write_preview(
    chunks: Iterable[np.ndarray],
    fps: Fraction | float,
    path: str | os.PathLike,
    *,
    total: int | None = None,
    side: int = PREVIEW_SIDE,
    max_frames: int = PREVIEW_FRAMES,
) -> Path:
    """An animated WebP of uint8 (k, H, W, 3) chunks, written atomically. `total` (the frame count,
    when known) lets long clips keep every n-th frame instead of only their beginning."""
    import cv2
    import numpy as np
    from PIL import Image

    from t2vz_core.media.geometry import as_chunk

    step = max(1, math.ceil(total / max_frames)) if total else 1
    small: list[Image.Image] = []
    index = 0
    for chunk in chunks:
        for frame in as_chunk(chunk):
            if index % step == 0 and len(small) < max_frames:
                size = _small_size(frame.shape[1], frame.shape[0], side)
                resized = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if size != frame.shape[1::-1] else frame
                small.append(Image.fromarray(np.ascontiguousarray(resized)))
            index += 1
    if not small:
        raise ValueError(f"{path}: no frames to preview")
    duration_ms = max(20, round(1000 * step / float(fps)))  # browsers clamp shorter delays
    path = Path(path)
    with atomic_path(path) as tmp:
        small[0].save(
            tmp,
            format="WEBP",
            save_all=True,
            append_images=small[1:],
            duration=duration_ms,
            loop=0,
            quality=70,
            method=4,
        )
    return path


def preview_from_store(store, path: str | os.PathLike, **kwargs) -> Path:
    """A preview of a FrameStore (or its folder)."""
    from t2vz_core.media import FrameStore

    store = store if isinstance(store, FrameStore) else FrameStore(store)
    return write_preview(store.iter_chunks(16), store.fps, path, total=len(store), **kwargs)


def preview_from_video(video: str | os.PathLike, path: str | os.PathLike, **kwargs) -> Path:
    """A preview of a video file, decoded with PyAV at its own rate and size."""
    from t2vz_core.media import iter_frames, plan_decode, probe

    plan = plan_decode(probe(video))
    return write_preview(iter_frames(video, plan, backend="pyav"), plan.fps, path, total=plan.frame_count, **kwargs)


def write_row_previews(output_dir: str | os.PathLike, job_id: str, **sources) -> dict[str, Path]:
    """Previews of one row; each keyword (source=, control=, output=) is a FrameStore, a frame-store
    folder or a video file, or None for none. Returns the written paths by kind."""
    from t2vz_core.media.store import META

    written = {}
    for kind, where in sources.items():
        if where is None:
            continue
        target = preview_path(output_dir, job_id, kind)
        if isinstance(where, (str, os.PathLike)) and not (Path(where) / META).exists():
            written[kind] = preview_from_video(where, target)
        else:
            written[kind] = preview_from_store(where, target)
    return written
