"""The row pipeline, declared once: which steps a manifest row goes through, in order.

Every caller walks `STEPS`: the Prefect row task (tasks.row), the up-to-date check
(t2vz_core.freshness), the report's step columns (t2vz_core.report), the progress weights
(tasks.progress) and the benchmark's direct path (bench/direct_core.py). Adding a step is adding
one `Step` here (with its key and build functions, usually in t2vz_core.row_steps, and its typed
result in t2vz_core.step_results); everything else follows.

A step:
- `applies(job)` says whether it runs for a row (None) or why it is skipped (a reason);
- `key(ctx)` names its output by the content of its inputs (None for a step never cached);
- `build(ctx, key)` makes (or finds) the output and returns its typed result, which later steps
  read from `ctx.results[name]`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2vz_core import row_steps
from t2vz_core.manifest import Job
from t2vz_core.runtime import Runtime
from t2vz_core.step_results import (
    ControlResult,
    CutsResult,
    DecodeResult,
    EncodeResult,
    FramesResult,
    GenerateResult,
    PublishResult,
    QCResult,
    StepResult,
)
from t2vz_core.workdir import WorkDir

ProgressFn = Callable[[int, int, str], None]


@dataclass
class RowContext:
    """What a row's steps share: the job, where to work, how to run, and the results so far."""

    job: Job
    work: WorkDir | None  # None only for the up-to-date check, which reads no work entries
    runtime: Runtime
    output_dir: Path
    results: dict[str, StepResult] = field(default_factory=dict)
    force: bool = False
    recorded_models: dict[str, Any] | None = None  # a sidecar's, so the check needs no diffusers
    # Per-attempt settings of the generate step (an out-of-memory retry changes them).
    chunk_size: int | None = None
    hold_device: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    on_progress: ProgressFn | None = None
    resolved_models: dict[str, Any] | None = None  # set by the first use of `models`

    @property
    def models(self) -> dict[str, Any]:
        """Family, model and ControlNet ids with fingerprints (resolved once; loads no weights)."""
        if self.resolved_models is None:
            self.resolved_models = row_steps.resolve_models(self.job, self.work, self.recorded_models)
        return self.resolved_models

    @property
    def conditioning(self) -> FramesResult | None:
        """What generation is conditioned on: control maps, else the decoded source (pix2pix,
        control=given), else nothing (text2video)."""
        return self.results.get("control") or self.results.get("decode")


@dataclass(frozen=True)
class Step:
    name: str
    reads: tuple[str, ...]  # earlier steps whose results `key`/`build` use (when they ran)
    result: type[StepResult]
    applies: Callable[[Job], str | None]
    key: Callable[[RowContext], str] | None
    build: Callable[[RowContext, str | None], StepResult]
    weight: float  # share of a row's progress (generation dominates the time)
    uses_device: bool = False  # holds the accelerator; out-of-memory retries adapt it (tasks.policy)

    @property
    def cached(self) -> bool:
        return self.key is not None


def _always(job: Job) -> str | None:
    return None


def _needs_source(job: Job) -> str | None:
    return None if job.uses_source else f"{job.mode} has no source"


def _extracts_maps(job: Job) -> str | None:
    if row_steps.control_kind(job):
        return None
    if job.control == "given":
        return "control=given: the source is the control video"
    return f"mode {job.mode} uses no control maps"


def _splits_shots(job: Job) -> str | None:
    if not job.uses_source:
        return f"{job.mode} makes one shot"
    if job.shots == "none":
        return "shots=none: one anchor for the whole video"
    return None


STEPS: tuple[Step, ...] = (
    Step("decode", (), DecodeResult, _needs_source, row_steps.decode_key, row_steps.decode_build, 0.04),
    # Shot detection (the report's step column is "cuts"; its "shots" column counts the shots).
    Step("cuts", ("decode",), CutsResult, _splits_shots, row_steps.cuts_key, row_steps.cuts_build, 0.02),
    Step("control", ("decode",), ControlResult, _extracts_maps, row_steps.control_key, row_steps.control_build, 0.09),
    Step(
        "generate",
        ("decode", "control", "cuts"),
        GenerateResult,
        _always,
        row_steps.generate_key,
        row_steps.generate_build,
        0.72,
        uses_device=True,
    ),
    Step("encode", ("decode", "generate"), EncodeResult, _always, row_steps.encode_key, row_steps.encode_build, 0.08),
    # Temporal-consistency scores and the gallery's previews (small: cheap next to generation).
    Step("qc", ("decode", "control", "generate"), QCResult, _always, row_steps.qc_key, row_steps.qc_build, 0.03),
    # Publishing is cheap and must notice a deleted or edited output, so it is never cached.
    Step("publish", ("encode", "qc"), PublishResult, _always, None, row_steps.publish_build, 0.02),
)


def step_names() -> tuple[str, ...]:
    return tuple(step.name for step in STEPS)


def get_step(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(f"no step named {name!r}")


def row_steps_of(job: Job) -> Iterator[tuple[Step, str | None]]:
    """(step, None) for each step the job runs, (step, reason) for each it skips, in order."""
    for step in STEPS:
        yield step, step.applies(job)


def result_from_record(name: str, record: dict[str, Any]) -> StepResult:
    """A step's typed result from what a sidecar recorded (`refs`)."""
    return get_step(name).result.model_validate(record)


def run_direct(job: Job, work: WorkDir, runtime: Runtime, output_dir: str | os.PathLike, **context: Any) -> RowContext:
    """Every step of one row in this process, without Prefect (notebooks, the bench's baseline)."""
    ctx = RowContext(job=job, work=work, runtime=runtime, output_dir=Path(output_dir), **context)
    for step, skipped in row_steps_of(job):
        if skipped is None:
            key = step.key(ctx) if step.key else None
            ctx.results[step.name] = step.build(ctx, key)
    return ctx
