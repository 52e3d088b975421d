"""Text conditioning per guidance branch, encoded once per video with the pipeline's own helpers.

Branches are in the order the maintained pipelines batch them, which is also the order the
cross-frame attention groups by: no guidance ``[text]``; CFG ``[uncond, text]``;
Instruct-Pix2Pix ``[text, image, uncond]`` (its last two share the negative prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pipes import PipeInfo
from .request import GenerationRequest


@dataclass
class Branches:
    kind: str  # "single" | "cfg" | "pix2pix"
    embeds: torch.Tensor  # (groups, tokens, dim)
    pooled: torch.Tensor | None = None  # SDXL (groups, dim)
    time_ids: torch.Tensor | None = None  # SDXL (groups, 6)
    guidance_scale: float = 1.0
    image_guidance_scale: float = 1.0

    @property
    def groups(self) -> int:
        return self.embeds.shape[0]

    @property
    def text_branch(self) -> int:
        return 1 if self.kind == "cfg" else 0

    def per_row(self, frames: int) -> tuple[torch.Tensor, dict | None]:
        """encoder_hidden_states and SDXL added_cond_kwargs for `frames` frames per branch."""
        embeds = self.embeds.repeat_interleave(frames, dim=0)
        if self.pooled is None:
            return embeds, None
        return embeds, {
            "text_embeds": self.pooled.repeat_interleave(frames, dim=0),
            "time_ids": self.time_ids.repeat_interleave(frames, dim=0),
        }

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        """Guided noise prediction from the branch-major UNet output."""
        if self.kind == "cfg":
            uncond, text = noise.chunk(2)
            return uncond + self.guidance_scale * (text - uncond)
        if self.kind == "pix2pix":
            text, image, uncond = noise.chunk(3)
            return uncond + self.guidance_scale * (text - image) + self.image_guidance_scale * (image - uncond)
        return noise


def encode_branches(pipe, info: PipeInfo, request: GenerationRequest) -> Branches:
    device = info.device
    # The pipelines treat a missing negative prompt specially (SDXL: zero embeddings).
    negative = request.negative_prompt or None
    g, ig = float(request.guidance_scale), float(request.image_guidance_scale)
    if info.pix2pix:
        three = g > 1.0 and ig >= 1.0  # the pix2pix pipeline's own rule
        embeds = pipe._encode_prompt(request.prompt, device, 1, three, negative)
        return Branches("pix2pix" if three else "single", embeds, guidance_scale=g, image_guidance_scale=ig)

    cfg = g > 1.0
    kind = "cfg" if cfg else "single"
    if not info.sdxl:
        text, uncond = pipe.encode_prompt(request.prompt, device, 1, cfg, negative)
        embeds = torch.cat([uncond, text]) if cfg else text
        return Branches(kind, embeds, guidance_scale=g)

    text, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=request.prompt,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=cfg,
        negative_prompt=negative,
    )
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    projection_dim = encoder_2.config.projection_dim if encoder_2 is not None else int(pooled.shape[-1])
    size = (request.height, request.width)
    time_ids = pipe._get_add_time_ids(
        size, (0, 0), size, dtype=text.dtype, text_encoder_projection_dim=projection_dim
    ).to(device)
    if cfg:
        text, pooled = torch.cat([uncond, text]), torch.cat([uncond_pooled, pooled])
        time_ids = torch.cat([time_ids, time_ids])
    return Branches(kind, text, pooled.to(device), time_ids, guidance_scale=g)
