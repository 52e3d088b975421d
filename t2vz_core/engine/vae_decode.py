"""Latents -> frames through the pipeline's VAE, chunk by chunk, into a sink or an array."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class FrameSink(Protocol):
    """Where frames go: write(start, uint8 (k, H, W, 3)); optional done(start, stop) -> bool
    tells that frames [start, stop) were already written (a resumed run skips them)."""

    def write(self, start: int, frames: np.ndarray) -> None: ...


def decode_latents(pipe, latents: torch.Tensor, sdxl: bool) -> np.ndarray:
    """float32 frames (k, H, W, 3) in [0, 1], decoded like the maintained pipelines do."""
    vae = pipe.vae
    # The SDXL pipelines decode in fp32 when an fp16 VAE says it needs it; the SD ones never do.
    upcast = sdxl and vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        latents = latents.to(dtype=vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, latents.shape[1], 1, 1)
            mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type="np")


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """The pipelines' own float -> 8-bit rule (numpy_to_pil): round(x * 255)."""
    return (frames * 255).round().astype(np.uint8)


def sink_has(sink, start: int, stop: int) -> bool:
    done = getattr(sink, "done", None)
    return bool(done(start, stop)) if done is not None else False
