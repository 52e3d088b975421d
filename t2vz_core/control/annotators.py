"""Annotator weights for controlnet-aux detectors: a local folder or a hub repo id.

Nothing is downloaded behind the user's back when the hub is unreachable: a missing
file becomes an InputError that names the files, where they come from and where to put
them. Checked before controlnet-aux is imported (that import alone takes ~14 s).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from t2vz_core.errors import InputError

DEFAULT_ANNOTATOR = "lllyasviel/Annotators"


def resolve_weights(backend: str, annotator: str, files: list[str]) -> Path:
    """The folder holding all `files` for `backend` (local folder, or the hub cache)."""
    folder = Path(str(annotator)).expanduser()
    if folder.is_dir():
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise InputError(
                f"{backend}: the annotator folder {folder} lacks "
                f"{', '.join(missing)}; download {_source(files)} into it"
            )
        return folder
    if _looks_like_path(str(annotator)):
        raise InputError(
            f"{backend}: annotator folder {annotator} does not exist; download "
            f"{_source(files)} into a folder and pass it as annotator"
        )
    try:
        from huggingface_hub import hf_hub_download

        paths = [Path(hf_hub_download(str(annotator), f)) for f in files]
    except Exception as exc:  # offline, missing repo or file: all mean "not available here"
        raise InputError(
            f"{backend}: cannot get {', '.join(files)} from hub repo {annotator} "
            f"({type(exc).__name__}); on a machine without hub access download "
            f"{_source(files, annotator)} into a folder and pass that folder as "
            f"annotator"
        ) from None
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise InputError(f"{backend}: files of {annotator} are in different folders")
    return folder


def require_packages(backend: str, packages: dict[str, str]) -> None:
    """InputError naming the pip requirements `backend` needs when any is missing."""
    missing = [req for module, req in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise InputError(
            f"{backend} needs {', '.join(missing)}, which are not installed; install them or choose another backend"
        )


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1


def _source(files: list[str], repo: str = DEFAULT_ANNOTATOR) -> str:
    return f"{', '.join(files)} from https://huggingface.co/{repo}"
