"""Fast paths (issue 14): Runtime options, t2vz_core.engine.fast_paths on real tiny pipelines.

What a CPU can check: the options validate; channels_last and the SDPA restriction are applied
(and undone), the pipeline's frames stay equal; torch.compile wraps the UNet and ControlNet and a
second call of the same shape compiles nothing (the "eager" backend traces and guards like inductor
without generating code); ModelCache applies them and keys on them. Speed is bench/gpu.py's job.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2vz_core import models
from t2vz_core.engine import GenerationRequest, fast_paths, generate
from t2vz_core.errors import InputError
from t2vz_core.runtime import Runtime

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_cache():
    models.reset_cache(max_loaded=models.DEFAULT_MAX_LOADED)
    yield
    models.reset_cache(max_loaded=models.DEFAULT_MAX_LOADED)


@pytest.fixture
def canny_pipe(tiny_models):
    return models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", Runtime(device="cpu"))


def _canny(pipe) -> np.ndarray:
    maps = np.zeros((3, 32, 32, 3), np.uint8)  # 16x16 latents: the tiny models stay fast
    maps[:, 10:20, 5:25] = 255
    request = GenerationRequest(
        mode="canny", prompt="a boat", num_inference_steps=2, width=32, height=32, chunk_size=2, seed=3
    )
    return generate(pipe, request, maps, output_dtype=np.float32)


def test_runtime_fast_path_options_validate():
    runtime = Runtime()
    assert (runtime.compile, runtime.channels_last, runtime.tf32, runtime.attention_backend) == (
        False,
        False,
        True,
        "auto",
    )
    assert Runtime(attention_backend=" Flash ").attention_backend == "flash"
    with pytest.raises(InputError, match="attention_backend 'fast'"):
        Runtime(attention_backend="fast")
    with pytest.raises(InputError, match="compile"):
        Runtime(compile="maybe")
    # TF32 applies only to CUDA GPUs of compute capability >= 8: a no-op that says so on the CPU.
    assert fast_paths.set_tf32(CPU, True) is None


def test_channels_last_and_attention_backend_keep_frames_and_undo(canny_pipe):
    before = _canny(canny_pipe)
    applied = fast_paths.apply(canny_pipe, Runtime(device="cpu", channels_last=True, attention_backend="math"), CPU)
    assert applied["channels_last"] == ["unet", "controlnet", "vae"]
    for module in (canny_pipe.unet, canny_pipe.controlnet, canny_pipe.vae):
        conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    with torch.profiler.profile() as prof:
        after = _canny(canny_pipe)
    ops = {event.name for event in prof.events()}
    # The UNet/ControlNet attention (cross-frame included) ran the math kernel; unrestricted code
    # (text encoder, VAE) still used the CPU flash kernel.
    assert "aten::_scaled_dot_product_attention_math" in ops
    np.testing.assert_allclose(after, before, atol=1e-4)

    fast_paths.undo(canny_pipe)
    assert "forward" not in canny_pipe.unet.__dict__
    conv = canny_pipe.unet.conv_in
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.profiler.profile() as prof:
        _canny(canny_pipe)
    assert "aten::_scaled_dot_product_attention_math" not in {event.name for event in prof.events()}


def test_compile_wraps_models_without_recompiling_a_known_shape(canny_pipe):
    from torch._dynamo.utils import counters

    unet = canny_pipe.unet
    sample, embeds = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 32)
    t10, t20 = torch.tensor(10), torch.tensor(20)  # timesteps come as tensors (a Python int is a constant)
    with torch.no_grad():
        eager = unet(sample, t10, encoder_hidden_states=embeds).sample
    torch._dynamo.reset()
    applied = fast_paths.apply(canny_pipe, Runtime(device="cpu", compile=True), CPU, compile_backend="eager")
    assert applied["compile"] == ["unet", "controlnet"]
    assert unet._compiled_call_impl is not None and canny_pipe.controlnet._compiled_call_impl is not None
    try:
        with torch.no_grad():
            first = unet(sample, t10, encoder_hidden_states=embeds).sample
            graphs = counters["stats"]["unique_graphs"]
            second = unet(sample + 1, t20, encoder_hidden_states=embeds).sample
        assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs  # same shape: no recompile
        torch.testing.assert_close(first, eager, atol=1e-5, rtol=1e-5)
        assert not torch.equal(first, second)
        assert torch._dynamo.config.recompile_limit >= fast_paths.RECOMPILE_LIMIT
        # Applying again (a second request for the cached pipeline) leaves the compiled module alone.
        compiled = unet._compiled_call_impl
        fast_paths.apply(canny_pipe, Runtime(device="cpu", compile=True), CPU, compile_backend="eager")
        assert unet._compiled_call_impl is compiled
    finally:
        fast_paths.undo(canny_pipe)
        torch._dynamo.reset()
    assert unet._compiled_call_impl is None


def test_model_cache_applies_fast_paths_and_keys_on_them(tiny_models):
    plain = models.load_pipeline("sd", tiny_models / "sd", runtime=Runtime(device="cpu"))
    fast = models.load_pipeline("sd", tiny_models / "sd", runtime=Runtime(device="cpu", channels_last=True))
    assert fast is not plain and models.cache_stats()["pipeline_loads"] == 2
    assert fast._t2vz_fast_paths["channels_last"] == ["unet", "vae"]
    assert plain._t2vz_fast_paths["channels_last"] == []
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    again = models.load_pipeline("sd", tiny_models / "sd", runtime=Runtime(device="cpu", channels_last=True))
    assert again is fast and models.cache_stats()["hits"] == 1


def test_fast_path_flags_reach_the_runtime_of_a_run():
    from flows.cli import build_parser, run_options
    from t2vz_core.options import RunOptions

    args = build_parser().parse_args(
        ["run", "m.csv", "-o", "out", "--compile", "--channels-last", "--no-tf32", "--attention-backend", "efficient"]
    )
    runtime = run_options(args).runtime()
    assert (runtime.compile, runtime.channels_last, runtime.tf32, runtime.attention_backend) == (
        True,
        True,
        False,
        "efficient",
    )
    plain = run_options(build_parser().parse_args(["run", "m.csv", "-o", "out"]))
    assert plain == RunOptions() and plain.runtime() == Runtime()
    assert fast_paths.cache_key(runtime) != fast_paths.cache_key(plain.runtime())
