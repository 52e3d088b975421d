"""generate(): validate, denoise step-major with anchor reuse, decode chunk by chunk into a sink."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from t2vz_core.errors import InputError
from t2vz_core.stop import check as check_stop

from .checkpoint import Checkpoint, fingerprint
from .conditioning import encode_branches
from .vae_decode import decode_latents, sink_has, to_uint8
from .denoiser import Denoiser
from .guided import check_conditioning, denoise_frames, frames_units, prepare_control, prepare_source_latents
from .loop import Progress
from .pipes import check_pipe_fits, inspect_pipe
from .request import GenerationRequest
from .text2video import denoise_text2video, text2video_units

DEFAULT_DECODE_CHUNK = 8


def decode_spans(video_length: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """Output frame ranges decoded (and written) together: chunk_size frames, or 8 when None."""
    size = chunk_size or DEFAULT_DECODE_CHUNK
    return [(a, min(a + size, video_length)) for a in range(0, video_length, size)]


def generate(
    pipe,
    request: GenerationRequest,
    conditioning=None,
    output=None,
    checkpoint_path=None,
    on_progress: Callable[[int, int, str], None] | None = None,
    *,
    output_dtype=np.uint8,
) -> np.ndarray | None:
    """Generate one video with Text2Video-Zero on a loaded diffusers pipeline.

    pipe: StableDiffusion(XL)Pipeline for text2video, StableDiffusion(XL)ControlNetPipeline for
    pose/canny/depth, StableDiffusionInstructPix2PixPipeline for pix2pix (any device / dtype /
    offload; latents follow the UNet's dtype, noise is drawn on the CPU in float32).
    conditioning: control maps or pix2pix source frames: len() + slicing -> uint8 (k, H, W, 3)
    at request.width x request.height. Not used by text2video.
    output: a sink with write(start, uint8 frames) and optionally done(start, stop) -> bool;
    frames are then written chunk by chunk and None is returned. Without a sink the frames are
    returned as one (n, H, W, 3) array (uint8, or float32 in [0, 1] with output_dtype=np.float32).
    checkpoint_path: file for resumable denoising state (saved after every step, removed when
    the video is complete); a checkpoint of another request/model/conditioning is ignored.
    on_progress(done, total, message): once per UNet chunk and per decoded chunk.
    A stop request (t2vz_core.stop) raises Cancelled at the next step boundary (its checkpoint
    saved) or before the next decoded chunk (those written are kept): a re-run resumes there.

    While it runs, the UNet's (and ControlNet's) self-attention processors are swapped for
    cross-frame ones and restored afterwards (on error too); pipelines that share a UNet (a
    base and its ControlNet variants) must not run generate() at the same time.
    """
    if not isinstance(request, GenerationRequest):
        raise InputError(f"request must be a GenerationRequest, got {type(request).__name__}")
    request.validate()
    if np.dtype(output_dtype) not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise InputError(f"output_dtype must be uint8 or float32, got {output_dtype}")
    info = inspect_pipe(pipe)
    check_pipe_fits(request, info, pipe)
    scheduler = copy.deepcopy(pipe.scheduler)  # the pipeline's own scheduler is left untouched
    scheduler.set_timesteps(request.num_inference_steps, device=info.device)
    request.validate(scheduler_steps=len(scheduler.timesteps))

    if request.mode == "text2video":
        if conditioning is not None:
            raise InputError("mode text2video takes no conditioning frames")
        count, digest = request.video_length, ""
        units = text2video_units(request, len(scheduler.timesteps))
    else:
        count, digest = check_conditioning(request, conditioning)
        units = frames_units(request, count, len(scheduler.timesteps))
    spans = decode_spans(count, request.chunk_size)
    if output is not None and all(sink_has(output, a, b) for a, b in spans):
        return None  # a finished earlier run wrote everything

    check_stop("before generation")  # e.g. a stop that came while the model was loading
    progress = Progress(units + len(spans), on_progress)
    checkpoint = Checkpoint(checkpoint_path, fingerprint(request, pipe, digest))
    try:
        with torch.no_grad():
            latents, output_rows = _denoise(pipe, info, request, conditioning, count, scheduler, checkpoint, progress)
            result = _decode(pipe, info.sdxl, latents, output_rows, spans, output, output_dtype, progress)
        checkpoint.remove()
        return result
    finally:
        pipe.maybe_free_model_hooks()


def _denoise(pipe, info, request, conditioning, count, scheduler, checkpoint, progress):
    branches = encode_branches(pipe, info, request)
    control = source = None
    if request.uses_control:
        control = prepare_control(pipe, request, conditioning, count)
    elif request.mode == "pix2pix":
        source = prepare_source_latents(pipe, conditioning, count, branches.embeds.dtype, info.device)
    denoiser = Denoiser(pipe, branches, control, request.controlnet_conditioning_scale, source)
    vsf = info.vae_scale_factor
    shape = (1, info.latent_channels, request.height // vsf, request.width // vsf)
    args = (denoiser, scheduler, shape, info.device, info.dtype, checkpoint, progress)
    with denoiser.cross_frame():
        if request.mode == "text2video":
            return denoise_text2video(request, *args)
        return denoise_frames(request, count, *args)


def _decode(pipe, sdxl, latents, output_rows: range, spans, output, output_dtype, progress) -> np.ndarray | None:
    collected = []
    for start, stop in spans:
        if output is not None and sink_has(output, start, stop):
            progress.advance(f"decode: frames {start}-{stop - 1} already written")
            continue
        check_stop(f"VAE decode of frames {start}-{stop - 1}")  # chunks already written are kept
        frames = decode_latents(pipe, latents[output_rows[start] : output_rows[stop - 1] + 1], sdxl)
        if output is not None:
            output.write(start, to_uint8(frames))
        else:
            collected.append(frames if np.dtype(output_dtype) == np.float32 else to_uint8(frames))
        progress.advance(f"decode: frames {start}-{stop - 1}")
    return None if output is not None else np.concatenate(collected)
