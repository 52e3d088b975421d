"""Motion field, forward noise and chunk plans (no model files needed)."""

from __future__ import annotations

import warnings

import pytest
import torch

from t2vz_core.engine.loop import plan_chunks
from t2vz_core.engine.motion import forward_noise, warp_anchor
from t2vz_core.engine.text2video import recipe_chunks


def _reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero as module
    return module


@pytest.mark.parametrize("height, width", [(32, 32), (40, 24), (8, 8), (96, 128)])
@pytest.mark.parametrize("strength", [(12, 12), (0, 0), (-8, 5), (3.3, 7.1), (100, -40)])
def test_analytic_warp_equals_reference_warp(height, width, strength):
    """Exact equality, reflection at the borders included (no exact half-pixel ties here:
    at a tie the reference's rounding depends on float error and varies from row to row)."""
    latent = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(height + width))
    frame_ids = list(range(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _reference().create_motion_field_and_warp_latents(
            strength[0], strength[1], frame_ids, latent.repeat(len(frame_ids), 1, 1, 1)
        )
    got = warp_anchor(latent, frame_ids, *strength)
    assert torch.equal(got, expected)
    assert torch.equal(got[0], latent[0]) or strength != (0, 0)


def test_warp_moves_content_and_keeps_dtype():
    latent = torch.arange(32 * 32, dtype=torch.float16).view(1, 1, 32, 32)
    warped = warp_anchor(latent, [0, 1], 16, 0)  # 16 px on the 512 grid = 1 latent px at 32
    assert warped.dtype == torch.float16
    assert torch.equal(warped[0], latent[0])
    assert torch.equal(warped[1, 0, :, :-1], latent[0, 0, :, 1:])  # sampled one pixel to the right


def test_forward_noise_matches_reference_formula():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    alpha = torch.prod(scheduler.alphas[101:301])
    expected = torch.sqrt(alpha) * x + torch.sqrt(1 - alpha) * eps
    assert torch.allclose(forward_noise(x, eps, scheduler.alphas, 101, 301), expected, atol=1e-6)


def test_recipe_and_step_chunks():
    # The documented recipe: chunk starts arange(0, n, chunk_size - 1); frame 0 prepended to each.
    assert recipe_chunks(8, 3) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert recipe_chunks(5, 8) == [(0, 5)]
    # UNet batches: anchor row + chunk_size - 1 rows, then chunk_size - 1 new rows per batch.
    assert plan_chunks(8, 3) == [range(0, 3), range(3, 5), range(5, 7), range(7, 8)]
    assert plan_chunks(6, None) == [range(6)]
    assert plan_chunks(4, 8) == [range(4)]
    # text2video with chunking: anchor row + n frames, batches aligned with the recipe's chunks.
    assert [(r.start - 1, r.stop - 1) for r in plan_chunks(8 + 1, 3)][1:] == recipe_chunks(8, 3)[1:]
