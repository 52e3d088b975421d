"""Shots through the row pipeline (t2vz_core.pipeline, no Prefect): the cuts step after decode,
its cache, generation per shot, the row oracle on real files, and what the sidecar and report
show. Real two-shot clip (PyAV H.264), tiny canny models. Budget: ~60 s on 2 cores."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from shot_clips import two_shot_frames, write_clip

from flows.batch import report_table
from t2vz_core import pipeline
from t2vz_core.manifest import read_manifest
from t2vz_core.media import FrameStore, probe
from t2vz_core.report import row_from_sidecar, write_report
from t2vz_core.row_steps import output_shots
from t2vz_core.runtime import Runtime
from t2vz_core.sidecar import Sidecar, read_sidecar, write_sidecar
from t2vz_core.workdir import WorkDir

CPU = Runtime(device="cpu", dtype="fp32")
CUT = 14  # the clip: 14 frames of one shot, then 13 of another, 24 fps (min_shot_frames default 12)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("shots-library")
    write_clip(root / "two.mp4", two_shot_frames(CUT, 13, size=96), fps=24)
    return {"root": root, "work": WorkDir(root / "work"), "models": tiny_models}


def run_row(library, name: str, source: str = "two.mp4", **cells):
    """One canny row through every declared step; returns the row's context (its step results)."""
    models = library["models"]
    row = {
        "job_id": name,
        "mode": "canny",
        "source": source,
        "prompt": "a glass boat",
        "resolution": 64,
        "num_inference_steps": 2,
        "chunk_size": 4,
        "seed": 3,
        "model": models / "sd",
        "controlnet": models / "controlnet-canny",
        **cells,
    }
    path = library["root"] / f"{name}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow({k: str(v) for k, v in row.items()})
    manifest = read_manifest(path)
    assert manifest.errors == [], manifest.errors
    return pipeline.run_direct(manifest.jobs[0], library["work"], CPU, library["root"] / "out")


def hits(ctx) -> dict[str, bool]:
    return {name: result.hit for name, result in ctx.results.items() if name != "publish"}


@pytest.fixture(scope="module")
def split(library):
    return run_row(library, "split")


def test_the_row_is_split_at_the_cut_and_its_output_keeps_every_frame(split):
    assert split.results["cuts"].shots == [(0, CUT), (CUT, 27)]
    assert split.results["cuts"].min_shot_frames == 12  # half a second at 24 fps
    video = probe(split.results["publish"].outputs[0])
    assert (video.frame_count, video.fps) == (27, Fraction(24))  # one video, every frame, same timing
    assert len(FrameStore(split.results["generate"].frames)) == 27


def test_each_shot_equals_the_row_run_on_a_clip_of_only_that_shot(library, split):
    """The oracle on real files: a lossless clip holding only frames [s, e) of the decoded plan."""
    decoded = FrameStore(split.results["decode"].frames)
    generated = FrameStore(split.results["generate"].frames)
    for index, (start, stop) in enumerate(split.results["cuts"].shots):
        clip = f"shot{index}.mov"
        write_lossless(library["root"] / clip, decoded[start:stop])
        alone = run_row(library, f"alone{index}", source=clip)
        assert alone.results["cuts"].shots == [(0, stop - start)]
        assert np.array_equal(FrameStore(alone.results["decode"].frames)[:], decoded[start:stop])
        difference = np.abs(FrameStore(alone.results["generate"].frames)[:].astype(int) - generated[start:stop])
        assert difference.max() <= 1, (start, stop)  # float noise may flip a rounding by one level


def test_detector_cells_rerun_cuts_and_generation_but_reuse_decode_and_maps(library, split):
    same_shots = run_row(library, "split", shot_threshold=30)
    assert same_shots.results["cuts"].shots == split.results["cuts"].shots
    assert hits(same_shots) == {
        "decode": True,
        "cuts": False,
        "control": True,
        "generate": True,
        "encode": True,
        "qc": True,
    }

    one_shot = run_row(library, "split", shot_threshold=200)
    assert one_shot.results["cuts"].shots == [(0, 27)]
    assert hits(one_shot) == {
        "decode": True,
        "cuts": False,
        "control": True,
        "generate": False,
        "encode": False,
        "qc": False,
    }

    # One detected shot generates exactly like shots=none (today's behaviour): the same entry.
    unsplit = run_row(library, "split", shots="none")
    assert "cuts" not in unsplit.results
    assert hits(unsplit) == {"decode": True, "control": True, "generate": True, "encode": True, "qc": True}
    assert unsplit.results["generate"].key == one_shot.results["generate"].key != split.results["generate"].key


def test_sidecar_and_report_show_the_shots(tmp_path, split):
    sidecar = Sidecar(job_id="split", mode="canny", status="ok", shots=output_shots(split), outputs=[])
    write_sidecar(tmp_path, sidecar)
    assert json.loads((tmp_path / "split.json").read_text())["shots"] == [[0, 14], [14, 27]]
    line = row_from_sidecar(read_sidecar(tmp_path, "split"), tmp_path)
    assert line["shots"] == 2
    write_report(tmp_path, [line])
    with open(tmp_path / "report.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["shots"] == "2"
    assert {"shots", "cuts"} <= set(report_table([line])[0])  # the Prefect table artifact's columns


def test_rows_without_detection_record_one_shot(library):
    unsplit = run_row(library, "split", shots="none")
    assert output_shots(unsplit) == [(0, 27)]


def write_lossless(path: Path, frames: np.ndarray, fps: int = 24) -> Path:
    """RGB frames into a PNG-coded QuickTime file: decoded back bit for bit."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
