"""Models users bring: LoRA weights, single-file checkpoints, schedulers and replacement VAEs.

Manifest side (no torch, no diffusers import):
- `check_weights_ref(value, base_dir, column)`: `model` / `controlnet` / `vae` may also name one
  `.safetensors` (or `.ckpt`) file in the original Stable Diffusion layout; folders and hub ids
  go through `paths.check_model_ref` as before.
- `parse_lora_cell(value, base_dir)`: `ID_OR_PATH[:SCALE];...` -> `LoraWeight`s.
- `check_scheduler(value)` and the `SCHEDULERS` table; `source_problems(job, given)`: the
  cross-column rules of these cells.

Key side: `resolve_sources(job, family)` fingerprints every file these cells name (LoRA bytes,
VAE, architecture configs), and `key_parts(job, models)` is what the generate key adds. Both are
empty for a row that uses none of the cells, so existing keys do not move.

Load side (used by `t2vz_core.models.ModelCache`): `ModelSources` (what a row asks to be loaded
beside its base model), single-file pipeline / ControlNet / VAE loading, `sync_loras` (the
resident base carries exactly the row's LoRA set), `build_scheduler`.

Schedulers and text2video: the motion stage (t2vz_core.engine.text2video) re-noises the anchor's
t0 latent to t1 in one DDPM jump (sqrt(alpha_bar) scaling), then continues every frame from t1 with
a copy of the anchor's scheduler. That is exact only for a scheduler whose latents are in DDPM
scale (init_noise_sigma 1) and whose step depends on nothing but the current latent and
prediction. `TEXT2VIDEO_SCHEDULERS` lists those; the table in README.md ("Your own models") says why
each other one is refused.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from t2vz_core.errors import InputError, TransientError, is_network_error
from t2vz_core.paths import check_model_ref, is_hub_id

if TYPE_CHECKING:
    from t2vz_core.manifest.job import Job
    from t2vz_core.runtime import Runtime

# The manifest columns of this module (t2vz_core.manifest.columns lists them too).
OWN_MODEL_COLUMNS = ("lora", "scheduler", "vae", "model_config", "controlnet_config")
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt",)  # behind --allow-pickle: unpickling can run code
SINGLE_FILE_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES
LORA_SCALE_RANGE = (-10.0, 10.0)
# The file name diffusers' save_lora_weights writes; a folder holding several files must use it.
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"

# name users know -> (diffusers class, from_config overrides).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    # SD1.x ships PNDM as PLMS (no Runge-Kutta warm-up steps): a fresh PNDM config would run them.
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
# Why the others are refused for text2video (see the module doc).
NOT_FOR_TEXT2VIDEO: dict[str, str] = {
    "pndm": "multistep (PLMS keeps the anchor's past predictions, wrong for the warped frames)",
    "euler": "sigma-scaled latents (x0 + sigma*eps), not the DDPM scale the t0->t1 re-noising uses",
    "euler_a": "sigma-scaled latents and fresh noise at every step",
    "dpmpp_2m": "multistep (keeps the anchor's past predictions, wrong for the warped frames)",
    "dpmpp_2m_karras": "multistep, on a Karras sigma schedule",
    "unipc": "multistep predictor-corrector (keeps the anchor's past predictions)",
    "lms": "sigma-scaled latents and a multistep history",
}
TEXT2VIDEO_SCHEDULERS = frozenset(SCHEDULERS) - frozenset(NOT_FOR_TEXT2VIDEO)


# ------------------------------------------------------------------------- manifest side


def is_single_file(ref: str | os.PathLike | None) -> bool:
    """True when a model reference names one checkpoint file (not a folder or hub id)."""
    return ref is not None and Path(str(ref)).suffix.lower() in SINGLE_FILE_SUFFIXES and Path(str(ref)).is_file()


def _resolve_path(text: str, base_dir: str | os.PathLike | None) -> Path:
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    candidate = Path(os.path.expanduser(text))
    return candidate if candidate.is_absolute() else base / candidate


def check_weights_ref(value: str, base_dir: str | os.PathLike | None = None, column: str = "model") -> str:
    """A model folder or hub id (as `paths.check_model_ref`), or one checkpoint file (returned real, absolute).

    A file must end in .safetensors, or .ckpt (loaded only with --allow-pickle)."""
    text = value.strip() if isinstance(value, str) else ""
    candidate = _resolve_path(text, base_dir) if text and "\x00" not in text else None
    if candidate is not None and candidate.is_file():
        if candidate.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise InputError(
                f"{text!r} is a {candidate.suffix or 'suffix-less'} file: a {column} file must be a .safetensors "
                "checkpoint in the original Stable Diffusion layout (or .ckpt with --allow-pickle); "
                "otherwise name a diffusers folder or a hub id"
            )
        return str(candidate.resolve())
    return check_model_ref(text, base_dir)


class LoraWeight(BaseModel):
    """One LoRA of a row: a .safetensors file (real path), a folder holding one, or a hub id; and its scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: str
    scale: float = 1.0


_SCALE_RE = re.compile(r"^(.*):\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$")


def parse_lora_cell(value: Any, base_dir: str | os.PathLike | None = None) -> tuple[LoraWeight, ...]:
    """'styles/ink.safetensors:0.8;org/lora' -> LoraWeights, in order.

    The scale is read only from a trailing ':<number>', and only when the whole item does not name
    an existing file or folder (so a path that itself ends in ':2' still works)."""
    if isinstance(value, (list, tuple)):
        items = [LoraWeight.model_validate(item) if not isinstance(item, LoraWeight) else item for item in value]
        return tuple(LoraWeight(ref=_lora_ref(item.ref, base_dir), scale=_lora_scale(item.scale)) for item in items)
    weights: list[LoraWeight] = []
    for item in str(value).split(";"):
        item = item.strip()
        if not item:
            continue
        ref, scale = item, 1.0
        match = _SCALE_RE.match(item)
        if match and not _resolve_path(item, base_dir).exists():
            ref, scale = match[1].strip(), float(match[2])
        weights.append(LoraWeight(ref=_lora_ref(ref, base_dir), scale=_lora_scale(scale)))
    if not weights:
        raise ValueError("lora names no LoRA: give ID_OR_PATH or ID_OR_PATH:SCALE, several separated by ';'")
    refs = [w.ref for w in weights]
    if len(set(refs)) != len(refs):
        twice = sorted({r for r in refs if refs.count(r) > 1})
        raise ValueError(f"lora names {', '.join(twice)} twice: give each LoRA once, with one scale")
    return tuple(weights)


def _lora_scale(scale: float) -> float:
    low, high = LORA_SCALE_RANGE
    if not math.isfinite(scale) or not low <= scale <= high:
        raise ValueError(f"lora scale {scale:g} is out of range: expected {low:g} to {high:g}")
    return float(scale)


def _lora_ref(text: str, base_dir: str | os.PathLike | None) -> str:
    if not text:
        raise ValueError("lora has an empty entry before ':SCALE'")
    path = _resolve_path(text, base_dir)
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"lora file {text!r} is not .safetensors: LoRA weights load from safetensors only")
        return str(path.resolve())
    if path.is_dir():
        lora_weights_file(path)  # raises when the folder holds no usable file
        return str(path.resolve())
    if text.startswith(("/", "./", "../", "~")):
        raise ValueError(f"lora {text!r} not found (looked for {path})")
    if not is_hub_id(text):
        raise ValueError(
            f"lora {text!r} is neither an existing .safetensors file or folder nor a hub id like "
            "'org/name' (add ':SCALE' at the end for a scale)"
        )
    return text


def lora_weights_file(folder: Path) -> Path:
    """The LoRA file inside a folder: diffusers' pytorch_lora_weights.safetensors, else the only .safetensors."""
    folder = Path(folder)
    if (folder / DIFFUSERS_LORA_FILE).is_file():
        return folder / DIFFUSERS_LORA_FILE
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise ValueError(f"lora folder {str(folder)!r} holds no .safetensors file")
    raise ValueError(
        f"lora folder {str(folder)!r} holds {len(files)} .safetensors files "
        f"({', '.join(f.name for f in files[:4])}): name the file itself"
    )


def check_scheduler(value: Any) -> str:
    text = str(value).strip().lower().replace("-", "_").replace("+", "p")
    if text not in SCHEDULERS:
        raise ValueError(
            f"unknown scheduler {str(value).strip()!r}: use one of {', '.join(SCHEDULERS)} "
            "(or leave it empty for the model's own)"
        )
    return text


def source_problems(job: Job, given: set[str]) -> list[tuple[str, str, frozenset[str]]]:
    """Cross-column rules of the own-model cells: (column, message, columns involved)."""
    problems: list[tuple[str, str, frozenset[str]]] = []

    def add(column: str, message: str, *involved: str) -> None:
        problems.append((column, message, frozenset({column, "mode", *involved})))

    model_file = is_single_file(job.model) if "model" in given else False
    if job.base_model_config is not None and not model_file:
        add(
            "model_config",
            "model_config gives the architecture of a single-file model (.safetensors/.ckpt); "
            "this row's model is a diffusers folder or a hub id, which carry their own configs",
            "model",
        )
    if model_file and Path(job.model).suffix.lower() in PICKLE_SUFFIXES and job.base_model_config is None:
        add(
            "model_config",
            "a .ckpt model needs model_config (a diffusers folder of the same architecture): "
            "t2vz does not unpickle a file to find out what it is",
            "model",
        )
    if (
        job.controlnet_config is not None
        and job.mode in ("pose", "canny", "depth")
        and not is_single_file(job.controlnet)
    ):
        add(
            "controlnet_config",
            "controlnet_config gives the architecture of a single-file ControlNet; this row's "
            "controlnet is empty, a diffusers folder or a hub id",
            "controlnet",
        )
    if job.mode == "text2video" and job.scheduler in NOT_FOR_TEXT2VIDEO:
        add(
            "scheduler",
            f"scheduler {job.scheduler} cannot run text2video: {NOT_FOR_TEXT2VIDEO[job.scheduler]}; "
            f"its t0/t1 motion stage is exact with {', '.join(sorted(TEXT2VIDEO_SCHEDULERS))} "
            "(or leave scheduler empty for the model's own)",
        )
    return problems


# ------------------------------------------------------------------------------ key side


def weights_fingerprint(ref: str, revision: str | None = None) -> str:
    """model_fingerprint for folders and hub ids; 'file:sha256:<hex>' of a single file's bytes."""
    from t2vz_core.fingerprints import file_sha256, model_fingerprint

    if is_single_file(ref):
        return f"file:sha256:{file_sha256(Path(ref))}"
    return model_fingerprint(ref, revision)


def config_fingerprint(ref: str) -> str:
    """A model_config / controlnet_config: only its config and tokenizer files matter (no weights are read)."""
    from t2vz_core.fingerprints import folder_digest

    folder = Path(ref)
    if not folder.is_dir():
        return weights_fingerprint(ref)
    return f"config:sha256:{folder_digest(folder, suffixes=('.json', '.txt', '.model', '.yaml'))}"


def lora_fingerprint(ref: str) -> str:
    """sha256 of the LoRA file's bytes (a changed file re-runs the row); hub LoRAs by cached commit."""
    from t2vz_core.fingerprints import cached_commit, file_sha256

    path = Path(ref)
    if path.is_file():
        return f"file:sha256:{file_sha256(path)}"
    if path.is_dir():
        try:
            return f"file:sha256:{file_sha256(lora_weights_file(path))}"
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return f"hub:{ref}@{cached_commit(ref, filenames=(DIFFUSERS_LORA_FILE,)) or 'unresolved'}"


def resolve_sources(job: Job) -> dict[str, Any]:
    """Fingerprints of the own-model cells a row uses (empty for a row that uses none)."""
    resolved: dict[str, Any] = {}
    if job.lora:
        resolved["lora"] = [{"ref": w.ref, "scale": w.scale, "fingerprint": lora_fingerprint(w.ref)} for w in job.lora]
    if job.vae:
        resolved["vae"] = job.vae
        resolved["vae_fingerprint"] = weights_fingerprint(job.vae)
    if job.base_model_config:
        resolved["model_config"] = job.base_model_config
        resolved["model_config_fingerprint"] = config_fingerprint(job.base_model_config)
    if job.controlnet_config:
        resolved["controlnet_config"] = job.controlnet_config
        resolved["controlnet_config_fingerprint"] = config_fingerprint(job.controlnet_config)
    if job.scheduler:
        resolved["scheduler"] = job.scheduler
    return resolved


def key_parts(models: dict[str, Any]) -> dict[str, Any]:
    """What the generate key adds for these cells: fingerprints and scales, never paths."""
    parts: dict[str, Any] = {}
    if models.get("lora"):
        parts["lora"] = [[w["fingerprint"], w["scale"]] for w in models["lora"]]
    for name in ("vae_fingerprint", "model_config_fingerprint", "controlnet_config_fingerprint", "scheduler"):
        if models.get(name):
            parts[name] = models[name]
    return parts


def single_file_family(path: str, model_config: str | None = None) -> str:
    """ "sd", "sdxl" or "pix2pix" of an original-layout checkpoint, from its safetensors header only.

    A .ckpt (pickle) is never opened here: its family comes from model_config."""
    from t2vz_core.models import detect_family

    declared = detect_family(model_config) if model_config else None
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        if declared is None:
            raise InputError(f"model {path}: a .ckpt model needs model_config to say what it is")
        return declared
    family = _family_from_header(Path(path))
    if declared is not None and declared != family:
        raise InputError(
            f"model {path} is a {family} checkpoint, but model_config {model_config} is a {declared} "
            "model: name a diffusers folder of the same architecture"
        )
    return family


def _family_from_header(path: Path) -> str:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            conv_in = "model.diffusion_model.input_blocks.0.0.weight"
            shape = handle.get_slice(conv_in).get_shape() if conv_in in keys else None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for torn files
        raise InputError(f"model {path}: not a readable .safetensors file ({exc})") from exc
    if shape is None:
        raise InputError(
            f"model {path}: not a Stable Diffusion checkpoint in the original layout (no "
            "model.diffusion_model.* UNet weights); for a diffusers model name its folder"
        )
    xl = any(k.startswith("conditioner.embedders.1.") for k in keys)
    if any(k.startswith("conditioner.") for k in keys) and not xl:
        raise InputError(f"model {path}: an SDXL refiner checkpoint; t2vz runs SDXL base models")
    family = unet_family(shape[1], xl)
    if family is None:
        raise InputError(f"model {path}: unsupported {unet_kind(shape[1], xl)} checkpoint")
    return family


def unet_family(in_channels: int, xl: bool) -> str | None:
    """The family a UNet makes, for folders and single files alike: 4 input channels is SD or SDXL,
    8 (noisy + source latents) InstructPix2Pix; None for what t2vz does not run."""
    if in_channels == 4:
        return "sdxl" if xl else "sd"
    if in_channels == 8 and not xl:
        return "pix2pix"
    return None


def unet_kind(in_channels: int, xl: bool) -> str:
    """How an error names a UNet that unet_family() refuses ("SDXL inpainting", "in_channels=6")."""
    kind = "inpainting" if in_channels == 9 else f"in_channels={in_channels}"
    return f"{'SDXL ' if xl else ''}{kind}"


# ----------------------------------------------------------------------------- load side


@dataclass(frozen=True)
class ModelSources:
    """What a row loads beside its base model and ControlNet: the parts of the cache keys they move."""

    loras: tuple[tuple[str, float], ...] = ()
    vae: str | None = None
    model_config: str | None = None
    controlnet_config: str | None = None

    @classmethod
    def of(cls, job: Job) -> ModelSources:
        return cls(tuple((w.ref, w.scale) for w in job.lora), job.vae, job.base_model_config, job.controlnet_config)

    def base_key(self) -> tuple:
        # LoRAs are not part of it: they are applied to (and removed from) the resident base per row.
        return (_cache_id(self.vae), _cache_id(self.model_config))


def _cache_id(ref: str | None) -> str | None:
    if ref is None:
        return None
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def _check_pickle(path: str, runtime: Runtime, what: str) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES and not runtime.allow_pickle:
        raise InputError(
            f"{what} {path}: a .ckpt file is a pickle, which can run code when loaded. Convert it to "
            ".safetensors, or allow pickle if you trust it (`t2vz run --allow-pickle`)"
        )


def _missing_config_error(what: str, path: str, column: str, exc: BaseException) -> InputError:
    return InputError(
        f"{what} {path}: a single-file checkpoint holds weights only; its architecture configs (a diffusers "
        f"folder of the same architecture) could not be found ({type(exc).__name__}: {exc}). Offline, name such "
        f"a folder in the {column} column; with hub access it is fetched for you"
    )


@contextmanager
def _quiet_single_file_loading():
    # diffusers 0.42's from_single_file hands `torch_dtype` to its own component loaders, and
    # `local_dir_use_symlinks` to huggingface_hub when it looks for configs: both then warn about
    # their own deprecated arguments, which is nothing a t2vz user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
        yield


def _from_single_file(model_class, path: str, config: str | None, what: str, column: str, **kwargs):
    """model_class.from_single_file with t2vz's errors: a network failure is worth a retry; else
    the error says which config cell is missing, or that the file and its config do not load."""
    try:
        with _quiet_single_file_loading():
            return model_class.from_single_file(path, config=config, **kwargs)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types for a missing config
        if is_network_error(exc):
            raise TransientError(f"{what} {path}: network error while loading ({exc})") from exc
        if config is None:
            raise _missing_config_error(what, path, column, exc) from exc
        raise InputError(
            f"{what} {path} with {column} {config}: cannot be loaded ({type(exc).__name__}: {exc})"
        ) from exc


def load_single_file_pipeline(pipeline_class, path: str, dtype, runtime: Runtime, model_config: str | None, **extra):
    """pipeline_class.from_single_file with the architecture from model_config (or the hub)."""
    _check_pickle(path, runtime, "model")
    return _from_single_file(pipeline_class, path, model_config, "model", "model_config", dtype=dtype, **extra)


def load_single_file_controlnet(path: str, dtype, runtime: Runtime, controlnet_config: str | None):
    from diffusers import ControlNetModel

    _check_pickle(path, runtime, "ControlNet")
    return _from_single_file(ControlNetModel, path, controlnet_config, "ControlNet", "controlnet_config", dtype=dtype)


def load_vae(ref: str, dtype, runtime: Runtime, base_model: str, model_config: str | None, from_pretrained) -> Any:
    """A replacement AutoencoderKL: a VAE folder or hub id, a model folder's vae/, or one single file
    (its config from model_config or the base model's vae/)."""
    from diffusers import AutoencoderKL

    if is_single_file(ref):
        _check_pickle(ref, runtime, "vae")
        config = model_config or (None if is_single_file(base_model) else str(base_model))
        try:
            with _quiet_single_file_loading():
                return AutoencoderKL.from_single_file(
                    ref, config=config, subfolder="vae" if config else None, dtype=dtype
                )
        except Exception as exc:  # noqa: BLE001
            if is_network_error(exc):
                raise TransientError(f"vae {ref}: network error while loading ({exc})") from exc
            raise _missing_config_error("vae", ref, "model_config", exc) from exc
    folder = Path(ref)
    subfolder = {"subfolder": "vae"} if (folder / "vae" / "config.json").is_file() else {}
    return from_pretrained(AutoencoderKL, ref, dtype, runtime, **subfolder)


@dataclass
class LoraState:
    """The LoRA set loaded on one resident base (shared by its ControlNet variants)."""

    loaded: tuple[tuple[str, float], ...] = ()
    names: list[str] = field(default_factory=list)


def sync_loras(pipe, state: LoraState, wanted: tuple[tuple[str, float], ...]) -> None:
    """Make `pipe`'s UNet and text encoder(s) carry exactly `wanted` (none: the clean base weights).

    Unchanged sets are kept (rows with the same base and LoRAs reuse them); otherwise the old
    adapters are unloaded (diffusers restores the original layers) and the new ones loaded."""
    if state.loaded == wanted:
        return
    if state.names:
        pipe.unload_lora_weights()
        state.loaded, state.names = (), []
    if not wanted:
        return
    names = [f"t2vz_lora_{index}" for index in range(len(wanted))]
    try:
        with warnings.catch_warnings():
            # peft warns that a second adapter joins the first: stacking them is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            for name, (ref, _) in zip(names, wanted):
                _load_lora(pipe, ref, name)
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in wanted])
    except Exception:
        pipe.unload_lora_weights()  # never leave half a set (or a failed one's leftovers) for the next row
        raise
    state.loaded, state.names = wanted, names


def _load_lora(pipe, ref: str, name: str) -> None:
    path = Path(ref)
    if path.is_dir():
        try:
            path = lora_weights_file(path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    try:
        if path.is_file():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        else:
            pipe.load_lora_weights(ref, adapter_name=name, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if is_network_error(exc):
            raise TransientError(f"lora {ref}: network error while loading ({exc})") from exc
        raise InputError(
            f"lora {ref}: cannot be applied to this model ({type(exc).__name__}: {exc}); "
            "LoRAs must match the base model's architecture (SD1.x or SDXL)"
        ) from exc


def build_scheduler(name: str | None, own):
    """The row's scheduler from the model's own scheduler config (`from_config`), or `own` when empty."""
    if not name:
        return own
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(own.config, **overrides)
