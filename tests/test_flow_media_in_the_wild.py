"""One row of issue 15 end to end through the flow: a 29.97 fps H.264 clip with mono 48 kHz
AAC, trimmed inside audio packets, into `mp4;webm;gif` (it used to fail at the WebM encode).

The media matrix (test_media_matrix.py) covers every source kind at the media layer; this
checks that the row pipeline hands the same audio window to every output.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction

import av
import numpy as np
from media_matrix_support import AudioCase, VideoCase, check_audio, make_source
from PIL import Image, ImageSequence

START, END, FPS = 0.23, 1.31, 8


def test_mono_aac_clip_into_mp4_webm_and_gif(prefect_api, tiny_models, tmp_path, monkeypatch):
    from flows.batch import process_manifest
    from t2vz_core.media import DecodeSpec, iter_frames, plan_decode, probe
    from t2vz_core.options import RunOptions

    monkeypatch.setenv("T2VZ_RETRY_DELAY_S", "0")
    source = make_source(
        tmp_path / "media" / "phone.mp4",
        VideoCase("clip", size=(96, 64), fps=Fraction(30000, 1001)),
        AudioCase("aac", "mono", 48000),
    )
    manifest = tmp_path / "jobs.csv"
    row = dict(
        job_id="wild",
        mode="pix2pix",
        source="media/phone.mp4",
        prompt="make it snow",
        model=tiny_models / "pix2pix",
        seed=5,
        num_inference_steps=2,
        chunk_size=4,
        resolution=64,
        start=START,
        end=END,
        fps=FPS,
        output="mp4;webm;gif",
    )
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow({k: str(v) for k, v in row.items()})
    out = tmp_path / "out"
    state = process_manifest(
        manifest_path=str(manifest),
        output_dir=str(out),
        options=RunOptions(work_dir=str(tmp_path / "work")),
        return_state=True,
    )
    report = state.result(raise_on_failure=False)
    assert isinstance(report, dict) and report["counts"]["ok"] == 1, report
    sidecar = json.loads((out / "wild.json").read_text())
    assert sidecar["steps"]["encode"]["status"] == "computed"

    # the row's own plan: the frames and the audio window every output must carry
    plan = plan_decode(probe(source), DecodeSpec(start=START, end=END, fps=FPS, resolution=64))
    assert (len(plan), plan.width, plan.height) == (9, 64, 40)
    for fmt in ("mp4", "webm"):
        path = out / f"wild.{fmt}"
        info = probe(path)
        assert (info.frame_count, info.fps, info.width, info.height) == (9, FPS, 64, 40)
        assert info.audio_codec == ("aac" if fmt == "mp4" else "opus")
        # decord in t2vz's worker process (never imported here: it breaks OpenCV's PNG reads)
        assert len(np.concatenate(list(iter_frames(path, plan_decode(info), backend="decord")))) == 9
        check_audio(source, path, fmt, plan)
    with Image.open(out / "wild.gif") as gif:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == 9 and frames[0].shape == (40, 64, 3)
    with av.open(str(out / "wild.gif")) as container:
        assert not container.streams.audio and container.streams.video[0].frames in (0, 9)
