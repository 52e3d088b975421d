"""text2video (paper Sect. 3.3.1), reproducing diffusers' TextToVideoZeroPipeline.

1. The anchor x_T is denoised alone down to t1 (scheduler snapshot there) and on to t0.
2. Its t0 latent is copied per frame, translated by the motion field and re-noised to t1.
3. All frames are denoised from t1 to 0 with cross-frame attention on the anchor, which
   continues from its own t1 latent with the snapshot scheduler.

Noise: ``Generator("cpu").manual_seed(seed)``, float32. chunk_size=None reproduces one
reference call: frame 0 is the anchor and frames 1..n-1 use eps = randn((n-1, ...)) drawn
right after x_T. With a chunk_size the documented ``frame_ids`` recipe is reproduced: chunks
start at ``arange(0, n, chunk_size - 1)``; for each, the generator is reseeded, x_T redrawn
and eps = randn((chunk length, ...)) drawn; frame 0 then comes from the warp path too and the
anchor is an extra latent row that is not output. So text2video output depends on
chunk_size exactly as the reference recipe's does. Unlike the recipe, the anchor's denoising
(alone to t0, and its rows in the final phase) is computed once per video, not per chunk.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .checkpoint import Checkpoint
from .denoiser import Denoiser
from .loop import Phase, Progress, plan_chunks, run_steps
from .motion import forward_noise, warp_anchor
from .request import GenerationRequest


def recipe_chunks(video_length: int, chunk_size: int) -> list[tuple[int, int]]:
    """[ch_start, ch_end) of the reference's chunk recipe: arange(0, n, chunk_size - 1)."""
    starts = list(np.arange(0, video_length, chunk_size - 1))
    ends = starts[1:] + [video_length]
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def phase_steps(request: GenerationRequest, num_timesteps: int) -> tuple[int, int]:
    """(k1, k0): step indices where the anchor reaches t1 and t0."""
    return num_timesteps - request.t1 - 1, num_timesteps - request.t0 - 1


def text2video_units(request: GenerationRequest, num_timesteps: int) -> int:
    """Progress units: anchor-only steps, then every UNet chunk of the final phase."""
    k1, k0 = phase_steps(request, num_timesteps)
    rows = request.video_length + (request.chunk_size is not None)
    return k0 + (num_timesteps - k1) * len(plan_chunks(rows, request.chunk_size))


def denoise_text2video(
    request: GenerationRequest,
    denoiser: Denoiser,
    scheduler,
    latent_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: Checkpoint,
    progress: Progress,
) -> tuple[torch.Tensor, range]:
    """Final latents of all rows and which rows are the output frames, in order."""
    timesteps = scheduler.timesteps
    k1, k0 = phase_steps(request, len(timesteps))
    resumed = checkpoint.load(scheduler, device)
    if resumed is not None and resumed[0].name == "final":
        final, step = resumed
        progress.advance("final: resumed", k0 + (step - k1) * len(final.chunks))
    else:
        if resumed is not None:
            anchor, step = resumed
            progress.advance("anchor: resumed", step)
        else:
            anchor, step = _start_anchor(request, scheduler, latent_shape, device, dtype, k1), 0

        def after_anchor_step(phase: Phase, next_step: int) -> None:
            if next_step == k1:
                _snapshot(phase)
            checkpoint.save(phase, next_step)

        run_steps(anchor, denoiser, timesteps, step, k0, progress, after_anchor_step)
        rows = _motion_rows(request, anchor, scheduler, latent_shape, k1, k0)
        snapshot = anchor.extras["scheduler_t1"]
        final = Phase.start("final", rows, range(rows.shape[0]), request.chunk_size, snapshot, request.seed)
        step = k1
    run_steps(final, denoiser, timesteps, step, len(timesteps), progress, checkpoint.save)
    n = request.video_length
    return final.latents, range(0, n) if request.chunk_size is None else range(1, n + 1)


def _start_anchor(request, scheduler, latent_shape, device, dtype, k1: int) -> Phase:
    generator = torch.Generator("cpu").manual_seed(request.seed)
    x_T = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
    x_T = (x_T * scheduler.init_noise_sigma).to(device, dtype)
    anchor = Phase.start("anchor", x_T, [0], None, scheduler, request.seed)
    if k1 == 0:  # t1 is the very first timestep: the snapshot is the untouched start
        _snapshot(anchor)
    return anchor


def _snapshot(anchor: Phase) -> None:
    anchor.extras["x_t1"] = anchor.latents.clone()
    anchor.extras["scheduler_t1"] = copy.deepcopy(anchor.schedulers[0])


def _motion_rows(request, anchor: Phase, scheduler, latent_shape, k1: int, k0: int):
    """[anchor at t1] + each frame's warped, re-noised copy of the anchor's t0 latent."""
    timesteps = scheduler.timesteps
    t_from, t_to = int(timesteps[k0]), int(timesteps[k1])
    x_t0 = anchor.latents
    n, seed = request.video_length, request.seed
    if request.chunk_size is None:
        spans = [(1, n)]  # frame 0 is the anchor itself
    else:
        spans = recipe_chunks(n, request.chunk_size)
    rows = [anchor.extras["x_t1"]]
    generator = torch.Generator("cpu")
    for start, stop in spans:
        generator.manual_seed(seed)
        torch.randn(latent_shape, generator=generator, dtype=torch.float32)  # x_T, as the recipe redraws it
        eps = torch.randn((stop - start, *latent_shape[1:]), generator=generator, dtype=torch.float32)
        warped = warp_anchor(x_t0, range(start, stop), request.motion_field_strength_x, request.motion_field_strength_y)
        rows.append(forward_noise(warped, eps, scheduler.alphas, t_from, t_to))
    return torch.cat(rows)
