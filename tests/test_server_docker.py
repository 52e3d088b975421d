"""Static checks of docker/ (no Docker engine on CI): the compose file wires server, Postgres,
setup, dispatcher and one-GPU workers the way flows/deploy.py names them, and the image is built
from the same pins as everything else (constraints.txt) on a CUDA base matching the torch wheels.
Honest scope: this parses and cross-checks files; it does not build or run the image. <1 s."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from flows import deploy

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def _args(dockerfile, instruction: str) -> list[str]:
    return [args for inst, args in dockerfile if inst == instruction]


def _arg_defaults(dockerfile) -> dict[str, str]:
    return dict(a.split("=", 1) for a in _args(dockerfile, "ARG") if "=" in a)


def _mount(spec: str) -> tuple[str, str]:
    """(source, target) of a short volume spec, `${VAR:-default}` read as its default."""
    source, target = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", spec).split(":")[:2]
    return source, target


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_image_cuda_base_matches_the_torch_cuda_wheels(dockerfile, pins):
    base = _arg_defaults(dockerfile)["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", base)
    assert match, base
    # torch's CUDA comes from the pinned nvidia-* wheels; the base image's release must match it.
    runtime = pins["nvidia-cuda-runtime"].split(".")
    toolkit = pins["cuda-toolkit"].split(".")
    assert (match[1], match[2]) == (runtime[0], runtime[1]) == (toolkit[0], toolkit[1]), (base, runtime, toolkit)
    assert "torch" in pins and "torchvision" in pins
    assert _args(dockerfile, "FROM")[-1] == "${CUDA_IMAGE}"


def test_image_installs_exactly_the_pins_on_the_pins_python(dockerfile):
    python = _arg_defaults(dockerfile)["PYTHON_VERSION"]
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", "constraints.txt was resolved on this Python"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and python.startswith("3.11")
    copied = " ".join(_args(dockerfile, "COPY"))
    assert "constraints.txt" in copied and "pyproject.toml" in copied
    installs = [a for a in _args(dockerfile, "RUN") if "pip install" in a]
    assert installs and all("-c constraints.txt" in a for a in installs), installs
    # Every package the project ships is copied into the image.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        name = pattern.rstrip("*")
        assert any(re.search(rf"\b{name}\b", c) for c in _args(dockerfile, "COPY")), f"{name} is not copied"
    assert any("prefect.yaml" in c for c in _args(dockerfile, "COPY"))


def test_image_runs_as_a_non_root_user_with_the_hf_cache_on_a_volume(dockerfile, compose):
    users = _args(dockerfile, "USER")
    assert users and users[-1] not in {"root", "0"}
    last_run = max(i for i, (inst, _) in enumerate(dockerfile) if inst == "RUN")
    last_user = max(i for i, (inst, _) in enumerate(dockerfile) if inst == "USER")
    assert last_user > last_run, "USER must come after the installs"
    env = " ".join(_args(dockerfile, "ENV"))
    hf_home = re.search(r"HF_HOME=(\S+)", env)[1]
    assert hf_home in " ".join(_args(dockerfile, "VOLUME"))
    for name in ("server", "setup", "dispatch", "worker-gpu0"):
        mounts = compose["services"][name].get("volumes") or []
        if name != "server":
            assert any(_mount(m)[1] == hf_home and _mount(m)[0] in compose["volumes"] for m in mounts), mounts
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_compose_runs_server_on_postgres_on_loopback(compose):
    services = compose["services"]
    assert {"postgres", "server", "setup", "dispatch", "worker-gpu0", "worker-gpu1"} <= set(services)
    pg = services["postgres"]["environment"]
    server = services["server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    match = re.fullmatch(r"postgresql\+asyncpg://(\w+):([^@]+)@postgres:5432/(\w+)", url)
    assert match and match[1] == pg["POSTGRES_USER"] and match[3] == pg["POSTGRES_DB"]
    assert match[2] == pg["POSTGRES_PASSWORD"]  # both from ${POSTGRES_PASSWORD:-prefect}
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert _command(server)[:3] == ["prefect", "server", "start"]
    assert all(p.startswith("127.0.0.1:") for p in server["ports"]), "no authentication: loopback only"
    port = _option(_command(server), "--port")
    for name, service in services.items():
        api = (service.get("environment") or {}).get("PREFECT_API_URL")
        if api:
            assert api == f"http://server:{port}/api", name


def test_compose_workers_one_gpu_each_on_the_deploy_pool(compose):
    services = compose["services"]
    gpu_workers = {n: s for n, s in services.items() if n.startswith("worker-gpu")}
    device_ids = []
    for name, service in gpu_workers.items():
        cmd = _command(service)
        assert cmd[:3] == ["prefect", "worker", "start"], name
        assert (_option(cmd, "--pool"), _option(cmd, "--work-queue"), _option(cmd, "--limit")) == (
            deploy.WORK_POOL,
            deploy.GPU_QUEUE,
            "1",
        ), name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert len(devices[0]["device_ids"]) == 1, f"{name}: one GPU per worker"
        device_ids += devices[0]["device_ids"]
        assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert len(device_ids) == len(set(device_ids)) >= 2
    names = [_option(_command(s), "--name") for s in gpu_workers.values()]
    assert len(set(names)) == len(names)

    dispatch = _command(services["dispatch"])
    assert (_option(dispatch, "--pool"), _option(dispatch, "--work-queue")) == (deploy.WORK_POOL, deploy.DISPATCH_QUEUE)
    assert "deploy" not in services["dispatch"], "the dispatcher needs no GPU"

    setup = _command(services["setup"])
    assert setup[:4] == ["python", "-m", "flows.deploy", "setup"]
    assert _option(setup, "--prefect-file") == "/opt/t2vz/prefect.yaml"
    assert "--gpus" in setup and services["setup"]["restart"] == "no"


def test_compose_workers_share_storage_for_cache_records_and_work(compose):
    """Cache hits across workers need the work folder and Prefect's result storage on shared /data."""
    services = compose["services"]
    for name in ("dispatch", "setup", *[n for n in services if n.startswith("worker-gpu")]):
        env = services[name]["environment"]
        data = [_mount(m)[1] for m in services[name]["volumes"] if _mount(m)[0] not in compose["volumes"]]
        assert data == ["/data"], name
        assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"].startswith("/data/")
        assert env["T2VZ_WORK_DIR"].startswith("/data/")


def test_dockerfile_workdir_holds_the_prefect_file_setup_reads(dockerfile):
    assert _args(dockerfile, "WORKDIR")[-1] == "/opt/t2vz"
    assert any(c.split()[-1] in {"./", "/opt/t2vz/"} and "prefect.yaml" in c for c in _args(dockerfile, "COPY"))
