"""The manifest flow end to end on the session's Prefect server, with the tiny models and real media.

One project (media copied from manifests/media, a manifest covering every mode plus a row that
fails at run time and an invalid row) is run once at module scope; later tests re-run variants
of it sharing its content-addressed work folder. Budget: ~1-2 min on the 2-core CI machine
(about a dozen tiny generations of 4 frames at 64x64, 2-3 steps).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_MEDIA = REPO / "manifests" / "media"
HEADER = [
    "job_id",
    "mode",
    "source",
    "control",
    "prompt",
    "model",
    "controlnet",
    "seed",
    "num_inference_steps",
    "chunk_size",
    "resolution",
    "max_frames",
    "video_length",
    "output",
]
OK_ROWS = ("t2v", "pose", "canny", "depth", "p2p")
GENERATING = ("decode", "control", "generate", "encode")


def _rows(models: Path) -> list[dict]:
    sd, p2p = models / "sd", models / "pix2pix"
    common = dict(model=sd, resolution=64, max_frames=4, num_inference_steps=2, chunk_size=4)
    return [
        dict(
            job_id="t2v",
            mode="text2video",
            prompt="a panda surfing",
            model=sd,
            seed=1,
            num_inference_steps=2,
            chunk_size=4,
            resolution=64,
            video_length=4,
            output="mp4;gif",
        ),
        dict(
            job_id="pose",
            mode="pose",
            source="media/person.mp4",
            prompt="an astronaut dancing",
            controlnet=models / "controlnet-openpose",
            seed=2,
            **common,
        ),
        dict(
            job_id="canny",
            mode="canny",
            source="media/rocket.mp4",
            prompt="a glass rocket",
            controlnet=models / "controlnet-canny",
            seed=3,
            output="mp4;webm",
            **common,
        ),
        dict(
            job_id="depth",
            mode="depth",
            source="media/depth.mp4",
            control="given",
            prompt="two spheres",
            controlnet=models / "controlnet-depth",
            seed=4,
            **common,
        ),
        dict(
            job_id="p2p",
            mode="pix2pix",
            source="media/cat.mp4",
            prompt="make it snow",
            seed=5,
            output="mp4;png",
            **{**common, "model": p2p},
        ),
        dict(
            job_id="broken",
            mode="canny",
            source="media/not-a-video.mp4",
            prompt="x",
            controlnet=models / "controlnet-canny",
            **common,
        ),
        dict(job_id="invalid", mode="spiral", prompt="x"),
    ]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else str(v) for k, v in row.items()})
    return path


def run(manifest: Path, out: Path, work: Path, **kwargs):
    """Run the flow; return (state, report dict, {job_id: sidecar})."""
    from flows.batch import process_manifest
    from t2vz_core.options import RunOptions

    state = process_manifest(
        manifest_path=str(manifest),
        output_dir=str(out),
        options=RunOptions(work_dir=str(work), **kwargs),
        return_state=True,
    )
    rep = state.result(raise_on_failure=False)
    assert isinstance(rep, dict), rep
    sidecars = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "report.json"}
    return state, rep, sidecars


def statuses(sidecar: dict) -> dict[str, str]:
    return {step: info["status"] for step, info in sidecar["steps"].items()}


def load_counts() -> tuple[int, int]:
    from t2vz_core.models import cache_stats

    stats = cache_stats()
    return stats["loads"], stats["hits"]


@pytest.fixture(scope="module")
def project(prefect_api, tiny_models, tmp_path_factory, monkey_env):
    root = tmp_path_factory.mktemp("flow-project")
    shutil.copytree(DEMO_MEDIA, root / "media")
    (root / "media" / "not-a-video.mp4").write_text("this is a text file, not a video\n")
    rows = _rows(tiny_models)
    manifest = write_manifest(root / "jobs.csv", rows)
    out, work = root / "out", root / "work"
    before = load_counts()
    state, rep, sidecars = run(manifest, out, work)
    return dict(
        root=root,
        rows=rows,
        manifest=manifest,
        out=out,
        work=work,
        state=state,
        report=rep,
        sidecars=sidecars,
        loads=load_counts()[0] - before[0],
    )


@pytest.fixture(scope="module")
def monkey_env():
    mp = pytest.MonkeyPatch()
    mp.setenv("T2VZ_RETRY_DELAY_S", "0")
    mp.delenv("T2VZ_FAULTS", raising=False)
    yield mp
    mp.undo()


def test_every_mode_produces_real_videos_sidecars_and_a_report(project):
    from t2vz_core.media import FrameStore, probe

    out, rep, sidecars = project["out"], project["report"], project["sidecars"]
    assert project["state"].is_failed()  # one row failed, one is invalid; the rest still ran
    assert "broken" in project["state"].message
    by_id = {line["job_id"]: line for line in rep["rows"]}
    assert [line["row"] for line in rep["rows"]] == list(range(2, 9))
    assert rep["counts"] == {"total": 7, "ok": 5, "failed": 1, "invalid": 1, "missing": 0}
    for job_id in OK_ROWS:
        assert by_id[job_id]["status"] == "ok", by_id[job_id]
        info = probe(out / f"{job_id}.mp4")
        assert (info.width, info.height, info.frame_count) == (64, 64, 4), (job_id, info)
        steps = statuses(sidecars[job_id])
        assert steps["generate"] == "computed" and steps["encode"] == "computed", steps
        assert sidecars[job_id]["resolved"]["models"]["model_fingerprint"]
    assert statuses(sidecars["t2v"])["decode"] == "skipped" and statuses(sidecars["depth"])["control"] == "skipped"
    assert statuses(sidecars["pose"])["control"] == "computed"
    assert probe(out / "t2v.gif").frame_count == 4 and probe(out / "canny.webm").frame_count == 4
    assert len(FrameStore(out / "p2p")) == 4 and (out / "p2p" / "00003.png").exists()
    assert probe(out / "p2p.mp4").has_audio  # the cat clip's tone is kept
    assert sidecars["t2v"]["resolved"]["request"]["video_length"] == 4

    broken = by_id["broken"]
    assert broken["status"] == "failed" and broken["decode"] == "failed" and broken["generate"] == "not run"
    assert "not-a-video.mp4" in broken["error"] and broken["error"].startswith("decode:")
    assert sidecars["broken"]["failed_step"] == "decode"
    assert by_id["invalid"]["status"] == "invalid" and "mode" in by_id["invalid"]["error"]
    assert "invalid" not in sidecars
    with open(out / "report.csv", newline="") as f:
        assert [r["job_id"] for r in csv.DictReader(f)] == [line["job_id"] for line in rep["rows"]]
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))


def test_run_publishes_table_progress_and_markdown_artifacts(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = project["state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:  # the session server's API (PREFECT_API_URL)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])), limit=50
        )
    by_type = {a.type: a for a in artifacts}
    assert {"table", "progress", "markdown"} <= set(by_type), [a.type for a in artifacts]
    assert float(by_type["progress"].data) == 100.0
    assert by_type["table"].key == "t2vz-report-jobs"
    table = json.loads(by_type["table"].data) if isinstance(by_type["table"].data, str) else by_type["table"].data
    assert len(table) == 7 and {r["status"] for r in table} == {"ok", "failed", "invalid"}
    assert (project["out"] / "canny.webm").as_uri() in by_type["markdown"].data


def task_runs_of(state) -> dict[str, dict]:
    """A flow run's task runs by name, once the server has recorded them (reliability_support.task_runs)."""
    from prefect.settings import PREFECT_API_URL
    from reliability_support import task_runs

    return task_runs(PREFECT_API_URL.value(), str(state.state_details.flow_run_id))


def test_qc_scores_previews_and_the_gallery(project):
    """The qc step scores every output (text2video against itself), its previews are published beside
    the outputs, the report carries the scores, and report.html, report.parquet and the markdown
    artifact's gallery link and summary come with every report."""
    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    out, rep, sidecars = project["out"], project["report"], project["sidecars"]
    by_id = {line["job_id"]: line for line in rep["rows"]}
    qc_keys = ["warp_error", "source_warp_error", "warp_error_ratio", "flicker", "source_flicker"]
    for job_id in OK_ROWS:
        scores = sidecars[job_id]["qc"]
        assert list(scores) == qc_keys and sidecars[job_id]["steps"]["qc"]["status"] == "computed"
        assert scores["warp_error"] > 0 and scores["flicker"] >= 0
        assert all(by_id[job_id][key] == scores[key] for key in qc_keys)
        assert by_id[job_id]["frames"] == 4
        if job_id == "t2v":
            assert scores["source_warp_error"] is scores["warp_error_ratio"] is scores["source_flicker"] is None
        else:
            assert scores["warp_error_ratio"] == pytest.approx(
                scores["warp_error"] / max(scores["source_warp_error"], 1), abs=1e-3
            )
    assert sidecars["broken"]["qc"] is None and sidecars["broken"]["steps"]["qc"]["status"] == "not run"
    expected = {
        "t2v": {"output"},
        "pose": {"source", "control", "output"},
        "canny": {"source", "control", "output"},
        "depth": {"control", "output"},
        "p2p": {"source", "output"},
    }
    found: dict[str, set] = {}
    for path in (out / "previews").glob("*.webp"):
        job_id, kind, _ = path.name.rsplit(".", 2)
        found.setdefault(job_id, set()).add(kind)
    assert found == expected

    with open(out / "report.csv", newline="") as f:
        assert set(qc_keys) <= set(next(csv.reader(f)))
    assert pd.read_parquet(out / "report.parquet")["job_id"].tolist() == [line["job_id"] for line in rep["rows"]]
    page = (out / "report.html").read_text()
    assert page.count('<article class="card') == 7 and 'src="previews/canny.control.webp"' in page

    run_id = project["state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])), limit=50
        )
    by_type = {a.type: a for a in artifacts}
    assert (out / "report.html").as_uri() in by_type["markdown"].data
    assert "## By mode and status" in by_type["markdown"].data and "| canny | ok | 1 | 4 |" in by_type["markdown"].data
    table = json.loads(by_type["table"].data) if isinstance(by_type["table"].data, str) else by_type["table"].data
    assert {row["job_id"]: row["warp_error_ratio"] for row in table}["canny"] == sidecars["canny"]["qc"][
        "warp_error_ratio"
    ]


def test_unchanged_rerun_runs_only_the_failed_row_and_loads_no_model(project):
    assert project["loads"] > 0
    out = project["out"]
    sidecars_before = {job_id: (out / f"{job_id}.json").read_bytes() for job_id in OK_ROWS}
    before = load_counts()
    state, rep, _ = run(project["manifest"], out, project["work"])
    assert load_counts() == before  # not even a lookup in the in-memory model cache
    by_id = {line["job_id"]: line for line in rep["rows"]}
    for job_id in OK_ROWS:
        assert by_id[job_id]["status"] == "ok" and by_id[job_id]["up_to_date"], by_id[job_id]
        assert by_id[job_id]["generate"] == "up to date" and by_id[job_id]["encode"] == "up to date"
        assert (out / f"{job_id}.json").read_bytes() == sidecars_before[job_id]  # the record of the run that made it
    assert by_id["broken"]["status"] == "failed" and state.is_failed()  # a failed row is tried again
    assert rep["counts"]["ok"] == 5
    assert set(task_runs_of(state)) == {"row-broken", "decode-broken"}


def test_sidecars_report_and_table_artifact_count_shots(project):
    from flows.batch import report_table

    sidecars, rep = project["sidecars"], project["report"]
    for job_id in OK_ROWS:  # 4 frames: too short for a cut (half a second), one shot each
        assert sidecars[job_id]["shots"] == [[0, 4]], job_id
    assert statuses(sidecars["canny"])["cuts"] == "computed" and statuses(sidecars["t2v"])["cuts"] == "skipped"
    assert sidecars["broken"]["shots"] is None  # failed before its shots were known
    by_id = {line["job_id"]: line for line in report_table(rep["rows"])}
    assert by_id["canny"]["shots"] == 1 and by_id["canny"]["cuts"] == "computed"
    assert by_id["broken"]["shots"] is None and by_id["invalid"]["shots"] == ""
    with open(project["out"] / "report.csv", newline="") as f:
        assert {r["job_id"]: r["shots"] for r in csv.DictReader(f)}["pose"] == "1"


def test_prompt_change_reruns_only_that_rows_generate_and_encode(project):
    rows = [dict(r) for r in project["rows"]]
    for row in rows:
        if row["job_id"] == "canny":
            row["prompt"] = "a rocket made of ice"
    manifest = write_manifest(project["root"] / "prompt.csv", rows)
    out = project["root"] / "out-prompt"  # fresh outputs, shared work folder
    _, rep, sidecars = run(manifest, out, project["work"])
    assert statuses(sidecars["canny"]) == {
        "decode": "cached",
        "cuts": "cached",
        "control": "cached",
        "generate": "computed",
        "encode": "computed",
        "qc": "computed",
        "publish": "computed",
    }
    for job_id in ("t2v", "pose", "depth", "p2p"):
        steps = statuses(sidecars[job_id])
        assert all(steps[s] in ("cached", "skipped") for s in (*GENERATING, "qc")), (job_id, steps)
        assert steps["publish"] == "computed"  # copied into the new output folder
        assert (out / "previews" / f"{job_id}.output.webp").exists()  # previews too, from the cached qc entry
    assert (
        sidecars["canny"]["resolved"]["keys"]["generate"]
        != project["sidecars"]["canny"]["resolved"]["keys"]["generate"]
    )


def test_new_bytes_at_the_same_path_rerun_from_decode_and_lost_entries_are_rebuilt(project, tiny_models):
    root = project["root"] / "bytes"
    (root / "media").mkdir(parents=True)
    shutil.copy(DEMO_MEDIA / "rocket.mp4", root / "media" / "rocket.mp4")  # same bytes, other path
    canny = next(r for r in project["rows"] if r["job_id"] == "canny")
    manifest = write_manifest(root / "jobs.csv", [canny])
    _, _, sidecars = run(manifest, root / "out", project["work"])
    assert all(statuses(sidecars["canny"])[s] == "cached" for s in GENERATING)  # keyed by bytes, not path

    from t2vz_core.media.synthetic import make_video

    make_video(root / "media" / "rocket.mp4", frames=6, size=(80, 64))  # new bytes, same path
    _, _, sidecars = run(manifest, root / "out", project["work"])
    assert all(statuses(sidecars["canny"])[s] == "computed" for s in GENERATING)

    # A work entry deleted behind Prefect's back (its cache record still exists) is rebuilt.
    encode_entry = (
        Path(sidecars["canny"]["options"]["work_dir"]) / "encode" / sidecars["canny"]["resolved"]["keys"]["encode"]
    )
    shutil.rmtree(encode_entry)
    (root / "out" / "canny.mp4").unlink()
    _, _, sidecars = run(manifest, root / "out", project["work"])
    steps = statuses(sidecars["canny"])
    assert steps["generate"] == "cached" and steps["encode"] == "computed" and steps["publish"] == "computed"
    assert (root / "out" / "canny.mp4").exists()


def test_refresh_column_and_force_recompute(project):
    rows = [dict(r) for r in project["rows"] if r["job_id"] in ("t2v", "depth")]
    rows[1]["refresh"] = "yes"
    path = project["root"] / "refresh.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER + ["refresh"])
        writer.writeheader()
        writer.writerows({k: str(v) for k, v in r.items()} for r in rows)
    _, rep, sidecars = run(path, project["out"], project["work"])
    assert {line["job_id"]: line["generate"] for line in rep["rows"]}["t2v"] == "up to date"
    assert statuses(sidecars["depth"])["generate"] == "computed" and statuses(sidecars["depth"])["decode"] == "computed"
    only_t2v = write_manifest(project["root"] / "force.csv", rows[:1])
    _, _, sidecars = run(only_t2v, project["out"], project["work"], force=True)
    assert statuses(sidecars["t2v"])["generate"] == "computed" and statuses(sidecars["t2v"])["encode"] == "computed"


def test_transient_faults_are_retried_permanent_ones_fail_their_row_once(project, monkeypatch):
    monkeypatch.setenv("T2VZ_FAULTS", "publish@io:eio:1,generate@oom:oom:1,generate@oom-t2v:oom:1,publish@fatal:fatal")
    t2v = next(r for r in project["rows"] if r["job_id"] == "t2v")
    depth = next(r for r in project["rows"] if r["job_id"] == "depth")
    rows = [
        {**t2v, "job_id": "io"},  # everything cached but publishing
        {**depth, "job_id": "oom", "seed": 10},  # new seeds: generation runs
        {**t2v, "job_id": "oom-t2v", "seed": 11},
        {**depth, "job_id": "fatal"},  # cached, fails publishing for good
    ]
    manifest = write_manifest(project["root"] / "faults.csv", rows)
    state, rep, sidecars = run(manifest, project["root"] / "out-faults", project["work"])
    by_id = {line["job_id"]: line for line in rep["rows"]}
    assert [by_id[j]["status"] for j in ("io", "oom", "oom-t2v", "fatal")] == ["ok", "ok", "ok", "failed"]
    assert "injected permanent failure" in by_id["fatal"]["error"]
    assert state.is_failed()
    assert sidecars["oom"]["resolved"]["effective_chunk_size"] == 2  # halved from 4: same pixels
    assert sidecars["oom"]["job"]["chunk_size"] == 4
    # text2video keeps its chunk size (its frames depend on it); on a CPU nothing can be offloaded.
    assert sidecars["oom-t2v"]["resolved"]["effective_chunk_size"] == 4
    runs = task_runs_of(state)
    attempts = {
        name: runs[name]["run_count"] for name in ("publish-fatal", "publish-io", "generate-oom", "generate-oom-t2v")
    }
    assert attempts == {"publish-fatal": 1, "publish-io": 2, "generate-oom": 2, "generate-oom-t2v": 2}, attempts


def test_out_of_memory_policy_keeps_pixels():
    import torch

    from t2vz_core.models import Runtime
    from tasks import policy

    assert [policy.halved_chunk_size(8, 24, n) for n in (1, 2, 3, 4)] == [4, 2, 2, 2]
    cpu = Runtime(device="cpu")
    assert policy.lighter_runtime(cpu, 1) is cpu
    if torch.cuda.is_available():
        assert policy.lighter_runtime(Runtime(device="cuda"), 1).offload == "model"
        assert policy.lighter_runtime(Runtime(device="cuda"), 5).offload == "sequential"
