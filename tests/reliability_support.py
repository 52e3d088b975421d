"""Shared by the reliability and security tests: one Prefect server, the `t2vz` CLI in real
subprocesses, manifests, output checks.

The session's Prefect server (tests/session_server.py) serves every subprocess: each `t2vz run`
then skips starting a local server of its own (~5-12 s each). Subprocesses run the real CLI
(`flows.cli.main`, the `t2vz` entry point); `cli_command(..., progress_log=FILE)` adds a progress
listener that appends every progress report (job_id, step, done, total, message) to FILE as JSON
lines, so a test can see from disk how far a run got, and whether a resumed generation started
from its checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
T2VZ = str(Path(sys.executable).with_name("t2vz"))

# The CLI with a progress listener that writes JSON lines (used for `python -c`).
_WRAPPER = """
import json, sys
sys.path.insert(0, TESTS_DIR)
import fault_injection
fault_injection.install()
log = sys.argv[1]
if log:
    from tasks import progress
    handle = open(log, "a", buffering=1)
    def _listener(job_id, step, done, total, message):
        handle.write(json.dumps([job_id, step, done, total, message]) + "\\n")
    progress.add_listener(_listener)
from flows.cli import main
sys.exit(main(sys.argv[2:]))
""".replace("TESTS_DIR", repr(str(Path(__file__).resolve().parent)))


def run_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment of a `t2vz run` subprocess: the session's server (tests/session_server.py), its own
    PREFECT_HOME and results folder under `root` (runs sharing `root` share Prefect's cache records),
    fast retries."""
    from session_server import api_url

    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url(),
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(root / "prefect-results"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        T2VZ_RETRY_DELAY_S="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("T2VZ_FAULTS", None)
    env.pop("T2VZ_ALLOWED_ROOTS", None)
    env.update(extra)
    return env


def cli_command(args: Iterable[str], progress_log: Path | None = None) -> list[str]:
    """The `t2vz` CLI as a subprocess command, optionally logging progress to a JSON-lines file."""
    return [PYTHON, "-c", _WRAPPER, str(progress_log or ""), *args]


def run_cli(
    args: Iterable[str], env: dict[str, str], cwd: Path, timeout: float = 240, progress_log: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(args, progress_log), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def explain(proc: subprocess.CompletedProcess | Any, chars: int = 4000) -> str:
    out = (getattr(proc, "stdout", "") or "") + (getattr(proc, "stderr", "") or "")
    return f"exit {getattr(proc, 'returncode', '?')}:\n{out[-chars:]}"


def read_progress(path: Path) -> list[list]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return rows


# ---------------------------------------------------------------- manifests and outputs


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def run_rows_in_process(
    manifest: Path, work: Path, output_dir: Path, runtime: Any = None, job_ids: Iterable[str] | None = None
) -> dict[str, Any]:
    """Every valid row of `manifest` (or those of `job_ids`) straight through t2vz_core, without
    Prefect, into the work folder `work`: a reference run, or a work folder filled ahead of a
    `t2vz run` that should find its steps done. The rows' contexts by job id."""
    from t2vz_core import pipeline
    from t2vz_core.manifest import read_manifest
    from t2vz_core.runtime import Runtime
    from t2vz_core.workdir import WorkDir

    runtime = runtime or Runtime("cpu")
    wanted = set(job_ids) if job_ids is not None else None
    return {
        job.job_id: pipeline.run_direct(job, WorkDir(work), runtime, output_dir)
        for job in read_manifest(manifest).jobs
        if wanted is None or job.job_id in wanted
    }


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def report_rows(out: Path) -> dict[str, dict]:
    """report.json lines by job_id (invalid rows without an id by 'row<N>')."""
    return {line["job_id"] or f"row{line['row']}": line for line in load_report(out)["rows"]}


def sidecar(out: Path, job_id: str) -> dict:
    return json.loads((out / f"{job_id}.json").read_text())


VIDEO_SUFFIXES = (".mp4", ".webm", ".gif")


def check_output_folder(out: Path) -> list[Path]:
    """Every video at a final path in OUTPUT_DIR probes fine and no temporary name sits at a
    final path (temporary files are hidden and end in .tmp / .partial). Returns the videos."""
    from t2vz_core.media import probe

    videos = []
    for path in sorted(out.iterdir()):
        if path.name.startswith(".") or path.is_symlink():
            continue  # the work folder, hidden temporaries, links a test planted (t2vz never writes them)
        assert not path.name.endswith((".tmp", ".partial", ".part")), f"temporary name at a final path: {path}"
        if path.suffix in VIDEO_SUFFIXES:
            info = probe(path)
            assert info.frame_count > 0, path
            videos.append(path)
    return videos


def decoded_frames(path: Path):
    """All frames of a video as one uint8 array (PyAV)."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ---------------------------------------------------------------- the corpus run

# Frames and steps kept tiny: the corpus is about what happens to each row, not about pixels.
FAST = {"seed": 1, "num_inference_steps": 2, "chunk_size": 4, "resolution": 64, "max_frames": 4}
FAST_T2V = {"seed": 1, "num_inference_steps": 2, "chunk_size": 4, "resolution": 64, "video_length": 4}
SHELL_PROMPT = "a robot $(touch PWNED_1); touch PWNED_2 `touch PWNED_3` | rm -rf ~ && echo 'x' > PWNED_4 #"
SHELL_SOURCE = "clip;touch PWNED_5;$(touch PWNED_6)`touch PWNED_7`.mp4"
PWNED = ("PWNED_1", "PWNED_2", "PWNED_3", "PWNED_4", "PWNED_5", "PWNED_6", "PWNED_7")

# T2VZ_FAULTS for the corpus run: each rule targets one job of its own.
CORPUS_FAULTS = ",".join(
    [
        "decode@f_eio_decode:eio:2",  # transient twice, then fine: 2 retries suffice
        "generate@f_oom:oom:1",  # out of memory once: retried with a halved chunk size
        "generate@f_fatal:fatal:1",  # permanent: must fail, and fails only once
        "encode@f_eio_forever:eio",  # transient but persistent: bounded retries, then failed
    ]
)


def bin_only_model(src: Path, dst: Path) -> Path:
    """A copy of a tiny diffusers model whose weights are pickle .bin files only (every component)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    for st in list(dst.rglob("*.safetensors")):
        name = "pytorch_model.bin" if st.name == "model.safetensors" else "diffusion_pytorch_model.bin"
        torch.save(load_file(st), st.with_name(name))
        st.unlink()
    return dst


def build_corpus(root: Path, models: Path) -> dict[str, Any]:
    """Media made with PyAV, a manifest mixing bad rows with good ones, planted output symlinks.

    Returns {"manifest", "out", "lib", "extra", "outside", "cases"}: cases maps job_id (or a
    label for rows without a valid job_id) to what the row must end as."""
    from fractions import Fraction

    from t2vz_core.media.synthetic import (
        make_audio_only,
        make_corrupt,
        make_text_file,
        make_truncated,
        make_video,
        make_zero_frame,
        vfr_timestamps,
    )

    lib, extra, outside, out = root / "lib", root / "extra", root / "outside", root / "out"
    for folder in (lib, extra, outside, out):
        folder.mkdir(parents=True, exist_ok=True)
    sd, cn, p2p = models / "sd", models / "controlnet-canny", models / "pix2pix"

    clip = make_video(lib / "clip.mp4", frames=8, size=(64, 48))
    (lib / SHELL_SOURCE).write_bytes(clip.read_bytes())
    make_video(extra / "odd.mp4", frames=6, size=(63, 47))  # odd sizes (yuv444p)
    make_video(lib / "vfr.mkv", frames=10, size=(64, 48), fps=30, timestamps=vfr_timestamps(10))
    make_video(lib / "rotated.mp4", frames=6, size=(48, 64), rotation=90)  # portrait phone clip
    make_video(lib / "one_pixel.mp4", frames=4, size=(1, 1), codec="ffv1")
    long_clip = make_video(lib / "long.mp4", frames=48, size=(64, 48), gop=4)
    make_truncated(long_clip, lib / "truncated.mp4", keep=0.6)  # moov at the end: lost
    fast_start = make_video(lib / "faststart.mp4", frames=48, size=(64, 48), gop=4, faststart=True)
    make_truncated(fast_start, lib / "truncated_faststart.mp4", keep=0.6)  # index kept, data cut
    make_text_file(lib / "text.mp4")
    make_corrupt(lib / "random.mp4")
    (lib / "empty.mp4").write_bytes(b"")
    make_zero_frame(lib / "zero_frames.mp4")
    make_audio_only(lib / "audio_only.mp4", seconds=0.5)
    # Declared huge: 16,400 px wide, 8 high; lossless FFV1 keeps the file small.
    make_video(lib / "huge.mkv", frames=2, size=(16400, 8), codec="ffv1", fps=Fraction(2))
    (lib / "folder.mp4").mkdir()
    make_video(outside / "secret.mp4", frames=4, size=(64, 48))
    make_video(lib / "eio.mp4", frames=5, size=(64, 48))  # bytes of its own: its decode is never a cache hit
    (lib / "link_out.mp4").symlink_to(outside / "secret.mp4")
    (lib / "link_in.mp4").symlink_to(lib / "clip.mp4")
    bin_model = bin_only_model(sd, root / "bin-model")

    # Outputs planted as symlinks to files outside OUTPUT_DIR: writes must never follow them.
    (outside / "victim.mp4").write_bytes(b"do not overwrite")
    (outside / "victim.json").write_text('{"do": "not overwrite"}')
    (out / "sym_video.mp4").symlink_to(outside / "victim.mp4")
    (out / "sym_sidecar.json").symlink_to(outside / "victim.json")

    def canny(job_id: str, source: str, **kw: Any) -> dict:
        return {
            "job_id": job_id,
            "mode": "canny",
            "source": source,
            "prompt": "a glass robot",
            "model": str(sd),
            "controlnet": str(cn),
            **FAST,
            **kw,
        }

    def pix(job_id: str, source: str, **kw: Any) -> dict:
        return {
            "job_id": job_id,
            "mode": "pix2pix",
            "source": source,
            "prompt": "make it snow",
            "model": str(p2p),
            **FAST,
            **kw,
        }

    t2v = {"mode": "text2video", "prompt": "a panda surfing", "model": str(sd), **FAST_T2V}
    rows: list[dict] = []
    cases: dict[str, dict] = {}

    def add(row: dict, expect: str, words: tuple[str, ...] = (), label: str | None = None) -> None:
        rows.append(row)
        cases[label or row["job_id"]] = {
            "row": len(rows) + 1,
            "expect": expect,
            "words": words,
            "source": row.get("source"),
        }

    # Good rows, some with shell metacharacters in the prompt and the source name.
    add(canny("good_canny", SHELL_SOURCE, prompt=SHELL_PROMPT), "ok")
    add(pix("good_p2p", "clip.mp4"), "ok")
    add({"job_id": "good_t2v", **t2v, "prompt": SHELL_PROMPT}, "ok")
    add(pix("link_inside", "link_in.mp4", seed=2), "ok")
    # Awkward but valid media: processed, not refused.
    add(pix("odd_size", str(extra / "odd.mp4")), "ok")
    add(pix("vfr", "vfr.mkv", max_frames=""), "ok")
    add(pix("rotated", "rotated.mp4"), "ok")
    # Bad media: the row fails at decode with the file named.
    add(pix("one_pixel", "one_pixel.mp4"), "ok")  # upscaled; a clear refusal naming the file is accepted too
    add(pix("truncated", "truncated.mp4"), "failed", ("truncated.mp4",))
    add(pix("truncated_fs", "truncated_faststart.mp4"), "failed", ("truncated_faststart.mp4", "truncated"))
    add(canny("text_mp4", "text.mp4"), "failed", ("text.mp4", "not a readable media file"))
    add(canny("random_bytes", "random.mp4"), "failed", ("random.mp4",))
    add(canny("empty_file", "empty.mp4"), "failed", ("empty.mp4", "empty"))
    add(pix("zero_frames", "zero_frames.mp4"), "failed", ("zero_frames.mp4",))
    add(pix("audio_only", "audio_only.mp4"), "failed", ("audio_only.mp4", "no video stream"))
    add(pix("huge", "huge.mkv"), "failed", ("huge.mkv", "16400", "too large"))
    # Bad paths and job ids: invalid rows, named by row and column, never run.
    add(pix("folder_src", "folder.mp4"), "invalid", ("source", "folder"))
    add(pix("missing_src", "nope.mp4"), "invalid", ("source", "not found"))
    add(pix("dotdot", "../outside/secret.mp4"), "invalid", ("source", "'..'"))
    add(pix("abs_outside", str(outside / "secret.mp4")), "invalid", ("source", "outside the allowed roots"))
    add(pix("link_out", "link_out.mp4"), "invalid", ("source", "symlink"))
    add({"job_id": "../escape", **t2v}, "invalid", ("job_id", "../escape"), label="slash")
    add({"job_id": "a;touch PWNED_8", **t2v}, "invalid", ("job_id", "not allowed"), label="shell_id")
    add({"job_id": "$(touch PWNED_9)", **t2v}, "invalid", ("job_id", "not allowed"), label="subst_id")
    # Security: weights as pickle only; outputs planted as symlinks.
    add({"job_id": "bin_weights", **t2v, "model": str(bin_model)}, "failed", ("safetensors",))
    add({"job_id": "sym_video", **t2v}, "failed", ("symlink",))
    add({"job_id": "sym_sidecar", **t2v}, "ok")
    # Faults (T2VZ_FAULTS = CORPUS_FAULTS).
    add(pix("f_eio_decode", "eio.mp4", seed=11), "ok")
    add(canny("f_oom", "clip.mp4", seed=12), "ok")
    add(pix("f_fatal", "clip.mp4", seed=13), "failed", ("injected permanent failure in generate for f_fatal",))
    add(pix("f_eio_forever", "clip.mp4", seed=14), "failed", ("injected I/O error in encode for f_eio_forever",))

    manifest = write_manifest(lib / "manifest.csv", rows)
    return {
        "manifest": manifest,
        "out": out,
        "lib": lib,
        "extra": extra,
        "outside": outside,
        "cases": cases,
        "root": root,
    }


_corpus_lock = threading.Lock()
_corpus: dict[str, Any] | None = None


def corpus_run(models: Path) -> dict[str, Any]:
    """Build the corpus and run it once per test session through `t2vz run` (a real subprocess
    on the shared server), with the faults of CORPUS_FAULTS. Returns build_corpus()'s dict plus
    "proc", "report", "cwd" (the subprocess's working folder, checked for PWNED files)."""
    global _corpus
    with _corpus_lock:
        if _corpus is None:
            root = Path(tempfile.mkdtemp(prefix="t2vz-corpus-"))
            corpus = build_corpus(root, models)
            cwd = root / "cwd"
            cwd.mkdir()
            env = run_env(root, T2VZ_FAULTS=CORPUS_FAULTS, T2VZ_RETRIES="2")
            started, started_at = time.monotonic(), time.time()
            proc = run_cli(
                [
                    "run",
                    str(corpus["manifest"]),
                    "--output-dir",
                    str(corpus["out"]),
                    "--allowed-root",
                    str(corpus["lib"]),
                    "--allowed-root",
                    str(corpus["extra"]),
                    "--no-progress",
                ],
                env,
                cwd,
                timeout=400,
            )
            corpus.update(
                proc=proc,
                cwd=cwd,
                seconds=time.monotonic() - started,
                started_at=started_at,
                api=env["PREFECT_API_URL"],
            )
            corpus["report"] = load_report(corpus["out"]) if (corpus["out"] / "report.json").exists() else None
            _corpus = corpus
        return _corpus


def task_runs(api: str, flow_run_id: str, settle_s: float = 1.0, timeout_s: float = 20.0) -> dict[str, dict]:
    """Task runs of a flow run by name (e.g. 'decode-f_eio_decode'), straight from the REST API.
    The server records them from events, a moment after the run ends: read until nothing changed
    for `settle_s`."""
    deadline, seen, stable_since = time.monotonic() + timeout_s, None, time.monotonic()
    with httpx.Client(timeout=30) as client:  # one client: each httpx.post would build an SSL context
        while True:
            response = client.post(
                f"{api}/task_runs/filter",
                json={"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
            )
            response.raise_for_status()
            runs = {run["name"]: run for run in response.json()}
            snapshot = {name: (run["run_count"], (run.get("state") or {}).get("type")) for name, run in runs.items()}
            if snapshot != seen:
                seen, stable_since = snapshot, time.monotonic()
            if time.monotonic() - stable_since >= settle_s or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)
