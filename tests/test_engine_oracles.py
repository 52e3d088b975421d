"""Oracles (issue 3, 2a-2d): the engine reproduces diffusers' pipelines on tiny fp32 models.

Frames are compared as float32 in [0, 1]. Budget: ~40 s on 2 busy cores.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import PIL.Image
import pytest
import torch

from t2vz_core.engine import GenerationRequest, generate
from t2vz_core.models import Runtime, load_pipeline

# The deprecated reference calls grid_sample without align_corners and meshgrid without indexing.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Default grid_sample:UserWarning"),
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),
]

CPU = Runtime(device="cpu", dtype="fp32")
SIZE = 32  # px; tiny VAE factor 2 -> 16x16 latents (the cost of a UNet call grows with their area)
ORACLE_TOL = 1e-3
CHUNK_TOL = 1e-4


def _deprecated():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero as module
    return module


@contextmanager
def reference_cross_frame(groups: int, *models):
    """diffusers' own CrossFrameAttnProcessor2_0 on the given models, restored afterwards."""
    saved = [m.attn_processors for m in models]
    try:
        for model in models:
            model.set_attn_processor(_deprecated().CrossFrameAttnProcessor2_0(batch_size=groups))
        yield
    finally:
        for model, processors in zip(models, saved):
            model.set_attn_processor(dict(processors))


def shared_latents(seed: int, channels: int = 4) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, SIZE // 2, SIZE // 2), generator=generator)


def frames(seed: int, count: int, sparse: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if sparse:  # edge-map-like
        return ((rng.random((count, SIZE, SIZE, 3)) > 0.8) * 255).astype(np.uint8)
    return rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def pil(images: np.ndarray) -> list:
    return [PIL.Image.fromarray(image) for image in images]


def ours(pipe, conditioning=None, **fields) -> np.ndarray:
    request = GenerationRequest(width=SIZE, height=SIZE, **fields)
    return generate(pipe, request, conditioning, output_dtype=np.float32)


def maxdiff(a, b) -> float:
    assert a.shape == b.shape
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ------------------------------------------------------------------------------- 2a text2video

T2V = dict(num_inference_steps=6, t0=2, t1=4, motion_field_strength_x=12, motion_field_strength_y=12)


@pytest.fixture(scope="module")
def t2v_reference(tiny_models):
    from diffusers import TextToVideoZeroPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoZeroPipeline.from_pretrained(
            tiny_models / "sd", safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd(tiny_models):
    return load_pipeline("sd", tiny_models / "sd", runtime=CPU)


def test_text2video_matches_reference_pipeline(sd, t2v_reference):
    n = 6
    expected = t2v_reference(
        prompt="a dog running",
        video_length=n,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator("cpu").manual_seed(7),
        **T2V,
    ).images
    got = ours(sd, mode="text2video", prompt="a dog running", video_length=n, seed=7, **T2V)
    assert maxdiff(got, expected) <= ORACLE_TOL
    assert np.std(got) > 0.05 and maxdiff(got[0], got[-1]) > 0.05  # real, moving content


def test_chunked_text2video_matches_frame_ids_recipe(sd, t2v_reference):
    n, chunk_size, seed = 5, 3, 11
    kw = {**T2V, "motion_field_strength_x": -6, "motion_field_strength_y": 9}
    expected = []
    starts = np.arange(0, n, chunk_size - 1)  # the recipe from the diffusers docs
    generator = torch.Generator("cpu")
    for i, start in enumerate(starts):
        end = n if i == len(starts) - 1 else starts[i + 1]
        frame_ids = [0] + list(range(start, end))
        generator.manual_seed(seed)
        out = t2v_reference(
            prompt="a red car",
            video_length=len(frame_ids),
            height=SIZE,
            width=SIZE,
            generator=generator,
            frame_ids=frame_ids,
            **kw,
        ).images
        expected.append(out[1:])
    expected = np.concatenate(expected)
    got = ours(sd, mode="text2video", prompt="a red car", video_length=n, seed=seed, chunk_size=chunk_size, **kw)
    assert maxdiff(got, expected) <= ORACLE_TOL
    unchunked = ours(sd, mode="text2video", prompt="a red car", video_length=n, seed=seed, **kw)
    assert maxdiff(got, unchunked) > 0.01  # documented: text2video depends on chunking, like the recipe


# ---------------------------------------------------------------------- 2b/2d pose, canny, depth

N_FRAMES = 4
CHUNKS = (2, 3)  # 2 divides the 4 frames, 3 does not


@pytest.mark.parametrize("mode", ["pose", "canny", "depth"])
def test_controlnet_modes_match_pipeline_and_chunking(tiny_models, mode):
    folder = {"pose": "controlnet-openpose", "canny": "controlnet-canny", "depth": "controlnet-depth"}[mode]
    pipe = load_pipeline("sd", tiny_models / "sd", tiny_models / folder, runtime=CPU)
    maps = frames(seed=len(mode), count=N_FRAMES, sparse=mode != "depth")
    seed, steps, scale = 5, 3, 0.8
    with reference_cross_frame(2, pipe.unet, pipe.controlnet):
        expected = pipe(
            prompt=["a man dancing"] * N_FRAMES,
            negative_prompt=["blurry"] * N_FRAMES,
            image=pil(maps),
            latents=shared_latents(seed).repeat(N_FRAMES, 1, 1, 1),
            num_inference_steps=steps,
            guidance_scale=7.5,
            controlnet_conditioning_scale=scale,
            output_type="np",
        ).images
    fields = dict(
        mode=mode,
        prompt="a man dancing",
        negative_prompt="blurry",
        num_inference_steps=steps,
        guidance_scale=7.5,
        controlnet_conditioning_scale=scale,
        seed=seed,
    )
    full = ours(pipe, maps, **fields)
    assert maxdiff(full, expected) <= ORACLE_TOL
    for chunk_size in CHUNKS:
        assert maxdiff(ours(pipe, maps, chunk_size=chunk_size, **fields), full) <= CHUNK_TOL
    if mode == "canny":  # the control maps matter (the tiny ControlNets are not no-ops)
        assert maxdiff(ours(pipe, maps[::-1].copy(), **fields), full) > 1e-3


def test_same_seed_same_frames(tiny_models):
    pipe = load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=CPU)
    request = GenerationRequest(
        mode="canny", prompt="a cat", num_inference_steps=3, seed=9, width=SIZE, height=SIZE, chunk_size=4
    )
    maps = frames(seed=1, count=5, sparse=True)
    first, second = generate(pipe, request, maps), generate(pipe, request, maps)
    assert first.dtype == np.uint8 and first.shape == (5, SIZE, SIZE, 3)
    assert np.array_equal(first, second)
    other = generate(pipe, GenerationRequest(**{**request.as_dict(), "seed": 10}), maps)
    assert not np.array_equal(first, other)


# -------------------------------------------------------------------------------- 2c/2d pix2pix


def test_pix2pix_matches_pipeline_and_chunking(tiny_models):
    pipe = load_pipeline("pix2pix", tiny_models / "pix2pix", runtime=CPU)
    source = frames(seed=3, count=N_FRAMES)
    seed, steps = 4, 3
    with reference_cross_frame(3, pipe.unet):
        expected = pipe(
            prompt=["make it snow"] * N_FRAMES,
            image=pil(source),
            latents=shared_latents(seed).repeat(N_FRAMES, 1, 1, 1),
            num_inference_steps=steps,
            guidance_scale=7.5,
            image_guidance_scale=1.5,
            output_type="np",
        ).images
    fields = dict(
        mode="pix2pix",
        prompt="make it snow",
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        seed=seed,
    )
    full = ours(pipe, source, **fields)
    assert maxdiff(full, expected) <= ORACLE_TOL
    for chunk_size in CHUNKS:
        assert maxdiff(ours(pipe, source, chunk_size=chunk_size, **fields), full) <= CHUNK_TOL


# ----------------------------------------------------------------------------------------- SDXL


def test_sdxl_text2video_matches_reference_pipeline(tiny_models):
    from diffusers import TextToVideoZeroSDXLPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = TextToVideoZeroSDXLPipeline.from_pretrained(tiny_models / "sdxl", add_watermarker=False)
    reference.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=5, t0=1, t1=3, motion_field_strength_x=8, motion_field_strength_y=-4)
    expected = reference(
        prompt="a cat",
        video_length=4,
        height=SIZE,
        width=SIZE,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(1),
        **kw,
    ).images
    pipe = load_pipeline("sdxl", tiny_models / "sdxl", runtime=CPU)
    assert maxdiff(ours(pipe, mode="text2video", prompt="a cat", video_length=4, seed=1, **kw), expected) <= ORACLE_TOL


def test_sdxl_controlnet_matches_pipeline(tiny_models):
    pipe = load_pipeline("sdxl", tiny_models / "sdxl", tiny_models / "controlnet-sdxl-canny", runtime=CPU)
    maps, n = frames(seed=2, count=4, sparse=True), 4
    with reference_cross_frame(2, pipe.unet, pipe.controlnet):
        expected = pipe(
            prompt=["a cat"] * n,
            image=pil(maps),
            latents=shared_latents(2).repeat(n, 1, 1, 1),
            num_inference_steps=3,
            guidance_scale=5.0,
            height=SIZE,
            width=SIZE,
            output_type="np",
        ).images
    fields = dict(mode="canny", prompt="a cat", num_inference_steps=3, guidance_scale=5.0, seed=2)
    full = ours(pipe, maps, **fields)
    assert maxdiff(full, expected) <= ORACLE_TOL
    assert maxdiff(ours(pipe, maps, chunk_size=3, **fields), full) <= CHUNK_TOL
