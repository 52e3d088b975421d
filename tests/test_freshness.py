"""Up-to-date checks (t2vz_core.freshness): a row whose outputs are current is not run again, and
every kind of change makes it stale with a reason that names the change.

One real flow run (text2video with an MP4 and a PNG folder, canny on a real clip) at module
scope; each test copies the output folder (sidecars and outputs move together) and changes one
thing. Budget: ~15 s, most of it the one run.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from t2vz_core import freshness
from t2vz_core.manifest import read_manifest
from t2vz_core.options import RunOptions
from t2vz_core.runtime import Runtime
from t2vz_core.workdir import WorkDir

REPO = Path(__file__).resolve().parents[1]
CPU = Runtime(device="cpu")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    header = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: str(v) for k, v in row.items()} for row in rows)
    return path


@pytest.fixture(scope="module")
def finished(prefect_api, tiny_models, tmp_path_factory):
    from flows.batch import process_manifest

    root = tmp_path_factory.mktemp("freshness")
    shutil.copy(REPO / "manifests" / "media" / "rocket.mp4", root / "rocket.mp4")
    shutil.copytree(tiny_models / "sd", root / "sd")  # a copy whose bytes a test may change
    common = dict(model=root / "sd", resolution=64, num_inference_steps=2, chunk_size=4, seed=3)
    rows = [
        dict(job_id="t2v", mode="text2video", prompt="a red balloon", video_length=4, output="mp4;png", **common),
        dict(
            job_id="canny",
            mode="canny",
            source=root / "rocket.mp4",
            prompt="a glass rocket",
            max_frames=4,
            controlnet=tiny_models / "controlnet-canny",
            **common,
        ),
    ]
    manifest = write_manifest(root / "jobs.csv", rows)
    state = process_manifest(
        manifest_path=str(manifest),
        output_dir=str(root / "out"),
        options=RunOptions(work_dir=str(root / "work"), device="cpu"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    return dict(root=root, rows=rows, manifest=manifest, work=WorkDir(root / "work"))


def check(finished, out: Path, rows: list[dict] | None = None, runtime: Runtime = CPU, work=True):
    """{job_id: (current, reason)} for the fixture's manifest, or for `rows` written beside `out`."""
    manifest = finished["manifest"] if rows is None else write_manifest(out.parent / "changed.csv", rows)
    jobs = read_manifest(manifest, allowed_roots=[finished["root"]]).jobs
    checks = freshness.check_rows(jobs, out, runtime, finished["work"] if work else None)
    return {job_id: (c.current, c.reason) for job_id, c in checks.items()}


@pytest.fixture
def source(finished):
    """The canny row's source; restored after a test that changes it."""
    path = finished["root"] / "rocket.mp4"
    yield path
    shutil.copy(REPO / "manifests" / "media" / "rocket.mp4", path)


def copy_out(finished, tmp_path) -> Path:
    out = tmp_path / "moved-out"
    shutil.copytree(finished["root"] / "out", out)
    return out


def test_a_finished_run_is_up_to_date_even_moved_and_without_its_work_folder(finished, tmp_path):
    assert check(finished, finished["root"] / "out") == {"t2v": (True, "up to date"), "canny": (True, "up to date")}
    out = copy_out(finished, tmp_path)
    assert check(finished, out, work=False) == {"t2v": (True, "up to date"), "canny": (True, "up to date")}


def test_the_check_reads_no_frames_and_imports_neither_torch_nor_prefect(finished):
    import subprocess

    code = (
        "import sys; from t2vz_core import freshness; from t2vz_core.manifest import read_manifest; "
        "from t2vz_core.runtime import Runtime; "
        f"jobs = read_manifest({str(finished['manifest'])!r}).jobs; "
        f"c = freshness.check_rows(jobs, {str(finished['root'] / 'out')!r}, Runtime('cpu')); "
        "print(all(x.current for x in c.values()), 'torch' in sys.modules, 'prefect' in sys.modules, "
        "'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.split() == ["True", "False", "False", "False"]


@pytest.mark.parametrize(
    "change, stale, reason",
    [
        ("prompt", "canny", "its row changed"),
        ("output_edited", "t2v", "t2v.mp4 was changed after it was published"),
        ("output_deleted", "canny", "canny.mp4 is missing"),
        ("png_frame_edited", "t2v", "t2v was changed after it was published"),
        ("source_bytes", "canny", "its source file or decode settings changed"),
        ("source_touched", "none", ""),  # same bytes, new mtime: keys follow bytes, not timestamps
        ("dtype", "both", "its model, generation settings, device or dtype changed"),
        ("version", "both", "changed"),
        ("failed", "t2v", "its last run failed"),
        ("refresh", "canny", "refresh is set"),
        ("no_sidecar", "t2v", "not run yet"),
        ("old_sidecar", "canny", "its record predates up-to-date checks"),
    ],
)
def test_each_change_makes_its_row_stale_with_a_reason(finished, tmp_path, monkeypatch, source, change, stale, reason):
    out = copy_out(finished, tmp_path)
    rows = [dict(r) for r in finished["rows"]]
    runtime = CPU
    if change == "prompt":
        rows[1]["prompt"] = "an ice rocket"
    elif change == "output_edited":
        (out / "t2v.mp4").write_bytes((out / "t2v.mp4").read_bytes()[:-1] + b"\0")
    elif change == "output_deleted":
        (out / "canny.mp4").unlink()
    elif change == "png_frame_edited":
        shutil.copy(out / "t2v" / "00000.png", out / "t2v" / "00001.png")
    elif change == "source_bytes":
        from t2vz_core.media.synthetic import make_video

        make_video(source, frames=6, size=(80, 64))
    elif change == "source_touched":
        source.write_bytes(source.read_bytes())
    elif change == "dtype":
        runtime = Runtime(device="cpu", dtype="bf16")
    elif change == "version":
        import t2vz_core

        monkeypatch.setattr(t2vz_core, "__version__", t2vz_core.__version__ + ".post1")
    elif change == "failed":
        sidecar = json.loads((out / "t2v.json").read_text())
        (out / "t2v.json").write_text(json.dumps({**sidecar, "status": "failed"}))
    elif change == "refresh":
        rows[1]["refresh"] = "yes"
    elif change == "no_sidecar":
        (out / "t2v.json").unlink()
    elif change == "old_sidecar":
        sidecar = json.loads((out / "canny.json").read_text())
        del sidecar["refs"]
        (out / "canny.json").write_text(json.dumps(sidecar))
    result = check(finished, out, rows, runtime)
    expected_stale = {"both": {"t2v", "canny"}, "none": set()}.get(stale, {stale})
    assert {job_id for job_id, (current, _) in result.items() if not current} == expected_stale, result
    for job_id in expected_stale:
        assert reason in result[job_id][1], result


def test_changed_model_bytes_make_rows_stale(finished, tmp_path):
    extra = finished["root"] / "sd" / "unet" / "notes.txt"  # any file of the model folder counts
    extra.write_text("fine-tuned")
    try:
        result = check(finished, finished["root"] / "out")
    finally:
        extra.unlink()
    assert result == {
        job_id: (False, "its model, generation settings, device or dtype changed") for job_id in ("t2v", "canny")
    }
    assert check(finished, finished["root"] / "out")["t2v"] == (True, "up to date")
