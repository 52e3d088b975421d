"""Child process that reads frames with decord and streams them to the parent over a pipe.

Run as `python -m t2vz_core.media._decord_worker`; the parent (decode.py) writes one JSON
request line on stdin: path, indices, chunk_size, geometry (Geometry.to_dict() of the
plan), decoded_shape [h, w] (the size decord must deliver), unrotate (clockwise degrees
decord itself turned the frames), threads, segment (frames read per decord reader, default
128), runahead_mb (end a segment early when decord's read-ahead grows past this).

Why a process: decord's get_batch can hang while holding the GIL (dmlc/decord#373), which no
thread can interrupt; a process can be killed. It also bounds decord's memory growth on
long files (#208) to one job.

decord decodes at the source size and the plan's Geometry (the same function PyAV's frames
go through) resizes, turns, crops and pads each frame here, so both backends give the same
pixels and only output-size frames are held and piped.

Messages on stdout: 4-byte little-endian header length, a JSON header, then `nbytes` raw
bytes when the header says so. Headers: {"type": "info", "frame_count": n},
{"type": "chunk", "shape": [k, h, w, 3], "nbytes": ...},
{"type": "done", "peak_rss_mb": ..., "readers": decord readers opened},
{"type": "error", "error": "..."}.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import sys
import threading


def send(out, header: dict, payload: bytes | memoryview | None = None) -> None:
    data = json.dumps(header).encode()
    out.write(struct.pack("<I", len(data)) + data)
    if payload is not None:
        out.write(payload)
    out.flush()


def peak_rss_mb() -> float | None:
    """This process's own high-water mark (VmHWM; ru_maxrss would include the parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them; measured 199 -> 170 MB peak)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tie_to_parent() -> None:
    """Never outlive the parent, nor act on its terminal's Ctrl-C: the parent ends this worker
    itself when it stops (decode.py kills it when its reader is closed). PR_SET_PDEATHSIG (Linux)
    kills this process when the parent thread that started it ends, even by SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.environ.get("T2VZ_DECORD_PARENT_PID")
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def main() -> int:
    tie_to_parent()
    # Keep the data channel private: anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    request = json.loads(sys.stdin.readline())
    try:
        from t2vz_core.media.geometry import Geometry

        geometry = Geometry.from_dict(request["geometry"])
        if geometry.resize is not None:
            # cv2 (the resize) takes ~0.15 s to import: overlap that with opening the file
            threading.Thread(target=importlib.import_module, args=("cv2",), daemon=True).start()
        import decord
        import numpy as np

        decoded_shape = (*request["decoded_shape"], 3)
        turns = request.get("unrotate", 0) // 90

        def to_output(image: np.ndarray) -> np.ndarray:
            if image.shape != decoded_shape:
                raise ValueError(f"decord returned frames of shape {image.shape}, expected {decoded_shape}")
            if turns:  # decord turned it upright: back to the coded orientation, exactly
                image = np.rot90(image, k=turns)
            return geometry.apply(image)

        options = {"ctx": decord.cpu(0), "num_threads": request.get("threads", 0)}
        wanted = request["indices"]  # non-decreasing: a repeated frame repeats in a row
        chunk = request["chunk_size"]
        segment = max(1, request.get("segment", 128))
        runahead_mb = request.get("runahead_mb")
        reader = decord.VideoReader(request["path"], **options)
        send(out, {"type": "info", "frame_count": len(reader)})
        readers = 1
        pending: list = []  # output frames of wanted[sent:], not yet sent
        last_index, last_frame = None, None
        lo = 0
        while lo < len(wanted):
            if reader is None:
                reader = decord.VideoReader(request["path"], **options)
                readers += 1
            # Read the segment at full speed, then drop the reader before the (slow)
            # parent drains the pipe: an idle decord reader keeps decoding ahead into an
            # unbounded queue (measured: +1.7 GB in 3 s at 512x512). It also decodes ahead
            # while we resize (a 1080p frame to 256 px takes longer than decoding it), so
            # the segment ends early once that read-ahead has grown past runahead_mb
            # (measured at 1080p -> 256 px: 636 MB peak without it, 270-325 MB with 128).
            # vr[i] in order also beats get_batch (700 vs 370 frames/s measured).
            start_mb = rss_mb()
            held = 0  # bytes of output frames read in this segment (the rest is in start_mb)
            for _ in range(segment):
                if lo == len(wanted):
                    break
                if wanted[lo] != last_index:
                    last_index, last_frame = wanted[lo], to_output(reader[wanted[lo]].asnumpy())
                    held += last_frame.nbytes
                pending.append(last_frame)
                lo += 1
                now_mb = rss_mb()
                if runahead_mb and None not in (start_mb, now_mb) and now_mb - start_mb - held / 2**20 > runahead_mb:
                    break
            del reader
            reader = None
            release_freed_memory()
            # whole chunks only; the rest waits for the next segment
            while len(pending) >= chunk or (pending and lo == len(wanted)):
                batch = np.stack(pending[:chunk])
                del pending[:chunk]
                send(
                    out,
                    {"type": "chunk", "shape": list(batch.shape), "nbytes": batch.nbytes},
                    memoryview(batch).cast("B"),
                )
                del batch
            release_freed_memory()
        send(out, {"type": "done", "peak_rss_mb": peak_rss_mb(), "readers": readers})
        return 0
    except Exception as exc:  # reported to the parent, which decides what it means
        send(out, {"type": "error", "error": f"{type(exc).__name__}: {exc}"[-2000:]})
        return 1


if __name__ == "__main__":
    sys.exit(main())
