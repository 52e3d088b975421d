"""Rules that involve more than one column of a row, and how their problems travel out of pydantic."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from t2vz_core.manifest.columns import ANNOTATOR_BACKENDS, APPLIES_TO, CONTROLNET_MODES, SOURCE_MODES, STRUCTURAL
from t2vz_core.manifest.defaults import default_t0_t1, or_default
from t2vz_core.model_sources import source_problems
from t2vz_core.modes import t0_t1_problem

if TYPE_CHECKING:
    from t2vz_core.manifest.job import Job

Problem = tuple[str | None, str, frozenset[str]]  # (column, message, columns the rule depends on)


class RowProblems(ValueError):
    """Cross-column problems of one row, raised from the model validator and unpacked by read_manifest."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{column}: {message}" if column else message for column, message, _ in problems))


def cross_column_problems(job: Job, given: set[str]) -> list[Problem]:
    """Rules that involve more than one column, each with the columns it depends on."""
    problems: list[Problem] = []
    mode = job.mode

    def add(column: str | None, message: str, *involved: str) -> None:
        problems.append((column, message, frozenset({column, "mode", *involved} - {None})))

    if mode in SOURCE_MODES and job.source is None:
        add("source", f"source is required for mode {mode} (the video to edit)")
    for name in sorted(STRUCTURAL & given):
        if mode not in APPLIES_TO[name]:
            hint = {
                "source": "text2video generates from the prompt alone; leave source empty or pick a video mode",
                "video_length": "use max_frames to limit how many source frames are read",
                **dict.fromkeys(
                    ("shots", "shot_threshold", "min_shot_frames"),
                    "text2video makes one shot; shots split a source video at its cuts",
                ),
            }.get(name, "only pose, canny and depth use a ControlNet")
            add(name, f"{name} is not used by mode {mode}: {hint}")
    one_side = (job.width is None) != (job.height is None)
    missing = "height" if job.height is None else "width"
    if one_side and mode == "text2video":
        add(missing, "text2video needs both width and height (or neither, and resolution)", "width", "height")
    elif one_side and job.fit in ("crop", "pad"):
        add(missing, f"fit={job.fit} needs both width and height", "width", "height", "fit")
    if (job.width is not None or job.height is not None) and "resolution" in given:
        add("resolution", "give either resolution (long side) or width/height, not both", "width", "height")
    if mode in SOURCE_MODES and job.start is not None and job.end is not None and job.start >= job.end:
        add("end", f"end ({job.end:g} s) must be after start ({job.start:g} s)", "start")
    problems += _control_problems(job, given)
    problems += source_problems(job, given)
    if "revision" in given and os.path.isabs(job.model):
        add("revision", "revision applies to hub models; the model is a local folder", "model")
    if mode == "text2video":
        steps = job.num_inference_steps
        d0, d1 = default_t0_t1(steps)
        t0, t1 = or_default(job.t0, d0), or_default(job.t1, d1)
        rule = (
            f"need 0 <= t0 < t1 <= num_inference_steps-1 (= {steps - 1}): t0 and t1 are indices into the "
            f"{steps}-step schedule between which the first frame's latent is re-noised to make motion "
            "(defaults 44/47 of 50 steps)"
        )
        problem = t0_t1_problem(t0, t1, steps)
        if problem == "steps":
            add("num_inference_steps", f"text2video needs at least 2 steps ({rule})", "t0", "t1")
        elif problem == "t1":
            add("t1", f"t1={t1} is too large for num_inference_steps={steps}; {rule}", "t0", "num_inference_steps")
        elif problem == "t0":
            add("t0", f"t0={t0} must be smaller than t1={t1}; {rule}", "t1", "num_inference_steps")
    return problems


def _control_problems(job: Job, given: set[str]) -> list[Problem]:
    """control_backend must suit the mode, annotator needs a backend with weights, thresholds low < high."""
    from t2vz_core.control.maps import BACKENDS, DEFAULT_BACKEND

    mode = job.mode
    if mode not in CONTROLNET_MODES or job.control == "given":
        return []
    problems: list[Problem] = []
    backend = job.control_backend or DEFAULT_BACKEND[mode]
    if job.control_backend is not None and backend not in BACKENDS[mode]:
        problems.append(
            (
                "control_backend",
                f"control_backend {backend} does not make {mode} maps: use one of {', '.join(BACKENDS[mode])}",
                frozenset({"control_backend", "mode"}),
            )
        )
    elif "annotator" in given and backend not in ANNOTATOR_BACKENDS:
        problems.append(
            (
                "annotator",
                f"annotator is not used by the {backend} backend (it needs no weights); "
                f"it applies to {', '.join(sorted(ANNOTATOR_BACKENDS))}",
                frozenset({"annotator", "control_backend", "mode"}),
            )
        )
    if mode == "canny":
        from t2vz_core.control.canny import DEFAULTS, threshold_problem

        low = or_default(job.low_threshold, DEFAULTS["low_threshold"])
        problem = threshold_problem(low, or_default(job.high_threshold, DEFAULTS["high_threshold"]))
        if problem:
            problems.append(
                (
                    "low_threshold",
                    f"{problem} (defaults {DEFAULTS['low_threshold']} and {DEFAULTS['high_threshold']})",
                    frozenset({"low_threshold", "high_threshold", "mode"}),
                )
            )
    return problems
