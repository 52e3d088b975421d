"""Bad media and bad paths through the real flow (issue 6, item 1).

One `t2vz run` subprocess (tests/reliability_support.corpus_run, shared with the fault and
security tests) runs a manifest that mixes good rows with a text file named .mp4, truncated
MP4s (index lost / data cut), random bytes, an empty file, zero frames, audio only, 1x1 pixels,
odd sizes, a file declaring 16,400 px, variable frame rate, rotation metadata, `..`, absolute
paths outside the allowed roots, symlinks pointing out (and one pointing in), job ids with
slashes and shell characters. Every media file is made by the test with PyAV.

Each row must end as expected with its row number in report.json and its file (or column)
named in the error; every good row must publish a video that probes fine at the planned size.
Manifest-level bad input (columns, numbers, encodings, 10,000 rows...) is covered in
tests/test_manifest_corpus.py and tests/test_paths.py; this file does not repeat it.

Budget: the shared corpus run (31 rows, 12 tiny generations) plus the Prefect server start took 38 s
on the 2-core machine with other work running (load ~2.5); the five reliability/security files 107 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from reliability_support import SHELL_SOURCE, check_output_folder, corpus_run, explain, sidecar

pytestmark = pytest.mark.timeout(500)

CASES = [
    "good_canny",
    "good_p2p",
    "good_t2v",
    "link_inside",
    "odd_size",
    "vfr",
    "rotated",
    "one_pixel",
    "truncated",
    "truncated_fs",
    "text_mp4",
    "random_bytes",
    "empty_file",
    "zero_frames",
    "audio_only",
    "huge",
    "folder_src",
    "missing_src",
    "dotdot",
    "abs_outside",
    "link_out",
    "slash",
    "shell_id",
    "subst_id",
    "bin_weights",
    "sym_video",
    "sym_sidecar",
    "f_eio_decode",
    "f_oom",
    "f_fatal",
    "f_eio_forever",
]


@pytest.fixture(scope="module")
def corpus(tiny_models):
    return corpus_run(tiny_models)


def _expected(corpus, label: str) -> dict:
    """What a row must end as. A 1x1 video may be upscaled (ok) or refused naming its file."""
    case = corpus["cases"][label]
    if label == "one_pixel" and _line(corpus, label)["status"] == "failed":
        return {**case, "expect": "failed", "words": ("one_pixel.mp4",)}
    return case


def _line(corpus, label: str) -> dict:
    case = corpus["cases"][label]
    lines = [line for line in corpus["report"]["rows"] if line["row"] == case["row"]]
    assert len(lines) == 1, f"row {case['row']} ({label}) appears {len(lines)} times in report.json"
    return lines[0]


def test_the_run_finishes_with_a_complete_report(corpus):
    proc = corpus["proc"]
    assert corpus["report"] is not None, explain(proc)
    assert proc.returncode == 1, explain(proc)  # some rows failed: exit code 1, not a crash
    assert sorted(corpus["cases"]) == sorted(CASES)  # the table below covers every row
    rows = [line["row"] for line in corpus["report"]["rows"]]
    assert sorted(rows) == list(range(2, 2 + len(CASES)))  # one line per manifest row, spreadsheet numbering
    counts = corpus["report"]["counts"]
    expected = [_expected(corpus, label)["expect"] for label in CASES]
    assert counts == {
        "total": len(CASES),
        "ok": expected.count("ok"),
        "failed": expected.count("failed"),
        "invalid": expected.count("invalid"),
        "missing": 0,
    }


@pytest.mark.parametrize("label", CASES)
def test_each_row_ends_as_expected_and_says_where(corpus, label):
    case = _expected(corpus, label)
    line = _line(corpus, label)
    out: Path = corpus["out"]
    assert line["status"] == case["expect"], line
    for word in case["words"]:
        assert word in line["error"], (word, line["error"])
    if case["expect"] == "ok":
        assert line["error"] == ""
        assert line["outputs"] == [str(out / f"{line['job_id']}.mp4")]
        assert all(line[step] in ("computed", "cached", "skipped") for step in ("decode", "generate", "publish"))
        return
    assert not (out / f"{line['job_id']}.mp4").is_file() or (out / f"{line['job_id']}.mp4").is_symlink()
    if case["expect"] == "invalid":
        column = case["words"][0]
        assert line["error"].startswith(f"{column}:"), line["error"]  # the column is named first
        if "/" not in line["job_id"]:
            assert not (out / f"{line['job_id']}.json").exists()  # never ran: no sidecar
        return
    # failed: the sidecar says which step failed and why; media errors name the real file
    data = sidecar(out, line["job_id"])
    assert data["status"] == "failed" and data["error"] == line["error"]
    assert data["failed_step"] in ("decode", "generate", "encode", "publish")
    if data["failed_step"] == "decode":  # the real path of the file (sources are resolved through links)
        assert os.path.realpath(corpus["lib"] / case["source"]) in line["error"], line["error"]


def _probe(path: Path):
    from t2vz_core.media import probe

    return probe(path)


def test_good_rows_publish_real_videos_at_the_planned_size(corpus):
    out = corpus["out"]
    sizes = {}
    for label in ("good_canny", "good_p2p", "link_inside", "odd_size", "rotated", "vfr", "f_oom", "good_t2v"):
        info = _probe(out / f"{label}.mp4")
        sizes[label] = (info.width, info.height, info.frame_count)
    assert sizes["good_canny"] == sizes["good_p2p"] == (64, 48, 4)  # 64x48 source, resolution 64
    assert sizes["good_t2v"] == (64, 64, 4)
    assert sizes["odd_size"] == (64, 48, 4)  # 63x47 source: sides rounded to multiples of 8
    assert sizes["rotated"] == (48, 64, 4)  # display matrix honoured: portrait stays portrait
    # 10 variable-rate frames spanning 0.6 s, resampled to the declared 30 fps: 18 frames
    assert sizes["vfr"] == (64, 48, 18)
    assert not _probe(out / "vfr.mp4").is_vfr
    one = out / "one_pixel.mp4"
    if one.exists():  # accepted (upscaled): then it must be a valid video at the planned size
        info = _probe(one)
        assert (info.width, info.height, info.frame_count) == (64, 64, 4)


def test_shell_characters_in_the_source_name_are_just_a_file_name(corpus):
    data = sidecar(corpus["out"], "good_canny")
    assert data["resolved"]["source"]["path"] == os.path.realpath(corpus["lib"] / SHELL_SOURCE)
    assert data["status"] == "ok"


def test_no_truncated_or_temporary_file_at_a_final_path(corpus):
    videos = check_output_folder(corpus["out"])
    ok = [label for label, case in corpus["cases"].items() if case["expect"] == "ok"]
    assert {v.stem for v in videos} >= set(ok)
