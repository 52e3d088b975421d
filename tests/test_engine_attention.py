"""Cross-frame attention processor on bare diffusers Attention modules (no model files needed)."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from t2vz_core.engine.attention import REPLAY, AnchorKV, CrossFrameAttnProcessor, cross_frame_attention


def _reference_processor(groups: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor2_0,
        )
    return CrossFrameAttnProcessor2_0(batch_size=groups)


def _attention(**kwargs) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8, **kwargs).eval()


def _explicit(attn: Attention, hidden: torch.Tensor, groups: int) -> torch.Tensor:
    """Per frame: plain attention with keys/values of its group's first frame (slow, obvious)."""
    frames = hidden.shape[0] // groups
    out = []
    for row in range(hidden.shape[0]):
        anchor = hidden[(row // frames) * frames]
        pair = torch.stack([hidden[row], anchor])  # row 0 queries, row 1 gives K/V
        q = attn.to_q(pair[:1])
        k, v = attn.to_k(pair[1:]), attn.to_v(pair[1:])
        h = attn.heads
        q, k, v = (x.view(1, -1, h, x.shape[-1] // h).transpose(1, 2) for x in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        o = (weights @ v).transpose(1, 2).reshape(1, -1, h * (q.shape[-1]))
        out.append(attn.to_out[0](o))
    return torch.cat(out)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_grouping_matches_explicit_and_diffusers(groups):
    attn = _attention()
    hidden = torch.randn(groups * 4, 10, 16, generator=torch.Generator().manual_seed(groups))
    ours = CrossFrameAttnProcessor(AnchorKV(groups), "layer")(attn, hidden)
    theirs = _reference_processor(groups)(attn, hidden)
    assert torch.allclose(ours, _explicit(attn, hidden, groups), atol=1e-5)
    assert torch.allclose(ours, theirs, atol=1e-5)
    if groups > 1:  # wrong grouping silently changes the result: make sure it is not a no-op
        wrong = CrossFrameAttnProcessor(AnchorKV(1), "layer")(attn, hidden)
        assert (wrong - ours).abs().max() > 1e-3


def test_indivisible_batch_is_an_error():
    attn = _attention()
    with pytest.raises(ValueError, match="not divisible into 3"):
        CrossFrameAttnProcessor(AnchorKV(3), "layer")(attn, torch.randn(4, 10, 16))


def test_replay_equals_full_batch():
    """Anchor + 2 frames recorded, the other 3 frames replayed: same as all 6 frames at once."""
    attn = _attention()
    groups, frames = 2, 6
    video = torch.randn(groups, frames, 10, 16, generator=torch.Generator().manual_seed(1))
    full = CrossFrameAttnProcessor(AnchorKV(groups), "l")(attn, video.reshape(-1, 10, 16))
    full = full.view(groups, frames, 10, 16)
    state = AnchorKV(groups)
    proc = CrossFrameAttnProcessor(state, "l")
    first = proc(attn, video[:, :3].reshape(-1, 10, 16)).view(groups, 3, 10, 16)
    state.mode = REPLAY
    rest = proc(attn, video[:, 3:].reshape(-1, 10, 16)).view(groups, 3, 10, 16)
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-6)


def test_replay_without_record_is_an_error():
    state = AnchorKV(1)
    state.mode = REPLAY
    with pytest.raises(RuntimeError, match="no anchor recorded"):
        CrossFrameAttnProcessor(state, "l")(_attention(), torch.randn(2, 10, 16))


def test_cross_attention_delegates_to_sdpa_processor():
    attn = _attention(cross_attention_dim=12)
    hidden, context = torch.randn(4, 10, 16), torch.randn(4, 7, 12)
    ours = CrossFrameAttnProcessor(AnchorKV(2), "l")(attn, hidden, encoder_hidden_states=context)
    assert torch.allclose(ours, AttnProcessor2_0()(attn, hidden, context), atol=1e-6)


def test_norms_residual_and_rescale_are_honoured():
    """A spatial attention block (4-D input, group norm, residual, rescale, qk-norm)."""
    attn = _attention(norm_num_groups=4, residual_connection=True, rescale_output_factor=2.0, qk_norm="layer_norm")
    hidden = torch.randn(2, 16, 3, 4, generator=torch.Generator().manual_seed(2))  # (frames, C, h, w)
    ours = CrossFrameAttnProcessor(AnchorKV(1), "l")(attn, hidden)

    tokens = attn.group_norm(hidden.flatten(2)).transpose(1, 2)  # (frames, h*w, C)
    split = lambda x: x.view(x.shape[0], -1, 2, 8).transpose(1, 2)  # noqa: E731
    q = attn.norm_q(split(attn.to_q(tokens)))
    k = attn.norm_k(split(attn.to_k(tokens[:1])))
    v = split(attn.to_v(tokens[:1]))
    weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    out = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(2, 12, 16))
    expected = (out.transpose(1, 2).reshape(hidden.shape) + hidden) / 2.0
    assert torch.allclose(ours, expected, atol=1e-5)


class _Boom(RuntimeError):
    pass


def test_processors_restored_after_exit_and_error():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
    )
    before = dict(unet.attn_processors)
    with cross_frame_attention(unet, groups=2):
        during = unet.attn_processors
        self_attn = [k for k in during if ".attn1." in k]
        assert self_attn and all(isinstance(during[k], CrossFrameAttnProcessor) for k in self_attn)
        assert all(during[k] is before[k] for k in during if ".attn2." in k)
    assert unet.attn_processors == before
    with pytest.raises(_Boom):
        with cross_frame_attention(unet, groups=2):
            raise _Boom()
    assert unet.attn_processors == before
