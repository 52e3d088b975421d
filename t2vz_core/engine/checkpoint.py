"""Resumable denoising: the whole loop state after every step, written atomically.

A checkpoint holds the phase name, the next step index, every latent row, each chunk's
scheduler state, the per-row step-noise generators and phase extras (text2video: the
anchor's t1 latents and scheduler snapshot). It is keyed by a fingerprint of the request, the
model and the conditioning bytes; a checkpoint with another fingerprint (or unreadable) is
ignored and later overwritten. Loading uses ``torch.load(weights_only=True)``: schedulers are
stored as plain attribute dicts (tensors, numbers, lists), never pickled objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from t2vz_core.atomic import atomic_path

from .loop import Phase
from .request import GenerationRequest

FORMAT = 1
log = logging.getLogger(__name__)


def fingerprint(request: GenerationRequest, pipe, conditioning_digest: str, scheduler=None) -> str:
    """Stable id of everything that determines the denoising trajectory (`scheduler`: the one used,
    when not the pipeline's own)."""
    scheduler = scheduler if scheduler is not None else pipe.scheduler
    parts = {
        "format": FORMAT,
        "request": request.as_dict(),
        "pipeline": type(pipe).__name__,
        "model": str(getattr(pipe, "name_or_path", "")),
        "dtype": str(pipe.unet.dtype),
        "scheduler": [type(scheduler).__name__, _jsonable(dict(scheduler.config))],
        "weights": _weights_digest(pipe),
        "conditioning": conditioning_digest,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def shot_fingerprint(video_fingerprint: str, shots: list[tuple[int, int]], index: int) -> str:
    """The checkpoint key of shot `index` of a video split into `shots`; a video that is one
    shot keeps the video's own key (so an unsplit run resumes exactly as before shots existed)."""
    if len(shots) == 1:
        return video_fingerprint
    parts = {"video": video_fingerprint, "shots": [list(shot) for shot in shots], "index": index}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _weights_digest(pipe) -> str:
    # A few small tensors identify the weights without hashing gigabytes.
    digest = hashlib.sha256()
    models = [pipe.unet, getattr(pipe, "controlnet", None)]
    for model in filter(None, models):
        for tensor in (model.conv_in.weight, model.conv_in.bias):
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _jsonable(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


class Checkpoint:
    """Reads and writes one checkpoint file; path None disables everything."""

    def __init__(self, path: str | os.PathLike | None, key: str):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.enabled = self.path is not None

    def load(self, base_scheduler, device: torch.device) -> tuple[Phase, int] | None:
        """(phase, next_step) from a matching checkpoint, else None."""
        if not self.enabled or not self.path.exists():
            return None
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
            if data.get("format") != FORMAT or data.get("fingerprint") != self.key:
                log.info("ignoring stale checkpoint %s", self.path)
                return None
            return _phase_from(data, base_scheduler, device), int(data["step"])
        except Exception as exc:  # a torn or foreign file must not stop the job
            log.warning("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return None

    def save(self, phase: Phase, next_step: int) -> None:
        if not self.enabled:
            return
        try:
            data = {
                "format": FORMAT,
                "fingerprint": self.key,
                "phase": phase.name,
                "step": next_step,
                "latents": phase.latents.detach().cpu(),
                "frame_of_row": phase.frame_of_row,
                "chunks": [[r.start, r.stop] for r in phase.chunks],
                "schedulers": [scheduler_state(s) for s in phase.schedulers],
                "generators": None if phase.generators is None else [g.get_state() for g in phase.generators],
                "extras": {k: _encode(v) for k, v in phase.extras.items()},
            }
        except TypeError as exc:
            log.warning("checkpointing disabled: %s", exc)
            self.enabled = False
            return
        with atomic_path(self.path) as tmp:
            torch.save(data, tmp)

    def remove(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)


def _phase_from(data: dict, base_scheduler, device: torch.device) -> Phase:
    generators = None
    if data["generators"] is not None:
        generators = []
        for state in data["generators"]:
            generator = torch.Generator("cpu")
            generator.set_state(state)
            generators.append(generator)
    return Phase(
        name=data["phase"],
        latents=data["latents"].to(device),
        frame_of_row=list(data["frame_of_row"]),
        chunks=[range(a, b) for a, b in data["chunks"]],
        schedulers=[restore_scheduler(base_scheduler, s, device) for s in data["schedulers"]],
        generators=generators,
        extras={k: _decode(v, device, base_scheduler) for k, v in data["extras"].items()},
    )


# ---------------------------------------------------------------- scheduler state as plain data


def scheduler_state(scheduler) -> dict:
    """A scheduler's mutable attributes (its config excluded) as plain, safely loadable data."""
    return {k: _encode(v) for k, v in vars(scheduler).items() if k != "_internal_dict"}


def restore_scheduler(base, state: dict, device: torch.device):
    scheduler = copy.deepcopy(base)
    for name, value in state.items():
        setattr(scheduler, name, _decode(value, device, base))
    return scheduler


def _encode(value):
    if isinstance(value, torch.Tensor):
        return {"tensor": value.detach().cpu(), "on_device": value.device.type != "cpu"}
    if isinstance(value, np.ndarray):
        return {"ndarray": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return {"npscalar": value.item(), "dtype": str(value.dtype)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return {"list": [_encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if hasattr(value, "step") and hasattr(value, "config"):  # a scheduler snapshot
        return {"scheduler": scheduler_state(value)}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _decode(value, device, base_scheduler):
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return value["tensor"].to(device) if value["on_device"] else value["tensor"]
    if "ndarray" in value:
        return value["ndarray"].numpy()
    if "npscalar" in value:
        return np.dtype(value["dtype"]).type(value["npscalar"])
    if "list" in value:
        items = [_decode(v, device, base_scheduler) for v in value["list"]]
        return tuple(items) if value["tuple"] else items
    if "dict" in value:
        return {k: _decode(v, device, base_scheduler) for k, v in value["dict"].items()}
    if "scheduler" in value:
        return restore_scheduler(base_scheduler, value["scheduler"], device)
    raise ValueError(f"unknown checkpoint entry {sorted(value)}")
