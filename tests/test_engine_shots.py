"""Each shot is generated exactly as its own video: frames [s, e) of a split row equal the same
row run on only frames [s, e). Real clip (two photographs panning, a cut, PyAV H.264 decoded by
t2vz), real canny maps, tiny canny and pix2pix pipelines. Budget: ~40 s on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shot_clips import two_shot_frames, write_clip

from t2vz_core.control import control_maps_to_store
from t2vz_core.engine import GenerationRequest, generate
from t2vz_core.engine.vae_decode import to_uint8
from t2vz_core.errors import InputError
from t2vz_core.media import DecodeSpec, FrameStore, decode_to_store, plan_decode, probe
from t2vz_core.models import Runtime, load_pipeline
from t2vz_core.shots import detect_shots

CPU = Runtime(device="cpu", dtype="fp32")
STEPS, CHUNK = 3, 3
SIZE = 32  # px (16x16 latents: the tiny models cost in proportion to their area)
SHOTS = [(0, 6), (6, 11)]


class Stop(Exception):
    pass


class RowCounter:
    """Latent rows passed through a model's forward while active."""

    def __init__(self, model):
        self.rows = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        self.rows += (args[0] if args else kwargs["sample"]).shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._handle.remove()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(decoded frames, canny maps) of a 6 + 5 frame two-shot clip, as FrameStores at SIZE px."""
    folder = tmp_path_factory.mktemp("two-shot")
    path = write_clip(folder / "clip.mp4", two_shot_frames(6, 5, size=96), fps=24)
    frames = decode_to_store(path, plan_decode(probe(path), DecodeSpec(resolution=SIZE)), folder / "frames")
    maps = control_maps_to_store("canny", frames, folder / "canny")
    return frames, maps


@pytest.fixture(scope="module")
def canny(tiny_models):
    return load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=CPU)


@pytest.fixture(scope="module")
def pix2pix(tiny_models):
    return load_pipeline("pix2pix", tiny_models / "pix2pix", runtime=CPU)


def request(mode: str, **fields) -> GenerationRequest:
    prompt = "make it winter" if mode == "pix2pix" else "an oil painting"
    base = dict(mode=mode, prompt=prompt, num_inference_steps=STEPS, seed=7, width=SIZE, height=SIZE, chunk_size=CHUNK)
    return GenerationRequest(**{**base, **fields})


@pytest.fixture(scope="module")
def canny_split(canny, clip):
    """The canny row split into SHOTS (float32 frames) and the progress messages of that run."""
    messages = []
    frames = generate(
        canny,
        request("canny"),
        clip[1],
        output_dtype=np.float32,
        shots=SHOTS,
        on_progress=lambda done, total, message: messages.append((done, total, message)),
    )
    return frames, messages


def test_the_clip_has_two_shots(clip):
    assert detect_shots(clip[0], min_shot_frames=3) == SHOTS


@pytest.mark.parametrize("mode", ["canny", "pix2pix"])
def test_each_shot_equals_the_row_run_on_that_shot_alone(mode, canny, pix2pix, clip, canny_split):
    pipe, conditioning = (canny, clip[1]) if mode == "canny" else (pix2pix, clip[0])
    split = (
        canny_split[0]
        if mode == "canny"
        else generate(pipe, request(mode), conditioning, output_dtype=np.float32, shots=SHOTS)
    )
    assert split.shape == (11, SIZE, SIZE, 3)
    for start, stop in SHOTS:
        alone = generate(pipe, request(mode), conditioning[start:stop], output_dtype=np.float32)
        assert np.abs(split[start:stop] - alone).max() <= 1e-5, (mode, start, stop)
    # Not vacuous: unsplit, the second shot attends to the first shot's anchor and differs.
    whole = generate(pipe, request(mode), conditioning, output_dtype=np.float32)
    assert np.abs(whole[:6] - split[:6]).max() <= 1e-5  # shot 1 is the video's start either way
    assert np.abs(whole[6:] - split[6:]).max() > 1e-3


def test_one_shot_is_the_unsplit_video_bit_for_bit(canny, clip):
    maps = clip[1][:]
    unsplit = generate(canny, request("canny"), maps, output_dtype=np.float32)
    assert np.array_equal(generate(canny, request("canny"), maps, output_dtype=np.float32, shots=[(0, 11)]), unsplit)


def test_progress_counts_shots(canny_split):
    messages = canny_split[1]
    texts = [message for _, _, message in messages]
    assert "shot 1/2: step 1/3, chunk 1/3" in texts  # shot 1: chunks [0-2], [3-4], [5]
    assert "shot 2/2: step 3/3, chunk 2/2" in texts  # shot 2: chunks [6-8], [9-10]
    assert "shot 2/2, decode: frames 9-10" in texts  # decoded spans count from the shot's start
    done, total, _ = messages[-1]
    assert done == total == STEPS * (3 + 2) + 2 + 2


def test_a_job_killed_in_shot_2_resumes_in_shot_2(canny, clip, canny_split, tmp_path):
    out, checkpoint = tmp_path / "out", tmp_path / "checkpoint"

    def stop_in_shot_2_step_2(done, total, message):
        if message.startswith("shot 2/2: step 2/"):
            raise Stop(message)

    with pytest.raises(Stop), FrameStore.writer(out, fps=24) as writer:
        generate(
            canny,
            request("canny"),
            clip[1],
            output=writer,
            checkpoint_path=checkpoint,
            shots=SHOTS,
            on_progress=stop_in_shot_2_step_2,
        )
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["phase"], saved["step"], saved["frame_of_row"]) == ("shot 2/2", 1, list(range(6, 11)))

    with RowCounter(canny.unet) as unet, FrameStore.writer(out, fps=24) as writer:
        assert writer.done(0, 6) and not writer.done(6, 11)  # shot 1 was written before the crash
        generate(canny, request("canny"), clip[1], output=writer, checkpoint_path=checkpoint, shots=SHOTS)
    assert unet.rows == (STEPS - 1) * 5 * 2  # only shot 2's last two steps ran (x2: CFG branches)
    assert not checkpoint.exists()
    assert np.array_equal(FrameStore(out)[:], to_uint8(canny_split[0]))  # as if never interrupted


def test_bad_shots_are_refused_before_model_work(canny):
    maps = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(InputError, match="cover frames 0 to 2 but there are 4"):
        generate(canny, request("canny"), maps, shots=[(0, 3)])
    with pytest.raises(InputError, match="text2video makes one shot"):
        generate(canny, request("text2video", video_length=4, t0=0, t1=1), shots=[(0, 4)])
