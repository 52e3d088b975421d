"""Content-addressed work folder: every step's output lives under a key derived from its inputs.

Layout under the root::

    <step>/<key>/            finished entries (entry.json written last, folder renamed into place)
    .partial/<step>/<key>/   an entry being built, only touched while the key's lock is held
    .locks/<step>/<key>.lock per-key file locks (flock: released by the kernel if a process dies)
    .trash/                  entries replaced by a forced rebuild, removed right after

Guarantees: an entry folder at its final path is always complete (built aside, then renamed);
two processes building the same key never interleave (the second waits, then finds the entry);
a crashed build leaves only a partial folder that the next build of the key resumes (resumable
steps) or wipes (the others).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import t2vz_core
from t2vz_core.atomic import atomic_write_json

# Bump when the meaning of an entry changes without a t2vz_core version bump.
WORK_SCHEMA = 1
ENTRY_META = "entry.json"

_digest_lock = threading.Lock()
_digest_memo: dict[tuple, str] = {}
_RACY_NS = 2_000_000_000  # files younger than this are rehashed every time


def file_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a file's bytes.

    Memoized per (device, inode, size, mtime, ctime): any write changes mtime and ctime (ctime
    cannot be set back by tools that restore mtimes), so rewritten bytes are always rehashed.
    With `memo_dir` the memo also lives on disk, so a later run does not reread large sources.
    Files modified in the last seconds are never memoized: a second write within the same
    timestamp tick would otherwise go unnoticed (git's "racy clean" problem).
    """
    path = Path(path)
    st = path.stat()
    identity = [str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    memo_key = tuple(identity)
    with _digest_lock:
        hit = _digest_memo.get(memo_key)
    if hit is not None:
        return hit
    memo_file = None
    if memo_dir is not None:
        memo_file = Path(memo_dir) / f"{hashlib.sha256(str(identity[0]).encode()).hexdigest()}.json"
        try:
            saved = json.loads(memo_file.read_text(encoding="utf-8"))
            if saved.get("identity") == identity:
                with _digest_lock:
                    _digest_memo[memo_key] = saved["sha256"]
                return saved["sha256"]
        except (FileNotFoundError, ValueError, KeyError, AttributeError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    settled = time.time_ns() - st.st_mtime_ns > _RACY_NS and path.stat().st_mtime_ns == st.st_mtime_ns
    if settled:
        with _digest_lock:
            _digest_memo[memo_key] = digest
        if memo_file is not None:
            atomic_write_json(memo_file, {"identity": identity, "sha256": digest})
    return digest


def _canonical(value: Any) -> Any:
    """Turn parameters into plain JSON so equal values always hash equally."""
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 7.0 and 7 mean the same parameter
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def make_key(step: str, parts: dict[str, Any]) -> str:
    """Key of a step's output: sha256 over the step name, its inputs' digests/parameters and versions."""
    payload = {"step": step, "t2vz_core": t2vz_core.__version__, "schema": WORK_SCHEMA, "parts": parts}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A finished work entry. `hit` is True when this call found it instead of building it."""

    step: str
    key: str
    path: Path
    meta: dict = field(default_factory=dict)
    hit: bool = False


class WorkDir:
    """The content-addressed store. Cheap to construct; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------
    def entry_path(self, step: str, key: str) -> Path:
        _check_name(step)
        _check_name(key)
        return self.root / step / key

    def partial_path(self, step: str, key: str) -> Path:
        return self.root / ".partial" / step / key

    @property
    def digest_memo(self) -> Path:
        """Where source digests are remembered between runs (see file_digest)."""
        return self.root / ".digests"

    def _lock_path(self, step: str, key: str) -> Path:
        return self.root / ".locks" / step / f"{key}.lock"

    # -- reading -----------------------------------------------------------------------------
    def lookup(self, step: str, key: str) -> Entry | None:
        """The finished entry for this key, or None."""
        path = self.entry_path(step, key)
        try:
            meta = json.loads((path / ENTRY_META).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # damaged by hand: treated as absent and rebuilt
        return Entry(step, key, path, meta, hit=True)

    def has(self, step: str, key: str) -> bool:
        return self.lookup(step, key) is not None

    # -- locking -----------------------------------------------------------------------------
    @contextmanager
    def lock(self, step: str, key: str, poll_s: float = 0.2) -> Iterator[None]:
        """Exclusive per-key lock across threads and processes (one open file description each)."""
        path = self._lock_path(step, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll_s)  # polling keeps the waiter interruptible
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- building ----------------------------------------------------------------------------
    def produce(
        self,
        step: str,
        key: str,
        build: Callable[[Path], dict | None],
        *,
        force: bool = False,
        resumable: bool = False,
    ) -> Entry:
        """Return the entry for `key`, calling `build(folder)` to fill a fresh folder when missing.

        `build` writes its files into the folder it is given and returns extra metadata for
        entry.json. It runs while the key's lock is held, so no other build of this key runs
        at the same time. With `resumable`, a folder left by a crashed build is handed to
        `build` again (it may skip what is already there); otherwise it is wiped first.
        `force` rebuilds even when an entry exists, then swaps it in.
        """
        if not force:
            found = self.lookup(step, key)
            if found is not None:
                return found
        with self.lock(step, key):
            if not force:
                found = self.lookup(step, key)  # another run may have finished it while we waited
                if found is not None:
                    return found
            staging = self.partial_path(step, key)
            if staging.exists() and not (resumable and not force):
                shutil.rmtree(staging)
            staging.mkdir(parents=True, exist_ok=True)
            extra = build(staging) or {}
            meta = {
                "step": step,
                "key": key,
                "t2vz_core": t2vz_core.__version__,
                "schema": WORK_SCHEMA,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **extra,
            }
            atomic_write_json(staging / ENTRY_META, meta)
            final = self.entry_path(step, key)
            self._install(staging, final)
            return Entry(step, key, final, meta, hit=False)

    def _install(self, staging: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # forced rebuild: move the old entry aside first
            trash = self.root / ".trash" / f"{final.name}.{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, trash)
            os.rename(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
            return
        try:
            os.rename(staging, final)
        except OSError as exc:  # only reachable without working locks: someone else won
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(staging, ignore_errors=True)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"bad work-folder name {name!r}")
