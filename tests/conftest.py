"""Test configuration: offline, isolated Prefect state, tiny models built once per session."""

import contextlib
import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub, diffusers or prefect.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="t2vz-tests-"))
# Shared by the xdist workers of one run, which inherit it from the controller: the home of the
# session's Prefect server (tests/session_server.py), the migrated database template of
# flows/server_db.py.
_SHARED_DIR = Path(os.environ.setdefault("T2VZ_TESTS_SHARED_DIR", str(_SESSION_DIR)))
os.environ["XDG_CACHE_HOME"] = str(_SHARED_DIR / "cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf-home")
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect-home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "prefect-results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
# Tiny models are overhead-bound: one intra-op thread per process is as fast on an idle box
# and several times faster on a busy one; subprocesses (CLI, workers) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import fault_injection  # noqa: E402
import pytest  # noqa: E402

from t2vz_core.gc_pause import paused_gc  # noqa: E402

fault_injection.install()  # T2VZ_FAULTS rules reach the declared steps (none unless a test sets it)


_collecting = contextlib.ExitStack()


def pytest_configure(config):
    """The xdist controller starts the session's Prefect server while the workers start and collect
    (~15 s on 2 cores, the database template included); the workers join it when a test needs it.
    Processes that collect do it with the garbage collector paused (see pytest_collection_finish)."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        from session_server import start_in_background

        start_in_background()
    else:
        _collecting.enter_context(paused_gc())


def pytest_collection_finish(session):
    """Everything imported so far (torch, diffusers, Prefect: ~600,000 objects) lives for the whole
    session: collected while it grew, it costs ~1.3 s of full collections that free nothing; frozen
    when the pause ends (t2vz_core/gc_pause.py), a full gc.collect() (the model cache runs one when
    it drops models) costs ~0 s instead of ~0.4 s, and so do pytest's own last two."""
    _collecting.close()


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tiny_models(session_dir) -> Path:
    """Folder with every tiny random-weight model (sd, pix2pix, controlnet-*, sdxl...)."""
    from t2vz_core.tiny import write_tiny_models

    root = session_dir / "tiny-models"
    write_tiny_models(root)
    return root


@pytest.fixture(scope="session")
def prefect_api():
    """In-process flows run against the session's Prefect server (tests/session_server.py); yields
    its API URL, which subprocesses get as PREFECT_API_URL to skip starting a server of their own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from session_server import api_url

    with temporary_settings(updates={PREFECT_API_URL: api_url()}):
        yield PREFECT_API_URL.value()


@pytest.fixture
def pickled_sd_model(tmp_path, tiny_models) -> Path:
    """A copy of the tiny SD model whose UNet weights are a pickle .bin file only."""
    import shutil

    from diffusers import UNet2DConditionModel

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models / "sd", folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").exists()
    return folder


@pytest.fixture
def no_env_allowed_roots(monkeypatch):
    """Sources confined by the manifest's folder alone: no T2VZ_ALLOWED_ROOTS from the environment."""
    monkeypatch.delenv("T2VZ_ALLOWED_ROOTS", raising=False)


# --- pytest-xdist (`make test` runs two workers with --dist loadgroup --no-loadscope-reorder): tests
# of one module stay on one worker, so its module fixtures are built once; the three modules that
# share the session's reliability corpus run (tests/reliability_support.corpus_run) share a worker;
# the media matrix's independent cases spread over both. Groups holding slow tests (end-to-end
# processes, real servers) are queued first, so the short ones fill in around them at the end.
_SHARED_GROUPS = {"test_reliability_faults": "corpus", "test_reliability_inputs": "corpus", "test_security": "corpus"}
_SPREAD = {"test_media_matrix"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into "@group" node ids
def pytest_collection_modifyitems(config, items):
    group_of = {}
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module not in _SPREAD:
            group_of[item] = _SHARED_GROUPS.get(module, module)
            item.add_marker(pytest.mark.xdist_group(group_of[item]))
    slow = {group_of.get(item) for item in items if any(item.iter_markers("slow")) or any(item.iter_markers("server"))}
    items.sort(key=lambda item: group_of.get(item) not in slow)  # stable: order within a group is kept
