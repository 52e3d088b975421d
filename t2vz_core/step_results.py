"""What each step of the row pipeline returns: small typed references to its work-folder entry.

Results are what Prefect persists for a cached task and what a sidecar records under `refs`, so
they stay small (never frames) and JSON-able; a frame rate is a `Fraction` in Python and
"n/d" text in JSON only.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from t2vz_core.rates import fraction_text, to_fraction

FRAMES = "frames"  # the FrameStore folder inside decode / control / generate entries


Rate = Annotated[Fraction, BeforeValidator(to_fraction), PlainSerializer(fraction_text, return_type=str)]


class StepResult(BaseModel):
    """A finished step: its key and entry folder; `hit` when this run found it instead of building it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    step: str
    key: str
    path: str | None = None
    hit: bool = False

    @property
    def frames(self) -> Path:
        """The entry's FrameStore folder (decode, control, generate)."""
        return Path(self.path or "") / FRAMES

    def exists(self) -> bool:
        """True when this reference (perhaps replayed from a cache) still points at a finished entry."""
        return self.path is not None and (Path(self.path) / "entry.json").exists()


class FramesResult(StepResult):
    """A step that wrote a FrameStore: how many frames, their rate and size."""

    count: int
    fps: Rate
    width: int
    height: int


class SourceInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    fps: Rate
    frames: int | None = None
    duration: float | None = None
    codec: str | None = None
    rotation: int = 0


class DecodeResult(FramesResult):
    has_audio: bool
    audio_start: float
    source_sha256: str
    source_info: SourceInfo | None = None


class CutsResult(StepResult):
    """Where the decoded video cuts: its shots as [start, end) frame ranges covering every frame
    (t2vz_core.shots), and the detector settings that found them."""

    shots: list[tuple[int, int]]
    threshold: float
    min_shot_frames: int
    detector: str


class ControlResult(FramesResult):
    kind: str
    backend: str


class GenerateResult(FramesResult):
    chunk_size: int | None = None
    requested_chunk_size: int | None = None
    runtime: dict[str, str] | None = None


class EncodeResult(StepResult):
    files: dict[str, str]  # format -> file (or folder, for png) inside the entry
    count: int
    fps: Rate


QC_KEYS = ("warp_error", "source_warp_error", "warp_error_ratio", "flicker", "source_flicker")  # the "qc" object


class QCResult(StepResult):
    """Temporal-consistency scores (t2vz_core.qc) and the gallery's previews (t2vz_core.previews)."""

    qc: dict[str, float | None]  # exactly the sidecar's "qc" object
    flow_from: str  # "source", or "output" when the row has no source (text2video)
    pairs: int
    previews: dict[str, str] = {}  # kind (source, control, output) -> file inside the entry


class PublishResult(StepResult):
    outputs: list[str]
    digests: dict[str, str] = {}  # output file name -> sha256: an edited output is noticed later

    def exists(self) -> bool:
        return all(Path(p).exists() for p in self.outputs)
