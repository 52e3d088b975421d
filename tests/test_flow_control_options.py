"""Control-extraction cells of a manifest reach the control step: they change the maps and the control key.

Budget: ~25 s (two flow runs of one 4-frame 64 px canny row on tiny models, plus a depth row that fails early).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_flow import DEMO_MEDIA, run

HEADER = [
    "job_id",
    "mode",
    "source",
    "control",
    "prompt",
    "model",
    "controlnet",
    "control_backend",
    "annotator",
    "low_threshold",
    "high_threshold",
    "seed",
    "num_inference_steps",
    "chunk_size",
    "resolution",
    "max_frames",
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    lines = [",".join(HEADER)] + [",".join(str(row.get(name, "")) for name in HEADER) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def control_maps(sidecar: dict, work: Path) -> np.ndarray:
    from t2vz_core.media import FrameStore

    key = sidecar["steps"]["control"]["key"]
    folder = next(p for p in work.rglob("frames") if key in str(p.parent))
    store = FrameStore(folder)
    return np.stack([store[i] for i in range(len(store))])


@pytest.fixture
def monkey_env(monkeypatch):
    monkeypatch.setenv("T2VZ_RETRY_DELAY_S", "0")
    monkeypatch.delenv("T2VZ_FAULTS", raising=False)


def test_canny_thresholds_and_annotator_reach_the_control_step(prefect_api, tiny_models, tmp_path, monkey_env):
    shutil.copytree(DEMO_MEDIA, tmp_path / "media")
    (tmp_path / "empty-annotators").mkdir()
    common = dict(model=tiny_models / "sd", seed=3, num_inference_steps=2, chunk_size=4, resolution=64, max_frames=4)
    canny = dict(
        job_id="canny",
        mode="canny",
        source="media/rocket.mp4",
        prompt="a glass rocket",
        controlnet=tiny_models / "controlnet-canny",
        **common,
    )
    depth = dict(
        job_id="depth",
        mode="depth",
        source="media/depth.mp4",
        control="extract",
        prompt="two spheres",
        controlnet=tiny_models / "controlnet-depth",
        annotator="empty-annotators",
        **common,
    )
    out, work = tmp_path / "out", tmp_path / "work"
    _, rep, first = run(write_rows(tmp_path / "a.csv", [canny, depth]), out, work)
    by_id = {line["job_id"]: line for line in rep["rows"]}
    assert by_id["canny"]["status"] == "ok", by_id
    assert by_id["depth"]["status"] == "failed"
    assert "lacks dpt_hybrid-midas-501f0c75.pt" in by_id["depth"]["error"], by_id["depth"]["error"]
    assert "empty-annotators" in by_id["depth"]["error"]
    default_maps = control_maps(first["canny"], work)

    loose = {**canny, "low_threshold": 5, "high_threshold": 20}
    _, rep, second = run(write_rows(tmp_path / "b.csv", [loose]), out, work)
    assert rep["rows"][0]["status"] == "ok", rep["rows"]
    steps = second["canny"]["steps"]
    assert steps["decode"]["status"] == "cached"
    assert steps["control"]["status"] != "cached"
    assert steps["control"]["key"] != first["canny"]["steps"]["control"]["key"]
    loose_maps = control_maps(second["canny"], work)
    assert loose_maps.shape == default_maps.shape
    assert (loose_maps > 0).sum() > (default_maps > 0).sum()  # lower thresholds keep more edges
