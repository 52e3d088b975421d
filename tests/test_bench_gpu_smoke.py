"""bench/gpu.py --smoke (issue 14): the GPU benchmark's code, end to end at tiny sizes on the CPU.

The same sections as `make bench-gpu` run (tiny configs from bench/configs/smoke, fp32, a few frames
and steps, OOM simulated, compile with the "eager" backend); the results file must hold every
section, with no error, and the checks that a CPU can make must hold (the retry halves the chunk,
the concurrency limit serialises two workers, outputs are finite, a second video compiles nothing).
Speed figures of a smoke run mean nothing and are not asserted. Offload needs an accelerator and is
the one section a CPU skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _run(*args: str, timeout: float = 1700) -> subprocess.CompletedProcess:
    from session_server import api_url

    env = {k: v for k, v in os.environ.items() if k not in ("T2VZ_GPU_LIMIT", "T2VZ_MAX_WORKERS")}
    env["PREFECT_API_URL"] = api_url()  # the session's server: the bench starts none of its own
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_smoke_run_writes_every_section(tmp_path):
    listed = _run("--list-sections", timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split()
    assert {"throughput", "e2e", "oom_retry", "gpu_limit", "offload", "sdxl", "compile"} <= set(names)
    out = tmp_path / "results" / "GPU_RESULTS.md"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-4000:] + proc.stderr[-4000:]

    data = json.loads(out.with_suffix(".json").read_text())
    sections = data["sections"]
    assert list(sections) == names
    assert {k: v["error"] for k, v in sections.items() if v.get("error")} == {}
    assert {k for k, v in sections.items() if v.get("skipped")} == {"offload"}
    text = out.read_text()
    assert "SMOKE RUN" in text
    assert all(f"## {name}\n" in text for name in names)

    assert all(row["flops_call"] > 0 for row in sections["flops"]["models"])
    modes = {row["mode"] for row in sections["throughput"]["rows"]}
    assert modes == {"canny", "pix2pix", "text2video"}
    assert all(row["t2vz_fps"] > 0 and row["recipe_fps"] > 0 for row in sections["throughput"]["rows"])
    assert sections["fast_paths"]["attention"]["auto_picks"]
    assert sections["finite"]["all_finite"]
    assert all(row["ok"] for row in sections["precision"]["rows"])
    e2e = sections["e2e"]
    assert e2e["statuses"] == ["ok"] * 4 and e2e["generations"] == 4 and e2e["fps_end_to_end"] > 0
    assert sections["oom_retry"]["halved_after_oom"] and sections["oom_retry"]["effective_chunk"] == 2, sections[
        "oom_retry"
    ]
    assert sections["gpu_limit"]["one_at_a_time"], sections["gpu_limit"]
    assert all(row["max_chunk"] for row in sections["max_chunk"]["rows"])
    assert {row["mode"] for row in sections["sdxl"]["rows"]} == {"canny", "text2video"}
    assert sections["compile"]["no_recompiles_in_second_video"]
    assert sections["compile"]["rows"][1]["graphs_first"] >= 1


def test_smoke_never_writes_the_real_results_file():
    proc = _run("--smoke", "--out", str(REPO / "bench" / "GPU_RESULTS.md"), timeout=120)
    assert proc.returncode == 2 and "never writes bench/GPU_RESULTS.md" in proc.stderr
