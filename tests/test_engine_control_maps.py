"""Control maps are read per UNet chunk (never all held) and converted bitwise as the
ControlNet pipelines preprocess them. Budget: ~10 s on 2 cores."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from t2vz_core.engine import GenerationRequest, generate
from t2vz_core.engine.guided import ControlMaps, prepare_control
from t2vz_core.models import Runtime, load_pipeline

SIZE = 32  # px: 16x16 latents keep the tiny models fast
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
        image=frames.astype(np.float32) / 255.0,
        width=SIZE,
        height=SIZE,
        batch_size=len(frames),
        num_images_per_prompt=1,
        device=torch.device("cpu"),
        dtype=dtype,
        do_classifier_free_guidance=False,
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


class RecordingSliceable(Sliceable):
    """Records every slice read from it, as (start, stop)."""

    def __init__(self, frames: np.ndarray):
        super().__init__(frames)
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(len(self.frames))
        self.reads.append((start, stop))
        return super().__getitem__(index)


def test_maps_are_read_per_chunk_not_held(canny):
    """Only the UNet chunk being denoised has its maps in memory: never the whole video."""
    maps = every_value_maps(7)
    source = RecordingSliceable(maps)
    steps, chunk = 2, 3
    control = prepare_control(canny, source)
    assert not hasattr(control, "maps") and control.conditioning is source  # nothing copied up front
    assert source.reads == []
    got = generate(canny, request(num_inference_steps=steps, chunk_size=chunk), source, output_dtype=np.float32)
    validation, denoising = source.reads[:1], source.reads[1:]
    assert validation == [(0, 7)]  # check_conditioning: one pass for the fingerprint
    # chunks [0, 1, 2], [3, 4], [5, 6] (anchor K/V replayed): each frame read once per step, plus
    # at most one read-ahead of the next step's first chunk after the last step
    per_step = [(0, 3), (3, 5), (5, 7)]
    assert denoising[: steps * 3] == per_step * steps and denoising[steps * 3 :] in ([], [(0, 3)])
    assert max(stop - start for start, stop in denoising) <= chunk
    expected = generate(canny, request(num_inference_steps=steps, chunk_size=chunk), maps, output_dtype=np.float32)
    assert np.array_equal(got, expected)


def test_a_video_of_one_chunk_reads_its_maps_once(canny):
    """One chunk per step (a short shot, or no chunk_size): the maps read at the first step serve
    every later step, not a read-ahead of the same frames at each step."""
    maps = every_value_maps(3)
    source = RecordingSliceable(maps)
    got = generate(canny, request(num_inference_steps=3, chunk_size=4), source, output_dtype=np.float32)
    assert source.reads == [(0, 3), (0, 3)]  # check_conditioning's pass, then the first step's read
    assert np.array_equal(
        got, generate(canny, request(num_inference_steps=3, chunk_size=4), maps, output_dtype=np.float32)
    )


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
            patch.setattr(ENGINE_GENERATE, "prepare_control", lambda pipe, _c: FloatControl(pipe, maps))
            before = generate(canny, request(chunk_size=2), conditioning, output_dtype=np.float32)
        assert np.array_equal(got, before)
