"""Cross-frame attention with a reusable anchor: every frame's self-attention looks at frame 0.

Text2Video-Zero replaces each self-attention by attention whose keys and values come from
the first frame (the anchor) of the same guidance branch. The UNet batch is branch-major:
``[branch 0: frames..., branch 1: frames..., ...]`` (e.g. ``[uncond..., text...]`` with CFG,
``[text..., image..., uncond...]`` for Instruct-Pix2Pix), so a batch of B rows holds
``groups`` branches of ``B // groups`` frames each.

Anchor reuse: in ``record`` mode the first frame of each group is the anchor and its keys and
values are stored per layer; in ``replay`` mode (later chunks of the same step) the stored ones
are used and the anchor does not need to be in the batch at all. Only one step's K/V is held.

No K/V copy per frame: the queries (G*F, S, D) are viewed as (G, F*S, D) and attend to the
anchor's (G, S, D). Softmax runs per query row, so this is exactly per-frame attention to the
anchor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

RECORD, REPLAY = "record", "replay"


class AnchorKV:
    """Shared state of one model's cross-frame processors: grouping, mode, the anchor's K/V."""

    def __init__(self, groups: int):
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.groups = groups
        self.mode = RECORD
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self.kv.clear()


class CrossFrameAttnProcessor:
    """SDPA self-attention against the anchor frame of each guidance branch (see module doc).

    Cross-attention calls (encoder_hidden_states given) go to diffusers' AttnProcessor2_0.
    """

    def __init__(self, state: AnchorKV, name: str):
        self.state = state
        self.name = name
        self._plain = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attention_mask is not None:
            raise NotImplementedError(f"{self.name}: cross-frame attention takes no attention mask")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        batch, seq_len, _ = hidden_states.shape
        groups = self.state.groups
        if batch % groups:
            raise ValueError(f"{self.name}: batch of {batch} rows is not divisible into {groups} guidance branches")
        frames = batch // groups
        key, value = self._anchor_kv(attn, hidden_states, frames)

        query = attn.to_q(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        # (G*F, S, D) -> (G, heads, F*S, head_dim): all frames of a branch share its anchor.
        query = query.view(groups, frames * seq_len, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, seq_len, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _anchor_kv(self, attn, hidden_states: torch.Tensor, frames: int):
        state = self.state
        if state.mode == REPLAY:
            try:
                key, value = state.kv[self.name]
            except KeyError:
                raise RuntimeError(f"{self.name}: no anchor recorded; run the anchor batch first") from None
            if key.shape[0] != state.groups or key.shape[2] != hidden_states.shape[1]:
                raise RuntimeError(f"{self.name}: recorded anchor does not fit this batch")
            return key, value
        # Record: the anchor is the first frame of every branch group.
        groups = state.groups
        anchor = hidden_states.view(groups, frames, *hidden_states.shape[1:])[:, 0]
        key, value = attn.to_k(anchor), attn.to_v(anchor)
        head_dim = key.shape[-1] // attn.heads
        key = key.view(groups, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(groups, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        state.kv[self.name] = (key, value)
        return key, value


@contextmanager
def cross_frame_attention(model: torch.nn.Module, groups: int) -> Iterator[AnchorKV]:
    """Install cross-frame processors on every self-attention of `model` (UNet or ControlNet).

    Cross-attention layers keep their own processors. The model's processors are restored on
    exit, on error too. Yields the shared AnchorKV (set ``.mode`` to RECORD / REPLAY).
    """
    original = model.attn_processors
    state = AnchorKV(groups)
    installed = {}
    for key, processor in original.items():
        module = model.get_submodule(key.removesuffix(".processor"))
        if getattr(module, "is_cross_attention", False):
            installed[key] = processor
        else:
            installed[key] = CrossFrameAttnProcessor(state, key)
    model.set_attn_processor(installed)
    try:
        yield state
    finally:
        model.set_attn_processor(dict(original))
        state.clear()
