"""Process life (issue 16): cooperative stop, nothing left behind, many runs at once.

In-process: the engine stops at a step boundary with its checkpoint saved and resumes from it
bit for bit; decoding stops between chunks and ends its decord worker. Then real `t2vz run`
processes, each without PREFECT_API_URL (so on the shared local server of flows/server.py):
SIGTERM and SIGINT mid-generation (time to exit, `cancelled` in sidecar and report, the rows
not started reported as not run, no output, no process left), the re-run resuming the cancelled
row; a server that cannot start (one line, exit 2); four runs started at once, two with PREFECT_HOMEs
of their own and two sharing a third (all finish with their reports, no server left).

Budget: ~2 min on 2 idle cores, most of it the subprocess runs (each imports torch, diffusers
and Prefect); the concurrency test starts four runs and three servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from reliability_support import run_rows_in_process

from t2vz_core import stop

REPO = Path(__file__).resolve().parents[1]
T2VZ = Path(sys.executable).parent / "t2vz"
RUN_TIMEOUT_S = 420
# The goal is 5 s from the signal to exit with tiny models; the bound here leaves room
# for a CI machine several times busier than idle (measured on this one: see the report).
STOP_BOUND_S = 15


@pytest.fixture(autouse=True)
def fresh_stop_event():
    stop.reset()
    yield
    stop.reset()


# ------------------------------------------------------------------ in-process


def test_engine_stops_at_the_step_boundary_and_resumes(tiny_models, tmp_path):
    from t2vz_core.engine import GenerationRequest, generate
    from t2vz_core.models import Runtime, load_pipeline

    pipe = load_pipeline(
        "sd", tiny_models / "sd", tiny_models / "controlnet-canny", runtime=Runtime(device="cpu", dtype="fp32")
    )
    rng = np.random.default_rng(0)
    maps = ((rng.random((6, 64, 64, 3)) > 0.8) * 255).astype(np.uint8)
    request = GenerationRequest(
        mode="canny", prompt="a man dancing", num_inference_steps=4, seed=1, width=64, height=64, chunk_size=4
    )  # two UNet chunks per step
    expected = generate(pipe, request, maps, output_dtype=np.float32)
    path = tmp_path / "checkpoint"
    calls = []

    def stop_in_chunk_1_of_step_2(done, total, message):
        calls.append(message)
        if done == 3:  # step 2, chunk 1 of 2: the step still finishes before stopping
            stop.request_stop("test")

    with pytest.raises(stop.Cancelled, match="frames step 2/4"):
        generate(pipe, request, maps, checkpoint_path=path, on_progress=stop_in_chunk_1_of_step_2)
    assert calls[-1] == "frames: step 2/4, chunk 2/2"
    assert path.exists()
    import torch

    assert torch.load(path, weights_only=True)["step"] == 2
    stop.reset()
    resumed = generate(pipe, request, maps, checkpoint_path=path, output_dtype=np.float32)
    assert np.array_equal(resumed, expected)
    assert not path.exists()


def test_decode_stops_between_chunks_ends_its_worker_and_resumes(tmp_path):
    from t2vz_core.media import FrameStore, decode_to_store, plan_decode, probe
    from t2vz_core.media.decode import choose_backend
    from t2vz_core.media.plan import DecodeSpec
    from t2vz_core.media.synthetic import make_video

    video = make_video(tmp_path / "clip.mp4", frames=24, size=(64, 48))
    info = probe(video)
    plan = plan_decode(info, DecodeSpec())
    store = tmp_path / "store"
    # Children this test did not start (a session's Prefect test server, say) are not its business.
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    stop.request_stop("test")
    with pytest.raises(stop.Cancelled, match="decode, 8 of 24"):
        decode_to_store(video, plan, store, chunk_size=8)
    if choose_backend(info) == "decord":  # the decord worker ended with the stop, not later
        assert not [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    assert len(list(tmp_path.glob(".store.partial/*.png"))) == 8  # the first chunk is kept for the re-run
    assert not store.exists()  # no half-written store in its place
    stop.reset()
    frames = decode_to_store(video, plan, store, chunk_size=8)
    assert len(FrameStore(store)) == len(frames) == 24


# ------------------------------------------------------------------ real `t2vz run` processes


def _env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _start(manifest: Path, out: Path, home: Path, *args: str, **extra: str) -> subprocess.Popen:
    command = [str(T2VZ)] if T2VZ.exists() else [sys.executable, "-m", "flows.cli"]
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [*command, "run", str(manifest), "-o", str(out), "--device", "cpu", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(home, **extra),
        cwd=REPO,
        start_new_session=True,
    )
    log.close()
    return proc


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")


class Tree:
    """Every descendant a process had while we watched (pid and start time: pids get reused)."""

    def __init__(self, proc: subprocess.Popen):
        self.root = psutil.Process(proc.pid)
        self.seen: dict[tuple[int, float], str] = {}
        self.parents: dict[tuple[int, float], int] = {}

    def sample(self) -> None:
        sample(self)

    def record(self, child: psutil.Process, parent: int) -> None:
        try:
            key, name = (child.pid, child.create_time()), " ".join(child.cmdline()[1:4])
        except psutil.Error:
            return
        self.parents.setdefault(key, parent)
        if name or key not in self.seen:  # an exiting (zombie) process shows no command line
            self.seen[key] = name

    def servers(self) -> set[tuple[int, float]]:
        """The server_host processes seen. A process the server forks (its imports run `ldconfig -p`
        and `file -b python`) shows the server's command line until it execs, which on a loaded
        machine lasts long enough to be sampled: those are not servers."""
        hosts = {key for key, name in self.seen.items() if "flows.server_host" in name}
        host_pids = {pid for pid, _ in hosts}
        return {key for key in hosts if self.parents.get(key) not in host_pids}

    def alive(self) -> list[str]:
        left = []
        for (pid, created), name in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {name}")
            except psutil.NoSuchProcess:
                pass
        return left


def sample(*trees: Tree) -> None:
    """Record each tree's descendants, from one look at this process's own (the runs are its
    children). A look per tree scans the whole process table each time: eight trees sampled ten
    times a second took ~15% of a core."""
    parents: dict[int, int] = {}
    children = []
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in descendants:
        try:
            parents[child.pid] = child.ppid()
            children.append(child)
        except psutil.Error:
            continue
    roots = {tree.root.pid: tree for tree in trees}
    for child in children:
        ancestor = parents[child.pid]
        while ancestor in parents and ancestor not in roots:
            ancestor = parents[ancestor]
        if ancestor in roots:
            roots[ancestor].record(child, parents[child.pid])


def _server_hosts(home: Path) -> list[int]:
    """flows.server_host processes serving `home` (the shared local server)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "flows.server_host" in cmd and str(home) in " ".join(cmd):
            found.append(proc.pid)
    return found


def _listening_ports_of(pids: set[int]) -> list[int]:
    return [c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _wait_for(predicate, proc: subprocess.Popen, tree: Tree, out: Path, timeout_s: float = RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        tree.sample()
        assert proc.poll() is None, f"run ended early ({proc.returncode}):\n{_log(out)[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{_log(out)[-3000:]}"
        time.sleep(0.05)


def _checkpoints(out: Path) -> list[Path]:
    return list((out / ".t2vz-work").glob("**/checkpoint"))


@pytest.fixture(scope="module")
def two_rows(tmp_path_factory, tiny_models) -> Path:
    """A canny row long enough to be stopped mid-generation, and a second row after it."""
    from t2vz_core.media.synthetic import make_video

    folder = tmp_path_factory.mktemp("stop")
    make_video(folder / "clip.mp4", frames=8, size=(64, 64))
    models = f"{tiny_models / 'sd'},{tiny_models / 'controlnet-canny'}"
    sd, controlnet = models.split(",")
    path = folder / "two.csv"
    path.write_text(
        "job_id,mode,source,prompt,model,controlnet,seed,num_inference_steps,resolution,output\n"
        f"long,canny,clip.mp4,a red ball,{sd},{controlnet},1,8,64,mp4\n"
        f"after,canny,clip.mp4,a blue ball,{sd},{controlnet},2,2,64,mp4\n",
        encoding="utf-8",
    )
    return path


def _stop_mid_generation(manifest: Path, out: Path, home: Path, sig: signal.Signals) -> tuple[int, float, Tree]:
    proc = _start(manifest, out, home)
    tree = Tree(proc)
    try:
        _wait_for(lambda: _checkpoints(out), proc, tree, out)  # the first step's checkpoint is written
        tree.sample()
        sent = time.monotonic()
        proc.send_signal(sig)
        while proc.poll() is None:
            tree.sample()
            time.sleep(0.05)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(), took, tree


@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT_S)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_stops_the_run_at_a_step_boundary_and_the_rerun_resumes(two_rows, tmp_path, sig):
    out, home = tmp_path / "out", tmp_path / "home"
    code, took, tree = _stop_mid_generation(two_rows, out, home, sig)
    print(f"\n{sig.name}: exit {code} {took:.1f} s after the signal")
    log = _log(out)
    assert code == 128 + sig, log[-3000:]
    assert took < STOP_BOUND_S, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # The row is cancelled in its sidecar and the report; the row after it did not start.
    sidecar = json.loads((out / "long.json").read_text())
    assert sidecar["status"] == "cancelled" and sidecar["failed_step"] == "generate"
    assert sidecar["steps"]["generate"]["status"] == "cancelled"
    assert f"cancelled ({sig.name}) at frames step" in sidecar["error"]
    report = json.loads((out / "report.json").read_text())
    assert {r["job_id"]: r["status"] for r in report["rows"]} == {"long": "cancelled", "after": "missing"}
    assert report["counts"]["cancelled"] == 1 and report["counts"]["missing"] == 1
    assert "not run" in next(r["error"] for r in report["rows"] if r["job_id"] == "after")
    assert not (out / "after.json").exists()
    # No output appeared (not even half-written), the checkpoint of a finished step is kept.
    assert not list(out.glob("*.mp4")) and not list(out.glob(".*.tmp"))
    import torch

    (checkpoint,) = _checkpoints(out)
    assert torch.load(checkpoint, weights_only=True)["step"] >= 1
    # Nothing the run started outlives it: the local server (and its port), the decord worker.
    assert any("flows.server_host" in name for name in tree.seen.values()), tree.seen
    assert tree.alive() == [], tree.alive()
    assert _server_hosts(home) == []

    if sig == signal.SIGINT:
        return  # the re-run is the same for both signals: once is enough
    rerun = _start(two_rows, out, home)
    rerun_tree = Tree(rerun)
    while rerun.poll() is None:
        rerun_tree.sample()
        time.sleep(0.1)
    assert rerun.wait() == 0, _log(out)[-3000:]
    sidecar = json.loads((out / "long.json").read_text())
    assert sidecar["status"] == "ok"
    done, total = map(int, sidecar["steps"]["generate"]["resumed_at"].split("/"))
    assert 0 < done < total  # picked up at the cancelled step, not from the start
    assert (out / "long.mp4").stat().st_size > 0 and (out / "after.mp4").stat().st_size > 0
    assert rerun_tree.alive() == [] and _server_hosts(home) == []


def test_a_server_that_cannot_start_is_one_line_and_exit_2(two_rows, tmp_path):
    out, home = tmp_path / "out", tmp_path / "home"
    proc = _start(two_rows, out, home, T2VZ_SERVER_START_TIMEOUT_S="0.01")
    tree = Tree(proc)
    while proc.poll() is None:
        tree.sample()
        time.sleep(0.05)
    log = _log(out)
    assert proc.returncode == 2, log
    lines = [line for line in log.splitlines() if line.startswith("t2vz:")]
    assert len(lines) == 1 and "cannot start the local Prefect server: not answering after 0 s" in lines[0], log
    assert "Traceback" not in log and "PREFECT_API_URL" in lines[0]
    assert tree.alive() == [] and _server_hosts(home) == []
    assert not (out / "report.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(3 * RUN_TIMEOUT_S)
def test_four_runs_at_once_separate_and_shared_homes(tiny_models, tmp_path):
    """Prefect's own default failed at three runs at once on 2 cores (20 s start timeout), each with
    its own home. Here three servers start at once too: two homes of their own, one shared by two runs."""
    from t2vz_core.media.synthetic import make_text_file

    manifest = tmp_path / "tiny.csv"
    manifest.write_text(
        "job_id,mode,source,prompt,model,seed,num_inference_steps,resolution,video_length,output\n"
        f"tiny,text2video,,a red ball,{tiny_models / 'sd'},1,2,64,2,mp4\n",
        encoding="utf-8",
    )
    make_text_file(tmp_path / "broken.mp4")
    failing = tmp_path / "failing.csv"
    failing.write_text(
        "job_id,mode,source,prompt,model,seed,num_inference_steps,resolution,output\n"
        f"broken,pix2pix,broken.mp4,snow,{tiny_models / 'pix2pix'},1,1,64,mp4\n",
        encoding="utf-8",
    )
    # The work folder is filled first, in this process: the four runs find every step done, and what
    # is left to them is what this test is about, process and server (a generation would add ~5 s
    # of CPU to each, for nothing this test checks).
    work = tmp_path / "work"
    run_rows_in_process(manifest, work, tmp_path / "direct")
    runs = []
    started = time.monotonic()
    for index in range(2):
        home = tmp_path / f"home-{index}"
        runs.append((home, tmp_path / f"separate-{index}", manifest))
    shared = tmp_path / "home-shared"
    for index in range(2):  # one of these fails its row: a failed run lets go of the server too
        runs.append((shared, tmp_path / f"shared-{index}", failing if index == 1 else manifest))
    procs = [(_start(m, out, home, "--work-dir", str(work)), out, home) for home, out, m in runs]
    trees = [Tree(proc) for proc, _, _ in procs]
    while any(proc.poll() is None for proc, _, _ in procs):
        sample(*trees)
        assert time.monotonic() - started < 2 * RUN_TIMEOUT_S, [_log(out)[-500:] for _, out, _ in procs]
        time.sleep(0.1)
    took = time.monotonic() - started
    print(f"\n4 runs started at once (2 homes + 1 shared home) all ended in {took:.0f} s")
    for (proc, out, _home), tree in zip(procs, trees):
        expected = 1 if out.name == "shared-1" else 0
        assert proc.returncode == expected, _log(out)[-3000:]
        report = json.loads((out / "report.json").read_text())
        assert report["counts"]["ok" if expected == 0 else "failed"] == 1
        if expected == 0:
            assert json.loads((out / "tiny.json").read_text())["steps"]["generate"]["status"] == "cached"
        assert "Traceback" not in _log(out)
        assert tree.alive() == [], (out.name, tree.alive())

    # Each separate home had its own server, the shared home one server for its two runs.
    def servers(trees_of: list[Tree]) -> set:
        return {key for tree in trees_of for key in tree.servers()}

    separate = [servers([tree]) for tree in trees[:2]]
    assert [len(found) for found in separate] == [1, 1], separate
    assert len(set.union(*separate)) == 2, separate
    assert len(servers(trees[2:])) == 1, servers(trees[2:])
    for home in {home for _, _, home in procs}:
        assert _server_hosts(home) == []
        assert not (home / "t2vz-server" / "server.json").exists()
