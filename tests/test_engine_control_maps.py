"""Control maps stay uint8 in RAM and are converted per chunk, bitwise as the ControlNet
pipelines preprocess them. Budget: ~10 s on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import importlib
from t2vz_core.engine import GenerationRequest, generate
from t2vz_core.engine.guided import ControlMaps, prepare_control
from t2vz_core.models import Runtime, load_pipeline

SIZE = 64
ENGINE_GENERATE = importlib.import_module("t2vz_core.engine.generate")  # the package re-exports a function of that name
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def canny(tiny_models):
    return load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=Runtime("cpu", "fp32"))


class Sliceable:
    """A conditioning object that is not an array (like a FrameStore): len() and slicing only."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.frames[index].copy()


def every_value_maps(count: int) -> np.ndarray:
    """Maps holding all 256 byte values in every channel, shuffled differently per frame."""
    rng = np.random.default_rng(0)
    flat = np.resize(np.arange(256, dtype=np.uint8), count * SIZE * SIZE * 3)
    return rng.permutation(flat).reshape(count, SIZE, SIZE, 3)


def request(**fields) -> GenerationRequest:
    base = dict(mode="canny", prompt="a man dancing", num_inference_steps=2, seed=3, width=SIZE, height=SIZE)
    return GenerationRequest(**{**base, **fields})


def pipeline_preprocessed(pipe, frames: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """What the ControlNet pipeline makes of these frames (the engine's former resident tensor)."""
    return pipe.prepare_image(
        image=frames.astype(np.float32) / 255.0, width=SIZE, height=SIZE, batch_size=len(frames),
        num_images_per_prompt=1, device=torch.device("cpu"), dtype=dtype, do_classifier_free_guidance=False,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_bitwise_the_pipeline_preprocessing(canny, dtype, device):
    maps = every_value_maps(5)
    picked = [3, 0, 4]
    expected = pipeline_preprocessed(canny, maps[picked], dtype)
    control = ControlMaps(maps, dtype)
    device = torch.device(device)
    converted = [control.rows(picked, device), control._convert_on(maps[picked], device)]  # both paths
    for got in converted:
        assert got.dtype == dtype and got.shape == (3, 3, SIZE, SIZE) and got.is_contiguous()
        assert torch.equal(got.cpu(), expected)


def test_resident_maps_are_uint8_sized(canny):
    maps = every_value_maps(6)
    copied = prepare_control(canny, request(), Sliceable(maps), len(maps))
    assert copied.maps.dtype == np.uint8
    assert copied.nbytes == 6 * SIZE * SIZE * 3  # was 6 * 3 * SIZE * SIZE * 4 as float32
    assert np.array_equal(copied.maps, maps)
    shared = prepare_control(canny, request(), maps, len(maps))
    assert np.shares_memory(shared.maps, maps)  # an in-memory array is not copied again


class FloatControl:
    """The former path: every frame preprocessed up front into one float tensor."""

    def __init__(self, pipe, maps: np.ndarray):
        self.tensor = pipeline_preprocessed(pipe, maps, pipe.controlnet.dtype)

    def rows(self, frames, device):
        return self.tensor[list(frames)].to(device)


def test_generate_output_unchanged_from_float_path(canny, monkeypatch):
    maps = every_value_maps(4)
    for conditioning in (maps, Sliceable(maps)):
        got = generate(canny, request(chunk_size=2), conditioning, output_dtype=np.float32)
        with monkeypatch.context() as patch:
            patch.setattr(ENGINE_GENERATE, "prepare_control", lambda pipe, _r, _c, _n: FloatControl(pipe, maps))
            before = generate(canny, request(chunk_size=2), conditioning, output_dtype=np.float32)
        assert np.array_equal(got, before)
