"""Run options are one model (t2vz_core.options.RunOptions): the CLI's flags come from it, every entry
point takes it whole, each sidecar records it, and only the options that change pixels key the cache.
(The fan-out's shards and `t2vz serve`'s deployments are checked on a real server: tests/test_server.py.)"""

import json
from pathlib import Path

from flows.cli import build_parser, run_options
from t2vz_core.options import RunOptions
from t2vz_core.row_steps import runtime_signature
from t2vz_core.runtime import Runtime
from tasks.config import RunConfig


def _flags(command: str) -> dict[str, str]:
    """{dest: help} of a subcommand's options."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # noqa: SLF001
    return {a.dest: a.help for a in sub._actions if a.option_strings}  # noqa: SLF001


def test_every_run_option_is_a_flag_of_run_and_of_serve():
    run, serve = _flags("run"), _flags("serve")
    assert set(RunOptions.model_fields) <= set(run)
    assert {k: v for k, v in run.items() if k in RunOptions.model_fields} == {
        k: v for k, v in serve.items() if k in RunOptions.model_fields
    }


def test_flags_build_the_options_and_unset_flags_keep_defaults(monkeypatch):
    monkeypatch.delenv("T2VZ_MAX_WORKERS", raising=False)
    args = build_parser().parse_args(
        [
            "run",
            "m.csv",
            "-o",
            "out",
            "--vae-slicing",
            "--vae-tiling",
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--allowed-root",
            "a",
            "--allowed-root",
            "b",
            "--work-dir",
            "w",
            "--max-workers",
            "3",
            "--force",
            "--allow-pickle",
        ]
    )
    options = run_options(args)
    assert options == RunOptions(
        device="cpu",
        dtype="bf16",
        vae_slicing=True,
        vae_tiling=True,
        allowed_roots=["a", "b"],
        work_dir="w",
        max_workers=3,
        force=True,
        allow_pickle=True,
    )
    assert run_options(build_parser().parse_args(["run", "m.csv", "-o", "out"])) == RunOptions()
    monkeypatch.setenv("T2VZ_MAX_WORKERS", "4")
    assert run_options(build_parser().parse_args(["run", "m.csv", "-o", "out"])).max_workers == 4


def test_rows_at_once_one_on_a_cpu_unless_chosen(monkeypatch):
    monkeypatch.delenv("T2VZ_MAX_WORKERS", raising=False)
    assert RunOptions().rows_at_once("cpu") == 1 and RunOptions().rows_at_once("cuda") == 2
    assert RunOptions(max_workers=2).rows_at_once("cpu") == 2


def test_vae_flags_reach_the_runtime():
    args = build_parser().parse_args(["run", "m.csv", "-o", "out", "--vae-slicing", "--vae-tiling"])
    assert args.vae_slicing and args.vae_tiling
    plain = build_parser().parse_args(["run", "m.csv", "-o", "out"])
    assert not plain.vae_slicing and not plain.vae_tiling

    cfg = RunConfig(
        output_dir=Path("out"),
        options=RunOptions(device="cpu", work_dir="work", vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling),
    )
    runtime = cfg.runtime()
    assert runtime.vae_slicing and runtime.vae_tiling


def test_tiling_keys_the_generate_step_and_slicing_does_not():
    base = runtime_signature(Runtime("cpu"))
    assert base == {"device": "cpu", "dtype": "float32"}  # unchanged: existing cache entries stay valid
    assert runtime_signature(Runtime("cpu", vae_slicing=True)) == base
    assert runtime_signature(Runtime("cpu", vae_tiling=True)) != base


def test_every_option_reaches_the_sidecar_of_a_direct_flow_run(tmp_path, tiny_models, prefect_api):
    from flows.batch import process_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "job_id,mode,prompt,model,num_inference_steps,resolution,video_length\n"
        f"kite,text2video,a red kite,{tiny_models / 'sd'},2,64,3\n"
    )
    options = {
        "device": "cpu",
        "dtype": "fp32",
        "offload": "none",
        "allow_pickle": True,
        "vae_slicing": True,
        "vae_tiling": True,
        "force": True,
        "allowed_roots": [str(tmp_path)],
        "work_dir": str(tmp_path / "work"),
        "max_workers": 1,
        # fast paths (compile stays off: inductor would compile for minutes on a CPU)
        "compile": False,
        "channels_last": True,
        "tf32": False,
        "attention_backend": "math",
    }
    assert set(options) == set(RunOptions.model_fields), "a new run option: give it a value here"
    state = process_manifest(
        manifest_path=str(manifest), output_dir=str(tmp_path / "out"), options=RunOptions(**options), return_state=True
    )
    assert state.is_completed(), state.message
    assert json.loads((tmp_path / "out" / "kite.json").read_text())["options"] == options


def test_tf32_keys_fp32_generation_on_a_gpu_only():
    # TF32 only changes fp32 matmuls on CUDA: it names the key there and nowhere else.
    assert runtime_signature(Runtime("cuda", "fp32")) == {"device": "cuda", "dtype": "float32", "tf32": "on"}
    assert runtime_signature(Runtime("cuda", "fp32", tf32=False)) == {"device": "cuda", "dtype": "float32"}
    assert runtime_signature(Runtime("cuda", "fp16")) == {"device": "cuda", "dtype": "float16"}
    assert runtime_signature(Runtime("cpu", tf32=True)) == {"device": "cpu", "dtype": "float32"}
