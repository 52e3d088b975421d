"""Path confinement: where sources may come from, where outputs may go, what a model value may be.

Manifests are data from users (or from whoever wrote the CSV), so every path in them is checked
here before any file is opened:

- sources resolve against the manifest's folder, symlinks are followed (realpath) and the real
  file must lie inside an allowed root (default: the manifest's folder; `T2VZ_ALLOWED_ROOTS`,
  colon-separated, or an explicit list replaces that default);
- outputs are always `output_dir/<job_id><suffix>`, checked again here although job ids are
  validated, and never written through a symlink;
- a model value is an existing local folder (not confined: weights are not sources, and they are
  loaded as safetensors without remote code) or a hub id `org/name`; anything else is refused.

Nothing here runs a shell; these strings only ever reach `open()`/`from_pretrained`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from t2vz_core.errors import InputError

ALLOWED_ROOTS_ENV = "T2VZ_ALLOWED_ROOTS"

JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Job ids whose outputs (sidecar report.json, PNG folder report.csv/...) would hit the run report.
RESERVED_JOB_IDS = frozenset({"report", "report.json", "report.csv"})

# Hugging Face repo ids: "org/name", ASCII letters, digits, '.', '_', '-', at most 96 characters per part.
HUB_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,96}/[A-Za-z0-9_.-]{1,96}", re.ASCII)
# Git revisions: branch or tag names and commit hashes.
REVISION_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,254}", re.ASCII)
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SUFFIX_RE = re.compile(r"(\.[A-Za-z0-9]{1,16})*")


def check_job_id(value: str) -> str:
    """Return `value` if it is a safe job id (used as a file name), else raise InputError."""
    if not isinstance(value, str) or not JOB_ID_RE.fullmatch(value):
        raise InputError(
            f"job_id {value!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-' "
            "(no spaces, slashes or other characters; it becomes a file name)"
        )
    if value.startswith("."):
        raise InputError(f"job_id {value!r} must not start with '.' (hidden files, '.' and '..')")
    if value.lower() in RESERVED_JOB_IDS:
        raise InputError(f"job_id {value!r} is reserved (OUTPUT_DIR/report.json and report.csv are the run report)")
    return value


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


class RealRoots(tuple):
    """Allowed roots already resolved to real paths (what `resolve_allowed_roots` returns).

    Passing one back in skips resolving them again, which matters for 10,000-row manifests.
    """


def allowed_roots_from_env() -> RealRoots | None:
    """Roots listed in T2VZ_ALLOWED_ROOTS (separated by ':'), or None when unset or empty."""
    raw = os.environ.get(ALLOWED_ROOTS_ENV, "")
    roots = [_real(part) for part in raw.split(os.pathsep) if part.strip()]
    return RealRoots(roots) if roots else None


def resolve_allowed_roots(
    base_dir: str | os.PathLike[str], allowed_roots: Iterable[str | os.PathLike[str]] | None = None
) -> RealRoots:
    """The roots sources must lie in: `allowed_roots` if given, else T2VZ_ALLOWED_ROOTS, else `base_dir`.

    Each replaces the next (they are not merged), so a configured list is exactly what is allowed.
    Returned as real paths (symlinks resolved), a tuple of Paths.
    """
    if isinstance(allowed_roots, RealRoots):
        return allowed_roots
    if allowed_roots is not None:
        roots = RealRoots(_real(root) for root in allowed_roots)
        if not roots:
            raise InputError("allowed_roots is empty: no source could ever be read")
        return roots
    return allowed_roots_from_env() or RealRoots([_real(base_dir)])


def _inside(path: str | os.PathLike[str], roots: Iterable[Path]) -> bool:
    text = os.fspath(path)
    for root in roots:
        root_text = os.fspath(root)
        if text == root_text or text.startswith(root_text if root_text.endswith(os.sep) else root_text + os.sep):
            return True
    return False


def resolve_source(
    value: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    allowed_roots: Iterable[str | os.PathLike[str]] | None = None,
) -> Path:
    """Resolve a manifest `source` to the real path of an existing file inside the allowed roots.

    Relative values resolve against `base_dir` (the manifest's folder). Symlinks are followed and
    the *real* target is what must be inside a root, so neither `..` nor a link can escape.
    Returns the real path: later steps open that, not the link.
    """
    text = os.fspath(value).strip()
    if not text:
        raise InputError("source is empty")
    if "\x00" in text:
        raise InputError(f"source {text!r} contains a NUL character")
    if _URL_RE.match(text):
        raise InputError(f"source {text!r} is a URL: download it first and give the local file")
    roots = resolve_allowed_roots(base_dir, allowed_roots)
    expanded = os.path.expanduser(text)
    joined = expanded if os.path.isabs(expanded) else os.path.join(os.path.abspath(base_dir), expanded)
    real = os.path.realpath(joined)  # strings, not Paths, on this hot path
    if not _inside(real, roots):
        lexical = os.path.normpath(joined)  # what the text says, before following links
        if _inside(lexical, roots):
            reason = f"it is (or passes through) a symlink to {real}, outside the allowed roots"
        elif ".." in Path(text).parts:
            reason = f"its '..' leads to {lexical}, outside the allowed roots"
        else:
            reason = f"{real} is outside the allowed roots"
        shown = ", ".join(str(root) for root in roots)
        raise InputError(
            f"source {text!r} refused: {reason} ({shown}); allow more folders with "
            f"{ALLOWED_ROOTS_ENV}=dir1:dir2 or allowed_roots"
        )
    if not os.path.isfile(real):
        if not os.path.exists(real):
            raise InputError(f"source {text!r} not found (looked for {real})")
        if os.path.isdir(real):
            raise InputError(f"source {text!r} is a folder ({real}); expected a video file")
        raise InputError(f"source {text!r} is not a regular file ({real})")
    if not os.access(real, os.R_OK):
        raise InputError(f"source {text!r} is not readable ({real}): check its permissions")
    return Path(real)


def output_path(output_dir: str | os.PathLike[str], job_id: str, suffix: str = "") -> Path:
    """`output_dir/<job_id><suffix>`, guaranteed to be inside `output_dir` (defence in depth).

    `suffix` is "" (e.g. the PNG folder) or extensions like ".mp4" / ".tmp.mp4". Refuses an
    existing symlink at that name, which would let a write land elsewhere.
    """
    check_job_id(job_id)
    if not _SUFFIX_RE.fullmatch(suffix):
        raise InputError(f"output suffix {suffix!r} is not allowed (expected e.g. '.mp4' or '')")
    root = _real(output_dir)
    path = root / f"{job_id}{suffix}"
    if path.parent != root or not _inside(path, [root]):
        raise InputError(f"output for job {job_id!r} would leave the output folder {root}")
    if path.is_symlink():
        raise InputError(f"refusing to write through a symlink at {path}")
    return path


def is_hub_id(value: str) -> bool:
    """True for a well-formed Hugging Face repo id `org/name` (no '..', no '--' edges)."""
    if not isinstance(value, str) or not HUB_ID_RE.fullmatch(value):
        return False
    return all(
        part not in (".", "..")
        and ".." not in part
        and not part.startswith(("-", "."))
        and not part.endswith(("-", "."))
        for part in value.split("/")
    )


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")


def check_model_ref(value: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Normalise a `model`/`controlnet` value: an existing local folder (returned absolute, real) or a hub id.

    A value that names an existing folder (relative to `base_dir`, default the current folder) is
    local; otherwise it must be a hub id. Values starting with '/', './', '../' or '~' are always
    local and must exist. Model folders are not confined to the allowed roots (see module doc).
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InputError("model reference is empty")
    if "\x00" in text or any(ch in text for ch in "\n\r\t"):
        raise InputError(f"{text!r} contains control characters")
    if _URL_RE.match(text):
        raise InputError(
            f"{text!r} is a URL; give a hub id like 'org/name' or a local folder (downloads by URL are not supported)"
        )
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    candidate = Path(os.path.expanduser(text))
    candidate = candidate if candidate.is_absolute() else base / candidate
    if candidate.is_dir():
        return str(_real(candidate))
    if _looks_like_path(text):
        raise InputError(f"model folder {text!r} not found (looked for {candidate})")
    if candidate.exists():
        raise InputError(f"{text!r} is a file; a model must be a folder (diffusers format) or a hub id")
    if not is_hub_id(text):
        raise InputError(
            f"{text!r} is neither an existing local folder nor a hub id like 'org/name' "
            "(letters, digits, '.', '_', '-')"
        )
    return text


def check_revision(value: str) -> str:
    """A git revision (branch, tag or commit hash) for a hub model; refuses anything shell-like."""
    text = value.strip() if isinstance(value, str) else ""
    if not REVISION_RE.fullmatch(text) or ".." in text or text.endswith(("/", ".lock")):
        raise InputError(
            f"revision {value!r} is not a valid branch, tag or commit (letters, digits, '.', '_', '-', '/')"
        )
    return text
