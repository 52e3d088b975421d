"""The steps of one row as plain functions (no Prefect): decode -> cuts -> control -> generate -> encode -> qc ->
publish.

Each step has a key function `*_key(ctx) -> str` and a build function `*_build(ctx, key)` that
returns a typed result (t2vz_core.step_results) referring to what it wrote. Their order, inputs
and outputs are declared once, in t2vz_core.pipeline; `ctx` is that module's `RowContext`. Frames,
maps and videos live in the content-addressed work folder, never in memory between steps.

Keys (sha256, see `workdir.make_key`) chain like a Merkle tree: a step's key covers the key of
its input entry plus its own parameters, so a change anywhere re-runs exactly what depends on it:

- decode:   sha256 of the source file's bytes (not its path) + the decode parameters
- cuts:     decode key + shot detector, its version and settings (threshold, min_shot_frames)
- control:  decode key + control kind, backend and parameters
- generate: conditioning key (control, or decode for pix2pix / control=given, none for text2video)
            + generation parameters (prompt, seed, steps, sizes...) + model and ControlNet
            fingerprints (weights' bytes or hub revision) + device type and dtype
            + when the row names them: LoRA bytes and scales, VAE, scheduler, single-file configs
            (t2vz_core.model_sources)
            + the shots found by cuts when there are several (the result, not the cells: a detector
            setting that finds the same shots reuses the generation)
- encode:   generate key + output formats + fps + the source's bytes when its audio is kept
- qc:       generate, decode and control keys + the scoring method and preview size (t2vz_core.qc)

Every key also covers `t2vz_core.__version__`. Publishing copies from the work folder into the
output folder and is always re-checked (cheap), so a deleted output comes back on the next run.

Models load lazily inside `generate_build`, after the work folder has been checked: a cached
generation never loads a model. Turning a `Job` into a decode plan, control parameters or an
engine request happens here, next to the step that consumes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import t2vz_core
from t2vz_core.atomic import atomic_copy, atomic_write_json, copy_dir_atomic, is_stale_temp
from t2vz_core.errors import InputError
from t2vz_core.gc_pause import paused_gc
from t2vz_core.manifest import Job
from t2vz_core.manifest.defaults import (
    DEFAULT_CONTROLNET_SCALE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_MOTION,
    DEFAULT_RESOLUTION,
    default_t0_t1,
    or_default,
)
from t2vz_core.paths import output_path
from t2vz_core.rates import to_fraction
from t2vz_core.step_results import (
    ControlResult,
    CutsResult,
    DecodeResult,
    EncodeResult,
    FramesResult,
    GenerateResult,
    PublishResult,
    QCResult,
    SourceInfo,
    StepResult,
)
from t2vz_core.workdir import Entry, WorkDir, file_digest, make_key

if TYPE_CHECKING:
    from t2vz_core.media.plan import DecodeSpec
    from t2vz_core.pipeline import RowContext
    from t2vz_core.runtime import Runtime

VIDEO_FORMATS = ("mp4", "webm", "gif")

_warm_lock = threading.Lock()
_warm = False


def warm_imports() -> None:
    """Import the lazily-loaded diffusers classes once, under a lock: diffusers' lazy module is
    not thread-safe (two row threads touching it at once can raise ImportError). Called only on
    paths that need diffusers, so a fully cached run never pays its import (~5-10 s)."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        with paused_gc():  # ~1.3 s of CPU in full collections otherwise (see gc_pause.py)
            _import_diffusers_and_engine()
        _warm = True


def _import_diffusers_and_engine() -> None:
    import diffusers

    from t2vz_core.model_sources import SCHEDULERS

    for name in (
        "DiffusionPipeline",
        "UNet2DConditionModel",
        "ControlNetModel",
        "StableDiffusionPipeline",
        "StableDiffusionControlNetPipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLControlNetPipeline",
        "StableDiffusionInstructPix2PixPipeline",
        "AutoencoderKL",
        *(class_name for class_name, _ in SCHEDULERS.values()),
    ):
        getattr(diffusers, name)
    import t2vz_core.engine  # noqa: F401


def _result(cls: type[StepResult], entry: Entry, **fields: Any) -> Any:
    """A step's typed result: where its entry lives plus the entry's metadata."""
    meta = {k: v for k, v in entry.meta.items() if k not in ("step", "key", "created", "schema", "t2vz_core")}
    return cls(step=entry.step, key=entry.key, path=str(entry.path), hit=entry.hit, **meta, **fields)


# ---------------------------------------------------------------- decode


def decode_spec_kwargs(job: Job) -> dict[str, Any]:
    """The row's `DecodeSpec` fields (start, end, fps, max_frames, resolution, width, height, fit)."""
    return {
        "start": job.start,
        "end": job.end,
        "fps": job.fps,
        "max_frames": job.max_frames,
        "resolution": job.resolution,
        "width": job.width,
        "height": job.height,
        "fit": job.fit or "keep",
    }


def decode_spec(job: Job) -> DecodeSpec:
    from t2vz_core.media.plan import DecodeSpec

    return DecodeSpec(**decode_spec_kwargs(job))


# How decoded pixels are made (t2vz_core/media/decode.py). 2: decord and PyAV both decode at
# the source size and media.geometry resizes, so the backend that ran does not matter; in
# version 1 decord scaled by itself (up to 51/255 apart), so those entries are not reused.
DECODED_PIXELS = 2


def decode_key(ctx: RowContext) -> str:
    job = ctx.job
    if job.source is None:
        raise InputError(f"job {job.job_id!r}: mode {job.mode} has no source to decode")
    digest = file_digest(job.source, ctx.work.digest_memo if ctx.work else None)
    return make_key("decode", {"source_sha256": digest, "spec": decode_spec_kwargs(job), "pixels": DECODED_PIXELS})


def decode_build(ctx: RowContext, key: str) -> DecodeResult:
    """Probe and decode the source into a lossless PNG FrameStore at the planned size and fps."""
    from t2vz_core.media import decode_to_store, plan_decode, probe

    job, work = ctx.job, ctx.work

    def build(folder: Path) -> dict:
        info = probe(job.source)
        plan = plan_decode(info, decode_spec(job))
        digest = file_digest(job.source, work.digest_memo)
        store = decode_to_store(job.source, plan, folder / "frames", source={"sha256": digest})
        source_info = SourceInfo(
            width=info.width,
            height=info.height,
            fps=info.fps,
            frames=info.frame_count,
            duration=info.duration,
            codec=info.codec,
            rotation=info.rotation,
        )
        return {
            "count": len(store),
            "fps": store.fps,
            "width": store.width,
            "height": store.height,
            "has_audio": bool(info.has_audio),
            "audio_start": float(plan.start),
            "source_sha256": digest,
            "source_info": source_info.model_dump(mode="json"),
        }

    return _result(DecodeResult, work.produce("decode", key, build, force=ctx.force, resumable=True))


# ---------------------------------------------------------------- cuts (shots)

SHOT_DETECTOR = "pyscenedetect-content"


@functools.lru_cache(maxsize=1)
def shot_detector() -> str:
    """The detector and its library's version (read from metadata, nothing imported; cached: a
    lookup scans sys.path and the up-to-date check asks once per row)."""
    from importlib import metadata

    for package in ("scenedetect-headless", "scenedetect"):
        try:
            return f"{SHOT_DETECTOR}/{metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{SHOT_DETECTOR}/not-installed"  # the cuts step itself then fails with the import error


def cuts_settings(ctx: RowContext) -> dict[str, Any]:
    """The detector and its settings, completed with defaults (min_shot_frames: half a second at
    the decoded rate), so each one moves the key."""
    from t2vz_core.shots import DEFAULT_SHOT_THRESHOLD, default_min_shot_frames

    job, decoded = ctx.job, ctx.results["decode"]
    return {
        "detector": shot_detector(),
        "threshold": float(or_default(job.shot_threshold, DEFAULT_SHOT_THRESHOLD)),
        "min_shot_frames": or_default(job.min_shot_frames, default_min_shot_frames(decoded.fps)),
    }


def cuts_key(ctx: RowContext) -> str:
    return make_key("cuts", {"decode": ctx.results["decode"].key, **cuts_settings(ctx)})


def cuts_build(ctx: RowContext, key: str) -> CutsResult:
    """Find the decoded video's shots (reads the frames 16 at a time; writes only entry.json)."""
    from t2vz_core.media import FrameStore
    from t2vz_core.shots import detect_shots

    settings = cuts_settings(ctx)
    decoded = ctx.results["decode"]

    def build(folder: Path) -> dict:
        shots = detect_shots(FrameStore(decoded.frames), settings["threshold"], settings["min_shot_frames"])
        return {"shots": shots, **settings}

    return _result(CutsResult, ctx.work.produce("cuts", key, build, force=ctx.force))


def generation_shots(ctx: RowContext) -> list[tuple[int, int]] | None:
    """The shots generation splits the video into; None for one shot (generated as before shots existed)."""
    cuts = ctx.results.get("cuts")
    return list(cuts.shots) if cuts is not None and len(cuts.shots) > 1 else None


def output_shots(ctx: RowContext) -> list[tuple[int, int]] | None:
    """The output's shots as [start, end) frame ranges covering every frame (for the sidecar):
    the detected ones, else one shot of every generated frame; None before they are known."""
    cuts, generated = ctx.results.get("cuts"), ctx.results.get("generate")
    if cuts is not None:
        return list(cuts.shots)
    return [(0, generated.count)] if generated is not None else None


# ---------------------------------------------------------------- control maps


def control_kind(job: Job) -> str | None:
    """The control maps a job extracts, or None (text2video, pix2pix, or control=given)."""
    if job.uses_controlnet and job.control != "given":
        return job.mode
    return None


def control_options(job: Job) -> tuple[str | None, dict[str, Any]]:
    """(backend or None for the default, parameters set in the row) for t2vz_core.control."""
    params: dict[str, Any] = {}
    if job.annotator is not None:
        params["annotator"] = job.annotator
    if job.mode == "canny":
        for name in ("low_threshold", "high_threshold"):
            if getattr(job, name) is not None:
                params[name] = getattr(job, name)
    return job.control_backend, params


def control_settings(job: Job) -> tuple[str, str, dict]:
    """(kind, backend, full parameters) of the maps a job extracts: the row's control_backend, annotator
    and thresholds, completed with t2vz_core.control's defaults (so they all move the control key)."""
    from t2vz_core.control import control_params

    kind = control_kind(job)
    if kind is None:
        raise InputError(f"job {job.job_id!r}: mode {job.mode} with control={job.control} extracts no maps")
    backend, row_params = control_options(job)
    backend, params = control_params(kind, row_params, backend)
    return kind, backend, params


def control_key(ctx: RowContext) -> str:
    kind, backend, params = control_settings(ctx.job)
    return make_key(
        "control", {"decode": ctx.results["decode"].key, "kind": kind, "backend": backend, "params": params}
    )


def control_build(ctx: RowContext, key: str) -> ControlResult:
    """Extract control maps (pose skeletons, canny edges, depth) from the decoded frames. Resumable."""
    from t2vz_core.control import control_maps_to_store
    from t2vz_core.media import FrameStore

    kind, backend, params = control_settings(ctx.job)
    decoded = ctx.results["decode"]

    def build(folder: Path) -> dict:
        store = control_maps_to_store(
            kind, FrameStore(decoded.frames), folder / "frames", params, backend, source={"decode": decoded.key}
        )
        return {
            "count": len(store),
            "fps": decoded.fps,
            "width": store.width,
            "height": store.height,
            "kind": kind,
            "backend": backend,
        }

    return _result(ControlResult, ctx.work.produce("control", key, build, force=ctx.force, resumable=True))


# ---------------------------------------------------------------- generate


def runtime_signature(runtime: Runtime) -> dict[str, str]:
    """The parts of a runtime that change generated pixels: device type, dtype, VAE tiling (tiles
    are blended at their seams) and TF32 for fp32 on a GPU (its matmuls round to 10 mantissa
    bits); slicing and offloading leave pixels alone."""
    device, dtype = runtime.signature()
    signature = {"device": device, "dtype": dtype}
    if runtime.vae_tiling:
        signature["vae_tiling"] = "on"  # absent when off, so existing keys stay valid
    if runtime.tf32 and device == "cuda" and dtype == "float32":
        signature["tf32"] = "on"
    return signature


def model_family(
    model: str,
    fingerprint: str,
    work: WorkDir | None = None,
    revision: str | None = None,
    model_config: str | None = None,
) -> str:
    """The model's family ("sd", "sdxl", "pix2pix"), remembered in the work folder per fingerprint
    (the family is a function of the model's files, and for a .ckpt of its model_config), so cached
    runs need not import diffusers."""
    key = f"{fingerprint}|model_config={model_config}" if model_config else fingerprint
    memo = work.root / ".models" / f"{hashlib.sha256(key.encode()).hexdigest()}.json" if work else None
    if memo is not None:
        try:
            return json.loads(memo.read_text())["family"]
        except (FileNotFoundError, ValueError, KeyError):
            pass
    warm_imports()
    from t2vz_core.models import detect_family

    family = detect_family(model, revision, model_config)
    if memo is not None and not fingerprint.endswith("@unresolved"):
        atomic_write_json(memo, {"family": family, "model": model, "fingerprint": fingerprint})
    return family


def resolve_models(job: Job, work: WorkDir | None = None, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Family, model and ControlNet ids with their fingerprints; reads configs only, loads no weights.

    `recorded`: an earlier result for this job (a sidecar's); its family is reused when the model's
    fingerprint is unchanged (the family is a function of the model's files)."""
    from t2vz_core import model_sources

    # The row's revision is the base model's (the ControlNet loads its default revision).
    # model / controlnet may also be single checkpoint files (fingerprinted by their bytes).
    fingerprint = model_sources.weights_fingerprint(job.model, job.revision)
    same_model = recorded and recorded.get("model_fingerprint") == fingerprint
    if same_model and recorded.get("model_config") == job.base_model_config and recorded.get("family"):
        family = recorded["family"]
    else:
        family = model_family(job.model, fingerprint, work, job.revision, job.base_model_config)
    controlnet = job.controlnet_for("sdxl" if family == "sdxl" else "sd")
    return {
        "family": family,
        "model": job.model,
        "revision": job.revision,
        "model_fingerprint": fingerprint,
        "controlnet": controlnet,
        "controlnet_fingerprint": model_sources.weights_fingerprint(controlnet) if controlnet else None,
        **model_sources.resolve_sources(job),  # LoRAs, VAE, scheduler, configs: only those the row sets
    }


def text2video_size(job: Job) -> tuple[int, int]:
    """(width, height) of a text2video row: width x height, or resolution x resolution."""
    if job.width is not None and job.height is not None:
        return job.width, job.height
    side = job.resolution or DEFAULT_RESOLUTION
    return side, side


def frame_size(job: Job, conditioning: FramesResult | None) -> tuple[int, int]:
    if conditioning is None:
        return text2video_size(job)
    return conditioning.width, conditioning.height


def generation_params(job: Job) -> dict[str, Any]:
    """The engine `GenerationRequest` fields this row decides (not width/height, which come from decoding).

    Parameters the mode ignores are sent as their defaults (t0/t1 scaled to the step count), so
    that the request always validates; `video_length` is None except for text2video.
    """
    t0, t1 = (job.t0, job.t1) if job.t0 is not None else default_t0_t1(job.num_inference_steps)
    return {
        "mode": job.mode,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": job.guidance_scale,
        "image_guidance_scale": or_default(job.image_guidance_scale, DEFAULT_IMAGE_GUIDANCE),
        "controlnet_conditioning_scale": or_default(job.controlnet_conditioning_scale, DEFAULT_CONTROLNET_SCALE),
        "seed": job.seed,
        "chunk_size": job.chunk_size,
        "motion_field_strength_x": or_default(job.motion_field_strength_x, DEFAULT_MOTION),
        "motion_field_strength_y": or_default(job.motion_field_strength_y, DEFAULT_MOTION),
        "t0": t0,
        "t1": t1,
        # None outside text2video: the frame count comes from the conditioning frames.
        "video_length": job.video_length if job.mode == "text2video" else None,
    }


def generation_request(job: Job, width: int | None = None, height: int | None = None) -> dict[str, Any]:
    """`generation_params()` plus the frame size: complete kwargs for `GenerationRequest(**...)`.

    Video modes must pass the decoded width/height; text2video defaults to `text2video_size()`.
    """
    kwargs = generation_params(job)
    if job.mode == "text2video":
        default_w, default_h = text2video_size(job)
        width, height = width or default_w, height or default_h
    elif width is None or height is None:
        raise InputError(f"job {job.job_id!r}: mode {job.mode} needs the decoded width and height")
    kwargs.update(width=width, height=height)
    return kwargs


def generate_key(ctx: RowContext) -> str:
    job, conditioning = ctx.job, ctx.conditioning
    width, height = frame_size(job, conditioning)
    params = generation_params(job)
    if job.mode != "text2video":
        # The engine's output does not depend on the chunk size in these modes (anchor reuse):
        # a smaller chunk after an out-of-memory error, or another GPU's, reuses the same entry.
        params.pop("chunk_size", None)
    from t2vz_core.model_sources import key_parts

    models = ctx.models
    parts = {
        "conditioning": conditioning.key if conditioning else None,
        "params": params,
        "size": [width, height],
        "models": {k: models[k] for k in ("family", "model_fingerprint", "controlnet_fingerprint")},
        "runtime": runtime_signature(ctx.runtime),
    }
    sources = key_parts(models)
    if sources:  # LoRAs, VAE, scheduler, configs; absent for rows without those cells, so their keys stay valid
        parts["sources"] = sources
    shots = generation_shots(ctx)
    if shots is not None:  # one shot generates exactly as an unsplit video: same key, same entry
        parts["shots"] = [list(shot) for shot in shots]
    return make_key("generate", parts)


def generate_build(ctx: RowContext, key: str) -> GenerateResult:
    """Run Text2Video-Zero for the job into a FrameStore. Resumable: finished chunks survive a crash.

    `ctx.chunk_size` overrides the job's (after an out-of-memory error; recorded in the entry). Only
    for pose/canny/depth/pix2pix, whose frames do not depend on it (it is not in their key).
    `ctx.hold_device` is entered only when there is work to do (cached results never wait for it),
    and the engine (torch, diffusers: ~5 s of CPU) is imported only then too.
    """
    from t2vz_core.media import FrameStore

    job, conditioning, runtime, models = ctx.job, ctx.conditioning, ctx.runtime, ctx.models
    width, height = frame_size(job, conditioning)
    kwargs = generation_request(job, width, height)
    if ctx.chunk_size is not None:
        if job.mode == "text2video":
            raise InputError("text2video frames depend on chunk_size: it cannot be overridden")
        kwargs["chunk_size"] = ctx.chunk_size
    fps = conditioning.fps if conditioning else to_fraction(job.fps)
    shots = generation_shots(ctx)

    def build(folder: Path) -> dict:
        warm_imports()  # first: it pauses the collector for the engine's imports
        from t2vz_core.engine import GenerationRequest, generate
        from t2vz_core.model_sources import ModelSources, build_scheduler
        from t2vz_core.models import load_pipeline

        request = GenerationRequest(**kwargs)
        request.validate()
        with ctx.hold_device():
            pipe = load_pipeline(
                models["family"],
                models["model"],
                models["controlnet"],
                runtime,
                revision=models.get("revision"),
                sources=ModelSources.of(job),
            )
            source = FrameStore(conditioning.frames) if conditioning else None
            # Frames of a crashed attempt are resumed only by an identical request; text2video
            # frames also depend on the chunk size (which an out-of-memory retry changes).
            meta = {"generate_key": key}
            if job.mode == "text2video":
                meta["chunk_size"] = request.chunk_size
            with FrameStore.writer(folder / "frames", fps=fps, meta=meta) as writer:
                generate(
                    pipe,
                    request,
                    conditioning=source,
                    output=writer,
                    checkpoint_path=folder / "checkpoint",
                    on_progress=ctx.on_progress,
                    scheduler=build_scheduler(job.scheduler, pipe.scheduler),
                    shots=shots,
                )
        (folder / "checkpoint").unlink(missing_ok=True)  # the engine removes it too when done
        count = len(FrameStore(folder / "frames"))
        return {
            "count": count,
            "fps": fps,
            "width": width,
            "height": height,
            "chunk_size": request.chunk_size,
            "requested_chunk_size": job.chunk_size,
            "runtime": {**runtime_signature(runtime), "offload": runtime.offload},
        }

    return _result(GenerateResult, ctx.work.produce("generate", key, build, force=ctx.force, resumable=True))


# ---------------------------------------------------------------- encode


def keeps_audio(decoded: DecodeResult | None) -> bool:
    return bool(decoded and decoded.has_audio)


# How encoded files are made (t2vz_core/media/encode.py). 2: audio re-encoded from planar frames
# placed by their timestamps (any layout and sample count), MP4 on a 90 kHz movie clock.
ENCODED_FILES = 2


def encode_key(ctx: RowContext) -> str:
    decoded, generated = ctx.results.get("decode"), ctx.results["generate"]
    audio = {"source_sha256": decoded.source_sha256, "start": decoded.audio_start} if keeps_audio(decoded) else None
    return make_key(
        "encode",
        {
            "generate": generated.key,
            "formats": list(ctx.job.output),
            "fps": generated.fps,
            "audio": audio,
            "files": ENCODED_FILES,
        },
    )


def _container_tags(job: Job) -> dict[str, str]:
    """Provenance tags written into MP4/WebM files (all of it is covered by the generate key)."""
    return {
        "comment": f"made with t2vz {t2vz_core.__version__} (Text2Video-Zero)",
        "t2vz_mode": job.mode,
        "t2vz_prompt": job.prompt,
        "t2vz_seed": str(job.seed),
    }


def encode_build(ctx: RowContext, key: str) -> EncodeResult:
    """Encode the generated frames into every requested format (video.mp4, video.gif, png/...)."""
    from t2vz_core.media import FrameStore, encode_video, write_png_sequence

    job, decoded, generated = ctx.job, ctx.results.get("decode"), ctx.results["generate"]

    def build(folder: Path) -> dict:
        frames = FrameStore(generated.frames)
        files: dict[str, str] = {}
        for fmt in job.output:
            if fmt == "png":
                write_png_sequence(frames, folder / "png")
                files[fmt] = "png"
                continue
            name = f"video.{fmt}"
            audio = (
                dict(audio_source=str(job.source), audio_start=decoded.audio_start)
                if keeps_audio(decoded) and fmt != "gif"
                else {}
            )
            encode_video(frames, folder / name, generated.fps, fmt=fmt, metadata=_container_tags(job), **audio)
            files[fmt] = name
        return {"files": files, "count": len(frames), "fps": generated.fps}

    return _result(EncodeResult, ctx.work.produce("encode", key, build, force=ctx.force))


# ---------------------------------------------------------------- qc

QC_METHOD = "dis-medium/fb-consistency/1"  # t2vz_core.qc's definition: a change re-scores every row


def qc_inputs(ctx: RowContext) -> dict[str, FramesResult | None]:
    """What the scores and previews are made from: the output, the source its motion is measured on
    (the decoded source; with control=given the control video, which then is the motion reference;
    none for text2video) and the control maps."""
    decoded = ctx.results.get("decode")
    control = ctx.results.get("control") or (decoded if ctx.job.control == "given" else None)
    source = decoded if ctx.job.control != "given" else None
    return {"output": ctx.results["generate"], "source": source, "control": control, "motion": decoded}


def qc_key(ctx: RowContext) -> str:
    from t2vz_core.previews import PREVIEW_FRAMES, PREVIEW_SIDE

    inputs = qc_inputs(ctx)
    return make_key(
        "qc",
        {name: ref.key if ref is not None else None for name, ref in inputs.items()}
        | {"method": QC_METHOD, "previews": {"side": PREVIEW_SIDE, "frames": PREVIEW_FRAMES}},
    )


def qc_build(ctx: RowContext, key: str) -> QCResult:
    """Score the generated frames against the decoded source (t2vz_core.qc) and make the gallery's
    small looping previews of source, control maps and output (t2vz_core.previews) in the entry;
    publish copies the previews beside the outputs."""
    from t2vz_core import previews, qc

    inputs = qc_inputs(ctx)

    def build(folder: Path) -> dict:
        motion = inputs["motion"]
        scores = qc.score_stores(inputs["output"].frames, motion.frames if motion is not None else None)
        made = {}
        for kind in previews.PREVIEW_KINDS:
            if inputs[kind] is not None:
                previews.preview_from_store(inputs[kind].frames, folder / "previews" / f"{kind}.webp")
                made[kind] = f"previews/{kind}.webp"
        return {"qc": scores.to_dict(), "flow_from": scores.flow_from, "pairs": scores.pairs, "previews": made}

    return _result(QCResult, ctx.work.produce("qc", key, build, force=ctx.force))


def publish_previews(ctx: RowContext) -> None:
    """Copy the qc step's previews to OUTPUT_DIR/previews/<job_id>.<kind>.webp (gallery material,
    not outputs: no digest, so a deleted preview does not make the row run again)."""
    from t2vz_core.previews import PREVIEW_KINDS, preview_path

    checked = ctx.results.get("qc")
    for kind in PREVIEW_KINDS:
        dst = preview_path(ctx.output_dir, ctx.job.job_id, kind)
        if checked is None or kind not in checked.previews:
            dst.unlink(missing_ok=True)  # not one of this run's: an older run's would mislead
            continue
        src = Path(checked.path) / checked.previews[kind]
        if not _same_file(src, dst):
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(src, dst)


# ---------------------------------------------------------------- publish


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and file_digest(a) == file_digest(b)
    except FileNotFoundError:
        return False


def output_digest(path: Path, memo_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a published file, or of a PNG folder's file names and digests."""
    if path.is_dir() and not path.is_symlink():
        digest = hashlib.sha256()
        for child in sorted(path.iterdir()):
            digest.update(child.name.encode() + b"\0" + file_digest(child, memo_dir).encode() + b"\n")
        return digest.hexdigest()
    return file_digest(path, memo_dir)


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir() or b.is_symlink():
        return False
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(_same_file(a / n, b / n) for n in names)


STALE_TEMP_S = 3600  # a temporary file this old belongs to a killed run, not a live one


def _sweep_stale_temps(dst: Path) -> None:
    """Remove temporaries a killed run left beside `dst` (never a live run's: those are fresh)."""
    import shutil

    now = time.time()
    for leftover in dst.parent.glob(".*"):
        try:
            if is_stale_temp(leftover, dst.name) and now - leftover.lstat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
        except FileNotFoundError:
            pass


def output_paths(job: Job, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Where each output format of a row is published: OUTPUT_DIR/<job_id>.<ext>, or a folder for png."""
    return {fmt: output_path(output_dir, job.job_id, "" if fmt == "png" else f".{fmt}") for fmt in job.output}


def publish_build(ctx: RowContext, key: str | None = None) -> PublishResult:
    """Copy encoded files to OUTPUT_DIR/<job_id>.<ext> (or OUTPUT_DIR/<job_id>/ for png), atomically.

    Files already identical at the destination are left alone (status 'cached'). The result
    lists each output's digest, so a later run can tell an edited output without the work folder.
    """
    encoded = ctx.results["encode"]
    out = Path(ctx.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs, copied = [], 0
    for fmt, dst in output_paths(ctx.job, out).items():
        src = Path(encoded.path) / encoded.files[fmt]
        _sweep_stale_temps(dst)
        if fmt == "png":
            if not _same_tree(src, dst):
                copy_dir_atomic(src, dst)
                copied += 1
        elif not _same_file(src, dst):
            atomic_copy(src, dst)
            copied += 1
        outputs.append(str(dst))
    publish_previews(ctx)
    digests = {Path(path).name: output_digest(Path(path)) for path in outputs}  # by name: the folder may move
    return PublishResult(step="publish", key=encoded.key, outputs=outputs, digests=digests, hit=copied == 0)
