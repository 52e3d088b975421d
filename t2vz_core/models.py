"""Loading diffusers pipelines once per process.

- `Runtime` (t2vz_core.runtime, re-exported): where and how to run (device, dtype, CPU offload,
  VAE slicing/tiling, pickle policy, fast paths: applied by t2vz_core.engine.fast_paths).
- `load_pipeline(family, model_id, controlnet_id, runtime)`: the pipeline for a job, from a per-process
  `ModelCache`. A base model is loaded once; its ControlNet variants reuse its components through
  `from_pipe`, so pose and canny jobs on one base share a single UNet.
- `detect_family(model_id)`: "sd" | "sdxl" | "pix2pix" from the model's configs, without loading weights.
- `model_fingerprint(model_id, revision=None)` (t2vz_core.fingerprints, re-exported): a stable
  id+revision string for cache keys, without loading weights (digests memoized on disk).
- `cache_stats()` / `reset_cache()`: what the cache did (tests and benches assert "no reload").

A model id is a hub id ("org/name") or a local diffusers folder: both go through the same
`from_pretrained` call. Weights are read from safetensors only unless `allow_pickle=True`
(pickle files can run code when loaded); remote code is never trusted. A model may also be one
original-layout checkpoint file, and a row may add LoRAs, a replacement VAE and single-file
configs: see t2vz_core.model_sources (the `sources=` argument).
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from t2vz_core.errors import InputError, TransientError, is_network_error
from t2vz_core.fingerprints import (  # noqa: F401 - model_fingerprint and digest_memo_dir are re-exported
    check_revision_target,
    digest_memo_dir,
    model_fingerprint,
)
from t2vz_core.model_sources import (
    LoraState,
    ModelSources,
    is_single_file,
    load_single_file_controlnet,
    load_single_file_pipeline,
    load_vae,
    single_file_family,
    sync_loras,
    unet_family,
    unet_kind,
)
from t2vz_core.runtime import OFFLOADS, Runtime, mps_available  # noqa: F401 - Runtime is re-exported

Family = Literal["sd", "sdxl", "pix2pix"]
FAMILIES: tuple[str, ...] = ("sd", "sdxl", "pix2pix")
DEFAULT_MAX_LOADED = 2


# Pipeline class per (family, with ControlNet).
_PIPELINE_CLASSES = {
    ("sd", False): "StableDiffusionPipeline",
    ("sd", True): "StableDiffusionControlNetPipeline",
    ("sdxl", False): "StableDiffusionXLPipeline",
    # The published T2V-Zero docs build the SD1.5 ControlNet pipeline here by mistake.
    ("sdxl", True): "StableDiffusionXLControlNetPipeline",
    ("pix2pix", False): "StableDiffusionInstructPix2PixPipeline",
}


# ---------------------------------------------------------------------------- model cache


@dataclass
class _Resident:
    """One base model in memory, with its ControlNet variants (which share its components)."""

    pipe: Any
    variants: dict[str, Any] = field(default_factory=dict)
    offload_owner: Any = None  # the pipeline whose offload hooks are installed right now
    loras: LoraState = field(default_factory=LoraState)  # on the UNet/text encoders the variants share


class ModelCache:
    """Pipelines of this process, keyed by (family, model, dtype, device, offload, pickle policy).

    At most `max_loaded` distinct base models stay resident (least recently used goes first,
    and the accelerator's cache is emptied). Thread-safe: concurrent calls load a model once.
    With offload, a base pipeline and its ControlNet variants share modules but each needs its
    own offload hooks; the hooks are re-installed when the other one is requested, so don't run
    two pipelines of the same base at the same time with offload.
    """

    def __init__(self, max_loaded: int = DEFAULT_MAX_LOADED):
        if max_loaded < 1:
            raise InputError(f"max_loaded must be >= 1, got {max_loaded}")
        self.max_loaded = max_loaded
        self._resident: OrderedDict[tuple, _Resident] = OrderedDict()
        self._lock = threading.RLock()
        self._counts = dict.fromkeys(("pipeline_loads", "controlnet_loads", "hits", "evictions"), 0)

    def load(
        self,
        family: str,
        model_id,
        controlnet_id=None,
        runtime: Runtime | None = None,
        revision: str | None = None,
        sources: ModelSources | None = None,
    ):
        runtime = runtime or Runtime()
        sources = sources or ModelSources()
        revision = check_revision_target(model_id, revision)
        if family not in FAMILIES:
            raise InputError(f"model family {family!r}: expected one of {', '.join(FAMILIES)}")
        if controlnet_id is not None and family == "pix2pix":
            raise InputError("pix2pix takes no ControlNet: use family sd or sdxl with a ControlNet")
        from t2vz_core.engine import fast_paths

        device, dtype = runtime.resolve()
        base_key = (
            family,
            _cache_id(model_id),
            revision,
            str(dtype),
            str(device),
            runtime.offload,
            runtime.allow_pickle,
            fast_paths.cache_key(runtime),
            *sources.base_key(),
        )
        with self._lock:
            resident = self._resident.get(base_key)
            if resident is None:
                self._make_room()
                resident = _Resident(self._load_base(family, model_id, device, dtype, runtime, revision, sources))
                self._resident[base_key] = resident
            else:
                self._counts["hits"] += 1
            self._resident.move_to_end(base_key)
            pipe = resident.pipe
            if controlnet_id is not None:
                variant_key = (_cache_id(controlnet_id), sources.controlnet_config)
                if variant_key not in resident.variants:
                    resident.variants[variant_key] = self._load_variant(
                        family, resident.pipe, controlnet_id, device, dtype, runtime, sources.controlnet_config
                    )
                pipe = resident.variants[variant_key]
            # Before the offload hooks, which wrap forward again (and restore ours when removed).
            fast_paths.apply(pipe, runtime, device)
            _activate_offload(resident, pipe, runtime.offload, device)
            # The VAE is shared by the variants: set the options on every request.
            _set_vae_options(pipe.vae, runtime)
            # The row's LoRA set, or none: a LoRA of an earlier row never leaks into this one.
            with _quiet_diffusers():
                sync_loras(pipe, resident.loras, sources.loras)
            return pipe

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
            return {
                "loads": counts["pipeline_loads"] + counts["controlnet_loads"],
                **counts,
                "resident": len(self._resident),
                "max_loaded": self.max_loaded,
            }

    def clear(self) -> None:
        """Drop every model and zero the counters, as in a fresh process."""
        with self._lock:
            dropped = bool(self._resident)
            self._resident.clear()
            self._counts = dict.fromkeys(self._counts, 0)
        if dropped:  # a full gc.collect() costs ~0.4 s with torch, diffusers and Prefect imported
            _free_memory()

    def _make_room(self) -> None:
        while len(self._resident) >= self.max_loaded:
            self._resident.popitem(last=False)
            self._counts["evictions"] += 1
            _free_memory()

    def _load_base(
        self, family: str, model_id, device, dtype, runtime: Runtime, revision: str | None, sources: ModelSources
    ):
        import diffusers

        single_file = is_single_file(model_id)
        detected = detect_family(model_id, revision, sources.model_config)
        if detected != family:
            raise InputError(f"model {model_id}: it is a {detected} model, but the job asks for {family}")
        pipeline_class = getattr(diffusers, _PIPELINE_CLASSES[(family, False)])
        extra = {"safety_checker": None, "requires_safety_checker": False} if family != "sdxl" else {}
        if revision is not None:
            extra["revision"] = revision
        with _quiet_diffusers():  # no "Loading pipeline components" bars in t2vz runs
            if sources.vae is not None:
                extra["vae"] = load_vae(
                    sources.vae, dtype, runtime, str(model_id), sources.model_config, _from_pretrained
                )
            if single_file:
                pipe = load_single_file_pipeline(
                    pipeline_class, str(model_id), dtype, runtime, sources.model_config, **extra
                )
            else:
                pipe = _from_pretrained(pipeline_class, model_id, dtype, runtime, **extra)
        pipe.set_progress_bar_config(disable=True)  # no per-step tqdm bars either
        self._counts["pipeline_loads"] += 1
        if runtime.offload == "none":
            pipe.to(device)
        return pipe

    def _load_variant(
        self, family: str, base, controlnet_id, device, dtype, runtime: Runtime, controlnet_config: str | None = None
    ):
        import diffusers

        with _quiet_diffusers():
            if is_single_file(controlnet_id):
                controlnet = load_single_file_controlnet(str(controlnet_id), dtype, runtime, controlnet_config)
            else:
                controlnet = _from_pretrained(diffusers.ControlNetModel, controlnet_id, dtype, runtime)
        self._counts["controlnet_loads"] += 1
        _check_controlnet_fits(controlnet, base.unet, controlnet_id)
        if runtime.offload == "none":
            controlnet.to(device)
        pipeline_class = getattr(diffusers, _PIPELINE_CLASSES[(family, True)])
        # dtype matters: from_pipe otherwise casts the shared modules to fp32. Its
        # .to(dtype) also warns about "modules kept in float32" when there are none.
        with _quiet_diffusers():
            variant = pipeline_class.from_pipe(base, controlnet=controlnet, dtype=dtype)
        variant.set_progress_bar_config(disable=True)
        return variant


@contextmanager
def _quiet_diffusers():
    """Errors only from diffusers and transformers, and none of their progress bars, inside the block.

    Scoped rather than set at import: a notebook that imports t2vz_core keeps its own settings."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    level, t_level = diffusers_logging.get_verbosity(), transformers.logging.get_verbosity()
    bars, t_bars = diffusers_logging.is_progress_bar_enabled(), transformers.logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        transformers.logging.set_verbosity(t_level)
        if bars:
            diffusers_logging.enable_progress_bar()
        if t_bars:
            transformers.logging.enable_progress_bar()


def _from_pretrained(cls, model_id, dtype, runtime: Runtime, **extra):
    # One call for hub ids and local folders alike; only safetensors unless pickle is allowed.
    try:
        return cls.from_pretrained(
            str(model_id),
            dtype=dtype,  # diffusers 0.42 deprecates torch_dtype (a FutureWarning per load)
            use_safetensors=None if runtime.allow_pickle else True,
            **extra,
        )
    except (OSError, ValueError) as exc:
        parts = [] if runtime.allow_pickle else _pickle_only_parts(model_id)
        if parts:
            raise InputError(
                f"model {model_id}: no safetensors weights in {', '.join(parts)}, only pickle files "
                "(.bin/.ckpt/.pt), which can run code when loaded. Convert the model to safetensors, "
                "or allow pickle if you trust it (Runtime(allow_pickle=True), `t2vz run --allow-pickle`)."
            ) from exc
        raise _model_error(model_id, exc) from exc


def _pickle_only_parts(model_id) -> list[str]:
    # Only explains a failed load; loading itself never branches on local folder vs hub id.
    folder = Path(str(model_id)).expanduser()
    if not folder.is_dir():
        return []
    by_folder: dict[Path, set[str]] = {}
    for path in folder.rglob("*"):
        if path.suffix in {".safetensors", ".bin", ".ckpt", ".pt", ".pth"}:
            by_folder.setdefault(path.parent, set()).add(path.suffix)
    parts = [p for p, suffixes in by_folder.items() if ".safetensors" not in suffixes]
    return sorted(p.relative_to(folder).as_posix() or "." for p in parts)


def _model_error(model_id, exc: BaseException) -> Exception:
    # Network trouble is worth a retry; a missing or malformed model is not.
    if is_network_error(exc):
        return TransientError(f"model {model_id}: network error while loading ({exc})")
    return InputError(f"model {model_id}: cannot be loaded ({exc})")


def _check_controlnet_fits(controlnet, unet, controlnet_id) -> None:
    ours, theirs = controlnet.config.cross_attention_dim, unet.config.cross_attention_dim
    if ours != theirs:
        raise InputError(
            f"ControlNet {controlnet_id} does not fit the base model (cross_attention_dim {ours} vs "
            f"{theirs}): use an SD1.x ControlNet with an SD1.x base and an SDXL one with an SDXL base"
        )


def _activate_offload(resident: _Resident, pipe, offload: str, device: torch.device) -> None:
    # Offload hooks chain a pipeline's own modules; shared modules can carry only one set.
    if offload == "none" or resident.offload_owner is pipe:
        return
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    resident.offload_owner = pipe


def _set_vae_options(vae, runtime: Runtime) -> None:
    vae.enable_slicing() if runtime.vae_slicing else vae.disable_slicing()
    vae.enable_tiling() if runtime.vae_tiling else vae.disable_tiling()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if mps_available():
        torch.mps.empty_cache()


def _cache_id(model_id) -> str:
    # "./models/sd" and "/abs/models/sd" are one model; hub ids stay as given.
    text = str(model_id)
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_dir() else text


_CACHE = ModelCache()


def load_pipeline(
    family: str,
    model_id,
    controlnet_id=None,
    runtime: Runtime | None = None,
    revision: str | None = None,
    sources: ModelSources | None = None,
):
    """The diffusers pipeline for (family, model, ControlNet) on `runtime`, loaded at most once per process.

    family "sd": StableDiffusionPipeline, or StableDiffusionControlNetPipeline with a ControlNet;
    "sdxl": StableDiffusionXLPipeline / StableDiffusionXLControlNetPipeline;
    "pix2pix": StableDiffusionInstructPix2PixPipeline (no ControlNet).
    model_id / controlnet_id: hub id or local diffusers folder. SD pipelines load without safety checker.
    revision: branch, tag or commit of a hub `model_id` (the base model only; the ControlNet loads
    its default revision). InputError with a local folder, which has no revisions.
    Loading is quiet: no diffusers/transformers progress bars or info logs, no per-step bars.
    sources (t2vz_core.model_sources.ModelSources): LoRAs with scales (applied to the cached base,
    replaced or removed when a later call asks for another set or none), a replacement VAE and the
    configs of single-file checkpoints; `model_id` / `controlnet_id` may be such a file.
    """
    return _CACHE.load(family, model_id, controlnet_id, runtime, revision, sources)


def cache_stats() -> dict[str, Any]:
    """{"loads": from_pretrained calls (pipelines + ControlNets), "pipeline_loads", "controlnet_loads",
    "hits", "evictions", "resident" (base models in memory), "max_loaded"} for this process."""
    return _CACHE.stats()


def reset_cache(max_loaded: int | None = None) -> None:
    """Forget every loaded model and zero the counters; optionally change how many bases stay resident."""
    _CACHE.clear()
    if max_loaded is not None:
        if max_loaded < 1:
            raise InputError(f"max_loaded must be >= 1, got {max_loaded}")
        _CACHE.max_loaded = max_loaded


# ---------------------------------------------------------------------------- family detection


def detect_family(model_id, revision: str | None = None, model_config: str | None = None) -> Family:
    """ "sd", "sdxl" or "pix2pix" from model_index.json and unet/config.json (no weights loaded).

    Two text encoders make SDXL; a UNet with 8 input channels (noisy + source latents) makes
    InstructPix2Pix. Works for hub ids (from the local HF cache when offline) and folders alike;
    a single checkpoint file is read by single_file_family (its model_config names a .ckpt's).
    """
    if is_single_file(model_id):
        return single_file_family(str(model_id), model_config)
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    try:
        index = DiffusionPipeline.load_config(str(model_id), **_revision_kwargs(revision))
    except (OSError, ValueError) as exc:
        raise _model_error(model_id, exc) from exc
    pipeline = index.get("_class_name", "?")
    if not _has_component(index, "unet"):
        raise InputError(
            f"model {model_id}: {pipeline} has no UNet; t2vz runs SD1.x/2.x, SDXL and InstructPix2Pix models"
        )
    try:
        unet = UNet2DConditionModel.load_config(str(model_id), subfolder="unet", **_revision_kwargs(revision))
    except (OSError, ValueError) as exc:
        raise _model_error(model_id, exc) from exc
    xl = _has_component(index, "text_encoder_2")
    in_channels = unet.get("in_channels", 4)
    family = unet_family(in_channels, xl)
    if family is None:
        raise InputError(f"model {model_id}: unsupported {pipeline} ({unet_kind(in_channels, xl)} UNet)")
    return family


def _revision_kwargs(revision: str | None) -> dict[str, str]:
    return {"revision": revision} if revision else {}


def _has_component(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and entry[0] is not None
