"""Where and how pipelines run: device, dtype, offload and VAE options.

torch is imported only to resolve "auto" or to check that a named accelerator exists: a run
whose rows are all up to date names its runtime in cache keys (`Runtime.signature`) without it.
"""

from __future__ import annotations

import glob
import re
import sys
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from t2vz_core.errors import InputError

if TYPE_CHECKING:
    import torch

OFFLOADS: tuple[str, ...] = ("none", "model", "sequential")
_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# SDPA kernel choices for the attention of the UNet and ControlNet (t2vz_core.engine.fast_paths).
ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "flash", "efficient", "cudnn", "math")


class Runtime(BaseModel):
    """Where and how pipelines run. `resolve()` turns "auto" into a concrete device and dtype.

    device: "auto" (cuda, else mps, else cpu) | "cpu" | "cuda" | "cuda:N" | "mps".
    dtype: "auto" (fp16 on cuda/mps, fp32 on cpu) | "fp32" | "fp16" | "bf16".
      fp16 on cpu is refused (CPU half-precision kernels are missing or very slow). bf16 on cpu
      is allowed: torch implements it and it halves memory, but it is slower than fp32 on CPUs
      without native bf16 and its results differ from fp32 more than fp16's do on a GPU.
    offload: "none" (everything on `device`) | "model" (whole models move to the accelerator when
      used) | "sequential" (submodule by submodule: least memory, slowest). Needs an accelerator.
    vae_slicing / vae_tiling: decode frames one by one / in tiles (less memory for many or large frames).
    allow_pickle: also accept .bin/.ckpt pickle weights (only for models you trust).

    Fast paths, applied by t2vz_core.engine.fast_paths when a pipeline is loaded and measured by
    bench/gpu.py; on by default only where they are known to win, no-ops where they do not apply:
    compile: torch.compile the UNet and ControlNet (not with offload). The first chunks of each
      shape pay the compile (minutes on a GPU), so it pays off on long runs only: off by default
      until bench/GPU_RESULTS.md shows the win.
    channels_last: UNet, ControlNet and VAE in NHWC memory format (tensor-core convolutions on
      GPUs; usually slower on CPUs). Off by default until measured.
    tf32: TF32 for the fp32 matmuls/convolutions on CUDA GPUs of compute capability 8.0 or later
      (dtype fp32, and SDXL's VAE upcast): about the precision of fp16, several times the speed.
      No effect on fp16/bf16 work, on older GPUs, on CPU and MPS.
    attention_backend: SDPA kernels the UNet's and ControlNet's attention (the cross-frame one
      included) may use: "auto" (torch picks), "flash", "efficient" (memory-efficient), "cudnn",
      "math". A kernel that cannot run the call raises (it is not silently replaced by another).

    `Runtime("cuda", "fp16", offload="model")`: device and dtype may be given by position. A bad
    value raises InputError (a ValidationError only through `model_validate`).
    Every field is a `t2vz run` / `t2vz serve` option too (t2vz_core.options.RunOptions extends this).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: str = Field(
        "auto",
        description="auto (fp16 on a GPU, fp32 on a CPU), fp32, fp16 or bf16",
        json_schema_extra={"choices": ["auto", "fp32", "fp16", "bf16"]},
    )
    offload: str = Field(
        "none",
        description="move weights to the GPU only while used (less GPU memory, slower)",
        json_schema_extra={"choices": list(OFFLOADS)},
    )
    allow_pickle: bool = Field(
        False,
        description="also load .bin/.ckpt pickle weights, which can run code when "
        "loaded: only for models you trust (default: safetensors only)",
    )
    vae_slicing: bool = Field(
        False, description="decode one frame at a time through the VAE (less GPU memory for large frames)"
    )
    vae_tiling: bool = Field(
        False, description="decode large frames in overlapping tiles (least memory; pixels change slightly)"
    )
    compile: bool = Field(
        False,
        description="torch.compile the UNet and ControlNet (the first chunks of each "
        "shape compile for minutes on a GPU; not with offload)",
    )
    channels_last: bool = Field(
        False, description="UNet, ControlNet and VAE in channels-last memory format (tensor-core convolutions on GPUs)"
    )
    tf32: bool = Field(
        True,
        description="TF32 for fp32 matmuls/convolutions on CUDA GPUs of compute capability "
        ">= 8.0 (--no-tf32: full fp32); no effect on fp16/bf16",
    )
    attention_backend: str = Field(
        "auto",
        description="SDPA kernels the UNet/ControlNet attention may use (auto: torch picks)",
        json_schema_extra={"choices": list(ATTENTION_BACKENDS)},
    )

    def __init__(self, *args: str, **data: Any) -> None:
        for name, value in zip(("device", "dtype"), args, strict=False):
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as exc:  # our own message, as InputError, to callers in Python
            raise _input_error(exc) from None

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        device = str(value).strip().lower()
        if not _DEVICE_PATTERN.fullmatch(device):
            raise InputError(f"device {value!r}: expected auto, cpu, cuda, cuda:N or mps")
        return device

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: Any) -> str:
        dtype = str(value).strip().lower()
        dtype = _DTYPE_ALIASES.get(dtype, dtype)
        if dtype != "auto" and dtype not in _DTYPE_NAMES:
            raise InputError(f"dtype {value!r}: expected auto, fp32, fp16 or bf16")
        return dtype

    @field_validator("offload", mode="before")
    @classmethod
    def _offload(cls, value: Any) -> str:
        offload = str(value).strip().lower()
        if offload not in OFFLOADS:
            raise InputError(f"offload {value!r}: expected none, model or sequential")
        return offload

    @field_validator("attention_backend", mode="before")
    @classmethod
    def _attention_backend(cls, value: Any) -> str:
        backend = str(value).strip().lower()
        if backend not in ATTENTION_BACKENDS:
            raise InputError(f"attention_backend {value!r}: expected {', '.join(ATTENTION_BACKENDS)}")
        return backend

    def runtime(self) -> Runtime:
        """Just the runtime fields (for a subclass such as RunOptions)."""
        return Runtime(**{name: getattr(self, name) for name in Runtime.model_fields})

    def resolve(self) -> tuple[torch.device, torch.dtype]:
        """The concrete (device, dtype); InputError when this machine cannot honour the request."""
        import torch

        device = _resolve_device(self.device)
        return device, getattr(torch, self._dtype_name(device.type))

    def signature(self) -> tuple[str, str]:
        """(device type, dtype name), e.g. ("cuda", "float16"): what `resolve()` gives, checked the
        same way, but without importing torch when the device is named (or is "auto" on a Linux
        machine with no GPU device files). Whether a named accelerator is really there is left to
        `resolve()`, which runs before any model work."""
        if self.device == "auto" and _no_gpu_possible():
            return "cpu", self._dtype_name("cpu")
        if self.device == "auto":
            device, dtype = self.resolve()
            return device.type, str(dtype).replace("torch.", "")
        device_type = self.device.split(":")[0]
        return device_type, self._dtype_name(device_type)

    def _dtype_name(self, device_type: str) -> str:
        if device_type == "cpu" and self.dtype == "fp16":
            raise InputError(
                "dtype fp16 on device cpu is not supported: CPUs lack fast half-precision kernels. "
                "Use dtype fp32 (or bf16) on cpu, or run on cuda/mps."
            )
        if device_type == "cpu" and self.offload != "none":
            raise InputError(
                f"offload {self.offload!r} moves weights between CPU memory and an accelerator, "
                "but the device is cpu: use offload none on cpu."
            )
        if self.dtype == "auto":
            return "float32" if device_type == "cpu" else "float16"
        return _DTYPE_NAMES[self.dtype]


def _input_error(exc: ValidationError) -> InputError:
    """The InputError a field validator raised (pydantic wraps it), else the validation message."""
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, InputError):
            return cause
    return InputError(str(exc))


def _resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: torch sees no CUDA device on this machine")
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    if name == "mps" and not mps_available():
        raise InputError("device 'mps': Apple MPS is not available on this machine")
    return torch.device(name)


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def _no_gpu_possible() -> bool:
    """True on Linux when no GPU device file exists, so torch cannot find a CUDA (NVIDIA, ROCm or
    WSL) device and "auto" is certainly cpu: lets a CPU machine sign "auto" without torch's
    import (~1 s). Elsewhere, or with a device file present, torch is asked."""
    return sys.platform == "linux" and not any(
        glob.glob(pattern) for pattern in ("/dev/nvidia*", "/dev/kfd", "/dev/dxg")
    )
