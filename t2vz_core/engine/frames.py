"""Per-frame conditioning (control maps, pix2pix source frames) and the shared-noise loop.

Conditioning is anything with len() and slicing that returns uint8 (k, H, W, 3) arrays
(numpy array, FrameStore...). It is read chunk by chunk: once to validate and fingerprint it
before any model work, once more to preprocess it with the pipeline's own helpers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from t2vz_core.errors import InputError

from .checkpoint import Checkpoint
from .denoiser import Denoiser
from .loop import Phase, Progress, plan_chunks, run_steps
from .request import GenerationRequest

READ_CHUNK = 16


def iter_conditioning(conditioning, count: int, chunk: int = READ_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, count, chunk):
        yield start, np.asarray(conditioning[start : min(start + chunk, count)])


def check_conditioning(request: GenerationRequest, conditioning) -> tuple[int, str]:
    """(frame count, sha256 of all bytes); InputError on a wrong count, size or dtype."""
    what = "source frames" if request.mode == "pix2pix" else f"{request.mode} control maps"
    if conditioning is None:
        raise InputError(f"mode {request.mode} needs {what} (one per frame), got none")
    try:
        count = len(conditioning)
    except TypeError:
        raise InputError(f"{what} must support len() and slicing, got {type(conditioning).__name__}") from None
    if count < 1:
        raise InputError(f"{what}: got no frames")
    if request.video_length is not None and request.video_length != count:
        raise InputError(f"video_length={request.video_length} but there are {count} {what} (one per frame)")
    digest = hashlib.sha256()
    expected = (request.height, request.width, 3)
    for start, frames in iter_conditioning(conditioning, count):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected:
            raise InputError(
                f"{what} from frame {start}: expected uint8 frames of shape (k, {request.height}, "
                f"{request.width}, 3) (height x width x RGB), got {frames.dtype} {tuple(frames.shape)}"
            )
        digest.update(np.ascontiguousarray(frames).tobytes())
    return count, digest.hexdigest()


def prepare_control(pipe, request: GenerationRequest, conditioning, count: int) -> torch.Tensor:
    """Control maps preprocessed like the ControlNet pipelines do, kept on the CPU in the
    ControlNet's dtype: (frames, 3, H, W)."""
    parts = []
    for _, frames in iter_conditioning(conditioning, count):
        parts.append(
            pipe.prepare_image(
                image=frames.astype(np.float32) / 255.0,  # what the pipelines make of PIL input
                width=request.width,
                height=request.height,
                batch_size=len(frames),
                num_images_per_prompt=1,
                device=torch.device("cpu"),
                dtype=pipe.controlnet.dtype,
                do_classifier_free_guidance=False,
            )
        )
    return torch.cat(parts)


def prepare_source_latents(pipe, conditioning, count: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Instruct-Pix2Pix image latents (VAE mode, unscaled, as the pipeline), once per frame."""
    parts = []
    for _, frames in iter_conditioning(conditioning, count, chunk=8):
        image = pipe.image_processor.preprocess(frames.astype(np.float32) / 255.0)
        parts.append(pipe.prepare_image_latents(image, len(frames), 1, dtype, device, False))
    return torch.cat(parts)


def frames_units(request: GenerationRequest, count: int, num_timesteps: int) -> int:
    return num_timesteps * len(plan_chunks(count, request.chunk_size))


def denoise_frames(
    request: GenerationRequest,
    count: int,
    denoiser: Denoiser,
    scheduler,
    latent_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: Checkpoint,
    progress: Progress,
) -> tuple[torch.Tensor, range]:
    """pose/canny/depth/pix2pix: every frame starts from the same noise (drawn once, float32)."""
    timesteps = scheduler.timesteps
    resumed = checkpoint.load(scheduler, device)
    if resumed is not None:
        phase, step = resumed
        progress.advance("frames: resumed", step * len(phase.chunks))
    else:
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
        latents = (noise * scheduler.init_noise_sigma).to(device, dtype).repeat(count, 1, 1, 1)
        phase, step = Phase.start("frames", latents, range(count), request.chunk_size, scheduler, request.seed), 0
    run_steps(phase, denoiser, timesteps, step, len(timesteps), progress, checkpoint.save)
    return phase.latents, range(count)
