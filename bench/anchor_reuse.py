"""Anchor reuse: UNet work per output frame per step, t2vz vs the anchor-in-every-chunk recipe.

    .venv/bin/python bench/anchor_reuse.py [--frames 32] [--chunk 8] [--steps 6] [--repeats 3] [--threads N]
        [--no-text2video]

Tiny random-weight models on the CPU (written to a temporary folder). The recipe is what
Text2Video-Zero users run for long videos: the diffusers pipeline called once per chunk with
frame 0 prepended (chunk starts arange(0, n, chunk - 1)), diffusers' CrossFrameAttnProcessor2_0,
output[0] dropped; for ControlNet the same shared latents as t2vz, for text2video the
documented frame_ids recipe. Evaluations are counted as latent rows entering the UNet
(divided by the guidance branches), not computed by formula. Both sides run in this process,
alternately, best wall time of --repeats; the frames of both sides are compared too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import torch


class RowCounter:
    def __init__(self, unet):
        self.rows = 0
        self._handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs):
        self.rows += (args[0] if args else kwargs["sample"]).shape[0]

    def close(self) -> None:
        self._handle.remove()


def cross_frame_processor(groups: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor2_0,
        )
    return CrossFrameAttnProcessor2_0(batch_size=groups)


def recipe_spans(frames: int, chunk: int) -> list[tuple[int, int]]:
    starts = list(range(0, frames, chunk - 1))
    return list(zip(starts, starts[1:] + [frames]))


def measure(run, unet, repeats: int) -> tuple[float, int, np.ndarray]:
    """(best seconds, UNet rows of one run, frames)."""
    best, rows, frames = float("inf"), 0, None
    for _ in range(repeats):
        counter = RowCounter(unet)
        start = time.perf_counter()
        try:
            frames = run()
        finally:
            counter.close()
        best, rows = min(best, time.perf_counter() - start), counter.rows
    return best, rows, frames


def controlnet_case(models: Path, args) -> dict:
    from t2vz_core.engine import GenerationRequest, generate
    from t2vz_core.models import Runtime, load_pipeline

    pipe = load_pipeline("sd", models / "sd", models / "controlnet-canny", runtime=Runtime(device="cpu", dtype="fp32"))
    n, size, seed = args.frames, 64, 0
    rng = np.random.default_rng(0)
    maps = ((rng.random((n, size, size, 3)) > 0.8) * 255).astype(np.uint8)
    request = GenerationRequest(
        mode="canny",
        prompt="a man dancing",
        num_inference_steps=args.steps,
        seed=seed,
        width=size,
        height=size,
        chunk_size=args.chunk,
    )
    latent = torch.randn((1, 4, size // 2, size // 2), generator=torch.Generator("cpu").manual_seed(seed))

    def recipe():
        out = []
        for start, end in recipe_spans(n, args.chunk):
            frame_ids = [0] + list(range(start, end))
            images = pipe(
                prompt=[request.prompt] * len(frame_ids),
                image=[PIL.Image.fromarray(maps[i]) for i in frame_ids],
                latents=latent.repeat(len(frame_ids), 1, 1, 1),
                num_inference_steps=args.steps,
                guidance_scale=request.guidance_scale,
                output_type="np",
            ).images
            out.append(images[1:])
        return np.concatenate(out)

    def ours():
        return generate(pipe, request, maps, output_dtype=np.float32)

    saved = pipe.unet.attn_processors, pipe.controlnet.attn_processors
    pipe.set_progress_bar_config(disable=True)

    def recipe_with_processors():
        try:
            pipe.unet.set_attn_processor(cross_frame_processor(2))
            pipe.controlnet.set_attn_processor(cross_frame_processor(2))
            return recipe()
        finally:
            pipe.unet.set_attn_processor(dict(saved[0]))
            pipe.controlnet.set_attn_processor(dict(saved[1]))

    return compare("canny (ControlNet)", ours, recipe_with_processors, pipe.unet, args, groups=2, steps=args.steps)


def text2video_case(models: Path, args) -> dict:
    from diffusers import TextToVideoZeroPipeline

    from t2vz_core.engine import GenerationRequest, generate
    from t2vz_core.models import Runtime, load_pipeline

    pipe = load_pipeline("sd", models / "sd", runtime=Runtime(device="cpu", dtype="fp32"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = {k: pipe.components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
        reference = TextToVideoZeroPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    reference.set_progress_bar_config(disable=True)
    n, steps = args.frames, max(args.steps, 4)
    kw = dict(num_inference_steps=steps, t0=steps - 4, t1=steps - 2)  # like 44/47 of 50: late in the schedule
    request = GenerationRequest(
        mode="text2video",
        prompt="a dog running",
        seed=0,
        width=64,
        height=64,
        video_length=n,
        chunk_size=args.chunk,
        **kw,
    )

    def recipe():
        out, generator = [], torch.Generator("cpu")
        for start, end in recipe_spans(n, args.chunk):
            frame_ids = [0] + list(range(start, end))
            generator.manual_seed(request.seed)
            out.append(
                reference(
                    prompt=request.prompt,
                    video_length=len(frame_ids),
                    height=64,
                    width=64,
                    generator=generator,
                    frame_ids=frame_ids,
                    **kw,
                ).images[1:]
            )
        return np.concatenate(out)

    def ours():
        return generate(pipe, request, output_dtype=np.float32)

    return compare("text2video", ours, recipe, pipe.unet, args, groups=2, steps=steps)


def compare(name, ours, recipe, unet, args, groups: int, steps: int) -> dict:
    ours_s, recipe_s = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        s, ours_rows, ours_frames = measure(ours, unet, 1)
        ours_s = min(ours_s, s)
        s, recipe_rows, recipe_frames = measure(recipe, unet, 1)
        recipe_s = min(recipe_s, s)
    per_frame_step = lambda rows: rows / groups / args.frames / steps  # noqa: E731
    result = {
        "case": name,
        "t2vz_evals": per_frame_step(ours_rows),
        "recipe_evals": per_frame_step(recipe_rows),
        "t2vz_s": ours_s,
        "recipe_s": recipe_s,
        "max_diff": float(np.abs(ours_frames - recipe_frames).max()),
    }
    print(
        f"{name:20s} UNet frame-evaluations per output frame per step: t2vz {result['t2vz_evals']:.3f}, "
        f"recipe {result['recipe_evals']:.3f} (ratio {result['recipe_evals'] / result['t2vz_evals']:.3f}); "
        f"wall time t2vz {ours_s:.2f} s, recipe {recipe_s:.2f} s, recipe/t2vz {recipe_s / ours_s:.3f}; "
        f"max |frame diff| {result['max_diff']:.1e}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-text2video", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # the deprecated reference's grid_sample / meshgrid notices
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers.utils import logging as diffusers_logging

    from t2vz_core.tiny import write_tiny_models

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    print(
        f"{args.frames} frames, chunk size {args.chunk}, {args.steps} steps, tiny models, CPU, "
        f"{torch.get_num_threads()} torch threads; recipe formula 1 + 1/(chunk-1) = {1 + 1 / (args.chunk - 1):.3f}"
    )
    with tempfile.TemporaryDirectory(prefix="t2vz-bench-") as folder:
        write_tiny_models(Path(folder))
        controlnet_case(Path(folder), args)
        if not args.no_text2video:
            text2video_case(Path(folder), args)


if __name__ == "__main__":
    main()
