"""Decode straight into a FrameStore, reusing or resuming what an earlier run wrote."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from t2vz_core.media.decode import DEFAULT_TIMEOUT, iter_frames
from t2vz_core.media.plan import DecodePlan
from t2vz_core.media.store import FrameStore
from t2vz_core.rates import fraction_text
from t2vz_core.stop import check as check_stop


def plan_fingerprint(plan: DecodePlan) -> dict:
    """What makes two plans produce the same frames from the same file (JSON-safe)."""
    digest = hashlib.sha256(json.dumps(plan.indices).encode()).hexdigest()[:16]
    return {
        "fps": fraction_text(plan.fps),
        "width": plan.width,
        "height": plan.height,
        "count": len(plan.indices),
        "indices_sha": digest,
        "geometry": plan.geometry.to_dict(),
    }


def source_key(path: Path) -> dict:
    """Default identity of a source file: path, size and modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def decode_to_store(
    path: str | os.PathLike,
    plan: DecodePlan,
    store_path: str | os.PathLike,
    source: dict | str | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = 16,
    timeout: float = DEFAULT_TIMEOUT,
) -> FrameStore:
    """Decode `plan` from `path` into a FrameStore at `store_path` and return it.

    The store records the plan and `source` (pass a content hash of the file to make reuse
    independent of paths and timestamps; default: path, size, mtime). An existing store with
    the same record is returned as is; a partial one is resumed from its first missing frame.
    """
    path = Path(path)
    params = {
        "kind": "frames",
        "plan": plan_fingerprint(plan),
        "source": source if source is not None else source_key(path),
    }
    with FrameStore.writer(store_path, plan.fps, params, expected_count=len(plan)) as writer:
        if writer.reused:
            return writer.existing
        start = writer.first_missing()
        if start < len(plan):
            rest = dataclasses.replace(plan, indices=plan.indices[start:], timestamps=plan.timestamps[start:])
            # closing(): a stop between chunks ends the decord worker now, not when the
            # exception's traceback is freed.
            with contextlib.closing(
                iter_frames(path, rest, chunk_size=chunk_size, backend=backend, timeout=timeout)
            ) as chunks:
                for chunk in chunks:
                    writer.write(start, chunk)
                    start += len(chunk)
                    check_stop(f"decode, {start} of {len(plan)} frames written")  # a re-run resumes here
    return FrameStore(store_path)
