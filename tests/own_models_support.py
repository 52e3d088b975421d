"""Models users bring, made from the tiny diffusers models inside the tests (no hub, no downloads).

- `write_original_checkpoint(folder, path)`: an SD1.x / InstructPix2Pix diffusers folder written
  as one `.safetensors` file in the original Stable Diffusion (ldm) layout, the layout DreamBooth
  and style models are shared in. The key mapping is written here from the original layout's
  structure (input_blocks / middle_block / output_blocks, VAE down/up with reversed decoder order,
  `cond_stage_model.transformer.`), for any number of blocks, so it also fits the tiny models.
- `make_lora(folder, out_dir, seed)`: a LoRA on the tiny UNet's attention projections and the
  text encoder's, made with peft (random non-zero B so it changes the output) and saved with
  the pipeline's `save_lora_weights` (diffusers layout).
- `kohya_copy(lora_file, path)`: the same weights under kohya-ss names (`lora_unet_..._to_q.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; text encoder `lora_te_text_model_...`).
- `write_original_sdxl_checkpoint(folder, path)`: the same for an SDXL base (SGM layout: two
  `conditioner.embedders`, the second in OpenCLIP naming with fused q/k/v).
- `write_original_controlnet(folder, path)`: a ControlNet folder as one file in the original layout.
- `make_sdxl_lora(folder, out_dir, seed)`: a LoRA on the tiny SDXL UNet and both text encoders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

LORA_RANK = 4
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _load_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one .safetensors file, found {len(files)}")
    return load_file(files[0])


# ------------------------------------------------------------------------------------- UNet


_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",  # SDXL
    "controlnet_mid_block": "middle_block_out.0",
}  # ControlNet


def _resnet(name: str) -> str:
    for ours, theirs in _RESNET_PARTS.items():
        if name == ours or name.startswith(ours + "."):
            return theirs + name[len(ours) :]
    raise KeyError(name)


def _unet_prefixes(config: dict, with_decoder: bool = True) -> dict[str, str]:
    """diffusers module prefix -> original prefix, for resnets, attentions and resamplers."""
    layers = config["layers_per_block"]
    down_types = config["down_block_types"]
    prefixes: dict[str, str] = {}
    index = 1  # input_blocks.0 is conv_in
    for block, kind in enumerate(down_types):
        for layer in range(layers):
            prefixes[f"down_blocks.{block}.resnets.{layer}."] = f"input_blocks.{index}.0."
            if "CrossAttn" in kind:
                prefixes[f"down_blocks.{block}.attentions.{layer}."] = f"input_blocks.{index}.1."
            index += 1
        if block < len(down_types) - 1:
            prefixes[f"down_blocks.{block}.downsamplers.0.conv."] = f"input_blocks.{index}.0.op."
            index += 1
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    if with_decoder:
        index = 0
        up_types = config["up_block_types"]
        for block, kind in enumerate(up_types):
            for layer in range(layers + 1):
                prefixes[f"up_blocks.{block}.resnets.{layer}."] = f"output_blocks.{index}.0."
                if "CrossAttn" in kind:
                    prefixes[f"up_blocks.{block}.attentions.{layer}."] = f"output_blocks.{index}.1."
                if layer == layers and block < len(up_types) - 1:
                    slot = 2 if "CrossAttn" in kind else 1
                    prefixes[f"up_blocks.{block}.upsamplers.0."] = f"output_blocks.{index}.{slot}."
                index += 1
    return prefixes


def _unet_to_original(weights: dict[str, torch.Tensor], config: dict, with_decoder: bool = True) -> dict:
    prefixes = _unet_prefixes(config, with_decoder)
    out = {}
    for key, tensor in weights.items():
        module, _, leaf = key.rpartition(".")
        if module in _UNET_TOP:
            out[f"{_UNET_TOP[module]}.{leaf}"] = tensor
            continue
        for ours, theirs in prefixes.items():
            if key.startswith(ours):
                rest = key[len(ours) :]
                out[theirs + (_resnet(rest) if ".resnets." in ours else rest)] = tensor
                break
        else:
            out[key] = tensor  # ControlNet extras (controlnet_cond_embedding, zero convs) are mapped by the caller
    return out


# -------------------------------------------------------------------------------------- VAE


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_to_original(weights: dict[str, torch.Tensor], config: dict) -> dict:
    blocks = len(config["block_out_channels"])
    out = {}
    for key, tensor in weights.items():
        new = key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        # The original decoder numbers its up levels from the bottom.
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.",
            new,
        )
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.",
            new,
        )
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        match = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", new)
        if match:
            new = f"{match[1]}.mid.attn_1.{_VAE_ATTENTION[match[2]]}.{match[3]}"
            if match[3] == "weight" and match[2] != "group_norm":
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # 1x1 convolutions in the original
        out[new] = tensor
    return out


# ----------------------------------------------------------------------------- checkpoints


def _original_unet_and_vae(folder: Path) -> dict[str, torch.Tensor]:
    """The UNet and VAE of a diffusers folder under their original-layout keys (SD1.x and SDXL alike)."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    state = {}
    for key, tensor in _unet_to_original(_load_folder_weights(folder / "unet"), unet_config).items():
        state[f"model.diffusion_model.{key}"] = tensor
    for key, tensor in _vae_to_original(_load_folder_weights(folder / "vae"), vae_config).items():
        state[f"first_stage_model.{key}"] = tensor
    return state


def _clip_text_model(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights under `prefix` + "text_model." (transformers 5 drops that part)."""
    state = {}
    for key, tensor in _load_folder_weights(folder).items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        state[f"{prefix}{key}"] = tensor
    return state


def _save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_original_checkpoint(folder: Path, path: Path) -> Path:
    """An SD1.x / InstructPix2Pix diffusers folder as one original-layout .safetensors file."""
    folder = Path(folder)
    state = _original_unet_and_vae(folder)
    state.update(_clip_text_model(folder / "text_encoder", "cond_stage_model.transformer."))
    return _save_checkpoint(state, path)


_OPEN_CLIP_LAYER_PARTS = (
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
)


def _open_clip_to_original(weights: dict[str, torch.Tensor]) -> dict:
    """SDXL's second text encoder (CLIPTextModelWithProjection) in OpenCLIP naming, q/k/v fused."""
    out, fused = {}, {}
    for key, tensor in weights.items():
        key = key.removeprefix("text_model.")
        match = re.match(r"^encoder\.layers\.(\d+)\.(.+)$", key)
        if match is None:
            top = {
                "embeddings.position_embedding.weight": "positional_embedding",
                "embeddings.token_embedding.weight": "token_embedding.weight",
                "final_layer_norm.weight": "ln_final.weight",
                "final_layer_norm.bias": "ln_final.bias",
                "text_projection.weight": "text_projection",
            }[key]
            out[top] = tensor.T if top == "text_projection" else tensor  # OpenCLIP multiplies x @ proj
            continue
        layer, rest = match.groups()
        qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if qkv:
            fused.setdefault((layer, qkv[2]), {})[qkv[1]] = tensor
            continue
        for ours, theirs in _OPEN_CLIP_LAYER_PARTS:
            rest = rest.replace(ours, theirs)
        out[f"transformer.resblocks.{layer}.{rest}"] = tensor
    for (layer, leaf), parts in fused.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def write_original_sdxl_checkpoint(folder: Path, path: Path) -> Path:
    """An SDXL base diffusers folder as one original-layout (SGM) .safetensors file."""
    folder = Path(folder)
    state = _original_unet_and_vae(folder)
    state.update(_clip_text_model(folder / "text_encoder", "conditioner.embedders.0.transformer."))
    for key, tensor in _open_clip_to_original(_load_folder_weights(folder / "text_encoder_2")).items():
        state[f"conditioner.embedders.1.model.{key}"] = tensor
    return _save_checkpoint(state, path)


def write_original_controlnet(folder: Path, path: Path) -> Path:
    """A ControlNetModel folder as one original-layout .safetensors file (ControlNet v1.1 naming)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    weights = _load_folder_weights(folder)
    state = {}
    for key, tensor in _unet_to_original(weights, config, with_decoder=False).items():
        match = re.match(r"^controlnet_down_blocks\.(\d+)\.(weight|bias)$", key)
        if match:
            key = f"zero_convs.{match[1]}.0.{match[2]}"
        elif key.startswith("controlnet_cond_embedding."):
            key = _hint_block(key[len("controlnet_cond_embedding.") :])
        state[f"control_model.{key}"] = tensor
    return _save_checkpoint(state, path)


def _hint_block(key: str) -> str:
    # input_hint_block: conv_in, SiLU, then (conv, SiLU) per block at even indices; conv_out sits at
    # index 14 in the original SD ControlNets (6 blocks), and diffusers' converter expects it there.
    module, _, leaf = key.rpartition(".")
    if module == "conv_in":
        return f"input_hint_block.0.{leaf}"
    if module == "conv_out":
        return f"input_hint_block.14.{leaf}"
    match = re.match(r"^blocks\.(\d+)$", module)
    return f"input_hint_block.{2 * (int(match[1]) + 1)}.{leaf}"


# ------------------------------------------------------------------------------------ LoRA


def make_lora(folder: Path, out_dir: Path, seed: int = 0, rank: int = LORA_RANK) -> Path:
    """A LoRA for the tiny SD model (UNet attention + text encoder), saved in diffusers layout."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(seed)
    # init_lora_weights=False: random B as well as A, so the LoRA changes the output from the start.
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=UNET_TARGETS))
    pipe.text_encoder.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=TEXT_TARGETS)
    )
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)),
    )
    return Path(out_dir) / "pytorch_lora_weights.safetensors"


def kohya_copy(lora_file: Path, path: Path, rank: int = LORA_RANK) -> Path:
    """The diffusers-layout LoRA file's weights under kohya-ss names (alpha = rank: scale 1)."""
    from safetensors.torch import load_file, save_file

    state = {}
    for key, tensor in load_file(lora_file).items():
        # diffusers layout: unet.<module>.lora.down.weight / text_encoder.<module>.lora_linear_layer.up.weight
        match = re.match(r"^(unet|text_encoder)\.(.+)\.(lora|lora_linear_layer)\.(down|up)\.weight$", key)
        if match is None:
            raise ValueError(f"unexpected LoRA key {key}")
        part, module, _, direction = match.groups()
        if part == "unet":
            name = "lora_unet_" + module.replace(".", "_")
        else:
            module = module if module.startswith("text_model.") else f"text_model.{module}"
            name = "lora_te_" + module.replace(".", "_")
        state[f"{name}.lora_{direction}.weight"] = tensor.contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def make_sdxl_lora(folder: Path, out_dir: Path, seed: int = 0, rank: int = LORA_RANK) -> Path:
    """A LoRA for the tiny SDXL model (UNet attention + both text encoders), saved in diffusers layout."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=UNET_TARGETS))
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=TEXT_TARGETS))
    StableDiffusionXLPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)),
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder_2)),
    )
    return Path(out_dir) / "pytorch_lora_weights.safetensors"


def write_distinct_sdxl(tiny_sdxl: Path, folder: Path, seed: int = 0, hidden_2: int = 48) -> Path:
    """A tiny SDXL pipeline whose second text encoder is wider than the first (48 vs 32).

    The tiny kit's SDXL has two 32-wide text encoders; from_single_file tells SDXL's two encoders
    apart by their width (768 vs 1280 in real models), so a single file of the kit's SDXL cannot be
    read back. This variant keeps the kit's tokenizers, VAE and scheduler and rebuilds the rest."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tiny_sdxl = Path(tiny_sdxl)
    first = CLIPTextConfig.from_pretrained(tiny_sdxl / "text_encoder")
    second = CLIPTextConfig.from_pretrained(tiny_sdxl / "text_encoder_2")
    second.hidden_size, second.projection_dim, second.intermediate_size = hidden_2, hidden_2, 2 * hidden_2
    unet_config = json.loads((tiny_sdxl / "unet" / "config.json").read_text())
    time_dim = unet_config["projection_class_embeddings_input_dim"] - 32  # minus the pooled width
    unet_config.update(
        cross_attention_dim=first.hidden_size + hidden_2, projection_class_embeddings_input_dim=time_dim + hidden_2
    )
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(tiny_sdxl / "vae"),
        text_encoder=CLIPTextModel(first).eval(),
        text_encoder_2=CLIPTextModelWithProjection(second).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(tiny_sdxl / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(tiny_sdxl / "tokenizer_2"),
        unet=UNet2DConditionModel.from_config({k: v for k, v in unet_config.items() if not k.startswith("_")}).eval(),
        scheduler=DDIMScheduler.from_pretrained(tiny_sdxl / "scheduler"),
    )
    pipe.save_pretrained(folder)
    return Path(folder)
