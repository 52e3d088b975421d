"""Text2Video-Zero engine on maintained diffusers parts (UNet, ControlNet, schedulers, pipelines).

Public API:
- ``GenerationRequest``: what to generate (mode, prompt, steps, seed, size, chunk_size, t0/t1...).
- ``generate(pipe, request, conditioning=None, output=None, checkpoint_path=None, on_progress=None)``
- ``generate_video(pipe, mode, prompt, conditioning=None, **fields)``: notebook convenience.
- ``FrameSink``: the output protocol (``write(start, frames)``, optional ``done(start, stop)``).

Every mode is chunked step-major: all latents stay in memory, each step runs the frames in
UNet batches of ``chunk_size``; the first batch records the anchor frame's self-attention
keys/values, the others replay them, so each output frame is evaluated once per step.
"""

from __future__ import annotations

import numpy as np

from .attention import CrossFrameAttnProcessor, cross_frame_attention
from .generate import decode_spans, generate
from .request import CONTROL_MODES, MODES, GenerationRequest
from .vae_decode import FrameSink

__all__ = [
    "CONTROL_MODES",
    "MODES",
    "CrossFrameAttnProcessor",
    "FrameSink",
    "GenerationRequest",
    "cross_frame_attention",
    "decode_spans",
    "generate",
    "generate_video",
]


def generate_video(pipe, mode: str = "text2video", prompt: str = "", conditioning=None, on_progress=None, **fields):
    """Frames (n, H, W, 3) uint8 for a notebook. `conditioning` may also be a list of PIL images
    or arrays; width/height/video_length default to the conditioning's, text2video to 8 frames."""
    if isinstance(conditioning, (list, tuple)):
        conditioning = np.stack([_rgb_array(frame) for frame in conditioning])
    if conditioning is not None:
        first = np.asarray(conditioning[0:1])
        fields.setdefault("height", first.shape[1])
        fields.setdefault("width", first.shape[2])
    elif mode == "text2video":
        fields.setdefault("video_length", 8)
    request = GenerationRequest(mode=mode, prompt=prompt, **fields)
    return generate(pipe, request, conditioning, on_progress=on_progress)


def _rgb_array(frame) -> np.ndarray:
    return np.asarray(frame.convert("RGB")) if hasattr(frame, "convert") else np.asarray(frame)
