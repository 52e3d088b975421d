"""Runtime options of `t2vz run` reach the model runtime, and only those that change pixels key the cache."""

from pathlib import Path

from flows.cli import build_parser
from t2vz_core.models import Runtime
from t2vz_core.row_steps import runtime_signature
from tasks.config import RunConfig


def test_vae_flags_reach_the_runtime():
    args = build_parser().parse_args(["run", "m.csv", "-o", "out", "--vae-slicing", "--vae-tiling"])
    assert args.vae_slicing and args.vae_tiling
    plain = build_parser().parse_args(["run", "m.csv", "-o", "out"])
    assert not plain.vae_slicing and not plain.vae_tiling

    cfg = RunConfig(output_dir=Path("out"), work_dir=Path("work"), device="cpu",
                    vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling)
    runtime = cfg.runtime()
    assert runtime.vae_slicing and runtime.vae_tiling


def test_tiling_keys_the_generate_step_and_slicing_does_not():
    base = runtime_signature(Runtime("cpu"))
    assert base == {"device": "cpu", "dtype": "float32"}  # unchanged: existing cache entries stay valid
    assert runtime_signature(Runtime("cpu", vae_slicing=True)) == base
    assert runtime_signature(Runtime("cpu", vae_tiling=True)) != base
