"""What kind of diffusers pipeline we were given, and whether it fits the requested mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2vz_core.errors import InputError

from .request import GenerationRequest


@dataclass(frozen=True)
class PipeInfo:
    sdxl: bool  # two text encoders, pooled embeds and add_time_ids
    controlnet: bool
    pix2pix: bool  # UNet takes the source image latents as extra input channels
    device: torch.device
    dtype: torch.dtype  # the UNet's: latents live in it
    latent_channels: int
    vae_scale_factor: int


def inspect_pipe(pipe) -> PipeInfo:
    unet = pipe.unet
    latent_channels = pipe.vae.config.latent_channels
    return PipeInfo(
        sdxl=getattr(pipe, "text_encoder_2", None) is not None or hasattr(pipe, "tokenizer_2"),
        controlnet=getattr(pipe, "controlnet", None) is not None,
        pix2pix=unet.config.in_channels == 2 * latent_channels,
        device=pipe._execution_device,
        dtype=unet.dtype,
        latent_channels=latent_channels,
        vae_scale_factor=pipe.vae_scale_factor,
    )


def check_pipe_fits(request: GenerationRequest, info: PipeInfo, pipe) -> None:
    """InputError when the pipeline cannot run this mode (e.g. canny without a ControlNet)."""
    name = type(pipe).__name__
    mode = request.mode
    if mode == "pix2pix":
        if not info.pix2pix or info.sdxl or info.controlnet:
            raise InputError(f"mode pix2pix needs an SD1.x Instruct-Pix2Pix pipeline, got {name}")
        return
    if info.pix2pix:
        raise InputError(f"mode {mode} cannot run on an Instruct-Pix2Pix model ({name}); use mode pix2pix")
    if request.uses_control:
        if not info.controlnet:
            raise InputError(f"mode {mode} needs a ControlNet pipeline (model + controlnet), got {name}")
        from diffusers import ControlNetModel

        if not isinstance(pipe.controlnet, ControlNetModel):
            raise InputError(f"mode {mode} takes exactly one ControlNet, got {type(pipe.controlnet).__name__}")
    unet_in = pipe.unet.config.in_channels
    if unet_in != info.latent_channels:
        raise InputError(f"{name}: UNet expects {unet_in} input channels, not a text-to-image model")
