"""Validation: clear InputErrors before any model work (request fields, pipeline fit, conditioning)."""

from __future__ import annotations

import numpy as np
import pytest

from t2vz_core.engine import GenerationRequest, generate
from t2vz_core.errors import InputError
from t2vz_core.models import Runtime, load_pipeline

CPU = Runtime(device="cpu", dtype="fp32")
BASE = dict(mode="text2video", prompt="a dog", num_inference_steps=10, width=64, height=64, video_length=4, t0=2, t1=5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "video"}, "mode='video' is not one of"),
        ({"prompt": "   "}, "prompt must be a non-empty string"),
        ({"prompt": None}, "prompt must be a non-empty string"),
        ({"negative_prompt": None}, "negative_prompt must be a string"),
        ({"num_inference_steps": 0}, "num_inference_steps=0 must be >= 1"),
        ({"num_inference_steps": 2.5}, "num_inference_steps=2.5 must be an integer"),
        ({"width": 63}, "width=63 must be a multiple of 8"),
        ({"height": 0}, "height=0 must be >= 8"),
        ({"chunk_size": 1}, "chunk_size=1 must be >= 2 (the anchor frame plus at least one new frame)"),
        ({"chunk_size": True}, "chunk_size=True must be an integer"),
        ({"guidance_scale": -1.0}, "guidance_scale=-1.0 must be >= 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale=nan must be a finite number"),
        ({"image_guidance_scale": "2"}, "image_guidance_scale='2' must be a finite number"),
        ({"controlnet_conditioning_scale": -0.5}, "controlnet_conditioning_scale=-0.5 must be >= 0"),
        ({"seed": -1}, "seed=-1 must be between 0 and"),
        ({"video_length": None}, "video_length is required for mode text2video"),
        ({"video_length": 0}, "video_length=0 must be >= 1"),
        ({"t0": 5, "t1": 5}, "t0=5 must be smaller than t1=5"),
        ({"t0": -1}, "t0=-1 must be >= 0"),
        # The reference dies with an IndexError deep inside for these:
        ({"t0": 44, "t1": 47}, "t1=47 must be at most the number of denoising steps - 1 = 9"),
        ({"t1": 10}, "t1=10 must be at most the number of denoising steps - 1 = 9"),
        ({"motion_field_strength_x": float("inf")}, "motion_field_strength_x=inf must be a finite number"),
    ],
)
def test_request_validation_messages(change, message):
    with pytest.raises(InputError) as caught:
        GenerationRequest(**{**BASE, **change}).validate()
    assert message in str(caught.value)


def test_valid_requests_pass():
    GenerationRequest(**BASE).validate()
    GenerationRequest(**{**BASE, "t0": 0, "t1": 9}).validate()  # the widest valid range
    # t0/t1 only matter for text2video; a conditioned mode needs no video_length.
    GenerationRequest(mode="canny", prompt="x", num_inference_steps=4, video_length=None).validate()
    with pytest.raises(InputError, match="t1=9 must be at most .* = 4"):
        GenerationRequest(**{**BASE, "t1": 9}).validate(scheduler_steps=5)


class _UNetCalls:
    def __init__(self, unet):
        self.calls = 0
        self.handle = unet.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1


@pytest.fixture(scope="module")
def pipes(tiny_models):
    return {
        "sd": load_pipeline("sd", tiny_models / "sd", runtime=CPU),
        "canny": load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=CPU),
        "pix2pix": load_pipeline("pix2pix", tiny_models / "pix2pix", runtime=CPU),
    }


MAPS = np.zeros((4, 64, 64, 3), np.uint8)


@pytest.mark.parametrize(
    "pipe_name, fields, conditioning, message",
    [
        ("sd", {"mode": "canny"}, MAPS, "mode canny needs a ControlNet pipeline"),
        ("pix2pix", {"mode": "text2video"}, None, "cannot run on an Instruct-Pix2Pix model"),
        ("canny", {"mode": "pix2pix"}, MAPS, "mode pix2pix needs an SD1.x Instruct-Pix2Pix pipeline"),
        ("sd", {"mode": "text2video"}, MAPS, "mode text2video takes no conditioning frames"),
        ("canny", {"mode": "canny"}, None, "mode canny needs canny control maps (one per frame), got none"),
        ("canny", {"mode": "canny", "video_length": 5}, MAPS, "video_length=5 but there are 4 canny control maps"),
        ("canny", {"mode": "canny", "video_length": None}, MAPS[:0], "canny control maps: got no frames"),
        (
            "canny",
            {"mode": "canny", "video_length": None},
            np.zeros((4, 64, 32, 3), np.uint8),
            "canny control maps from frame 0: expected uint8 frames of shape (k, 64, 64, 3)",
        ),
        (
            "pix2pix",
            {"mode": "pix2pix", "video_length": None},
            MAPS.astype(np.float32),
            "source frames from frame 0: expected uint8 frames",
        ),
        ("sd", {"mode": "text2video", "num_inference_steps": 5}, None, "t1=5 must be at most"),
    ],
)
def test_generate_rejects_before_model_work(pipes, pipe_name, fields, conditioning, message):
    pipe = pipes[pipe_name]
    counter = _UNetCalls(pipe.unet)
    try:
        with pytest.raises(InputError) as caught:
            generate(pipe, GenerationRequest(**{**BASE, **fields}), conditioning)
    finally:
        counter.handle.remove()
    assert message in str(caught.value)
    assert counter.calls == 0


def test_bad_frame_deep_in_conditioning_is_found_before_model_work(pipes):
    class Frames:  # a lazy store whose last frames have the wrong size
        def __len__(self):
            return 20

        def __getitem__(self, part):
            start, stop, _ = part.indices(20)
            return np.zeros((stop - start, 64, 64 if start < 16 else 48, 3), np.uint8)

    counter = _UNetCalls(pipes["canny"].unet)
    try:
        with pytest.raises(InputError, match="from frame 16: expected"):
            generate(pipes["canny"], GenerationRequest(**{**BASE, "mode": "canny", "video_length": None}), Frames())
    finally:
        counter.handle.remove()
    assert counter.calls == 0
