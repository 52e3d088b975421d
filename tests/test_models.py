"""Runtime resolution, the per-process model cache, family detection and fingerprints.

Real diffusers pipelines on the tiny models; no GPU here, so device availability is
monkeypatched where the resolution logic is under test. Budget: ~15-20 s on the CI machine.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from t2vz_core import models
from t2vz_core.errors import InputError
from t2vz_core.models import ModelCache, Runtime

CPU = Runtime(device="cpu")


@pytest.fixture(autouse=True)
def fresh_cache():
    models.reset_cache(max_loaded=models.DEFAULT_MAX_LOADED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    models.reset_cache(max_loaded=models.DEFAULT_MAX_LOADED)


def _machine(monkeypatch, cuda: int = 0, mps: bool = False):
    from t2vz_core import runtime

    monkeypatch.setattr(runtime, "_no_gpu_possible", lambda: cuda == 0 and not mps)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# ---------------------------------------------------------------------------- Runtime


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [
        (1, True, (torch.device("cuda", 0), torch.float16)),
        (0, True, (torch.device("mps"), torch.float16)),
        (0, False, (torch.device("cpu"), torch.float32)),
    ],
)
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda=cuda, mps=mps)
    assert Runtime().resolve() == expected


def test_explicit_devices_and_dtypes(monkeypatch):
    _machine(monkeypatch, cuda=2)
    assert Runtime(device="cuda:1", dtype="bf16").resolve() == (torch.device("cuda", 1), torch.bfloat16)
    assert Runtime(device="cuda", dtype="fp32").resolve() == (torch.device("cuda", 0), torch.float32)
    assert Runtime(device="cpu").resolve() == (torch.device("cpu"), torch.float32)
    assert Runtime(device="cpu", dtype="bf16").resolve() == (torch.device("cpu"), torch.bfloat16)
    assert Runtime(dtype="float16", device="CUDA") == Runtime(dtype="fp16", device="cuda")
    with pytest.raises(InputError, match=r"2 CUDA device\(s\)"):
        Runtime(device="cuda:2").resolve()


def test_unusable_runtimes_are_input_errors(monkeypatch):
    _machine(monkeypatch, cuda=0, mps=False)
    with pytest.raises(InputError, match="fp16 on device cpu"):
        Runtime(device="cpu", dtype="fp16").resolve()
    with pytest.raises(InputError, match="no CUDA device"):
        Runtime(device="cuda").resolve()
    with pytest.raises(InputError, match="MPS is not available"):
        Runtime(device="mps").resolve()
    with pytest.raises(InputError, match="offload 'model'.*device is cpu"):
        Runtime(device="auto", offload="model").resolve()
    with pytest.raises(InputError, match="device 'gpu'"):
        Runtime(device="gpu")
    with pytest.raises(InputError, match="dtype 'int8'"):
        Runtime(dtype="int8")
    with pytest.raises(InputError, match="offload 'disk'"):
        Runtime(offload="disk")


# ---------------------------------------------------------------------------- loading and sharing


@pytest.mark.parametrize(
    "device, dtype, offload",
    [
        ("cpu", "auto", "none"),
        ("cpu", "bf16", "none"),
        ("cuda", "auto", "none"),
        ("cuda:1", "bf16", "model"),
        ("mps", "auto", "none"),
        ("auto", "auto", "none"),
        ("cpu", "fp16", "none"),
        ("cpu", "auto", "model"),
    ],
)
def test_signature_agrees_with_resolve(monkeypatch, device, dtype, offload):
    """Cache keys use signature(): it must name what resolve() gives, and refuse what it refuses."""
    _machine(monkeypatch, cuda=2, mps=True)
    runtime = Runtime(device=device, dtype=dtype, offload=offload)
    try:
        resolved_device, resolved_dtype = runtime.resolve()
    except InputError as exc:
        with pytest.raises(InputError, match=str(exc)[:30]):
            runtime.signature()
        return
    assert runtime.signature() == (resolved_device.type, str(resolved_dtype).replace("torch.", ""))


def test_a_named_device_is_signed_without_importing_torch():
    """An up-to-date check (no model work) with --device cpu/cuda must not pay torch's import."""
    import subprocess
    import sys

    code = (
        "import sys; from t2vz_core.runtime import Runtime; "
        "print(Runtime('cpu').signature(), Runtime('cuda:1', 'bf16').signature(), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "('cpu', 'float32') ('cuda', 'bfloat16') False"


def test_auto_is_signed_without_torch_only_where_no_gpu_can_exist():
    """On Linux without GPU device files "auto" is cpu for sure; anywhere else torch must be asked."""
    import subprocess
    import sys

    from t2vz_core import runtime

    code = "import sys; from t2vz_core.runtime import Runtime; print(Runtime().signature(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    resolved = Runtime().resolve()
    assert out.split(")")[0] + ")" == str((resolved[0].type, str(resolved[1]).replace("torch.", "")))
    assert out.strip().endswith(str(not runtime._no_gpu_possible()))  # torch imported only when it had to be


def test_each_model_loads_once_and_controlnet_variants_share_the_base(tiny_models, monkeypatch):
    base = models.load_pipeline("sd", tiny_models / "sd", runtime=CPU)
    assert type(base).__name__ == "StableDiffusionPipeline"
    assert base.safety_checker is None
    assert models.cache_stats()["loads"] == 1
    # A relative path to the same folder is the same model.
    monkeypatch.chdir(tiny_models)
    assert models.load_pipeline("sd", "sd", runtime=CPU) is base
    assert models.load_pipeline("sd", str(tiny_models / "sd"), None, CPU) is base
    assert models.cache_stats()["loads"] == 1

    canny = models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU)
    pose = models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-openpose", CPU)
    assert type(canny).__name__ == type(pose).__name__ == "StableDiffusionControlNetPipeline"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(canny, name) is getattr(pose, name) is getattr(base, name), name
    assert canny.controlnet is not pose.controlnet
    assert base.unet.dtype == canny.controlnet.dtype == torch.float32
    assert models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU) is canny
    stats = models.cache_stats()
    assert (stats["loads"], stats["pipeline_loads"], stats["controlnet_loads"]) == (3, 1, 2)
    assert stats["hits"] == 5 and stats["resident"] == 1


def test_pipeline_classes_per_family(tiny_models):
    sdxl = models.load_pipeline("sdxl", tiny_models / "sdxl", tiny_models / "controlnet-sdxl-canny", CPU)
    assert type(sdxl).__name__ == "StableDiffusionXLControlNetPipeline"
    pix2pix = models.load_pipeline("pix2pix", tiny_models / "pix2pix", runtime=CPU)
    assert type(pix2pix).__name__ == "StableDiffusionInstructPix2PixPipeline"
    with pytest.raises(InputError, match="pix2pix takes no ControlNet"):
        models.load_pipeline("pix2pix", tiny_models / "pix2pix", tiny_models / "controlnet-canny", CPU)
    with pytest.raises(InputError, match="does not fit the base model"):
        models.load_pipeline("sdxl", tiny_models / "sdxl", tiny_models / "controlnet-canny", CPU)
    with pytest.raises(InputError, match="it is a sdxl model, but the job asks for sd"):
        models.load_pipeline("sd", tiny_models / "sdxl", runtime=CPU)
    with pytest.raises(InputError, match="model family 'flux'"):
        models.load_pipeline("flux", tiny_models / "sd", runtime=CPU)


def test_least_recently_used_base_is_evicted(tiny_models, monkeypatch):
    cache = ModelCache(max_loaded=2)
    sd = cache.load("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU)
    cache.load("pix2pix", tiny_models / "pix2pix", runtime=CPU)
    assert cache.load("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU) is sd  # sd is now newest
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    cache.load("sdxl", tiny_models / "sdxl", runtime=CPU)  # evicts pix2pix, the least recent
    assert emptied, "no torch.cuda.empty_cache() on eviction"
    monkeypatch.undo()
    stats = cache.stats()
    assert (stats["evictions"], stats["resident"], stats["pipeline_loads"]) == (1, 2, 3)
    assert cache.load("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU) is sd
    cache.load("pix2pix", tiny_models / "pix2pix", runtime=CPU)
    assert cache.stats()["pipeline_loads"] == 4


def test_vae_options_follow_each_request(tiny_models):
    pipe = models.load_pipeline("sd", tiny_models / "sd", runtime=Runtime("cpu", vae_slicing=True, vae_tiling=True))
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    again = models.load_pipeline("sd", tiny_models / "sd", runtime=CPU)
    assert again is pipe and not pipe.vae.use_slicing and not pipe.vae.use_tiling


def test_safetensors_only_unless_pickle_allowed(tiny_models, pickled_sd_model):
    from diffusers import UNet2DConditionModel

    folder = pickled_sd_model
    unet = UNet2DConditionModel.from_pretrained(tiny_models / "sd" / "unet")

    with pytest.raises(InputError, match=r"no safetensors weights in unet.*allow_pickle"):
        models.load_pipeline("sd", folder, runtime=CPU)
    pipe = models.load_pipeline("sd", folder, runtime=Runtime("cpu", allow_pickle=True))
    assert torch.equal(pipe.unet.conv_in.weight, unet.conv_in.weight)


def test_loading_is_quiet_and_leaves_logging_settings_alone(tiny_models, capfd):
    import transformers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_info()
    try:
        capfd.readouterr()
        pipe = models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU)
        err = capfd.readouterr().err
        assert "Loading pipeline components" not in err and "it/s]" not in err, err
        assert pipe._progress_bar_config == {"disable": True}  # no per-step bars either
        assert models.load_pipeline("sd", tiny_models / "sd", runtime=CPU)._progress_bar_config["disable"]
        assert diffusers_logging.get_verbosity() == diffusers_logging.INFO  # restored after the load
        assert diffusers_logging.is_progress_bar_enabled() and transformers.logging.is_progress_bar_enabled()
    finally:
        diffusers_logging.set_verbosity_warning()


def test_bf16_runs_on_cpu(tiny_models):
    pipe = models.load_pipeline("sd", tiny_models / "sd", runtime=Runtime("cpu", dtype="bf16"))
    assert pipe.unet.dtype == torch.bfloat16
    image = pipe("a dog", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


# ---------------------------------------------------------------------------- offload


def _run(pipe, **extra):
    generator = torch.Generator("cpu").manual_seed(0)
    out = pipe("a dog", num_inference_steps=1, height=64, width=64, generator=generator, output_type="np", **extra)
    return out.images


def _record_offload_calls(monkeypatch, call_real: bool) -> list:
    from diffusers import DiffusionPipeline

    calls = []
    for name in ("enable_model_cpu_offload", "enable_sequential_cpu_offload"):
        real = getattr(DiffusionPipeline, name)

        def spy(pipe, *args, _real=real, _name=name, **kwargs):
            calls.append((_name, type(pipe).__name__, kwargs.get("device")))
            return _real(pipe, *args, **kwargs) if call_real else None

        monkeypatch.setattr(DiffusionPipeline, name, spy)
    return calls


def test_model_offload_hooks_follow_the_pipeline_in_use(tiny_models, monkeypatch):
    # Real accelerate hooks with the CPU standing in for the accelerator (no GPU here). A base and
    # its ControlNet variant share modules, which carry one set of hooks: they must be swapped.
    plain = ModelCache()
    edges = np.zeros((64, 64, 3), np.uint8)
    edges[16:48, 30:34] = 255
    expect_base = _run(plain.load("sd", tiny_models / "sd", runtime=CPU))
    expect_canny = _run(plain.load("sd", tiny_models / "sd", tiny_models / "controlnet-canny", CPU), image=[edges])
    monkeypatch.setattr(Runtime, "resolve", lambda self: (torch.device("cpu"), torch.float32))
    calls = _record_offload_calls(monkeypatch, call_real=True)
    runtime = Runtime("cpu", offload="model")

    base = models.load_pipeline("sd", tiny_models / "sd", runtime=runtime)
    assert type(base.unet._hf_hook).__name__ == "CpuOffload"
    np.testing.assert_allclose(_run(base), expect_base, atol=1e-5)
    canny = models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime)
    assert type(canny.controlnet._hf_hook).__name__ == "CpuOffload"
    np.testing.assert_allclose(_run(canny, image=[edges]), expect_canny, atol=1e-5)
    assert models.load_pipeline("sd", tiny_models / "sd", runtime=runtime) is base
    np.testing.assert_allclose(_run(base), expect_base, atol=1e-5)
    models.load_pipeline("sd", tiny_models / "sd", runtime=runtime)  # hooks already base's: no re-hooking

    # Our calls pass the resolved device; diffusers' own re-hooking after each call passes "cpu:0".
    ours = [cls for name, cls, device in calls if device == torch.device("cpu")]
    assert ours == ["StableDiffusionPipeline", "StableDiffusionControlNetPipeline", "StableDiffusionPipeline"]


def test_sequential_offload_wiring(tiny_models, monkeypatch):
    # accelerate's sequential hooks cannot execute with the CPU as execution device in this stack
    # (they trip over CLIP's embedding weight), so only the wiring is checked here: which
    # pipeline gets enable_sequential_cpu_offload, on which device, and that nothing else is placed.
    _machine(monkeypatch, cuda=1)
    calls = _record_offload_calls(monkeypatch, call_real=False)
    runtime = Runtime("cuda", "fp16", offload="sequential")
    base = models.load_pipeline("sd", tiny_models / "sd", runtime=runtime)
    canny = models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime)
    assert models.load_pipeline("sd", tiny_models / "sd", runtime=runtime) is base
    assert models.load_pipeline("sd", tiny_models / "sd", runtime=runtime) is base
    cuda = torch.device("cuda", 0)
    assert calls == [
        ("enable_sequential_cpu_offload", "StableDiffusionPipeline", cuda),
        ("enable_sequential_cpu_offload", "StableDiffusionControlNetPipeline", cuda),
        ("enable_sequential_cpu_offload", "StableDiffusionPipeline", cuda),
    ]
    assert base.unet.device.type == canny.controlnet.device.type == "cpu"  # placement left to the hooks
    assert base.unet.dtype == canny.controlnet.dtype == torch.float16


def test_model_offload_targets_the_requested_gpu(tiny_models, monkeypatch):
    # No GPU here: check that diffusers' real hooks point at cuda:1 and nothing moved there yet.
    _machine(monkeypatch, cuda=2)
    runtime = Runtime("cuda:1", "fp32", offload="model")
    pipe = models.load_pipeline("sd", tiny_models / "sd", runtime=runtime)
    assert pipe.unet._hf_hook.execution_device == torch.device("cuda", 1)
    assert pipe.unet.device.type == "cpu"
    canny = models.load_pipeline("sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime)
    assert canny.controlnet._hf_hook.execution_device == torch.device("cuda", 1)
    assert canny.unet._hf_hook.execution_device == torch.device("cuda", 1)


# ---------------------------------------------------------------------------- family, fingerprints


def test_detect_family(tiny_models, tmp_path):
    assert models.detect_family(tiny_models / "sd") == "sd"
    assert models.detect_family(str(tiny_models / "sdxl")) == "sdxl"
    assert models.detect_family(tiny_models / "pix2pix") == "pix2pix"
    with pytest.raises(InputError, match="controlnet-canny"):
        models.detect_family(tiny_models / "controlnet-canny")
    with pytest.raises(InputError, match="not-cached/model"):
        models.detect_family("not-cached/model")  # offline, not in the HF cache
    inpaint = tmp_path / "inpaint"
    shutil.copytree(tiny_models / "sd", inpaint)
    config = (inpaint / "unet" / "config.json").read_text().replace('"in_channels": 4', '"in_channels": 9')
    (inpaint / "unet" / "config.json").write_text(config)
    with pytest.raises(InputError, match="inpainting"):
        models.detect_family(inpaint)


def test_local_fingerprint_is_content_based(tiny_models, tmp_path):
    original = models.model_fingerprint(tiny_models / "controlnet-canny")
    assert original.startswith("local:sha256:")
    assert models.model_fingerprint(tiny_models / "controlnet-canny") == original
    copy = tmp_path / "copy"
    shutil.copytree(tiny_models / "controlnet-canny", copy)
    (copy / ".cache").mkdir()
    (copy / ".cache" / "ignored").write_text("hidden files don't count")
    assert models.model_fingerprint(copy) == original
    assert models.model_fingerprint(tiny_models / "controlnet-depth") != original

    weights = copy / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = models.model_fingerprint(copy)
    assert changed != original
    (copy / "config.json").rename(copy / "config2.json")
    assert models.model_fingerprint(copy) not in (original, changed)


def _age(folder: Path, seconds: float = 100) -> None:
    """Backdate every file: digests of files written in the last seconds are never memoized."""
    past = os.path.getmtime(folder) - seconds
    for path in folder.rglob("*"):
        os.utime(path, (past, past))


def test_fingerprint_memo_on_disk_skips_unchanged_weights_in_a_new_process(tiny_models, tmp_path, monkeypatch):
    from t2vz_core import workdir

    monkeypatch.setenv("T2VZ_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_models / "controlnet-canny", copy)
    _age(copy)
    reads: list[str] = []

    def spy_open(path, mode="r", *args, **kwargs):
        if "b" in mode and "r" in mode:
            reads.append(Path(path).name)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(workdir, "open", spy_open, raising=False)
    before = models.model_fingerprint(copy)
    assert "diffusion_pytorch_model.safetensors" in reads
    assert list((tmp_path / "cache" / "file-digests").glob("*.json"))
    monkeypatch.setattr(workdir, "_digest_memo", {})  # a new process: only the disk memo remains
    reads.clear()
    assert models.model_fingerprint(copy) == before
    assert reads == []
    # Rewritten bytes are rehashed even when the mtime is put back (the memo also keys inode and ctime).
    weights = copy / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(workdir, "_digest_memo", {})
    assert models.model_fingerprint(copy) != before
    assert reads == ["diffusion_pytorch_model.safetensors"]


def test_revision_moves_the_hub_fingerprint_and_reaches_from_pretrained(tiny_models, monkeypatch):
    from huggingface_hub import constants

    commits = {"main": "1" * 40, "v2": "2" * 40}
    repo = Path(constants.HF_HUB_CACHE) / "models--t2vz-test--revised"
    for ref, commit in commits.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    hub = "t2vz-test/revised"
    assert models.model_fingerprint(hub) == f"hub:{hub}@{commits['main']}"
    assert models.model_fingerprint(hub, "v2") == f"hub:{hub}@{commits['v2']}"
    assert models.model_fingerprint(hub, "v3") == f"hub:{hub}@v3"  # not cached: the revision itself
    with pytest.raises(InputError, match="applies to hub models; this is a local folder"):
        models.model_fingerprint(tiny_models / "sd", "main")
    with pytest.raises(InputError, match="applies to hub models"):
        models.load_pipeline("sd", tiny_models / "sd", runtime=CPU, revision="main")

    # No hub here: the hub id is served by the tiny folder, recording what from_pretrained receives.
    from diffusers import StableDiffusionPipeline

    calls: list[dict] = []
    real_detect, real_from_pretrained = models.detect_family, StableDiffusionPipeline.from_pretrained

    def detect_family(name, revision=None, model_config=None):
        calls.append({"detect_family": name, "revision": revision})
        return real_detect(tiny_models / "sd")

    def from_pretrained(name, **kwargs):
        calls.append({"from_pretrained": name, **kwargs})
        return real_from_pretrained(str(tiny_models / "sd"), **{k: v for k, v in kwargs.items() if k != "revision"})

    monkeypatch.setattr(models, "detect_family", detect_family)
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", from_pretrained)
    v2 = models.load_pipeline("sd", hub, runtime=CPU, revision="v2")
    assert [c.get("revision") for c in calls if "from_pretrained" in c] == ["v2"]
    assert [c["revision"] for c in calls if "detect_family" in c] == ["v2"]
    assert models.load_pipeline("sd", hub, runtime=CPU) is not v2  # another revision, another cache entry
    assert models.load_pipeline("sd", hub, runtime=CPU, revision="v2") is v2


def test_hub_fingerprint_comes_from_the_local_hf_cache(tmp_path):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--t2vz-test--cached-model"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    assert models.model_fingerprint("t2vz-test/cached-model") == f"hub:t2vz-test/cached-model@{commit}"
    assert models.model_fingerprint("t2vz-test/never-downloaded") == "hub:t2vz-test/never-downloaded@unresolved"
    with pytest.raises(InputError, match="no such folder"):
        models.model_fingerprint(tmp_path / "missing" / "model")
