"""Schedules and scale-out on Prefect: deployments on a work pool, fan-out of a manifest, `serve`.

The layout, the same in prefect.yaml, docker/compose.yaml and tests/test_server.py:

* one work pool, `t2vz`, of type `process`;
* its queue `gpu`: one worker per GPU, each started with `CUDA_VISIBLE_DEVICES=<i>` and
  `--limit 1`, so a worker never runs two jobs on its GPU (the runs inherit the worker's env);
* its queue `dispatch`: a CPU worker for `t2vz-fan-out` runs. A fan-out run only reads the
  manifest and starts one `t2vz-rows/shard` flow run (flows.batch.process_rows) per shard of
  rows with `run_deployment`, so shards spread over the GPU workers and the server sees a
  handful of flow runs, not thousands of mapped tasks (those destabilise a self-hosted server:
  Prefect issue #18883). When all shards are final it rebuilds the manifest's one report;
* the global concurrency limit named by `GPU_LIMIT` (here, and nowhere else) with one slot per
  GPU of the fleet. Each generation holds a slot (tasks.policy.hold_device, which reads the name
  from T2VZ_GPU_LIMIT: `ensure_work_pool` puts it in the pool's default env, `serve` in its own),
  so the fleet never runs more generations than it has GPUs, whoever started the run (a worker,
  `t2vz serve`, the UI); lowering the limit takes GPUs out of service (`prefect work-pool
  pause t2vz` drains the fleet).
  The worker's `--limit 1` is what ties one job to one GPU; the limit is the fleet-wide cap.

Flow code is not shipped with deployments: entrypoints are module paths (`flows.batch.process_rows`)
imported from the installed t2vz package on the worker (the docker image, or this checkout
installed with `pip install -e .`), so no pull step, image push or storage block is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State

from t2vz_core.options import RunOptions
from t2vz_core.stop import stop_reason, stop_requested
from t2vz_core.stop import wait as stop_wait

GPU_LIMIT = "t2vz-gpu"
GPU_LIMIT_ENV = "T2VZ_GPU_LIMIT"  # how flow-run processes learn the name (tasks.config.RunConfig)
WORK_POOL = "t2vz"
GPU_QUEUE = "gpu"
DISPATCH_QUEUE = "dispatch"
SHARD_DEPLOYMENT = "t2vz-rows/shard"  # "<flow name>/<deployment name>", as run_deployment wants it
FAN_OUT_DEPLOYMENT = "t2vz-fan-out/nightly"
DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00
PREFECT_FILE = Path(__file__).resolve().parent.parent / "prefect.yaml"
# The only keys register_deployments reads from a prefect.yaml deployment; anything else would be
# silently dropped, so it is an error instead.
_DEPLOYMENT_KEYS = frozenset(
    {
        "name",
        "entrypoint",
        "description",
        "tags",
        "parameters",
        "schedules",
        "work_pool",
        "concurrency_limit",
        "version",
        "enforce_parameter_schema",
    }
)
_SCHEDULE_KEYS = frozenset({"cron", "timezone", "active", "day_or", "parameters"})


# ------------------------------------------------------------------ fan-out


def shard_job_ids(job_ids: Sequence[str], shard_size: int) -> list[list[str]]:
    """Consecutive shards of at most `shard_size` job ids (manifest order kept)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [list(job_ids[i : i + shard_size]) for i in range(0, len(job_ids), shard_size)]


@flow(name="t2vz-fan-out")
def fan_out(
    manifest_path: str,
    output_dir: str,
    shard_size: int = 1,
    options: RunOptions | None = None,
    deployment: str = SHARD_DEPLOYMENT,
    poll_seconds: float = 2.0,
) -> State:
    """Start one `deployment` flow run per shard of the valid rows that are not up to date (all of
    them with `force`), wait for all, write the report.

    Like `process_manifest`, ends Failed when a row failed, is invalid, or has no result (its
    shard crashed); the report lists every manifest row either way. Up-to-date rows are judged
    here with this run's device and dtype (t2vz_core.freshness): with device "auto", run the
    fan-out where the shards run (a GPU worker) or a row signed on another device is sent to a
    shard, which finds it up to date itself.
    """
    from prefect.deployments import run_deployment

    from t2vz_core import freshness
    from t2vz_core.manifest import read_manifest
    from t2vz_core.report import write_manifest_report
    from t2vz_core.workdir import WorkDir

    logger = get_run_logger()
    options = options or RunOptions()
    manifest = read_manifest(manifest_path, allowed_roots=options.allowed_roots)
    current = {}
    if not options.force:
        out = Path(output_dir).absolute()
        work = WorkDir(options.resolved_work_dir(out))
        checks = freshness.check_rows(manifest.jobs, out, options.runtime(), work)
        current = freshness.current_sidecars(checks)
    shards = shard_job_ids([job.job_id for job in manifest.jobs if job.job_id not in current], shard_size)
    stem = Path(manifest_path).stem
    parent = current_flow_run.get_id() or "adhoc"
    logger.info(
        "%s: %d valid row(s) (%d up to date), %d invalid; %d shard(s) of <= %d row(s) on %s",
        manifest_path,
        len(manifest.jobs),
        len(current),
        len(manifest.errors_by_row()),
        len(shards),
        shard_size,
        deployment,
    )
    started = [
        run_deployment(
            deployment,
            parameters={
                "manifest_path": str(manifest_path),
                "output_dir": str(output_dir),
                "job_ids": job_ids,
                "options": options.model_dump(mode="json"),
            },
            flow_run_name=f"{stem}-shard-{index}of{len(shards)}",
            timeout=0,  # start them all now, wait below
            # A retry of this fan-out run finds the shard runs it already started.
            idempotency_key=f"{parent}:{index}:{hashlib.sha256(','.join(job_ids).encode()).hexdigest()[:16]}",
        )
        for index, job_ids in enumerate(shards, start=1)
    ]
    from flows import signals

    with signals.flow_stops(current_flow_run.get_id()):  # a cancelled fan-out cancels its shards
        finished = wait_for_flow_runs([run.id for run in started], poll_seconds)
    shard_rows = [
        {"shard": index, "flow_run": run.name, "state": run.state_name, "rows": ", ".join(job_ids)}
        for index, (run, job_ids) in enumerate(zip(finished, shards), start=1)
    ]
    rep = write_manifest_report(
        manifest_path, output_dir, allowed_roots=options.allowed_roots, current=current, flow_run_id=str(parent)
    )
    publish_fan_out_artifacts(rep, shard_rows, manifest_path)
    counts = rep["counts"]
    summary = (
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['invalid']} invalid, "
        f"{counts['missing']} missing, of {counts['total']} rows in {len(shards)} shard(s)"
    )
    logger.info("%s; report: %s", summary, Path(output_dir) / "report.csv")
    if stop_requested():
        return signals.cancelled_state(rep)
    if counts["ok"] != counts["total"]:
        return Failed(message=summary, data=rep)
    return Completed(message=summary, data=rep)


def wait_for_flow_runs(run_ids: Sequence, poll_seconds: float = 2.0) -> list:
    """Poll the API until every flow run is in a final state; returns them in the given order.

    Polls one run at a time (the oldest unfinished one), so waiting on many shards costs about
    one request per poll interval, not one per shard. Once this process is asked to stop
    (t2vz_core.stop: the fan-out was cancelled or signalled), the unfinished runs are cancelled
    (cancel_flow_runs) and waited for: their rows stop at a step boundary and are reported."""
    from prefect.client.orchestration import get_client

    pending = list(run_ids)
    final: dict = {}
    cancelled = False
    with get_client(sync_client=True) as client:
        while pending:
            if stop_requested() and not cancelled:
                cancelled = True
                cancel_flow_runs(client, pending, f"the fan-out was stopped ({stop_reason()})")
            run = client.read_flow_run(pending[0])
            if run.state is not None and run.state.is_final():
                final[pending.pop(0)] = run
            elif cancelled:
                time.sleep(poll_seconds)
            else:
                stop_wait(poll_seconds)  # a stop request ends the sleep: the shards are cancelled at once
    return [final[run_id] for run_id in run_ids]


def cancel_flow_runs(client, run_ids: Sequence, message: str) -> None:
    """Cancel flow runs as the UI does: a run that has not started is Cancelled outright, a running
    one is set Cancelling (its worker then SIGTERMs its process, which stops cooperatively)."""
    from prefect.states import Cancelled, Cancelling

    for run_id in run_ids:
        state = client.read_flow_run(run_id).state
        if state is None or state.is_final():
            continue
        new = Cancelled(message=message) if state.is_scheduled() or state.is_pending() else Cancelling(message=message)
        client.set_flow_run_state(run_id, new, force=True)


def publish_fan_out_artifacts(rep: dict, shard_rows: list[dict], manifest_path: str | os.PathLike) -> None:
    """The whole manifest's row table (same key as a shard's, so its latest version is complete),
    the shard table, and a markdown summary."""
    from flows.batch import artifact_key, mode_status_markdown, report_table

    create_table_artifact(
        report_table(rep["rows"]),
        key=artifact_key("t2vz-report", manifest_path),
        description=f"t2vz rows of {manifest_path}",
    )
    create_table_artifact(
        shard_rows, key=artifact_key("t2vz-shards", manifest_path), description="t2vz shard flow runs"
    )
    counts = rep["counts"]
    lines = [
        f"# t2vz fan-out: {Path(manifest_path).name}",
        "",
        f"**{counts['ok']} ok**, {counts['failed']} failed, {counts['invalid']} invalid, "
        f"{counts['missing']} missing, of {counts['total']} rows. "
        f"Report: `{Path(rep['output_dir']) / 'report.csv'}`; gallery: "
        f"[report.html]({(Path(rep['output_dir']) / 'report.html').absolute().as_uri()})",
        "",
        mode_status_markdown(rep["rows"]),
        "## Shards",
        "",
        "| shard | flow run | state | rows |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['shard']} | {r['flow_run']} | {r['state']} | {r['rows']} |" for r in shard_rows]
    create_markdown_artifact(
        "\n".join(lines) + "\n", key=artifact_key("t2vz-fan-out", manifest_path), description="t2vz fan-out summary"
    )


# ------------------------------------------------------------------ server-side setup


def ensure_work_pool(pool: str = WORK_POOL, queues: Sequence[str] = (GPU_QUEUE, DISPATCH_QUEUE)) -> None:
    """Create the process work pool and its queues when missing (idempotent), and make
    T2VZ_GPU_LIMIT=GPU_LIMIT part of the env every flow run of the pool starts with."""
    import copy

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        template = copy.deepcopy(
            (existing and existing.base_job_template) or ProcessWorker.get_default_base_job_template()
        )
        env = template["variables"]["properties"]["env"]
        if (env.get("default") or {}).get(GPU_LIMIT_ENV) != GPU_LIMIT:
            env["default"] = {**(env.get("default") or {}), GPU_LIMIT_ENV: GPU_LIMIT}
            if existing is None:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            else:
                client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
        for queue in queues:
            try:
                client.create_work_queue(name=queue, work_pool_name=pool)
            except ObjectAlreadyExists:
                pass


def ensure_gpu_limit(gpus: int) -> None:
    """Create or resize the global concurrency limit: one slot per GPU of the fleet."""
    from prefect.client.orchestration import get_client

    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, gpus)


def load_deployment_specs(prefect_file: str | os.PathLike = PREFECT_FILE) -> list[dict]:
    """The `deployments:` of a prefect.yaml, `{{ $ENV_VAR }}` placeholders filled from the environment."""
    from prefect.utilities.templating import apply_values

    config = yaml.safe_load(Path(prefect_file).read_text(encoding="utf-8")) or {}
    specs = apply_values(config.get("deployments") or [], dict(os.environ), remove_notset=False)
    for spec in specs:
        unknown = set(spec) - _DEPLOYMENT_KEYS
        for schedule in spec.get("schedules") or []:
            unknown |= {f"schedules.{k}" for k in set(schedule) - _SCHEDULE_KEYS}
        if unknown:
            raise ValueError(
                f"{prefect_file}: deployment {spec.get('name')!r}: unsupported keys "
                f"{sorted(unknown)} (use `prefect deploy` for those)"
            )
        if ":" in spec["entrypoint"]:
            raise ValueError(
                f"{prefect_file}: deployment {spec['name']!r}: use a module-path "
                f"entrypoint (flows.batch.process_rows), not {spec['entrypoint']!r}"
            )
    return specs


def register_deployments(prefect_file: str | os.PathLike = PREFECT_FILE, pool: str | None = None) -> dict[str, str]:
    """Apply prefect.yaml's deployments to the server; returns {"flow/deployment": id}.

    Does what `prefect deploy --all` does for this file, through `RunnerDeployment.apply`, so the
    result is the same whichever way it was deployed. `pool` overrides every work pool name.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    ids: dict[str, str] = {}
    for spec in load_deployment_specs(prefect_file):
        flow_obj = load_flow_from_entrypoint(spec["entrypoint"])
        schedules = [
            Cron(
                item["cron"],
                timezone=item.get("timezone"),
                day_or=item.get("day_or", True),
                active=item.get("active", True),
                parameters=item.get("parameters") or {},
            )
            for item in spec.get("schedules") or []
        ]
        work_pool = spec.get("work_pool") or {}
        deployment = flow_obj.to_deployment(
            name=spec["name"],
            schedules=schedules or None,
            parameters=spec.get("parameters") or {},
            description=spec.get("description"),
            tags=spec.get("tags"),
            version=spec.get("version"),
            concurrency_limit=spec.get("concurrency_limit"),
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
            work_pool_name=pool or work_pool.get("name"),
            work_queue_name=work_pool.get("work_queue_name"),
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        ids[f"{flow_obj.name}/{spec['name']}"] = str(deployment.apply())
    return ids


def setup(gpus: int, pool: str = WORK_POOL, prefect_file: str | os.PathLike = PREFECT_FILE) -> dict[str, str]:
    """Everything the server needs before workers start: pool, queues, GPU limit, deployments."""
    ensure_work_pool(pool)
    ensure_gpu_limit(gpus)
    return register_deployments(prefect_file, pool=pool)


# ------------------------------------------------------------------ one box: t2vz serve


def manifests_in(manifest_dir_or_path: str | os.PathLike) -> list[Path]:
    """A manifest file, or every *.csv directly inside a folder (sorted)."""
    path = Path(manifest_dir_or_path)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.csv") if p.is_file())
        if not found:
            raise FileNotFoundError(f"{path}: no *.csv manifest in this folder")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest file or folder")
    return [path]


def serve_deployments(
    manifest_dir_or_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    cron: str | None = DEFAULT_CRON,
    timezone: str | None = None,
    options: RunOptions | None = None,
) -> list:
    """One `t2vz-manifest/<manifest stem>` deployment per manifest on `cron`; outputs go to
    OUTPUT_DIR/<stem> (default: `out/<stem>` beside the manifest)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.batch import process_manifest

    deployments = []
    for manifest in manifests_in(manifest_dir_or_path):
        out = Path(output_dir) / manifest.stem if output_dir else manifest.parent / "out" / manifest.stem
        deployments.append(
            process_manifest.to_deployment(
                name=manifest.stem,
                schedules=[Cron(cron, timezone=timezone)] if cron else None,
                parameters={
                    "manifest_path": str(manifest.resolve()),
                    "output_dir": str(out.resolve()),
                    "options": (options or RunOptions()).model_dump(mode="json"),
                },
                description=f"t2vz serve: {manifest.resolve()}",
                tags=["t2vz", "serve"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def serve(
    manifest_dir_or_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    cron: str | None = DEFAULT_CRON,
    timezone: str | None = None,
    options: RunOptions | None = None,
    gpus: int = 1,
) -> None:
    """Serve the manifest(s) on this box on a schedule until interrupted (Ctrl-C): `t2vz serve`.

    Needs a running Prefect server (PREFECT_API_URL). Runs execute as subprocesses of this
    process, at most `gpus` at once, each generation holding a `t2vz-gpu` slot. Each manifest can
    also be run on demand: `prefect deployment run 't2vz-manifest/<stem>'` or the UI's Run button.
    """
    from prefect import serve as prefect_serve
    from prefect.settings import get_current_settings

    from t2vz_core.errors import InputError

    if not get_current_settings().api.url:
        # Without it Prefect would serve against a throwaway temporary server: no UI, no history.
        raise InputError(
            "t2vz serve needs a running Prefect server: start one with "
            "`prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    deployments = serve_deployments(manifest_dir_or_path, output_dir, cron=cron, timezone=timezone, options=options)
    ensure_gpu_limit(gpus)
    os.environ[GPU_LIMIT_ENV] = GPU_LIMIT  # this process is the runner: its runs inherit its env
    prefect_serve(*deployments, limit=gpus)


# ------------------------------------------------------------------ python -m flows.deploy setup


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.deploy", description="Set up the t2vz work pool, GPU limit and deployments."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="create pool + queues, size the t2vz-gpu limit, apply prefect.yaml")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the whole fleet (slots of t2vz-gpu)")
    p.add_argument("--pool", default=WORK_POOL)
    p.add_argument("--prefect-file", default=str(PREFECT_FILE))
    args = parser.parse_args(argv)
    for name, deployment_id in setup(args.gpus, pool=args.pool, prefect_file=args.prefect_file).items():
        print(f"{name}\t{deployment_id}")
    print(f"global concurrency limit {GPU_LIMIT!r}: {args.gpus} slot(s); work pool {args.pool!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
