"""Model fingerprints for cache keys, without loading (or importing) anything heavy.

A local folder is named by the digest of its files (memoized per file on disk, so a new process
does not reread unchanged weights); a hub id by the commit its revision points to in the local
Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from t2vz_core.errors import InputError
from t2vz_core.paths import is_hub_id


def check_revision_target(model_id, revision: str | None) -> str | None:
    if revision is None or not str(revision).strip():
        return None
    if Path(str(model_id)).expanduser().is_dir():
        raise InputError(f"model {model_id}: revision {revision!r} applies to hub models; this is a local folder")
    return str(revision).strip()


def model_fingerprint(model_id, revision: str | None = None) -> str:
    """A stable id+revision string for cache keys, without loading the model.

    Local folder: "local:sha256:<hex>" over relative file names and bytes (hidden files such as
    .git or .cache are skipped). Per-file digests are memoized on disk (see `digest_memo_dir`), so
    a new process does not reread unchanged weights. A revision with a local folder is an InputError.
    Hub id: "hub:<id>@<commit>" for the commit that `revision` (default: main) points to in the local
    HF cache; when it is not cached, "hub:<id>@<revision>" or "hub:<id>@unresolved" without revision.
    """
    text = str(model_id)
    folder = Path(text).expanduser()
    revision = check_revision_target(model_id, revision)
    if folder.is_dir():
        return f"local:sha256:{folder_digest(folder)}"
    if not is_hub_id(text):  # the manifest's rule (t2vz_core.paths), not a second one
        raise InputError(f"model {text}: no such folder, and not a hub id (org/name)")
    return f"hub:{text}@{cached_commit(text, revision) or revision or 'unresolved'}"


def digest_memo_dir() -> Path:
    """Where weight-file digests are remembered: $T2VZ_CACHE_DIR/file-digests, else <HF_HOME>/t2vz/file-digests."""
    from huggingface_hub import constants

    root = os.environ.get("T2VZ_CACHE_DIR") or os.path.join(constants.HF_HOME, "t2vz")
    return Path(root).expanduser() / "file-digests"


def folder_digest(folder: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 over the relative names and bytes of a folder's files (hidden ones skipped; only
    those ending in `suffixes` when given)."""
    digest = hashlib.sha256()
    files = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        files += [Path(directory, n) for n in names if not n.startswith(".")]
    if suffixes is not None:
        files = [path for path in files if path.suffix.lower() in suffixes]
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256, memoized (workdir.file_digest: per real path, device, inode, size, mtime,
    ctime) in memory and in digest_memo_dir()."""
    from t2vz_core.workdir import file_digest

    try:
        return file_digest(path, digest_memo_dir())
    except OSError:  # an unwritable cache folder must not stop a run: hash without the disk memo
        return file_digest(path)


def cached_commit(
    repo_id: str, revision: str | None = None, filenames: tuple[str, ...] = ("model_index.json", "config.json")
) -> str | None:
    """The commit of a hub repo's snapshot in the local HF cache that holds one of `filenames`."""
    from huggingface_hub import try_to_load_from_cache

    # Pipelines have model_index.json at the top, single models (ControlNets) config.json.
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):  # .../snapshots/<commit>/<filename>
            return Path(found).parent.name
    return None
