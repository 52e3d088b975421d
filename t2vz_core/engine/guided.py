"""Per-frame conditioning (control maps, pix2pix source frames) and the shared-noise loop.

Conditioning is anything with len() and slicing that returns uint8 (k, H, W, 3) arrays
(numpy array, FrameStore...). It is read chunk by chunk: once to validate and fingerprint it
before any model work, once more to keep control maps as uint8 (ControlMaps) or to encode
pix2pix source latents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from t2vz_core.errors import InputError

from .checkpoint import Checkpoint
from .denoiser import Denoiser
from .loop import Phase, Progress, plan_chunks, run_steps
from .request import GenerationRequest

READ_CHUNK = 16


def iter_conditioning(conditioning, count: int, chunk: int = READ_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, count, chunk):
        yield start, np.asarray(conditioning[start : min(start + chunk, count)])


def check_conditioning(request: GenerationRequest, conditioning) -> tuple[int, str]:
    """(frame count, sha256 of all bytes); InputError on a wrong count, size or dtype."""
    what = "source frames" if request.mode == "pix2pix" else f"{request.mode} control maps"
    if conditioning is None:
        raise InputError(f"mode {request.mode} needs {what} (one per frame), got none")
    try:
        count = len(conditioning)
    except TypeError:
        raise InputError(f"{what} must support len() and slicing, got {type(conditioning).__name__}") from None
    if count < 1:
        raise InputError(f"{what}: got no frames")
    if request.video_length is not None and request.video_length != count:
        raise InputError(f"video_length={request.video_length} but there are {count} {what} (one per frame)")
    digest = hashlib.sha256()
    expected = (request.height, request.width, 3)
    for start, frames in iter_conditioning(conditioning, count):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected:
            raise InputError(
                f"{what} from frame {start}: expected uint8 frames of shape (k, {request.height}, "
                f"{request.width}, 3) (height x width x RGB), got {frames.dtype} {tuple(frames.shape)}"
            )
        digest.update(np.ascontiguousarray(frames).tobytes())
    return count, digest.hexdigest()


class ControlMaps:
    """Control maps held as uint8 (frames, H, W, 3) on the CPU, converted per chunk at use time.

    Step-major denoising needs every frame's map at every step. Kept uint8 they cost
    3*H*W bytes per frame (768 kB at 512 px) instead of the 12*H*W of float32 (3 MB), and
    nothing extra when the caller passed a uint8 array (it is used as is, not copied).
    Reading them back from the conditioning object each step instead would hold only a
    chunk, but re-decodes every PNG of a FrameStore at every step (~1.5 ms per 512 px frame
    measured, as much as the conversion itself, plus disk reads) and trusts the files not to
    change after the digest was taken, so the maps stay in RAM.

    rows() is bitwise what the ControlNet pipelines' prepare_image makes of the same frames
    as float32 /255 input (a same-size nearest resize is the identity): a 256-entry table of
    those float32 values, cast to the ControlNet's dtype like prepare_image casts. A table
    rather than x / 255 on the device because CUDA divides by a scalar as x * (1 / 255).
    """

    def __init__(self, maps: np.ndarray, dtype: torch.dtype):
        self.maps = maps
        self.dtype = dtype
        self._table32 = np.arange(256, dtype=np.float32) / 255.0
        self._tables: dict[torch.device, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def nbytes(self) -> int:
        return self.maps.nbytes

    def rows(self, frames: Sequence[int], device: torch.device) -> torch.Tensor:
        """(k, 3, H, W) in the ControlNet's dtype on device, for these frame indices."""
        picked = self.maps[list(frames)]
        if device.type == "cpu":  # numpy's table lookup is the fastest conversion on the CPU
            return torch.from_numpy(self._table32[picked]).permute(0, 3, 1, 2).contiguous().to(self.dtype)
        return self._convert_on(picked, device)

    def _convert_on(self, picked: np.ndarray, device: torch.device) -> torch.Tensor:
        """Uploads uint8 (4x less to copy than float32) and looks the values up on the device."""
        if device not in self._tables:
            self._tables[device] = torch.from_numpy(self._table32).to(self.dtype).to(device)
        maps = torch.from_numpy(picked).to(device).permute(0, 3, 1, 2).contiguous()
        return self._tables[device][maps.long()]


def prepare_control(pipe, request: GenerationRequest, conditioning, count: int) -> ControlMaps:
    """The control maps as uint8 in RAM (see ControlMaps); check_conditioning already
    checked their count, size and dtype."""
    if isinstance(conditioning, np.ndarray) and conditioning.dtype == np.uint8:
        maps = conditioning  # already in memory: no second copy
    else:
        maps = np.empty((count, request.height, request.width, 3), dtype=np.uint8)
        for start, frames in iter_conditioning(conditioning, count):
            maps[start : start + len(frames)] = frames
    return ControlMaps(maps, pipe.controlnet.dtype)


def prepare_source_latents(pipe, conditioning, count: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Instruct-Pix2Pix image latents (VAE mode, unscaled, as the pipeline), once per frame."""
    parts = []
    for _, frames in iter_conditioning(conditioning, count, chunk=8):
        image = pipe.image_processor.preprocess(frames.astype(np.float32) / 255.0)
        parts.append(pipe.prepare_image_latents(image, len(frames), 1, dtype, device, False))
    return torch.cat(parts)


def frames_units(request: GenerationRequest, count: int, num_timesteps: int) -> int:
    return num_timesteps * len(plan_chunks(count, request.chunk_size))


def denoise_frames(
    request: GenerationRequest,
    count: int,
    denoiser: Denoiser,
    scheduler,
    latent_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: Checkpoint,
    progress: Progress,
) -> tuple[torch.Tensor, range]:
    """pose/canny/depth/pix2pix: every frame starts from the same noise (drawn once, float32)."""
    timesteps = scheduler.timesteps
    resumed = checkpoint.load(scheduler, device)
    if resumed is not None:
        phase, step = resumed
        progress.advance("frames: resumed", step * len(phase.chunks))
    else:
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
        latents = (noise * scheduler.init_noise_sigma).to(device, dtype).repeat(count, 1, 1, 1)
        phase, step = Phase.start("frames", latents, range(count), request.chunk_size, scheduler, request.seed), 0
    run_steps(phase, denoiser, timesteps, step, len(timesteps), progress, checkpoint.save)
    return phase.latents, range(count)
