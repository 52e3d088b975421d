"""The tiny-model kit: deterministic bytes, atomic idempotent writes, offline loading, real control.

Budget: ~10-15 s on the CI machine (one extra kit write, loads and a few 64x64 UNet calls).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from t2vz_core import tiny


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_write_elsewhere_is_byte_identical_and_rebuilds_a_broken_folder(tiny_models, tmp_path):
    root = tmp_path / "kit"
    # A leftover from a crash: an "sd" folder without the completion marker must be rebuilt.
    (root / "sd" / "unet").mkdir(parents=True)
    (root / "sd" / "unet" / "junk.bin").write_bytes(b"half written")

    folders = tiny.write_tiny_models(root)

    assert sorted(folders) == sorted(tiny.NAMES)
    assert all(folders[name] == root / name for name in tiny.NAMES)
    ours, reference = _files(root), _files(tiny_models)
    assert sorted(ours) == sorted(reference)
    different = [name for name in ours if ours[name] != reference[name]]
    assert different == []
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")], "temp folders left behind"
    assert any(name.endswith(".safetensors") for name in ours)
    assert not any(name.endswith((".bin", ".pt", ".ckpt")) for name in ours)


def test_complete_folders_are_skipped(tiny_models):
    before = {p: p.stat().st_mtime_ns for p in tiny_models.rglob("*") if p.is_file()}
    tiny.write_tiny_models(tiny_models)
    after = {p: p.stat().st_mtime_ns for p in tiny_models.rglob("*") if p.is_file()}
    assert before == after


def _load(cls_name: str, folder: Path):
    import diffusers

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(diffusers, cls_name).from_pretrained(folder)


@pytest.mark.parametrize(
    "name, cls_name",
    [
        ("sd", "StableDiffusionPipeline"),
        ("pix2pix", "StableDiffusionInstructPix2PixPipeline"),
        ("sdxl", "StableDiffusionXLPipeline"),
        ("controlnet-canny", "ControlNetModel"),
        ("controlnet-openpose", "ControlNetModel"),
        ("controlnet-depth", "ControlNetModel"),
        ("controlnet-sdxl-canny", "ControlNetModel"),
    ],
)
def test_each_folder_loads_offline_with_its_class(tiny_models, name, cls_name):
    model = _load(cls_name, tiny_models / name)
    assert type(model).__name__ == cls_name
    if cls_name != "ControlNetModel":
        assert type(model.scheduler).__name__ == "DDIMScheduler"
        assert model.vae_scale_factor == tiny.VAE_SCALE_FACTOR
        assert model.unet.config.in_channels == (8 if name == "pix2pix" else 4)
        assert model.unet.config.sample_size * model.vae_scale_factor == 64


def test_deprecated_text_to_video_zero_pipelines_load(tiny_models):
    from diffusers import TextToVideoZeroPipeline, TextToVideoZeroSDXLPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = TextToVideoZeroPipeline.from_pretrained(
            tiny_models / "sd", safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        sdxl = TextToVideoZeroSDXLPipeline.from_pretrained(tiny_models / "sdxl")
    assert sd.unet.config.cross_attention_dim == 32
    assert sdxl.unet.config.addition_embed_type == "text_time"


def test_tokenizer_handles_any_text(tiny_models):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models / "sd" / "tokenizer")
    known = tokenizer("a man dancing on the beach").input_ids
    # whole-word merges: start, 6 words, end
    assert len(known) == 8
    text = "Ünïcödé 🎉 prompts, digits 123 & QUIRKY words!"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # byte-level fallback, never unknown
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    padded = tokenizer(text, padding="max_length", truncation=True, max_length=tokenizer.model_max_length)
    assert len(padded.input_ids) == 77
    assert max(ids) < 1000  # fits the text encoders' embedding


def _unet_eps(unet, controlnet=None, cond=None):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 32, 32)
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    t = torch.tensor(500)
    with torch.no_grad():
        if controlnet is None:
            return unet(latents, t, text).sample
        down, mid = controlnet(latents, t, text, controlnet_cond=cond, return_dict=False)
        return unet(latents, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


def test_controlnets_change_the_unet_output_and_depend_on_the_map(tiny_models):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models / "sd" / "unet")
    edges = torch.zeros(1, 3, 64, 64)
    edges[:, :, 16:48, 30:34] = 1.0  # control maps come at frame size (64 px -> 32 latent)
    plain = _unet_eps(unet)
    outputs = {}
    for kind in ("canny", "openpose", "depth"):
        controlnet = ControlNetModel.from_pretrained(tiny_models / f"controlnet-{kind}")
        with_map = _unet_eps(unet, controlnet, edges)
        with_blank = _unet_eps(unet, controlnet, torch.zeros_like(edges))
        scale = plain.abs().mean()
        assert (with_map - plain).abs().mean() > 0.1 * scale  # the ControlNet acts at all
        assert (with_map - with_blank).abs().mean() > 0.02 * scale  # and the map itself matters
        outputs[kind] = with_map
    assert not torch.allclose(outputs["canny"], outputs["openpose"])
    assert not torch.allclose(outputs["canny"], outputs["depth"])


def test_pipelines_generate_64px_frames(tiny_models):
    from diffusers import StableDiffusionXLControlNetPipeline

    sdxl = _load("StableDiffusionXLPipeline", tiny_models / "sdxl")
    controlnet = _load("ControlNetModel", tiny_models / "controlnet-sdxl-canny")
    pipe = StableDiffusionXLControlNetPipeline.from_pipe(sdxl, controlnet=controlnet)
    edges = np.zeros((64, 64, 3), np.uint8)
    edges[16:48, 30:34] = 255
    frames = pipe(
        "a dog on the beach",
        image=[edges],
        num_inference_steps=1,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images
    assert frames.shape == (1, 64, 64, 3)
    assert np.isfinite(frames).all()
