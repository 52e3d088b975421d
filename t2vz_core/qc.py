"""Temporal-consistency scores of an edited video: warp error and flicker, against its source.

    scores = score_frames(output_chunks, source_chunks)     # iterables of uint8 (k, H, W, 3)
    scores = score_stores(output_store, source_store)        # FrameStores (the qc step)
    scores = score_videos("edited.mp4", "source.mp4")        # files (`t2vz qc`)
    scores.to_dict() -> {"warp_error", "source_warp_error", "warp_error_ratio", "flicker", "source_flicker"}

Definitions (all in 0-255 units):

- Motion between frames t-1 and t is measured on the SOURCE frames (grayscale, resized to the
  output size) with OpenCV's DIS optical flow, both ways: backward flow b (frame t -> t-1) and
  forward flow f (t-1 -> t). A pixel x of frame t is kept when the two agree,
  |b(x) + f(x + b(x))|^2 <= 0.01 (|b(x)|^2 + |f(x + b(x))|^2) + 0.5 (the forward-backward test of
  Sundaram et al. 2010, used by Ruder et al. for video style transfer), and x + b(x) lies inside
  the frame. Occluded and disoccluded pixels fail it.
- `warp_error`: the previous OUTPUT frame is warped onto frame t along b (bilinear), and the
  absolute difference to output frame t is averaged over the kept pixels and the three colour
  channels; the mean over all kept pixels of all frame pairs (pixel-weighted).
- `source_warp_error`: the same, warping the source frames themselves: what the flow cannot
  explain in the source (noise, compression, lighting). `warp_error_ratio` = warp_error /
  max(source_warp_error, 1): about 1 when the edit is as consistent as its source, higher when
  the edit adds temporal noise. The floor of 1 keeps near-static sources from blowing it up.
- `flicker`: mean over consecutive frames of |mean luminance(t) - mean luminance(t-1)|
  (luminance = OpenCV's RGB->gray, BT.601); `source_flicker` likewise on the source.

Without a source (text2video), the flow is measured on the output itself: `warp_error` then says
how well each output frame is explained by warping its predecessor along the output's own motion;
`source_warp_error`, `source_flicker` and `warp_error_ratio` are None (there is nothing to compare
with). A video of a single frame has no frame pairs: every score is None; the warp errors are also
None when no pixel passes the consistency test (nothing the flow explains, e.g. a cut at every frame).

Frames stream chunk by chunk; only the previous frame of each stream is held between chunks, so
memory does not grow with the video's length.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2vz_core.errors import InputError
from t2vz_core.media.geometry import Geometry, as_chunk
from t2vz_core.step_results import QC_KEYS

# Forward-backward consistency thresholds (Sundaram et al. 2010): relative and absolute (px^2).
_FB_RELATIVE, _FB_ABSOLUTE = 0.01, 0.5
_DIGITS = 4


@dataclass(frozen=True)
class QCScores:
    """Scores of one video; None where undefined (no source, or fewer than two frames).
    `pairs`: frame pairs measured; `flow_from`: "source" or "output"; `consistent_share`: the
    share of pixels that passed the forward-backward test (a low share: the flow is unreliable)."""

    warp_error: float | None
    source_warp_error: float | None
    warp_error_ratio: float | None
    flicker: float | None
    source_flicker: float | None
    pairs: int = 0
    flow_from: str = "source"
    consistent_share: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """Exactly the sidecar's "qc" object."""
        return {key: _round(getattr(self, key)) for key in QC_KEYS}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), _DIGITS)


class _Flow:
    """DIS optical flow (OpenCV), one instance per scoring run (not thread-safe)."""

    def __init__(self):
        import cv2

        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def backward_with_mask(
        self, prev_gray: np.ndarray, cur_gray: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(map_x, map_y) that sample frame t-1 at each pixel of frame t, and the mask of pixels
        whose forward and backward flows agree (and whose source lies inside the frame)."""
        cv2 = self._cv2
        backward = self._dis.calc(cur_gray, prev_gray, None)  # cur(x) ~ prev(x + backward(x))
        forward = self._dis.calc(prev_gray, cur_gray, None)  # prev(y) ~ cur(y + forward(y))
        h, w = cur_gray.shape
        if (h, w) not in self._grids:
            self._grids[(h, w)] = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        grid_x, grid_y = self._grids[(h, w)]
        map_x = grid_x + backward[..., 0]
        map_y = grid_y + backward[..., 1]
        forward_at = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        loop = backward + forward_at
        mask = (
            np.sum(loop * loop, axis=-1)
            <= _FB_RELATIVE * (np.sum(backward * backward, axis=-1) + np.sum(forward_at * forward_at, axis=-1))
            + _FB_ABSOLUTE
        )
        mask &= (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        return map_x, map_y, mask

    def warp(self, frame: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _frames(chunks: Iterable[np.ndarray], what: str) -> Iterator[np.ndarray]:
    """One frame at a time from chunks of (k, H, W, 3) uint8 (or single (H, W, 3) frames)."""
    for chunk in chunks:
        try:
            arr = as_chunk(chunk)
        except InputError as exc:
            raise InputError(f"qc: {what} {exc}") from None
        yield from arr


class _Sum:
    """A running mean."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, total: float, count: int) -> None:
        self.total += total
        self.count += count

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def score_frames(output_chunks: Iterable[np.ndarray], source_chunks: Iterable[np.ndarray] | None = None) -> QCScores:
    """Scores of the output frames against the source frames (same count; the source is resized
    to the output size), or of the output alone when `source_chunks` is None (see the module
    docstring). InputError when the two streams hold different numbers of frames."""
    flow = _Flow()
    outputs = _frames(output_chunks, "output")
    sources = _frames(source_chunks, "source") if source_chunks is not None else None
    warp, source_warp = _Sum(), _Sum()
    flicker, source_flicker = _Sum(), _Sum()
    kept, seen = 0, 0
    prev = None  # (output frame, output luminance, source frame, source gray, source luminance)
    n = 0
    for out in outputs:
        size = (out.shape[1], out.shape[0])
        if sources is not None:
            src_frame = next(sources, None)
            if src_frame is None:
                raise InputError(f"qc: the source ends after {n} frames; the output has more")
            src = Geometry(resize=size).apply(src_frame)  # the decoders' resize
        else:
            src = out
        src_gray = _gray(src)
        out_lum = float(_gray(out).mean()) if sources is not None else float(src_gray.mean())
        src_lum = float(src_gray.mean())
        if prev is not None:
            p_out, p_out_lum, p_src, p_src_gray, p_src_lum = prev
            if p_out.shape != out.shape:
                raise InputError(
                    f"qc: output frame {n} is {size[0]}x{size[1]}, frame {n - 1} {p_out.shape[1]}x{p_out.shape[0]}"
                )
            map_x, map_y, mask = flow.backward_with_mask(p_src_gray, src_gray)
            count = int(mask.sum())
            kept += count
            seen += mask.size
            if count:
                diff = np.abs(flow.warp(p_out, map_x, map_y).astype(np.float32) - out.astype(np.float32))
                warp.add(float(diff[mask].sum()), count * 3)
                if sources is not None:
                    sdiff = np.abs(flow.warp(p_src, map_x, map_y).astype(np.float32) - src.astype(np.float32))
                    source_warp.add(float(sdiff[mask].sum()), count * 3)
            flicker.add(abs(out_lum - p_out_lum), 1)
            source_flicker.add(abs(src_lum - p_src_lum), 1)
        prev = (out, out_lum, src, src_gray, src_lum)
        n += 1
    if sources is not None and next(sources, None) is not None:
        raise InputError(f"qc: the source has more frames than the output ({n})")
    pairs = max(0, n - 1)
    share = kept / seen if seen else None
    # None when no pixel passed the consistency test (nothing the flow explains: unmeasurable).
    warp_error = warp.mean()
    if sources is None:
        return QCScores(warp_error, None, None, flicker.mean(), None, pairs, "output", share)
    source_warp_error = source_warp.mean()
    ratio = None if warp_error is None else warp_error / max(source_warp_error, 1.0)
    return QCScores(warp_error, source_warp_error, ratio, flicker.mean(), source_flicker.mean(), pairs, "source", share)


def score_stores(output, source=None, chunk_size: int = 16) -> QCScores:
    """Scores of a FrameStore (or its folder) against the source's FrameStore, or alone."""
    from t2vz_core.media import FrameStore

    out_store = output if isinstance(output, FrameStore) else FrameStore(output)
    if source is None:
        return score_frames(out_store.iter_chunks(chunk_size))
    src_store = source if isinstance(source, FrameStore) else FrameStore(source)
    if len(src_store) != len(out_store):
        raise InputError(
            f"qc: {out_store.path} holds {len(out_store)} frames, its source {src_store.path} {len(src_store)}"
        )
    return score_frames(out_store.iter_chunks(chunk_size), src_store.iter_chunks(chunk_size))


def score_videos(edited: str | os.PathLike, source: str | os.PathLike | None = None, chunk_size: int = 16) -> QCScores:
    """Scores of a video file against its source file (or alone).

    The source is read at the edited video's frame rate from its start, as many frames as the
    edited video has (what a t2vz row without `start` produces), and each frame is resized to
    the edited video's size. Both are decoded with PyAV in this process, chunk by chunk."""
    from t2vz_core.media import DecodeSpec, iter_frames, plan_decode, probe

    edited_info = probe(edited)
    edited_plan = plan_decode(edited_info)
    output_chunks = iter_frames(edited, edited_plan, chunk_size=chunk_size, backend="pyav")
    if source is None:
        return score_frames(output_chunks)
    source_info = probe(source)
    source_plan = plan_decode(
        source_info, DecodeSpec(fps=Fraction(edited_plan.fps), max_frames=edited_plan.frame_count)
    )
    if source_plan.frame_count < edited_plan.frame_count:
        raise InputError(
            f"qc: {source} holds {source_plan.frame_count} frames at "
            f"{float(edited_plan.fps):g} fps, {edited} {edited_plan.frame_count}: "
            f"the source is shorter than the edit"
        )
    source_chunks = iter_frames(source, source_plan, chunk_size=chunk_size, backend="pyav")
    return score_frames(output_chunks, source_chunks)


def format_table(
    scores: QCScores, edited: str | os.PathLike | None = None, source: str | os.PathLike | None = None
) -> str:
    """A short readable table of the scores (what `t2vz qc` prints without --json)."""
    labels = {
        "warp_error": "warp error (output)",
        "source_warp_error": "warp error (source)",
        "warp_error_ratio": "warp error ratio",
        "flicker": "flicker (output)",
        "source_flicker": "flicker (source)",
    }
    lines = []
    if edited is not None:
        lines.append(f"edited: {Path(edited)}")
    lines.append(
        f"source: {Path(source)}" if source is not None else "source: none (flow measured on the output itself)"
    )
    share = "" if scores.consistent_share is None else f", {scores.consistent_share:.0%} of pixels flow-consistent"
    lines.append(f"{scores.pairs} frame pairs{share}")
    for key, value in scores.to_dict().items():
        shown = "-" if value is None else f"{value:.3f}"
        lines.append(f"  {labels[key]:<22} {shown:>9}")
    return "\n".join(lines)
