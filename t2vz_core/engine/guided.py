"""Per-frame conditioning (control maps, pix2pix source frames) and the shared-noise loop.

Conditioning is anything with len() and slicing that returns uint8 (k, H, W, 3) arrays
(numpy array, FrameStore...). It is read chunk by chunk: once to validate and fingerprint it
before any model work, then as the denoising needs it: control maps every step for the
frames of each UNet chunk (ControlMaps, never the whole video), pix2pix source frames once
per shot to encode their latents. So memory per extra frame is its latents, not its pixels.
"""

from __future__ import annotations

import hashlib
import threading
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
    """Control maps read from the conditioning per UNet chunk and converted at use time.

    Step-major denoising needs every frame's map at every step. Holding them all (uint8,
    768 kB per 512 px frame: 1.4 GB for a minute at 30 fps) made memory grow with the video,
    so only the chunk being denoised is read, from the conditioning object itself (an array
    is indexed without a copy; a FrameStore decodes the chunk's PNGs). Reading a FrameStore
    costs ~1.5 ms per 512 px frame per step: the chunk that follows (the order of chunks
    repeats every step, so it is known after the first step) is read on a helper thread
    while the UNet runs the current one. The store's frames are not re-hashed per step: they
    are the finished, content-addressed entry that check_conditioning fingerprinted.

    rows() is bitwise what the ControlNet pipelines' prepare_image makes of the same frames
    as float32 /255 input (a same-size nearest resize is the identity): a 256-entry table of
    those float32 values, cast to the ControlNet's dtype like prepare_image casts. A table
    rather than x / 255 on the device because CUDA divides by a scalar as x * (1 / 255).
    """

    def __init__(self, conditioning, dtype: torch.dtype):
        self.conditioning = conditioning
        self.dtype = dtype
        self._table32 = np.arange(256, dtype=np.float32) / 255.0
        self._tables: dict[torch.device, torch.Tensor] = {}
        self._in_memory = isinstance(conditioning, np.ndarray)
        self._successor: dict[tuple[int, ...], tuple[int, ...]] = {}  # chunk -> the chunk read after it
        self._previous: tuple[int, ...] | None = None
        self._ahead: _Read | None = None
        self._last: tuple[tuple[int, ...], np.ndarray] | None = None  # the chunk read last, and its maps

    def __len__(self) -> int:
        return len(self.conditioning)

    def rows(self, frames: Sequence[int], device: torch.device) -> torch.Tensor:
        """(k, 3, H, W) in the ControlNet's dtype on device, for these frame indices."""
        picked = self.read(frames)
        if device.type == "cpu":  # numpy's table lookup is the fastest conversion on the CPU
            return torch.from_numpy(self._table32[picked]).permute(0, 3, 1, 2).contiguous().to(self.dtype)
        return self._convert_on(picked, device)

    def read(self, frames: Sequence[int]) -> np.ndarray:
        """uint8 (k, H, W, 3) maps of these frames: from the read-ahead when it guessed right."""
        key = tuple(int(f) for f in frames)
        if self._in_memory:
            return self.conditioning[list(key)]
        ahead, self._ahead = self._ahead, None
        if self._last is not None and self._last[0] == key:  # one chunk per step (a short shot)
            picked = self._last[1]
        elif ahead is not None and ahead.frames == key:
            picked = ahead.result()
        else:
            picked = read_frames(self.conditioning, key)
        self._last = (key, picked)  # never written to: rows() and _convert_on copy
        if self._previous is not None:
            self._successor[self._previous] = key
        self._previous = key
        following = self._successor.get(key)
        if following is not None and following != key:
            self._ahead = _Read(self.conditioning, following)
        return picked

    def _convert_on(self, picked: np.ndarray, device: torch.device) -> torch.Tensor:
        """Uploads uint8 (4x less to copy than float32) and looks the values up on the device."""
        if device not in self._tables:
            self._tables[device] = torch.from_numpy(self._table32).to(self.dtype).to(device)
        maps = torch.from_numpy(picked).to(device).permute(0, 3, 1, 2).contiguous()
        return self._tables[device][maps.long()]


def read_frames(conditioning, frames: Sequence[int]) -> np.ndarray:
    """uint8 (k, H, W, 3) for these frame indices, one slice per run of consecutive frames."""
    parts, run_start = [], 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] != frames[i - 1] + 1:
            parts.append(np.asarray(conditioning[frames[run_start] : frames[i - 1] + 1]))
            run_start = i
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Read:
    """One chunk of maps read on a short-lived helper thread (PNG decoding releases the GIL)."""

    def __init__(self, conditioning, frames: tuple[int, ...]):
        self.frames = frames
        self._value: np.ndarray | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(conditioning,), daemon=True)
        self._thread.start()

    def _run(self, conditioning) -> None:
        try:
            self._value = read_frames(conditioning, self.frames)
        except BaseException as exc:  # re-raised in the denoising thread by result()
            self._error = exc

    def result(self) -> np.ndarray:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def prepare_control(pipe, conditioning) -> ControlMaps:
    """The control maps, read per chunk as the denoising needs them (see ControlMaps);
    check_conditioning already checked their count, size and dtype."""
    return ControlMaps(conditioning, pipe.controlnet.dtype)


def prepare_source_latents(pipe, conditioning, count: int, dtype: torch.dtype, device, start: int = 0) -> torch.Tensor:
    """Instruct-Pix2Pix image latents (VAE mode, unscaled, as the pipeline) of frames
    [start, start + count), encoded 8 at a time from `start` (a shot encodes as its own video)."""
    parts = []
    for offset in range(0, count, 8):
        frames = np.asarray(conditioning[start + offset : start + min(offset + 8, count)])
        image = pipe.image_processor.preprocess(frames.astype(np.float32) / 255.0)
        parts.append(pipe.prepare_image_latents(image, len(frames), 1, dtype, device, False))
    return torch.cat(parts)


def frames_units(request: GenerationRequest, count: int, num_timesteps: int) -> int:
    return num_timesteps * len(plan_chunks(count, request.chunk_size))


def denoise_frames(
    request: GenerationRequest,
    shot: tuple[int, int],
    denoiser: Denoiser,
    scheduler,
    latent_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: Checkpoint,
    progress: Progress,
    name: str = "frames",
) -> torch.Tensor:
    """pose/canny/depth/pix2pix: the frames [start, stop) of one shot, as their own video: every
    frame starts from the same noise (drawn once from the seed, float32), the shot's first frame
    is the anchor, chunks and per-row step noise count from the shot's start. Returns the
    shot's final latents (stop - start rows)."""
    start, stop = shot
    timesteps = scheduler.timesteps
    resumed = checkpoint.load(scheduler, device)
    if resumed is not None:
        phase, step = resumed
        progress.advance(f"{name}: resumed", step * len(phase.chunks))
    else:
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
        latents = (noise * scheduler.init_noise_sigma).to(device, dtype).repeat(stop - start, 1, 1, 1)
        phase, step = Phase.start(name, latents, range(start, stop), request.chunk_size, scheduler, request.seed), 0
    run_steps(phase, denoiser, timesteps, step, len(timesteps), progress, checkpoint.save)
    return phase.latents
