"""Step-major denoising of all frames, chunk by chunk, with the anchor evaluated once per step.

All frame latents stay in memory (4 x h/8 x w/8 each). For every timestep the rows are run
through the UNet in chunks; chunk 0 starts with the anchor row and records its self-attention
keys/values, later chunks replay them. Every row is evaluated once per step.

Each chunk owns a deep copy of the scheduler: multistep schedulers keep per-sample history
and a step counter, so one object must not be stepped twice per timestep.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from t2vz_core.stop import check as check_stop

from .attention import RECORD, REPLAY
from .denoiser import Denoiser


def plan_chunks(rows: int, chunk_size: int | None) -> list[range]:
    """Row ranges per UNet call: the first holds the anchor (row 0) + chunk_size - 1 new rows,
    the others chunk_size - 1 new rows each (their anchor K/V is replayed, not recomputed)."""
    if chunk_size is None or rows <= chunk_size:
        return [range(rows)]
    chunks = [range(chunk_size)]
    for start in range(chunk_size, rows, chunk_size - 1):
        chunks.append(range(start, min(start + chunk_size - 1, rows)))
    return chunks


class Progress:
    """Counts work units (one UNet chunk or one decoded chunk) for on_progress(done, total, msg)."""

    def __init__(self, total: int, callback: Callable[[int, int, str], None] | None):
        self.total, self.done, self.callback = total, 0, callback

    def advance(self, message: str, units: int = 1) -> None:
        self.done += units
        if self.callback is not None:
            self.callback(self.done, self.total, message)


def row_generators(seed: int, rows: int) -> list[torch.Generator]:
    """One CPU generator per latent row, for schedulers that draw noise in step():
    per-row streams make the result independent of how rows are chunked."""
    generators = []
    for row in range(rows):
        digest = hashlib.sha256(f"t2vz-step-noise:{seed}:{row}".encode()).digest()
        generators.append(torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little")))
    return generators


@dataclass
class Phase:
    """A stretch of steps over a set of latent rows, resumable at any step boundary."""

    name: str
    latents: torch.Tensor  # (rows, C, h, w), updated in place
    frame_of_row: list[int]  # per-frame conditioning index of each row
    chunks: list[range]
    schedulers: list  # one per chunk
    generators: list[torch.Generator] | None = None  # per row, when step() takes a generator
    extras: dict = field(default_factory=dict)  # phase-specific tensors to checkpoint

    @classmethod
    def start(cls, name, latents, frame_of_row, chunk_size, scheduler, seed, **extras) -> Phase:
        chunks = plan_chunks(latents.shape[0], chunk_size)
        schedulers = [copy.deepcopy(scheduler) for _ in chunks]
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        generators = row_generators(seed, latents.shape[0]) if takes_generator else None
        return cls(name, latents, list(frame_of_row), chunks, schedulers, generators, dict(extras))


def run_steps(
    phase: Phase,
    denoiser: Denoiser,
    timesteps: torch.Tensor,
    first: int,
    stop: int,
    progress: Progress,
    after_step: Callable[[Phase, int], None] | None = None,
) -> None:
    """Run timesteps[first:stop] over every chunk of `phase`; after_step(phase, next_step).

    A stop request (t2vz_core.stop) raises Cancelled at the next step boundary, after
    after_step has saved that step's checkpoint, so a re-run resumes from it."""
    latents = phase.latents
    takes_eta = "eta" in inspect.signature(phase.schedulers[0].step).parameters
    for step in range(first, stop):
        t = timesteps[step]
        for index, rows in enumerate(phase.chunks):
            denoiser.set_mode(RECORD if index == 0 else REPLAY)
            part = slice(rows.start, rows.stop)
            noise = denoiser.predict(latents[part], [phase.frame_of_row[r] for r in rows], t, phase.schedulers[index])
            kwargs = {"eta": 0.0} if takes_eta else {}
            if phase.generators is not None:
                kwargs["generator"] = [phase.generators[r] for r in rows]
            stepped = phase.schedulers[index].step(noise, t, latents[part], return_dict=False, **kwargs)[0]
            latents[part] = stepped.to(latents.dtype)
            progress.advance(f"{phase.name}: step {step + 1}/{len(timesteps)}, chunk {index + 1}/{len(phase.chunks)}")
        if after_step is not None:
            after_step(phase, step + 1)
        check_stop(f"{phase.name} step {step + 1}/{len(timesteps)}")
