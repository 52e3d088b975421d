"""End to end against a real `prefect server start` on 127.0.0.1 (issue 5, items 7 and 10).

One server (its own PREFECT_HOME, embedded SQLite), `python -m flows.deploy setup` (work pool,
queues, the t2vz-gpu limit, prefect.yaml's deployments), two GPU-queue workers and one dispatch
worker as real `prefect worker start` processes. A manifest is fanned out twice through the
nightly deployment: the shards go to the GPU-queue workers (one shard each at a time), every row
reaches the report, states are as expected, the second run dispatches only the failed row (the good
one is up to date), artifacts and GCL use are visible through the API.

Every API read goes through Prefect's own client (SyncPrefectClient bound to this server's URL) and
its filters; only the UI page is fetched with plain HTTP.
Budget: ~70-80 s on an idle 2-core machine (server ~10 s, two fan-out runs, one served run; about
110 s of CPU in all, most of it flow-run processes importing torch/diffusers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.events.schemas.events import ReceivedEvent

from flows import deploy

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

START_TIMEOUT_S = 60
RUN_TIMEOUT_S = 150
GPU_WORKERS = ("gpu-0", "gpu-1")


# ------------------------------------------------------------------ processes and the API


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group we created (the process and its flow-run children), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
    except ProcessLookupError:
        pass
    proc.wait(5)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Stack:
    url: str  # http://127.0.0.1:PORT
    env: dict  # environment for clients and workers of this server
    logs: Path
    client: SyncPrefectClient | None = None  # Prefect's own client, bound to this server's API only
    procs: dict = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.logs,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def run_deployment(self, name: str, parameters: dict) -> UUID:
        deployment = self.client.read_deployment_by_name(name)
        return self.client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id

    def wait_final(self, run_id: UUID, timeout_s: float = RUN_TIMEOUT_S) -> FlowRun:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{_tail(self.logs / f'{name}.log')}"
            time.sleep(0.5)
        raise AssertionError(
            f"flow run {run_id} not final after {timeout_s} s: {run.state}\n"
            + "\n".join(f"--- {n}\n{_tail(self.logs / f'{n}.log', 1500)}" for n in self.procs)
        )

    def children(self, parent_id: UUID) -> list[FlowRun]:
        return self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )

    def events(
        self, name: str, since: datetime, until=lambda events: bool(events), timeout_s: float = 15
    ) -> list[ReceivedEvent]:
        """Events named `name` since `since`; polls because events reach the database asynchronously."""
        deadline = time.monotonic() + timeout_s
        while True:
            events = self.client.read_events(
                EventFilter(event=EventNameFilter(name=[name]), occurred=EventOccurredFilter(since=since)), limit=50
            ).events
            if until(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.25)

    def workers_of(self, run_ids: list[UUID], since: datetime) -> dict[UUID, str]:
        """{flow run id: name of the worker that submitted it}, from `prefect.worker.submitted-flow-run`
        events (a worker that lost the race for a run logs "submitting" too, but emits no event)."""

        def mapping(events: list[ReceivedEvent]) -> dict[UUID, str]:
            return {
                UUID(r.id.removeprefix("prefect.flow-run.")): e.resource.name
                for e in events
                for r in e.related
                if r.role == "flow-run"
            }

        events = self.events(
            "prefect.worker.submitted-flow-run", since, until=lambda events: set(run_ids) <= set(mapping(events))
        )
        found = mapping(events)
        assert set(run_ids) <= set(found), f"no submitted-flow-run event for {set(run_ids) - set(found)}"
        return {run_id: found[run_id] for run_id in run_ids}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    """A real Prefect server, the t2vz pool/limit/deployments, two GPU workers and a dispatcher."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    server_env = {
        **base,
        "PREFECT_HOME": str(root / "server-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Services these tests do not use, off to spare the 2 CI cores (the scheduler too:
        # a test run at 02:00 UTC must not start the real nightly run).
        **{
            f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
            for name in (
                "SCHEDULER",
                "TRIGGERS",
                "LATE_RUNS",
                "PAUSE_EXPIRATIONS",
                "FOREMAN",
                "REPOSSESSOR",
                "CLEANUP_RECONCILER",
                "CANCELLATION_CLEANUP",
            )
        },
    }
    client_env = {
        **base,
        "PREFECT_HOME": str(root / "client-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    # Its database starts as the migrated template t2vz's local server uses (flows/server_db.py):
    # migrating a new SQLite file is most of a server's start.
    from prefect import __version__ as prefect_version

    from flows import server_db

    assert server_db.seed(f"sqlite+aiosqlite:///{root / 'server-home' / 'prefect.db'}", prefect_version) is not None
    s = Stack(url=f"http://127.0.0.1:{port}", env=client_env, logs=root)
    s.start("server", "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), env=server_env)
    # The client gets this server's URL directly, not through PREFECT_API_URL: the same test
    # process may also hold the prefect_api fixture (other modules), whose settings stay as they are.
    with SyncPrefectClient(s.api) as client:
        s.client = client
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while client.api_healthcheck() is not None:
                assert s.procs["server"].poll() is None, f"server exited:\n{_tail(root / 'server.log')}"
                assert time.monotonic() < deadline, (
                    f"server not healthy in {START_TIMEOUT_S} s:\n{_tail(root / 'server.log')}"
                )
                time.sleep(0.25)
            setup = subprocess.run(
                [sys.executable, "-m", "flows.deploy", "setup", "--gpus", "2"],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=root,
            )
            assert setup.returncode == 0, setup.stdout + setup.stderr
            for name in GPU_WORKERS:
                s.start(
                    name,
                    "-m",
                    "prefect",
                    "worker",
                    "start",
                    "--pool",
                    deploy.WORK_POOL,
                    "--work-queue",
                    deploy.GPU_QUEUE,
                    "--limit",
                    "1",
                    "--name",
                    name,
                )
            s.start(
                "dispatch",
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                deploy.WORK_POOL,
                "--work-queue",
                deploy.DISPATCH_QUEUE,
                "--name",
                "dispatch",
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                workers = client.read_workers_for_work_pool(deploy.WORK_POOL)
                if {w.name for w in workers if w.status == WorkerStatus.ONLINE} >= {*GPU_WORKERS, "dispatch"}:
                    break
                for name, proc in s.procs.items():
                    assert proc.poll() is None, f"{name} exited:\n{_tail(root / f'{name}.log')}"
                assert time.monotonic() < deadline, f"workers not online: {workers}"
                time.sleep(0.25)
            yield s
        finally:
            for proc in s.procs.values():  # all asked to stop at once, then each waited for
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for name in reversed(list(s.procs)):
                _stop(s.procs[name])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, tiny_models) -> Path:
    """One good row, one row whose source is not a video (fails at decode), one invalid row."""
    folder = tmp_path_factory.mktemp("fan-out")
    (folder / "broken.mp4").write_bytes(b"this is not a video")
    path = folder / "nightly.csv"
    path.write_text(
        "job_id,mode,source,prompt,model,seed,num_inference_steps,resolution,video_length,output\n"
        f"good,text2video,,a red ball,{tiny_models / 'sd'},1,3,64,4,mp4\n"
        f"broken,pix2pix,broken.mp4,make it snow,{tiny_models / 'pix2pix'},2,3,64,,mp4\n"
        "invalid,no-such-mode,,a prompt,,,,,,\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    """The fan-out's work folder (a parameter it passes on to every shard)."""
    return tmp_path_factory.mktemp("work")


def _table(artifact) -> list[dict]:
    """A table artifact's rows (the server stores the table as JSON text)."""
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def _latest(stack: Stack, key: str):
    found = stack.client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
    )
    assert len(found) == 1, (key, found)
    return found[0]


# ------------------------------------------------------------------ tests


def test_server_serves_api_and_ui(stack):
    client = stack.client
    assert client.api_healthcheck() is None
    ui = httpx.get(stack.url + "/", timeout=10)  # the UI is HTML, not API: plain HTTP
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    limit = client.read_global_concurrency_limit_by_name(deploy.GPU_LIMIT)
    assert limit.limit == 2 and limit.active
    pool = client.read_work_pool(deploy.WORK_POOL)
    assert pool.type == "process"
    assert pool.base_job_template["variables"]["properties"]["env"]["default"] == {
        deploy.GPU_LIMIT_ENV: deploy.GPU_LIMIT
    }
    nightly = client.read_deployment_by_name(deploy.FAN_OUT_DEPLOYMENT)
    assert [s.schedule.cron for s in nightly.schedules] == [deploy.DEFAULT_CRON]
    assert nightly.work_queue_name == deploy.DISPATCH_QUEUE and nightly.entrypoint == "flows.deploy.fan_out"
    shard = client.read_deployment_by_name(deploy.SHARD_DEPLOYMENT)
    assert shard.work_queue_name == deploy.GPU_QUEUE and shard.entrypoint == "flows.batch.process_rows"


def test_prefect_deploy_applies_the_same_prefect_yaml(stack):
    """The stock path, `prefect deploy --all`, gives the deployments `flows.deploy setup` gave."""
    before = {
        name: stack.client.read_deployment_by_name(name)
        for name in (deploy.FAN_OUT_DEPLOYMENT, deploy.SHARD_DEPLOYMENT)
    }
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        env=stack.env,
        cwd=deploy.PREFECT_FILE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name, old in before.items():
        new = stack.client.read_deployment_by_name(name)
        assert new.id == old.id, name  # updated in place, not a second deployment
        for key in ("entrypoint", "work_pool_name", "work_queue_name", "parameters", "pull_steps"):
            assert getattr(new, key) == getattr(old, key), (name, key)
        assert [s.schedule for s in new.schedules] == [s.schedule for s in old.schedules]


def every_option(work_dir: Path, allowed_root: Path) -> dict:
    """A value for every RunOptions field, none of them the default where a CPU allows it (offload
    needs an accelerator), as JSON: what a run started anywhere must record in its sidecars."""
    from t2vz_core.options import RunOptions

    options = {
        "device": "cpu",
        "dtype": "fp32",
        "offload": "none",
        "allow_pickle": True,
        "vae_slicing": True,
        "vae_tiling": True,
        "force": True,
        "allowed_roots": [str(allowed_root)],
        "work_dir": str(work_dir),
        "max_workers": 1,
        # fast paths (compile stays off: inductor would compile for minutes on a CPU)
        "compile": False,
        "channels_last": True,
        "tf32": False,
        "attention_backend": "math",
    }
    assert set(options) == set(RunOptions.model_fields), "a new run option: give it a value here"
    return options


def _fan_out(
    stack: Stack, manifest: Path, output_dir: Path, work_dir: Path, options: dict | None = None
) -> tuple[FlowRun, list[FlowRun]]:
    run_id = stack.run_deployment(
        deploy.FAN_OUT_DEPLOYMENT,
        {
            "manifest_path": str(manifest),
            "output_dir": str(output_dir),
            "shard_size": 1,
            "options": options or {"device": "cpu", "work_dir": str(work_dir)},
            "poll_seconds": 0.5,
        },
    )
    parent = stack.wait_final(run_id)
    shards = sorted(stack.children(run_id), key=lambda r: r.name)
    return parent, shards


def test_fan_out_over_two_workers_then_all_up_to_date(stack, manifest, work_dir, tmp_path):
    client = stack.client
    output_dir = tmp_path / "out"
    since = datetime.now(UTC)
    t0 = time.monotonic()
    # Every run option travels whole from the fan-out to its shards and into their sidecars.
    options = every_option(work_dir, manifest.parent)
    parent, shards = _fan_out(stack, manifest, output_dir, work_dir, options)
    first_s = time.monotonic() - t0
    assert json.loads((output_dir / "good.json").read_text())["options"] == options

    # The fan-out ran on the dispatch worker and ended Failed: one row failed, one is invalid.
    assert parent.state.type == StateType.FAILED, parent.state
    assert "1 ok, 1 failed, 1 invalid" in parent.state.message
    workers = stack.workers_of([parent.id, *[s.id for s in shards]], since)
    assert workers.pop(parent.id) == "dispatch"
    # One shard flow run per valid row, Completed for the good row and Failed for the broken one,
    # run by the GPU-queue workers only.
    assert [s.name for s in shards] == ["nightly-shard-1of2", "nightly-shard-2of2"]
    by_rows = {tuple(s.parameters["job_ids"]): s for s in shards}
    assert by_rows[("good",)].state.type == StateType.COMPLETED
    assert by_rows[("broken",)].state.type == StateType.FAILED
    assert all(s.work_queue_name == deploy.GPU_QUEUE and s.infrastructure_pid for s in shards)
    assert set(workers.values()) <= set(GPU_WORKERS), workers
    # Each GPU worker takes one shard at a time (--limit 1): shards that ran at the same time ran on
    # both workers. Which worker gets which shard is a race: the broken row's shard ends within
    # seconds, and its worker may then take the other shard before the idle one polls.
    first, second = sorted(shards, key=lambda s: s.start_time)
    if second.start_time < first.end_time:
        assert workers[first.id] != workers[second.id], (workers, [(s.start_time, s.end_time) for s in shards])
    # The same states through the client's state filter.
    completed = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
        )
    )
    assert [r.id for r in completed] == [by_rows[("good",)].id]

    # Every manifest row is in the report the fan-out rebuilt.
    report = json.loads((output_dir / "report.json").read_text())
    status = {row["job_id"]: row["status"] for row in report["rows"]}
    assert status == {"good": "ok", "broken": "failed", "invalid": "invalid"}
    errors = {row["job_id"]: row["error"] for row in report["rows"]}
    assert "decode" in errors["broken"] and "broken.mp4" in errors["broken"]
    assert (output_dir / "good.mp4").stat().st_size > 0

    # Artifacts, through the client: each shard's progress, table and summary; the fan-out's
    # complete row table (latest version of the shared key) and shard table.
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id, *[s.id for s in shards]]))
    )
    kinds = Counter((a.flow_run_id, a.type) for a in artifacts)
    for shard in shards:
        assert {kind for run, kind in kinds if run == shard.id} >= {"progress", "table", "markdown"}, kinds
    progress = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[by_rows[("good",)].id]),
            type=ArtifactFilterType(any_=["progress"]),
        )
    )
    assert progress and all(float(a.data) == 100.0 for a in progress)
    latest = _latest(stack, "t2vz-report-nightly")
    assert latest.flow_run_id == parent.id and latest.type == "table"
    assert sorted(row["job_id"] for row in _table(latest)) == ["broken", "good", "invalid"]
    shard_table = _table(_latest(stack, "t2vz-shards-nightly"))
    assert [r["state"] for r in shard_table] == ["Completed", "Failed"]

    # The good row's generation held a slot of the t2vz-gpu limit, and released it.
    good_run = f"prefect.flow-run.{by_rows[('good',)].id}"

    def holders(events: list[ReceivedEvent]) -> set[str]:
        return {r.id for e in events if e.resource.name == deploy.GPU_LIMIT for r in e.related if r.role == "flow-run"}

    acquired = stack.events("prefect.concurrency-limit.acquired", since, until=lambda e: good_run in holders(e))
    assert good_run in holders(acquired)
    assert client.read_global_concurrency_limit_by_name(deploy.GPU_LIMIT).active_slots == 0

    # Second run of the unchanged manifest: the good row is up to date, so only the failed row
    # gets a shard (tried again); the report says which rows were not run.
    t1 = time.monotonic()
    parent2, shards2 = _fan_out(stack, manifest, output_dir, work_dir, {**options, "force": False})
    second_s = time.monotonic() - t1
    assert parent2.state.type == StateType.FAILED and "1 ok, 1 failed, 1 invalid" in parent2.state.message
    assert [s.parameters["job_ids"] for s in shards2] == [["broken"]]
    report2 = json.loads((output_dir / "report.json").read_text())
    good_line = next(row for row in report2["rows"] if row["job_id"] == "good")
    assert (good_line["status"], good_line["generate"], good_line.get("up_to_date")) == ("ok", "up to date", True)
    print(f"\nfan-out over 2 workers: first run {first_s:.1f} s, re-run {second_s:.1f} s")


def test_serve_runs_a_manifest_on_its_schedule_deployment(stack, manifest, tmp_path):
    """`t2vz serve` (flows.deploy.serve) registers one cron deployment per manifest and runs it,
    its generation holding a t2vz-gpu slot."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "daily.csv").write_text("\n".join(manifest.read_text().splitlines()[:2]) + "\n", encoding="utf-8")
    out = tmp_path / "served"
    since = datetime.now(UTC)
    served_work = tmp_path / "served-work"  # its own work folder: it generates
    options = every_option(served_work, manifest.parent)
    proc = stack.start(
        "serve",
        "-m",
        "flows.cli",
        "serve",
        str(folder),
        "--output-dir",
        str(out),
        "--cron",
        "30 3 * * *",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--offload",
        "none",
        "--allow-pickle",
        "--vae-slicing",
        "--vae-tiling",
        "--force",
        "--allowed-root",
        str(manifest.parent),
        "--work-dir",
        str(served_work),
        "--max-workers",
        "1",
        "--channels-last",
        "--no-tf32",
        "--attention-backend",
        "math",
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, _tail(stack.logs / "serve.log")
            found = stack.client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["daily"]))
            )
            if found:
                break
            assert time.monotonic() < deadline, _tail(stack.logs / "serve.log")
            time.sleep(0.25)
        assert [s.schedule.cron for s in found[0].schedules] == ["30 3 * * *"]
        assert found[0].parameters["output_dir"] == str(out / "daily")
        run = stack.wait_final(stack.run_deployment("t2vz-manifest/daily", {}))
        assert run.state.type == StateType.COMPLETED, run.state
        report = json.loads((out / "daily" / "report.json").read_text())
        assert [(r["job_id"], r["status"]) for r in report["rows"]] == [("good", "ok")]
        assert json.loads((out / "daily" / "good.json").read_text())["options"] == options
        # The serve process put T2VZ_GPU_LIMIT in its runs' environment: the slot was taken.
        run_resource = f"prefect.flow-run.{run.id}"

        def holders(events: list[ReceivedEvent]) -> set[str]:
            return {r.id for e in events if e.resource.name == deploy.GPU_LIMIT for r in e.related}

        acquired = stack.events("prefect.concurrency-limit.acquired", since, until=lambda e: run_resource in holders(e))
        assert run_resource in holders(acquired)
    finally:
        _stop(stack.procs.pop("serve"))


# ------------------------------------------------------------------ cancellation (issue 16, item 4)


@pytest.fixture(scope="module")
def long_manifest(tmp_path_factory, tiny_models) -> Path:
    """One canny row long enough to be cancelled mid-generation."""
    from t2vz_core.media.synthetic import make_video

    folder = tmp_path_factory.mktemp("cancel")
    make_video(folder / "clip.mp4", frames=8, size=(64, 64))
    path = folder / "long.csv"
    path.write_text(
        "job_id,mode,source,prompt,model,controlnet,seed,num_inference_steps,resolution,output\n"
        f"long,canny,clip.mp4,a red ball,{tiny_models / 'sd'},{tiny_models / 'controlnet-canny'},"
        "1,200,64,mp4\n",
        encoding="utf-8",
    )
    return path


def _wait_checkpoint(stack: Stack, work: Path, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not list(work.glob("**/checkpoint")):
        if proc is not None:
            assert proc.poll() is None, _tail(log)
        for name, p in stack.procs.items():
            assert p.poll() is None, f"{name} exited:\n{_tail(stack.logs / f'{name}.log')}"
        assert time.monotonic() < deadline, "no generation started:\n" + "\n".join(
            f"--- {n}\n{_tail(stack.logs / f'{n}.log', 1500)}" for n in stack.procs
        )
        time.sleep(0.1)


def _cancel(stack: Stack, run_id: UUID) -> None:
    """What the UI's Cancel button and `prefect flow-run cancel` do."""
    from prefect.client.schemas.objects import StateType as Type
    from prefect.states import State

    result = stack.client.set_flow_run_state(run_id, State(type=Type.CANCELLING))
    assert result.status.value == "ACCEPT", result


def test_cancelling_a_fan_out_cancels_its_running_shard(stack, long_manifest, tmp_path):
    """The dispatch worker SIGTERMs the fan-out, which sets its shard Cancelling; the GPU worker
    SIGTERMs the shard's process, whose row stops at a step boundary and is reported cancelled."""
    out, work = tmp_path / "out", tmp_path / "work"
    run_id = stack.run_deployment(
        deploy.FAN_OUT_DEPLOYMENT,
        {
            "manifest_path": str(long_manifest),
            "output_dir": str(out),
            "shard_size": 1,
            "options": {"device": "cpu", "work_dir": str(work)},
            "poll_seconds": 0.5,
        },
    )
    _wait_checkpoint(stack, work)
    (shard,) = stack.children(run_id)
    assert shard.state.type == StateType.RUNNING and shard.infrastructure_pid
    started = time.monotonic()
    _cancel(stack, run_id)
    shard = stack.wait_final(shard.id, timeout_s=60)
    shard_s = time.monotonic() - started
    parent = stack.wait_final(run_id, timeout_s=60)
    print(
        f"\nfan-out cancelled: its shard final after {shard_s:.1f} s, the fan-out after "
        f"{time.monotonic() - started:.1f} s"
    )
    assert shard.state.type == StateType.CANCELLED, shard.state
    assert parent.state.type == StateType.CANCELLED, parent.state
    sidecar = json.loads((out / "long.json").read_text())
    assert sidecar["status"] == "cancelled" and sidecar["failed_step"] == "generate", sidecar["error"]
    assert "at frames step" in sidecar["error"]
    report = json.loads((out / "report.json").read_text())
    assert [(r["job_id"], r["status"]) for r in report["rows"]] == [("long", "cancelled")]
    assert not (out / "long.mp4").exists()
    # The shard's process ends by itself, before the worker's SIGKILL (30 s after its SIGTERM).
    pid, final_at = int(shard.infrastructure_pid), time.monotonic()
    while _pid_alive(pid) and time.monotonic() - started < 28:
        time.sleep(0.1)
    print(f"shard process gone {time.monotonic() - final_at:.1f} s after its run was final")
    assert not _pid_alive(pid)
    assert list(work.glob("**/checkpoint"))  # kept: a re-run resumes from it


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancelling_a_t2vz_run_through_the_api(stack, long_manifest, tmp_path):
    """`t2vz run` against the server runs its flow in its own process (no worker to kill it): it
    watches its flow run and stops once it is Cancelling. Exit code 1, the run Cancelled."""
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", str(long_manifest), "-o", str(out), "--device", "cpu"],
            env=stack.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:
        _wait_checkpoint(stack, out / ".t2vz-work", proc, log)
        (run,) = [
            r
            for r in stack.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
                )
            )
            if r.parameters.get("output_dir") == str(out)
        ]
        started = time.monotonic()
        _cancel(stack, run.id)
        code = proc.wait(60)
        took = time.monotonic() - started
    finally:
        _stop(proc)
    print(f"\nt2vz run cancelled through the API: exit {code} after {took:.1f} s")
    assert code == 1, _tail(log)
    assert "1 cancelled" in _tail(log) and "Traceback" not in log.read_text()
    assert stack.client.read_flow_run(run.id).state.type == StateType.CANCELLED
    sidecar = json.loads((out / "long.json").read_text())
    assert sidecar["status"] == "cancelled" and "cancelled in Prefect" in sidecar["error"]
