"""Real moving footage and a review folder for the QC, gallery and report-table tests.

panned_astronaut(frames, size) -> uint8 (F, size, size, 3): a window panning over a photograph
encode(frames, path, fps) -> str: an H.264 file made with PyAV
make_review_folder(root) -> (output_dir, rows): sidecars, previews, outputs and report lines
    of six rows covering every card status (ok, up to date, flagged, failed, invalid,
    text2video), with hostile text (markup in a prompt and an error) where users type.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

from t2vz_core import previews, report
from t2vz_core.media import FrameStore
from t2vz_core.sidecar import Sidecar, write_sidecar

XSS_PROMPT = '<script>window.__xss = "prompt"</script> a "quoted" & <b>bold</b> cat'
XSS_ERROR = "generate: <img src=x onerror=\"window.__xss = 'error'\"> failed"


def panned_astronaut(frames: int = 16, size: int = 96) -> np.ndarray:
    big = cv2.resize(data.astronaut(), (size * 2, size * 2), interpolation=cv2.INTER_AREA)
    return np.stack([big[20 + 2 * i : 20 + 2 * i + size, 10 + 3 * i : 10 + 3 * i + size] for i in range(frames)])


def encode(frames: np.ndarray, path, fps: int = 8) -> str:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def _store(path: Path, frames: np.ndarray, fps: int = 8) -> FrameStore:
    with FrameStore.writer(path, fps) as writer:
        writer.write(0, frames)
    return FrameStore(path)


def _sidecar(
    out: Path,
    job_id: str,
    row: int,
    mode: str,
    status: str = "ok",
    *,
    prompt: str = "a prompt",
    error: str | None = None,
    outputs=(),
    qc: dict | None = None,
    controlnet: str | None = None,
) -> Sidecar:
    steps = {
        name: {"status": "computed", "seconds": 0.5}
        for name in ("decode", "control", "generate", "encode", "qc", "publish")
    }
    if mode in ("text2video", "pix2pix"):
        steps["control"] = {"status": "skipped"}
    if status == "failed":
        steps["generate"] = {"status": "failed", "seconds": 0.2}
        steps.update({name: {"status": "not run"} for name in ("encode", "qc", "publish")})
    sidecar = Sidecar(
        job_id=job_id,
        row=row,
        mode=mode,
        status=status,
        error=error,
        outputs=[str(p) for p in outputs],
        seconds=2.25,
        steps=steps,
        qc=qc,
        resolved={"frames": 16},
        job={
            "job_id": job_id,
            "mode": mode,
            "prompt": prompt,
            "negative_prompt": "blurry",
            "seed": row,
            "model": "/models/sd-tiny",
            "controlnet": controlnet,
        },
    )
    write_sidecar(out, sidecar)
    return sidecar


def _qc(ratio: float | None, warp: float = 3.0) -> dict:
    return {
        "warp_error": warp,
        "source_warp_error": None if ratio is None else round(warp / ratio, 4),
        "warp_error_ratio": ratio,
        "flicker": 1.5,
        "source_flicker": None if ratio is None else 1.2,
    }


def make_review_folder(root: Path) -> tuple[Path, list[dict]]:
    out = root / "out"
    out.mkdir(parents=True)
    frames = panned_astronaut()
    edited = 255 - frames[..., ::-1]
    edges = np.repeat(np.stack([cv2.Canny(f, 80, 160) for f in frames])[..., None], 3, axis=-1)
    work = root / "work"
    source, control, output = (
        _store(work / "source", frames),
        _store(work / "control", edges),
        _store(work / "output", edited),
    )
    video = encode(edited, out / "canny-ok.mp4")

    previews.write_row_previews(out, "canny-ok", source=source, control=control, output=output)
    ok = _sidecar(out, "canny-ok", 2, "canny", outputs=[video], qc=_qc(1.1), controlnet="/models/cn-canny")
    previews.write_row_previews(out, "pix-current", source=source, output=video)  # a video file works too
    current = _sidecar(out, "pix-current", 3, "pix2pix", outputs=[video], qc=_qc(2.5))
    previews.write_row_previews(out, "canny-flagged", source=source, control=control, output=output)
    flagged = _sidecar(out, "canny-flagged", 4, "canny", outputs=[video], qc=_qc(4.0))
    previews.write_row_previews(out, "pose-failed", source=source, control=control, output=output)  # older run's
    failed = _sidecar(out, "pose-failed", 5, "pose", "failed", prompt=XSS_PROMPT, error=XSS_ERROR)
    previews.write_row_previews(out, "t2v", output=output)
    t2v = _sidecar(out, "t2v", 6, "text2video", outputs=[video], qc=_qc(None, warp=2.0))

    rows = [
        report.row_from_sidecar(ok, out),
        report.up_to_date_row(current, out),
        report.apply_qc_limit(report.row_from_sidecar(flagged, out), 3.0),  # over the row's limit: "flagged"
        report.row_from_sidecar(failed, out),
        report.row_from_sidecar(t2v, out),
        report.invalid_row(7, "bad-seed", None, ["seed: 'abc' is not a whole number"]),
    ]
    (out / "report.json").write_text(json.dumps({"rows": rows}))
    return out, rows


EXPECTED_STATUS = {
    "canny-ok": "ok",
    "pix-current": "up to date",
    "canny-flagged": "flagged",
    "pose-failed": "failed",
    "t2v": "ok",
    "bad-seed": "invalid",
}
