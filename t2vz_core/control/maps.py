"""Control maps for ControlNet modes: extract from frames, store as PNG, reuse.

    maps = extract_control_maps("pose", chunks)                # iterator of uint8 chunks
    store = control_maps_to_store("canny", frames_store, "work/canny", {"low_threshold": 50})

Parameters are completed with defaults and recorded in the store's meta.json, so a later
run with the same parameters (and the same source frames) reuses the maps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction

import numpy as np

from t2vz_core.control import canny, depth, pose
from t2vz_core.errors import InputError
from t2vz_core.media.encode import iter_chunks
from t2vz_core.media.store import FrameStore
from t2vz_core.stop import check as check_stop

KINDS = ("canny", "pose", "depth")
BACKENDS = {"canny": ("opencv",), "pose": ("mediapipe", "openpose", "dwpose"), "depth": ("midas", "zoe")}
DEFAULT_BACKEND = {"canny": "opencv", "pose": "mediapipe", "depth": "midas"}
_DEFAULTS = {
    ("canny", "opencv"): canny.DEFAULTS,
    ("pose", "mediapipe"): pose.MEDIAPIPE_DEFAULTS,
    ("pose", "openpose"): pose.AUX_DEFAULTS,
    ("pose", "dwpose"): pose.DWPOSE_DEFAULTS,
    ("depth", "midas"): depth.DEFAULTS,
    ("depth", "zoe"): {**depth.DEFAULTS, "detect_resolution": 512},
}

Mapper = Callable[[np.ndarray], np.ndarray]


def control_params(kind: str, params: dict | None = None, backend: str | None = None) -> tuple[str, dict]:
    """(backend, params completed with defaults); InputError on unknown kind/backend/keys."""
    if kind not in KINDS:
        raise InputError(f"control kind: {kind!r} must be one of {', '.join(KINDS)}")
    backend = backend or DEFAULT_BACKEND[kind]
    if backend not in BACKENDS[kind]:
        raise InputError(f"{kind} backend: {backend!r} must be one of {', '.join(BACKENDS[kind])}")
    defaults = _DEFAULTS[(kind, backend)]
    unknown = sorted(set(params or {}) - set(defaults))
    if unknown:
        raise InputError(
            f"{kind} ({backend}): unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}"
        )
    return backend, {**defaults, **(params or {})}


def make_mapper(kind: str, params: dict | None = None, backend: str | None = None) -> Mapper:
    """A function frame (H, W, 3) -> map (H, W, 3), uint8; loads its model once."""
    backend, p = control_params(kind, params, backend)
    if kind == "canny":
        return canny.CannyMapper(p["low_threshold"], p["high_threshold"])
    if kind == "pose" and backend == "mediapipe":
        return pose.MediapipePose(p["min_detection_confidence"], p["min_visibility"])
    if kind == "pose" and backend == "openpose":
        return pose.openpose_mapper(
            p["annotator"], p["detect_resolution"], p["include_hand"], p["include_face"], p["device"]
        )
    if kind == "pose":
        return pose.dwpose_mapper(p["annotator"], p["detect_resolution"], p["device"])
    return depth.depth_mapper(backend, p["annotator"], p["detect_resolution"], p["device"])


def extract_control_maps(
    kind: str,
    frames_iter: Iterable[np.ndarray] | FrameStore | np.ndarray,
    params: dict | None = None,
    backend: str | None = None,
    chunk_size: int = 16,
) -> Iterator[np.ndarray]:
    """Maps for every frame, chunk by chunk, same sizes as the frames.

    Bad parameters and missing weights raise here, at the call, not at the first chunk."""
    mapper = make_mapper(kind, params, backend)

    def maps() -> Iterator[np.ndarray]:
        for chunk in iter_chunks(frames_iter, chunk_size):
            yield np.stack([mapper(frame) for frame in chunk])

    return maps()


def control_maps_to_store(
    kind: str,
    frames: FrameStore | Iterable[np.ndarray],
    store_path: str | os.PathLike,
    params: dict | None = None,
    backend: str | None = None,
    *,
    fps: Fraction | None = None,
    source: dict | str | None = None,
    chunk_size: int = 16,
) -> FrameStore:
    """Extract maps into a FrameStore, or return the one already made with equal parameters.

    `source` identifies the frames (default: the FrameStore's own params, which name the
    video and decode plan). A partial store from an interrupted run is resumed.
    """
    backend, full = control_params(kind, params, backend)
    if isinstance(frames, FrameStore):
        fps = fps or frames.fps
        source = source if source is not None else frames.params
    if fps is None:
        raise InputError("fps is needed when the frames are not a FrameStore")
    record = {"kind": "control", "control": kind, "backend": backend, "params": full, "source": source}
    expected = len(frames) if isinstance(frames, FrameStore) else None
    with FrameStore.writer(store_path, fps, record, expected_count=expected) as writer:
        if writer.reused:
            return writer.existing
        mapper = make_mapper(kind, full, backend)
        if isinstance(frames, FrameStore):
            for start in range(0, len(frames), chunk_size):
                stop = min(start + chunk_size, len(frames))
                if not writer.done(start, stop):
                    check_stop(f"control maps, frame {start} of {len(frames)}")  # earlier chunks are kept
                    writer.write(start, np.stack([mapper(f) for f in frames[start:stop]]))
        else:
            start = 0
            for chunk in iter_chunks(frames, chunk_size):
                if not writer.done(start, start + len(chunk)):
                    writer.write(start, np.stack([mapper(f) for f in chunk]))
                start += len(chunk)
    return FrameStore(store_path)
