"""End to end: a manifest row names a LoRA with a scale and a single-file base model, and `t2vz run`
(the installed console script, in a subprocess) runs it; the sidecar records what it ran with, an
unchanged row is up to date (`t2vz run` in this process: that path starts no flow run), and
retrained LoRA bytes at the same path make it run again (the flow in this process).

Budget: ~30 s (two flow runs of a 4-frame 64 px canny row plus a text2video row, on tiny models).
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from own_models_support import make_lora, write_original_checkpoint
from test_cli import t2vz, write_csv
from test_flow import DEMO_MEDIA

pytestmark = pytest.mark.usefixtures("no_env_allowed_roots")


def test_lora_with_scale_on_a_single_file_model_runs_through_t2vz_run(
    tmp_path, tiny_models, prefect_api, capsys, monkeypatch
):
    from flows.batch import process_manifest
    from flows.cli import main
    from t2vz_core.options import RunOptions

    shutil.copytree(DEMO_MEDIA, tmp_path / "media")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_lora(tiny_models / "sd", tmp_path / "loras" / "ink", seed=0)
    write_original_checkpoint(tiny_models / "sd", tmp_path / "models" / "dreambooth.safetensors")
    common = dict(
        model="models/dreambooth.safetensors",
        model_config=str(tiny_models / "sd"),
        num_inference_steps=2,
        chunk_size=4,
        resolution=64,
    )
    rows = [
        dict(
            job_id="styled",
            mode="canny",
            source="media/rocket.mp4",
            prompt="a glass rocket",
            seed=3,
            controlnet=str(tiny_models / "controlnet-canny"),
            lora="loras/ink:0.6",
            scheduler="euler_a",
            max_frames=4,
            **common,
        ),
        dict(
            job_id="t2v",
            mode="text2video",
            prompt="a panda surfing",
            seed=1,
            video_length=3,
            lora="loras/ink/pytorch_lora_weights.safetensors",
            scheduler="ddim",
            **common,
        ),
    ]
    manifest = write_csv(tmp_path / "jobs.csv", rows)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"PREFECT_API_URL": prefect_api, "T2VZ_RETRY_DELAY_S": "0"}
    args = ("run", str(manifest), "--output-dir", str(out), "--work-dir", str(work), "--no-progress", "--device", "cpu")

    result = t2vz(*args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # Nothing from the new loaders: peft, single-file loading, transformers' adapter load reports.
    for noise in ("peft", "LOAD REPORT", "local_dir_use_symlinks", "MISSING", "lora"):
        assert noise not in result.stderr, result.stderr
    styled = json.loads((out / "styled.json").read_text())
    assert styled["status"] == "ok" and (out / "styled.mp4").stat().st_size > 0
    assert styled["job"]["lora"] == [{"ref": str((tmp_path / "loras" / "ink").resolve()), "scale": 0.6}]
    assert styled["job"]["model"] == str((tmp_path / "models" / "dreambooth.safetensors").resolve())
    assert styled["job"]["scheduler"] == "euler_a" and styled["job"]["model_config"] == str(tiny_models / "sd")
    models = styled["resolved"]["models"]
    assert models["family"] == "sd" and models["model_fingerprint"].startswith("file:sha256:")
    assert models["lora"][0]["fingerprint"].startswith("file:sha256:") and models["lora"][0]["scale"] == 0.6
    assert json.loads((out / "t2v.json").read_text())["status"] == "ok"

    # Unchanged: up to date, no flow run.
    assert main(list(args)) == 0
    assert "all 2 row(s) up to date" in capsys.readouterr().out

    # Retrained LoRA at the same path: both rows using it run generation again; decoding and maps are reused.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_lora(tiny_models / "sd", tmp_path / "loras" / "ink", seed=1)
    monkeypatch.setenv("T2VZ_RETRY_DELAY_S", "0")
    state = process_manifest(
        manifest_path=str(manifest),
        output_dir=str(out),
        options=RunOptions(device="cpu", work_dir=str(work)),
        return_state=True,
    )
    assert state.is_completed(), state
    again = json.loads((out / "styled.json").read_text())
    steps = {name: step["status"] for name, step in again["steps"].items()}
    assert steps["decode"] == "cached" and steps["control"] == "cached" and steps["generate"] == "computed"
    assert again["resolved"]["models"]["lora"][0]["fingerprint"] != models["lora"][0]["fingerprint"]
    assert json.loads((out / "t2v.json").read_text())["steps"]["generate"]["status"] == "computed"
