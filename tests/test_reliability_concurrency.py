"""Concurrency (issue 6, item 4): two `t2vz run` of one manifest at the same time, same output
and work folders (two real subprocesses through the installed `t2vz` entry point).

Neither run may corrupt the other's files: both exit 0, every output probes fine and its
frames equal a single run's (t2vz_core steps called directly, in a separate work folder); the
shared work folder holds one complete entry per key and no partial leftovers; a third run finds
every row up to date (nothing runs, hence no model load).
Budget: 33 s measured on the 2-core machine with other work running (load ~2.5).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from reliability_support import (
    T2VZ,
    check_output_folder,
    decoded_frames,
    explain,
    load_report,
    run_cli,
    run_env,
    run_rows_in_process,
    sidecar,
    write_manifest,
)

from t2vz_core.media.synthetic import make_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_two_runs_at_once_then_an_up_to_date_third(tiny_models, tmp_path):
    lib = tmp_path / "lib"
    make_video(lib / "clip.mp4", frames=6, size=(64, 48))
    base = {"resolution": 64, "num_inference_steps": 3, "chunk_size": 4, "seed": 7}
    manifest = write_manifest(
        lib / "manifest.csv",
        [
            {
                "job_id": "t2v",
                "mode": "text2video",
                "prompt": "a lighthouse",
                "model": str(tiny_models / "sd"),
                "video_length": 6,
                **base,
            },
            {
                "job_id": "canny",
                "mode": "canny",
                "source": "clip.mp4",
                "prompt": "a boat",
                "model": str(tiny_models / "sd"),
                "controlnet": str(tiny_models / "controlnet-canny"),
                **base,
            },
            {
                "job_id": "p2p",
                "mode": "pix2pix",
                "source": "clip.mp4",
                "prompt": "make it night",
                "model": str(tiny_models / "pix2pix"),
                **base,
            },
        ],
    )
    out = tmp_path / "out"
    args = ["run", str(manifest), "--output-dir", str(out), "--no-progress"]
    env = run_env(tmp_path)
    procs = [
        subprocess.Popen(
            [T2VZ, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, text in zip(procs, results):
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{text[-4000:]}"

    # a single run of the same manifest, straight through t2vz_core (own work and output folders)
    run_rows_in_process(manifest, tmp_path / "single-work", tmp_path / "single")
    videos = check_output_folder(out)
    assert sorted(v.stem for v in videos) == ["canny", "p2p", "t2v"]
    for job_id in ("t2v", "canny", "p2p"):
        concurrent = decoded_frames(out / f"{job_id}.mp4")
        reference = decoded_frames(tmp_path / "single" / f"{job_id}.mp4")
        assert concurrent.shape == reference.shape and np.array_equal(concurrent, reference), job_id
        assert (out / f"{job_id}.mp4").read_bytes() == (tmp_path / "single" / f"{job_id}.mp4").read_bytes(), job_id
        assert sidecar(out, job_id)["status"] == "ok"

    # the shared work folder: one finished entry per key, nothing half-built left behind
    work = out / ".t2vz-work"
    for step in ("decode", "control", "generate", "encode"):
        for entry in (work / step).iterdir():
            assert (entry / "entry.json").is_file(), entry
    partial = work / ".partial"
    assert not (partial.exists() and [p for p in partial.rglob("*") if p.is_file()])
    keys = {job_id: sidecar(out, job_id)["resolved"]["keys"] for job_id in ("t2v", "canny", "p2p")}
    assert {p.name for p in (work / "generate").iterdir()} == {k["generate"] for k in keys.values()}

    # a third run: every row up to date (nothing runs, so no model is loaded), sidecars untouched
    sidecars = {job_id: (out / f"{job_id}.json").read_bytes() for job_id in ("t2v", "canny", "p2p")}
    proc = run_cli(args, env, tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "all 3 row(s) up to date" in proc.stdout, explain(proc)
    for job_id in ("t2v", "canny", "p2p"):
        assert (out / f"{job_id}.json").read_bytes() == sidecars[job_id]
    report = load_report(out)
    assert report["counts"]["ok"] == 3 and all(line["up_to_date"] for line in report["rows"])
    for job_id in ("t2v", "canny", "p2p"):
        assert (out / f"{job_id}.mp4").read_bytes() == (tmp_path / "single" / f"{job_id}.mp4").read_bytes()
