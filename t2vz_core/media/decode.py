"""Stream decoded frames chunk by chunk: decord in a guarded child process, or PyAV.

Both backends give the same pixels for every plan, so a machine without decord (no wheel
for macOS arm64 or Linux aarch64), a fallback mid-video and a re-run elsewhere all produce
the same frames and the same cache entries: each decodes at the source size, converts to
RGB with FFmpeg's default for the file's colour tags (measured identical for 8-bit files,
BT.601/BT.709, limited and full range), and then ONE function, the plan's Geometry
(geometry.py), resizes, turns, crops and pads. Where decord's older FFmpeg converts
differently (10-bit and other high-depth formats, 4:2:0 of odd size: up to ~90/255 apart),
or cannot know a file's rotation (it reads only MP4/MOV's), decord is not used
(`decord_mismatch`).

Why a child process for decord: its get_batch can hang while holding the GIL when a file
over-reports its frame count (dmlc/decord#373). A watchdog thread cannot even run then, let
alone interrupt C code; a process can simply be killed. So decord runs in
`python -m t2vz_core.media._decord_worker`, which streams frames back over a pipe;
if no message arrives within `timeout` seconds (per chunk) the worker is killed. The
worker also contains decord's memory growth (#208, #157): measured, a decord reader left
idle while its consumer is busy keeps decoding ahead into an unbounded queue (+1.7 GB in
3 s at 512x512). So the worker reads a segment of frames (DECORD_SEGMENT) at full speed,
applies the plan's Geometry to each (only output-size frames are held and piped), drops
the reader, and only then sends the frames. Cost: ~0.3-0.5 s to start the worker, and a
re-read of the file's index per segment.

backend="auto" tries decord first where it is reliable and uses PyAV otherwise:
- decord is not installed, or would not give PyAV's pixels (see above);
- rotated files, VP8/VP9 and WebM (wrong indices, #91), GIF (decord cannot measure it) and
  variable-frame-rate files (#54) go straight to PyAV, which places every frame by its
  real timestamp;
- any decord failure (a hang, a crash, an error, a frame count or frame shape that
  disagrees with the container's) falls back to PyAV, resuming after the frames already
  delivered, with a warning in the log and the reason in `stats["fallback"]`.
With backend="decord" a hang raises DecodeTimeout (a TransientError: a retry may land on
a less loaded machine) and other failures MediaError (permanent), as does a file on which
decord would not give PyAV's pixels.

PyAV runs in this process, without a timeout: it releases the GIL, has no known hang, and
decodes sequentially from the keyframe before the first wanted frame. Either way memory
is one chunk at a time, whatever the video length.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from t2vz_core.errors import InputError, MediaError, TransientError
from t2vz_core.media.plan import DecodePlan
from t2vz_core.media.probe import VideoInfo, probe

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_TIMEOUT = 120.0
# Frames the worker reads per decord reader before dropping it (see _decord_worker.py):
# bounds the worker's memory to about this many output frames; each new reader re-reads
# the file's index (~30 ms for a 15 MB file) and decodes from the keyframe before its first.
DECORD_SEGMENT = int(os.environ.get("T2VZ_DECORD_SEGMENT", 128))
# decord's own decoding threads: 1 holds less memory (measured 317 vs 481 MB peak) and
# costs little here, where decoding is not the bottleneck.
DECORD_THREADS = int(os.environ.get("T2VZ_DECORD_THREADS", 1))
# decord decodes ahead while the worker resizes a segment's frames: a segment ends early
# once that read-ahead holds this much (MB); each early end costs a re-seek.
DECORD_RUNAHEAD_MB = int(os.environ.get("T2VZ_DECORD_RUNAHEAD_MB", 128))
_DECORD_AVOID_CODECS = {"vp8", "vp9", "gif"}  # gif: decord cannot measure it
# Decoded pixel formats whose RGB conversion by decord (its bundled FFmpeg 4.1 swscale) was
# measured identical to PyAV's (tests/test_decoders_agree.py), with the chroma subsampling
# (horizontal, vertical) that needs even coded sides for that to hold. Everything else,
# 10-bit formats first of all, is decoded by PyAV.
_DECORD_SAME_RGB = {
    "yuv420p": (2, 2),
    "yuvj420p": (2, 2),
    "yuv422p": (2, 1),
    "yuvj422p": (2, 1),
    "yuv444p": (1, 1),
    "yuvj444p": (1, 1),
    "gray": (1, 1),
    "bgr0": (1, 1),
}
# Containers whose display rotation decord (FFmpeg 4.1's "rotate" tag) applies itself.
_DECORD_ROTATES = ("mov", "mp4")


class DecodeTimeout(TransientError):
    """The decoder delivered nothing within the timeout and was killed."""


class _DecordUnusable(Exception):
    """decord failed or disagrees with the container; "auto" falls back to PyAV."""


def iter_frames(
    path: str | os.PathLike,
    plan: DecodePlan,
    chunk_size: int = 16,
    backend: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
    stats: dict | None = None,
) -> Iterator[np.ndarray]:
    """Yield the planned frames as uint8 arrays (k, plan.height, plan.width, 3), k <= chunk_size.

    `stats`, when given, is filled with what happened: "backend" (the one that delivered
    the last frames), "fallback" (why decord was abandoned, or None) and, for decord,
    "worker_peak_rss_mb" and "worker_readers" (decord readers opened: one per segment)."""
    if backend not in BACKENDS:
        raise InputError(f"backend: {backend!r} must be one of {', '.join(BACKENDS)}")
    if backend == "decord" and not decord_installed():
        raise InputError(
            "backend: 'decord' is not installed (it has no wheel for macOS arm64 "
            "nor Linux aarch64); use backend='auto' or 'pyav'"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size: {chunk_size!r} must be a whole number >= 1")
    path = Path(path)
    info = plan.info if plan.info is not None else probe(path)
    chosen = choose_backend(info) if backend == "auto" else backend
    stats = stats if stats is not None else {}
    stats.update(backend=chosen, fallback=None)
    delivered = 0
    if chosen == "decord":
        try:
            for chunk in _iter_decord(path, plan, info, chunk_size, timeout, stats):
                delivered += len(chunk)
                yield chunk
            return
        except (_DecordUnusable, DecodeTimeout) as exc:
            if backend == "decord":
                if isinstance(exc, DecodeTimeout):
                    raise
                raise MediaError(path, f"decord failed: {exc}") from None
            log.warning("%s: decord failed (%s); continuing with PyAV from frame %d", path, exc, delivered)
            stats.update(backend="pyav", fallback=str(exc))
    yield from _iter_pyav(path, plan, info, chunk_size, skip=delivered)


def choose_backend(info: VideoInfo) -> str:
    """The decoder "auto" picks for this file (see the module docstring for why)."""
    if not decord_installed():
        return "pyav"
    if info.rotation or info.is_vfr or info.codec in _DECORD_AVOID_CODECS:
        return "pyav"
    if "webm" in info.container and "matroska" not in info.container:
        return "pyav"
    if decord_mismatch(info) is not None:
        return "pyav"
    return "decord"


def decord_installed() -> bool:
    """False where decord has no wheel (macOS, aarch64): PyAV then decodes everything."""
    try:
        return importlib.util.find_spec("decord") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["decord"] is None
        return False


def decord_mismatch(info: VideoInfo) -> str | None:
    """Why decord would not give PyAV's pixels for this file, or None when it gives them."""
    subsampling = _DECORD_SAME_RGB.get(info.pix_fmt)
    if subsampling is None:
        return f"decord converts {info.pix_fmt or 'this pixel format'} to RGB differently from PyAV"
    sx, sy = subsampling
    if info.coded_width % sx or info.coded_height % sy:
        return (
            f"decord converts {info.pix_fmt} of odd size "
            f"({info.coded_width}x{info.coded_height}) to RGB differently from PyAV"
        )
    if info.rotation and not any(name in info.container.split(",") for name in _DECORD_ROTATES):
        return f"decord ignores the rotation of {info.container} files"
    return None


# --- PyAV -------------------------------------------------------------------------------


def _iter_pyav(path: Path, plan: DecodePlan, info: VideoInfo, chunk_size: int, skip: int = 0) -> Iterator[np.ndarray]:
    wanted = plan.indices[skip:]
    if not wanted:
        return
    frames = _pyav_frames(path, info, wanted[0])
    pending: list[np.ndarray] = []
    j = 0
    try:
        for index, image in frames:
            if index < wanted[j]:
                continue
            if index > wanted[j]:  # a frame the decoder dropped: hold the next one
                log.warning("%s: frame %d missing, using frame %d", path, wanted[j], index)
            out = plan.geometry.apply(image)
            while j < len(wanted) and wanted[j] <= index:
                pending.append(out)
                j += 1
            while len(pending) >= chunk_size:
                yield np.stack(pending[:chunk_size])
                del pending[:chunk_size]
            if j == len(wanted):
                break
    finally:
        frames.close()
    if pending:
        yield np.stack(pending)
    if j < len(wanted):
        raise MediaError(
            path,
            f"video data ends early: {len(wanted) - j} planned frames "
            f"(from source frame {wanted[j]}) could not be decoded",
        )


def _pyav_frames(path: Path, info: VideoInfo, first: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB image) from `first` on; seeks to the keyframe before it."""
    import av

    index_of = {p: i for i, p in enumerate(info.pts)}
    for attempt_seek in (True, False) if first > 0 else (False,):
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if attempt_seek:
                container.seek(info.pts[first], stream=stream, backward=True, any_frame=False)
            counter = 0
            try:
                for n, frame in enumerate(container.decode(stream)):
                    index = index_of.get(frame.pts) if frame.pts is not None else None
                    if index is None:
                        if attempt_seek:
                            break  # cannot place frames without timestamps: decode from 0
                        index = counter
                    if attempt_seek and n == 0 and index > first:
                        break  # the seek overshot: decode from the start instead
                    counter = index + 1
                    yield index, frame.to_ndarray(format="rgb24")
                else:
                    return
            except av.error.FFmpegError as exc:
                raise MediaError(
                    path, f"corrupt video data after frame {counter}: {getattr(exc, 'strerror', None) or exc}"
                ) from None
        log.info("%s: seek to frame %d failed; decoding from the start", path, first)


# --- decord in a child process -------------------------------------------------------


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "t2vz_core.media._decord_worker"]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # folder holding t2vz_core/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["T2VZ_DECORD_PARENT_PID"] = str(os.getpid())  # the worker dies with this process
    return env


def _iter_decord(
    path: Path, plan: DecodePlan, info: VideoInfo, chunk_size: int, timeout: float, stats: dict
) -> Iterator[np.ndarray]:
    mismatch = decord_mismatch(info)
    if mismatch is not None:
        raise _DecordUnusable(f"{mismatch}; use backend='auto' or 'pyav'")
    # decord decodes at the source size (upright where it applies the rotation itself) and
    # the worker applies the plan's Geometry, as _iter_pyav does: the same pixels.
    decoded = info.stored_size[::-1]  # (height, width): the coded size, turned; never the SAR-stretched size
    request = {
        "path": str(path),
        "indices": list(plan.indices),
        "chunk_size": chunk_size,
        "segment": DECORD_SEGMENT,
        "threads": DECORD_THREADS,
        "runahead_mb": DECORD_RUNAHEAD_MB,
        "geometry": plan.geometry.to_dict(),
        "decoded_shape": list(decoded),
        "unrotate": info.rotation,
    }
    expect = (plan.height, plan.width)
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
            env=_worker_env(),
            bufsize=0,
        )
        try:
            _grow_pipe(proc.stdout.fileno())
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.close()
            reader = _MessageReader(proc, path, timeout, errlog)
            header, _ = reader.next()
            if header["type"] != "info":
                raise _DecordUnusable(reader.describe(header))
            if header["frame_count"] != info.frame_count:
                raise _DecordUnusable(
                    f"decord counts {header['frame_count']} frames, the container has {info.frame_count}"
                )
            while True:
                header, payload = reader.next()
                if header["type"] == "done":
                    peak = header.get("peak_rss_mb")
                    if peak is not None:
                        stats["worker_peak_rss_mb"] = max(peak, stats.get("worker_peak_rss_mb") or 0)
                    stats["worker_readers"] = header.get("readers")
                    return
                if header["type"] != "chunk":
                    raise _DecordUnusable(reader.describe(header))
                chunk = np.frombuffer(payload, np.uint8).reshape(header["shape"])
                if chunk.shape[1:] != expect + (3,):
                    raise _DecordUnusable(
                        f"decord returned frames of shape {chunk.shape[1:]}, expected {expect + (3,)}"
                    )
                yield chunk
        finally:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
            with contextlib.suppress(Exception):
                proc.stdout.close()


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups per frame (Linux only)."""
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ


class _MessageReader:
    """Reads the worker's framed messages, never waiting more than `timeout` for one."""

    def __init__(self, proc: subprocess.Popen, path: Path, timeout: float, errlog):
        self.proc, self.path, self.timeout, self.errlog = proc, path, timeout, errlog
        self.fd = proc.stdout.fileno()
        self.stream = proc.stdout

    def next(self) -> tuple[dict, bytearray | None]:
        deadline = time.monotonic() + self.timeout
        (size,) = struct.unpack("<I", self._read(4, deadline))
        header = json.loads(bytes(self._read(size, deadline)))
        payload = self._read(header["nbytes"], deadline) if "nbytes" in header else None
        return header, payload

    def describe(self, header: dict) -> str:
        return header.get("error") or f"unexpected message {header.get('type')!r}"

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            ready = select.select([self.fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                self.proc.kill()
                raise DecodeTimeout(
                    f"{self.path}: decord delivered no frames for "
                    f"{self.timeout:g} s and was stopped (a known decord hang, "
                    f"dmlc/decord#373); retry, or use backend='pyav'"
                )
            k = self.stream.readinto(view[got:])
            if not k:
                raise _DecordUnusable(f"decord worker exited (code {self.proc.wait()}): {self._stderr_tail()}")
            got += k
        return buf

    def _stderr_tail(self) -> str:
        with contextlib.suppress(Exception):
            self.errlog.seek(0)
            lines = self.errlog.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:])[-500:] or "no message"
        return "no message"
