"""One guided noise prediction for a batch of frames: UNet (+ ControlNet) with cross-frame attention.

The batch is built branch-major exactly like the maintained pipelines build theirs, so each
guidance branch is one contiguous group of frames for the cross-frame attention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import torch

from .attention import AnchorKV, cross_frame_attention
from .conditioning import Branches

if TYPE_CHECKING:
    from .guided import ControlMaps


class Denoiser:
    """Predicts guided noise for rows of latents; per-frame inputs are looked up by frame index.

    control: the control maps (guided.ControlMaps: read and converted per chunk), ControlNet modes only.
    image_latents: source-frame latents (frames, C, h, w) on the latents' device, pix2pix only;
    row i is frame image_start + i (one shot's frames: see use_image_latents).
    """

    def __init__(
        self,
        pipe,
        branches: Branches,
        control: ControlMaps | None = None,
        conditioning_scale: float = 1.0,
    ):
        self.pipe = pipe
        self.branches = branches
        self.control = control
        self.conditioning_scale = conditioning_scale
        self.image_latents: torch.Tensor | None = None  # pix2pix: set per shot by use_image_latents
        self.image_start = 0
        controlnet = getattr(pipe, "controlnet", None) if control is not None else None
        self.controlnet = controlnet
        # Shuffle-type ControlNets run on the text branch only (the pipelines' guess mode).
        self.guess_mode = bool(controlnet is not None and controlnet.config.global_pool_conditions)
        self._states: list[AnchorKV] = []

    @property
    def controlnet_groups(self) -> int:
        return 1 if self.guess_mode else self.branches.groups

    @contextmanager
    def cross_frame(self) -> Iterator[None]:
        """Cross-frame attention installed on the UNet (and ControlNet) for the duration."""
        with ExitStack() as stack:
            self._states = [stack.enter_context(cross_frame_attention(self.pipe.unet, self.branches.groups))]
            if self.controlnet is not None:
                state = stack.enter_context(cross_frame_attention(self.controlnet, self.controlnet_groups))
                self._states.append(state)
            try:
                yield
            finally:
                self._states = []

    def use_image_latents(self, image_latents: torch.Tensor, start: int) -> None:
        """pix2pix: the source latents of frames [start, start + len(image_latents)) (one shot)."""
        self.image_latents, self.image_start = image_latents, start

    def set_mode(self, mode: str) -> None:
        """RECORD for the batch holding the anchor as its first row, REPLAY for the others."""
        for state in self._states:
            state.mode = mode

    def predict(self, latents: torch.Tensor, frames: Sequence[int], t, scheduler) -> torch.Tensor:
        branches = self.branches
        groups, rows = branches.groups, latents.shape[0]
        model_input = torch.cat([latents] * groups) if groups > 1 else latents
        model_input = scheduler.scale_model_input(model_input, t)
        embeds, added = branches.per_row(rows)
        if self.image_latents is not None:
            model_input = torch.cat([model_input, self._pix2pix_latents(frames)], dim=1)

        down = mid = None
        if self.controlnet is not None:
            down, mid = self._control_residuals(model_input, embeds, added, frames, rows, t)
        return branches.combine(
            self.pipe.unet(
                model_input,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0]
        )

    def _pix2pix_latents(self, frames: Sequence[int]) -> torch.Tensor:
        image = self.image_latents[[frame - self.image_start for frame in frames]]
        if self.branches.kind != "pix2pix":
            return image
        return torch.cat([image, image, torch.zeros_like(image)])  # [text, image, uncond]

    def _control_residuals(self, model_input, embeds, added, frames, rows: int, t):
        controlnet = self.controlnet
        cond = self.control.rows(frames, model_input.device)
        groups = self.branches.groups
        if self.guess_mode and groups > 1:
            part = slice(self.branches.text_branch * rows, (self.branches.text_branch + 1) * rows)
            model_input, embeds = model_input[part], embeds[part]
            added = None if added is None else {k: v[part] for k, v in added.items()}
        elif groups > 1:
            cond = torch.cat([cond] * groups)
        down, mid = controlnet(
            model_input,
            t,
            encoder_hidden_states=embeds,
            controlnet_cond=cond,
            conditioning_scale=self.conditioning_scale,
            guess_mode=self.guess_mode,
            added_cond_kwargs=added,
            return_dict=False,
        )
        if self.guess_mode and groups > 1:
            down = [self._only_text_branch(d) for d in down]
            mid = self._only_text_branch(mid)
        return down, mid

    def _only_text_branch(self, residual: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(residual)] * self.branches.groups
        parts[self.branches.text_branch] = residual
        return torch.cat(parts)
