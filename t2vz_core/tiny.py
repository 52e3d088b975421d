"""Tiny random-weight models in diffusers format, for tests and the offline demo.

`write_tiny_models(root)` writes these subfolders (safetensors, DDIMScheduler everywhere):

- ``sd``: StableDiffusionPipeline (SD1.x-shaped; also loads as the deprecated TextToVideoZeroPipeline)
- ``pix2pix``: StableDiffusionInstructPix2PixPipeline (unet ``in_channels=8``)
- ``controlnet-canny``, ``controlnet-openpose``, ``controlnet-depth``: ControlNetModel matching ``sd``
- ``sdxl``: StableDiffusionXLPipeline (two text encoders, ``addition_embed_type="text_time"``)
- ``controlnet-sdxl-canny``: ControlNetModel matching ``sdxl``

Sizes: the VAE has two blocks, so **vae_scale_factor is 2** (not 8 as in real models): a
64x64 px frame is a 4x32x32 latent; unet ``sample_size`` 32, so pipelines default to 64x64 px.
The ControlNets' conditioning embedding downsamples by 2 as well, so control maps are given at
frame size, as for real models. Any multiple of 8 px works.

The weights are random (seeded per component) and the output is noise-like; the point is to run
the real diffusers code paths fast and offline. A fresh ControlNet's "zero convolutions" output
zero, so they are re-initialised here: control maps change the result. Every run writes the same
bytes; each subfolder is written to a temporary folder and renamed into place, and a complete
subfolder (marked with ``t2vz-tiny.json``) is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

# Bump when anything below changes the written files: stale kits are then rebuilt.
KIT_VERSION = 1
MARKER = "t2vz-tiny.json"
VAE_SCALE_FACTOR = 2
NAMES = (
    "sd",
    "pix2pix",
    "controlnet-canny",
    "controlnet-openpose",
    "controlnet-depth",
    "sdxl",
    "controlnet-sdxl-canny",
)

_TEXT_VOCAB_SIZE = 1000  # embedding rows; the tokenizer uses fewer ids
_MAX_TOKENS = 77

# Configs follow diffusers' own pipeline tests (get_dummy_components). Keys shared by a UNet and
# the ControlNet that must match it:
_SD_SHARED = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    cross_attention_dim=32,
)
_SDXL_SHARED = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    # 6 micro-conditioning values x addition_time_embed_dim + pooled text projection (32)
    projection_class_embeddings_input_dim=6 * 8 + 32,
    # hidden states of both text encoders concatenated (32 + 32)
    cross_attention_dim=64,
)
_UNET_ONLY = dict(sample_size=32, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
# Two stages -> downsamples by 2, matching VAE_SCALE_FACTOR.
_CONTROL_EMBEDDING = (16, 32)

# Words that get whole-word BPE merges, so that common prompts stay well under 77 tokens.
# Anything else falls back to byte-level tokens (every byte is in the vocabulary).
_WORDS = (
    "a an the of in on at to with and is it its into make turn as "
    "man woman person people girl boy dancing running walking jumping standing "
    "dog cat horse bird bear car street road beach city forest snow sky sea "
    "water mountain river night sunset day red blue green white black golden "
    "photo painting style video high quality detailed realistic cartoon "
    "astronaut robot van gogh"
).split()


def write_tiny_models(root: Path) -> dict[str, Path]:
    """Write (or reuse) every tiny model under `root`; returns {name: folder}. See module doc."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[Path], None]] = {
        "sd": _write_sd,
        "pix2pix": _write_pix2pix,
        "controlnet-canny": lambda d: _write_controlnet(d, _SD_SHARED, seed=30),
        "controlnet-openpose": lambda d: _write_controlnet(d, _SD_SHARED, seed=31),
        "controlnet-depth": lambda d: _write_controlnet(d, _SD_SHARED, seed=32),
        "sdxl": _write_sdxl,
        "controlnet-sdxl-canny": lambda d: _write_controlnet(d, _SDXL_SHARED, seed=40),
    }
    folders = {}
    for name, build in builders.items():
        folder = root / name
        if not is_complete(folder):
            with _quiet_progress_bars():
                _write_atomically(folder, build)
        folders[name] = folder
    return folders


@contextmanager
def _quiet_progress_bars():
    # transformers prints a "Writing model shards" bar per text encoder; pointless here.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a finished tiny model of this kit version."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()) == _marker()
    except (OSError, ValueError):
        return False


def _marker() -> dict:
    return {"kit": "t2vz-tiny", "version": KIT_VERSION}


def _write_atomically(folder: Path, build: Callable[[Path], None]) -> None:
    # Build beside the target, then rename: readers never see a half-written model.
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(_marker(), sort_keys=True) + "\n")
        if folder.exists():
            if is_complete(folder):  # another process finished first
                return
            stale = folder.with_name(f".{folder.name}.stale-{uuid.uuid4().hex[:8]}")
            folder.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not is_complete(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- components


def _seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    # Random init happens on CPU in fp32 under a fixed seed: identical weights on every run.
    torch.manual_seed(seed)
    return make().eval()


def _unet(shared: dict, seed: int, **overrides):
    from diffusers import UNet2DConditionModel

    return _seeded(seed, lambda: UNet2DConditionModel(**{**shared, **_UNET_ONLY, **overrides}))


def _vae(seed: int):
    from diffusers import AutoencoderKL

    return _seeded(
        seed,
        lambda: AutoencoderKL(
            block_out_channels=(32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            sample_size=64,
        ),
    )


def _scheduler():
    from diffusers import DDIMScheduler

    # SD1.x's published DDIM settings.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=_TEXT_VOCAB_SIZE,
        max_position_embeddings=_MAX_TOKENS,
        **extra,
    )


def _text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextModel

    return _seeded(seed, lambda: CLIPTextModel(_text_config(tokenizer)))


def _text_encoder_with_projection(tokenizer, seed: int):
    from transformers import CLIPTextModelWithProjection

    config = _text_config(tokenizer, hidden_act="gelu", projection_dim=32)
    return _seeded(seed, lambda: CLIPTextModelWithProjection(config))


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable character table of byte-level BPE (GPT-2 / CLIP).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _tokenizer():
    """A small offline CLIP BPE tokenizer: every byte is a token, plus whole-word merges."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in _WORDS:
        # Add merges until the word is one token. New merges rank after the old ones, so
        # words merged earlier stay whole.
        while len(parts := _apply_bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
            if parts[0] + parts[1] not in known:
                tokens.append(parts[0] + parts[1])
                known.add(parts[0] + parts[1])
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # last, as in CLIP's own vocabulary
    assert len(tokens) <= _TEXT_VOCAB_SIZE
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_TOKENS)


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    # What a BPE tokenizer does to one word: merge the best-ranked adjacent pair until none applies.
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


# ---------------------------------------------------------------------------- models


def _write_sd(folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    _sd1_pipeline(StableDiffusionPipeline, unet_seed=0).save_pretrained(folder, safe_serialization=True)


def _write_pix2pix(folder: Path) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    # 4 noisy-latent channels + 4 source-image latent channels
    pipe = _sd1_pipeline(StableDiffusionInstructPix2PixPipeline, unet_seed=10, in_channels=8)
    pipe.save_pretrained(folder, safe_serialization=True)


def _sd1_pipeline(pipeline_class, unet_seed: int, **unet_config):
    """An SD1.x-shaped pipeline (SD or InstructPix2Pix) of tiny parts; only the UNet differs."""
    tokenizer = _tokenizer()
    return pipeline_class(
        vae=_vae(1),
        text_encoder=_text_encoder(tokenizer, 2),
        tokenizer=tokenizer,
        unet=_unet(_SD_SHARED, unet_seed, **unet_config),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _write_sdxl(folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    tokenizer = _tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(21),
        text_encoder=_text_encoder(tokenizer, 22),
        text_encoder_2=_text_encoder_with_projection(tokenizer, 23),
        tokenizer=tokenizer,
        tokenizer_2=_tokenizer(),
        unet=_unet(_SDXL_SHARED, 20),
        scheduler=_scheduler(),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _write_controlnet(folder: Path, shared: dict, seed: int) -> None:
    from diffusers import ControlNetModel

    def make():
        controlnet = ControlNetModel(**shared, conditioning_embedding_out_channels=_CONTROL_EMBEDDING)
        # Re-initialise the zero convolutions, or the control would add exactly nothing.
        zeroed = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
        for conv in [*zeroed, *controlnet.controlnet_down_blocks]:
            conv.reset_parameters()
        # Default init leaves the control map's features ~10x weaker than the latents' (after
        # conv_in), so the map itself would barely matter; std 1 makes them comparable.
        torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight, std=1.0)
        return controlnet

    _seeded(seed, make).save_pretrained(folder, safe_serialization=True)
