"""The own-model cells (lora, scheduler, vae, model_config, controlnet_config): parsing, validation
with row/column errors, single-file family detection from the header, and the generate key.

No pipeline is loaded here (the key side reads configs and headers only). Budget: ~5 s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from own_models_support import write_original_checkpoint, write_original_sdxl_checkpoint

from t2vz_core import row_steps
from t2vz_core.errors import InputError
from t2vz_core.manifest import Job, read_manifest
from t2vz_core.model_sources import (
    NOT_FOR_TEXT2VIDEO,
    SCHEDULERS,
    key_parts,
    parse_lora_cell,
    single_file_family,
    weights_fingerprint,
)
from t2vz_core.runtime import Runtime

pytestmark = pytest.mark.usefixtures("no_env_allowed_roots")


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own-cells")
    lora = root / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"not read by the manifest layer")
    odd = root / "styles:2"  # a folder whose own name ends like ':SCALE'
    odd.mkdir()
    (odd / "ink.safetensors").write_bytes(b"x")
    two = root / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (two / name).write_bytes(b"x")
    (root / "style.bin").write_bytes(b"x")
    (root / "clip.mp4").write_bytes(b"x")
    return {
        "root": root,
        "lora": lora,
        "odd": odd,
        "two": two,
        "sd_file": write_original_checkpoint(tiny_models / "sd", root / "dreambooth.safetensors"),
        "p2p_file": write_original_checkpoint(tiny_models / "pix2pix", root / "ip2p.safetensors"),
        "xl_file": write_original_sdxl_checkpoint(tiny_models / "sdxl", root / "xl.safetensors"),
    }


def job(**cells) -> Job:
    return Job(**{"job_id": "a", "mode": "text2video", "prompt": "a cat", **cells})


# ------------------------------------------------------------------------------------- cells


def test_lora_cell_scales_paths_and_hub_ids(files):
    base = files["root"]
    weights = parse_lora_cell("lora:0.8; lora/pytorch_lora_weights.safetensors ;org/ink-style:-1.5e-1", base)
    assert [(w.ref, w.scale) for w in weights] == [
        (str(files["lora"]), 0.8),
        (str(files["lora"] / "pytorch_lora_weights.safetensors"), 1.0),
        ("org/ink-style", -0.15),
    ]
    # A path that itself ends in ':<number>' is taken whole; its scale can still follow.
    assert [(w.ref, w.scale) for w in parse_lora_cell("styles:2", base)] == [(str(files["odd"]), 1.0)]
    assert [(w.ref, w.scale) for w in parse_lora_cell("styles:2:0.5", base)] == [(str(files["odd"]), 0.5)]
    with pytest.raises(ValueError, match="names .* twice"):
        parse_lora_cell("styles:2;styles:2:0.5", base)


@pytest.mark.parametrize(
    "cell, message",
    [
        ("lora:11", "scale 11 is out of range"),
        ("lora:nan", "neither an existing"),
        ("style.bin", "not .safetensors"),
        ("two", "holds 2 .safetensors files"),
        ("./missing.safetensors", "not found"),
        (" ; ", "names no LoRA"),
        ("lora;lora:0.5", "twice"),
    ],
)
def test_bad_lora_cells(files, cell, message):
    with pytest.raises(ValueError, match=message):
        parse_lora_cell(cell, files["root"])


def test_manifest_errors_name_row_and_column(files, tiny_models):
    manifest = files["root"] / "jobs.csv"
    sd = tiny_models / "sd"
    manifest.write_text(
        "job_id,mode,source,prompt,model,model_config,lora,scheduler,vae,controlnet_config\n"
        f"ok,canny,clip.mp4,x,dreambooth.safetensors,{sd},lora:0.7,euler_a,{sd},\n"
        f"t2v,text2video,,x,,,,dpmpp_2m_karras,,\n"
        f"cfg,text2video,,x,{sd},{sd},,,,\n"
        f"ckpt,text2video,,x,clip.mp4,,,,,\n"
        f"sched,text2video,,x,,,,heun,,\n"
        f"cn,text2video,,x,,,,,,{sd}\n"
        f"lo,text2video,,x,,,lora:99,,,\n"
    )
    result = read_manifest(manifest)
    assert [j.job_id for j in result.jobs] == ["ok"]
    ok = result.jobs[0]
    assert ok.model == str(files["sd_file"]) and ok.base_model_config == str(sd) and ok.scheduler == "euler_a"
    assert [(w.ref, w.scale) for w in ok.lora] == [(str(files["lora"]), 0.7)] and ok.vae == str(sd)
    errors = {(e.job_id, e.column): e.message for e in result.errors}
    assert "dpmpp_2m_karras cannot run text2video" in errors[("t2v", "scheduler")]
    assert "exact with ddim" in errors[("t2v", "scheduler")]
    assert "single-file model" in errors[("cfg", "model_config")]
    assert "a .mp4 file" in errors[("ckpt", "model")]
    assert "unknown scheduler 'heun'" in errors[("sched", "scheduler")]
    assert "not used by mode text2video" in errors[("cn", "controlnet_config")]
    assert "scale 99 is out of range" in errors[("lo", "lora")]


def test_every_scheduler_name_is_accepted_and_text2video_refuses_the_inexact_ones():
    for name in SCHEDULERS:
        assert job(mode="canny", source=__file__, scheduler=name.upper()).scheduler == name
        if name in NOT_FOR_TEXT2VIDEO:
            with pytest.raises(ValueError, match=f"scheduler {name} cannot run text2video"):
                job(scheduler=name)
        else:
            assert job(scheduler=name).scheduler == name
    assert job(mode="canny", source=__file__, scheduler="DPM++_2M").scheduler == "dpmpp_2m"  # as users write it


def test_ckpt_model_needs_model_config(files, tiny_models):
    ckpt = files["root"] / "old.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(ValueError, match="a .ckpt model needs model_config"):
        job(model=str(ckpt))
    assert job(model=str(ckpt), model_config=str(tiny_models / "sd")).model == str(ckpt)


def test_sidecar_dict_names_the_cells_as_columns(files, tiny_models):
    data = job(
        model=str(files["sd_file"]), model_config=str(tiny_models / "sd"), lora="org/ink:0.5", scheduler="ddim"
    ).cache_dict()
    assert data["model_config"] == str(tiny_models / "sd") and data["scheduler"] == "ddim"
    assert data["lora"] == [{"ref": "org/ink", "scale": 0.5}]
    assert Job.model_validate({**data, "job_id": "b"}).cache_dict() == {**data, "job_id": "b"}  # reads back


# ------------------------------------------------------------------------------- single files


def test_single_file_family_from_the_header(files, tiny_models):
    assert single_file_family(str(files["sd_file"])) == "sd"
    assert single_file_family(str(files["p2p_file"])) == "pix2pix"
    assert single_file_family(str(files["xl_file"])) == "sdxl"
    assert single_file_family(str(files["sd_file"]), str(tiny_models / "sd")) == "sd"
    with pytest.raises(InputError, match="is a sd checkpoint, but model_config"):
        single_file_family(str(files["sd_file"]), str(tiny_models / "pix2pix"))
    lora_file = files["lora"] / "pytorch_lora_weights.safetensors"
    with pytest.raises(InputError, match="not a readable .safetensors"):
        single_file_family(str(lora_file))


# ------------------------------------------------------------------------------------ the key


def generate_key(job_: Job) -> str:
    from t2vz_core.pipeline import RowContext, get_step

    ctx = RowContext(job=job_, work=None, runtime=Runtime(device="cpu"), output_dir=Path("."))
    return get_step("generate").key(ctx)  # the declared generate step's key function


def test_generate_key_covers_every_cell_and_the_lora_bytes(files, tiny_models, tmp_path):
    sd = str(tiny_models / "sd")
    plain = job(model=sd, num_inference_steps=4, t0=1, t1=2)
    assert key_parts(row_steps.resolve_models(plain)) == {}  # rows without the cells keep their keys
    lora = tmp_path / "style"
    shutil.copytree(files["lora"], lora)
    styled = job(model=sd, num_inference_steps=4, t0=1, t1=2, lora=f"{lora}:0.7")
    keys = {
        "plain": generate_key(plain),
        "styled": generate_key(styled),
        "scale": generate_key(job(model=sd, num_inference_steps=4, t0=1, t1=2, lora=f"{lora}:0.8")),
        "scheduler": generate_key(job(model=sd, num_inference_steps=4, t0=1, t1=2, scheduler="ddim")),
        "vae": generate_key(job(model=sd, num_inference_steps=4, t0=1, t1=2, vae=sd)),
        "file": generate_key(job(model=str(files["sd_file"]), model_config=sd, num_inference_steps=4, t0=1, t1=2)),
    }
    assert len(set(keys.values())) == len(keys)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"retrained")  # same path, new bytes
    assert generate_key(styled) != keys["styled"]
    # A moved LoRA with the same bytes is the same LoRA.
    moved = tmp_path / "moved"
    shutil.move(lora, moved)
    assert generate_key(job(model=sd, num_inference_steps=4, t0=1, t1=2, lora=f"{moved}:0.7")) == generate_key(
        job(model=sd, num_inference_steps=4, t0=1, t1=2, lora=f"{moved}/pytorch_lora_weights.safetensors:0.7")
    )


def test_single_file_fingerprint_is_its_bytes(files, tiny_models, tmp_path):
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(files["sd_file"], copy)
    assert weights_fingerprint(str(copy)) == weights_fingerprint(str(files["sd_file"]))
    assert weights_fingerprint(str(copy)).startswith("file:sha256:")
    models = row_steps.resolve_models(job(model=str(copy), model_config=str(tiny_models / "sd")))
    assert models["family"] == "sd" and models["model_fingerprint"] == weights_fingerprint(str(copy))


@pytest.mark.parametrize(
    "raised, expected, message",
    [
        (ConnectionError("reset by peer"), "TransientError", "network error while loading"),
        (ValueError("no config.json"), "InputError", "controlnet_config column"),
    ],
)
def test_a_network_failure_while_loading_a_single_file_is_transient(tmp_path, monkeypatch, raised, expected, message):
    """Fetching a single file's configs from the hub can time out: that is retried like any hub
    download, while a config that cannot be found is the user's to fix."""
    from diffusers import ControlNetModel

    from t2vz_core.model_sources import load_single_file_controlnet

    def fail(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(ControlNetModel, "from_single_file", fail)
    with pytest.raises(Exception, match=message) as caught:
        load_single_file_controlnet(str(tmp_path / "cn.safetensors"), None, Runtime(device="cpu"), None)
    assert type(caught.value).__name__ == expected
