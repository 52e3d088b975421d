"""`t2vz run --allow-pickle`: pickle-only weights fail their row without it and run with it; runs are quiet.

The model's every weight file is a pickle (.bin: UNet, VAE and the transformers text encoder). This
is also the security tests' opt-in case (tests/test_security.py: weights load from safetensors only
unless the user opts in).
Budget: ~25 s (the flow once in this process, then one `t2vz run --allow-pickle` subprocess, of one
4-frame 64 px text2video row on tiny models).
"""

from __future__ import annotations

import json

from reliability_support import bin_only_model
from test_cli import t2v_row, t2vz, write_csv


def test_pickle_only_model_needs_allow_pickle(tmp_path, tiny_models, prefect_api, monkeypatch):
    from flows.batch import process_manifest
    from t2vz_core.options import RunOptions

    folder = bin_only_model(tiny_models / "sd", tmp_path / "pickled")
    env = {"PREFECT_API_URL": prefect_api, "T2VZ_RETRY_DELAY_S": "0"}
    manifest = write_csv(tmp_path / "jobs.csv", [t2v_row(tiny_models, model=str(folder))])
    out = tmp_path / "out"
    # Without the option (the flow in this process; RunOptions' default is what `t2vz run` sends).
    monkeypatch.setenv("T2VZ_RETRY_DELAY_S", "0")
    state = process_manifest(manifest_path=str(manifest), output_dir=str(out), options=RunOptions(), return_state=True)
    assert state.is_failed(), state
    report = json.loads((out / "report.json").read_text())
    assert report["rows"][0]["status"] == "failed"
    assert "no safetensors weights in text_encoder, unet, vae" in report["rows"][0]["error"]
    assert "--allow-pickle" in report["rows"][0]["error"]
    assert not (out / "clip.mp4").exists()

    result = t2vz("run", str(manifest), "--output-dir", str(out), "--no-progress", "--allow-pickle", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "clip.mp4").stat().st_size > 0
    sidecar = json.loads((out / "clip.json").read_text())
    assert sidecar["status"] == "ok" and sidecar["options"]["allow_pickle"] is True
    assert sidecar["steps"]["generate"]["status"] == "computed"
    # Quiet: no diffusers loading bars or per-step tqdm bars in the run's output.
    console = result.stdout + result.stderr
    assert "Loading pipeline components" not in console and "it/s]" not in console, console
