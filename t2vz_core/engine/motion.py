"""Motion dynamics of text2video (paper Sect. 3.3.1): translate the anchor latent, re-noise it.

The reference builds a flow of ``strength * frame_id`` pixels on a 512x512 grid, converts it
to normalised coordinates, resizes that grid bilinearly to latent size and samples the latent
nearest-neighbour with reflection padding. A translation grid is affine, so its bilinear
resize is known in closed form; we build it directly at latent size. Latent pixel i (of n)
then samples normalised coordinate ``(2i + 1) / n - 1 + (2 * shift - 1) / 512``.
(Exact for latents up to 512 px, i.e. frames up to 4096 px with an 8x VAE.)

Exact half-pixel ties (a shift of k + 0.5 latent pixels: possible for fractional strengths,
never for integer ones below 512 latent px) are rounded half-to-even here; the reference's
rounding there depends on float32 error in its resize and varies from row to row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

REFERENCE_GRID = 512  # the reference flow lives on a 512x512 pixel grid whatever the frame size


def translation_grid(
    frame_ids: Sequence[int], strength_x: float, strength_y: float, height: int, width: int
) -> torch.Tensor:
    """grid_sample grid (len(frame_ids), height, width, 2) in float32 for each frame's shift."""
    ids = torch.tensor(list(frame_ids), dtype=torch.float64)[:, None, None]
    xs = (2 * torch.arange(width, dtype=torch.float64) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=torch.float64) + 1) / height - 1
    gx = xs[None, None, :] + (2 * strength_x * ids - 1) / REFERENCE_GRID
    gy = ys[None, :, None] + (2 * strength_y * ids - 1) / REFERENCE_GRID
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
    return grid.to(torch.float32)


def warp_anchor(anchor: torch.Tensor, frame_ids: Sequence[int], strength_x: float, strength_y: float) -> torch.Tensor:
    """Copies of `anchor` (1, C, h, w), each translated by its frame's motion: (k, C, h, w).

    Sampling is nearest-neighbour, so values are copied exactly; the grid is float32 and
    the result keeps the anchor's dtype and device.
    """
    _, channels, height, width = anchor.shape
    grid = translation_grid(frame_ids, strength_x, strength_y, height, width).to(anchor.device)
    source = anchor.float().expand(len(frame_ids), channels, height, width)
    warped = F.grid_sample(source, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    return warped.to(anchor.dtype)


def forward_noise(x_t0: torch.Tensor, eps: torch.Tensor, alphas: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """DDPM forward process from timestep t0 to t1 > t0 in one jump (alphas: scheduler.alphas).

    Computed in float32, returned in x_t0's dtype.
    """
    alpha = torch.prod(alphas[t0:t1].float())
    mixed = alpha.sqrt() * x_t0.float() + (1 - alpha).sqrt() * eps.to(x_t0.device, torch.float32)
    return mixed.to(x_t0.dtype)
