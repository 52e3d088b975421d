"""Models users bring, on tiny weights made here: LoRA (diffusers and kohya layouts), single-file
checkpoints, replacement VAEs and schedulers, through the model cache and the engine.

Oracles: diffusers' own StableDiffusionControlNetPipeline with the same LoRA loaded by diffusers
and its CrossFrameAttnProcessor2_0 (as in test_engine_oracles); a single file against the diffusers
folder it was written from. Budget: ~60 s on 2 busy cores.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from own_models_support import (
    kohya_copy,
    make_lora,
    make_sdxl_lora,
    write_distinct_sdxl,
    write_original_checkpoint,
    write_original_controlnet,
    write_original_sdxl_checkpoint,
)
from test_engine_oracles import ORACLE_TOL, SIZE, frames, maxdiff, pil, reference_cross_frame, shared_latents

from t2vz_core import models
from t2vz_core.engine import GenerationRequest, generate
from t2vz_core.errors import InputError
from t2vz_core.model_sources import SCHEDULERS, TEXT2VIDEO_SCHEDULERS, ModelSources, build_scheduler
from t2vz_core.models import Runtime, load_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:Default grid_sample:UserWarning")

CPU = Runtime(device="cpu", dtype="fp32")
N_FRAMES = 3
CANNY = dict(
    mode="canny",
    prompt="a man dancing",
    negative_prompt="blurry",
    num_inference_steps=2,
    guidance_scale=7.5,
    controlnet_conditioning_scale=0.8,
    seed=5,
)
SAME = 1e-6  # two routes to the same weights: float noise at most


@pytest.fixture(autouse=True)
def fresh_cache():
    models.reset_cache(max_loaded=models.DEFAULT_MAX_LOADED)
    yield
    models.reset_cache(max_loaded=models.DEFAULT_MAX_LOADED)


@pytest.fixture(scope="module")
def own(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """LoRA folder (diffusers layout) + its kohya copy, and single-file copies of the tiny models."""
    root = tmp_path_factory.mktemp("own-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = make_lora(tiny_models / "sd", root / "lora", seed=0)
    return {
        "lora": lora.parent,
        "kohya": kohya_copy(lora, root / "kohya" / "style.safetensors"),
        "sd_file": write_original_checkpoint(tiny_models / "sd", root / "files" / "dreambooth.safetensors"),
        "pix2pix_file": write_original_checkpoint(tiny_models / "pix2pix", root / "files" / "ip2p.safetensors"),
        "canny_file": write_original_controlnet(tiny_models / "controlnet-canny", root / "files" / "canny.safetensors"),
    }


def canny(pipe, maps, scheduler=None, **fields) -> np.ndarray:
    side = maps.shape[1]
    request = GenerationRequest(width=side, height=side, **{**CANNY, **fields})
    return generate(pipe, request, maps, output_dtype=np.float32, scheduler=scheduler)


def cached_canny(tiny_models, maps, sources=ModelSources(), model=None, controlnet=None, **fields):
    pipe = load_pipeline(
        "sd", model or tiny_models / "sd", controlnet or tiny_models / "controlnet-canny", CPU, sources=sources
    )
    return canny(pipe, maps, **fields)


# ------------------------------------------------------------------------------------------ LoRA


def test_lora_matches_diffusers_controlnet_pipeline_with_cross_frame_attention(tiny_models, own):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    maps, scale = frames(seed=1, count=N_FRAMES, sparse=True), 0.7
    plain = cached_canny(tiny_models, maps)
    ours = cached_canny(tiny_models, maps, ModelSources(loras=((str(own["lora"]), scale),)))

    reference = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_models / "sd",
        controlnet=ControlNetModel.from_pretrained(tiny_models / "controlnet-canny"),
        safety_checker=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(own["lora"], adapter_name="style")
    reference.set_adapters(["style"], adapter_weights=[scale])
    with reference_cross_frame(2, reference.unet, reference.controlnet):
        expected = reference(
            prompt=[CANNY["prompt"]] * N_FRAMES,
            negative_prompt=[CANNY["negative_prompt"]] * N_FRAMES,
            image=pil(maps),
            latents=shared_latents(CANNY["seed"]).repeat(N_FRAMES, 1, 1, 1),
            num_inference_steps=CANNY["num_inference_steps"],
            guidance_scale=CANNY["guidance_scale"],
            controlnet_conditioning_scale=CANNY["controlnet_conditioning_scale"],
            output_type="np",
        ).images
    assert maxdiff(ours, expected) <= ORACLE_TOL
    assert maxdiff(ours, plain) > 0.02  # the LoRA changes the frames (UNet and text encoder layers)


def test_kohya_copy_scales_and_stacking(tiny_models, own):
    maps = frames(seed=2, count=2, sparse=True)
    diffusers_layout = cached_canny(tiny_models, maps, ModelSources(loras=((str(own["lora"]), 0.7),)))
    kohya_layout = cached_canny(tiny_models, maps, ModelSources(loras=((str(own["kohya"]), 0.7),)))
    assert maxdiff(kohya_layout, diffusers_layout) <= SAME
    # The two files hold the same deltas: 0.3 + 0.4 of them stacked is 0.7 of one.
    stacked = cached_canny(tiny_models, maps, ModelSources(loras=((str(own["lora"]), 0.3), (str(own["kohya"]), 0.4))))
    assert maxdiff(stacked, diffusers_layout) <= 1e-4
    weaker = cached_canny(tiny_models, maps, ModelSources(loras=((str(own["lora"]), 0.2),)))
    assert maxdiff(weaker, diffusers_layout) > 0.01


def test_lora_leaves_no_trace_and_is_reused_by_rows_with_the_same_set(tiny_models, own):
    maps = frames(seed=3, count=2, sparse=True)
    before = cached_canny(tiny_models, maps)
    styled = ModelSources(loras=((str(own["lora"]), 1.0),))
    pipe = load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU, sources=styled)
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert type(layer).__module__.startswith("peft")  # what the cross-frame processor calls through
    first = canny(pipe, maps)
    # The same base with the same LoRA set (the plain SD pipeline shares the UNet): nothing reloads.
    load_pipeline("sd", tiny_models / "sd", runtime=CPU, sources=styled)
    again = load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU, sources=styled)
    assert again.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q is layer
    assert np.array_equal(canny(again, maps), first)
    # The next row without LoRA gets the clean weights back, bit for bit.
    clean = load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU)
    assert isinstance(clean.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q, torch.nn.Linear)
    assert clean.get_list_adapters() == {}
    assert np.array_equal(canny(clean, maps), before)
    assert models.cache_stats()["pipeline_loads"] == 1


def test_sdxl_lora_matches_diffusers_sdxl_controlnet_pipeline(tiny_models, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = make_sdxl_lora(tiny_models / "sdxl", tmp_path / "xl-lora", seed=2).parent
    maps, n, scale = frames(seed=8, count=3, sparse=True), 3, 0.9
    fields = dict(mode="canny", prompt="a cat", num_inference_steps=3, guidance_scale=5.0, seed=2)
    request = GenerationRequest(width=SIZE, height=SIZE, **fields)
    controlnet = tiny_models / "controlnet-sdxl-canny"
    plain = generate(
        load_pipeline("sdxl", tiny_models / "sdxl", controlnet, CPU), request, maps, output_dtype=np.float32
    )
    ours = generate(
        load_pipeline("sdxl", tiny_models / "sdxl", controlnet, CPU, sources=ModelSources(loras=((str(lora), scale),))),
        request,
        maps,
        output_dtype=np.float32,
    )
    reference = StableDiffusionXLControlNetPipeline.from_pretrained(
        tiny_models / "sdxl", controlnet=ControlNetModel.from_pretrained(controlnet)
    )
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(lora, adapter_name="xl")
    reference.set_adapters(["xl"], adapter_weights=[scale])
    with reference_cross_frame(2, reference.unet, reference.controlnet):
        expected = reference(
            prompt=["a cat"] * n,
            image=pil(maps),
            latents=shared_latents(2).repeat(n, 1, 1, 1),
            num_inference_steps=3,
            guidance_scale=5.0,
            height=SIZE,
            width=SIZE,
            output_type="np",
        ).images
    assert maxdiff(ours, expected) <= ORACLE_TOL
    assert maxdiff(ours, plain) > 0.02


def test_lora_of_another_architecture_is_a_clear_error(tiny_models, own):
    with pytest.raises(InputError, match="lora .*cannot be applied"):
        load_pipeline("sdxl", tiny_models / "sdxl", runtime=CPU, sources=ModelSources(loras=((str(own["lora"]), 1.0),)))
    # The failed set is not left behind: the base still runs clean.
    pipe = load_pipeline("sdxl", tiny_models / "sdxl", runtime=CPU)
    assert pipe.get_list_adapters() == {}


# ---------------------------------------------------------------------------- single files


def test_single_file_model_and_controlnet_give_the_folders_frames(tiny_models, own):
    maps = frames(seed=4, count=N_FRAMES, sparse=True)
    from_folders = cached_canny(tiny_models, maps)
    sources = ModelSources(
        model_config=str(tiny_models / "sd"), controlnet_config=str(tiny_models / "controlnet-canny")
    )
    from_files = cached_canny(tiny_models, maps, sources, model=own["sd_file"], controlnet=own["canny_file"])
    assert maxdiff(from_files, from_folders) == 0.0


def test_single_file_pix2pix_and_text2video(tiny_models, own):
    source = frames(seed=5, count=N_FRAMES)
    request = GenerationRequest(
        mode="pix2pix", prompt="make it snow", num_inference_steps=2, seed=4, width=SIZE, height=SIZE
    )
    folder = generate(load_pipeline("pix2pix", tiny_models / "pix2pix", runtime=CPU), request, source)
    file = generate(
        load_pipeline(
            "pix2pix", own["pix2pix_file"], runtime=CPU, sources=ModelSources(model_config=str(tiny_models / "pix2pix"))
        ),
        request,
        source,
    )
    assert np.array_equal(file, folder)
    t2v = GenerationRequest(
        mode="text2video",
        prompt="a cat",
        num_inference_steps=4,
        t0=1,
        t1=2,
        video_length=3,
        seed=2,
        width=SIZE,
        height=SIZE,
    )
    folder = generate(load_pipeline("sd", tiny_models / "sd", runtime=CPU), t2v)
    file = generate(
        load_pipeline("sd", own["sd_file"], runtime=CPU, sources=ModelSources(model_config=str(tiny_models / "sd"))),
        t2v,
    )
    assert np.array_equal(file, folder)


def test_single_file_sdxl_gives_the_folders_frames(tiny_models, tmp_path):
    folder = write_distinct_sdxl(tiny_models / "sdxl", tmp_path / "sdxl")
    file = write_original_sdxl_checkpoint(folder, tmp_path / "sdxl.safetensors")
    request = GenerationRequest(
        mode="text2video",
        prompt="a cat",
        num_inference_steps=3,
        t0=0,
        t1=1,
        video_length=2,
        seed=1,
        width=SIZE,
        height=SIZE,
    )
    expected = generate(load_pipeline("sdxl", folder, runtime=CPU), request)
    got = generate(load_pipeline("sdxl", file, runtime=CPU, sources=ModelSources(model_config=str(folder))), request)
    assert np.array_equal(got, expected) and expected.std() > 10


def test_single_file_without_configs_offline_says_what_is_missing(tiny_models, own):
    with pytest.raises(InputError, match="model_config column") as exc:
        load_pipeline("sd", own["sd_file"], runtime=CPU)
    assert str(own["sd_file"]) in str(exc.value)
    with pytest.raises(InputError, match="controlnet_config column"):
        load_pipeline("sd", tiny_models / "sd", own["canny_file"], runtime=CPU)
    with pytest.raises(InputError, match="is a sd checkpoint, but model_config .* is a pix2pix model"):
        load_pipeline(
            "sd", own["sd_file"], runtime=CPU, sources=ModelSources(model_config=str(tiny_models / "pix2pix"))
        )


def test_ckpt_stays_behind_allow_pickle(tiny_models, own, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "dreambooth.ckpt"
    torch.save({"state_dict": load_file(own["sd_file"])}, ckpt)
    sources = ModelSources(model_config=str(tiny_models / "sd"))
    with pytest.raises(InputError, match="pickle.*--allow-pickle"):
        load_pipeline("sd", ckpt, runtime=CPU, sources=sources)
    trusted = Runtime(device="cpu", dtype="fp32", allow_pickle=True)
    pipe = load_pipeline("sd", ckpt, runtime=trusted, sources=sources)
    reference = load_pipeline("sd", tiny_models / "sd", runtime=CPU)
    assert torch.equal(pipe.unet.conv_in.weight, reference.unet.conv_in.weight)


# ----------------------------------------------------------------------------------------- VAE


def _other_vae(tiny_models, folder: Path) -> Path:
    from diffusers import AutoencoderKL

    config = json.loads((tiny_models / "sd" / "vae" / "config.json").read_text())
    torch.manual_seed(123)
    AutoencoderKL.from_config(config).save_pretrained(folder)
    return folder


def test_replacement_vae_from_a_folder_a_model_folder_or_a_single_file(tiny_models, tmp_path):
    from own_models_support import _load_folder_weights, _vae_to_original
    from safetensors.torch import save_file

    maps = frames(seed=6, count=2, sparse=True)
    vae = _other_vae(tiny_models, tmp_path / "vae")
    plain = cached_canny(tiny_models, maps)
    with_vae = cached_canny(tiny_models, maps, ModelSources(vae=str(vae)))
    assert maxdiff(with_vae, plain) > 0.02
    # The same as a model folder that ships this VAE.
    shutil.copytree(tiny_models / "sd", tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "vae")
    shutil.copytree(vae, tmp_path / "model" / "vae")
    assert maxdiff(cached_canny(tiny_models, maps, model=tmp_path / "model"), with_vae) == 0.0
    # A model folder names its vae/ subfolder; an original-layout single file takes the base's vae config.
    assert maxdiff(cached_canny(tiny_models, maps, ModelSources(vae=str(tmp_path / "model"))), with_vae) == 0.0
    config = json.loads((vae / "config.json").read_text())
    single = tmp_path / "vae-ft.safetensors"
    save_file({k: v.contiguous() for k, v in _vae_to_original(_load_folder_weights(vae), config).items()}, single)
    assert maxdiff(cached_canny(tiny_models, maps, ModelSources(vae=str(single))), with_vae) == 0.0


# ----------------------------------------------------------------------------------- schedulers


def test_every_scheduler_runs_canny_independently_of_chunking(tiny_models):
    maps = frames(seed=7, count=4, sparse=True)[:, :32, :32]  # 32 px: 8 schedulers x 2 runs stay quick
    pipe = load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU)
    own_scheduler = canny(pipe, maps)
    outputs = {}
    for name in SCHEDULERS:
        scheduler = build_scheduler(name, pipe.scheduler)
        assert type(scheduler).__name__ == SCHEDULERS[name][0]
        full = canny(pipe, maps, scheduler=scheduler)
        assert np.isfinite(full).all() and full.std() > 0.05, name
        # pose/canny/depth frames must not depend on chunk_size (the generate key leaves it out).
        assert maxdiff(canny(pipe, maps, scheduler=scheduler, chunk_size=3), full) <= 1e-4, name
        outputs[name] = full
    assert maxdiff(outputs["ddim"], own_scheduler) == 0.0  # the tiny models ship DDIM
    assert all(maxdiff(outputs[name], outputs["ddim"]) > 1e-3 for name in SCHEDULERS if name != "ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the shared pipeline keeps its own


def test_text2video_runs_with_the_schedulers_that_keep_t0_t1_exact(tiny_models):
    pipe = load_pipeline("sd", tiny_models / "sd", runtime=CPU)
    request = GenerationRequest(
        mode="text2video",
        prompt="a dog",
        num_inference_steps=4,
        t0=1,
        t1=2,
        video_length=3,
        seed=3,
        width=SIZE,
        height=SIZE,
    )
    own_scheduler = generate(pipe, request, output_dtype=np.float32)
    assert TEXT2VIDEO_SCHEDULERS == {"ddim"}
    for name in TEXT2VIDEO_SCHEDULERS:
        out = generate(pipe, request, output_dtype=np.float32, scheduler=build_scheduler(name, pipe.scheduler))
        assert maxdiff(out, own_scheduler) == 0.0
