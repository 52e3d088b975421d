"""Crash safety (issue 6, item 2): SIGKILL `t2vz run` in the middle of generation, run it again.

Run 1 (a real subprocess, rows one at a time) finishes row `first`, then generates `slow`
(8 steps x 4 UNet chunks; T2VZ_FAULTS sleeps 0.1 s per progress report so the window is wide
whatever the machine's load). The test watches the disk: once the engine's checkpoint exists in
the work folder and the progress log shows at least two steps done, the process group gets
SIGKILL. Then:
- OUTPUT_DIR holds no truncated file and no temporary name at a final path;
- run 2 reuses everything finished: `first` is all cached, `slow` re-uses its decode and control
  entries and resumes generation from the checkpoint (its first progress report is the resumed
  step count, and it runs only the remaining UNet chunks), `last` runs; the report is complete;
- the resumed video equals an uninterrupted generation (in-process, t2vz_core steps) exactly.
Budget: 34 s measured on the 2-core machine with other work running (load ~2.5).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_support import (
    check_output_folder,
    cli_command,
    explain,
    load_report,
    read_progress,
    run_cli,
    run_env,
    run_rows_in_process,
    sidecar,
    write_manifest,
)

from t2vz_core.media.synthetic import make_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

STEPS, CHUNKS = 8, 4  # 13 frames, chunk_size 4: chunks of 4, 3, 3, 3 rows (anchor K/V reused)


def _manifest(tmp_path: Path, models: Path) -> Path:
    lib = tmp_path / "lib"
    make_video(lib / "clip.mp4", frames=13, size=(64, 48))
    make_video(lib / "short.mp4", frames=4, size=(64, 48))
    base = {"model": str(models / "sd"), "resolution": 64, "seed": 5}
    return write_manifest(
        lib / "manifest.csv",
        [
            {
                "job_id": "first",
                "mode": "canny",
                "source": "short.mp4",
                "prompt": "a paper boat",
                "controlnet": str(models / "controlnet-canny"),
                "num_inference_steps": 2,
                "chunk_size": 4,
                **base,
            },
            {
                "job_id": "slow",
                "mode": "canny",
                "source": "clip.mp4",
                "prompt": "a glass rocket",
                "controlnet": str(models / "controlnet-canny"),
                "num_inference_steps": STEPS,
                "chunk_size": 4,
                **base,
            },
            {
                "job_id": "last",
                "mode": "text2video",
                "prompt": "a red kite",
                "num_inference_steps": 2,
                "chunk_size": 4,
                "video_length": 4,
                **base,
            },
        ],
    )


def _checkpoints(out: Path) -> list[Path]:
    return list((out / ".t2vz-work" / ".partial" / "generate").glob("*/checkpoint"))


def _kill_mid_generation(cmd: list[str], env: dict, cwd: Path, out: Path, progress: Path) -> int:
    """Start run 1 and SIGKILL it once slow's checkpoint is on disk and >= 2 steps are done.
    Returns the step count saved in the checkpoint at the moment of the kill."""
    import torch

    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"run 1 ended before it could be killed: {explain(proc)}\n{proc.stdout.read()[-4000:]}"
                )
            done = [d for job, step, d, total, _ in read_progress(progress) if job == "slow" and step == "generate"]
            if _checkpoints(out) and done and max(done) > 2 * CHUNKS:  # step 3 started: step 2 is saved
                break
            assert time.monotonic() < deadline, "slow's generation never got going"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    [checkpoint] = _checkpoints(out)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # replaced atomically: never torn
    assert 2 <= state["step"] < STEPS, state["step"]
    return int(state["step"])


def test_sigkill_mid_generation_then_rerun_resumes_and_loses_nothing(tiny_models, tmp_path):
    manifest = _manifest(tmp_path, tiny_models)
    out, cwd = tmp_path / "out", tmp_path
    args = ["run", str(manifest), "--output-dir", str(out), "--max-workers", "1", "--no-progress"]

    # ---- run 1: killed in the middle of slow's generation
    progress1 = tmp_path / "progress1.jsonl"
    env1 = run_env(tmp_path, T2VZ_FAULTS="generate@slow:sleep=0.1")
    saved_step = _kill_mid_generation(cli_command(args, progress1), env1, cwd, out, progress1)
    assert sidecar(out, "first")["status"] == "ok"
    assert not (out / "slow.mp4").exists() and not (out / "slow.json").exists()
    check_output_folder(out)  # first.mp4 probes fine; nothing half-written at a final path

    # ---- run 2: same manifest, no faults
    first_sidecar = (out / "first.json").read_bytes()
    progress2 = tmp_path / "progress2.jsonl"
    proc = run_cli(args, run_env(tmp_path), cwd, progress_log=progress2)
    assert proc.returncode == 0, explain(proc)

    # the finished row is up to date: not run again, its record from run 1 kept
    assert (out / "first.json").read_bytes() == first_sidecar
    first_line = next(line for line in load_report(out)["rows"] if line["job_id"] == "first")
    assert first_line["up_to_date"] and first_line["generate"] == "up to date"
    slow = sidecar(out, "slow")
    assert slow["steps"]["decode"]["status"] == "cached" and slow["steps"]["control"]["status"] == "cached"
    assert slow["steps"]["generate"]["status"] == "computed"

    # generation resumed from the checkpoint: the first report already counts the saved steps,
    # and only the remaining steps' UNet chunks ran
    reports = [
        (d, total, msg)
        for job, step, d, total, msg in read_progress(progress2)
        if job == "slow" and step == "generate" and total > 1
    ]
    assert reports, read_progress(progress2)
    first_done, total, message = reports[0]
    assert "resumed" in message and first_done == saved_step * CHUNKS, reports[:3]
    unet_reports = [r for r in reports if "step " in r[2] and "chunk" in r[2]]
    assert len(unet_reports) == (STEPS - saved_step) * CHUNKS

    # nothing lost, nothing torn, the report is complete
    rep = load_report(out)
    assert rep["counts"] == {"total": 3, "ok": 3, "failed": 0, "invalid": 0, "missing": 0}
    assert sorted(line["row"] for line in rep["rows"]) == [2, 3, 4]
    videos = check_output_folder(out)
    assert sorted(v.name for v in videos) == ["first.mp4", "last.mp4", "slow.mp4"]
    assert not _checkpoints(out)
    assert not list((out / ".t2vz-work" / ".partial" / "generate").glob("*/*"))

    # ---- the resumed frames equal an uninterrupted generation
    from t2vz_core.media import FrameStore

    rows = run_rows_in_process(manifest, tmp_path / "reference-work", tmp_path / "reference-out", job_ids=["slow"])
    reference = rows["slow"].results["generate"]
    key = reference.key
    assert key == slow["resolved"]["keys"]["generate"]
    expected = FrameStore(reference.frames)[:]
    resumed = FrameStore(out / ".t2vz-work" / "generate" / key / "frames")[:]
    assert resumed.shape == expected.shape == (13, 48, 64, 3)
    assert np.array_equal(resumed, expected), np.abs(resumed.astype(int) - expected).max()
