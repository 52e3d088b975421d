"""Every t2vz benchmark in one run: prints a table and writes bench/RESULTS.md.

    .venv/bin/python bench/run_all.py [--quick] [--repeats N] [--rss-resolution 256] [--no-anchor]
    make bench

(6) flow overhead: `t2vz run` (Prefect flow on an already running `prefect server`, so server
    start is excluded) against the same 4-row manifest through t2vz_core's step functions
    (bench/direct_core.py), tiny models. Goal <= 1.2x.
(7) re-run of the unchanged manifest against its first run (same server), goal <= 5%, with zero
    model loads (models.cache_stats() in the re-running process) and every row up to date (report).
(8) peak RSS (VmHWM) of a 240-frame canny job against a 24-frame one at 256 px, a fresh `t2vz run`
    process each. Goal <= 1.10x (issue 11: control maps are read per chunk, not held), and the
    measured bytes per extra frame.
(9) the engine's anchor-reuse figure (bench/anchor_reuse.py, owned by the engine helper).

Every measured process is a fresh child of this one, which stays light (no torch import here).
Each child reports two times: `run` = the call itself (flows.cli.main / run_direct) with the
heavy imports done before the clock starts, and the parent's `wall` = the whole process
(interpreter, imports, run, exit). First runs pre-import torch/diffusers and FastAPI's encoders
(Prefect imports those on its first flow call): they need them anyway. The re-run pre-imports only
the CLI module, so any import it really needs counts.
Runs of both sides alternate so both see the same machine load; medians are reported. Ratios
come from this one run; nothing is tuned to meet a goal: a missed goal is reported with why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "RESULTS.md"
T2VZ = str(Path(sys.executable).with_name("t2vz"))
# Imports the all-up-to-date re-run must not pay (pandas and pyarrow alone cost ~0.4 s: see (7)).
HEAVY_MODULES = ("pandas", "pyarrow", "torch", "diffusers", "prefect")


# ================================================================ children (fresh processes)


def vm_hwm_mb() -> float:
    """Peak RSS of this process (VmHWM): ru_maxrss would carry the parent's mark across fork+exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _heavy_imports() -> None:
    import torch  # noqa: F401

    import t2vz_core.control  # noqa: F401
    import t2vz_core.media  # noqa: F401
    from t2vz_core import row_steps as steps

    steps.warm_imports()


def _statuses(out: Path) -> dict[str, dict[str, str]]:
    """Each row's step statuses in this run, from report.json ("up to date" for rows not run again);
    the direct baseline writes no report."""
    if not (out / "report.json").exists():
        return {}
    from t2vz_core.pipeline import step_names

    report = json.loads((out / "report.json").read_text())
    return {line["job_id"]: {s: line.get(s, "") for s in step_names()} for line in report["rows"]}


def child(kind: str, manifest: str, out: str) -> None:
    """One measured run; prints one JSON line."""
    started = time.perf_counter()
    if kind == "cached-flow":
        import fastapi.encoders  # noqa: F401 - see "flow" below

        from flows.batch import process_manifest
    elif kind in ("flow", "cached"):
        from flows import cli

        if kind == "flow":
            import fastapi.encoders  # noqa: F401 - Prefect's serialize_parameters imports it on the first flow call

            import flows.batch  # noqa: F401

            _heavy_imports()
    else:
        sys.path.insert(0, str(BENCH))
        from direct_core import run_direct

        _heavy_imports()
    import_s = time.perf_counter() - started
    clock = time.perf_counter()
    if kind == "direct":
        run_direct(manifest, out)
        rc = 0
    elif kind == "cached-flow":
        state = process_manifest(manifest_path=manifest, output_dir=out, return_state=True)
        rc = 0 if state.is_completed() else 1
    else:
        rc = cli.main(["run", manifest, "--output-dir", out, "--no-progress"])
    run_s = time.perf_counter() - clock
    loaded = sys.modules.get("t2vz_core.models")
    stats = loaded.cache_stats() if loaded is not None else {"loads": 0, "note": "t2vz_core.models never imported"}
    print(
        json.dumps(
            {
                "kind": kind,
                "rc": rc,
                "import_s": import_s,
                "run_s": run_s,
                "loads": stats["loads"],
                "diffusers_imported": "diffusers" in sys.modules,
                "peak_mb": vm_hwm_mb(),
                "heavy_imported": [m for m in HEAVY_MODULES if m in sys.modules],
                "statuses": _statuses(Path(out)),
            }
        ),
        flush=True,
    )


def child_anchor(models: str, repeats: int) -> None:
    """bench/anchor_reuse.py's cases, as JSON (the engine helper owns that script)."""
    sys.path.insert(0, str(BENCH))
    import anchor_reuse
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    args = argparse.Namespace(frames=32, chunk=8, steps=6, repeats=repeats, threads=0, no_text2video=False)
    cases = [anchor_reuse.controlnet_case(Path(models), args), anchor_reuse.text2video_case(Path(models), args)]
    print(json.dumps({"cases": cases, "args": vars(args), "threads": torch.get_num_threads()}), flush=True)


# ================================================================ the parent


def run_child(args: list[str], env: dict, timeout: float = 1800) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {args[:2]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    result = json.loads(lines[-1])
    result["wall_s"] = wall
    result["load"] = os.getloadavg()[0]
    return result


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home / "server-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false"
    )
    log = open(home / "server.log", "w")  # noqa: SIM115 - handed to the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    api = f"http://127.0.0.1:{port}/api"
    import httpx

    deadline = time.monotonic() + 120
    with httpx.Client() as client:  # one client: each httpx.get builds an SSL context (~30 ms of CPU)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError((home / "server.log").read_text()[-3000:])
            try:
                if client.get(f"{api}/health", timeout=2).json() is True:
                    return proc, api
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
    raise RuntimeError("prefect server did not become healthy in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    columns = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def prepare(tmp: Path, env: dict, rss_resolution: int) -> dict:
    """Tiny models (in a child: this process stays free of torch), media, manifests."""
    subprocess.run([T2VZ, "models", "tiny", str(tmp / "models")], env=env, check=True, capture_output=True)
    from t2vz_core.media.synthetic import make_video

    models, lib = tmp / "models", tmp / "lib"
    make_video(lib / "clip.mp4", frames=8, size=(64, 48), pattern="texture")
    make_video(lib / "depth.mp4", frames=8, size=(64, 48), pattern="texture")
    base = {"resolution": 64, "num_inference_steps": 4, "chunk_size": 4, "seed": 3, "model": str(models / "sd")}
    four = write_csv(
        lib / "four.csv",
        [
            {"job_id": "t2v", "mode": "text2video", "prompt": "a panda surfing", "video_length": 8, **base},
            {
                "job_id": "canny",
                "mode": "canny",
                "source": "clip.mp4",
                "prompt": "a glass boat",
                "controlnet": str(models / "controlnet-canny"),
                **base,
            },
            {
                "job_id": "depth",
                "mode": "depth",
                "source": "depth.mp4",
                "control": "given",
                "prompt": "two spheres",
                "controlnet": str(models / "controlnet-depth"),
                **base,
            },
            {
                "job_id": "p2p",
                "mode": "pix2pix",
                "source": "clip.mp4",
                "prompt": "make it snow",
                **{**base, "model": str(models / "pix2pix")},
            },
        ],
    )
    rss = {}
    for frames in (24, 240):
        make_video(
            lib / f"rss{frames}.mp4", frames=frames, size=(rss_resolution, rss_resolution * 3 // 4), pattern="texture"
        )
        rss[frames] = write_csv(
            lib / f"rss{frames}.csv",
            [
                {
                    "job_id": f"rss{frames}",
                    "mode": "canny",
                    "source": f"rss{frames}.mp4",
                    "prompt": "a glass boat",
                    "resolution": rss_resolution,
                    "num_inference_steps": 2,
                    "chunk_size": 8,
                    "seed": 3,
                    # One shot, the most held at once: the panning texture jumps every 16 frames, which
                    # shots=auto would split into 15 shots of 16 latents each.
                    "shots": "none",
                    "model": str(models / "sd"),
                    "controlnet": str(models / "controlnet-canny"),
                }
            ],
        )
    return {"models": models, "four": four, "rss": rss}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    versions = {}
    for name in ("torch", "diffusers", "transformers", "prefect", "av", "decord"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": os.getloadavg(),
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side for (6) and (7) (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, anchor-reuse with 1 repeat")
    parser.add_argument("--rss-resolution", type=int, default=256, help="long side of the (8) jobs (default 256)")
    parser.add_argument("--no-anchor", action="store_true", help="skip (9)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the markdown results")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "anchor":
            child_anchor(args.child[1], int(args.child[2]))
        else:
            child(*args.child)
        return
    repeats = 1 if args.quick else args.repeats

    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="t2vz-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "T2VZ_FAULTS")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_HOME=str(tmp / "client-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        T2VZ_ALLOWED_ROOTS=str(tmp / "lib"),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    print(
        f"bench folder {tmp}; machine: {info['cpu']}, {info['usable_cores']} cores, load {info['load_before']}",
        flush=True,
    )
    server = None
    try:
        paths = prepare(tmp, env, args.rss_resolution)
        server, api = start_server(tmp)
        env["PREFECT_API_URL"] = api
        print(f"prefect server up at {api} (its start is not measured)", flush=True)

        # (6) and (7): alternate direct / flow first runs, then cached re-runs of the last flow output
        direct, flow, serial, cached = [], [], [], []
        for i in range(repeats):
            run_env = {**env, "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / f"results{i}")}
            direct.append(run_child(["--child", "direct", str(paths["four"]), str(tmp / f"direct{i}")], run_env))
            # the same flow with one row at a time, like the direct baseline (informative row of the table)
            serial_env = {
                **env,
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / f"serial-results{i}"),
                "T2VZ_MAX_WORKERS": "1",
            }
            serial.append(run_child(["--child", "flow", str(paths["four"]), str(tmp / f"serial{i}")], serial_env))
            flow.append(run_child(["--child", "flow", str(paths["four"]), str(tmp / f"flow{i}")], run_env))
            print(
                f"  first runs {i + 1}/{repeats}: direct {direct[-1]['run_s']:.2f} s, flow {flow[-1]['run_s']:.2f} s"
                f" (one row at a time {serial[-1]['run_s']:.2f} s)",
                flush=True,
            )
        last = tmp / f"flow{repeats - 1}"
        cached_env = {**env, "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / f"results{repeats - 1}")}
        cached_flow = []
        for i in range(repeats):
            cached.append(run_child(["--child", "cached", str(paths["four"]), str(last)], cached_env))
            cached_flow.append(run_child(["--child", "cached-flow", str(paths["four"]), str(last)], cached_env))
            print(
                f"  re-run {i + 1}/{repeats}: {cached[-1]['run_s']:.2f} s, {cached[-1]['loads']} model loads "
                f"(as a flow run: {cached_flow[-1]['run_s']:.2f} s)",
                flush=True,
            )
        for run in flow + serial + cached + cached_flow:
            if run["rc"] != 0:
                raise RuntimeError(f"t2vz run exited {run['rc']}: {run}")

        # (8) peak RSS, fresh process each, 24 then 240 frames
        rss = {}
        for frames in (24, 240):
            rss_env = {**env, "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / f"rss-results{frames}")}
            rss[frames] = run_child(["--child", "flow", str(paths["rss"][frames]), str(tmp / f"rss{frames}")], rss_env)
            print(f"  RSS {frames} frames: {rss[frames]['peak_mb']:.0f} MB ({rss[frames]['run_s']:.1f} s)", flush=True)

        anchor = None
        if not args.no_anchor:
            anchor = run_child(["--child", "anchor", str(paths["models"]), str(1 if args.quick else 2)], env)
        info["load_after"] = os.getloadavg()
        results = summarize(info, direct, flow, serial, cached, cached_flow, rss, anchor, repeats, args.rss_resolution)
        print("\n" + results["table"])
        args.output.write_text(results["markdown"])
        print(f"\nwrote {args.output}")
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)


# ================================================================ results


def _goal(value: float, goal: float) -> str:
    return "met" if value <= goal else "**missed**"


def summarize(info, direct, flow, serial, cached, cached_flow, rss, anchor, repeats, rss_resolution) -> dict:
    d_run, f_run = median([r["run_s"] for r in direct]), median([r["run_s"] for r in flow])
    d_wall, f_wall = median([r["wall_s"] for r in direct]), median([r["wall_s"] for r in flow])
    c_run, c_wall = median([r["run_s"] for r in cached]), median([r["wall_s"] for r in cached])
    fc_run = median([r["run_s"] for r in cached_flow])
    fc_current = all(
        all(s in ("up to date", "skipped") for s in st.values()) for r in cached_flow for st in r["statuses"].values()
    )
    s_run = median([r["run_s"] for r in serial])
    overhead, overhead_wall = f_run / d_run, f_wall / d_wall
    cached_ratio, cached_wall_ratio = c_run / f_run, c_wall / f_wall
    loads = [r["loads"] for r in cached]
    all_current = all(
        all(s in ("up to date", "skipped") for s in st.values()) for r in cached for st in r["statuses"].values()
    )
    rss_ratio = rss[240]["peak_mb"] / rss[24]["peak_mb"]
    rss_bytes_per_frame = (rss[240]["peak_mb"] - rss[24]["peak_mb"]) * 2**20 / 216
    rss_w, rss_h = rss_resolution, rss_resolution * 3 // 4
    latent_bytes = 4 * (rss_w // 2) * (rss_h // 2) * 4  # float32, 4 channels; the tiny VAE scales by 2
    # task runs of one flow run: a row task per row plus its step tasks (skipped steps run no task)
    task_runs = sum(1 + sum(s != "skipped" for s in st.values()) for st in flow[-1]["statuses"].values())

    rows = [
        (
            "(6) flow overhead: t2vz run / t2vz_core direct, 4 rows, call only",
            f"{f_run:.2f} s / {d_run:.2f} s",
            f"{overhead:.2f}x",
            "<= 1.2x",
            _goal(overhead, 1.2),
        ),
        (
            "(6) same, whole process (interpreter + imports + run)",
            f"{f_wall:.2f} s / {d_wall:.2f} s",
            f"{overhead_wall:.2f}x",
            "<= 1.2x",
            _goal(overhead_wall, 1.2),
        ),
        (
            "(6) same flow with T2VZ_MAX_WORKERS=1 (one row at a time, as the baseline and a CPU's default), call only",
            f"{s_run:.2f} s / {d_run:.2f} s",
            f"{s_run / d_run:.2f}x",
            "<= 1.2x",
            _goal(s_run / d_run, 1.2),
        ),
        (
            "(7) re-run of the unchanged manifest / first run, call only",
            f"{c_run:.2f} s / {f_run:.2f} s",
            f"{100 * cached_ratio:.1f}%",
            "<= 5%",
            _goal(cached_ratio, 0.05),
        ),
        (
            "(7) same, whole `t2vz run` process",
            f"{c_wall:.2f} s / {f_wall:.2f} s",
            f"{100 * cached_wall_ratio:.1f}%",
            "<= 5%",
            _goal(cached_wall_ratio, 0.05),
        ),
        (
            "(7) model loads in the re-run (cache_stats), every row up to date",
            f"{loads}, {all_current}",
            f"{max(loads)}",
            "0",
            "met" if max(loads) == 0 and all_current else "**missed**",
        ),
        (
            "(7) heavy modules imported by the re-run (" + ", ".join(HEAVY_MODULES) + ")",
            ", ".join(sorted({m for r in cached for m in r.get("heavy_imported", [])})) or "none",
            "-",
            "none",
            "met" if not any(r.get("heavy_imported") for r in cached) else "**missed**",
        ),
        (
            "(7) same re-run as a flow run (how a scheduled deployment runs it), call only",
            f"{fc_run:.2f} s / {f_run:.2f} s",
            f"{100 * fc_run / f_run:.1f}%",
            "-",
            f"info; every row up to date: {fc_current}",
        ),
        (
            f"(8) peak RSS 240 / 24 frames (canny, {rss_resolution} px, fresh t2vz run each)",
            f"{rss[240]['peak_mb']:.0f} MB / {rss[24]['peak_mb']:.0f} MB",
            f"{rss_ratio:.3f}x",
            "<= 1.10x",
            _goal(rss_ratio, 1.10),
        ),
        (
            f"(8) growth per extra frame (canny, {rss_resolution} px)",
            f"{rss_bytes_per_frame / 1024:.0f} kB",
            "-",
            "the latent and little else",
            f"info; latent {latent_bytes / 1024:.0f} kB",
        ),
    ]
    if anchor:
        for case in anchor["cases"]:
            rows.append(
                (
                    f"(9) anchor reuse, {case['case']}: UNet evaluations per frame per step, recipe / t2vz",
                    f"{case['recipe_evals']:.3f} / {case['t2vz_evals']:.3f}",
                    f"{case['recipe_evals'] / case['t2vz_evals']:.3f}x",
                    "fewer evaluations",
                    "info",
                )
            )
            rows.append(
                (
                    f"(9) anchor reuse, {case['case']}: wall time recipe / t2vz",
                    f"{case['recipe_s']:.2f} s / {case['t2vz_s']:.2f} s",
                    f"{case['recipe_s'] / case['t2vz_s']:.2f}x",
                    "-",
                    f"max frame diff {case['max_diff']:.1e}",
                )
            )
    header = "| measure | values | ratio | goal | result |\n|---|---|---|---|---|"
    table = header + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)

    v = info["versions"]
    notes = []
    bookkeeping = s_run - d_run
    notes.append(
        f"- (6) The flow took {f_run - d_run:.2f} s longer than the direct calls ({d_run:.2f} s for 4 rows). "
        f"Rows one at a time (T2VZ_MAX_WORKERS=1, like the baseline), it took {bookkeeping:.2f} s longer: "
        f"Prefect's bookkeeping, about {1000 * bookkeeping / task_runs:.0f} ms per task run ({task_runs} task "
        "runs: a row task plus its step tasks, each with its state events, a cache-key lookup and a "
        "persisted result), plus the flow run, its artifacts and the report. Progress updates are sent from "
        "a background thread, step task variants are built once per process, and runs end without waiting "
        "for Prefect's heartbeat thread (flows/heartbeats.py: up to 1 s per run). This cost is per "
        "task, not per frame or step, so its share falls as generation grows: tiny models at 64 px make the "
        "direct side as small as it will ever be; one step of a real SD model takes seconds on a GPU-less "
        "box (see /work/shared/FACTS.md)."
    )
    notes.append(
        f"- (6) Both flow rows run one row at a time: on a CPU that is the default (flows.batch.rows_at_once; "
        "two rows on 2 cores only fight over them), and T2VZ_MAX_WORKERS=1 asks for it. Their difference "
        f"({abs(f_run - s_run):.2f} s) is run-to-run variation."
    )
    notes.append(
        f"- (7) Before starting a flow, `t2vz run` checks every row (t2vz_core/freshness.py): a row is up "
        "to date when its sidecar says its last run succeeded and its step keys, recomputed from the "
        "references the sidecar recorded (source bytes via a digest memo, model fingerprints, device and "
        "dtype, parameters, t2vz version), and its published files' digests are unchanged. When every row "
        "is, it rewrites the report and stops: no flow run, no task run, and neither torch, diffusers, "
        "Prefect nor pandas is imported (report.csv, report.json and report.html are rewritten with the "
        "standard library; report.parquet, whose results did not change, is left as the run that made "
        f"them wrote it) ({c_run:.2f} s call only; the whole process, {c_wall:.2f} s, adds the "
        "interpreter's start). A scheduled deployment runs the flow itself: there the same check "
        f"skips up-to-date rows without task runs, and the flow run's own cost remains ({fc_run:.2f} s, "
        f"{100 * fc_run / f_run:.0f}% of the first run: flow-run creation, report artifacts, Prefect's "
        "state round trips)."
    )
    map_kb = 3 * rss_w * rss_h / 1024
    notes.append(
        f"- (8) Peak RSS includes Python, torch, diffusers, Prefect and the loaded tiny models "
        f"(~{rss[24]['peak_mb']:.0f} MB for the short job). From 24 to 240 frames it grew "
        f"{rss[240]['peak_mb'] - rss[24]['peak_mb']:.0f} MB, {rss_bytes_per_frame / 1024:.0f} kB per extra "
        f"frame at {rss_w}x{rss_h} px. Decoding, control maps and encoding stream through frame stores on "
        "disk, and the engine reads each UNet chunk's control maps from the store as it denoises "
        "(t2vz_core/engine/guided.py, ControlMaps): what stays in memory per frame is its latent "
        "(step-major denoising needs every row of a shot at each step; the rows run with shots=none, "
        f"one shot of every frame, the most held at once): {latent_bytes / 1024:.0f} kB "
        f"per frame with the tiny VAE (it scales by 2; SD's scales by 8: 64 kB at 512x512). Holding the "
        f"maps as before would add {map_kb:.0f} kB per frame here (768 kB at 512x512). Growth below the "
        "latent size means the peak is set by a phase whose size does not depend on the frame count "
        "(model loading, one chunk's UNet or VAE activations) and the denoising stays under it; growth "
        "above it is not attributed (allocator slack, checkpoint serialization) and varies between runs."
    )
    if anchor:
        notes.append(
            "- (9) From bench/anchor_reuse.py (engine helper): 32 frames, chunk 8, tiny models; the recipe is "
            "the diffusers pipeline called per chunk with frame 0 prepended; t2vz evaluates the anchor once "
            "per step and replays its attention keys/values."
        )
    load = f"{info['load_before'][0]:.1f} before, {info['load_after'][0]:.1f} after"
    markdown = f"""# t2vz benchmarks

Written by `python bench/run_all.py` (`make bench`) on {info["date"]}. Medians of {repeats} run(s) per side;
both sides of each ratio alternate within this one run.

## Machine
- CPU: {info["cpu"]}, {info["cores"]} cores ({info["usable_cores"]} usable), RAM {info["ram_gb"]:.1f} GB,
  no GPU used (device cpu, fp32)
- Python {info["python"]} on {info["platform"]}
- torch {v["torch"]}, diffusers {v["diffusers"]}, transformers {v["transformers"]}, prefect {v["prefect"]},
  av {v["av"]}, decord {v["decord"]}
- 1-minute load average: {load}; each run's load is in Raw. Other work on the machine slows both sides
  of a ratio, but not alike: two busy cores shared with other processes make torch's threads wait on
  each other, and single runs then vary by 5-10x. Trust a run whose loads stayed near or under 1.

## Results
{table}

- call only: the measured call (`flows.cli.main(["run", ...])` or `run_direct`) with heavy imports (torch, diffusers,
  and FastAPI's encoders, which Prefect imports on its first flow call) done before the clock starts; whole
  process: the parent's wall time for the child, interpreter start and imports included. The Prefect
  server was started before any measurement (`prefect server start`, PREFECT_API_URL set): its start is excluded.
- Workload for (6)/(7): 4 rows (text2video, canny, depth with a given control video, pix2pix), 8 frames each,
  64 px, 4 steps, chunk size 4, tiny random-weight models; every first run gets fresh output, work and result folders.

## Notes
{chr(10).join(notes)}

## Raw
```json
{
        json.dumps(
            {"direct": direct, "flow": flow, "serial": serial, "cached": cached, "rss": rss, "anchor": anchor},
            indent=1,
            default=str,
        )[:30000]
    }
```
"""
    return {"table": table, "markdown": markdown}


if __name__ == "__main__":
    main()
