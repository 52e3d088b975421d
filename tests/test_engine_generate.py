"""generate() behaviour: one UNet evaluation per frame per step, processors restored, sinks,
progress, resumable checkpoints, stateful and stochastic schedulers. Budget: ~40 s on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2vz_core.engine import GenerationRequest, decode_spans, generate
from t2vz_core.models import Runtime, load_pipeline

CPU = Runtime(device="cpu", dtype="fp32")
SIZE = 32  # px: 16x16 latents with the tiny VAE (factor 2); a UNet call costs in proportion to their area


class RowCounter:
    """Counts latent rows passed to a model's forward (UNet or ControlNet)."""

    def __init__(self, model):
        self.rows = 0
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.rows += sample.shape[0]
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._handle.remove()


class Stop(Exception):
    pass


def stop_after(units: int):
    def on_progress(done, total, message):
        if done >= units:
            raise Stop(message)

    return on_progress


@pytest.fixture(scope="module")
def sd(tiny_models):
    return load_pipeline("sd", tiny_models / "sd", runtime=CPU)


@pytest.fixture(scope="module")
def canny(tiny_models):
    return load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=CPU)


def maps(count: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((rng.random((count, size, size, 3)) > 0.8) * 255).astype(np.uint8)


def canny_request(**fields) -> GenerationRequest:
    base = dict(mode="canny", prompt="a man dancing", num_inference_steps=3, seed=1, width=SIZE, height=SIZE)
    return GenerationRequest(**{**base, **fields})


def t2v_request(**fields) -> GenerationRequest:
    base = dict(
        mode="text2video",
        prompt="a dog",
        num_inference_steps=6,
        t0=2,
        t1=4,
        seed=2,
        width=SIZE,
        height=SIZE,
        video_length=5,
    )
    return GenerationRequest(**{**base, **fields})


def with_scheduler(pipe, name: str):
    """The same modules under another scheduler (a new pipeline object; the cached one is untouched)."""
    import diffusers

    extra = {"skip_prk_steps": True} if name == "PNDMScheduler" else {}
    scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **extra)
    return type(pipe)(**{**pipe.components, "scheduler": scheduler})


# ----------------------------------------------------------------------- one evaluation per frame


def test_controlnet_mode_evaluates_each_frame_once_per_step(canny):
    n, steps = 6, 3
    with RowCounter(canny.unet) as unet, RowCounter(canny.controlnet) as controlnet:
        generate(canny, canny_request(num_inference_steps=steps, chunk_size=3), maps(n))
    assert unet.rows == steps * n * 2  # x2: CFG branches; the anchor is never re-run per chunk
    assert controlnet.rows == unet.rows
    assert unet.calls == steps * 3  # chunks: frames [0, 1, 2], [3, 4], [5]


def test_text2video_anchor_is_computed_once_per_video(sd):
    # steps 6, t0 2, t1 4: the anchor alone runs 3 steps (T -> t0); all rows run the last 5 (t1 -> 0).
    with RowCounter(sd.unet) as unet:
        generate(sd, t2v_request(chunk_size=3))
    assert unet.rows == 2 * (3 + 5 * (5 + 1))  # 5 frames + the anchor row, each once per step
    # The frame_ids recipe re-runs the anchor in each of its 3 chunks: 2 * (3 * 3 + 5 * (3 + 3 + 2)).
    with RowCounter(sd.unet) as unet:
        generate(sd, t2v_request(chunk_size=None))
    assert unet.rows == 2 * (3 + 5 * 5)


# ------------------------------------------------------------------------- attention processors


def _processor_ids(model):
    return {name: id(p) for name, p in model.attn_processors.items()}


def test_processors_restored_after_success_and_error(canny):
    before = (_processor_ids(canny.unet), _processor_ids(canny.controlnet))
    generate(canny, canny_request(num_inference_steps=1), maps(2))
    assert (_processor_ids(canny.unet), _processor_ids(canny.controlnet)) == before
    with pytest.raises(Stop):
        generate(canny, canny_request(num_inference_steps=2, chunk_size=2), maps(3), on_progress=stop_after(2))
    assert (_processor_ids(canny.unet), _processor_ids(canny.controlnet)) == before


def test_without_guidance_one_branch_group(canny):
    """guidance_scale 1: one branch, grouped as diffusers' processor with batch_size=1 groups."""
    import warnings

    import PIL.Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor2_0,
        )
    n, frames_in = 4, maps(4, seed=5)
    latents = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=torch.Generator("cpu").manual_seed(1))
    latents = latents.repeat(n, 1, 1, 1)
    saved = canny.unet.attn_processors, canny.controlnet.attn_processors
    try:
        canny.unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=1))
        canny.controlnet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=1))
        expected = canny(
            prompt=["a man dancing"] * n,
            image=[PIL.Image.fromarray(m) for m in frames_in],
            latents=latents,
            num_inference_steps=3,
            guidance_scale=1.0,
            output_type="np",
        ).images
    finally:
        canny.unet.set_attn_processor(dict(saved[0]))
        canny.controlnet.set_attn_processor(dict(saved[1]))
    with RowCounter(canny.unet) as unet:
        got = generate(canny, canny_request(guidance_scale=1.0, chunk_size=3), frames_in, output_dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-3
    assert unet.rows == 3 * n  # one branch


def test_guess_mode_controlnet_groups_its_single_branch(canny):
    """A ControlNet with global_pool_conditions runs on the text branch only (the pipelines'
    guess mode): one branch group in the ControlNet, two in the UNet."""
    import copy
    import warnings

    import PIL.Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor2_0,
        )
    controlnet = copy.deepcopy(canny.controlnet)
    controlnet.register_to_config(global_pool_conditions=True)
    pipe = type(canny)(**{**canny.components, "controlnet": controlnet})
    pipe.set_progress_bar_config(disable=True)
    n, frames_in = 4, maps(4, seed=6)
    latents = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=torch.Generator("cpu").manual_seed(1))
    latents = latents.repeat(n, 1, 1, 1)
    saved = pipe.unet.attn_processors, controlnet.attn_processors
    try:
        pipe.unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
        controlnet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=1))
        expected = pipe(
            prompt=["a man dancing"] * n,
            image=[PIL.Image.fromarray(m) for m in frames_in],
            latents=latents,
            num_inference_steps=3,
            output_type="np",
        ).images
    finally:
        pipe.unet.set_attn_processor(dict(saved[0]))
        controlnet.set_attn_processor(dict(saved[1]))
    got = generate(pipe, canny_request(chunk_size=3), frames_in, output_dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-3


# -------------------------------------------------------------------------- sinks and progress


class Sink:
    def __init__(self, done_spans=()):
        self.writes: dict[int, np.ndarray] = {}
        self.done_spans = set(done_spans)

    def write(self, start, frames):
        assert frames.dtype == np.uint8
        self.writes[start] = frames.copy()

    def done(self, start, stop):
        return (start, stop) in self.done_spans


def test_sink_gets_chunks_and_skips_done_ones(canny):
    request, frames_in = canny_request(num_inference_steps=2, chunk_size=2), maps(5)
    progress = []
    expected = generate(canny, request, frames_in, on_progress=lambda *a: progress.append(a))
    spans = decode_spans(5, 2)
    assert spans == [(0, 2), (2, 4), (4, 5)]
    # Progress: once per UNet chunk (2 steps x 4 chunks) and per decoded chunk, in order.
    assert [p[0] for p in progress] == list(range(1, 8 + len(spans) + 1))
    assert {p[1] for p in progress} == {8 + len(spans)}

    sink = Sink()
    assert generate(canny, request, frames_in, output=sink) is None
    assert sorted(sink.writes) == [0, 2, 4]
    assert np.array_equal(np.concatenate([sink.writes[s] for s in (0, 2, 4)]), expected)

    partial = Sink(done_spans=[(0, 2)])
    generate(canny, request, frames_in, output=partial)
    assert sorted(partial.writes) == [2, 4]

    finished = Sink(done_spans=spans)
    with RowCounter(canny.unet) as unet:
        assert generate(canny, request, frames_in, output=finished) is None
    assert unet.calls == 0 and not finished.writes


# ------------------------------------------------------------------------------- checkpoints


def test_text2video_resumes_in_both_phases(sd, tmp_path):
    request = t2v_request(chunk_size=3)
    expected = generate(sd, request, output_dtype=np.float32)
    # units: anchor steps 1-3, then 3 chunks per step; stop inside each phase.
    for stop_at in (2, 8):
        path = tmp_path / f"t2v-{stop_at}.pt"
        with pytest.raises(Stop):
            generate(sd, request, checkpoint_path=path, on_progress=stop_after(stop_at))
        assert path.exists()
        with RowCounter(sd.unet) as unet:
            resumed = generate(sd, request, checkpoint_path=path, output_dtype=np.float32)
        assert np.array_equal(resumed, expected)
        assert 0 < unet.rows < 2 * (3 + 5 * 6)  # only the remaining work ran
        assert not path.exists()  # removed once the video is complete


def test_frames_mode_resumes_multistep_scheduler_state(canny, tmp_path):
    pipe = with_scheduler(canny, "DPMSolverMultistepScheduler")
    request, frames_in = canny_request(num_inference_steps=5, chunk_size=4), maps(6)
    expected = generate(pipe, request, frames_in, output_dtype=np.float32)
    path = tmp_path / "canny.pt"
    with pytest.raises(Stop):
        generate(pipe, request, frames_in, checkpoint_path=path, on_progress=stop_after(7))  # mid step 4
    with RowCounter(pipe.unet) as unet:
        resumed = generate(pipe, request, frames_in, checkpoint_path=path, output_dtype=np.float32)
    assert np.array_equal(resumed, expected)
    assert unet.calls == 2 * 2  # steps 4 and 5, two chunks each


def test_stale_or_corrupt_checkpoint_is_ignored(canny, tmp_path):
    request, frames_in = canny_request(chunk_size=2), maps(3)
    path = tmp_path / "job.pt"
    with pytest.raises(Stop):
        generate(canny, request, frames_in, checkpoint_path=path, on_progress=stop_after(4))
    other = canny_request(chunk_size=2, seed=99)
    fresh = generate(canny, other, frames_in)
    with RowCounter(canny.unet) as unet:
        assert np.array_equal(generate(canny, other, frames_in, checkpoint_path=path), fresh)
    assert unet.calls == 3 * 2  # nothing reused from the other request's checkpoint
    path.write_bytes(b"not a checkpoint")
    assert np.array_equal(generate(canny, other, frames_in, checkpoint_path=path), fresh)
    # Different conditioning bytes are a different job too.
    with pytest.raises(Stop):
        generate(canny, other, frames_in, checkpoint_path=path, on_progress=stop_after(4))
    with RowCounter(canny.unet) as unet:
        generate(canny, other, maps(3, seed=1), checkpoint_path=path)
    assert unet.calls == 3 * 2


# -------------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize(
    "scheduler", ["DPMSolverMultistepScheduler", "PNDMScheduler", "EulerAncestralDiscreteScheduler"]
)
def test_chunking_invariant_for_stateful_and_stochastic_schedulers(canny, scheduler):
    """Per-chunk scheduler copies (multistep history, step counters) and per-row step noise."""
    pipe = with_scheduler(canny, scheduler)
    request, frames_in = canny_request(num_inference_steps=3), maps(4, seed=3)
    full = generate(pipe, request, frames_in, output_dtype=np.float32)
    chunked = generate(pipe, canny_request(num_inference_steps=3, chunk_size=2), frames_in, output_dtype=np.float32)
    assert np.abs(full - chunked).max() <= 1e-4


def test_pipeline_scheduler_left_untouched(canny):
    before = canny.scheduler.num_inference_steps
    generate(canny, canny_request(num_inference_steps=2), maps(2))
    assert canny.scheduler.num_inference_steps == before


# ------------------------------------------------------------------------------------ dtypes


def test_bf16_pipelines_keep_latents_in_unet_dtype_and_resume(tiny_models, canny, sd, tmp_path):
    """Latents follow the UNet's dtype, noise is drawn in float32 on the CPU: bf16 stays close to fp32."""
    bf16 = Runtime(device="cpu", dtype="bf16")
    size = dict(width=16, height=16)  # 8x8 latents: CPU convolutions in bf16 are ~10x slower than in fp32
    cases = [
        (sd, load_pipeline("sd", tiny_models / "sd", runtime=bf16), t2v_request(chunk_size=3, **size), None),
        (
            canny,
            load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=bf16),
            canny_request(chunk_size=3, **size),
            maps(4, size=16),
        ),
    ]
    for fp32_pipe, pipe, request, frames_in in cases:
        dtypes = set()
        handle = pipe.unet.register_forward_pre_hook(
            lambda _m, args, kwargs, seen=dtypes: seen.add((args[0] if args else kwargs["sample"]).dtype),
            with_kwargs=True,
        )
        try:
            got = generate(pipe, request, frames_in, output_dtype=np.float32)
        finally:
            handle.remove()
        assert dtypes == {torch.bfloat16}
        reference = generate(fp32_pipe, request, frames_in, output_dtype=np.float32)
        assert np.abs(got - reference).mean() < 0.02
    path = tmp_path / "bf16.pt"
    with pytest.raises(Stop):
        generate(pipe, request, frames_in, checkpoint_path=path, on_progress=stop_after(3))
    assert np.array_equal(generate(pipe, request, frames_in, checkpoint_path=path, output_dtype=np.float32), got)
