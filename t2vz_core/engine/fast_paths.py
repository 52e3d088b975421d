"""The runtime's fast paths, applied to a loaded pipeline: torch.compile, channels_last, TF32 and
the SDPA kernels of the attention (see t2vz_core.runtime.Runtime for the options and defaults).

`apply(pipe, runtime, device)` is called by t2vz_core.models.ModelCache on every pipeline it hands
out; it is idempotent (a module already set up is left alone), so a base pipeline and its
ControlNet variants, which share the UNet and VAE, can all pass through it. What it did is
recorded in ``pipe._t2vz_fast_paths`` (bench/gpu.py reports it).

Two fast paths need no option because they are how the engine always works: the VAE decodes a
whole chunk of frames per call (t2vz_core.engine.generate.decode_spans; `vae_slicing` turns that
into frame by frame), and rows overlap their CPU work (decode, control maps, encode) with another
row's generation when the flow runs rows in threads (`t2vz run --max-workers`).

Not applied: torch.compile together with CPU offload. accelerate's offload hooks move weights in
the module's forward, which a compiled graph would either break at or bake in.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# Dynamo recompiles a code object at most this often before it falls back to eager, silently.
# The UNet and ControlNet share diffusers' forward wrapper, and the cross-frame attention has a
# record and a replay variant per batch shape, so the default (8) can be reached by one video.
RECOMPILE_LIMIT = 64
_MARK = "_t2vz_fast_paths"
_FORWARD_BEFORE = "_t2vz_forward_before_sdpa"


def cache_key(runtime: Any) -> tuple:
    """The options that change loaded modules (a pipeline set up one way is not reused another)."""
    return (runtime.compile, runtime.channels_last, runtime.attention_backend)


def sdpa_backends(name: str) -> list | None:
    """torch.nn.attention.SDPBackend list for an attention_backend name; None for "auto"."""
    from torch.nn.attention import SDPBackend

    return {
        "auto": None,
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "math": [SDPBackend.MATH],
    }[name]


def denoising_models(pipe) -> list[tuple[str, torch.nn.Module]]:
    """The UNet and, when there is one, the ControlNet: where every denoising step's time goes."""
    models = [("unet", pipe.unet)]
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, torch.nn.Module):
        models.append(("controlnet", controlnet))
    return models


def apply(pipe, runtime: Any, device: torch.device, *, compile_backend: str = "inductor") -> dict:
    """Set up `pipe`'s modules for `runtime`'s fast paths; returns (and records) what applies.

    compile_backend: torch.compile's backend ("inductor"; tests use "eager", which traces and
    guards the same way without generating code)."""
    applied = {
        "tf32": set_tf32(device, runtime.tf32),
        "channels_last": [],
        "attention_backend": runtime.attention_backend,
        "compile": [],
    }
    models = denoising_models(pipe)
    if runtime.channels_last:
        for name, module in [*models, ("vae", pipe.vae)]:
            if _first_time(module, "channels_last"):
                module.to(memory_format=torch.channels_last)
            applied["channels_last"].append(name)
    backends = sdpa_backends(runtime.attention_backend)
    if backends is not None:
        for _, module in models:
            if _first_time(module, "sdpa"):
                _restrict_attention(module, backends)
    if runtime.compile and runtime.offload != "none":
        log.info("compile skipped: it does not combine with offload=%s", runtime.offload)
    elif runtime.compile:
        _raise_recompile_limit()
        for name, module in models:
            if _first_time(module, "compile"):
                module.compile(backend=compile_backend)
            applied["compile"].append(name)
    pipe._t2vz_fast_paths = applied
    return applied


def set_tf32(device: torch.device, enabled: bool) -> bool | None:
    """TF32 for fp32 matmuls and convolutions on a CUDA GPU of compute capability >= 8.0.

    Process-wide settings (torch has no per-module switch). Returns whether TF32 is on, None
    where it does not apply (CPU, MPS, older GPUs). Uses torch's fp32_precision API (mixing it
    with the legacy allow_tf32 flags makes torch raise); only the CUDA backends are touched, so
    CPU (oneDNN) precision stays as it is."""
    if device.type != "cuda":
        return None
    try:
        if torch.cuda.get_device_capability(device) < (8, 0):
            return None
    except (RuntimeError, AssertionError):  # no usable CUDA after all (a driverless machine)
        return None
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    return enabled


def _first_time(module: torch.nn.Module, what: str) -> bool:
    done = module.__dict__.setdefault(_MARK, set())
    if what in done:
        return False
    done.add(what)
    return True


def _restrict_attention(module: torch.nn.Module, backends: list) -> None:
    """Every scaled_dot_product_attention inside the module's forward may use only `backends`.

    The restriction wraps forward (the instance attribute, so accelerate's offload hooks, which
    wrap forward too, keep it); torch.compile traces the context manager like any other code."""
    from torch.nn.attention import sdpa_kernel

    original = module.forward
    module.__dict__[_FORWARD_BEFORE] = module.__dict__.get("forward")  # None: the class's own

    @functools.wraps(original)
    def forward(*args, **kwargs):
        with sdpa_kernel(backends):
            return original(*args, **kwargs)

    module.forward = forward


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def undo(pipe) -> None:
    """Back to plain modules: contiguous memory format, no compile, no attention restriction
    (bench/gpu.py compares the fast paths one at a time on one set of weights). TF32 stays as set."""
    for _, module in [*denoising_models(pipe), ("vae", pipe.vae)]:
        done = module.__dict__.pop(_MARK, set())
        if "channels_last" in done:
            module.to(memory_format=torch.contiguous_format)
        if "sdpa" in done:
            before = module.__dict__.pop(_FORWARD_BEFORE)
            if before is None:
                module.__dict__.pop("forward", None)  # the class's forward again
            else:
                module.forward = before
        if "compile" in done:
            module._compiled_call_impl = None
    if hasattr(pipe, "_t2vz_fast_paths"):
        pipe._t2vz_fast_paths = None
