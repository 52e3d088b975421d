"""The modes of t2vz and the rules every layer shares about them (the manifest, the engine and the
steps import these; none keeps its own copy)."""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["text2video", "pose", "canny", "depth", "pix2pix"]
MODES: tuple[str, ...] = get_args(Mode)
CONTROLNET_MODES = frozenset({"pose", "canny", "depth"})  # a ControlNet follows per-frame control maps
SOURCE_MODES = frozenset({"pose", "canny", "depth", "pix2pix"})  # they edit a source video


def t0_t1_problem(t0: int, t1: int, steps: int) -> str | None:
    """Which of text2video's motion-stage indices breaks 0 <= t0 < t1 <= steps - 1: "steps" (fewer
    than 2 denoising steps), "t1" (past the last step), "t0" (not below t1), or None."""
    if steps < 2:
        return "steps"
    if t1 > steps - 1:
        return "t1"
    if t0 >= t1:
        return "t0"
    return None
