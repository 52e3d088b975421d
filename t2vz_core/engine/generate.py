"""generate(): validate, denoise step-major with anchor reuse, decode chunk by chunk into a sink.

A source video may be split into shots (t2vz_core/shots.py): each shot [start, stop) is then
generated exactly as its own video (its first frame the anchor, the row's noise, chunks,
step noise and decoded spans counted from its start), one shot after the other with one
pipeline, each with its own checkpoint key, and written into the one output in source order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from t2vz_core.errors import InputError
from t2vz_core.shots import check_shots
from t2vz_core.stop import check as check_stop

from .checkpoint import Checkpoint, fingerprint, shot_fingerprint
from .conditioning import encode_branches
from .denoiser import Denoiser
from .guided import check_conditioning, denoise_frames, frames_units, prepare_control, prepare_source_latents
from .loop import Progress
from .pipes import check_pipe_fits, inspect_pipe
from .request import GenerationRequest
from .text2video import denoise_text2video, text2video_units
from .vae_decode import decode_latents, sink_has, to_uint8

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
    scheduler=None,
    shots=None,
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
    on_progress(done, total, message): once per UNet chunk and per decoded chunk; with several
    shots messages start with "shot k/K".
    scheduler: a diffusers scheduler to denoise with instead of `pipe.scheduler` (a copy is used;
    the pipeline, which other rows share, is left untouched).
    shots: pose/canny/depth/pix2pix only: [(start, stop), ...] frame ranges in order covering
    every conditioning frame; each shot is generated as its own video (frames [s, e) equal the
    output of the same request on conditioning[s:e]). None: the whole video is one shot.
    With a sink, finished shots are skipped on a re-run and the checkpoint resumes the shot
    that was interrupted; without one, earlier shots are computed again.
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
    scheduler = copy.deepcopy(scheduler if scheduler is not None else pipe.scheduler)  # the given one stays untouched
    scheduler.set_timesteps(request.num_inference_steps, device=info.device)
    request.validate(scheduler_steps=len(scheduler.timesteps))

    if request.mode == "text2video":
        if conditioning is not None:
            raise InputError("mode text2video takes no conditioning frames")
        if shots is not None:
            raise InputError("mode text2video makes one shot: shots split source videos (pose, canny, depth, pix2pix)")
        count, digest = request.video_length, ""
        units = text2video_units(request, len(scheduler.timesteps))
        shot_list = [(0, count)]
    else:
        count, digest = check_conditioning(request, conditioning)
        shot_list = [(0, count)] if shots is None else check_shots(shots, count)
        units = sum(frames_units(request, stop - start, len(scheduler.timesteps)) for start, stop in shot_list)
    # Decoded spans count from each shot's start, like the shot's own video would.
    shot_spans = [
        [(start + a, start + b) for a, b in decode_spans(stop - start, request.chunk_size)] for start, stop in shot_list
    ]
    if output is not None and all(sink_has(output, a, b) for spans in shot_spans for a, b in spans):
        return None  # a finished earlier run wrote everything

    check_stop("before generation")  # e.g. a stop that came while the model was loading
    progress = Progress(units + sum(map(len, shot_spans)), on_progress)
    video_key = fingerprint(request, pipe, digest, scheduler)
    try:
        with torch.no_grad():
            if request.mode == "text2video":
                checkpoint = Checkpoint(checkpoint_path, video_key)
                latents, output_rows = _denoise_text2video(pipe, info, request, scheduler, checkpoint, progress)
                result = _decode(pipe, info.sdxl, latents, output_rows, shot_spans[0], output, output_dtype, progress)
                checkpoint.remove()
            else:
                result = _generate_shots(
                    pipe,
                    info,
                    request,
                    conditioning,
                    shot_list,
                    shot_spans,
                    scheduler,
                    checkpoint_path,
                    video_key,
                    output,
                    output_dtype,
                    progress,
                )
        return result
    finally:
        pipe.maybe_free_model_hooks()


def _latent_shape(info, request) -> tuple[int, ...]:
    vsf = info.vae_scale_factor
    return (1, info.latent_channels, request.height // vsf, request.width // vsf)


def _denoise_text2video(pipe, info, request, scheduler, checkpoint, progress):
    branches = encode_branches(pipe, info, request)
    denoiser = Denoiser(pipe, branches)
    with denoiser.cross_frame():
        return denoise_text2video(
            request, denoiser, scheduler, _latent_shape(info, request), info.device, info.dtype, checkpoint, progress
        )


def _generate_shots(
    pipe,
    info,
    request,
    conditioning,
    shots,
    shot_spans,
    scheduler,
    checkpoint_path,
    video_key,
    output,
    output_dtype,
    progress,
) -> np.ndarray | None:
    """Every shot denoised as its own video, then decoded into the sink (or collected)."""
    branches = encode_branches(pipe, info, request)
    control = prepare_control(pipe, conditioning) if request.uses_control else None
    denoiser = Denoiser(pipe, branches, control, request.controlnet_conditioning_scale)
    timesteps = len(scheduler.timesteps)
    collected, checkpoint = [], None
    with denoiser.cross_frame():
        for index, ((start, stop), spans) in enumerate(zip(shots, shot_spans)):
            label = "frames" if len(shots) == 1 else f"shot {index + 1}/{len(shots)}"
            if output is not None and all(sink_has(output, a, b) for a, b in spans):
                units = frames_units(request, stop - start, timesteps) + len(spans)
                progress.advance(f"{label}: already written", units)
                continue
            checkpoint = Checkpoint(checkpoint_path, shot_fingerprint(video_key, shots, index))
            if request.mode == "pix2pix":  # encoded per shot: the source frames are never all held
                source = prepare_source_latents(
                    pipe, conditioning, stop - start, branches.embeds.dtype, info.device, start=start
                )
                denoiser.use_image_latents(source, start)
            latents = denoise_frames(
                request,
                (start, stop),
                denoiser,
                scheduler,
                _latent_shape(info, request),
                info.device,
                info.dtype,
                checkpoint,
                progress,
                name=label,
            )
            prefix = "" if len(shots) == 1 else f"{label}, "
            collected.append(
                _decode(
                    pipe,
                    info.sdxl,
                    latents,
                    range(stop - start),
                    spans,
                    output,
                    output_dtype,
                    progress,
                    first_frame=start,
                    prefix=prefix,
                )
            )
    if checkpoint is not None:
        checkpoint.remove()
    return None if output is not None else np.concatenate(collected)


def _decode(
    pipe,
    sdxl,
    latents,
    output_rows: range,
    spans,
    output,
    output_dtype,
    progress,
    first_frame: int = 0,
    prefix: str = "",
) -> np.ndarray | None:
    """Decode output frames `spans` (frame f is latent row output_rows[f - first_frame])."""
    collected = []
    for start, stop in spans:
        if output is not None and sink_has(output, start, stop):
            progress.advance(f"{prefix}decode: frames {start}-{stop - 1} already written")
            continue
        check_stop(f"VAE decode of frames {start}-{stop - 1}")  # chunks already written are kept
        rows = output_rows[start - first_frame], output_rows[stop - 1 - first_frame] + 1
        frames = decode_latents(pipe, latents[rows[0] : rows[1]], sdxl)
        if output is not None:
            output.write(start, to_uint8(frames))
        else:
            collected.append(frames if np.dtype(output_dtype) == np.float32 else to_uint8(frames))
        progress.advance(f"{prefix}decode: frames {start}-{stop - 1}")
    return None if output is not None else np.concatenate(collected)
