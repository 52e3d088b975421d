"""The report as a pandas DataFrame (t2vz_core.report_table): report.csv byte for byte as the stdlib
writer makes it, report.parquet, the per-mode/status summary and `t2vz report OUT --summary`; and
pandas kept off the path that rewrites an unchanged report (the all-up-to-date re-run)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from flows.cli import main
from t2vz_core import report, report_table
from t2vz_core.manifest import read_manifest
from t2vz_core.pipeline import step_names
from t2vz_core.sidecar import Sidecar, write_sidecar

STEPS = step_names()


def _line(row, job_id, mode="canny", status="ok", **extra) -> dict:
    line = {
        "row": row,
        "job_id": job_id,
        "mode": mode,
        "status": status,
        "error": "",
        "outputs": [],
        "seconds": 2.0,
        "sidecar": f"/out/{job_id}.json",
        **{step: "computed" for step in STEPS},
    }
    line.update(extra)
    return line


HOSTILE = [
    _line(2, "a", outputs=["/out/a.mp4", "/out/a b,c.webm"], seconds=1.23456),
    _line(3, "b", status="failed", error='=HYPERLINK("http://x") , "quoted"\nsecond line', seconds=None),
    _line(4, "c", mode="pix2pix", error="+1", job_id_note="extra keys are ignored", sidecar="@home"),
    _line(5, "-d", mode="text2video", error="naïve — ünïcode", seconds=0.0),
    report.invalid_row(6, None, None, ["seed: 'x' is not a whole number", "prompt: empty"]),
    report.missing_row(7, "m", "depth"),
]


def test_the_frame_writes_report_csv_byte_for_byte():
    frame = report_table.report_frame(HOSTILE)
    assert list(frame.columns) == list(report.report_columns())
    assert report_table.frame_to_csv(frame) == report._rows_to_csv(HOSTILE)
    # the injection guard is in the CSV, not in the data
    assert "'=HYPERLINK" in report_table.frame_to_csv(frame) and frame.loc[1, "error"].startswith("=HYPERLINK")


def test_typed_columns_qc_scores_and_shots():
    rows = [
        _line(2, "a", frames=8, shots=2, warp_error=3.5, warp_error_ratio=1.25),
        _line(3, "b", frames=None, shots=None, warp_error=None, warp_error_ratio=None),
    ]
    frame = report_table.report_frame(rows)
    assert list(frame.columns) == list(report.report_columns())
    assert list(frame.columns)[-6:] == [*report.QC_COLUMNS, "sidecar"]
    assert str(frame["row"].dtype) == "Int64" and str(frame["frames"].dtype) == "Int64"
    assert str(frame["shots"].dtype) == "Int64" and frame["seconds"].dtype == "float64"
    assert math.isnan(frame.loc[1, "warp_error"]) and frame.loc[0, "outputs"] == []
    csv_text = report_table.frame_to_csv(frame)
    assert csv_text == report._rows_to_csv(rows)
    header, first, second = csv_text.splitlines()
    assert ",seconds,frames,shots," in header
    assert header.endswith(",warp_error,source_warp_error,warp_error_ratio,flicker,source_flicker,sidecar")
    assert first.endswith(",3.5,,1.25,,,/out/a.json") and second.endswith(",,,,,,/out/b.json")
    assert ",2.000,8,2," in first and ",2.000,,," in second


def test_write_report_writes_csv_json_parquet_and_html(tmp_path):
    rep = report.write_report(tmp_path, HOSTILE, {"manifest": "/m/jobs.csv"})
    assert (tmp_path / "report.csv").read_text() == report._rows_to_csv(rep["rows"])
    table = pd.read_parquet(tmp_path / "report.parquet")
    assert table["job_id"].tolist() == [line["job_id"] or "" for line in rep["rows"]]
    assert table.loc[0, "outputs"].tolist() == ["/out/a.mp4", "/out/a b,c.webm"]
    assert table.loc[1, "error"].startswith("=HYPERLINK")  # raw data: the guard is for spreadsheets
    assert json.loads((tmp_path / "report.json").read_text())["results_digest"] == report.results_digest(rep["rows"])
    assert (tmp_path / "report.html").read_text().count('<article class="card') == len(HOSTILE)


_REWRITE = """
import json, sys
from pathlib import Path
from t2vz_core import report
out = Path(sys.argv[1])
rows = json.loads((out / "report.json").read_text())["rows"]
for line in rows:
    line.update(json.loads(sys.argv[2]))
report.write_report(out, rows)
print(json.dumps({"pandas": "pandas" in sys.modules, "pyarrow": "pyarrow" in sys.modules}))
"""


def _rewrite(out, change: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _REWRITE, str(out), json.dumps(change)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def test_an_up_to_date_rewrite_does_not_import_pandas(tmp_path):
    report.write_report(tmp_path, [_line(2, "a"), _line(3, "b")])
    parquet = (tmp_path / "report.parquet").read_bytes()

    # only the step marks change (what a re-run finding every row up to date writes): no pandas
    up_to_date = {**{step: "up to date" for step in STEPS}, "up_to_date": True}
    assert _rewrite(tmp_path, up_to_date) == {"pandas": False, "pyarrow": False}
    assert ",up to date," in (tmp_path / "report.csv").read_text()
    assert (tmp_path / "report.parquet").read_bytes() == parquet

    # a result changed: the tables are rebuilt through pandas
    assert _rewrite(tmp_path, {"seconds": 9.5}) == {"pandas": True, "pyarrow": True}
    assert pd.read_parquet(tmp_path / "report.parquet")["seconds"].tolist() == [9.5, 9.5]

    # a lost report.parquet comes back even when nothing changed
    (tmp_path / "report.parquet").unlink()
    assert _rewrite(tmp_path, {})["pandas"] is True and (tmp_path / "report.parquet").exists()


def test_summary_by_mode_and_status():
    rows = [
        _line(2, "a", seconds=2.0, frames=8, warp_error=2.0, warp_error_ratio=1.0),
        _line(3, "b", seconds=6.0, frames=16, warp_error=4.0, warp_error_ratio=3.0),
        _line(4, "c", seconds=5.0, frames=None),  # untimed frames: left out of frames per second
        _line(5, "d", status="failed", seconds=1.0, frames=8),
        _line(6, "e", mode="pix2pix", seconds=4.0, frames=8, warp_error_ratio=2.0),
        report.invalid_row(7, "bad", None, ["prompt: empty"]),
    ]
    summary = report_table.summarize_by_mode_status(report_table.report_frame(rows))
    assert list(summary.index) == [("(none)", "invalid"), ("canny", "failed"), ("canny", "ok"), ("pix2pix", "ok")]
    ok = summary.loc[("canny", "ok")]
    assert (ok["rows"], ok["frames"], ok["median_seconds"]) == (3, 24, 5.0)
    assert ok["frames_per_second"] == pytest.approx(24 / 8.0)
    assert (ok["median_warp_error"], ok["median_warp_error_ratio"]) == (3.0, 2.0)
    assert pd.isna(ok["median_flicker"])
    invalid = summary.loc[("(none)", "invalid")]
    assert invalid["rows"] == 1 and pd.isna(invalid["frames"]) and pd.isna(invalid["frames_per_second"])

    text = report_table.summary_text(summary).splitlines()
    assert text[0].split()[:4] == ["mode", "status", "rows", "frames"]
    assert text[3].split()[:6] == ["canny", "ok", "3", "24", "5.00", "3.00"]
    markdown = report_table.summary_markdown(summary).splitlines()
    assert markdown[0].startswith("| mode | status | rows | frames | median seconds | frames per second |")
    assert markdown[4] == "| canny | ok | 3 | 24 | 5.00 | 3.00 | 3.00 | - | 2.00 | - | - |"


def test_report_summary_command(tmp_path, capsys, no_env_allowed_roots):
    (tmp_path / "sd").mkdir()
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "job_id,mode,prompt,model,video_length\n"
        "one,text2video,a cat,sd,8\ntwo,text2video,a dog,sd,8\nbad,text2video,,sd,8\n"
    )
    out = tmp_path / "out"
    for job, seconds in zip(read_manifest(manifest).jobs, (2.0, 4.0)):
        write_sidecar(
            out,
            Sidecar(job_id=job.job_id, row=job.row, mode=job.mode, status="ok", seconds=seconds, job=job.cache_dict()),
        )
    assert main(["report", str(manifest), "--output-dir", str(out), "--summary"]) == 1  # one invalid row
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:5] == ["mode", "status", "rows", "frames", "median_seconds"]
    assert printed[1].split()[:3] == ["(none)", "invalid", "1"]
    assert printed[2].split()[:5] == ["text2video", "ok", "2", "-", "3.00"]
    assert (out / "report.parquet").exists() and (out / "report.html").exists()


def _scored(job_id: str, ratio: float | None, status: str = "ok") -> Sidecar:
    return Sidecar(
        job_id=job_id,
        row=2,
        mode="canny",
        status=status,
        seconds=1.0,
        resolved={"frames": 8},
        qc=dict.fromkeys(report.QC_COLUMNS) | {"warp_error_ratio": ratio},
    )


def test_a_ratio_over_the_rows_limit_flags_it_and_it_still_counts_as_ok(tmp_path):
    cases = [
        ("over", 2.5, 2.0, "ok"),
        ("equal", 2.0, 2.0, "ok"),
        ("no-limit", 9.0, None, "ok"),
        ("unscored", None, 2.0, "ok"),
        ("failed", 9.0, 2.0, "failed"),
    ]
    lines = [
        report.apply_qc_limit(report.row_from_sidecar(_scored(job_id, ratio, status), tmp_path), limit)
        for job_id, ratio, limit, status in cases
    ]
    assert [line["status"] for line in lines] == ["flagged", "ok", "ok", "ok", "failed"]
    assert lines[0]["qc_max_warp_ratio"] == 2.0 and "qc_max_warp_ratio" not in lines[2]
    assert (lines[0]["warp_error_ratio"], lines[0]["frames"]) == (2.5, 8)
    counts = report.summarize(lines)
    assert (counts["ok"], counts["flagged"], counts["failed"], counts["total"]) == (4, 1, 1, 5)
    assert "flagged" not in report.summarize(lines[1:])  # the counts keep their shape without flags


def test_the_limit_comes_from_the_manifest_and_is_in_no_cache_key(tmp_path, no_env_allowed_roots):
    (tmp_path / "sd").mkdir()
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "job_id,mode,prompt,model,video_length,qc_max_warp_ratio\n"
        "strict,text2video,a cat,sd,8,1.5\nlax,text2video,a dog,sd,8,\n"
    )
    jobs = read_manifest(manifest).jobs
    assert "qc_max_warp_ratio" not in jobs[0].cache_dict() and jobs[0].qc_max_warp_ratio == 1.5
    out = tmp_path / "out"
    for job in jobs:  # the same scores for both rows
        write_sidecar(
            out,
            Sidecar(
                job_id=job.job_id,
                row=job.row,
                mode=job.mode,
                status="ok",
                job=job.cache_dict(),
                qc=dict.fromkeys(report.QC_COLUMNS) | {"warp_error_ratio": 2.0},
            ),
        )
    rep = report.write_manifest_report(manifest, out)
    assert [line["status"] for line in rep["rows"]] == ["flagged", "ok"]
    assert (rep["counts"]["ok"], rep["counts"]["flagged"]) == (2, 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("job_id,mode,prompt,model,video_length,qc_max_warp_ratio\nx,text2video,a cat,sd,8,high\n")
    errors = read_manifest(bad).errors
    assert [(e.row, e.column) for e in errors] == [(2, "qc_max_warp_ratio")] and "must be a number" in errors[0].message


def test_run_prints_how_many_rows_were_flagged(tmp_path, capsys):
    from flows.cli import _print_report

    lines = [
        report.apply_qc_limit(report.row_from_sidecar(_scored(job_id, ratio), tmp_path), 2.0)
        for job_id, ratio in (("a", 3.0), ("b", 1.0))
    ]
    _print_report({"rows": lines, "counts": report.summarize(lines), "output_dir": str(tmp_path)})
    printed = capsys.readouterr().out
    assert " flagged  row 2  a:" in printed and "2 ok, 0 failed, 0 invalid; 1 flagged by QC" in printed
    assert str(tmp_path / "report.html") in printed
