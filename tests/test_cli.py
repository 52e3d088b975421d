"""The `t2vz` command: exit codes (0 all rows ok, 1 some row failed or invalid, 2 unreadable
manifest or bad usage), in real subprocesses of the installed console script where it matters.

Budget: ~30-40 s (two subprocess runs of one tiny text2video row against the session's
Prefect test server, a few quick validate/scan calls).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_support import run_rows_in_process

from flows.cli import main

REPO = Path(__file__).resolve().parents[1]
T2VZ = Path(sys.executable).parent / "t2vz"  # the console script pyproject declares


def t2vz(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    command = [str(T2VZ)] if T2VZ.exists() else [sys.executable, "-m", "flows.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
    )


def t2vz_imports(*args: str, env: dict | None = None, watch=("prefect", "torch", "diffusers")):
    """The CLI's main() in a fresh interpreter, which then prints which of `watch` it imported
    ("imported: [...]" on stdout)."""
    code = (
        "import sys; from flows.cli import main; code = main(sys.argv[2:]); "
        "print('imported:', [m for m in sys.argv[1].split(',') if m in sys.modules]); sys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, ",".join(watch), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def write_csv(path: Path, rows: list[dict]) -> Path:
    header = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def t2v_row(models: Path, job_id: str = "clip", **extra) -> dict:
    return {
        **dict(
            job_id=job_id,
            mode="text2video",
            prompt="a red balloon",
            model=str(models / "sd"),
            seed=7,
            num_inference_steps=2,
            resolution=64,
            video_length=4,
            chunk_size=4,
        ),
        **extra,
    }


def test_validate_exit_codes(tmp_path, tiny_models):
    good = write_csv(tmp_path / "good.csv", [t2v_row(tiny_models)])
    result = t2vz("validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "1 valid row(s), 0 invalid row(s)" in result.stdout

    bad = write_csv(tmp_path / "bad.csv", [t2v_row(tiny_models), t2v_row(tiny_models, "b", seed="abc")])
    result = t2vz("validate", str(bad))
    assert result.returncode == 1
    assert "row 3, column seed (job 'b')" in result.stderr

    (tmp_path / "empty.csv").write_text("")
    result = t2vz("validate", str(tmp_path / "empty.csv"))
    assert result.returncode == 2 and "empty" in result.stderr
    assert t2vz("validate").returncode == 2  # usage: the manifest is missing


def test_bad_usage_exits_2_before_any_run(tmp_path, tiny_models, capsys):
    manifest = write_csv(tmp_path / "m.csv", [t2v_row(tiny_models)])
    with pytest.raises(SystemExit) as exc:
        main(["run", str(manifest)])  # no --output-dir
    assert exc.value.code == 2
    assert main(["run", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "out")]) == 2
    assert main(["run", str(manifest), "-o", str(tmp_path / "out"), "--device", "cpu", "--dtype", "fp16"]) == 2
    assert main(["run", str(manifest), "-o", str(tmp_path / "out"), "--max-workers", "0"]) == 2
    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "out").exists()  # nothing ran
    assert "fp16 on device cpu" in capsys.readouterr().err


def test_scan_prints_a_valid_manifest(tmp_path, capsys, monkeypatch):
    from t2vz_core.manifest import read_manifest
    from t2vz_core.media.synthetic import make_video

    library = tmp_path / "library"
    make_video(library / "a clip.mp4", frames=4)
    make_video(library / "sub" / "b.mkv", frames=4)
    (library / "notes.txt").write_text("not a video")
    monkeypatch.chdir(tmp_path)  # sources are written relative to the current folder
    assert main(["scan", str(library), "--mode", "canny", "--prompt", "glass", "--set", "seed=3"]) == 0
    scanned = tmp_path / "scanned.csv"
    scanned.write_text(capsys.readouterr().out)
    manifest = read_manifest(scanned)
    assert not manifest.errors, manifest.errors
    assert sorted(job.source.name for job in manifest.jobs) == ["a clip.mp4", "b.mkv"]
    assert {job.seed for job in manifest.jobs} == {3}
    assert main(["scan", str(library), "--mode", "canny", "--prompt", "x", "--set", "bogus"]) == 2


def test_models_tiny_is_idempotent(tiny_models, capsys):
    assert main(["models", "tiny", str(tiny_models)]) == 0  # already complete: nothing rewritten
    printed = capsys.readouterr().out
    assert f"sd: {tiny_models / 'sd'}" in printed and "controlnet-canny" in printed


def test_run_in_a_subprocess_exit_codes_report_and_cached_rerun(tmp_path, tiny_models, prefect_api):
    env = {"PREFECT_API_URL": prefect_api, "T2VZ_RETRY_DELAY_S": "0"}
    out = tmp_path / "out"
    rows = [t2v_row(tiny_models, output="mp4;gif"), {"job_id": "nope", "mode": "text2video", "prompt": ""}]
    manifest = write_csv(tmp_path / "jobs.csv", rows)
    # The row's steps are computed first, in this process, into the run's work folder: these runs
    # are about the command (exit codes, summary, report, the up-to-date check), and the rows other
    # tests run through `t2vz run` generate (test_console, test_cli_pickle, test_process_life...).
    from t2vz_core.options import RunOptions

    options = RunOptions()  # what `t2vz run` with no options uses
    run_rows_in_process(manifest, options.resolved_work_dir(out), tmp_path / "direct", options.runtime())
    result = t2vz("run", str(manifest), "--output-dir", str(out), "--no-progress", env=env)
    assert result.returncode == 1, result.stdout + result.stderr  # one invalid row
    assert "row 3, column prompt" in result.stderr
    assert (out / "clip.mp4").stat().st_size > 0 and (out / "clip.gif").exists()
    assert "1 ok, 0 failed, 1 invalid" in result.stdout
    assert json.loads((out / "clip.json").read_text())["steps"]["generate"]["status"] == "cached"  # found
    report = json.loads((out / "report.json").read_text())
    assert [(r["job_id"], r["status"]) for r in report["rows"]] == [("clip", "ok"), ("nope", "invalid")]

    # Unchanged, the row is up to date: no flow run, the sidecar of the run that made it stays.
    write_csv(manifest, rows[:1])
    sidecar = (out / "clip.json").read_bytes()
    result = t2vz("run", str(manifest), "--output-dir", str(out), "--no-progress", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 1 row(s) up to date" in result.stdout and "Prefect UI" not in result.stdout
    assert (out / "clip.json").read_bytes() == sidecar
    line = json.loads((out / "report.json").read_text())["rows"][0]
    assert (line["status"], line["generate"], line["decode"], line["up_to_date"]) == (
        "ok",
        "up to date",
        "skipped",
        True,
    )

    # An edited output makes the row run again, as a flow run whose steps are all found in the work
    # folder: neither torch nor diffusers is imported for it (~2.5 and ~6 s of CPU). Its Prefect result
    # storage is new, as on another machine sharing the work folder: no step comes from Prefect's
    # cache, so every step's task body runs (and finds its entry).
    (out / "clip.gif").write_bytes(b"GIF89a edited")
    result = t2vz_imports(
        "run",
        str(manifest),
        "--output-dir",
        str(out),
        "--no-progress",
        env={**env, "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "other-results")},
        watch=("torch", "diffusers"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Prefect UI: http://" in result.stdout and "imported: []" in result.stdout, result.stdout
    sidecar = json.loads((out / "clip.json").read_text())
    assert {s["status"] for s in sidecar["steps"].values()} == {"cached", "skipped", "computed"}
    assert sidecar["steps"]["publish"]["status"] == "computed" and sidecar["steps"]["generate"]["status"] == "cached"
    assert (out / "clip.gif").read_bytes()[:6] == b"GIF89a" and (out / "clip.gif").stat().st_size > 100

    # The report can be rebuilt from the sidecars (e.g. after shards ran), without Prefect; a row
    # without a sidecar is missing.
    rebuilt = t2vz_imports("report", str(out))
    assert rebuilt.returncode == 0 and "imported: []" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    (out / "clip.json").unlink()
    assert main(["report", str(out)]) == 1
    assert json.loads((out / "report.json").read_text())["counts"]["missing"] == 1
