"""t2vz at real model sizes on a GPU: speed, memory, fast paths and checks (issue 14).

    make bench-gpu                                    # everything, on the CUDA device
    .venv/bin/python bench/gpu.py [--out PATH] [--budget-s S] [--only SECTION,...] [--peak-tflops X]
    .venv/bin/python bench/gpu.py --smoke [--out PATH]   # the same code, tiny, on the CPU

Models have the published architectures (bench/configs/*.json: SD1.5 UNet/VAE/CLIP ViT-L/ControlNet,
the 8-channel Instruct-Pix2Pix UNet, SDXL base UNet/VAE/CLIP-L/OpenCLIP bigG, SDXL ControlNet) and
random weights, built directly on the device in fp16: nothing is downloaded. Speed and memory do
not depend on trained weights; what random weights cannot show is said where it matters (finite
outputs). Tokenizers are built offline (t2vz_core.tiny's small CLIP BPE): token ids do not change
the cost, prompts are padded to 77 tokens like the real ones.

Sections (in this order, which is also their priority under --budget-s):
  env         GPU, driver, torch, CUDA, cuDNN and library versions.
  flops       FLOPs of one UNet / ControlNet call at the real shape (torch.utils.flop_counter on the
              device), the GPU's dense fp16 peak, and the frames/s limit they set.
  throughput  canny, pix2pix, text2video at 512 px, 50 steps, CFG, chunk sizes 8/16/24: frames/s and
              peak device memory of t2vz (t2vz_core.engine.generate) and of the diffusers docs recipe
              (ControlNet / Instruct-Pix2Pix pipelines with CrossFrameAttnProcessor2_0 called per chunk
              with frame 0 prepended; TextToVideoZeroPipeline with frame_ids), same weights and frames,
              ratios; the goal check for canny chunk 8.
  fast_paths  each fast path of t2vz_core.runtime.Runtime against the default: channels_last, the SDPA
              kernel of the cross-frame attention (which one runs, and each one's time), TF32 (fp32
              work), VAE decoding batched by chunk against frame by frame (vae_slicing).
  finite      every output finite in fp16 and bf16, SDXL (and its VAE) included.
  precision   fp16 / bf16 output against fp32 (TF32 off), with the tolerance stated.
  e2e         a whole `t2vz run` of a 4-row manifest (decode, maps, generation, encode) in a child
              process: frames/s end to end, GPU busy share (NVML or nvidia-smi sampled by a thread),
              and whether rows' CPU work overlapped another row's generation.
  oom_retry   a real out-of-memory (the child's allocator capped between the peaks of chunk 16 and
              chunk 8) makes the generate retry halve the chunk (tasks/policy.py).
  gpu_limit   two `t2vz run` processes (two workers) under a Prefect concurrency limit of one slot
              (T2VZ_GPU_LIMIT, as `t2vz-gpu` in production): their generations never overlap.
  offload     offload=model and offload=sequential through t2vz_core.models (ModelCache).
  max_chunk   the largest chunk size that fits per mode at 512 and 768 px (binary search on OOM).
  sdxl        SDXL canny and text2video at 1024 px against the recipe (TextToVideoZeroSDXLPipeline).
  compile     torch.compile of UNet and ControlNet: compile time, graphs, recompiles across a second
              video of the same shapes (none expected), frames/s; and with channels_last.

Results: bench/GPU_RESULTS.md (+ .json) with the numbers and how each was measured. The file is
rewritten after every section, so a run stopped by a time limit keeps what it measured.
--smoke runs every section at tiny sizes on the CPU (fp32, a few frames and steps, OOM simulated,
compile with the "eager" backend) and writes to a temporary folder unless --out is given; it never
writes bench/GPU_RESULTS.md. The `t2vz run` children use the Prefect server of PREFECT_API_URL when
one is set, else a `prefect server start` of their own (not measured either way).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CONFIGS = BENCH / "configs"
RESULTS = BENCH / "GPU_RESULTS.md"

SECTIONS = (
    "env",
    "flops",
    "throughput",
    "fast_paths",
    "finite",
    "precision",
    "e2e",
    "oom_retry",
    "gpu_limit",
    "offload",
    "max_chunk",
    "sdxl",
    "compile",
)
# Rough seconds a section needs on an H100 (to skip it rather than be cut off under --budget-s).
ESTIMATE_S = {
    "env": 1,
    "flops": 15,
    "throughput": 240,
    "fast_paths": 60,
    "finite": 40,
    "precision": 40,
    "e2e": 120,
    "oom_retry": 60,
    "gpu_limit": 60,
    "offload": 90,
    "max_chunk": 120,
    "sdxl": 240,
    "compile": 300,
}
PROMPTS = {
    "canny": "a glass sculpture of a dancer, studio light",
    "pix2pix": "make it a snowy winter night",
    "text2video": "a horse galloping on a street",
}
GOAL_RATIO, GOAL_PEAK_SHARE = 1.5, 0.40
# Dense (no sparsity) fp16 tensor-core peak, TFLOPS, by device name (NVIDIA data sheets).
PEAK_FP16_TFLOPS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("V100", 125.0),
    ("T4", 65.0),
)
# Precision tolerance against fp32, on output pixel values in [0, 1]: mean |difference|.
TOLERANCE = {"fp16": 2 / 255, "bf16": 6 / 255}


@dataclass
class Settings:
    """Sizes of one run: the real ones, or --smoke's tiny ones (same code either way)."""

    smoke: bool
    device: str
    dtype_name: str
    configs: Path
    size: int
    size_large: int
    sdxl_size: int
    steps: int
    t0: int
    t1: int
    frames: int
    chunks: tuple[int, ...]
    sdxl_frames: int
    sdxl_chunks: tuple[int, ...]
    warmup_steps: int
    check_steps: int
    check_frames: int
    e2e_frames: int
    e2e_steps: int
    max_chunk_cap: int
    compile_backend: str
    compile_mode: str
    precisions: tuple[str, ...]
    peak_tflops: float | None = None
    check_size: int | None = None  # finite/precision frame size (None: size, SDXL sdxl_size)
    check_modes: tuple[str, ...] = ("canny", "pix2pix", "text2video")
    max_chunk_cases: tuple[tuple[str, str], ...] = tuple(
        (m, w) for m in ("canny", "pix2pix", "text2video") for w in ("size", "size_large")
    )
    simulated_memory_rows: int | None = None  # CPU smoke: UNet batches above this raise OutOfMemoryError

    @classmethod
    def make(cls, smoke: bool, peak_tflops: float | None) -> Settings:
        if smoke:
            return cls(
                True,
                "cpu",
                "fp32",
                CONFIGS / "smoke",
                size=64,
                size_large=96,
                sdxl_size=64,
                steps=2,
                t0=0,
                t1=1,
                frames=3,
                chunks=(2,),
                sdxl_frames=3,
                sdxl_chunks=(2,),
                warmup_steps=0,
                check_steps=2,
                check_frames=2,
                e2e_frames=3,
                e2e_steps=2,
                compile_backend="eager",
                compile_mode="pix2pix",
                precisions=("bf16",),
                peak_tflops=peak_tflops,
                # bf16 convolutions have no fast CPU kernel (aten's slow_conv2d): one mode, 16 px
                check_size=16,
                check_modes=("canny",),
                max_chunk_cap=8,
                max_chunk_cases=(("canny", "size"),),
                simulated_memory_rows=6,
            )
        return cls(
            False,
            "cuda",
            "fp16",
            CONFIGS,
            size=512,
            size_large=768,
            sdxl_size=1024,
            steps=50,
            t0=44,
            t1=47,
            frames=24,
            chunks=(8, 16, 24),
            sdxl_frames=16,
            sdxl_chunks=(8,),
            warmup_steps=2,
            check_steps=4,
            check_frames=3,
            e2e_frames=16,
            e2e_steps=50,
            max_chunk_cap=512,
            compile_backend="inductor",
            compile_mode="canny",
            precisions=("fp16", "bf16"),
            peak_tflops=peak_tflops,
        )


# ================================================================ small helpers (no torch at import)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    from t2vz_core.errors import is_out_of_memory

    return is_out_of_memory(exc)


def measure(device: str, fn):
    """(seconds, peak device bytes or None on CPU, result) of fn(), with the device synchronized."""
    import torch

    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return seconds, peak, result


def gib(value) -> str:
    return "n/a (CPU)" if value is None else f"{value / 2**30:.2f}"


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def quiet_libraries() -> None:
    """No progress bars, info logs or deprecation warnings from diffusers/transformers in the console."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    # The deprecated TextToVideoZero pipelines (the recipe) call meshgrid / grid_sample the old way.
    warnings.filterwarnings("ignore", message=".*(meshgrid|grid_sample|align_corners).*", category=UserWarning)


# ================================================================ models from the committed configs


def load_config(settings: Settings, name: str) -> dict:
    return json.loads((settings.configs / f"{name}.json").read_text())


def build(settings: Settings, name: str, kind: str, dtype, seed: int):
    """One random-weight module from bench/configs/<name>.json, initialised on the device, cast to dtype."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = load_config(settings, name)
    torch.manual_seed(seed)
    with torch.device(settings.device):
        if kind == "unet":
            module = UNet2DConditionModel.from_config(config)
        elif kind == "vae":
            module = AutoencoderKL.from_config(config)
        elif kind == "controlnet":
            module = ControlNetModel.from_config(config)
            # A fresh ControlNet's zero convolutions output zero; trained ones do not.
            for conv in [
                module.controlnet_cond_embedding.conv_out,
                module.controlnet_mid_block,
                *module.controlnet_down_blocks,
            ]:
                conv.reset_parameters()
        elif kind == "text":
            module = CLIPTextModel(CLIPTextConfig(**config))
        elif kind == "text_projection":
            module = CLIPTextModelWithProjection(CLIPTextConfig(**config))
        else:
            raise ValueError(kind)
    return module.to(dtype=dtype).eval().requires_grad_(False)


def scheduler(settings: Settings):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(load_config(settings, "scheduler"))


def tokenizer():
    from t2vz_core.tiny import _tokenizer

    return _tokenizer()


class ModelSet:
    """Components built on the device (MODULES: attribute -> (config, kind, seed)) and the
    pipelines assembled from them, which share those modules."""

    MODULES: dict[str, tuple[str, str, int]] = {}

    def __init__(self, settings: Settings, dtype):
        self.settings, self.dtype = settings, dtype
        for name, (config, kind, seed) in self.MODULES.items():
            setattr(self, name, build(settings, config, kind, dtype, seed))
        self.tokenizer = tokenizer()
        self.pipes = self._quiet_pipes()

    def _pipes(self) -> dict:
        raise NotImplementedError

    def _quiet_pipes(self) -> dict:
        pipes = self._pipes()
        for pipe in pipes.values():
            pipe.set_progress_bar_config(disable=True)
        return pipes

    def cast(self, dtype):
        """A deep copy in another dtype (the originals stay as they are)."""
        other = copy.copy(self)
        other.dtype = dtype
        for name in self.MODULES:
            setattr(other, name, copy.deepcopy(getattr(self, name)).to(dtype=dtype))
        other.pipes = other._quiet_pipes()
        return other


class SD15(ModelSet):
    """SD1.5: UNet, ControlNet, Instruct-Pix2Pix UNet, VAE, CLIP ViT-L."""

    MODULES = {
        "unet": ("sd15_unet", "unet", 0),
        "controlnet": ("sd15_controlnet", "controlnet", 1),
        "pix2pix_unet": ("pix2pix_unet", "unet", 2),
        "vae": ("sd15_vae", "vae", 3),
        "text_encoder": ("sd15_text_encoder", "text", 4),
    }

    def _pipes(self) -> dict:
        from diffusers import (
            StableDiffusionControlNetPipeline,
            StableDiffusionInstructPix2PixPipeline,
            StableDiffusionPipeline,
        )
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            TextToVideoZeroPipeline,
        )

        common = dict(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        return {
            "canny": StableDiffusionControlNetPipeline(
                unet=self.unet, controlnet=self.controlnet, scheduler=scheduler(self.settings), **common
            ),
            "pix2pix": StableDiffusionInstructPix2PixPipeline(
                unet=self.pix2pix_unet, scheduler=scheduler(self.settings), **common
            ),
            "text2video": StableDiffusionPipeline(unet=self.unet, scheduler=scheduler(self.settings), **common),
            "recipe_text2video": TextToVideoZeroPipeline(unet=self.unet, scheduler=scheduler(self.settings), **common),
        }

    def save(self, folder: Path) -> dict[str, Path]:
        """diffusers folders (sd, controlnet-canny, pix2pix) for the runs through t2vz_core.models and the CLI."""
        paths = {"sd": folder / "sd", "controlnet": folder / "controlnet-canny", "pix2pix": folder / "pix2pix"}
        if not (paths["pix2pix"] / "model_index.json").exists():
            self.pipes["text2video"].save_pretrained(paths["sd"], safe_serialization=True)
            self.controlnet.save_pretrained(paths["controlnet"], safe_serialization=True)
            self.pipes["pix2pix"].save_pretrained(paths["pix2pix"], safe_serialization=True)
        return paths


class SDXL(ModelSet):
    """SDXL base: UNet, ControlNet, VAE and two text encoders."""

    MODULES = {
        "unet": ("sdxl_unet", "unet", 10),
        "controlnet": ("sdxl_controlnet", "controlnet", 11),
        "vae": ("sdxl_vae", "vae", 12),
        "text_encoder": ("sdxl_text_encoder", "text", 13),
        "text_encoder_2": ("sdxl_text_encoder_2", "text_projection", 14),
    }

    def __init__(self, settings: Settings, dtype):
        self.tokenizer_2 = tokenizer()
        super().__init__(settings, dtype)

    def _pipes(self) -> dict:
        from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero_sdxl import (
            TextToVideoZeroSDXLPipeline,
        )

        common = dict(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
        )
        return {
            "canny": StableDiffusionXLControlNetPipeline(
                controlnet=self.controlnet, scheduler=scheduler(self.settings), add_watermarker=False, **common
            ),
            "text2video": StableDiffusionXLPipeline(
                scheduler=scheduler(self.settings), add_watermarker=False, **common
            ),
            "recipe_text2video": TextToVideoZeroSDXLPipeline(scheduler=scheduler(self.settings), **common),
        }


# ================================================================ inputs (the same frames for both sides)


def control_maps(count: int, size: int):
    """Canny-like edge maps (uint8, count x size x size x 3): a ring and a bar that move."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    maps = np.zeros((count, size, size, 3), np.uint8)
    for i in range(count):
        cx, cy, r = size * (0.3 + 0.4 * i / max(count, 1)), size * 0.5, size * 0.2
        ring = np.abs(np.hypot(xx - cx, yy - cy) - r) < max(1.0, size / 256)
        bar = np.abs(xx - (size - cx)) < max(1, size // 256)
        maps[i][ring | bar] = 255
    return maps


def source_frames(count: int, size: int):
    """RGB frames (uint8) for pix2pix: a gradient with a square that moves."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (xx * 255 // max(size - 1, 1)).astype(np.uint8)
        frames[i, ..., 1] = (yy * 255 // max(size - 1, 1)).astype(np.uint8)
        frames[i, ..., 2] = 96
        x0 = int((size // 2) * i / max(count, 1))
        frames[i, size // 4 : size // 2, x0 : x0 + size // 4] = (230, 40, 40)
    return frames


def conditioning(mode: str, count: int, size: int):
    if mode == "text2video":
        return None
    return control_maps(count, size) if mode == "canny" else source_frames(count, size)


# ================================================================ the two implementations


def run_t2vz(
    settings: Settings,
    pipe,
    mode: str,
    frames: int,
    chunk: int | None,
    steps: int,
    size: int,
    cond=None,
    output_dtype=None,
):
    """t2vz_core.engine.generate on the pipeline: uint8 (frames, H, W, 3), or float32 with output_dtype."""
    import numpy as np

    from t2vz_core.engine import GenerationRequest, generate

    t0, t1 = (settings.t0, settings.t1) if steps == settings.steps else (0, 1)
    request = GenerationRequest(
        mode=mode,
        prompt=PROMPTS[mode],
        num_inference_steps=steps,
        width=size,
        height=size,
        chunk_size=chunk,
        video_length=frames if mode == "text2video" else None,
        t0=t0,
        t1=t1,
        seed=0,
    )
    return generate(pipe, request, cond, output_dtype=output_dtype or np.uint8)


@contextlib.contextmanager
def recipe_processors(groups: int, *models):
    """diffusers' CrossFrameAttnProcessor2_0 on the models for the duration (the docs recipe)."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0,
    )

    originals = [model.attn_processors for model in models]
    for model in models:
        model.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=groups))
    try:
        yield
    finally:
        for model, processors in zip(models, originals):
            model.set_attn_processor(dict(processors))


def recipe_chunks(frames: int, chunk: int) -> list[list[int]]:
    """The docs' long-video recipe: chunk_ids = arange(0, n, chunk - 1), frame 0 prepended to each."""
    import numpy as np

    starts = list(np.arange(0, frames, chunk - 1))
    ends = starts[1:] + [frames]
    return [[0, *range(int(a), int(b))] for a, b in zip(starts, ends)]


def run_recipe(settings: Settings, family, mode: str, frames: int, chunk: int, steps: int, size: int, cond=None):
    """The diffusers Text2Video-Zero docs recipe, per chunk with frame 0 prepended; uint8 frames."""
    import numpy as np
    import torch
    from PIL import Image

    sdxl = isinstance(family, SDXL)
    t0, t1 = (settings.t0, settings.t1) if steps == settings.steps else (0, 1)
    generator = torch.Generator(settings.device)
    out = []
    if mode == "text2video":
        pipe = family.pipes["recipe_text2video"]
        for ids in recipe_chunks(frames, chunk):
            generator.manual_seed(0)
            result = pipe(
                prompt=PROMPTS[mode],
                video_length=len(ids),
                height=size,
                width=size,
                num_inference_steps=steps,
                generator=generator,
                frame_ids=ids,
                t0=t0,
                t1=t1,
                output_type="np",
            )
            out.append(np.asarray(result.images)[1:])
        return (np.concatenate(out) * 255).round().astype(np.uint8)
    images = [Image.fromarray(frame) for frame in cond]
    if mode == "canny":
        pipe = family.pipes["canny"]
        vsf = 2 ** (len(family.vae.config.block_out_channels) - 1)
        # The docs: one latent, repeated for every frame of the chunk.
        latent = torch.randn(
            (1, 4, size // vsf, size // vsf),
            generator=generator.manual_seed(0),
            device=settings.device,
            dtype=family.dtype,
        )
        with recipe_processors(2, family.unet, family.controlnet):
            for ids in recipe_chunks(frames, chunk):
                result = pipe(
                    prompt=[PROMPTS[mode]] * len(ids),
                    image=[images[i] for i in ids],
                    height=size,
                    width=size,
                    num_inference_steps=steps,
                    latents=latent.repeat(len(ids), 1, 1, 1),
                    output_type="np",
                )
                out.append(result.images[1:])
    elif mode == "pix2pix" and not sdxl:
        pipe = family.pipes["pix2pix"]
        with recipe_processors(3, family.pix2pix_unet):
            for ids in recipe_chunks(frames, chunk):
                generator.manual_seed(0)
                result = pipe(
                    prompt=[PROMPTS[mode]] * len(ids),
                    image=[images[i] for i in ids],
                    num_inference_steps=steps,
                    generator=generator,
                    output_type="np",
                )
                out.append(result.images[1:])
    else:
        raise ValueError(mode)
    return (np.concatenate(out) * 255).round().astype(np.uint8)


def t2vz_pipe(family, mode: str):
    return family.pipes["text2video" if mode == "text2video" else mode]


def warmup(settings: Settings, fn) -> None:
    """A short run of the same shapes first (kernel selection, allocator), unless warmup_steps is 0."""
    if settings.warmup_steps:
        fn(settings.warmup_steps)


# ================================================================ results file


class Results:
    """Every section's numbers and notes; rewrites the markdown (and json) after each section."""

    def __init__(self, path: Path, settings: Settings):
        self.path, self.settings = path, settings
        self.data: dict = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "sections": {},
        }
        self.started = time.perf_counter()

    def put(self, section: str, value: dict) -> None:
        self.data["sections"][section] = value
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.path.with_suffix(".json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        self.path.write_text(render(self.data))


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(data: dict) -> str:
    s = data["settings"]
    sections = data["sections"]
    smoke = s["smoke"]
    out = ["# t2vz on a GPU: real model sizes (bench/gpu.py)", ""]
    if smoke:
        out += [
            "**SMOKE RUN**: tiny models on the CPU, a few frames and steps; these numbers say only that the "
            "code runs. The real figures come from `make bench-gpu` on a CUDA machine.",
            "",
        ]
    out += [
        f"Settings: {s['size']} px (SDXL {s['sdxl_size']} px), {s['steps']} steps, CFG 7.5, {s['frames']} frames, "
        f"chunk sizes {', '.join(map(str, s['chunks']))}, dtype {s['dtype_name']}, device {s['device']}. "
        f"Total time of this run: {data.get('elapsed_s')} s.",
        "",
    ]
    for name in SECTIONS:
        value = sections.get(name)
        out += [f"## {name}", ""]
        if value is None:
            out += ["not run (see --only / --budget-s)", ""]
            continue
        if value.get("skipped"):
            out += [f"skipped: {value['skipped']}", ""]
            continue
        if value.get("error"):
            out += [f"**error**: {value['error']}", ""]
        out += RENDER.get(name, render_plain)(value)
        for note in value.get("notes", []):
            out.append(f"- {note}")
        out.append("")
    return "\n".join(out) + "\n"


def render_plain(value: dict) -> list[str]:
    rows = [
        [k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v]
        for k, v in value.items()
        if k not in ("notes", "error")
    ]
    return [table(["what", "value"], rows), ""]


def render_throughput(value: dict) -> list[str]:
    rows = [
        [
            r["family"],
            r["mode"],
            r["chunk"],
            r["frames"],
            r["t2vz_fps"],
            gib(r["t2vz_peak"]),
            r["recipe_fps"],
            gib(r["recipe_peak"]),
            r["ratio"],
        ]
        for r in value.get("rows", [])
    ]
    out = [
        table(
            [
                "model",
                "mode",
                "chunk",
                "frames",
                "t2vz frames/s",
                "t2vz peak GiB",
                "recipe frames/s",
                "recipe peak GiB",
                "t2vz / recipe",
            ],
            rows,
        ),
        "",
    ]
    if value.get("goal"):
        out += [table(["goal (canny, chunk 8)", "value", "target", "met"], value["goal"]), ""]
    return out


def render_rows(key: str, headers: list[str], fields: list[str]):
    def render_fn(value: dict) -> list[str]:
        rows = [[r.get(f) if not f.endswith("peak") else gib(r.get(f)) for f in fields] for r in value.get(key, [])]
        extra = {k: v for k, v in value.items() if k not in (key, "notes", "error")}
        return [table(headers, rows), ""] + (render_plain(extra) if extra else [])

    return render_fn


RENDER = {
    "throughput": render_throughput,
    "sdxl": render_throughput,
    "flops": render_rows(
        "models",
        ["model", "input shape", "TFLOP per call", "TFLOP per sample"],
        ["model", "shape", "tflop_call", "tflop_sample"],
    ),
    "finite": render_rows(
        "rows", ["dtype", "model", "mode", "finite", "min", "max"], ["dtype", "family", "mode", "finite", "min", "max"]
    ),
    "precision": render_rows(
        "rows",
        ["dtype", "mode", "mean abs diff", "max abs diff", "tolerance (mean)", "ok"],
        ["dtype", "mode", "mean_abs", "max_abs", "tolerance", "ok"],
    ),
    "max_chunk": render_rows(
        "rows",
        ["mode", "px", "largest chunk that fits", "peak GiB at it", "probes"],
        ["mode", "size", "max_chunk", "peak", "probes"],
    ),
    "offload": render_rows(
        "rows",
        ["offload", "frames/s", "peak GiB", "max abs diff vs none", "ok"],
        ["offload", "fps", "peak", "max_abs_diff", "ok"],
    ),
    "fast_paths": render_rows(
        "rows",
        ["fast path", "setting", "value", "unit", "against default"],
        ["path", "setting", "value", "unit", "vs_default"],
    ),
    "compile": render_rows(
        "rows",
        [
            "variant",
            "first video s (incl. compile)",
            "graphs compiled in 1st video",
            "graphs compiled in 2nd video",
            "frames/s (2nd video)",
            "vs eager",
        ],
        ["variant", "first_s", "graphs_first", "graphs_second", "fps", "vs_eager"],
    ),
}


# ================================================================ sections


class Bench:
    def __init__(self, settings: Settings, results: Results, tmp: Path, budget_s: float | None):
        self.s, self.results, self.tmp, self.budget_s = settings, results, tmp, budget_s
        self.started = time.perf_counter()
        self._sd: SD15 | None = None
        self.saved: dict[str, Path] | None = None
        self.server = None
        self.env: dict | None = None

    @property
    def sd(self) -> SD15:
        if self._sd is None:
            log("building SD1.5 components (UNet, ControlNet, Instruct-Pix2Pix UNet, VAE, CLIP ViT-L) on the device")
            self._sd = SD15(self.s, torch_dtype(self.s.dtype_name))
        return self._sd

    def left_s(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - (time.perf_counter() - self.started)

    def run(self, names: list[str]) -> None:
        self.names = names
        try:
            for name in names:
                if self.left_s() < ESTIMATE_S[name] * (0.05 if self.s.smoke else 1):
                    self.results.put(
                        name,
                        {
                            "skipped": f"time budget: {self.left_s():.0f} s left, the section needs "
                            f"about {ESTIMATE_S[name]} s"
                        },
                    )
                    continue
                log(f"section {name}")
                started = time.perf_counter()
                try:
                    value = getattr(self, f"section_{name}")()
                except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
                    traceback.print_exc()
                    value = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    free_memory(self.s.device)
                value["seconds"] = round(time.perf_counter() - started, 1)
                self.results.put(name, value)
        finally:
            if self.server is not None:
                from run_all import stop_server

                stop_server(self.server)

    # ------------------------------------------------------------ env
    def section_env(self) -> dict:
        import torch

        info = {
            "host": platform.node(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda (torch build)": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
        for name in ("diffusers", "transformers", "accelerate", "prefect"):
            info[name] = metadata.version(name)
        if self.s.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            info.update(
                gpu=props.name,
                capability=f"{props.major}.{props.minor}",
                memory_gib=round(props.total_memory / 2**30, 1),
                driver=nvidia_smi_field("driver_version"),
                peak_fp16_tflops=self.peak_tflops(),
            )
        else:
            info.update(
                gpu="none (CPU smoke run)",
                cpu=platform.processor() or platform.machine(),
                threads=torch.get_num_threads(),
            )
        return info

    def peak_tflops(self) -> float | None:
        if self.s.peak_tflops:
            return self.s.peak_tflops
        if self.s.device != "cuda":
            return None
        import torch

        name = torch.cuda.get_device_name(0)
        return next((tflops for key, tflops in PEAK_FP16_TFLOPS if key in name), None)

    # ------------------------------------------------------------ flops
    def section_flops(self) -> dict:
        """FLOPs of one call at the real shape, counted by torch.utils.flop_counter.FlopCounterMode on the device."""
        import torch

        sd, s = self.sd, self.s
        vsf = 2 ** (len(sd.vae.config.block_out_channels) - 1)
        latent = s.size // vsf
        rows = []
        embeds = torch.randn(2, 77, sd.text_encoder.config.hidden_size, device=s.device, dtype=sd.dtype)
        x = torch.randn(2, 4, latent, latent, device=s.device, dtype=sd.dtype)
        cond = torch.rand(2, 3, s.size, s.size, device=s.device, dtype=sd.dtype)
        t = torch.tensor(500, device=s.device)
        calls = {
            "SD1.5 UNet": lambda: sd.unet(x, t, encoder_hidden_states=embeds),
            "SD1.5 ControlNet": lambda: sd.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=cond),
            "Instruct-Pix2Pix UNet": lambda: sd.pix2pix_unet(torch.cat([x, x], 1), t, encoder_hidden_states=embeds),
        }
        for model, call in calls.items():
            flops = count_flops(call)
            rows.append(
                {
                    "model": model,
                    "shape": f"2x{'8' if 'Pix' in model else '4'}x{latent}x{latent}",
                    "flops_call": flops,
                    "tflop_call": round(flops / 1e12, 4),
                    "tflop_sample": round(flops / 2e12, 4),
                }
            )
        by = {r["model"]: r["tflop_sample"] for r in rows}
        peak = self.peak_tflops()
        per_frame_unet = by["SD1.5 UNet"] * 2 * s.steps  # CFG: two UNet samples per frame and step
        per_frame_both = (by["SD1.5 UNet"] + by["SD1.5 ControlNet"]) * 2 * s.steps
        value = {
            "models": rows,
            "peak_fp16_tflops": peak,
            "canny_tflop_per_frame_unet": round(per_frame_unet, 3),
            "canny_tflop_per_frame_unet_controlnet": round(per_frame_both, 3),
            "limit_fps_unet": round(peak / per_frame_unet, 3) if peak else None,
            "limit_fps_unet_controlnet": round(peak / per_frame_both, 3) if peak else None,
            "notes": [
                "Counted with torch.utils.flop_counter.FlopCounterMode around one call at batch 2 (CFG) and "
                f"{s.size} px ({latent}x{latent} latents) on the run's device: matmuls, convolutions and "
                "attention (SDPA), 2 FLOPs per multiply-add; elementwise ops and norms are not counted.",
                "limit_fps = peak / (TFLOP per sample x 2 CFG branches x steps): the frames/s the GPU's dense "
                "fp16 tensor peak allows. The issue's goal uses the UNet alone; canny also runs the ControlNet "
                "every step, so the UNet+ControlNet limit is the one a canny run can actually approach.",
                "Peak: NVIDIA data-sheet dense fp16 (no sparsity) by GPU name, or --peak-tflops.",
            ],
        }
        self.flops = value
        return value

    # ------------------------------------------------------------ throughput (SD1.5)
    def section_throughput(self) -> dict:
        s = self.s
        rows = self.grid(self.sd, ("canny", "pix2pix", "text2video"), s.frames, s.chunks, s.size)
        value = {
            "rows": rows,
            "goal": self.goal(rows),
            "notes": [
                f"One run: for each mode and chunk size, a warm-up of {s.warmup_steps} steps on the same shapes, then "
                "t2vz and the recipe timed back to back (device synchronized; peak = torch.cuda.max_memory_allocated "
                "reset before each timed run, weights included).",
                "t2vz: t2vz_core.engine.generate with the default Runtime fast paths (denoising step-major, anchor "
                "frame evaluated once per step, one VAE call per chunk). Recipe: the diffusers docs' pipelines with "
                "CrossFrameAttnProcessor2_0 (batch_size 2, or 3 for Instruct-Pix2Pix), called per chunk with frame 0 "
                "prepended (chunk_ids = arange(0, n, chunk - 1)); text2video: TextToVideoZeroPipeline with frame_ids, "
                "reseeded per chunk. Both decode to uint8 arrays (recipe: output_type='np').",
                "Same weights (one set of modules), same control maps / source frames, same steps, CFG 7.5.",
            ],
        }
        self.throughput = rows
        return value

    def grid(self, family, modes, frames: int, chunks, size: int) -> list[dict]:
        import torch

        from t2vz_core.engine import fast_paths
        from t2vz_core.runtime import Runtime

        s = self.s
        rows = []
        for mode in modes:
            cond = conditioning(mode, frames, size)
            pipe = t2vz_pipe(family, mode)
            fast_paths.apply(pipe, Runtime(device=s.device), torch.device(s.device))  # the defaults
            for chunk in chunks:

                def ours(steps, chunk=chunk):
                    return run_t2vz(s, pipe, mode, frames, chunk, steps, size, cond)

                def theirs(steps, chunk=chunk):
                    return run_recipe(s, family, mode, frames, chunk, steps, size, cond)

                log(f"  {mode} chunk {chunk}: {frames} frames, {s.steps} steps")
                warmup(s, ours)
                t_ours, peak_ours, out_ours = measure(s.device, lambda: ours(s.steps))
                free_memory(s.device)
                warmup(s, theirs)
                t_theirs, peak_theirs, out_theirs = measure(s.device, lambda: theirs(s.steps))
                free_memory(s.device)
                assert out_ours.shape == out_theirs.shape, (out_ours.shape, out_theirs.shape)
                rows.append(
                    {
                        "family": "SDXL" if isinstance(family, SDXL) else "SD1.5",
                        "mode": mode,
                        "chunk": chunk,
                        "frames": frames,
                        "t2vz_s": round(t_ours, 3),
                        "t2vz_fps": round(frames / t_ours, 3),
                        "t2vz_peak": peak_ours,
                        "recipe_s": round(t_theirs, 3),
                        "recipe_fps": round(frames / t_theirs, 3),
                        "recipe_peak": peak_theirs,
                        "ratio": round(t_theirs / t_ours, 3),
                    }
                )
                log(f"    t2vz {frames / t_ours:.3f} frames/s, recipe {frames / t_theirs:.3f} frames/s")
        return rows

    def goal(self, rows: list[dict], best_fps: float | None = None, best_label: str = "default fast paths"):
        row = next(
            (r for r in rows if r["mode"] == "canny" and r["chunk"] == (8 if not self.s.smoke else self.s.chunks[0])),
            None,
        )
        if row is None:
            return None
        fps = best_fps or row["t2vz_fps"]
        out = [
            [
                f"t2vz / recipe frames/s ({best_label})",
                round(fps / row["recipe_fps"], 3),
                f">= {GOAL_RATIO}",
                fps / row["recipe_fps"] >= GOAL_RATIO,
            ]
        ]
        flops = getattr(self, "flops", None)
        if flops and flops.get("limit_fps_unet"):
            share = fps / flops["limit_fps_unet"]
            out.append(
                [
                    f"share of the UNet-FLOPs limit ({flops['limit_fps_unet']} frames/s)",
                    round(share, 3),
                    f">= {GOAL_PEAK_SHARE}",
                    share >= GOAL_PEAK_SHARE,
                ]
            )
            both = fps / flops["limit_fps_unet_controlnet"]
            out.append(
                [
                    f"share of the UNet+ControlNet limit ({flops['limit_fps_unet_controlnet']} frames/s)",
                    round(both, 3),
                    "(informative)",
                    "",
                ]
            )
        else:
            out.append(["share of the FLOPs limit", None, f">= {GOAL_PEAK_SHARE}", "no GPU peak known"])
        return out

    # ------------------------------------------------------------ fast paths
    def section_fast_paths(self) -> dict:
        import torch

        from t2vz_core.engine import fast_paths
        from t2vz_core.runtime import Runtime

        s, sd = self.s, self.sd
        chunk = 8 if not s.smoke else s.chunks[0]
        frames = s.frames
        pipe, cond = sd.pipes["canny"], conditioning("canny", frames, s.size)
        rows = []

        def fps(steps=s.steps, label=""):
            warmup(s, lambda n: run_t2vz(s, pipe, "canny", frames, chunk, n, s.size, cond))
            seconds, peak, _ = measure(s.device, lambda: run_t2vz(s, pipe, "canny", frames, chunk, steps, s.size, cond))
            log(f"    {label}: {frames / seconds:.3f} frames/s")
            return frames / seconds, peak

        default_fps, default_peak = fps(label="default")
        rows.append(
            {
                "path": "default Runtime()",
                "setting": "",
                "value": round(default_fps, 3),
                "unit": "frames/s",
                "vs_default": 1.0,
            }
        )
        # channels_last
        fast_paths.apply(pipe, Runtime(device=s.device, channels_last=True), torch.device(s.device))
        cl_fps, _ = fps(label="channels_last")
        fast_paths.undo(pipe)
        rows.append(
            {
                "path": "channels_last",
                "setting": "on",
                "value": round(cl_fps, 3),
                "unit": "frames/s",
                "vs_default": round(cl_fps / default_fps, 3),
            }
        )
        # SDPA kernel of the cross-frame attention
        attention = cross_frame_attention_kernels(s, sd, frames=chunk)
        for backend, info in attention["backends"].items():
            rows.append(
                {
                    "path": "cross-frame attention SDPA",
                    "setting": backend,
                    "value": info.get("ms", info.get("error")),
                    "unit": "ms per call" if "ms" in info else "",
                    "vs_default": info.get("vs_auto"),
                }
            )
        # VAE decoding: one call per chunk (default) against frame by frame (vae_slicing)
        decode = vae_decode_speed(s, sd, chunk)
        rows.append(
            {
                "path": "VAE decode batched by chunk",
                "setting": f"{chunk} frames per call",
                "value": decode["batched_fps"],
                "unit": "frames/s",
                "vs_default": 1.0,
            }
        )
        rows.append(
            {
                "path": "VAE decode frame by frame",
                "setting": "vae_slicing",
                "value": decode["sliced_fps"],
                "unit": "frames/s",
                "vs_default": round(decode["sliced_fps"] / decode["batched_fps"], 3),
            }
        )
        # TF32: only fp32 work is affected
        tf32 = tf32_speed(s, sd, chunk)
        rows += tf32
        return {
            "rows": rows,
            "attention": attention,
            "notes": [
                f"canny, {frames} frames, chunk {chunk}, {s.steps} steps; one fast path changed at a time "
                "(t2vz_core.engine.fast_paths.apply, then undo).",
                "Cross-frame attention: one CrossFrameAttnProcessor call of the first down block at the real shape "
                f"(query ({chunk}*S) rows per guidance branch against the anchor's S), timed under "
                "torch.nn.attention.sdpa_kernel restricted to each backend; 'auto_picks' is the backend torch "
                "chooses for that call's exact arguments (torch._fused_sdp_choice).",
                "TF32 changes fp32 work only (the fp16 default is unaffected): measured in fp32, "
                f"{s.check_steps} steps, tf32 on vs off.",
                "VAE: the engine decodes one chunk of frames per VAE call (generate.decode_spans); vae_slicing "
                "decodes them one by one.",
            ],
        }

    # ------------------------------------------------------------ finite outputs in fp16 / bf16
    def section_finite(self) -> dict:
        import numpy as np

        s = self.s
        rows = []
        for name in s.precisions:
            dtype = torch_dtype(name)
            families = [
                (
                    "SD1.5",
                    self.sd if self.sd.dtype == dtype else self.sd.cast(dtype),
                    s.check_size or s.size,
                    s.check_modes,
                )
            ]
            sdxl = SDXL(s, dtype)
            families.append(
                ("SDXL", sdxl, s.check_size or s.sdxl_size, tuple(m for m in s.check_modes if m != "pix2pix"))
            )
            for family_name, family, size, modes in families:
                for mode in modes:
                    out = run_t2vz(
                        s,
                        t2vz_pipe(family, mode),
                        mode,
                        s.check_frames,
                        2,
                        s.check_steps,
                        size,
                        conditioning(mode, s.check_frames, size),
                        output_dtype=np.float32,
                    )
                    rows.append(
                        {
                            "dtype": name,
                            "family": family_name,
                            "mode": mode,
                            "finite": bool(np.isfinite(out).all()),
                            "min": float(np.nanmin(out)),
                            "max": float(np.nanmax(out)),
                        }
                    )
            rows.append(sdxl_vae_raw(s, sdxl, name))
            del sdxl, families
            free_memory(s.device)
        notes = [
            f"t2vz generate, {s.check_frames} frames, chunk 2 (record and replay of the anchor), "
            f"{s.check_steps} steps, frames as float32 before the uint8 rounding (NaN would stay NaN).",
            "SDXL's VAE: the engine decodes in fp32 when the fp16 VAE's config says force_upcast (as the SDXL "
            "pipelines do); the 'SDXL VAE alone' row decodes random latents in the dtype itself, no upcast.",
            "Random weights show that every dtype path runs and stays finite; the fp16 overflow of the "
            "trained SDXL VAE (Text2Video-Zero issue 80) needs trained weights, hence the upcast.",
        ]
        if s.smoke:
            notes.append(
                "CPU smoke: fp16 is not run (Runtime refuses fp16 on cpu); bf16 only for canny at 16 px "
                "(this CPU's bf16 convolutions take aten's slow reference kernel)."
            )
        return {"rows": rows, "all_finite": all(r["finite"] for r in rows), "notes": notes}

    # ------------------------------------------------------------ fp16 / bf16 against fp32
    def section_precision(self) -> dict:
        import numpy as np
        import torch

        from t2vz_core.engine import fast_paths

        s = self.s
        fast_paths.set_tf32(torch.device(s.device), False)  # the reference is plain fp32
        size = s.check_size or s.size
        ref_family = self.sd.cast(torch.float32) if self.sd.dtype != torch.float32 else self.sd
        refs = {
            mode: run_t2vz(
                s,
                t2vz_pipe(ref_family, mode),
                mode,
                s.check_frames,
                2,
                s.check_steps,
                size,
                conditioning(mode, s.check_frames, size),
                output_dtype=np.float32,
            )
            for mode in s.check_modes
        }
        if ref_family is not self.sd:
            del ref_family
        free_memory(s.device)
        rows = []
        for name in s.precisions:
            family = self.sd if self.sd.dtype == torch_dtype(name) else self.sd.cast(torch_dtype(name))
            for mode, ref in refs.items():
                out = run_t2vz(
                    s,
                    t2vz_pipe(family, mode),
                    mode,
                    s.check_frames,
                    2,
                    s.check_steps,
                    size,
                    conditioning(mode, s.check_frames, size),
                    output_dtype=np.float32,
                )
                diff = np.abs(out.astype(np.float64) - ref)
                rows.append(
                    {
                        "dtype": name,
                        "mode": mode,
                        "mean_abs": round(float(diff.mean()), 5),
                        "max_abs": round(float(diff.max()), 4),
                        "tolerance": round(TOLERANCE[name], 5),
                        "ok": bool(diff.mean() <= TOLERANCE[name]),
                    }
                )
            del family
            free_memory(s.device)
        fast_paths.set_tf32(torch.device(s.device), True)
        return {
            "rows": rows,
            "notes": [
                f"The same weights (fp16-representable, so the fp32 copy is exact) in fp32 with TF32 off, and in each "
                f"dtype; {s.check_frames} frames, chunk 2, {s.check_steps} steps; pixel values in [0, 1].",
                "Tolerance: mean |difference| <= 2/255 for fp16, 6/255 for bf16 (bf16 keeps 8 mantissa bits to "
                "fp16's 11). Max differences are reported, not bounded: a few pixels near a rounding edge of the "
                "DDIM trajectory may move further.",
            ],
        }

    # ------------------------------------------------------------ runs through the CLI (child processes)
    def models_on_disk(self) -> dict[str, Path]:
        if self.saved is None:
            log("saving the SD1.5 models for the CLI runs")
            self.saved = self.sd.save(self.tmp / "models")
        return self.saved

    def cli_env(self) -> dict:
        """Child-process environment: the Prefect server of PREFECT_API_URL when one is configured,
        else a server of this run (started once, not measured)."""
        if self.env is None:
            api = os.environ.get("PREFECT_API_URL")
            if not api:
                from run_all import start_server

                self.server, api = start_server(self.tmp)
            env = {k: v for k, v in os.environ.items() if k not in ("T2VZ_FAULTS", "T2VZ_GPU_LIMIT")}
            env.update(
                HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1",
                PREFECT_HOME=str(self.tmp / "client-home"),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_LOGGING_LEVEL="WARNING",
                PREFECT_API_URL=api,
                T2VZ_ALLOWED_ROOTS=str(self.tmp),
            )
            self.env = env
        return self.env

    def api_client(self):
        """Prefect's client on the children's server (in this process: the `prefect` CLI would
        cost a child process ~1.5 s of CPU per call)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.cli_env()["PREFECT_API_URL"])

    def manifest(self, name: str, rows: list[dict]) -> Path:
        from run_all import write_csv

        return write_csv(self.tmp / f"{name}.csv", rows)

    def row(self, job_id: str, mode: str, frames: int, chunk: int, steps: int, seed: int = 1) -> dict:
        """A manifest row on the saved models; rows must differ (seed), or the content-addressed work
        folder would run two identical rows once."""
        models = self.models_on_disk()
        row = {
            "job_id": job_id,
            "mode": mode,
            "prompt": PROMPTS[mode],
            "seed": seed,
            "num_inference_steps": steps,
            "chunk_size": chunk,
            "resolution": self.s.size,
            "output": "mp4",
        }
        if mode == "text2video":
            row.update(model=str(models["sd"]), video_length=frames)
        else:
            source = self.tmp / "media" / f"{job_id}.mp4"
            write_video(source, source_frames(frames, self.s.size), fps=8)
            row.update(source=str(source), model=str(models["pix2pix" if mode == "pix2pix" else "sd"]))
            if mode == "canny":
                row.update(controlnet=str(models["controlnet"]), control="extract")
        return row

    def cli_child(self, manifest: Path, out: Path, spec: dict, env: dict | None = None) -> subprocess.Popen:
        args = [
            "run",
            str(manifest),
            "--output-dir",
            str(out),
            "--no-progress",
            "--device",
            self.s.device,
            "--dtype",
            self.s.dtype_name,
            "--max-workers",
            str(spec.pop("workers", 2)),
        ]
        spec = {"record": str(out.with_suffix(".holds.jsonl")), "summary": str(out.with_suffix(".child.json")), **spec}
        log_file = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - handed to the process
        try:
            return subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(spec), *args],
                cwd=ROOT,
                env=env or self.cli_env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        finally:
            log_file.close()

    def wait_child(self, proc: subprocess.Popen, out: Path, timeout: float = 1800) -> dict:
        rc = proc.wait(timeout)
        log_text = out.with_suffix(".log").read_text()
        summary_path = out.with_suffix(".child.json")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        report_path = out / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        holds_path = out.with_suffix(".holds.jsonl")
        holds = [json.loads(line) for line in holds_path.read_text().splitlines()] if holds_path.exists() else []
        if rc != 0:
            raise RuntimeError(f"t2vz run exited {rc}: {log_text[-3000:]}")
        return {"rc": rc, "summary": summary, "report": report, "holds": holds, "log_tail": log_text[-1500:]}

    def section_e2e(self) -> dict:
        s = self.s
        rows = [
            self.row(job_id, mode, s.e2e_frames, s.chunks[0], s.e2e_steps, seed=seed)
            for seed, (job_id, mode) in enumerate(
                (("canny-a", "canny"), ("pix2pix", "pix2pix"), ("text2video", "text2video"), ("canny-b", "canny")),
                start=1,
            )
        ]
        manifest = self.manifest("e2e", rows)
        out = self.tmp / "e2e-out"
        sampler = UtilizationSampler(s.device)
        sampler.start()
        started = time.time()
        proc = self.cli_child(manifest, out, {})
        result = self.wait_child(proc, out)
        ended = time.time()
        sampler.stop()
        holds = result["holds"]
        frames = sum(int(r.get("frames") or 0) for r in result["summary"].get("rows", []))
        statuses = [r.get("status") for r in result["report"].get("rows", [])]
        first = min(h["start"] for h in holds) if holds else started
        gen_union = union_seconds([(h["start"], h["end"]) for h in holds])
        gaps = [
            round(b["start"] - a["end"], 3)
            for a, b in zip(sorted(holds, key=lambda h: h["start"]), sorted(holds, key=lambda h: h["start"])[1:])
        ]
        cpu_steps = result["summary"].get("cpu_step_seconds", 0.0)
        value = {
            "rows": len(rows),
            "statuses": statuses,
            "generations": len(holds),
            "frames": frames,
            "wall_s": round(ended - started, 2),
            "fps_end_to_end": round(frames / (ended - started), 3) if frames else None,
            "run_s (CLI main, after imports)": result["summary"].get("run_s"),
            "fps_run": round(frames / result["summary"]["run_s"], 3)
            if frames and result["summary"].get("run_s")
            else None,
            "generation_s (sum of held device time)": round(sum(h["end"] - h["start"] for h in holds), 2),
            "generation_share_after_first_start": round(gen_union / max(ended - first, 1e-9), 3),
            "gaps_between_generations_s": gaps,
            "cpu_steps_s (decode+control+encode+publish, all rows)": round(cpu_steps, 2),
            "busy_sampler": sampler.kind,
            "busy_share_whole_process": sampler.share(started, ended),
            "busy_share_after_first_generation": sampler.share(first, ended),
            "samples": len(sampler.samples),
        }
        value["overlap_realized"] = bool(gaps) and sum(gaps) < 0.5 * cpu_steps
        value["notes"] = [
            f"`t2vz run` in a child process: 4 rows (canny, pix2pix, text2video, canny), {s.e2e_frames} frames each at "
            f"{s.size} px, {s.e2e_steps} steps, chunk {s.chunks[0]}, --max-workers 2, Prefect server started "
            "before (not measured); wall = the whole child process (interpreter, imports, model loads, flow).",
            f"Busy share: a thread samples the device every 0.1 s ({sampler.kind}); NVML's utilization.gpu is the "
            "share of the last sample period in which a kernel ran; the figure is the mean over the window.",
            "Overlap: generations are held one at a time per device (tasks.policy.hold_device); the gaps between "
            "one generation and the next are the device's idle time between rows. Overlap is realized when those "
            "gaps are well below the rows' CPU step time (another row's decode/maps/encode ran during a generation).",
        ]
        if s.device != "cuda":
            value["notes"].append(
                "CPU smoke run: the sampler reads the machine's CPU busy share from /proc/stat instead of a GPU's."
            )
        return value

    def section_oom_retry(self) -> dict:
        import torch

        s = self.s
        small, big = s.chunks[0], 2 * s.chunks[0]
        frames = big
        spec: dict = {}
        if s.device == "cuda":
            sd = self.sd
            cond = conditioning("canny", frames, s.size)
            peaks = {}
            for chunk in (small, big):
                _, peaks[chunk], _ = measure(
                    s.device,
                    lambda chunk=chunk: run_t2vz(s, sd.pipes["canny"], "canny", frames, chunk, 2, s.size, cond),
                )
            total = torch.cuda.get_device_properties(0).total_memory
            # The child loads the same models (SD + ControlNet, fp16) as this process's canny pipe uses;
            # the Instruct-Pix2Pix UNet is also resident here, so its size comes off the measured peaks.
            extra = sum(p.numel() * p.element_size() for p in sd.pix2pix_unet.parameters())
            cap = (peaks[small] + peaks[big]) / 2 - extra
            spec["memory_fraction"] = min(max(cap / total, 0.01), 1.0)
            how = (
                f"child's allocator capped at {cap / 2**30:.2f} GiB (torch.cuda.set_per_process_memory_fraction"
                f" {spec['memory_fraction']:.4f}), between the peaks of chunk {small} "
                f"({(peaks[small] - extra) / 2**30:.2f} GiB) and chunk {big} ({(peaks[big] - extra) / 2**30:.2f} GiB)"
            )
        else:
            spec["simulate_oom_above"] = 2 * small  # UNet batch rows (CFG doubles them)
            how = (
                f"CPU smoke: the UNet raises torch.OutOfMemoryError for batches above {2 * small} rows "
                "(simulated; the real allocator cap runs on the GPU)"
            )
        manifest = self.manifest("oom", [self.row("oom-canny", "canny", frames, big, 2)])
        out = self.tmp / "oom-out"
        if "gpu_limit" in self.names:
            # Neither check measures speed, so this child is also the first of gpu_limit's two
            # processes under one Prefect slot; the second starts with it.
            limited = self.create_gpu_limit()
            proc = self.cli_child(manifest, out, {**spec, "workers": 1}, env=limited)
            self.gpu_limit_workers = [(proc, out), *self.start_gpu_limit_workers(limited, 1)]
        else:
            proc = self.cli_child(manifest, out, {**spec, "workers": 1})
        result = self.wait_child(proc, out)
        row = (result["report"].get("rows") or [{}])[0]
        sidecar = read_sidecar(out, row)
        effective = (sidecar.get("resolved") or {}).get("effective_chunk_size")
        ooms = result["summary"].get("ooms", {})
        ok = row.get("status") == "ok" and effective == small and sum(ooms.values()) >= 1
        return {
            "requested_chunk": big,
            "effective_chunk": effective,
            "status": row.get("status"),
            "out_of_memory_errors": sum(ooms.values()),
            "halved_after_oom": ok,
            "how": how,
            "notes": [
                "One canny row, chunk_size "
                f"{big}, {frames} frames, through `t2vz run` (Prefect task retries): the generate task "
                "fails with out-of-memory, tasks.policy records it, the retry runs with the chunk halved; "
                "the sidecar's effective_chunk_size says what ran."
            ],
        }

    def create_gpu_limit(self) -> dict:
        """A Prefect concurrency limit of one slot, this run's own (on a configured server,
        `t2vz-gpu` may be in real use); the child environment that uses it."""
        self.gpu_limit = f"t2vz-gpu-bench-{os.getpid()}"
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        with self.api_client() as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=self.gpu_limit, limit=1))
        return {**self.cli_env(), "T2VZ_GPU_LIMIT": self.gpu_limit}

    def start_gpu_limit_workers(self, limited: dict, count: int) -> list[tuple[subprocess.Popen, Path]]:
        """`count` `t2vz run` processes (one canny row each) in the `limited` environment, with
        their output folders."""
        s = self.s
        workers = []
        for seed, name in enumerate(("worker-a", "worker-b")[-count:], start=10):
            manifest = self.manifest(
                name, [self.row(name, "canny", s.check_frames + 1, s.chunks[0], s.check_steps, seed=seed)]
            )
            out = self.tmp / f"{name}-out"
            workers.append((self.cli_child(manifest, out, {"workers": 1}, env=limited), out))
        return workers

    def section_gpu_limit(self) -> dict:
        if not getattr(self, "gpu_limit_workers", None):  # oom_retry did not run: two workers of its own
            self.gpu_limit_workers = self.start_gpu_limit_workers(self.create_gpu_limit(), 2)
        try:
            results = [self.wait_child(proc, out) for proc, out in self.gpu_limit_workers]
        finally:
            self.gpu_limit_workers = []
            with contextlib.suppress(Exception), self.api_client() as client:  # best effort
                client.delete_global_concurrency_limit_by_name(self.gpu_limit)
        holds = sorted((h for r in results for h in r["holds"]), key=lambda h: h["start"])
        overlaps = [round(a["end"] - b["start"], 3) for a, b in zip(holds, holds[1:]) if b["start"] < a["end"]]
        processes = len({h["pid"] for h in holds})
        return {
            "workers": len(results),
            "generations": len(holds),
            "processes_that_generated": processes,
            "overlaps_s": overlaps,
            "one_at_a_time": processes == 2 and not overlaps,
            "intervals": [
                [round(h["start"] - holds[0]["start"], 2), round(h["end"] - holds[0]["start"], 2), h["pid"]]
                for h in holds
            ],
            "notes": [
                "Two `t2vz run` processes started together (one canny row each, --max-workers 1): "
                "when oom_retry runs, its child is the first (its out-of-memory attempt holds the "
                "device too, so it records two generations), else a worker of its own. "
                f"T2VZ_GPU_LIMIT={self.gpu_limit}, a global concurrency limit of 1 slot created through "
                "Prefect's client (this run's own: t2vz-gpu may be in use on a configured server); "
                "each child records when its generation held the device (inside "
                "tasks.policy.hold_device). Separate processes, so only the Prefect limit can serialise "
                "them (the in-process lock does not span processes)."
            ],
        }

    def section_offload(self) -> dict:
        import numpy as np
        import torch

        from t2vz_core.models import load_pipeline, reset_cache
        from t2vz_core.runtime import Runtime

        s = self.s
        if s.device != "cuda":
            return {
                "skipped": "offload moves weights between CPU memory and an accelerator: no GPU in this run "
                "(Runtime refuses offload on cpu)"
            }
        models = self.models_on_disk()
        frames, chunk = s.check_frames + 1, 2
        cond = conditioning("canny", frames, s.size)
        rows, reference = [], None
        self._sd = None  # free the bench's own copy: offload is about memory
        free_memory(s.device)
        for offload in ("none", "model", "sequential"):
            reset_cache()
            free_memory(s.device)
            try:
                runtime = Runtime(device="cuda", dtype=s.dtype_name, offload=offload)
                pipe = load_pipeline("sd", models["sd"], models["controlnet"], runtime)
                seconds, peak, out = measure(
                    s.device, lambda: run_t2vz(s, pipe, "canny", frames, chunk, s.check_steps, s.size, cond)
                )
                reference = out if reference is None else reference
                diff = int(np.abs(out.astype(int) - reference).max())
                rows.append(
                    {
                        "offload": offload,
                        "fps": round(frames / seconds, 3),
                        "peak": peak,
                        "max_abs_diff": diff,
                        "ok": diff <= 2,
                    }
                )
            except Exception as exc:  # noqa: BLE001 - a failing offload mode is a result
                rows.append(
                    {
                        "offload": offload,
                        "fps": None,
                        "peak": None,
                        "max_abs_diff": None,
                        "ok": f"{type(exc).__name__}: {exc}"[:300],
                    }
                )
            finally:
                pipe = None
        reset_cache()
        free_memory(s.device)
        torch.cuda.reset_peak_memory_stats()
        return {
            "rows": rows,
            "notes": [
                f"t2vz_core.models.load_pipeline from the saved random-weight models (canny, {frames} frames, chunk "
                f"{chunk}, {s.check_steps} steps) with Runtime(offload=...): enable_model_cpu_offload / "
                "enable_sequential_cpu_offload; peak = device memory while generating; output compared with offload "
                "none (max |difference| in uint8 levels, ok <= 2). Sequential offload with CLIP embeddings has a "
                "known accelerate failure: an error here is that failure."
            ],
        }

    def section_max_chunk(self) -> dict:
        s = self.s
        sd = self.sd
        rows = []
        memory = simulated_oom(s.simulated_memory_rows) if s.simulated_memory_rows else contextlib.nullcontext()
        with memory:
            for mode, which in s.max_chunk_cases:
                size = getattr(s, which)
                fits, peak, probes = largest_chunk(s, sd, mode, size)
                rows.append({"mode": mode, "size": size, "max_chunk": fits, "peak": peak, "probes": probes})
                log(f"  {mode} {size} px: largest chunk {fits}")
        notes = []
        if s.simulated_memory_rows:
            notes.append(
                f"CPU smoke: canny at {s.size} px only, the 'memory' simulated (UNet batches above "
                f"{s.simulated_memory_rows} rows raise torch.OutOfMemoryError), so the search itself runs."
            )
        return {
            "rows": rows,
            "notes": notes
            + [
                "Probe: one generate with video_length = chunk_size = c (one UNet batch of c frames per guidance "
                "branch, "
                "one VAE call of c frames), 2 steps; torch.OutOfMemoryError means it does not fit. c doubles from 8 "
                f"until it fails (or reaches {s.max_chunk_cap}), then a binary search; the device's other resident "
                "models (the SD1.5 set of this bench: UNet, ControlNet, Instruct-Pix2Pix UNet, VAE, text encoder, "
                "fp16) "
                "take their share, as a worker's cache would."
            ],
        }

    def section_sdxl(self) -> dict:

        s = self.s
        if self._sd is not None and s.device == "cuda":
            self._sd = None  # SDXL gets the device to itself
            free_memory(s.device)
        sdxl = SDXL(s, torch_dtype(s.dtype_name))
        rows = self.grid(sdxl, ("canny", "text2video"), s.sdxl_frames, s.sdxl_chunks, s.sdxl_size)
        del sdxl
        free_memory(s.device)
        return {
            "rows": rows,
            "notes": [
                f"SDXL base UNet, SDXL ControlNet, CLIP-L + OpenCLIP bigG at {s.sdxl_size} px, {s.sdxl_frames} frames, "
                f"{s.steps} steps; recipe: StableDiffusionXLControlNetPipeline with CrossFrameAttnProcessor2_0 per "
                "chunk, "
                "TextToVideoZeroSDXLPipeline with frame_ids. The SD1.5 set is freed first."
            ],
        }

    def section_compile(self) -> dict:
        import torch

        from t2vz_core.engine import fast_paths
        from t2vz_core.runtime import Runtime

        s = self.s
        if s.device == "cuda" and self._sd is None:
            free_memory(s.device)
        sd = self.sd
        mode = s.compile_mode
        # Smoke: one chunk, one step (each traced graph costs seconds of CPU even with the eager backend).
        chunk, frames, steps = (8, s.frames, s.steps) if not s.smoke else (None, 2, 1)
        pipe, cond = t2vz_pipe(sd, mode), conditioning(mode, frames, s.size)

        def video():
            return run_t2vz(s, pipe, mode, frames, chunk, steps, s.size, cond)

        warmup(s, lambda n: run_t2vz(s, pipe, mode, frames, chunk, n, s.size, cond))
        eager_s, _, _ = measure(s.device, video)
        rows = [
            {
                "variant": "eager (default)",
                "first_s": None,
                "graphs_first": None,
                "graphs_second": None,
                "fps": round(frames / eager_s, 3),
                "vs_eager": 1.0,
            }
        ]
        variants = [("compile", Runtime(device=s.device, compile=True))]
        if not s.smoke:
            variants.append(("compile + channels_last", Runtime(device=s.device, compile=True, channels_last=True)))
        for label, runtime in variants:
            torch._dynamo.reset()
            fast_paths.apply(pipe, runtime, torch.device(s.device), compile_backend=s.compile_backend)
            graphs0 = dynamo_graphs()
            first_s, _, _ = measure(s.device, video)
            graphs1 = dynamo_graphs()
            second_s, _, _ = measure(s.device, video)
            graphs2 = dynamo_graphs()
            fast_paths.undo(pipe)
            rows.append(
                {
                    "variant": label,
                    "first_s": round(first_s, 1),
                    "graphs_first": graphs1 - graphs0,
                    "graphs_second": graphs2 - graphs1,
                    "fps": round(frames / second_s, 3),
                    "vs_eager": round(eager_s / second_s, 3),
                }
            )
            log(
                f"    {label}: first video {first_s:.1f} s, then {frames / second_s:.3f} frames/s, "
                f"graphs {graphs1 - graphs0} then {graphs2 - graphs1}"
            )
        torch._dynamo.reset()
        value = {
            "rows": rows,
            "no_recompiles_in_second_video": all(r["graphs_second"] in (None, 0) for r in rows),
            "backend": s.compile_backend,
            "notes": [
                f"{mode}, {frames} frames, chunk {chunk}, {steps} steps. torch.compile (module.compile, backend "
                f"{s.compile_backend}) of the UNet and the ControlNet via Runtime(compile=True). Graphs = "
                "torch._dynamo.utils.counters['stats']['unique_graphs'] added during each video: the first "
                "video compiles one graph per (model, batch shape, anchor record/replay), the second video of "
                "the same shapes must compile none (no recompiles across chunks of one shape).",
                "The first video's time includes compiling; frames/s are from the second video.",
            ],
        }
        if s.smoke:
            value["notes"].append(
                "CPU smoke: the 'eager' backend traces and guards like inductor but generates no "
                "code, so the speed figure means nothing here."
            )
        best = max(rows, key=lambda r: r["fps"])
        if getattr(self, "throughput", None):
            value["goal"] = self.goal(self.throughput, best["fps"], f"best: {best['variant']}")
        return value


# ================================================================ measurement helpers


def count_flops(call) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cross_frame_attention_kernels(s: Settings, sd: SD15, frames: int) -> dict:
    """Time one cross-frame self-attention call per SDPA backend and name the kernels torch picks."""
    import torch
    from torch.nn.attention import sdpa_kernel

    from t2vz_core.engine.attention import AnchorKV, CrossFrameAttnProcessor
    from t2vz_core.engine.fast_paths import sdpa_backends

    # The first self-attention: the highest resolution, where the attention costs most.
    attn = next(m for name, m in sd.unet.named_modules() if name.endswith("attn1"))
    vsf = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    tokens = (s.size // vsf) ** 2
    groups = 2
    hidden = torch.randn(groups * frames, tokens, attn.to_q.in_features, device=s.device, dtype=sd.dtype)
    state = AnchorKV(groups)
    processor = CrossFrameAttnProcessor(state, "probe")

    def call():
        state.mode = "record"
        with torch.no_grad():
            return processor(attn, hidden)

    def timed(repeats: int = 10) -> float:
        call()
        synchronize(s.device)
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        synchronize(s.device)
        return (time.perf_counter() - started) / repeats * 1000

    result = {
        "query_shape": f"({groups}, heads {attn.heads}, {frames}*{tokens}, {attn.to_q.out_features // attn.heads})",
        "kv_shape": f"({groups}, heads {attn.heads}, {tokens}, {attn.to_q.out_features // attn.heads})",
        "backends": {},
    }
    auto_ms = timed()
    result["backends"]["auto"] = {"ms": round(auto_ms, 3), "vs_auto": 1.0}
    for name in ("flash", "efficient", "cudnn", "math"):
        try:
            with sdpa_kernel(sdpa_backends(name)):
                ms = timed()
            result["backends"][name] = {"ms": round(ms, 3), "vs_auto": round(auto_ms / ms, 3)}
        except RuntimeError as exc:
            result["backends"][name] = {"error": f"cannot run this call: {str(exc).splitlines()[0][:160]}"}
    result["auto_picks"] = sdpa_choice(attn, state, frames, tokens)
    return result


def sdpa_choice(attn, state, frames: int, tokens: int) -> str:
    """The SDPA backend torch picks (torch._fused_sdp_choice) for the cross-frame call's exact
    arguments: the recorded anchor K/V, a query of the same dtype and layout, no mask, no dropout."""
    import torch
    from torch.nn.attention import SDPBackend

    key, value = state.kv["probe"]
    groups, heads, _, head_dim = key.shape
    query = torch.empty(groups, frames * tokens, heads, head_dim, device=key.device, dtype=key.dtype).transpose(1, 2)
    index = torch._fused_sdp_choice(query, key, value, None, 0.0, False, scale=attn.scale)
    return next((name for name, b in SDPBackend.__members__.items() if int(b) == int(index)), str(index))


def vae_decode_speed(s: Settings, sd: SD15, frames: int) -> dict:
    import torch

    from t2vz_core.engine.vae_decode import decode_latents

    pipe = sd.pipes["canny"]
    vsf = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    latents = torch.randn(frames, 4, s.size // vsf, s.size // vsf, device=s.device, dtype=sd.dtype)
    out = {}
    for label, slicing in (("batched", False), ("sliced", True)):
        sd.vae.enable_slicing() if slicing else sd.vae.disable_slicing()
        with torch.no_grad():
            decode_latents(pipe, latents[:1], False)
            seconds, peak, _ = measure(s.device, lambda: decode_latents(pipe, latents, False))
        out[f"{label}_fps"] = round(frames / seconds, 3)
        out[f"{label}_peak"] = peak
    sd.vae.disable_slicing()
    return out


def tf32_speed(s: Settings, sd: SD15, chunk: int) -> list[dict]:
    import torch

    from t2vz_core.engine import fast_paths

    device = torch.device(s.device)
    if fast_paths.set_tf32(device, True) is None:
        return [
            {
                "path": "TF32",
                "setting": "n/a",
                "value": None,
                "unit": "",
                "vs_default": "no effect here (needs a CUDA GPU of compute capability >= 8.0)",
            }
        ]
    fp32 = sd.cast(torch.float32)
    frames = chunk
    cond = conditioning("canny", frames, s.size)
    times = {}
    for enabled in (False, True):
        fast_paths.set_tf32(device, enabled)
        run_t2vz(s, fp32.pipes["canny"], "canny", frames, chunk, 1 if not s.smoke else 2, s.size, cond)
        times[enabled], _, _ = measure(
            s.device, lambda: run_t2vz(s, fp32.pipes["canny"], "canny", frames, chunk, s.check_steps, s.size, cond)
        )
    fast_paths.set_tf32(device, True)
    fp32 = None  # frees the fp32 copy (a del would leave the lambda above a dangling name)
    free_memory(s.device)
    return [
        {
            "path": "TF32 (fp32 run)",
            "setting": "off",
            "value": round(frames / times[False], 3),
            "unit": "frames/s",
            "vs_default": "",
        },
        {
            "path": "TF32 (fp32 run)",
            "setting": "on (default)",
            "value": round(frames / times[True], 3),
            "unit": "frames/s",
            "vs_default": round(times[False] / times[True], 3),
        },
    ]


def sdxl_vae_raw(s: Settings, sdxl: SDXL, dtype_name: str) -> dict:
    import numpy as np
    import torch

    vsf = 2 ** (len(sdxl.vae.config.block_out_channels) - 1)
    size = s.check_size or s.sdxl_size
    latents = torch.randn(
        1,
        4,
        size // vsf,
        size // vsf,
        device=s.device,
        dtype=sdxl.dtype,
        generator=torch.Generator(s.device).manual_seed(0),
    )
    with torch.no_grad():
        image = sdxl.vae.decode(latents / sdxl.vae.config.scaling_factor, return_dict=False)[0].float().cpu().numpy()
    return {
        "dtype": dtype_name,
        "family": "SDXL VAE alone",
        "mode": "decode, no upcast",
        "finite": bool(np.isfinite(image).all()),
        "min": float(np.nanmin(image)),
        "max": float(np.nanmax(image)),
    }


def largest_chunk(s: Settings, sd: SD15, mode: str, size: int) -> tuple[int | None, int | None, int]:
    pipe = t2vz_pipe(sd, mode)
    probes = 0
    peaks: dict[int, int | None] = {}

    def fits(chunk: int) -> bool:
        nonlocal probes
        probes += 1
        cond = conditioning(mode, chunk, size)
        try:
            _, peaks[chunk], _ = measure(s.device, lambda: run_t2vz(s, pipe, mode, chunk, chunk, 2, size, cond))
            return True
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is an answer
            if not is_oom(exc):
                raise
            return False
        finally:
            cond = None
            free_memory(s.device)

    low, high = 1, None
    chunk = min(8, s.max_chunk_cap)
    while chunk <= s.max_chunk_cap:
        if fits(chunk):
            low = chunk
            if chunk == s.max_chunk_cap:
                break
            chunk = min(chunk * 2, s.max_chunk_cap)
        else:
            high = chunk
            break
    if high is None:
        return low, peaks.get(low), probes
    if low == 1:
        low = 1 if not fits(2) else 2
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return (low if low >= 2 else None), peaks.get(low), probes


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def nvidia_smi_field(field_name: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


class UtilizationSampler:
    """A thread sampling device busy share every 0.1 s: NVML (pynvml, via torch.cuda.utilization),
    else `nvidia-smi --query-gpu=utilization.gpu`, else (no GPU) the CPU busy share from /proc/stat."""

    def __init__(self, device: str, period_s: float = 0.1):
        self.device, self.period_s = device, period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-sampler", daemon=True)
        self.kind = self._pick()

    def _pick(self) -> str:
        if self.device == "cuda":
            try:
                import torch

                torch.cuda.utilization(0)
                return "NVML (torch.cuda.utilization)"
            except Exception:  # noqa: BLE001 - pynvml missing: fall back
                if shutil.which("nvidia-smi"):
                    return "nvidia-smi utilization.gpu"
                return "none"
        return "/proc/stat CPU busy share" if Path("/proc/stat").exists() else "none"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        if self.kind.startswith("nvidia-smi"):
            self._run_smi()
            return
        previous = _cpu_times()
        while not self._stop.wait(self.period_s):
            if self.kind.startswith("NVML"):
                import torch

                self.samples.append((time.time(), torch.cuda.utilization(0) / 100))
            elif self.kind.startswith("/proc"):
                now = _cpu_times()
                busy, total = now[0] - previous[0], now[1] - previous[1]
                previous = now
                self.samples.append((time.time(), busy / total if total else 0.0))

    def _run_smi(self) -> None:
        proc = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-i",
                "0",
                f"--loop-ms={int(self.period_s * 1000)}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            while not self._stop.is_set():
                line = proc.stdout.readline()
                if not line:
                    break
                with contextlib.suppress(ValueError):
                    self.samples.append((time.time(), float(line.strip()) / 100))
        finally:
            proc.terminate()
            proc.wait(5)

    def share(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.samples if start <= t <= end]
        return round(sum(values) / len(values), 3) if values else None


def _cpu_times() -> tuple[float, float]:
    parts = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def write_video(path: Path, frames, fps: int) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_sidecar(out: Path, row: dict) -> dict:
    """A row's sidecar (OUTPUT_DIR/<job_id>.json) as plain JSON; {} when missing."""
    try:
        return json.loads((Path(out) / f"{row.get('job_id')}.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def simulated_oom(limit_rows: int):
    """CPU smoke only: UNet calls on more than limit_rows rows raise torch.OutOfMemoryError, as a
    GPU's allocator would for a batch that does not fit (the code paths after it are the real ones)."""
    import torch
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward

    def forward(self, sample, *args, **kwargs):
        if sample.shape[0] > limit_rows:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated by bench/gpu.py: batch {sample.shape[0]} > {limit_rows} rows)"
            )
        return original(self, sample, *args, **kwargs)

    UNet2DConditionModel.forward = forward
    try:
        yield
    finally:
        UNet2DConditionModel.forward = original


# ================================================================ child: one `t2vz run` with probes


def child(spec: dict, cli_args: list[str]) -> int:
    """Runs flows.cli.main(cli_args) in this process, recording each generation's hold of the device
    (inside tasks.policy.hold_device), optionally with a capped allocator or a simulated OOM."""
    from t2vz_core.row_steps import warm_imports

    warm_imports()
    import torch

    quiet_libraries()
    if spec.get("memory_fraction"):
        torch.cuda.set_per_process_memory_fraction(float(spec["memory_fraction"]))
    stack = contextlib.ExitStack()  # held until the process ends: the simulation must outlive this block
    if spec.get("simulate_oom_above"):
        stack.enter_context(simulated_oom(int(spec["simulate_oom_above"])))
    from flows import cli
    from tasks import policy

    real_hold = policy.hold_device
    record = Path(spec["record"])
    guard = threading.Lock()

    @contextlib.contextmanager
    def recording_hold(device, gpu_limit=None):
        with real_hold(device, gpu_limit):
            start = time.time()
            try:
                yield
            finally:
                with guard, open(record, "a") as handle:
                    handle.write(
                        json.dumps(
                            {
                                "start": start,
                                "end": time.time(),
                                "pid": os.getpid(),
                                "thread": threading.current_thread().name,
                            }
                        )
                        + "\n"
                    )

    policy.hold_device = recording_hold
    # A successful retry forgets its key's OOM count (policy.forget_out_of_memory): count them here.
    ooms: dict[str, int] = {}
    real_note = policy.note_out_of_memory

    def counting_note(key, exc):
        seen = real_note(key, exc)
        if seen:
            ooms[key] = ooms.get(key, 0) + 1
        return seen

    policy.note_out_of_memory = counting_note
    started = time.perf_counter()
    with stack:
        rc = cli.main(cli_args)
    run_s = time.perf_counter() - started
    out = Path(cli_args[cli_args.index("--output-dir") + 1])
    rows, cpu_s = [], 0.0
    report = out / "report.json"
    for line in json.loads(report.read_text()).get("rows", []) if report.exists() else []:
        sidecar = read_sidecar(out, line)
        steps = sidecar.get("steps") or {}
        cpu_s += sum(
            float((steps.get(k) or {}).get("seconds") or 0) for k in ("decode", "control", "encode", "publish")
        )
        rows.append(
            {
                "job_id": line.get("job_id"),
                "status": line.get("status"),
                "frames": (sidecar.get("resolved") or {}).get("frames"),
            }
        )
    Path(spec["summary"]).write_text(
        json.dumps({"rc": rc, "run_s": run_s, "rows": rows, "cpu_step_seconds": cpu_s, "ooms": ooms})
    )
    return rc


# ================================================================ main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(json.loads(argv[1]), argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (tests this script)")
    parser.add_argument(
        "--out", type=Path, help="results markdown (default bench/GPU_RESULTS.md; --smoke: a temp folder)"
    )
    parser.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--skip", help="comma-separated sections not to run")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="skip the sections that would not finish within this many seconds (in the order above)",
    )
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense fp16 peak when its name is not known")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (models, logs, outputs)")
    parser.add_argument("--list-sections", action="store_true", help="print the sections, one a line, and exit")
    args = parser.parse_args(argv)
    if args.list_sections:
        print("\n".join(SECTIONS))
        return 0

    names = list(SECTIONS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.skip:
        names = [n for n in names if n not in {x.strip() for x in args.skip.split(",")}]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; expected {', '.join(SECTIONS)}")

    settings = Settings.make(args.smoke, args.peak_tflops)
    tmp = Path(tempfile.mkdtemp(prefix="t2vz-bench-gpu-"))
    if args.out:
        out = args.out
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix="t2vz-bench-gpu-smoke-")) / "GPU_RESULTS.md"
    else:
        out = RESULTS
    if args.smoke and out.resolve() == RESULTS.resolve():
        parser.error("--smoke never writes bench/GPU_RESULTS.md (the real GPU results); pass another --out")

    from t2vz_core.row_steps import warm_imports

    warm_imports()  # torch, diffusers and the engine at once, the garbage collector paused meanwhile
    import torch

    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or use --smoke to test the script on the CPU")
    quiet_libraries()
    if args.smoke:
        torch.set_num_threads(1)  # tiny models: more threads only add synchronisation
    results = Results(out, settings)
    log(f"results -> {out}; temporary folder {tmp}")
    try:
        Bench(settings, results, tmp, args.budget_s).run(names)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {time.perf_counter() - results.started:.1f} s: {out}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
