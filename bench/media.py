"""Media throughput and memory, measured in one run.

    .venv/bin/python bench/media.py [--quick]

Prints: decode + resize frames/s for decord and PyAV on a 300-frame 512x512 clip;
encode frames/s (H.264 at two presets, VP9, GIF); peak RSS while streaming decode -> encode
of a clip and of one 10x longer, each in a fresh subprocess (goal: long/short <= 1.25x).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from t2vz_core.media import DecodeSpec, encode_video, iter_frames, plan_decode, probe
from t2vz_core.media.synthetic import make_video


def best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def decode_fps(path: Path, backend: str, spec: DecodeSpec, runs: int) -> float:
    plan = plan_decode(probe(path), spec)

    def run():
        for _ in iter_frames(path, plan, backend=backend, chunk_size=16):
            pass

    return len(plan) / best_of(runs, run)


def vm_hwm_mb() -> float:
    """Peak RSS of this process alone (VmHWM). ru_maxrss is not used: after fork+exec it
    still carries the parent's high-water mark, which would hide any difference."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def stream_child(path: str, backend: str, out: str, resolution: str) -> None:
    """Decode -> encode chunk by chunk; print this process's and the decord worker's peak RSS."""
    plan = plan_decode(probe(path), DecodeSpec(resolution=int(resolution)))
    stats: dict = {}
    encode_video(iter_frames(path, plan, backend=backend, stats=stats), out, plan.fps, preset="ultrafast")
    print(
        json.dumps(
            {
                "self_mb": vm_hwm_mb(),
                "worker_mb": stats.get("worker_peak_rss_mb"),
                "frames": len(plan),
                "backend": stats["backend"],
            }
        )
    )


def peak_rss(path: Path, backend: str, out: Path, resolution: int) -> dict:
    cmd = [sys.executable, __file__, "--stream-child", str(path), backend, str(out), str(resolution)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 run each, shorter clips")
    parser.add_argument("--stream-child", nargs=4, metavar=("PATH", "BACKEND", "OUT", "RES"))
    args = parser.parse_args()
    if args.stream_child:
        stream_child(*args.stream_child)
        return
    runs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="t2vz-bench-media-") as tmp:
        tmp = Path(tmp)
        print("making clips ...", flush=True)
        clip = make_video(
            tmp / "clip.mp4", frames=300, size=(512, 512), fps=30, pattern="texture", crf=18, preset="fast", gop=60
        )
        short_n, long_n = (60, 600) if args.quick else (300, 3000)
        short = make_video(
            tmp / "short.mp4", frames=short_n, size=(512, 512), fps=30, pattern="texture", crf=18, gop=60
        )
        long = make_video(tmp / "long.mp4", frames=long_n, size=(512, 512), fps=30, pattern="texture", crf=18, gop=60)

        print(f"\n## Decode, 300 frames 512x512 H.264 (frames/s, best of {runs})")
        print("| backend | decode only | decode + resize to 256 | decode + resize, 15 fps |")
        print("|---|---|---|---|")
        for backend in ("decord", "pyav"):
            cells = [
                decode_fps(clip, backend, spec, runs)
                for spec in (DecodeSpec(), DecodeSpec(resolution=256), DecodeSpec(resolution=256, fps=15))
            ]
            print(f"| {backend} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
        print(
            "(decord runs in a child process: its start, ~0.3-0.5 s, is included;"
            " the 15 fps column counts output frames)"
        )

        plan = plan_decode(probe(clip), DecodeSpec())
        import numpy as np

        frames = np.concatenate(list(iter_frames(clip, plan, backend="pyav")))
        print(f"\n## Encode, 300 frames 512x512 (frames/s, best of {runs})")
        print("| format | frames/s |")
        print("|---|---|")
        for label, fmt, kwargs in (
            ("mp4 H.264 crf 18 medium", "mp4", {}),
            ("mp4 H.264 crf 18 ultrafast", "mp4", {"preset": "ultrafast"}),
            ("webm VP9 crf 18 medium (cpu-used 4)", "webm", {}),
            ("gif rgb8", "gif", {}),
        ):
            out = tmp / f"enc.{fmt}"
            secs = best_of(runs, lambda: encode_video(frames, out, Fraction(30), fmt=fmt, **kwargs))
            print(f"| {label} | {len(frames) / secs:.0f} |")
        frames = None

        print(
            f"\n## Peak RSS streaming decode -> encode (fresh process each; "
            f"{short_n} vs {long_n} frames 512x512 source)"
        )
        print(
            "| backend, output size | short: process MB | long: process MB | ratio | "
            "decord worker short / long MB | ratio |"
        )
        print("|---|---|---|---|---|---|")
        for backend, res in (("decord", 512), ("decord", 256), ("pyav", 512)):
            a = peak_rss(short, backend, tmp / "s.mp4", res)
            b = peak_rss(long, backend, tmp / "l.mp4", res)
            worker = (
                f"{a['worker_mb']:.0f} / {b['worker_mb']:.0f} | {b['worker_mb'] / a['worker_mb']:.2f}x"
                if backend == "decord"
                else "- | -"
            )
            print(
                f"| {backend}, {res}x{res} | {a['self_mb']:.0f} | {b['self_mb']:.0f} | "
                f"{b['self_mb'] / a['self_mb']:.3f}x | {worker} |"
            )
        print("goal: ratio <= 1.25x")


if __name__ == "__main__":
    main()
