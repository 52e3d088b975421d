"""FrameStore: a folder of lossless PNG frames plus meta.json, written atomically.

Layout: 00000.png, 00001.png, ... and meta.json = {"format", "fps": "num/den", "width",
"height", "count", "params"}. `params` records how the frames were made (decode plan,
control-map parameters...) so a later run can reuse the store when they match.

Writing goes to a hidden sibling folder `.<name>.partial` (each PNG itself written under a
temporary name then renamed), and `close()` renames the finished folder into place: a
crash never leaves a half-written store at the final path, and a re-run resumes from the
frames already in the partial folder (`done(start, stop)` tells a producer what to skip).
A lock file `.<name>.lock` (flock) serialises writers of the same store across threads and
processes: the second writer waits, then finds the store complete and does nothing. Use
writers as context managers (or close()/abort() in a finally); a writer its own thread left
unclosed is aborted when that thread opens the same store again (a retry), never waited for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2vz_core.atomic import atomic_path, atomic_write_bytes, fsync_dir, replace_dir
from t2vz_core.errors import InputError, MediaError, TransientError
from t2vz_core.media.geometry import as_chunk
from t2vz_core.rates import fraction_text, to_fraction

log = logging.getLogger(__name__)

FORMAT = "t2vz-framestore/1"
META = "meta.json"
_PARTIAL_META = "partial.json"
_FRAME_RE = re.compile(r"^(\d{5,})\.png$")


def frame_name(index: int) -> str:
    return f"{index:05d}.png"


def normalize_params(params: dict | None) -> dict:
    """JSON round trip so tuples/lists, Paths/strings, Fractions compare as stored."""
    return json.loads(json.dumps(params or {}, sort_keys=True, default=str))


class FrameStore:
    """Read side: `len()`, `store[i]` -> (H, W, 3), `store[a:b]` -> (k, H, W, 3) uint8."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise MediaError(self.path, "not a finished frame store (no meta.json)") from None
        except (OSError, ValueError) as exc:
            raise MediaError(self.path, f"unreadable meta.json ({exc})") from None
        if meta.get("format") != FORMAT:
            raise MediaError(self.path, f"meta.json is not a {FORMAT} store")
        self.meta: dict = meta
        self.fps: Fraction = to_fraction(meta["fps"])
        self.width: int = int(meta["width"])
        self.height: int = int(meta["height"])
        self.count: int = int(meta["count"])
        self.params: dict = meta.get("params", {})

    @classmethod
    def open_if_matches(
        cls, path: str | os.PathLike, params: dict | None = None, fps: Fraction | None = None
    ) -> FrameStore | None:
        """The finished store at `path` when it was made with these params (and fps), else None."""
        try:
            store = cls(path)
        except MediaError:
            return None
        if params is not None and store.params != normalize_params(params):
            return None
        if fps is not None and store.fps != to_fraction(fps):
            return None
        if store.count and not (store.path / frame_name(store.count - 1)).exists():
            return None
        return store

    @staticmethod
    def writer(
        path: str | os.PathLike,
        fps: Fraction | int | float | str,
        meta: dict | None = None,
        *,
        expected_count: int | None = None,
        lock_timeout: float | None = None,
        fresh: bool = False,
    ) -> FrameStoreWriter:
        """A writer for the store at `path`; `meta` is saved as meta.json's "params".

        A finished store with the same params (and fps) is reused (`writer.reused`; writes
        become no-ops) and a partial one resumed, unless `fresh`."""
        return FrameStoreWriter(path, fps, meta, expected_count=expected_count, lock_timeout=lock_timeout, fresh=fresh)

    def __len__(self) -> int:
        return self.count

    def frame_path(self, index: int) -> Path:
        return self.path / frame_name(index)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            indices = range(*key.indices(self.count))
            if not len(indices):
                return np.zeros((0, self.height, self.width, 3), np.uint8)
            return np.stack([self._read(i) for i in indices])
        index = int(key)
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"frame {key} out of range for {self.count} frames")
        return self._read(index)

    def iter_chunks(self, chunk_size: int = 16) -> Iterator[np.ndarray]:
        for start in range(0, self.count, chunk_size):
            yield self[start : start + chunk_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_chunks()

    def _read(self, index: int) -> np.ndarray:
        return read_png(self.frame_path(index))

    def __repr__(self) -> str:
        return (
            f"FrameStore({str(self.path)!r}, {self.count} frames, {self.width}x{self.height}, "
            f"{fraction_text(self.fps)} fps)"
        )


def read_png(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(path, "missing or unreadable PNG frame")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_png(frame: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise MediaError("<memory>", f"PNG encoding failed for a {frame.shape} frame")
    return data.tobytes()


class FrameStoreWriter:
    """Write side of a FrameStore; a FrameSink for the engine (write / done) and a context
    manager: leaving the block normally finalizes, leaving it by an exception keeps the
    partial frames for a resume and releases the lock."""

    def __init__(
        self,
        path: str | os.PathLike,
        fps,
        meta: dict | None = None,
        *,
        expected_count: int | None = None,
        lock_timeout: float | None = None,
        fresh: bool = False,
    ):
        self.path = Path(path)
        self.fps = to_fraction(fps)
        self.params = normalize_params(meta)
        self.expected_count = expected_count
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock_fd = None
        _take_over_from_abandoned_writer(self._lock_path)
        self._lock_fd = _lock(self._lock_path, lock_timeout)
        _register(self._lock_path, self)
        self.closed = False
        self.width: int | None = None
        self.height: int | None = None
        self.existing = None if fresh else FrameStore.open_if_matches(self.path, self.params, self.fps)
        if self.existing is not None and expected_count not in (None, self.existing.count):
            self.existing = None
        if self.existing is None:
            self._prepare_partial(resume=not fresh)

    @property
    def reused(self) -> bool:
        """True when a finished store with the same parameters was already there."""
        return self.existing is not None

    def _header(self) -> dict:
        return {"fps": fraction_text(self.fps), "params": self.params, "width": self.width, "height": self.height}

    def _prepare_partial(self, resume: bool) -> None:
        header_path = self.partial / _PARTIAL_META
        if resume and header_path.exists():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(header_path.read_text())
                if old.get("fps") == fraction_text(self.fps) and old.get("params") == self.params:
                    self.width, self.height = old.get("width"), old.get("height")
                    return  # resume: frames already written stay
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        atomic_write_bytes(header_path, json.dumps(self._header()).encode())

    def write(self, start: int, frames) -> None:
        """Write frames start, start+1, ... (uint8 (k, H, W, 3)); rewriting is harmless."""
        self._check_open()
        if self.existing is not None:
            return
        chunk = as_chunk(frames)
        h, w = chunk.shape[1:3]
        if self.width is None:
            self.width, self.height = w, h
            atomic_write_bytes(self.partial / _PARTIAL_META, json.dumps(self._header()).encode())
        elif (w, h) != (self.width, self.height):
            raise InputError(f"{self.path}: frame size {w}x{h} differs from the store's {self.width}x{self.height}")
        for offset, frame in enumerate(chunk):
            _write_durably(self.partial / frame_name(start + offset), encode_png(frame))

    def done(self, start: int, stop: int) -> bool:
        """True when frames start..stop-1 are already written (a producer may skip them)."""
        if self.existing is not None:
            return stop <= self.existing.count
        return all((self.partial / frame_name(i)).exists() for i in range(start, stop))

    def first_missing(self) -> int:
        """Index of the first frame not yet written (0 for a fresh store)."""
        if self.existing is not None:
            return self.existing.count
        present = self._present()
        i = 0
        while i in present:
            i += 1
        return i

    def _present(self) -> set[int]:
        found = set()
        for name in os.listdir(self.partial):
            match = _FRAME_RE.match(name)
            if match:
                found.add(int(match.group(1)))
        return found

    def close(self) -> FrameStore:
        """Check the frames are complete, write meta.json, move the folder into place."""
        if self.closed:
            return FrameStore(self.path)
        try:
            if self.existing is not None:
                return self.existing
            present = self._present()
            count = self.expected_count if self.expected_count is not None else (max(present) + 1 if present else 0)
            missing = [i for i in range(count) if i not in present]
            if missing or count == 0:
                raise MediaError(
                    self.path,
                    f"frame store incomplete: {len(missing)} of {count} frames missing (first: {missing[:5]})"
                    if count
                    else "frame store has no frames",
                )
            for extra in sorted(i for i in present if i >= count):
                (self.partial / frame_name(extra)).unlink()
            meta = {"format": FORMAT, **self._header(), "count": count}
            with atomic_path(self.partial / META) as tmp:
                tmp.write_text(json.dumps(meta, indent=1))
            (self.partial / _PARTIAL_META).unlink()
            fsync_dir(self.partial)
            replace_dir(self.partial, self.path)
            return FrameStore(self.path)
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without finalizing: frames written so far stay for a resume."""
        self._release()

    def _release(self) -> None:
        self.closed = True
        if self._lock_fd is not None:
            _unregister(self._lock_path, self)
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _check_open(self) -> None:
        if self.closed:
            raise InputError(f"{self.path}: writer already closed")

    def __enter__(self) -> FrameStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()


# Writers holding a store lock in this process: lock path -> (thread id, writer).
_HOLDERS: dict[str, tuple[int, weakref.ref]] = {}
_HOLDERS_LOCK = threading.Lock()


def _take_over_from_abandoned_writer(lock_path: Path) -> None:
    """A writer of the same store left unclosed by this very thread (an exception kept it
    alive, and the thread now retries) would block us forever: abort it. Writers of other
    threads or processes are waited for."""
    with _HOLDERS_LOCK:
        holder = _HOLDERS.get(str(lock_path))
    if holder is None:
        return
    thread_id, ref = holder
    writer = ref()
    if writer is not None and thread_id == threading.get_ident() and not writer.closed:
        log.warning("%s: taking over from an unfinished writer of this thread", writer.path)
        writer.abort()


def _register(lock_path: Path, writer: FrameStoreWriter) -> None:
    with _HOLDERS_LOCK:
        _HOLDERS[str(lock_path)] = (threading.get_ident(), weakref.ref(writer))


def _unregister(lock_path: Path, writer: FrameStoreWriter) -> None:
    with _HOLDERS_LOCK:
        holder = _HOLDERS.get(str(lock_path))
        if holder is not None and holder[1]() is writer:
            del _HOLDERS[str(lock_path)]


def _write_durably(final: Path, data: bytes) -> None:
    """A frame file is whole or absent (the folder is fsynced once, at close)."""
    atomic_write_bytes(final, data, sync_dir=False)


def _lock(lock_path: Path, timeout: float | None) -> int:
    """An exclusive flock on `lock_path`; waits (forever when timeout is None)."""
    import fcntl

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise TransientError(
                    f"{lock_path.name[1:-5]}: another writer has held this frame store for over {timeout:g} s"
                ) from None
            time.sleep(0.05)
